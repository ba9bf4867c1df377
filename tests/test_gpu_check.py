"""docs/gpu-check.sh runs the checkout as it is with a lent GPU host's python3, which has torch,
torchvision, pandas, matplotlib, pytest, pytest-benchmark, nvidia-ml-py and tqdm, and nothing
else the project installs: every command the check runs must start without the rest."""

import re
import subprocess
import sys

import pytest

from helpers import ROOT

CHECK = ROOT / "docs" / "gpu-check.sh"
# what `pip install -e '.[dev,slurm,postgresql]'` adds that such a host lacks, less the tools
# (pytest-xdist's plugin loads with pytest here, wherever it is installed)
NOT_ON_A_GPU_HOST = ("sqlalchemy", "alembic", "ruptures", "psycopg", "submitit", "scipy")
BLOCK = "import sys\nfor name in {names!r}:\n    sys.modules[name] = None  # as if not installed\n"


def run_as_on_a_gpu_host(code: str) -> subprocess.CompletedProcess:
    """`code` in a Python of its own, from the checkout, with what a GPU host lacks unimportable."""
    return subprocess.run([sys.executable, "-c", BLOCK.format(names=NOT_ON_A_GPU_HOST) + code],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


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
    result = run_as_on_a_gpu_host(
        "import runpy\n"
        f"sys.argv = [{module!r}, '--help']\n"
        f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


def test_the_tests_the_check_runs_collect_without_what_a_gpu_host_lacks():
    files = re.search(r'-m "" (tests/[^\n]+)', script()).group(1).split()
    result = run_as_on_a_gpu_host(
        "import pytest\n"
        f"sys.exit(pytest.main(['--collect-only', '-q', '-p', 'no:cacheprovider', '-m', '', "
        f"*{files!r}]))\n")
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\d+ tests collected", result.stdout)
