"""The whole training step (forward, loss, backward and the SGD update) captured once as a CUDA
graph and replayed: one launch per step instead of one per kernel.

LeNet's kernels are tiny, so at small batches an eager step spends its time launching them; a
replay launches the step's few dozen kernels at once. The recipe is PyTorch's whole-network
capture (torch.cuda.graphs): a few steps on a side stream first, so lazily built state (cuBLAS
handles, the optimizer's buffers) exists before capture; gradients set to None, so the captured
backward allocates them from the graph's private pool; then input buffers at fixed addresses that
every step copies its batch into. SGD keeps no step count on the host, so it captures as it is.
"""

from __future__ import annotations

import torch

from lenet.modes import TABLE
from lenet.train import TrainStep

# Steps on a side stream before capture, as PyTorch's recipe does (its example uses 3).
WARMUP_BEFORE_CAPTURE = 3


class GraphedStep:
    """A TrainStep captured on its first call and replayed after. The tensors it returns are the
    graph's static outputs: the next call overwrites them, so read them before it. The first call
    trains WARMUP_BEFORE_CAPTURE steps before the captured one; `first_loss` is the first of
    them."""

    def __init__(self, step: TrainStep):
        refusal = TABLE["graph"].refusal(str(step.device), step.dtype)
        if refusal:
            raise ValueError(f"{refusal}, not {step.device}" if step.device.type != "cuda"
                             else refusal)
        self.step = step
        self.graph: torch.cuda.CUDAGraph | None = None

    def _capture(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        # torch.cuda.graph captures on the current device's stream: make it the step's, or a
        # step on cuda:1 is captured on cuda:0's stream (an empty graph, or a capture error)
        with torch.cuda.device(self.step.device):
            self._capture_here(images, labels)

    def _capture_here(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images.clone(memory_format=self.step.memory_format)
        self.labels = labels.clone()
        side = torch.cuda.Stream(self.step.device)
        side.wait_stream(torch.cuda.current_stream(self.step.device))
        with torch.cuda.stream(side):
            for n in range(WARMUP_BEFORE_CAPTURE):
                loss, _ = self.step(self.images, self.labels)
                if n == 0:  # the loss before any training, as an eager step's first call gives
                    self.first_loss = loss.detach().clone()
        torch.cuda.current_stream(self.step.device).wait_stream(side)
        self.step.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        # thread_local, as inductor captures: a DataLoader's pin-memory thread allocating pinned
        # host memory during the capture must not break it (global mode forbids that call on
        # every thread)
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self.loss, self.logits = self.step(self.images, self.labels)
        self.graph = graph

    def __call__(self, images: torch.Tensor, labels: torch.Tensor):
        """Returns the loss and the logits, both still on the device."""
        if self.graph is None:
            self._capture(images, labels)
        self.images.copy_(images, non_blocking=True)
        self.labels.copy_(labels, non_blocking=True)
        self.graph.replay()
        return self.loss, self.logits

