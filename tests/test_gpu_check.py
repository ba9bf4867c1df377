"""docs/gpu-check.sh runs the checkout as it is with a lent GPU host's python3, which has torch,
torchvision, pandas, matplotlib, pytest, pytest-benchmark, nvidia-ml-py and tqdm, and nothing
else the project installs: every command the check runs must start without the rest."""

import re

import pytest

from helpers import ROOT, run_module_as_on_a_gpu_host

CHECK = ROOT / "docs" / "gpu-check.sh"


def script() -> str:
    """The check's text with its continued lines joined."""
    return CHECK.read_text().replace("\\\n", " ")


def check_modules() -> list[str]:
    """The modules the check runs with `"$py" -m`, and the report bench.run starts."""
    named = re.findall(r'"\$py" -m ([\w.]+)', script())
    return sorted({*named, "reports"} - {"pytest"})


def test_the_check_names_the_commands_it_runs():
    assert check_modules() == ["bench.doctor", "bench.run", "lenet.train", "reports"]


@pytest.mark.parametrize("module", check_modules())
def test_each_command_the_check_runs_starts_without_what_a_gpu_host_lacks(module):
    result = run_module_as_on_a_gpu_host(module, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


def test_the_tests_the_check_runs_collect_without_what_a_gpu_host_lacks():
    files = re.search(r'-m "" (tests/[^\n]+)', script()).group(1).split()
    result = run_module_as_on_a_gpu_host("pytest", "--collect-only", "-q", "-p",
                                         "no:cacheprovider", "-m", "", *files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\d+ tests collected", result.stdout)
