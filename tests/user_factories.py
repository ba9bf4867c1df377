"""Model factories as a user writes them, for `--model user_factories:NAME` (run from tests/):
one that trains, and the ways one can be wrong."""

from torch import nn


def tiny_mlp():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 5))
    return model, (3, 8, 8), 5


def raises():
    raise RuntimeError("the weights file is missing\nsecond line of detail")


def returns_a_model_alone():
    return nn.Linear(4, 2)


def wrong_class_count():
    return nn.Linear(4, 3), (4,), 7


def width_from_env():
    """A model whose width the environment sets (LENET_BENCH_TEST_WIDTH): the user's model edited
    between a run and its resume."""
    import os

    width = int(os.environ.get("LENET_BENCH_TEST_WIDTH", "8"))
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, width), nn.ReLU(), nn.Linear(width, 5))
    return model, (3, 8, 8), 5


class _NanHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3 * 8 * 8, 5)

    def forward(self, x):
        return self.linear(x.flatten(1)) * float("nan")


def nan_from_the_start():
    """A model whose loss is NaN from its first step: fast, and trains nothing."""
    return _NanHead(), (3, 8, 8), 5


def prints():
    print("building the model...")  # on standard output: it must not reach --json's
    return tiny_mlp()


def exits_zero():
    import sys

    sys.exit(0)


def hangs():
    import time

    time.sleep(3600)


def no_parameters():
    return nn.Flatten(), (5,), 5


class _IntegerLogits(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        return self.linear(x).round().long()


def integer_logits():
    return _IntegerLogits(), (4,), 3


def slow_to_build():
    """A factory that takes its time (LENET_BENCH_TEST_SLEEP_S), saying when it starts by
    writing the file LENET_BENCH_TEST_MARK names: a run stopped while it plans."""
    import os
    import time
    from pathlib import Path

    Path(os.environ["LENET_BENCH_TEST_MARK"]).write_text("building")
    time.sleep(float(os.environ.get("LENET_BENCH_TEST_SLEEP_S", "60")))
    return tiny_mlp()
