"""How much arithmetic a training step does: the FLOPs of one example's forward and backward,
counted once per model and input shape by torch's own counter (torch.utils.flop_counter) on fake
tensors, so that only shapes are computed (a ResNet-50's step takes about a second to count).

The counter knows the operators that carry a network's arithmetic: convolutions, matrix
products and attention, forward and backward. It leaves out elementwise work (activations, the
loss, pooling) and the SGD update, a few FLOPs a parameter a step; so a figure here is the
usual "model FLOPs" of a training step, the one performance papers divide by, and a cell's
achieved FLOP/s is a lower bound on what its card did.

torch's counter leaves the groups out of a grouped convolution's weight gradient (pytorch/pytorch
#183405): a depthwise convolution's was counted once per channel too many, 34x the forward for
mobilenet_v3_small. The formula here divides it by the groups, as the forward's does.

LeNet, counted by hand: conv1 6x28x28 outputs of 25 multiply-adds (235,200 FLOPs), conv2
16x10x10 of 150 (480,000), the three linear layers 58,920 multiply-adds (117,840): 833,040
forward; the backward needs the weights' gradients of all five and the inputs' gradients of all
but conv1 (1,430,880): 2,263,920 FLOPs an example, what the counter gives.
"""

from __future__ import annotations

import functools

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from bench.models import ModelSpec
from lenet.train import TrainStep

# the batch the count runs at: FLOPs of these layers grow in proportion to it, so any batch
# gives the same figure an example; two keeps batch norm training
_COUNT_BATCH = 2


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation,
                         transposed, _output_padding, groups, output_mask, out_shape,
                         **kwargs) -> int:
    """torch's formula for a convolution's backward (the inputs' gradient as a transposed
    convolution, the weights' as a convolution of the input with the output's gradient), with
    the weights' gradient counted per group."""
    def swapped(shape):  # the batch and channel dimensions exchanged
        return [shape[1], shape[0], *shape[2:]]

    flops = 0
    if output_mask[0]:
        flops += conv_flop_count(grad_out_shape, w_shape, out_shape[0], not transposed)
    if output_mask[1]:
        inputs, outputs = (grad_out_shape, x_shape) if transposed else (x_shape, grad_out_shape)
        flops += conv_flop_count(swapped(inputs), swapped(outputs), swapped(out_shape[1]),
                                 transposed=False) // groups
    return flops


def flop_counter() -> FlopCounterMode:
    """torch's FLOP counter, with the grouped convolution's backward counted right."""
    return FlopCounterMode(display=False,
                           custom_mapping={torch.ops.aten.convolution_backward:
                                           _conv_backward_flops})


@functools.cache
def step_flops_per_example(model: ModelSpec) -> int:
    """FLOPs of one example's forward and backward through `model` (see the module's note on
    what is counted). Raises what the model raises on fake tensors."""
    with FakeTensorMode():
        net = model.build(seed=0)
        step = TrainStep(net, lr=0.1)

        def batch():
            return (torch.rand(_COUNT_BATCH, *model.input_shape),
                    torch.randint(0, model.num_classes, (_COUNT_BATCH,)))

        step(*batch())  # a first step builds what is built lazily (the optimizer's state)
        with flop_counter() as counter:
            step(*batch())
    return counter.get_total_flops() // _COUNT_BATCH


def counted(model: ModelSpec) -> int | None:
    """FLOPs an example, or None for a model the counter cannot trace: a row then has no
    FLOP/s, and the page says the figure was not counted."""
    try:
        return step_flops_per_example(model)
    except Exception:  # noqa: BLE001 - a user's model may refuse fake tensors
        return None
