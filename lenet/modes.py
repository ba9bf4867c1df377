"""How a training step runs: one entry per mode with every fact about it, read by the grid (what
a cell may run), the step (how it runs), the planner (which modes get a boundary search), the
memory model (where it does not predict) and the report; the two settings of its arithmetic
that matter at LeNet's size, float32's precision and the SGD update's implementation; and how
several models train at once. Without torch: the report reads it.

Adding a mode is an entry here and its branch in the step (lenet.train.build_step).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Mode:
    name: str
    words: str  # what the mode does, in a sentence
    needs_cuda: bool = False
    refused_dtypes: dict[str, str] = field(default_factory=dict)  # dtype -> why it cannot train
    compiler_mode: str | None = None  # torch.compile's mode, for the modes it compiles
    compiles_update: bool = False  # the optimizer's step compiled too, not only the forward
    captured: bool = False  # the whole step, update included, captured once as a CUDA graph
    # why the memory model (fitted to an eager step's tensors) does not predict this mode's
    # peak; None where it does
    unmodelled: str | None = None

    @property
    def compiles(self) -> bool:
        """Whether building the step compiles it: every trial of a boundary search, a dozen,
        would compile anew (11 s a trial on an H200, about 18 s on two CPU cores), so compiled
        modes get no boundary search."""
        return self.compiler_mode is not None

    def refusal(self, device: str, dtype: str) -> str | None:
        """Why a cell of this mode cannot run on `device` at `dtype`, or None."""
        if self.needs_cuda and not device.startswith("cuda"):
            return f"mode {self.name} needs a CUDA device"
        if dtype in self.refused_dtypes:
            return f"mode {self.name} cannot train {dtype}: {self.refused_dtypes[dtype]}"
        return None


TABLE: dict[str, Mode] = {m.name: m for m in (
    Mode("eager", "PyTorch as written"),
    Mode("compile", "the forward and the loss compiled by torch.compile (inductor), the "
                    "backward following from them", compiler_mode="default",
         unmodelled="not modelled: torch.compile fuses kernels and keeps workspaces the eager "
                    "model does not see"),
    Mode("compile-cudagraphs", "the same, its kernels replayed as CUDA graphs (torch.compile's "
                               "reduce-overhead)", needs_cuda=True,
         compiler_mode="reduce-overhead",
         unmodelled="not modelled: torch.compile fuses kernels, and its CUDA graphs keep a "
                    "private memory pool"),
    Mode("graph", "the whole step, update included, captured once as a CUDA graph and replayed "
                  "(lenet.graph_step)", needs_cuda=True, captured=True,
         # a GradScaler checks for infinities on the host between the backward and the update
         refused_dtypes={"float16": "its GradScaler checks for infinities on the host each "
                                    "step, which a CUDA graph cannot capture"},
         unmodelled="not modelled: a CUDA graph keeps its step's memory in a private pool, "
                    "beside static copies of the batch"),
    Mode("compile-step", "the forward and the loss compiled as in compile, and the SGD update "
                         "too (torch.compile of the optimizer's step, PyTorch's recipe for "
                         "compiling an optimizer)", compiler_mode="default", compiles_update=True,
         unmodelled="not modelled: torch.compile fuses kernels and keeps workspaces the eager "
                    "model does not see"),
    Mode("compile-step-max-autotune", "the whole step compiled as in compile-step, with "
                                      "torch.compile's max-autotune: each matrix product and "
                                      "convolution benchmarked against generated kernels, and "
                                      "on a GPU the step replayed as CUDA graphs",
         compiler_mode="max-autotune",
         compiles_update=True,
         unmodelled="not modelled: torch.compile fuses kernels and keeps workspaces the eager "
                    "model does not see, and on a GPU its CUDA graphs a private memory pool"),
)}
MODES = tuple(TABLE)


# float32 matrix products and convolutions: (torch.set_float32_matmul_precision's value,
# torch.backends.cudnn.allow_tf32). TF32 rounds float32's inputs to 10 bits of mantissa on
# NVIDIA's tensor cores (Ampere and later): "default" is torch's own, TF32 convolutions and
# full-precision matrix products, which every run before this setting measured.
PRECISIONS = {"default": ("highest", True), "highest": ("highest", False), "tf32": ("high", True)}
# torch.optim.SGD's implementation: "default" lets torch choose (a multi-tensor "foreach" update
# on a GPU, a loop over the parameters on the CPU); "fused" is one kernel for every parameter
OPTIMIZERS = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True},
              "loop": {"foreach": False}}


def implementation(optimizer: str, device: str) -> str:
    """The SGD implementation an optimizer setting runs on `device`: "default" is torch's choice
    there (torch.optim's _default_to_fused_or_foreach), the others themselves."""
    if optimizer != "default":
        return optimizer
    return "foreach" if device.startswith("cuda") else "loop"


def precision_refusal(device: str, precision: str) -> str | None:
    """Why a cell cannot run at this float32 precision on `device`, or None."""
    if precision != "default" and not device.startswith("cuda"):
        return (f"precision {precision} sets NVIDIA's TF32 tensor-core math, which the CPU does "
                f"not have")
    return None


# How K models train at once on one device (lenet.replicas): stacked as one by torch.func.vmap,
# or K models of their own stepped in turn, each on a CUDA stream of its own on a GPU
REPLICA_METHODS = ("vmap", "streams")


def replica_refusal(replicas: int, method: str, mode: str) -> str | None:
    """Why K replicas cannot train this way, or None."""
    if method not in REPLICA_METHODS:
        return f"unknown replica method {method!r}; known: {', '.join(REPLICA_METHODS)}"
    if replicas > 1 and method == "streams" and mode != "eager":
        # K compiled steps would each compile (dynamo recompiles for every model, and falls
        # back to eager past its cache limit of 8); K captured ones, K graphs
        return (f"replica_method streams runs K eager steps; mode {mode} would compile or "
                f"capture each replica's step on its own: use replica_method vmap")
    return None
