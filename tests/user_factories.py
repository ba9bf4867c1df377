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
