"""The training step and the notebook's loop, its epoch bug fixed.

    python -m lenet.train --epochs 10 --lr 0.9 --batch-size 256 --device auto

The notebook loops `for epoch in range(num_batches)` (235 epochs at batch 256) where it means
`range(num_epochs)`; this loop runs `num_epochs`. Its examples/sec times only the training step
(copy, forward, backward, update, and the per-batch metric sync d2l does), not loading or
evaluation; the wall-clock figure printed beside it includes both.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from lenet.cli import (
    OneLineParser,
    UsageError,
    exit_with,
    fail,
    non_negative_int,
    positive_float,
    positive_int,
    resolve_device,
)
from lenet.data import DataError, fashion_mnist
from lenet.model import build_lenet
from lenet.modes import OPTIMIZERS, PRECISIONS, TABLE, replica_refusal
from lenet.replicas import Replicas, StreamedSteps

# Training precisions: float32, or autocast to a 16-bit type (float16 needs a GradScaler).
AUTOCAST_DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}



class TrainStep:
    """One SGD step on LeNet at a given precision, memory layout and mode. Never syncs with the
    device. In the CUDA-graph modes the tensors it returns are overwritten by the next step:
    read them before it."""

    def __init__(self, net: nn.Module, lr: float, dtype: str = "float32",
                 channels_last: bool = False, mode: str = "eager", precision: str = "default",
                 optimizer: str = "default"):
        if dtype not in AUTOCAST_DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(AUTOCAST_DTYPES)}")
        runs = [m.name for m in TABLE.values() if not m.captured]
        if mode not in runs:
            raise ValueError(f"TrainStep runs {', '.join(runs)}, not {mode!r} (a captured mode "
                             f"is lenet.graph_step.GraphedStep)")
        self.net = net
        self.mode = mode
        self.dtype = dtype
        compiler_mode = TABLE[mode].compiler_mode
        # torch.compile's reduce-overhead and max-autotune replay CUDA graphs (on a GPU), whose
        # outputs the next step reuses
        self._marks_steps = compiler_mode in ("reduce-overhead", "max-autotune")
        self.device = next(net.parameters()).device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        # K models stacked as one (lenet.replicas): their convolutions' weights are 5-D, which
        # channels_last does not apply to; the batch and activations still take it
        self.replicas = net.count if isinstance(net, Replicas) else 1
        if channels_last and self.replicas == 1:
            net.to(memory_format=torch.channels_last)
        if precision not in PRECISIONS or optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown precision {precision!r} or optimizer {optimizer!r}; "
                             f"known: {', '.join(PRECISIONS)}; {', '.join(OPTIMIZERS)}")
        # process-wide settings: set by every step built, so no cell inherits another's
        matmul, cudnn_tf32 = PRECISIONS[precision]
        torch.set_float32_matmul_precision(matmul)
        torch.backends.cudnn.allow_tf32 = cudnn_tf32
        self.optimizer = torch.optim.SGD(net.parameters(), lr=lr, **OPTIMIZERS[optimizer])
        self.loss_fn = nn.CrossEntropyLoss()
        self.autocast_dtype = AUTOCAST_DTYPES[dtype]
        self.scaler = torch.amp.GradScaler(self.device.type) if dtype == "float16" else None
        self._forward = self._forward_and_loss
        if compiler_mode is not None:
            # a fresh start for each step built: compiled for this batch's shapes alone, as a
            # new process would, not with the guards and dynamic shapes of an earlier cell's
            torch.compiler.reset()
            self._forward = torch.compile(self._forward_and_loss, mode=compiler_mode,
                                          dynamic=False)
        if TABLE[mode].compiles_update:  # a GradScaler's step calls it too
            self.optimizer.step = torch.compile(self.optimizer.step, mode=compiler_mode,
                                                dynamic=False)

    def _forward_and_loss(self, images: torch.Tensor, labels: torch.Tensor):
        # no autocast cache: a CUDA graph cannot capture one, and each weight is cast once anyway
        with torch.autocast(self.device.type, dtype=self.autocast_dtype,
                            enabled=self.autocast_dtype is not None, cache_enabled=False):
            logits = self.net(images)
            if self.replicas == 1:
                return self.loss_fn(logits, labels), logits
            # the sum of the replicas' mean losses, so each replica's gradient is its own loss's
            return self.loss_fn(logits, labels.repeat(self.replicas)) * self.replicas, logits

    def __call__(self, images: torch.Tensor, labels: torch.Tensor):
        """Returns the loss and the logits, both still on the device."""
        self.net.train()
        images = images.contiguous(memory_format=self.memory_format)
        self.optimizer.zero_grad(set_to_none=True)
        if self._marks_steps:
            torch.compiler.cudagraph_mark_step_begin()  # a new iteration: outputs may be reused
        loss, logits = self._forward(images, labels)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        if self.replicas > 1:
            loss = loss / self.replicas  # the replicas' mean: an operator one model does not run
        return loss.detach(), logits.detach()


def build_step(net: nn.Module | list[nn.Module], lr: float, dtype: str = "float32",
               channels_last: bool = False, mode: str = "eager", precision: str = "default",
               optimizer: str = "default", replica_method: str = "vmap"):
    """The training step in any of lenet.modes.MODES, at a float32 precision and with an SGD
    implementation of lenet.modes.PRECISIONS and OPTIMIZERS. `net` is a model, or a list of
    models of one architecture trained at once by `replica_method` (lenet.replicas)."""
    if isinstance(net, list):
        refusal = replica_refusal(len(net), replica_method, mode)
        if refusal:
            raise ValueError(refusal)
        if replica_method == "streams":
            return StreamedSteps([build_step(one, lr, dtype, channels_last, mode, precision,
                                             optimizer) for one in net])
        net = Replicas(net) if len(net) > 1 else net[0]
    if TABLE[mode].captured:
        from lenet.graph_step import GraphedStep  # it builds on TrainStep

        return GraphedStep(TrainStep(net, lr, dtype, channels_last, precision=precision,
                                     optimizer=optimizer))
    return TrainStep(net, lr, dtype, channels_last, mode, precision, optimizer)


def correct_count(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(dim=1) == labels).sum()


@torch.no_grad()
def evaluate_accuracy(net: nn.Module, batches, device: torch.device) -> float:
    net.eval()
    correct = total = 0
    for images, labels in batches:
        images, labels = images.to(device), labels.to(device)
        correct += int(correct_count(net(images), labels))
        total += labels.numel()
    return correct / total


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    train_acc: float
    test_acc: float
    step_s: float  # time inside the training step, as d2l's Timer measures it
    wall_s: float  # the whole epoch: loading, stepping and evaluating
    examples: int


def train_notebook(net, train_iter, test_iter, num_epochs: int, lr: float, device,
                   progress: bool = True):
    """The notebook's train_ch6, looping over epochs; yields one EpochResult per epoch."""
    net.to(device)
    step = TrainStep(net, lr)
    for epoch in range(1, num_epochs + 1):
        loss_sum = correct = examples = 0.0
        step_s = 0.0
        start = time.perf_counter()
        bar = tqdm(train_iter, desc=f"epoch {epoch}/{num_epochs}", leave=False,
                   disable=not progress, unit="batch")
        for images, labels in bar:
            tick = time.perf_counter()
            images, labels = images.to(device), labels.to(device)
            loss, logits = step(images, labels)
            # d2l's Accumulator converts to Python floats here: a device sync inside its timer.
            loss_sum += float(loss) * labels.numel()
            correct += float(correct_count(logits, labels))
            examples += labels.numel()
            step_s += time.perf_counter() - tick
        test_acc = evaluate_accuracy(net, test_iter, device)
        yield EpochResult(epoch, loss_sum / examples, correct / examples, test_acc, step_s,
                          time.perf_counter() - start, int(examples))


def notebook_loaders(batch_size: int, num_workers: int, data_root=None):
    """d2l.load_data_fashion_mnist: per-sample PIL images through ToTensor, train set shuffled."""
    from torch.utils.data import DataLoader
    from torchvision import transforms

    to_tensor = transforms.ToTensor()
    train = fashion_mnist(True, data_root, to_tensor)
    test = fashion_mnist(False, data_root, to_tensor)
    return (DataLoader(train, batch_size, shuffle=True, num_workers=num_workers),
            DataLoader(test, batch_size, shuffle=False, num_workers=num_workers))


def main(argv=None) -> int:
    parser = OneLineParser(prog="python -m lenet.train", description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=positive_int, default=10)
    parser.add_argument("--lr", type=positive_float, default=0.9)
    parser.add_argument("--batch-size", type=positive_int, default=256)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda:N")
    parser.add_argument("--data-root", help="a folder holding Fashion-MNIST's IDX files")
    parser.add_argument("--num-workers", type=non_negative_int, default=min(4, os.cpu_count() or 1),
                        help="DataLoader workers (d2l uses 4; capped at the CPU count)")
    parser.add_argument("--seed", type=int, default=0, help="for the initial weights and shuffling")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device)
        train_iter, test_iter = notebook_loaders(args.batch_size, args.num_workers, args.data_root)
    except (UsageError, DataError) as exc:
        fail(parser.prog, str(exc))
    net = build_lenet(seed=args.seed)
    print(f"training on: {device}")
    step_s = wall_s = examples = 0.0
    for result in train_notebook(net, train_iter, test_iter, args.epochs, args.lr, device,
                                 progress=not args.no_progress):
        step_s, wall_s, examples = step_s + result.step_s, wall_s + result.wall_s, result.examples
        print(f"epoch {result.epoch}/{args.epochs}: loss {result.train_loss:.3f}, "
              f"train acc {result.train_acc:.3f}, test acc {result.test_acc:.3f}, "
              f"{result.examples / result.wall_s:.0f} examples/sec wall", flush=True)
    # The notebook's two closing lines, then what it leaves out.
    print(f"loss {result.train_loss:.3f}, train acc {result.train_acc:.3f}, "
          f"test acc {result.test_acc:.3f}")
    print(f"{examples * args.epochs / step_s:.1f} examples/sec on {device}")
    print(f"{examples * args.epochs / wall_s:.1f} examples/sec wall clock (the line above times "
          f"only the training step; this one includes loading and evaluation)")
    return 0


if __name__ == "__main__":
    exit_with(main)
