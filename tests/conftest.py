import pytest

from helpers import CPU_SYNTHETIC, ONE_CELL, PLUGIN, run_main

# pytester: the plugin's tests run small projects of their own. The plugin itself comes with the
# installed package; a checkout run as it is (docs/gpu-check.sh) loads it by name.
pytest_plugins = ["pytester", *PLUGIN]


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """A data cache of its own, so a test sees only the data it sets up."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("LENET_BENCH_CACHE", str(cache))
    monkeypatch.delenv("FASHION_MNIST_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./data from the checkout
    return cache


@pytest.fixture
def no_gpu(monkeypatch):
    """A machine without a GPU, for a command called in this process (helpers.run_main): torch
    answers that no CUDA device is visible. A fake at torch's own seam, so a test that means
    "no GPU" means it where a GPU is visible too, as CUDA_VISIBLE_DEVICES="" does for a process."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture(scope="session")
def one_cell_run(tmp_path_factory):
    """A finished one-cell CPU run (b64, device-resident, synthetic) from bench.run called in
    this process: one worker, a few seconds. Copy it before changing it."""
    out = tmp_path_factory.mktemp("one-cell") / "run"
    result = run_main("bench.run", *ONE_CELL, "--out", out, *CPU_SYNTHETIC)
    assert result.returncode == 0, result.stderr
    return out
