"""The notebook's LeNet, layer for layer, with its Xavier-uniform initialisation.

    >>> net = build_lenet()
    >>> net(torch.zeros(1, 1, 28, 28)).shape
    torch.Size([1, 10])
"""

from __future__ import annotations

import torch
from torch import nn

NUM_CLASSES = 10
IMAGE_SHAPE = (1, 28, 28)


def lenet() -> nn.Sequential:
    """LeNet-5 as the notebook writes it: sigmoid activations and average pooling."""
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5, padding=2), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.Sigmoid(),
        nn.Linear(120, 84), nn.Sigmoid(),
        nn.Linear(84, NUM_CLASSES),
    )  # fmt: skip


def init_weights(module: nn.Module) -> None:
    """The notebook's init: Xavier-uniform weights for Conv2d and Linear, default biases."""
    if type(module) in (nn.Linear, nn.Conv2d):
        nn.init.xavier_uniform_(module.weight)


def build_lenet(seed: int | None = None) -> nn.Sequential:
    """A freshly initialised LeNet; `seed` makes the initial weights reproducible."""
    if seed is not None:
        torch.manual_seed(seed)
    net = lenet()
    net.apply(init_weights)
    return net
