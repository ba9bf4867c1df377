"""bench.history's steps, its check, its page and its bisection, on SQLite (the store's own tests,
test_history_store.py, run on PostgreSQL as well)."""

import json
import random
import re
import shutil
import subprocess
import sys

import pytest

from bench.series.steps import find_steps, noise, regressions_in
from helpers import (
    CPU_SYNTHETIC,
    ONE_CELL,
    ROOT,
    benchmark_json,
    history_run,
    run_main,
    run_module,
    slowed_tree,
)

# a quiet machine's speeds: 1% noise around 10,000 examples/s, the same every test
_NOISE = random.Random(7)
QUIET = [10_000.0 * (1 + 0.01 * _NOISE.gauss(0, 1)) for _ in range(40)]


def test_a_planted_step_is_found_where_it_was_planted_and_noise_alone_is_not_a_step():
    slowed = QUIET[:20] + [v * 0.9 for v in QUIET[20:24]]
    (step,) = find_steps(slowed)
    assert step.at == 20
    assert step.size == pytest.approx(-0.1, abs=0.02)
    assert find_steps(QUIET) == []
    # a check sees it among the newest points, and not once it is older
    assert regressions_in(slowed[:23]) and not regressions_in(slowed[:23], higher_is_better=False)
    assert regressions_in(slowed[:20] + [v * 0.9 for v in QUIET[20:30]]) == []


def test_the_noise_is_the_series_own_spread_or_the_spread_its_points_carry():
    # a step moves one difference: the robust spread of the differences ignores it
    assert noise(QUIET[:20] + [v * 0.5 for v in QUIET[20:]]) == pytest.approx(
        noise(QUIET), rel=0.5)
    flat = [100.0] * 10
    assert noise(flat, [2.698] * 10) == pytest.approx(0.02)  # IQR / 1.349, as a fraction


def history_of(tmp_path, speeds, memory=None, busy=(), failed=(), db=None):
    """A store of one CPU cell's runs, one a commit, c0 first; its --db value."""
    db = db or str(tmp_path / "history.sqlite")
    runs = []
    for i, speed in enumerate(speeds):
        runs.append(history_run(
            tmp_path / f"run{i}", f"c{i}", f"2026-12-01T{i // 60:02d}:{i % 60:02d}:00+00:00",
            speed=speed, memory=(memory or {}).get(i, 1_000_000), busy=i in busy,
            status="oom" if i in failed else "ok"))
    result = run_main("bench.history", "add", *runs, "--db", db)
    assert result.returncode == 0, result.stderr
    return db


def test_check_names_the_series_the_figure_the_step_and_its_commits(tmp_path):
    db = history_of(tmp_path, QUIET[:15] + [v * 0.9 for v in QUIET[15:18]])
    result = run_main("bench.history", "check", "--db", db)
    assert result.returncode == 1, result.stdout
    (line,) = [s for s in result.stdout.splitlines() if s.startswith("REGRESSION")]
    assert "b64-float32-nchw-device (synthetic data) · lenet · cpu" in line
    size = float(re.search(r"examples/s ([-+][0-9.]+)% in c14\.\.c15 ", line)[1])
    assert -13 < size < -8  # the planted 10%, read from medians of noisy points


def test_check_passes_a_series_that_holds_and_one_whose_step_is_history(tmp_path):
    assert run_main("bench.history", "check", "--db",
                    history_of(tmp_path / "a", QUIET[:18])).returncode == 0
    old_step = history_of(tmp_path / "b", QUIET[:10] + [v * 0.9 for v in QUIET[10:20]])
    assert run_main("bench.history", "check", "--db", old_step).returncode == 0


def test_a_step_between_two_runs_of_one_commit_is_the_machines_not_a_regression(tmp_path):
    db = str(tmp_path / "history.sqlite")
    speeds = QUIET[:8] + [v * 0.7 for v in QUIET[8:10]]
    for i, speed in enumerate(speeds):
        run_main("bench.history", "add", history_run(
            tmp_path / f"run{i}", "c0" if i < 9 else "c1", f"2026-12-01T10:{i:02d}:00+00:00",
            speed=speed), "--db", db)
    # the step lies between two runs of c0: the same code ran slower
    assert run_main("bench.history", "check", "--db", db).returncode == 0


def test_too_few_points_have_no_steps():
    assert find_steps([100.0, 101.0, 70.0, 71.0, 70.5]) == []


def test_a_slowdown_timed_on_a_busy_machine_is_kept_but_not_a_regression(tmp_path):
    speeds = QUIET[:15] + [v * 0.7 for v in QUIET[15:18]]
    db = history_of(tmp_path, speeds, busy={15, 16, 17})
    assert run_main("bench.history", "check", "--db", db).returncode == 0
    listed = run_main("bench.history", "list", "--db", db).stdout
    assert "18 points (3 busy)" in listed


def test_memory_growth_is_placed_where_it_happened_while_it_is_among_the_newest(tmp_path):
    db = history_of(tmp_path, QUIET[:7], memory={5: 1_020_000, 6: 1_020_000})
    result = run_main("bench.history", "check", "--db", db)
    assert "peak memory +2.0% in c4..c5" in result.stdout


def test_memory_gates_at_once_on_growth_past_its_bound(tmp_path):
    db = history_of(tmp_path, QUIET[:6], memory={5: 1_020_000})
    result = run_main("bench.history", "check", "--db", db)
    assert result.returncode == 1
    assert "peak memory +2.0% in c4..c5" in result.stdout
    assert run_main("bench.history", "check", "--db", db,
                    "--max-memory-growth", "5%").returncode == 0
    assert run_main("bench.history", "check", "--db", db,
                    "--max-memory-growth", "16KiB").returncode == 1


def test_a_cell_that_trained_and_now_fails_is_a_regression(tmp_path):
    db = history_of(tmp_path, QUIET[:6], failed={5})
    result = run_main("bench.history", "check", "--db", db)
    assert result.returncode == 1
    assert "status in c4..c5 (trained before, now oom)" in result.stdout


@pytest.mark.parametrize("args, words", [
    (["check", "--max-memory-growth", "lots"], "'lots'"),
    (["check", "--min-step=-3%"], "must not be negative"),
    (["list", "--series", "resnet"], "no series matching 'resnet'"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, words):
    db = history_of(tmp_path, QUIET[:4])
    result = run_main("bench.history", *args[:1], "--db", db, *args[1:]) \
        if args[0] != "frobnicate" else run_main("bench.history", *args)
    assert result.returncode == 2
    assert words in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_corrupt_run_directory_is_one_line_and_nothing_is_recorded(tmp_path):
    run = history_run(tmp_path / "run", "c1", "2026-12-01T10:00:00+00:00")
    (run / "env.json").write_text("{not json")
    db = str(tmp_path / "history.sqlite")
    result = run_main("bench.history", "add", run, "--db", db)
    assert result.returncode == 2
    assert "env.json" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert run_main("bench.history", "list", "--db", db).returncode == 2  # an empty store


def test_the_page_draws_each_series_and_names_its_steps(tmp_path):
    db = history_of(tmp_path, QUIET[:12] + [v * 0.9 for v in QUIET[12:15]], busy={4})
    result = run_main("bench.history", "show", "--db", db, "--out", tmp_path / "page")
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "page" / "index.html").read_text()
    assert "Got worse among the newest points" in page and "c11..c12" in page
    (png,) = (tmp_path / "page").glob("series-*.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"src='{png.name}'" in page


@pytest.mark.e2e
def test_a_pytest_benchmark_file_is_a_series_of_its_own(tmp_path):
    saved = benchmark_json(tmp_path)
    db = str(tmp_path / "history.sqlite")
    assert run_main("bench.history", "add", saved, "--db", db).returncode == 0
    data = json.loads(saved.read_text())
    listed = run_main("bench.history", "list", "--db", db).stdout
    assert data["benchmarks"][0]["fullname"] in listed


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def _scratch_repo(path, count, planted_at, train_text) -> list[str]:
    """A git repository of this project's code with `count` commits, the one at `planted_at`
    writing `train_text` as lenet/train.py; its commits, oldest first."""
    for package in ("bench", "lenet"):
        shutil.copytree(ROOT / package, path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    _git(path, "init", "-q")
    for i in range(count):
        if i == planted_at:
            (path / "lenet" / "train.py").write_text(train_text)
        (path / "CHANGES").write_text(f"change {i}\n")
        _git(path, "add", "-A")
        _git(path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", f"change {i}")
    return subprocess.run(["git", "-C", str(path), "rev-list", "--reverse", "HEAD"],
                          check=True, capture_output=True, text=True).stdout.split()


@pytest.mark.e2e
def test_bisect_finds_the_commit_that_planted_a_slowdown_among_16(tmp_path):
    """A scratch repository of this project's code with 16 commits; the 11th plants a slowdown
    of real work (every training step runs four times, helpers.slowed_tree: a quarter of the
    speed where the step is all the time, about a half where the harness's own share is large,
    as a busy CI machine has read it). The history holds runs of the first and the last
    commit; bisect narrows the step to the 11th with bench.ab."""
    repo = tmp_path / "repo"
    slowed = slowed_tree(tmp_path / "slowed", every=1, times=4) / "lenet" / "train.py"
    commits = _scratch_repo(repo, 16, 11, slowed.read_text())
    assert len(commits) == 16
    speeds = QUIET[:8] + [v * 0.25 for v in QUIET[8:12]]
    db = str(tmp_path / "history.sqlite")
    for i, speed in enumerate(speeds):
        commit = commits[0] if i < 8 else commits[-1]
        run_main("bench.history", "add", history_run(
            tmp_path / f"run{i}", commit, f"2026-12-01T10:{i:02d}:00+00:00", speed=speed,
            device="cpu"), "--db", db)
    result = subprocess.run([sys.executable, "-m", "bench.history", "bisect", "--db", db,
                             "--repo", str(repo), "--pairs", "2", "--rounds", "3"],
                            capture_output=True, text=True, timeout=1500, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"first slower commit: {commits[11]}" in result.stdout


@pytest.mark.e2e
def test_bisect_memory_finds_the_commit_that_planted_a_growth_among_8(tmp_path):
    """A scratch repository of this project's code with 8 commits; the 6th makes every step
    keep 16 KiB a sample more (about 1 MiB at b64, a quarter of the step's tensors). The history
    holds runs of the first and the last commit, the last fatter; bisect --memory runs the cell
    once in each tree it needs and names the 6th."""
    repo = tmp_path / "repo"
    kept = (ROOT / "lenet" / "train.py").read_text().replace(
        "        loss, logits = self._forward(images, labels)\n",
        "        kept = torch.ones(images.shape[0], 4096, device=images.device)  # planted\n"
        "        loss, logits = self._forward(images, labels)\n")
    assert "planted" in kept
    commits = _scratch_repo(repo, 8, 5, kept)
    db = str(tmp_path / "history.sqlite")
    for i, memory in enumerate([1_000_000] * 3 + [2_000_000] * 2):
        commit = commits[0] if i < 3 else commits[-1]
        run_main("bench.history", "add", history_run(
            tmp_path / f"run{i}", commit, f"2026-12-01T10:{i:02d}:00+00:00", memory=memory),
            "--db", db)
    result = subprocess.run([sys.executable, "-m", "bench.history", "bisect", "--memory",
                             "--db", db, "--repo", str(repo)],
                            capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"first fatter commit: {commits[5]}" in result.stdout
    # four trees measured: the good end, the bad end, then halving three commits
    assert result.stdout.count(" fatter: tracked_peak_bytes ") >= 2
    assert " holds: tracked_peak_bytes " in result.stdout


def test_a_run_whose_history_store_cannot_be_used_stops_before_any_cell(tmp_path):
    out = tmp_path / "run"
    result = run_main("bench.run", *ONE_CELL, "--out", out, *CPU_SYNTHETIC,
                      "--history", str(tmp_path / "no" / "such" / "dir" / "h.sqlite"))
    assert result.returncode == 2
    assert "cannot open the history store" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (out / "results.jsonl").exists()


@pytest.mark.e2e
@pytest.mark.core
def test_bench_run_records_each_run_and_its_page_shows_the_trend(tmp_path):
    db = str(tmp_path / "history.sqlite")
    for name in ("first", "second"):
        options = CPU_SYNTHETIC if name == "first" else \
            [o for o in CPU_SYNTHETIC if o != "--no-report"]
        result = run_module("bench.run", *ONE_CELL, "--out", str(tmp_path / name), *options,
                            "--history", db)
        assert result.returncode == 0, result.stderr
        assert "history: added (1 points)" in result.stdout
    listed = run_main("bench.history", "list", "--db", db).stdout
    assert "b64-float32-nchw-device (synthetic data) · lenet · cpu" in listed
    assert ": 2 points" in listed
    page = (tmp_path / "second" / "report" / "index.html").read_text()
    trend = page.split("<h2>Recent trend</h2>")[1].split("</table>")[0]
    assert "b64-float32-nchw-device (synthetic data)" in trend
    assert "class='spark'>" in trend


def test_bisect_refuses_in_one_line_what_it_cannot_narrow(tmp_path):
    steady = history_of(tmp_path / "steady", QUIET[:10])
    result = run_main("bench.history", "bisect", "--db", steady)
    assert result.returncode == 2 and "shows no slowdown to bisect" in result.stderr
    result = run_main("bench.history", "bisect", "--memory", "--db", steady)
    assert result.returncode == 2
    assert "shows no growth of peak memory past the bound to bisect" in result.stderr
    # a step between commits the repository does not hold
    stepped = history_of(tmp_path / "stepped", QUIET[:8] + [v * 0.8 for v in QUIET[8:12]])
    (tmp_path / "repo").mkdir()
    subprocess.run(["git", "init", "-q", str(tmp_path / "repo")], check=True)
    result = run_main("bench.history", "bisect", "--db", stepped, "--repo", tmp_path / "repo")
    assert result.returncode == 2
    assert "commit c7 is not in" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.e2e
def test_a_listing_whose_reader_went_away_ends_quietly(tmp_path):
    """`bench.history list | head`: the reader closes the pipe before the listing is written.
    The command ends as a broken pipe ends a command (141), with no traceback."""
    db = history_of(tmp_path, QUIET[:3])
    proc = subprocess.Popen([sys.executable, "-m", "bench.history", "list", "--db", db],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    proc.stdout.close()  # before the command has started: its first write finds no reader
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr
