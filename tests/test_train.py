import re

import pytest

from helpers import needs_real_data, one_line_error, run_module
from lenet.data import synthetic_tensors
from lenet.model import build_lenet
from lenet.train import TrainStep


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_step_learns_a_fixed_batch(dtype, channels_last):
    data = synthetic_tensors(64, seed=0)
    step = TrainStep(build_lenet(seed=0), lr=0.9, dtype=dtype, channels_last=channels_last)
    losses = [float(step(data.images, data.labels)[0]) for _ in range(30)]
    assert all(map(lambda v: v == v, losses)), "a loss is NaN"
    assert losses[-1] < losses[0]


def test_unknown_dtype_is_refused():
    with pytest.raises(ValueError, match="unknown dtype 'float8'; known: float32, bfloat16"):
        TrainStep(build_lenet(), lr=0.1, dtype="float8")


def test_cuda_without_a_gpu_is_one_line_with_the_fix():
    line = one_line_error(run_module("lenet.train", "--device", "cuda",
                                      env={"CUDA_VISIBLE_DEVICES": ""}))
    assert "--device cuda needs a CUDA GPU, but none is visible" in line
    assert line.endswith("use --device cpu")


def test_negative_batch_size_is_one_line():
    line = one_line_error(run_module("lenet.train", "--batch-size", "-5"))
    assert line == "python -m lenet.train: error: argument --batch-size: -5 must be at least 1"


def test_missing_data_root_is_one_line_with_the_fix(tmp_path):
    line = one_line_error(run_module("lenet.train", "--data-root", str(tmp_path),
                                      env={"LENET_BENCH_CACHE": str(tmp_path / "cache")}))
    assert "Fashion-MNIST not found" in line and "apt-get install dataset-fashion-mnist" in line


@pytest.mark.slow
@needs_real_data
def test_ten_epochs_reach_the_notebooks_accuracy():
    """The notebook's run (10 epochs, lr 0.9, batch 256) on real data: about 100 s on 2 cores."""
    result = run_module("lenet.train", "--device", "cpu", "--no-progress", timeout=1200)
    assert result.returncode == 0, result.stderr
    match = re.search(r"^loss ([\d.]+), train acc ([\d.]+), test acc ([\d.]+)$", result.stdout,
                      re.MULTILINE)
    assert match, result.stdout
    loss, train_acc, test_acc = map(float, match.groups())
    assert train_acc >= 0.80 and test_acc >= 0.75, result.stdout
    assert re.search(r"^[\d.]+ examples/sec on cpu$", result.stdout, re.MULTILINE)
