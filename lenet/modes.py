"""How a training step runs, named without importing torch (the report reads these names).

eager: PyTorch as written. compile: the forward and the loss compiled by torch.compile
(inductor), the backward following from them. compile-cudagraphs: the same, its kernels replayed
as CUDA graphs (torch.compile's "reduce-overhead"). graph: the whole step, update included,
captured once as a CUDA graph and replayed (lenet.graph_step).
"""

MODES = ("eager", "compile", "compile-cudagraphs", "graph")
