"""The interleaved speed gate: two source trees, each served by its own code, timed in turn."""

import re

import pytest

from bench.ab import median_interval
from helpers import ROOT, one_line_error, run_main, run_module, slowed_tree

ONE_CELL = ["--set", "batch_size=64", "--set", "placement=device", "--device", "cpu"]


def test_the_median_interval_takes_the_binomial_ranks():
    assert median_interval(range(30)) == (9, 20)  # ranks 10 and 21 of 30, as in the tables
    assert median_interval(range(10)) == (1, 8)
    assert median_interval([3.0, 1.0, 2.0]) == (1.0, 3.0)  # too few: the whole range


@pytest.mark.e2e
def test_a_planted_slowdown_fails_the_gate_and_names_the_cell(tmp_path):
    slow = slowed_tree(tmp_path / "slow", every=1)  # every step twice: half the speed
    result = run_module("bench.ab", str(ROOT), str(slow), *ONE_CELL, "--pairs", "2",
                        "--rounds", "4", "--max-slowdown", "10%")
    assert result.returncode == 1, result.stderr
    line = result.stdout.splitlines()[0]
    assert line.startswith("b64-float32-nchw-device: candidate at ")
    assert line.endswith("slowed past the 10% allowed")
    ratio = float(re.search(r"candidate at ([0-9.]+)x", line)[1])
    assert 0.3 < ratio < 0.75
    assert result.stdout.splitlines()[-1] == "1 of 1 cells slowed past 10%"


def test_a_tree_that_is_not_this_project_is_refused(tmp_path):
    line = one_line_error(run_main("bench.ab", tmp_path, *ONE_CELL))
    assert line.startswith(f"python -m bench.ab: error: argument BASE_TREE: {tmp_path} is not a "
                           f"source tree of this project")


@pytest.mark.e2e
def test_a_side_that_cannot_build_its_cell_is_named(tmp_path):
    line = one_line_error(run_module("bench.ab", str(ROOT), str(ROOT), *ONE_CELL, "--data",
                                     "real", "--data-root", str(tmp_path / "nowhere")))
    assert line.startswith("python -m bench.ab: error: the base side failed: DataError: ")
