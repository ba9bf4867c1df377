"""Predict the allocator's peak for a training step at any batch size, without a GPU.

The model is derived from the network itself (LeNet, or any model bench.planning.models builds), not
typed in: one training step runs on the CPU under a dispatch mode that sees every tensor each
operator creates and, through weak references, when its storage dies, so it knows the bytes alive at
every moment and their peak. Probe steps give two lines, peak = fixed + per_sample * batch: one from
batches of a few examples, where the gradients make the peak, one from batches where the
activations do; the prediction is the larger. The weights and, for device-resident data, the
whole data set are added on top, and on a GPU the libraries' workspaces. The same steps, kept
as the order their tensors were created and died in, are replayed through the GPU's caching
allocator (bench.planning.allocator) for the OOM boundary, which its fragmentation sets at huge
batches rather than the peak of live tensors.

    python -c "from bench.planning.predict import predict_peak_bytes; \
        print(predict_peak_bytes(4096, 'float32'))"
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from bench.instruments.memory import AllocationTrace
from bench.instruments.nvml import NvmlReader, NvmlUnavailable
from bench.planning import allocator
from bench.planning.allocator import CONTEXT_ALLOWANCE_BYTES
from bench.planning.grid import LENET
from bench.planning.models import SYNTHETIC_SIZE, ModelSpec, parameters, resolve
from lenet.data import TRAIN_SIZE
from lenet.modes import TABLE
from lenet.replicas import Replicas
from lenet.train import TrainStep

# Each line is fitted through two probe steps. The line of a few examples starts at two (batch
# norm needs two to train); LeNet's activations line is fitted at the batches it was calibrated
# at on a GPU, another model's where its slope has settled (see _fit).
_PROBE_BATCHES = {LENET: (64, 128)}
_FEW_PROBES = (2, 4)
_LARGEST_PROBE = 64
_SETTLED = 0.05


def step_peak_bytes(batch_size: int, dtype: str, channels_last: bool,
                    model: ModelSpec | None = None, replicas: int = 1) -> int:
    """Peak bytes created during one training step (the batch included), counted on fake CPU
    tensors: every operator runs for its output's shape and dtype (autocast included) and
    computes nothing, so a ResNet-50's step at batch 64 costs a second, not minutes. On LeNet,
    resnet18 and mobilenet_v3_small the count matched a real CPU step's to the byte in float32
    and within 0.05% in bfloat16. `replicas` models stacked as one (lenet.replicas) train on
    the batch at once."""
    return _traced_step(batch_size, dtype, channels_last, model or resolve(LENET), replicas)[0]


@functools.cache
def _traced_step(batch_size: int, dtype: str, channels_last: bool, model: ModelSpec,
                 replicas: int) -> tuple[int, tuple]:
    """(the step's peak, its allocations and frees in order: AllocationTrace's events)."""
    with FakeTensorMode():
        net = model.build(seed=0)
        if replicas > 1:
            net = Replicas([net, *(model.build(seed=k) for k in range(1, replicas))])
        step = TrainStep(net, lr=0.1, dtype=dtype)
        if channels_last and replicas == 1:
            # as TrainStep converts, but in place: fake parameters cannot be swapped
            for param in net.parameters():
                if param.dim() == 4:
                    param.data = param.data.contiguous(memory_format=torch.channels_last)
            step.memory_format = torch.channels_last
        # float16's GradScaler checks for infinities on the host, which a fake tensor cannot
        # answer; what it holds is a few scalars
        step.scaler = None
        # a first step, of two examples, creates the state built lazily whatever the batch
        step(torch.rand(2, *model.input_shape), torch.randint(0, model.num_classes, (2,)))
        images = torch.rand(batch_size, *model.input_shape)
        labels = torch.randint(0, model.num_classes, (batch_size,))
        # the weights and buffers exist before the step: an in-place update or a view of one
        # is no allocation
        existing = {t.untyped_storage()._cdata
                    for t in itertools.chain(net.parameters(), net.buffers())}
        with AllocationTrace(existing) as tracker:
            batch = images.clone(), labels.clone()  # the batch arrives with the step
            step(*batch)
            del batch
    return tracker.peak_bytes, tuple(tracker.events)


# torch gives each (cuBLAS handle, stream) a cuBLAS workspace, and each (cuBLASLt handle, stream)
# a cuBLASLt one, from the caching allocator, so they count as allocated. A training step uses
# two handles, the forward's thread's and the autograd engine's backward thread's, and both make a
# cuBLAS workspace; only one cuBLASLt workspace appears, with the forward's products (a linear
# layer with a bias runs on cuBLASLt). On an H100 and an H200 (compute capability 9.0, torch
# 2.11) every float32 cell's allocated peak, b256 to b16,384, was a replay of its step with two
# 32 MiB workspaces and one of 1 MiB, to 2 KiB (docs/results/); with a second cuBLASLt one it ran
# 1 MiB over in every row. The sizes follow torch's own rule
# (aten/src/ATen/cuda/CublasHandlePool.cpp): cuBLAS's is CUBLAS_WORKSPACE_CONFIG's sum of
# `:KiB:count` pairs, else 32 MiB on compute capability 9.0 and 4096 KiB x 2 + 16 KiB x 8
# elsewhere; cuBLASLt's is CUBLASLT_WORKSPACE_SIZE KiB (1,024 by default), never more than
# cuBLAS's, and none where TORCH_CUBLASLT_UNIFIED_WORKSPACE has it share cuBLAS's.
_HOPPER_CUBLAS_BYTES = 4096 * 8 * 1024
_OTHER_CUBLAS_BYTES = 4096 * 1024 * 2 + 16 * 1024 * 8
_CUBLASLT_DEFAULT_KIB = 1024


def cuda_workspace_bytes(capability: tuple[int, int] | None,
                         environ: Mapping[str, str] = os.environ) -> int:
    """The libraries' workspaces a training step leaves in the caching allocator on a card of
    `capability`; None (a card not here to ask) is read as 9.0, the largest default."""
    return sum(map(sum, step_workspaces(capability, environ)))


def step_workspaces(capability: tuple[int, int] | None,
                    environ: Mapping[str, str] = os.environ) -> tuple[tuple[int, ...], ...]:
    """The workspaces a step's first matrix products allocate, in bytes: the forward's (cuBLAS's,
    then cuBLASLt's where it has one of its own), then the backward's (cuBLAS's)."""
    pairs = re.findall(r":([0-9]+):([0-9]+)", environ.get("CUBLAS_WORKSPACE_CONFIG", ""))
    if pairs:
        cublas = sum(int(kib) * 1024 * int(count) for kib, count in pairs)
    else:
        cublas = _OTHER_CUBLAS_BYTES if capability not in (None, (9, 0)) \
            else _HOPPER_CUBLAS_BYTES
    unified = environ.get("TORCH_CUBLASLT_UNIFIED_WORKSPACE", "").lower() in ("1", "true", "on",
                                                                              "yes")
    if unified:
        return (cublas,), (cublas,)
    lt_kib = environ.get("CUBLASLT_WORKSPACE_SIZE", "")
    lt = min(cublas, (int(lt_kib) if lt_kib.isdigit() else _CUBLASLT_DEFAULT_KIB) * 1024)
    return (cublas, lt), (cublas,)


@functools.cache
def card_capability(device: str) -> tuple[int, int] | None:
    """The compute capability of the card `device` names, through NVML (which does not start
    CUDA in this process); None where NVML cannot say, or the card is not here."""
    index = torch.device(device).index or 0
    try:
        with NvmlReader(index) as reader:
            return reader.compute_capability()
    except NvmlUnavailable:
        return None


# What one LeNet's CUDA step at bfloat16 or float16 allocates beyond the fake-tensor count, a
# sample, by layout (NCHW, channels_last): cuDNN's convolution workspaces, its layout copies and
# CUDA autocast's casts, which a count on the CPU does not see. The allocator's peaks on an H200
# (compute capability 9.0, torch 2.11; docs/results/nvidia-h200/gpu-check.tgz,
# default/results.jsonl) ran over the count by 25,415,660 and 104,680,940 bytes at b4,096 and
# b16,384 in NCHW (6,450.6 a sample between them), 63,950,828 and 259,870,700 in channels_last
# (15,944 a sample), the same to the byte at float16, and the same figures on an H100; float32
# needs none (within 0.4%). With the workspaces counted as the cards showed (one cuBLASLt
# workspace, above), the slope alone puts every 16-bit peak of that grid within 0.07%.
_CUDA_16BIT_UNSEEN_PER_SAMPLE = {False: 6_451, True: 15_944}


@dataclass(frozen=True)
class MemoryModel:
    """Peak bytes as the larger of two lines in the batch size. From a few examples up, a step
    peaks as its backward ends, holding every gradient and few activations; once the
    activations outweigh the gradients it peaks as the backward begins, and grows faster."""

    fixed_bytes: int  # weights, and what a step allocates whatever the batch
    per_sample_bytes: float  # saved activations, their gradients, the batch itself
    dataset_bytes: int  # the data set, when it lives on the device
    workspace_bytes: int = 0  # the libraries' workspaces in the allocator (CUDA)
    few_fixed_bytes: int = 0  # the line of batches of a few examples
    few_per_sample_bytes: float = 0.0
    weights_bytes: int = 0  # in both fixed figures

    def step_bytes(self, batch_size: int) -> int:
        """What one step creates, the batch included: what the CPU's tracked peak counts (it
        leaves out the weights, the data set and workspaces, which exist before the step)."""
        return (self.peak_bytes(batch_size) - self.dataset_bytes - self.workspace_bytes
                - self.weights_bytes)

    def peak_bytes(self, batch_size: int) -> int:
        step = max(self.fixed_bytes + self.per_sample_bytes * batch_size,
                   self.few_fixed_bytes + self.few_per_sample_bytes * batch_size)
        return int(self.dataset_bytes + self.workspace_bytes + step)

    def max_batch(self, capacity_bytes: int) -> int:
        room = capacity_bytes - self.dataset_bytes - self.workspace_bytes
        largest = [(room - fixed) // per_sample
                   for fixed, per_sample in ((self.fixed_bytes, self.per_sample_bytes),
                                             (self.few_fixed_bytes, self.few_per_sample_bytes))
                   if per_sample > 0]
        return max(0, int(min(largest)))


def _line(model: ModelSpec, dtype: str, channels_last: bool, small: int,
          large: int, replicas: int) -> tuple[int, float]:
    peak_small = step_peak_bytes(small, dtype, channels_last, model, replicas)
    peak_large = step_peak_bytes(large, dtype, channels_last, model, replicas)
    per_sample = (peak_large - peak_small) / (large - small)
    return int(peak_small - per_sample * small), per_sample


@functools.cache
def _fit(dtype: str, channels_last: bool, model: ModelSpec,
         replicas: int = 1) -> tuple[tuple[int, ...], tuple]:
    """(the probe batches, (the activations' line, the line of a few examples)). LeNet's
    activations line is fitted where it was calibrated; another model's through doubling
    batches until its slope holds within 5% well above the few's (the activations then make
    the peak), up to 64."""
    few = _line(model, dtype, channels_last, *_FEW_PROBES, replicas)
    if model.name in _PROBE_BATCHES:
        small, large = _PROBE_BATCHES[model.name]
        return (small, large, *_FEW_PROBES), (
            _line(model, dtype, channels_last, small, large, replicas), few)
    small, line = _FEW_PROBES[1], None
    while True:
        previous, line = line, _line(model, dtype, channels_last, small, 2 * small, replicas)
        # settled: the slope holds, and is the activations' (well above the few's)
        settled = previous is not None and abs(line[1] / previous[1] - 1) < _SETTLED \
            and line[1] > 2 * few[1]
        if settled or 2 * small >= _LARGEST_PROBE:
            return (small, 2 * small, *_FEW_PROBES), (line, few)
        small *= 2


def probe_batches(dtype: str, channels_last: bool, model: ModelSpec) -> tuple[int, ...]:
    """The batches the two lines are fitted through: the activations' two, then the few's."""
    return _fit(dtype, channels_last, model)[0]


@functools.cache
def _weights_bytes(model: ModelSpec) -> int:
    # float32 parameters: autocast casts copies inside the step, which the step line counts
    return parameters(model.build(seed=0)) * 4


def memory_model(dtype: str, channels_last: bool, placement: str,
                 dataset_size: int | None = None, device_type: str = "cpu",
                 model: ModelSpec | None = None, replicas: int = 1,
                 capability: tuple[int, int] | None = None) -> MemoryModel:
    """`dataset_size` defaults to what a run holds: Fashion-MNIST's training split for LeNet,
    bench.planning.models.SYNTHETIC_SIZE examples for another model. `replicas` models stacked
    by vmap share the batch and the data set. `capability`: a CUDA card's compute capability,
    which sizes the libraries' workspaces (cuda_workspace_bytes)."""
    model = model or resolve(LENET)
    if dataset_size is None:
        dataset_size = TRAIN_SIZE if model.is_lenet else SYNTHETIC_SIZE
    (step_fixed, per_sample), (few_fixed, few_per_sample) = _fit(dtype, channels_last, model,
                                                                 replicas)[1]
    sample_bytes = 4 * math.prod(model.input_shape) + 8  # a float32 input, an int64 label
    dataset = dataset_size * sample_bytes if placement == "device" else 0
    workspace = cuda_workspace_bytes(capability) if device_type == "cuda" else 0
    weights = _weights_bytes(model) * replicas
    unseen = _CUDA_16BIT_UNSEEN_PER_SAMPLE[channels_last] \
        if device_type == "cuda" and dtype != "float32" else 0
    return MemoryModel(weights + step_fixed, per_sample + unseen, dataset, workspace,
                       weights + few_fixed, few_per_sample + unseen, weights)


def unmodelled(config) -> str | None:
    """Why the model does not predict this cell's peak (its mode's, lenet.modes, its
    replicas', or a 16-bit step's on a GPU other than one LeNet's), or None where it does."""
    if config.replicas > 1 and config.replica_method == "streams":
        return ("not modelled: K models step in turn, and on a GPU their streams overlap by as "
                "much as the card schedules")
    if config.device.startswith("cuda") and config.dtype != "float32" and (
            config.model != LENET or config.replicas > 1):
        return ("not modelled: at 16-bit a GPU step allocates cuDNN workspaces, layout copies "
                "and autocast's casts that a count on the CPU does not see, measured for one "
                "LeNet alone")
    return TABLE[config.mode].unmodelled


def model_for(config) -> MemoryModel:
    """The memory model of a bench.planning.grid.Config's cell on its device, as an eager step (see
    `unmodelled` for where that does not hold)."""
    return memory_model(config.dtype, config.channels_last, config.placement,
                        device_type=torch.device(config.device).type,
                        model=resolve(config.model, config.input_shape),
                        replicas=config.replicas,
                        capability=card_capability(config.device)
                        if config.device.startswith("cuda") else None)


def predict_peak_bytes(batch_size: int, dtype: str, channels_last: bool = False,
                       placement: str = "device", dataset_size: int | None = None,
                       device_type: str = "cpu", model: ModelSpec | None = None) -> int:
    return memory_model(dtype, channels_last, placement, dataset_size, device_type,
                        model).peak_bytes(batch_size)


# the operators that run on cuBLAS, whose handle allocates its workspaces on its first call
_MATMULS = {"mm", "addmm", "bmm", "baddbmm", "_addmm_activation"}


def _is_matmul(operator: str) -> bool:
    return operator.startswith("aten.") and operator.split(".")[1] in _MATMULS


@functools.cache
def _resident_bytes(model: ModelSpec) -> tuple[int, ...]:
    """Each parameter's and buffer's bytes: what moving a fresh model to the card allocates."""
    net = model.build(seed=0)
    return tuple(t.numel() * t.element_size()
                 for t in itertools.chain(net.parameters(), net.buffers()))


@functools.cache
def _step_events(dtype: str, channels_last: bool, model: ModelSpec,
                 replicas: int) -> tuple | None:
    """A step's allocations with their sizes a line in the batch (bench.planning.allocator's
    events), through the two batches the activations' line is fitted at; None where the two
    steps do not allocate alike (then no replay holds at every batch)."""
    small, large = _fit(dtype, channels_last, model, replicas)[0][:2]
    at_small = _traced_step(small, dtype, channels_last, model, replicas)[1]
    at_large = _traced_step(large, dtype, channels_last, model, replicas)[1]
    if [e[::2] if e[0] == "alloc" else e for e in at_small] != \
            [e[::2] if e[0] == "alloc" else e for e in at_large]:
        return None
    events = []
    for one, other in zip(at_small, at_large):
        if one[0] == "free":
            events.append(one)
            continue
        per_sample = (other[1] - one[1]) / (large - small)
        events.append(("alloc", one[1] - per_sample * small, per_sample, one[2]))
    return tuple(events)


def trial_allocations(config) -> tuple | None:
    """What a boundary trial of `config` (bench.execution.cell.run_trial) asks a CUDA card's
    allocator for, in order, as bench.planning.allocator replays it: a fresh model's weights;
    on device-resident data the data set and the batch's indices; at 16-bit what the step
    allocates unseen (held through it: where is not known); then the step, with the workspaces
    of the forward's and the backward's handles at each one's first matrix product
    (step_workspaces). None where the step cannot be replayed at every batch. The same for every
    batch of a cell's settings: built once for them."""
    return _trial_allocations(config.model, config.input_shape, config.dtype,
                              config.channels_last, config.placement, config.replicas,
                              step_workspaces(card_capability(config.device)))


@functools.cache
def _trial_allocations(model_name: str, input_shape: str, dtype: str, channels_last: bool,
                       placement: str, replicas: int,
                       workspaces: tuple[tuple[int, ...], ...]) -> tuple | None:
    model = resolve(model_name, input_shape)
    step = _step_events(dtype, channels_last, model, replicas)
    if step is None:
        return None
    events = [("alloc", ("weights", k), nbytes, 0)
              for k, nbytes in enumerate(_resident_bytes(model) * replicas)]
    if placement == "device":
        size = TRAIN_SIZE if model.is_lenet else SYNTHETIC_SIZE
        events += [("alloc", "images", 4 * math.prod(model.input_shape) * size, 0),
                   ("alloc", "labels", 8 * size, 0), ("alloc", "indices", 0, 8)]
    if dtype != "float32":
        events.append(("alloc", "unseen", 0, _CUDA_16BIT_UNSEEN_PER_SAMPLE[channels_last]))
    backward, handles = False, set()  # handles: the phases whose handle has its workspaces
    for index, event in enumerate(step):
        if event[0] == "free":
            events.append(event)
            continue
        _, fixed, per_sample, operator = event
        events.append(("alloc", index, fixed, per_sample))
        backward = backward or "backward" in operator
        if _is_matmul(operator) and backward not in handles:
            handles.add(backward)
            events += [("alloc", ("workspace", backward, k), nbytes, 0)
                       for k, nbytes in enumerate(workspaces[backward])]
    return tuple(events)


def allocator_room_bytes(config, capacity_bytes: int, capped: bool) -> int:
    """What `config`'s allocator may reserve: a --memory-cap where `capped` (the allocator's own
    limit), else the device's free memory, less the worker's CUDA context on a GPU."""
    if capped or not config.device.startswith("cuda"):
        return capacity_bytes
    return capacity_bytes - CONTEXT_ALLOWANCE_BYTES


def _replayed(config) -> tuple | None:
    """The allocations a GPU step replays through the caching allocator, or None where the
    allocator's peak is read from the live tensors' line instead: on the CPU (no caching
    allocator), at other settings of the allocator, or a step that cannot be replayed."""
    if not config.device.startswith("cuda") or not allocator.default_settings():
        return None
    return trial_allocations(config)


def prediction_method(config) -> str:
    """How boundary_batch predicts `config`'s boundary: "allocator" (a trial replayed through the
    caching allocator) or "tensors" (where the live tensors' peak meets the room)."""
    return "tensors" if _replayed(config) is None else "allocator"


def boundary_batch(config, capacity_bytes: int, capped: bool) -> int:
    """The predicted OOM boundary of `config`'s search: the largest batch whose step fits
    (allocator_room_bytes). On a GPU, where a trial's allocations replayed through the caching
    allocator first fail (bench.planning.allocator); else where the live tensors' peak meets
    the room (MemoryModel.max_batch)."""
    room = allocator_room_bytes(config, capacity_bytes, capped)
    line = model_for(config).max_batch(room)
    events = _replayed(config)
    return line if events is None else allocator.largest_batch(events, room, line + 1)


def step_fits(config, capacity_bytes: int, capped: bool) -> bool:
    """Whether `config`'s step fits at its batch, by boundary_batch's rule."""
    room = allocator_room_bytes(config, capacity_bytes, capped)
    events = _replayed(config)
    if events is None:
        return model_for(config).peak_bytes(config.batch_size) <= room
    return allocator.replay(events, config.batch_size, room).fits
