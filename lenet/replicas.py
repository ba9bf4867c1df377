"""K independent models trained at once on one device: what a hyperparameter sweep or an ensemble
of small models does with a card that one LeNet leaves mostly idle.

Two ways, an axis of the grid (`replica_method`), since which is faster depends on the device:

- `vmap`: the K models as one (torch.func.stack_module_state, then torch.vmap over
  functional_call), so each operator runs once for all K: a convolution becomes one grouped
  convolution, a linear layer one batched matrix product. K times the work per kernel launch.
- `streams`: K models of their own, each step issued in turn; on a GPU each on a CUDA stream of
  its own, so the card may overlap their kernels. K times the launches.

Every replica trains on the same batch (as a sweep over seeds or learning rates does) from its own
initial weights; a step's loss is the mean of the K losses.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, stack_module_state


class Replicas(nn.Module):
    """K models of one architecture as one module: its parameters are the K models' stacked
    along a new first dimension, and its output is the K models' logits one after another,
    replica k's in rows k*B to (k+1)*B of a batch of B."""

    def __init__(self, nets: list[nn.Module]):
        super().__init__()
        params, buffers = stack_module_state(nets)
        self.count = len(nets)
        self._param_names = list(params)
        self._buffer_names = list(buffers)
        self.stacked = nn.ParameterList(nn.Parameter(p.detach()) for p in params.values())
        for index, buffer in enumerate(buffers.values()):
            self.register_buffer(f"stacked_buffer_{index}", buffer)
        # the architecture to call with the stacked tensors; its own weights are dropped for
        # shapes on the meta device (so they take no memory) and kept out of this module's
        # parameters (a list, not an attribute torch registers)
        skeleton = nets[0]
        for module in skeleton.modules():
            for tensors in (module._parameters, module._buffers):
                for name, tensor in tensors.items():
                    if tensor is not None:
                        tensors[name] = torch.empty_like(tensor, device="meta")
        self._skeleton = [skeleton]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        params = dict(zip(self._param_names, self.stacked))
        buffers = {name: getattr(self, f"stacked_buffer_{i}")
                   for i, name in enumerate(self._buffer_names)}

        def one(params, buffers, images):
            return functional_call(self._skeleton[0], (params, buffers), (images,))

        # each replica draws its own randomness (dropout), as K separate models would
        logits = torch.vmap(one, in_dims=(0, 0, None), randomness="different")(
            params, buffers, images)
        return logits.flatten(0, 1)


class StreamedSteps:
    """K training steps of K models, issued in turn; on a GPU each on its own CUDA stream, which
    waits for the batch and is waited for before the step returns. The tensors it returns are
    the mean loss and the first replica's logits."""

    def __init__(self, steps: list):
        self.steps = steps
        self.device = steps[0].device
        self.streams = ([torch.cuda.Stream(self.device) for _ in steps]
                        if self.device.type == "cuda" else None)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor):
        if self.streams is None:
            results = [step(images, labels) for step in self.steps]
        else:
            current = torch.cuda.current_stream(self.device)
            results = []
            for step, stream in zip(self.steps, self.streams):
                stream.wait_stream(current)  # the batch was copied on the current stream
                with torch.cuda.stream(stream):
                    results.append(step(images, labels))
            for stream in self.streams:
                current.wait_stream(stream)
        loss = torch.stack([loss for loss, _ in results]).mean()
        return loss, results[0][1]

