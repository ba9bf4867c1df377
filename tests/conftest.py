import pytest

from helpers import PLUGIN

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
