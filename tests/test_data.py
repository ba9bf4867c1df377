import gzip
import hashlib
import multiprocessing
import sys

import pytest
import torch

from helpers import loader_start_method, needs_real_data
from lenet.data import (
    MD5,
    DataError,
    device_batches,
    fashion_mnist_root,
    host_batches,
    real_tensors,
    synthetic_tensors,
)


def _write_idx_files(folder, content=b"not fashion-mnist", gz=True):
    folder.mkdir(parents=True, exist_ok=True)
    for name in MD5:
        if gz:
            with gzip.open(folder / f"{name}.gz", "wb") as f:
                f.write(content)
        else:
            (folder / name).write_bytes(content)


def test_missing_data_says_how_to_install(empty_cache, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"not found \(looked in .*empty\).*apt-get install "
                                        r"dataset-fashion-mnist"):
        fashion_mnist_root(tmp_path / "empty")


def test_data_root_that_is_not_a_directory(empty_cache, tmp_path):
    with pytest.raises(DataError, match=r"--data-root .*nowhere is not a directory"):
        fashion_mnist_root(tmp_path / "nowhere")


def test_corrupt_data_is_refused_and_not_cached(empty_cache, tmp_path):
    _write_idx_files(tmp_path / "bad")
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz is corrupt \(md5 .* "
                                        r"expected f4a8712d7a061bf5bd6d2ca38dc4d50a\)"):
        fashion_mnist_root(tmp_path / "bad")
    assert not list(empty_cache.rglob("*-ubyte"))


def test_partial_data_names_what_is_missing(empty_cache, tmp_path):
    _write_idx_files(tmp_path / "some")
    (tmp_path / "some" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="lacks t10k-labels-idx1-ubyte"):
        fashion_mnist_root(tmp_path / "some")


def test_environment_variable_is_used(empty_cache, tmp_path, monkeypatch):
    _write_idx_files(tmp_path / "env" / "FashionMNIST" / "raw", gz=False)
    monkeypatch.setenv("FASHION_MNIST_ROOT", str(tmp_path / "env"))
    with pytest.raises(DataError, match=r"env/FashionMNIST/raw/train-images-idx3-ubyte is "
                                        r"corrupt"):
        fashion_mnist_root()


@needs_real_data
def test_real_data_is_verified_once_then_read_from_the_cache(empty_cache):
    root = fashion_mnist_root()
    assert root == empty_cache
    assert sorted(p.name for p in (root / "FashionMNIST" / "raw").glob("*-ubyte")) == sorted(MD5)
    train = real_tensors(train=True)
    assert train.images.shape == (60_000, 1, 28, 28)
    assert train.source == "fashion-mnist"
    assert 0.0 <= float(train.images.min()) and float(train.images.max()) <= 1.0
    assert sorted(train.labels.unique().tolist()) == list(range(10))
    assert len(real_tensors(train=False)) == 10_000


def test_synthetic_data_is_seeded_shaped_and_labelled():
    a, b = synthetic_tensors(100, seed=1), synthetic_tensors(100, seed=1)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.images.shape == (100, 1, 28, 28) and a.images.dtype == torch.float32
    assert a.source == "synthetic"
    assert int(a.labels.min()) >= 0 and int(a.labels.max()) <= 9


def test_device_batches_can_exceed_the_data_set():
    images, labels = next(device_batches(synthetic_tensors(10), 64, torch.device("cpu")))
    assert images.shape == (64, 1, 28, 28) and labels.shape == (64,)


def test_host_batches_can_exceed_the_data_set():
    data = synthetic_tensors(10)
    batches = host_batches(data, 32, torch.device("cpu"), num_workers=0, pin_memory=False)
    images, labels = next(batches)
    batches.close()
    assert images.shape == (32, 1, 28, 28) and labels.shape == (32,)
    # every image is one of the ten in the set
    assert all(any(torch.equal(img, ref) for ref in data.images) for img in images)


def test_host_batches_with_worker_processes():
    batches = host_batches(synthetic_tensors(50), 8, torch.device("cpu"), num_workers=1,
                           pin_memory=False)
    shapes = [tuple(next(batches)[0].shape) for _ in range(3)]
    batches.close()
    assert shapes == [(8, 1, 28, 28)] * 3


@pytest.mark.skipif(sys.platform != "linux", reason="fork is how Linux starts a loader's workers")
def test_a_spawned_processs_host_loader_forks_its_workers_as_a_script_does():
    """Each cell's worker is a spawned process, whose default start method is spawn: its loader
    workers each imported torch afresh (2.2 s a cell on 2 cores) where a script forks them."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.apply(loader_start_method, ("cpu",)) == "fork"


@needs_real_data
@pytest.mark.parametrize("damage", ["truncate", "flip a bit"])
def test_a_damaged_cache_is_rebuilt_from_the_source(empty_cache, damage):
    fashion_mnist_root()
    cached = empty_cache / "FashionMNIST" / "raw" / "train-labels-idx1-ubyte"
    data = bytearray(cached.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[-1] ^= 0x01  # one label changed: it would train silently on wrong data
    cached.write_bytes(bytes(data))
    assert fashion_mnist_root() == empty_cache
    assert hashlib.md5(cached.read_bytes()).hexdigest() == MD5["train-labels-idx1-ubyte"]


def test_a_damaged_cache_with_no_source_says_so(empty_cache, tmp_path):
    raw = empty_cache / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MD5:
        (raw / name).write_bytes(b"truncated")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"not found \(looked in .*empty\)"):
        fashion_mnist_root(tmp_path / "empty")


def test_a_cache_that_cannot_be_written_is_named_with_the_fix(empty_cache, tmp_path):
    _write_idx_files(tmp_path / "src")
    raw = empty_cache / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    # a folder where the copy goes: unwritable whoever runs the test, root included
    (raw / "train-images-idx3-ubyte.partial").mkdir()
    with pytest.raises(DataError, match=rf"cannot write the data cache {raw}: Is a directory; "
                                        r"make it writable or set \$LENET_BENCH_CACHE"):
        fashion_mnist_root(tmp_path / "src")
