"""Cells and grids: a frozen Config per cell, named grids built from blocks of crossed axes.

    python -m bench.run --grid default --set batch_size=256,4096 --dry-run

A grid is a list of blocks; each block crosses its axes, so the loader variants are measured
where they matter without multiplying every precision by every loader setting. Cells that differ
only in a setting with no effect (pin_memory or workers on device-resident data, pinning without
CUDA) are normalised to one cell and run once.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field, fields, replace

from bench.basics.schema import field_defaults
from bench.basics.settings import Settings
from lenet.modes import (
    MODES,
    OPTIMIZERS,
    PRECISIONS,
    REPLICA_METHODS,
    TABLE,
    precision_refusal,
    replica_refusal,
)

LENET = "lenet"  # the default model; bench.planning.models builds it and the others
DTYPES = ("float32", "bfloat16", "float16")
PLACEMENTS = ("host", "device")


@dataclass(frozen=True)
class Config:
    """One cell: a value of every axis, and the device. Adding an axis is adding a field here and
    its reader to AXES; keys, plans, rows, --set and the report's comparisons follow."""

    batch_size: int
    dtype: str = "float32"
    channels_last: bool = False
    placement: str = "device"  # host: a DataLoader feeds the device; device: the set lives there
    pin_memory: bool = False
    num_workers: int = 0
    device: str = "cpu"
    mode: str = "eager"  # how the step runs: lenet.modes.MODES
    # the run's model (bench.planning.models) and its input shape where not the model's own
    # ("3x64x64")
    model: str = LENET
    input_shape: str = ""
    # float32's matrix and convolution precision, and SGD's implementation (lenet.modes)
    precision: str = "default"
    optimizer: str = "default"
    # independent models trained at once on the device, each on the same batch, and how
    # (lenet.replicas): a cell's examples are every replica's
    replicas: int = 1
    replica_method: str = "vmap"

    def normalised(self) -> Config:
        """The same measurement with the settings that cannot matter set to their defaults."""
        config = self
        if config.placement == "device":
            config = replace(config, pin_memory=False, num_workers=0)
        if not config.device.startswith("cuda"):
            config = replace(config, pin_memory=False)  # pinning only speeds copies to a GPU
        if config.replicas == 1:
            config = replace(config, replica_method="vmap")  # one model is one model either way
        return config

    def unsupported(self) -> str | None:
        """Why this cell cannot run on its device, or None."""
        return (TABLE[self.mode].refusal(self.device, self.dtype)
                or precision_refusal(self.device, self.precision)
                or replica_refusal(self.replicas, self.replica_method, self.mode))

    @property
    def layout(self) -> str:
        return "nhwc" if self.channels_last else "nchw"

    @property
    def layout_words(self) -> str:
        return "channels_last" if self.channels_last else "NCHW"

    @property
    def loader(self) -> str:
        if self.placement == "device":
            return "device"
        return f"host-w{self.num_workers}{'-pinned' if self.pin_memory else ''}"

    @property
    def loader_words(self) -> str:
        if self.placement == "device":
            return "device-resident"
        return f"host, {self.num_workers} workers{', pinned' if self.pin_memory else ''}"

    def _added_words(self) -> list[str]:
        """Axes past the first six join a key only where they differ from their default, so keys
        of runs made before such an axis existed still match."""
        return [_WORDS.get(f.name, str)(getattr(self, f.name)) for f in fields(self)
                if f.name not in _KEYED and getattr(self, f.name) != f.default]

    def key(self) -> str:
        """A stable name, the same across runs: how resume and compare match cells."""
        return "-".join([f"b{self.batch_size}", self.dtype, self.layout, self.loader,
                         *self._added_words()])

    def for_boundary(self) -> Config:
        """The boundary search's cell: this one on device-resident data (the loader is not the
        limit), its batch left to the search."""
        return replace(self, batch_size=1, placement="device", pin_memory=False, num_workers=0)

    def boundary_key(self) -> str:
        """One boundary per value of every axis but the batch and the loader."""
        return "-".join([self.dtype, self.layout, *self._added_words()])

    def as_dict(self) -> dict:
        return asdict(self)


# Spelled out in every key (the device is the run's, not the cell's, as are the model and its
# input shape, which join the key where they are not LeNet's).
_KEYED = ("batch_size", "dtype", "channels_last", "placement", "pin_memory", "num_workers",
          "device")
# how an added axis's value reads in a key where a bare value would not say what it is
_WORDS = {"replicas": lambda count: f"x{count}"}


def added_axes() -> list[str]:
    """The axes past the first six, which keys, plots and tables show only where they vary."""
    return [name for name in AXES if name not in _KEYED]


# Each setting's default, as a block that does not name an axis takes it.
DEFAULTS = field_defaults(Config)


# What --set accepts, and how each value is read.
def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not true or false")


def _batch_size(text: str) -> int:
    value = int(text) if text.isdigit() else 0
    if value < 1:
        raise ValueError(f"{text!r} is not a batch size; it must be a whole number, 1 or more")
    return value


def _replicas(text: str) -> int:
    value = int(text) if text.isdigit() else 0
    if value < 1:
        raise ValueError(f"{text!r} is not a replica count; it must be a whole number, 1 or more")
    return value


def _num_workers(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"{text!r} is not a worker count; it must be a whole number, 0 or more")
    return int(text)


def _choice(valid: tuple[str, ...]):
    def read(text: str) -> str:
        if text not in valid:
            raise ValueError(f"{text!r} is not valid; valid: {', '.join(valid)}")
        return text
    return read


AXES = {
    "batch_size": _batch_size,
    "dtype": _choice(DTYPES),
    "channels_last": _bool,
    "placement": _choice(PLACEMENTS),
    "pin_memory": _bool,
    "num_workers": _num_workers,
    "mode": _choice(MODES),
    "precision": _choice(tuple(PRECISIONS)),
    "optimizer": _choice(tuple(OPTIMIZERS)),
    "replicas": _replicas,
    "replica_method": _choice(REPLICA_METHODS),
}


class Block:
    """Axes crossed with one another; an axis a block does not name takes Config's default."""

    def __init__(self, batch_size: tuple[int, ...], **axes: tuple):
        unknown = sorted(set(axes) - set(AXES))
        if unknown:
            raise TypeError(f"a block names {', '.join(unknown)}, which are not axes")
        self.axes = {"batch_size": batch_size, **axes}

    def values(self, name: str) -> tuple:
        return self.axes[name] if name in self.axes else (DEFAULTS[name],)


@dataclass(frozen=True)
class Grid:
    name: str
    blocks: tuple[Block, ...]
    description: str
    find_max_batch: bool = False
    boundary_limit: int = 2**24  # the largest batch the boundary search tries
    boundary_budget_s: float = 120.0  # all boundary searches together
    repeats: int = Settings.repeats
    min_repeat_s: float = Settings.min_repeat_s  # each repeat runs enough steps to last this long
    warmup_steps: int = Settings.warmup_steps
    overrides: dict = field(default_factory=dict)
    model: str = LENET
    input_shape: str = ""

    def _all_cells(self, device: str) -> list[Config]:
        seen: dict[Config, None] = {}
        for block in self.blocks:
            axes = {name: self.overrides.get(name, block.values(name)) for name in AXES}
            for values in itertools.product(*axes.values()):
                config = Config(**dict(zip(axes, values)), device=device, model=self.model,
                                input_shape=self.input_shape).normalised()
                seen.setdefault(config, None)
        return list(seen)

    def cells(self, device: str) -> list[Config]:
        """The cells that can run on `device`."""
        return [c for c in self._all_cells(device) if c.unsupported() is None]

    def skipped(self, device: str) -> dict[str, str]:
        """Cell key -> why it cannot run on `device` (a mode --set asked for, say)."""
        return {c.key(): c.unsupported() for c in self._all_cells(device) if c.unsupported()}


_POWERS_OF_4 = (64, 256, 1024, 4096, 16384)
# the default GPU grid's modes besides eager (a mode added to lenet.modes runs where --set or
# a grid names it: each compiled cell costs seconds of compiling, against the grid's minutes)
_FAST_MODES = ("compile", "compile-cudagraphs", "graph")
# On a GPU each repeat lasts 0.4 s, so the 5 timed repeats give the energy counter about the 2 s
# window it needs (bench.instruments.energy.MIN_WINDOW_S); a cell whose repeats fall short times
# another.
_GPU_REPEAT_S = 0.4
_GPU_GRIDS = {
    "smoke": Grid("smoke", (
        Block(batch_size=(256, 1024), placement=("device", "host")),
    ), "two batch sizes, float32, device-resident and host loader", min_repeat_s=_GPU_REPEAT_S),
    "default": Grid("default", (
        Block(batch_size=_POWERS_OF_4, dtype=DTYPES, channels_last=(False, True)),
        Block(batch_size=_POWERS_OF_4, placement=("host",), pin_memory=(False, True),
              num_workers=(0, 4)),
        Block(batch_size=_POWERS_OF_4, dtype=("float32", "bfloat16"), mode=_FAST_MODES),
        # past 16,384 a step is still far from the card's limits: one batch where it may reach them
        Block(batch_size=(65536,), mode=("eager", "graph")),
        Block(batch_size=(4096,), replicas=(4, 16), replica_method=REPLICA_METHODS),
        Block(batch_size=(4096,), replicas=(4, 16), mode=("graph",)),
    ), "batch 64 to 16,384 at every dtype and layout on device-resident data, the host loader "
       "with and without pinning and workers at float32, torch.compile, compile with CUDA "
       "graphs and a CUDA graph of the whole step at float32 and bfloat16, batch 65,536 eager "
       "and as a CUDA graph at float32, and 4 and 16 LeNets trained at once at batch 4,096 "
       "(stacked by vmap, on streams, and stacked in a CUDA graph)", find_max_batch=True,
        min_repeat_s=_GPU_REPEAT_S),
    "full": Grid("full", (
        Block(batch_size=tuple(2**k for k in range(5, 17)), dtype=DTYPES,
              channels_last=(False, True), placement=PLACEMENTS, pin_memory=(False, True),
              num_workers=(0, 4)),
        Block(batch_size=tuple(2**k for k in range(5, 17)), dtype=DTYPES,
              channels_last=(False, True), mode=("compile", "compile-cudagraphs")),
        Block(batch_size=tuple(2**k for k in range(5, 17)), dtype=("float32", "bfloat16"),
              channels_last=(False, True), mode=("graph",)),
    ), "batch 32 to 65,536, every axis crossed in eager mode, and every dtype and layout in the "
       "other modes on device-resident data", find_max_batch=True, boundary_budget_s=600,
        min_repeat_s=_GPU_REPEAT_S),
}
# Without a GPU the same grids shrink to what a laptop or CI core finishes in minutes.
_CPU_GRIDS = {
    "smoke": Grid("smoke", (
        Block(batch_size=(64, 256), placement=("device", "host")),
    ), "CPU-sized: two batch sizes, float32, device-resident and host loader",
        min_repeat_s=0.2, warmup_steps=2),
    "default": Grid("default", (
        Block(batch_size=(64, 256, 1024), dtype=("float32", "bfloat16"),
              channels_last=(False, True)),
        # CPU autocast to float16 ran 80 to 320 ms a step, about 20x float32, at every batch
        # size: one batch size tells that
        Block(batch_size=(256,), dtype=("float16",), channels_last=(False, True)),
        Block(batch_size=(64, 256, 1024), placement=("host",), num_workers=(0, 2)),
        Block(batch_size=(64, 256, 1024), mode=("compile",)),
        Block(batch_size=(256,), replicas=(4,), replica_method=REPLICA_METHODS),
    ), "CPU-sized: batch 64 to 1,024 at float32 and bfloat16 in both layouts, float16 at batch "
       "256 alone (CPU autocast runs it about 20x slower), the host loader with 0 and 2 "
       "workers, torch.compile at float32, and 4 LeNets trained at once at batch 256 (stacked "
       "by vmap, and one after another); the OOM boundary searched under --memory-cap alone "
       "(up to batch 65,536 within 60 s): the host's own memory holds batches far past those a "
       "step finishes in seconds",
        find_max_batch=True, boundary_limit=2**16, boundary_budget_s=60, min_repeat_s=0.1,
        warmup_steps=2),
    "full": Grid("full", (
        Block(batch_size=tuple(2**k for k in range(5, 13)), dtype=DTYPES,
              channels_last=(False, True), placement=PLACEMENTS, num_workers=(0, 2)),
        Block(batch_size=tuple(2**k for k in range(5, 13)), dtype=("float32", "bfloat16"),
              mode=("compile",)),
    ), "CPU-sized: batch 32 to 4,096, every axis crossed in eager mode, and torch.compile at "
       "float32 and bfloat16; the OOM boundary searched under --memory-cap alone (up to batch "
       "131,072 within 300 s)", find_max_batch=True, boundary_limit=2**17,
        boundary_budget_s=300),
}


class GridError(ValueError):
    """An unknown grid, axis or value; the message lists the valid ones."""


def grid_names() -> list[str]:
    return sorted(_GPU_GRIDS)


def get_grid(name: str, on_gpu: bool, overrides: dict | None = None, model: str = LENET,
             input_shape: str = "") -> Grid:
    grids = _GPU_GRIDS if on_gpu else _CPU_GRIDS
    if name not in grids:
        raise GridError(f"unknown grid {name!r}; known: {', '.join(grid_names())}")
    return replace(grids[name], overrides=dict(overrides or {}), model=model,
                   input_shape=input_shape)


def batch_sizes(grid: Grid) -> list[int]:
    """The batch sizes the grid's blocks name, smallest first."""
    return sorted({b for block in grid.blocks for b in block.values("batch_size")})


def parse_set(items: list[str]) -> dict[str, tuple]:
    """`["dtype=float32,bfloat16", "batch_size=256"]` -> {"dtype": (...), "batch_size": (256,)}."""
    overrides: dict[str, tuple] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not text.strip():
            raise GridError(f"--set {item!r}: write it as axis=v1,v2 (axes: {', '.join(AXES)})")
        if name not in AXES:
            raise GridError(f"--set: unknown axis {name!r}; axes: {', '.join(AXES)}")
        if name in overrides:
            raise GridError(f"--set {name} is given twice; give its values once: "
                            f"--set {name}=v1,v2")
        try:
            values = tuple(AXES[name](v.strip()) for v in text.split(","))
        except ValueError as exc:
            raise GridError(f"--set {name}: {exc}") from None
        overrides[name] = tuple(dict.fromkeys(values))
    return overrides
