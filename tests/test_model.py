import math

import torch
from torch import nn

from lenet.model import build_lenet

# The table the notebook prints for a 1x1x28x28 input.
NOTEBOOK_SHAPES = [
    ("Conv2d", (1, 6, 28, 28)),
    ("Sigmoid", (1, 6, 28, 28)),
    ("AvgPool2d", (1, 6, 14, 14)),
    ("Conv2d", (1, 16, 10, 10)),
    ("Sigmoid", (1, 16, 10, 10)),
    ("AvgPool2d", (1, 16, 5, 5)),
    ("Flatten", (1, 400)),
    ("Linear", (1, 120)),
    ("Sigmoid", (1, 120)),
    ("Linear", (1, 84)),
    ("Sigmoid", (1, 84)),
    ("Linear", (1, 10)),
]


def test_layer_output_shapes_match_the_notebook():
    x = torch.rand(1, 1, 28, 28)
    seen = []
    for layer in build_lenet(seed=0):
        x = layer(x)
        seen.append((type(layer).__name__, tuple(x.shape)))
    assert seen == NOTEBOOK_SHAPES


def test_weights_are_xavier_uniform_and_biases_default():
    torch.manual_seed(0)
    net = build_lenet(seed=1)
    for layer in net:
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            fan_in = layer.weight[0].numel()
            fan_out = layer.weight.shape[0] * layer.weight[0, 0].numel()
            bound = math.sqrt(6 / (fan_in + fan_out))
            assert layer.weight.abs().max() <= bound
            # uniform over [-bound, bound]: the largest draw comes close to the bound
            assert layer.weight.abs().max() > 0.9 * bound
            # biases keep PyTorch's default, bounded by 1/sqrt(fan_in)
            assert layer.bias.abs().max() <= 1 / math.sqrt(fan_in)


def test_seed_makes_weights_reproducible():
    a, b = build_lenet(seed=3), build_lenet(seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
