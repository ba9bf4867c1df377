"""How a cell sizes and warms up its repeats, through the seam that runs a block of steps."""

from bench.execution.cell import Settings, steps_per_repeat, warmup_steps_for
from bench.planning.grid import Config

SETTINGS = Settings(min_repeat_s=0.2, warmup_steps=3)


class Blocks:
    """Seconds for each block of steps asked for: a first slow step, then 1 ms a step."""

    def __init__(self, first_s=None, step_s=0.001):
        self.first_s, self.step_s, self.asked = first_s, step_s, []

    def __call__(self, count):
        self.asked.append(count)
        if self.first_s is not None and len(self.asked) == 1:
            return self.first_s
        return count * self.step_s


def test_blocks_double_until_a_quarter_of_a_repeat_then_one_more():
    blocks = Blocks()
    assert steps_per_repeat(blocks, SETTINGS) == 200  # 0.2 s at 1 ms a step
    assert blocks.asked == [1, 2, 4, 8, 16, 32, 64, 64]  # 64 ms >= 50 ms, then a second block


def test_one_slow_step_does_not_size_every_repeat():
    """On an H100 a loader worker still starting made one step 0.2 s: five repeats of one step
    each were timed (b256, 4 workers). The second block sees the steady speed."""
    blocks = Blocks(first_s=0.3)
    assert steps_per_repeat(blocks, SETTINGS) == 200
    assert blocks.asked == [1, 1]


def test_a_step_longer_than_a_repeat_is_one_step_a_repeat():
    assert steps_per_repeat(Blocks(step_s=0.5), SETTINGS) == 1


def test_the_cap_on_steps_holds():
    capped = Settings(min_repeat_s=0.2, max_steps_per_repeat=10)
    assert steps_per_repeat(Blocks(step_s=1e-6), capped) == 10


def test_warm_up_drains_what_loader_workers_queued():
    assert warmup_steps_for(Config(256, placement="host", num_workers=4), SETTINGS) == 3 + 8
    assert warmup_steps_for(Config(256, placement="host"), SETTINGS) == 3
    assert warmup_steps_for(Config(256, placement="device"), SETTINGS) == 3
