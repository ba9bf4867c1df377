import re

import pytest

from helpers import needs_real_data, one_line_error, run_main, run_module
from lenet.data import synthetic_tensors
from lenet.model import build_lenet
from lenet.train import TrainStep, build_step

# The compiled step reorders float32 arithmetic (fused kernels), so its losses drift from eager's
# by rounding alone: measured here under 1e-6 over 20 steps; a step that trained differently
# would be off by orders of magnitude more.
COMPILE_LOSS_TOLERANCE = 1e-4


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_step_learns_a_fixed_batch(dtype, channels_last):
    data = synthetic_tensors(64, seed=0)
    step = TrainStep(build_lenet(seed=0), lr=0.9, dtype=dtype, channels_last=channels_last)
    losses = [float(step(data.images, data.labels)[0]) for _ in range(30)]
    assert all(map(lambda v: v == v, losses)), "a loss is NaN"
    assert losses[-1] < losses[0]


def losses_of(step, steps: int) -> list[float]:
    data = synthetic_tensors(256, seed=1)
    return [float(step(data.images, data.labels)[0]) for _ in range(steps)]


@pytest.mark.parametrize("mode", [
    "compile", pytest.param("compile-step", marks=pytest.mark.slow),
    pytest.param("compile-step-max-autotune", marks=pytest.mark.slow)])
def test_compile_trains_to_the_same_loss_as_eager_from_the_same_seed(mode):
    eager = losses_of(build_step(build_lenet(seed=0), lr=0.9), 12)
    compiled = losses_of(build_step(build_lenet(seed=0), lr=0.9, mode=mode), 12)
    assert eager[-1] < eager[0]  # it learned
    assert compiled == pytest.approx(eager, abs=COMPILE_LOSS_TOLERANCE)


def test_graph_mode_refuses_the_cpu():
    with pytest.raises(ValueError, match="mode graph needs a CUDA device, not cpu"):
        build_step(build_lenet(), lr=0.1, mode="graph")


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="TrainStep runs eager, compile, compile-cudagraphs, "
                                         "compile-step, compile-step-max-autotune, not 'jit'"):
        TrainStep(build_lenet(), lr=0.1, mode="jit")


def test_unknown_dtype_is_refused():
    with pytest.raises(ValueError, match="unknown dtype 'float8'; known: float32, bfloat16"):
        TrainStep(build_lenet(), lr=0.1, dtype="float8")


def test_cuda_without_a_gpu_is_one_line_with_the_fix(no_gpu):
    line = one_line_error(run_main("lenet.train", "--device", "cuda"))
    assert "--device cuda needs a CUDA GPU, but none is visible" in line
    assert line.endswith("use --device cpu")


def test_negative_batch_size_is_one_line():
    line = one_line_error(run_main("lenet.train", "--batch-size", "-5"))
    assert line == "python -m lenet.train: error: argument --batch-size: -5 must be at least 1"


def test_missing_data_root_is_one_line_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("LENET_BENCH_CACHE", str(tmp_path / "cache"))
    line = one_line_error(run_main("lenet.train", "--data-root", tmp_path))
    assert "Fashion-MNIST not found" in line and "apt-get install dataset-fashion-mnist" in line


@pytest.mark.e2e
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


@pytest.mark.parametrize("optimizer", ["foreach", "fused", "loop"])
def test_each_sgd_implementation_trains_as_the_default_does(optimizer):
    """The same update, written three ways: the losses agree to float32's rounding."""
    default = losses_of(build_step(build_lenet(seed=0), lr=0.9), 6)
    other = losses_of(build_step(build_lenet(seed=0), lr=0.9, optimizer=optimizer), 6)
    assert other == pytest.approx(default, rel=1e-4)


def test_a_step_sets_its_float32_precision_for_the_process():
    import torch

    TrainStep(build_lenet(), lr=0.1, precision="tf32")
    assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.allow_tf32
    TrainStep(build_lenet(), lr=0.1, precision="highest")
    assert torch.get_float32_matmul_precision() == "highest"
    assert not torch.backends.cudnn.allow_tf32
    TrainStep(build_lenet(), lr=0.1)  # torch's own defaults again, for the tests after
    assert torch.get_float32_matmul_precision() == "highest" and torch.backends.cudnn.allow_tf32
