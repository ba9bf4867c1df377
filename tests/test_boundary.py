
from bench.basics.outcome import Attempt, Outcome
from bench.execution.boundary_search import find_max_batch
from bench.planning.grid import Config
from bench.records.boundary import Boundary


def _card(limit: int, kernel_limit: int | None = None):
    tried = []

    def trial(batch):
        tried.append(batch)
        if kernel_limit is not None and batch >= kernel_limit:
            return Attempt(batch, Outcome.KERNEL_LIMIT, "RuntimeError: integer out of range")
        return Attempt(batch, Outcome.OK if batch <= limit else Outcome.OOM)

    return trial, tried


def _boundary():
    return Boundary(Config(1))


def test_without_a_prediction_doubles_then_bisects_to_within_one_percent():
    trial, tried = _card(limit=1000)
    b = find_max_batch(trial, _boundary(), start=64, limit=2**20, budget_s=60)
    assert tried == [64, 128, 256, 512, 1024, 768, 896, 960, 992, 1008, 1000]
    assert (b.max_ok_batch, b.first_failed_batch, b.stop_reason) == (1000, 1008, "oom")


def _predicted(batch):
    return Boundary(Config(1), predicted_max_batch=batch)


def _fast(batch):
    """A step as the cells measured it: nothing next to the budget, at any batch."""
    return 0.0


def test_a_close_prediction_brackets_the_boundary_in_two_trials():
    trial, tried = _card(limit=1000)
    b = find_max_batch(trial, _predicted(990), start=64, limit=2**20, budget_s=60,
                       step_s=_fast)
    # 990 trains, 5% above (1,040) does not; then bisect to 1%
    assert tried == [990, 1040, 1015, 1002, 996]
    assert (b.max_ok_batch, b.first_failed_batch, b.stop_reason) == (996, 1002, "oom")


def test_a_prediction_twice_too_high_still_beats_doubling_from_the_grid():
    """A prediction twice too high, as the CPU's under a 512 MiB cap once was: 2,816 trained
    and 2,944 did not against 5,827 predicted, when the trials climbed from 64 and left the
    address space fragmented (doubling from 64 to within 5% took 11 trials). Seeded by the
    prediction, the search now finds 6,119 there."""
    trial, tried = _card(limit=2816)
    b = find_max_batch(trial, _predicted(5827), start=64, limit=2**16, budget_s=60,
                       step_s=_fast)
    # 5% under, then halving, until one trains; then bisect to 1%
    assert tried == [5827, 5549, 2913, 1456, 2184, 2548, 2730, 2821, 2775, 2798]
    assert (b.max_ok_batch, b.first_failed_batch) == (2798, 2821)
    assert b.first_failed_batch - b.max_ok_batch <= 0.01 * b.max_ok_batch


def test_a_prediction_too_low_grows_to_the_batch_limit():
    trial, tried = _card(limit=10**9)
    b = find_max_batch(trial, _predicted(1000), start=64, limit=3000, budget_s=60,
                       step_s=_fast)
    assert tried == [1000, 1050, 2000, 3000]
    assert (b.max_ok_batch, b.stop_reason) == (3000, "batch limit")


def test_a_prediction_past_the_batch_limit_doubles_toward_the_limit_within_the_budget():
    """The CPU without a cap: the host's memory would hold far more than the grid's limit, and
    one step at the limit can take a minute (bfloat16 at 65,536), past the whole budget."""
    trial, tried, clock = _timed_card(limit=10**9, examples_per_s=100)
    b = find_max_batch(trial, _predicted(10**6), start=64, limit=2**16, budget_s=3.5,
                       clock=clock)
    # 64 and 128 took 1.92 s; 256, at 128's pace, would end at 4.48 s
    assert tried == [64, 128] and clock() <= 3.5
    assert b.stop_reason == "time budget" and b.max_ok_batch == 128


def test_when_even_batch_1_fails_the_search_says_so():
    trial, tried = _card(limit=0)
    b = find_max_batch(trial, _predicted(8), start=64, limit=2**16, budget_s=60)
    assert tried == [8, 7, 4, 2, 1]
    assert (b.max_ok_batch, b.first_failed_batch, b.stop_reason) == (None, 1, "oom")


def test_a_kernel_limit_is_named_as_such():
    trial, _ = _card(limit=10**9, kernel_limit=2**21)
    b = find_max_batch(trial, _boundary(), start=2**19, limit=2**24, budget_s=60)
    assert b.stop_reason == "kernel_limit"
    assert b.failure == "RuntimeError: integer out of range"
    assert b.max_ok_batch >= 0.95 * 2**21 and b.first_failed_batch == 2**21


def test_stops_at_the_batch_limit():
    trial, tried = _card(limit=10**9)
    b = find_max_batch(trial, _boundary(), start=64, limit=300, budget_s=60)
    assert tried == [64, 128, 256, 300]
    assert (b.max_ok_batch, b.first_failed_batch, b.stop_reason) == (300, None, "batch limit")


def test_stops_when_the_time_budget_is_spent():
    trial, tried, clock = _timed_card(limit=10**9, examples_per_s=100)
    b = find_max_batch(trial, _boundary(), start=64, limit=2**30, budget_s=3.5, clock=clock)
    # no cell said what a step costs: the search's own trials do (256 would end at 4.48 s)
    assert tried == [64, 128] and clock() <= 3.5
    assert b.stop_reason == "time budget" and b.max_ok_batch == 128


def test_a_first_trial_that_fails_bisects_downwards():
    trial, tried = _card(limit=40)
    b = find_max_batch(trial, _boundary(), start=64, limit=2**20, budget_s=60)
    assert tried[:3] == [64, 32, 48]
    assert b.max_ok_batch == 40 and b.first_failed_batch == 41


def test_a_failure_that_is_not_about_size_ends_the_search_at_once():
    """A worker that cannot start or a timeout says nothing about where memory runs out."""
    tried = []

    def trial(batch):
        tried.append(batch)
        if batch < 256:
            return Attempt(batch, Outcome.OK)
        return Attempt(batch, Outcome.ERROR, "RuntimeError: the worker could not start")

    b = find_max_batch(trial, _boundary(), start=64, limit=2**20, budget_s=60)
    assert tried == [64, 128, 256]
    assert (b.max_ok_batch, b.first_failed_batch, b.stop_reason) == (128, 256, "error")
    assert b.failure == "RuntimeError: the worker could not start"


def _timed_card(limit: int, examples_per_s: float):
    """A card whose trials take time, one step at the batch: batch / examples_per_s seconds on
    the clock it returns."""
    now, tried = [0.0], []

    def trial(batch):
        tried.append(batch)
        now[0] += batch / examples_per_s
        return Attempt(batch, Outcome.OK if batch <= limit else Outcome.OOM)

    return trial, tried, lambda: now[0]


def test_a_trial_predicted_to_outrun_the_budget_is_not_started():
    # doubling from 64 at 1,000 examples/s: 4,096 ends at 8.2 s; 8,192 would end at 16.4
    trial, tried, clock = _timed_card(limit=10**9, examples_per_s=1000)
    b = find_max_batch(trial, _boundary(), start=64, limit=2**30, budget_s=10, clock=clock,
                       step_s=lambda batch: batch / 1000)
    assert b.stop_reason == "time budget" and clock() <= 10
    assert b.max_ok_batch == tried[-1] == 4096


def test_a_search_that_memory_will_not_end_starts_at_the_largest_batch_it_can_afford():
    # the limit's step takes 0.66 s of a 10 s budget: the search tries it first
    trial, tried, clock = _timed_card(limit=10**9, examples_per_s=100_000)
    b = find_max_batch(trial, _boundary(), start=64, limit=2**16, budget_s=10, clock=clock,
                       step_s=lambda batch: batch / 100_000)
    assert tried == [2**16]
    assert (b.max_ok_batch, b.stop_reason) == (2**16, "batch limit")
    # at 1,000 examples/s half the budget affords 4,096: from there it doubles while it can
    trial, tried, clock = _timed_card(limit=10**9, examples_per_s=1000)
    b = find_max_batch(trial, _boundary(), start=64, limit=2**16, budget_s=10, clock=clock,
                       step_s=lambda batch: batch / 1000)
    assert tried == [4096] and b.stop_reason == "time budget"


def test_without_a_cells_step_time_a_prediction_is_climbed_to_within_the_budget():
    """A Slurm task that only searches: no cell of its own measured a step. The CPU's host
    memory predicted 358,702 and one step there took minutes against a 10 s budget; now the
    trials climb from the grid's batch, timed, and stop before one would outrun the budget."""
    trial, tried, clock = _timed_card(limit=10**9, examples_per_s=5000)
    b = find_max_batch(trial, _predicted(358_702), start=64, limit=2**20, budget_s=10,
                       clock=clock)
    assert tried == [64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
    assert b.stop_reason == "time budget" and clock() <= 10
    # a fast card: the trials soon say the prediction is affordable, and the search goes there
    trial, tried, clock = _timed_card(limit=1_000_000, examples_per_s=5e6)
    b = find_max_batch(trial, _predicted(990_000), start=64, limit=2**22, budget_s=10,
                       clock=clock)
    assert tried[:2] == [64, 990_000] and b.max_ok_batch <= 1_000_000 < b.first_failed_batch
    # memory that ends below the prediction ends the climb, and the search bisects from there
    trial, tried, clock = _timed_card(limit=300, examples_per_s=5000)
    b = find_max_batch(trial, _predicted(358_702), start=64, limit=2**20, budget_s=10,
                       clock=clock)
    assert tried[:4] == [64, 128, 256, 512] and b.max_ok_batch == 300


def test_a_search_started_high_that_runs_out_of_memory_bisects_down_to_the_boundary():
    trial, tried, clock = _timed_card(limit=3000, examples_per_s=100_000)
    b = find_max_batch(trial, _boundary(), start=64, limit=2**16, budget_s=10, clock=clock,
                       step_s=lambda batch: batch / 100_000)
    assert tried[0] == 2**16
    assert b.max_ok_batch <= 3000 < b.first_failed_batch
    assert b.first_failed_batch - b.max_ok_batch <= 0.01 * b.max_ok_batch
