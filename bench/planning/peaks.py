"""What a card can do at most: its dense peak FLOP/s per precision and its memory bandwidth, for
the cards whose makers publish them, by the name NVML gives. A card not listed is an unknown
card: no share of a peak is given for it, rather than a guess. Without torch: the report reads
it.

Figures are the makers' datasheets, dense (the datasheets' tensor-core figures "with sparsity"
are twice these): float32 on the CUDA cores; TF32, bfloat16 and float16 on the tensor cores.
A float32 cell's convolutions may run as TF32 (cuDNN's default in PyTorch), so its share of the
float32 peak can exceed what plain float32 could do.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CardPeaks:
    name: str  # as the tables say it
    float32_tflops: float
    tf32_tflops: float
    bfloat16_tflops: float
    float16_tflops: float
    memory_tb_per_s: float
    source: str

    def tflops(self, dtype: str, precision: str = "default") -> float | None:
        """The dense peak for a cell's training dtype (autocast's for the 16-bit ones) at its
        float32 precision (lenet.modes.PRECISIONS)."""
        return {"float32": self.float32_tflops, "tf32": self.tf32_tflops,
                "bfloat16": self.bfloat16_tflops,
                "float16": self.float16_tflops}.get(arithmetic(dtype, precision))


def arithmetic(dtype: str, precision: str = "default") -> str:
    """The arithmetic a cell's matrix products run in: its dtype, or TF32 where a float32 cell
    asked for it (precision=tf32)."""
    return "tf32" if dtype == "float32" and precision == "tf32" else dtype


_H100_SXM = "NVIDIA H100 Tensor Core GPU datasheet (SXM5), nvidia.com, 2023"
_H200 = "NVIDIA H200 Tensor Core GPU datasheet (SXM), nvidia.com, 2024"
_A100 = "NVIDIA A100 Tensor Core GPU datasheet, nvidia.com, 2021"
# (a part of the name NVML gives, the card's figures): the first that matches is the card
_KNOWN = (
    ("H100 80GB HBM3", CardPeaks("H100 SXM5", 66.9, 494.7, 989.4, 989.4, 3.35, _H100_SXM)),
    ("H100 PCIe", CardPeaks("H100 PCIe", 51.2, 378.0, 756.0, 756.0, 2.0, _H100_SXM)),
    ("H200", CardPeaks("H200 SXM", 66.9, 494.7, 989.4, 989.4, 4.8, _H200)),
    ("A100-SXM4-80GB", CardPeaks("A100 SXM4 80GB", 19.5, 156.0, 312.0, 312.0, 2.039, _A100)),
    ("A100-SXM4-40GB", CardPeaks("A100 SXM4 40GB", 19.5, 156.0, 312.0, 312.0, 1.555, _A100)),
    ("A100 80GB PCIe", CardPeaks("A100 PCIe 80GB", 19.5, 156.0, 312.0, 312.0, 1.935, _A100)),
)


def card_peaks(gpu_name: str | None) -> CardPeaks | None:
    """The card's peaks, or None for a card not in the table (or no card: a CPU run)."""
    if not gpu_name:
        return None
    return next((peaks for part, peaks in _KNOWN if part in gpu_name), None)
