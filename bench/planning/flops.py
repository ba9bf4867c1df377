"""How much arithmetic a training step does and how much memory traffic it makes: the FLOPs of
one example's forward and backward, counted once per model and input shape by torch's own
counter (torch.utils.flop_counter), and the bytes every operator of an eager step reads and
writes, counted per dtype; both on fake tensors, so that only shapes are computed (a ResNet-50's
step takes about a second to count).

The traffic is unfused: each operator's inputs and outputs as if each went to memory and back,
which is what an eager step does on a GPU; a compiled step fuses operators and moves less. With
the FLOPs it places a cell on a roofline: FLOPs over bytes, its arithmetic intensity.

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

import contextlib
import functools
from dataclasses import dataclass

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from bench.planning.models import ModelSpec
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


@contextlib.contextmanager
def _fake_step(model: ModelSpec, dtype: str = "float32", optimizer: str = "loop"):
    """An eager training step of `model` on fake tensors, its first step taken (it builds what
    is built lazily, the optimizer's state): what is counted next is one step alone."""
    with FakeTensorMode():
        step = TrainStep(model.build(seed=0), lr=0.1, dtype=dtype, optimizer=optimizer)
        step.scaler = None  # float16's checks for infinities need the host: a few scalars
        step(*_batch(model, _COUNT_BATCH))
        yield step


@functools.cache
def step_flops_per_example(model: ModelSpec) -> int:
    """FLOPs of one example's forward and backward through `model` (see the module's note on
    what is counted). Raises what the model raises on fake tensors."""
    with _fake_step(model) as step, flop_counter() as counter:
        step(*_batch(model, _COUNT_BATCH))
    return counter.get_total_flops() // _COUNT_BATCH


def counted(model: ModelSpec) -> int | None:
    """FLOPs an example, or None for a model the counter cannot trace: a row then has no
    FLOP/s, and the page says the figure was not counted."""
    try:
        return step_flops_per_example(model)
    except Exception:  # noqa: BLE001 - a user's model may refuse fake tensors
        return None


@dataclass(frozen=True)
class StepTraffic:
    """An eager step's memory traffic as a line in the batch: what it moves whatever the batch
    (the weights, their gradients, the update), and what each example adds (its activations),
    with the operators it runs (about the kernels it launches)."""

    fixed_bytes: int
    per_example_bytes: int
    operators: int

    def bytes_at(self, batch_size: int) -> int:
        return self.fixed_bytes + self.per_example_bytes * batch_size


# Namespaces of operators that run no kernel: a tensor's device asked for (prim.device: dozens
# of times a step, by autograd and the optimizer, their number varying with torch's version)
# and the profiler's record_function marks around the optimizer's step.
_NO_KERNEL = frozenset({"prim", "profiler"})


class _Traffic(TorchDispatchMode):
    """Sums the bytes every operator reads and writes: each tensor it takes is read, each it
    writes in place is written as well (a multi-tensor add returns nothing: its first argument
    is what it wrote), and each new tensor it gives is written. Views, detaching and what only
    reads a tensor's metadata move nothing."""

    def __init__(self):
        super().__init__()
        self.bytes = self.operators = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if (not func.is_view and func is not torch.ops.aten.detach.default
                and func.namespace not in _NO_KERNEL):
            self.operators += 1
            schema = func._schema
            written = [args[i] if i < len(args) else kwargs.get(argument.name)
                       for i, argument in enumerate(schema.arguments)
                       if argument.alias_info is not None and argument.alias_info.is_write]
            returned = out if len(schema.returns) > 1 else (out,)
            # a return that aliases an argument (add_'s self, an out= tensor) is counted there
            new = [value for value, result in zip(returned, schema.returns, strict=False)
                   if result.alias_info is None]
            self.bytes += _bytes((args, kwargs)) + _bytes(written) + _bytes(new)
        return out


def _bytes(tree) -> int:
    return sum(t.numel() * t.element_size() for t in tree_flatten(tree)[0]
               if isinstance(t, torch.Tensor))


@functools.cache
def step_traffic(model: ModelSpec, dtype: str, optimizer: str = "loop") -> StepTraffic:
    """The traffic of an eager step of `model` at `dtype` (autocast's) whose update is SGD's
    `optimizer` implementation (lenet.modes.implementation; a loop, as on the CPU, unless told),
    from steps at two batches: it grows in proportion to the batch."""
    (small, operators), (large, _) = (bytes_moved(model, dtype, _COUNT_BATCH, optimizer),
                                      bytes_moved(model, dtype, 2 * _COUNT_BATCH, optimizer))
    per_example = (large - small) // _COUNT_BATCH
    return StepTraffic(small - per_example * _COUNT_BATCH, per_example, operators)


def bytes_moved(model: ModelSpec, dtype: str, batch_size: int,
                optimizer: str = "loop") -> tuple[int, int]:
    """(bytes, operators) of one eager step at `batch_size`, counted on fake tensors."""
    with _fake_step(model, dtype, optimizer) as step:
        images, labels = _batch(model, batch_size)  # made before the count: the step's input
        with _Traffic() as traffic:
            step(images, labels)
    return traffic.bytes, traffic.operators


def _batch(model: ModelSpec, batch_size: int):
    return (torch.rand(batch_size, *model.input_shape),
            torch.randint(0, model.num_classes, (batch_size,)))


def traffic_of(model: ModelSpec, dtype: str, optimizer: str) -> StepTraffic | None:
    """The step's traffic, or None for a model that cannot be traced on fake tensors."""
    try:
        return step_traffic(model, dtype, optimizer)
    except Exception:  # noqa: BLE001 - a user's model may refuse fake tensors
        return None
