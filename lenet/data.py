"""Fashion-MNIST for LeNet: the real data set, found on disk and verified once, or seeded synthetic
data of the same shape; served from the host through a DataLoader or resident on the device.

    python -c "from lenet.data import fashion_mnist_root; print(fashion_mnist_root())"

Real data is looked for in this order: an explicit root (`--data-root`), $FASHION_MNIST_ROOT,
torchvision's usual root `./data`, and Debian's `/usr/share/datasets/fashion-mnist/`. Each root
may hold the IDX files flat or in torchvision's `FashionMNIST/raw/` layout, gzipped or not. The
decompressed files are kept in a cache directory, which torchvision's `FashionMNIST(download=
False)` then reads. The cache is checked against the known md5s on every use (0.19 s for the
four files on a 2-core machine) and rebuilt from the source when a file is missing or wrong.
"""

from __future__ import annotations

import gzip
import hashlib
import multiprocessing
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lenet.model import IMAGE_SHAPE, NUM_CLASSES

ENV_VAR = "FASHION_MNIST_ROOT"
CACHE_ENV_VAR = "LENET_BENCH_CACHE"
TORCHVISION_ROOT = Path("data")
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
# md5 of each decompressed IDX file: Debian's .gz headers differ from upstream's, contents don't.
MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
INSTALL_HINT = (
    "install it with `apt-get install dataset-fashion-mnist`, or pass --data-root DIR holding the "
    "four IDX files (torchvision's FashionMNIST(DIR, download=True) fetches them where there is "
    "internet)"
)
TRAIN_SIZE = 60_000


class DataError(Exception):
    """Missing or corrupt data; the message says how to fix it."""


@dataclass(frozen=True)
class TensorData:
    """A whole split as tensors: inputs float32 in [0, 1] shaped (N, 1, 28, 28) for LeNet (another
    model's shape for synthetic data), int64 labels."""

    images: torch.Tensor
    labels: torch.Tensor
    source: str  # "fashion-mnist" or "synthetic": shown wherever a result is

    def __len__(self) -> int:
        return len(self.labels)


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV_VAR):
        return Path(os.environ[CACHE_ENV_VAR])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lenet-bench"


def _raw_dir(root: Path) -> Path:
    return root / "FashionMNIST" / "raw"


def _find_file(root: Path, name: str) -> Path | None:
    for folder in (_raw_dir(root), root):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _cache_valid(cache_root: Path) -> bool:
    raw = _raw_dir(cache_root)
    try:
        return all((raw / name).is_file() and _md5(raw / name) == md5
                   for name, md5 in MD5.items())
    except OSError:
        return False  # unreadable: rebuilt, or the rebuild says why it cannot be


def _candidate_roots(data_root: str | Path | None) -> list[Path]:
    if data_root is not None:
        return [Path(data_root)]
    if os.environ.get(ENV_VAR):
        return [Path(os.environ[ENV_VAR])]
    return [TORCHVISION_ROOT, DEBIAN_DIR]


def _cache_error(folder: Path, exc: OSError) -> DataError:
    return DataError(f"cannot write the data cache {folder}: {exc.strerror or exc}; make it "
                     f"writable or set ${CACHE_ENV_VAR} to a writable folder")


def _copy_verified(source: Path, target: Path) -> None:
    """Decompress (or copy) `source` to `target`, checking the md5 before it is trusted."""
    name = target.name
    tmp = target.with_name(name + ".partial")
    digest = hashlib.md5()
    opener = gzip.open if source.suffix == ".gz" else open
    try:
        src = opener(source, "rb")
    except OSError as exc:
        raise DataError(f"cannot read {source}: {exc}; {INSTALL_HINT}") from None
    with src:
        try:
            dst = tmp.open("wb")
        except OSError as exc:
            raise _cache_error(target.parent, exc) from None
        with dst:
            while True:
                try:
                    chunk = src.read(1 << 20)
                except (OSError, EOFError) as exc:
                    _discard(tmp)
                    raise DataError(f"cannot read {source}: {exc}; {INSTALL_HINT}") from None
                if not chunk:
                    break
                digest.update(chunk)
                try:
                    dst.write(chunk)
                except OSError as exc:
                    _discard(tmp)
                    raise _cache_error(target.parent, exc) from None
    if digest.hexdigest() != MD5[name]:
        _discard(tmp)
        raise DataError(
            f"{source} is corrupt (md5 {digest.hexdigest()} of its contents, expected "
            f"{MD5[name]}); reinstall it: {INSTALL_HINT}")
    try:
        tmp.replace(target)
    except OSError as exc:
        _discard(tmp)
        raise _cache_error(target.parent, exc) from None


def _discard(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass  # a cache we cannot write to: the error being raised already says so


def fashion_mnist_root(data_root: str | Path | None = None) -> Path:
    """The torchvision root of a verified copy of Fashion-MNIST, made or mended on first use."""
    if data_root is not None and not Path(data_root).is_dir():
        raise DataError(f"--data-root {data_root} is not a directory; {INSTALL_HINT}")
    cache_root = cache_dir()
    if _cache_valid(cache_root):
        return cache_root
    searched = _candidate_roots(data_root)
    for root in searched:
        found = {name: _find_file(root, name) for name in MD5}
        if not any(found.values()):
            continue
        missing = [name for name, path in found.items() if path is None]
        if missing:
            raise DataError(f"{root} lacks {', '.join(missing)}; {INSTALL_HINT}")
        raw = _raw_dir(cache_root)
        try:
            raw.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _cache_error(raw, exc) from None
        for name, path in found.items():
            _copy_verified(path, raw / name)
        return cache_root
    where = ", ".join(str(root) for root in searched)
    raise DataError(f"Fashion-MNIST not found (looked in {where}); {INSTALL_HINT}")


def fashion_mnist(train: bool, data_root: str | Path | None = None, transform=None):
    """torchvision's FashionMNIST over the verified copy; `transform` as torchvision takes it."""
    from torchvision.datasets import FashionMNIST

    root = fashion_mnist_root(data_root)
    try:
        return FashionMNIST(str(root), train=train, download=False, transform=transform)
    except (RuntimeError, OSError, ValueError) as exc:
        raise DataError(f"torchvision could not read {root}: {exc}; {INSTALL_HINT}") from None


def real_tensors(train: bool = True, data_root: str | Path | None = None) -> TensorData:
    """A split as tensors, scaled as torchvision's ToTensor scales it."""
    dataset = fashion_mnist(train, data_root)
    images = dataset.data.unsqueeze(1).to(torch.float32).div_(255)
    return TensorData(images, dataset.targets.to(torch.int64), "fashion-mnist")


def synthetic_tensors(n: int = TRAIN_SIZE, seed: int = 0, shape: tuple[int, ...] = IMAGE_SHAPE,
                      num_classes: int = NUM_CLASSES) -> TensorData:
    """Random inputs and labels, of Fashion-MNIST's shape unless told another: for speed and
    memory, not accuracy."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *shape), generator=generator, dtype=torch.uint8)
    labels = torch.randint(0, num_classes, (n,), generator=generator)
    return TensorData(images.to(torch.float32).div_(255), labels, "synthetic")


class RandomBatchIndices(Sampler):
    """Endless batches of indices drawn with replacement, so a batch may exceed the data set."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed

    def __iter__(self) -> Iterator[torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed)
        while True:
            yield torch.randint(0, self.n, (self.batch_size,), generator=generator)


class BatchedTensors(Dataset):
    """Indexed by a whole batch of indices at once: no per-sample collation."""

    def __init__(self, data: TensorData):
        self.images, self.labels = data.images, data.labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[indices], self.labels[indices]


def loader_context(device: torch.device):
    """How loader workers start. On the CPU as a script's loader starts them on Linux, by fork
    (named: a spawned process, as each cell's worker is, defaults to spawn, and each loader
    worker imported torch afresh, 2.2 s a cell on 2 cores); elsewhere the platform's way.
    Forked from a process that runs CUDA, they aborted at shutdown on an H100 ('terminate
    called without an active exception'); a fork server is a clean process that has imported
    torch once, so each worker still starts in a moment."""
    if device.type != "cuda":
        return multiprocessing.get_context("fork" if sys.platform == "linux" else None)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch"])
    return context


def host_batches(
    data: TensorData, batch_size: int, device: torch.device, num_workers: int, pin_memory: bool,
    seed: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The notebook's placement: batches assembled on the host, copied to the device per step."""
    loader = DataLoader(
        BatchedTensors(data),
        sampler=RandomBatchIndices(len(data), batch_size, seed),
        batch_size=None,  # the sampler already yields whole batches
        num_workers=num_workers,
        pin_memory=pin_memory,
        multiprocessing_context=loader_context(device) if num_workers else None,
    )
    for images, labels in loader:
        # non_blocking only overlaps the copy when the source is pinned
        yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)


def device_batches(
    data: TensorData, batch_size: int, device: torch.device, seed: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The ceiling: the whole set lives on the device and batches are gathered there by index."""
    images, labels = data.images.to(device), data.labels.to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    while True:
        indices = torch.randint(0, len(labels), (batch_size,), device=device, generator=generator)
        yield images[indices], labels[indices]
