"""Predict the allocator's peak for a training step at any batch size, without a GPU.

The model is derived from LeNet itself, not typed in: one training step runs on the CPU under a
dispatch mode that sees every tensor each operator creates and, through weak references, when its
storage dies, so it knows the bytes alive at every moment and their peak. Two small batches give a
line, peak = fixed + per_sample * batch; the weights and, for device-resident data, the whole data
set are added on top. The GPU's caching allocator rounds blocks up and keeps a cuDNN workspace,
which this does not see, so the measured peak runs a little above the prediction.

    python -c "from bench.predict import predict_peak_bytes as p; print(p(4096, 'float32'))"
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from bench.memory import LiveBytes
from lenet.data import TRAIN_SIZE
from lenet.model import IMAGE_SHAPE, NUM_CLASSES, build_lenet
from lenet.train import TrainStep

_PROBE_BATCHES = (64, 128)


def step_peak_bytes(batch_size: int, dtype: str, channels_last: bool) -> int:
    """Peak bytes created during one training step (the batch included) on the CPU."""
    net = build_lenet(seed=0)
    step = TrainStep(net, lr=0.1, dtype=dtype, channels_last=channels_last)
    images = torch.rand(batch_size, *IMAGE_SHAPE)
    labels = torch.randint(0, NUM_CLASSES, (batch_size,))
    step(images, labels)  # the first step creates lazily built state (GradScaler, autocast)
    with LiveBytes() as tracker:
        batch = images.clone(), labels.clone()  # the batch arrives on the device with the step
        step(*batch)
        del batch
    return tracker.peak_bytes


# cuBLAS and cuBLASLt keep a workspace each in the caching allocator, counted as allocated. On an
# H100 (sm90, torch 2.11) the measured allocator peak ran 65.3 to 66.9 MiB over the tensor-only
# prediction at batch 256 to 16,384 in float32: two 32 MiB workspaces. Older cards get smaller
# ones, so this is an upper bound there.
CUDA_WORKSPACE_BYTES = 64 * 2**20


@dataclass(frozen=True)
class MemoryModel:
    fixed_bytes: int  # weights, and what a step allocates whatever the batch
    per_sample_bytes: float  # saved activations, their gradients, the batch itself
    dataset_bytes: int  # the data set, when it lives on the device
    workspace_bytes: int = 0  # the libraries' workspaces in the allocator (CUDA)

    @property
    def base_bytes(self) -> int:
        return self.fixed_bytes + self.dataset_bytes + self.workspace_bytes

    def peak_bytes(self, batch_size: int) -> int:
        return int(self.base_bytes + self.per_sample_bytes * batch_size)

    def max_batch(self, capacity_bytes: int) -> int:
        return max(0, int((capacity_bytes - self.base_bytes) // self.per_sample_bytes))


@functools.cache
def _step_line(dtype: str, channels_last: bool) -> tuple[int, float]:
    small, large = _PROBE_BATCHES
    peak_small = step_peak_bytes(small, dtype, channels_last)
    peak_large = step_peak_bytes(large, dtype, channels_last)
    per_sample = (peak_large - peak_small) / (large - small)
    return int(peak_small - per_sample * small), per_sample


def memory_model(dtype: str, channels_last: bool, placement: str,
                 dataset_size: int = TRAIN_SIZE, device_type: str = "cpu") -> MemoryModel:
    step_fixed, per_sample = _step_line(dtype, channels_last)
    weights = sum(p.numel() * p.element_size() for p in build_lenet().parameters())
    image = torch.empty(IMAGE_SHAPE, dtype=torch.float32)
    sample_bytes = image.numel() * image.element_size() + 8  # a float32 image and an int64 label
    dataset = dataset_size * sample_bytes if placement == "device" else 0
    workspace = CUDA_WORKSPACE_BYTES if device_type == "cuda" else 0
    return MemoryModel(weights + step_fixed, per_sample, dataset, workspace)


# Where the model, fitted to an eager step's tensors, does not hold; it says so rather than
# predict. A compiled step fuses kernels (fewer intermediates) and keeps workspaces of its own; a
# CUDA graph keeps its step's memory in a private pool between replays, beside static copies of
# the batch.
_UNMODELLED = {
    "compile": "not modelled: torch.compile fuses kernels and keeps workspaces the eager model "
               "does not see",
    "compile-cudagraphs": "not modelled: torch.compile fuses kernels, and its CUDA graphs keep "
                          "a private memory pool",
    "graph": "not modelled: a CUDA graph keeps its step's memory in a private pool, beside "
             "static copies of the batch",
}


def unmodelled(config) -> str | None:
    """Why the model does not predict this cell's peak, or None where it does."""
    return _UNMODELLED.get(config.mode)


def model_for(config) -> MemoryModel:
    """The memory model of a bench.grid.Config's cell on its device, as an eager step (see
    `unmodelled` for where that does not hold)."""
    return memory_model(config.dtype, config.channels_last, config.placement,
                        device_type=torch.device(config.device).type)


def predict_peak_bytes(batch_size: int, dtype: str, channels_last: bool = False,
                       placement: str = "device", dataset_size: int = TRAIN_SIZE,
                       device_type: str = "cpu") -> int:
    return memory_model(dtype, channels_last, placement, dataset_size,
                        device_type).peak_bytes(batch_size)
