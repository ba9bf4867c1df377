"""What PyTorch's CUDA out-of-memory message says of the caching allocator, read back from the
text a failed attempt keeps: the block asked for, the card's free memory, the cap, and the bytes
allocated and reserved but unallocated. Whether the room was there but in pieces (fragmentation)
follows from them."""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
_FIGURE = r"([\d.]+) (B|KiB|MiB|GiB|TiB)"
_CUDA_OOM = re.compile(
    rf"Tried to allocate {_FIGURE}\. .*? of which {_FIGURE} is free\. .*?"
    rf"(?:{_FIGURE} allowed; )?Of the allocated memory {_FIGURE} is allocated by PyTorch, "
    rf"(?:.*?)and {_FIGURE} is reserved by PyTorch but unallocated")


@dataclass(frozen=True)
class CudaOomFigures:
    """What PyTorch's CUDA out-of-memory error says of the allocator, in bytes, each as printed
    (to two decimals of its unit)."""

    asked_bytes: float  # the block it tried to add
    free_bytes: float  # the card's free memory, after the allocator handed back what it could
    allowed_bytes: float | None  # the cap (set_per_process_memory_fraction), where one was set
    allocated_bytes: float
    unallocated_bytes: float  # reserved but not allocated: cached blocks it could not free

    @property
    def in_pieces(self) -> bool:
        """Whether the room was there but not in one piece: the allocator's fragmentation.
        What it could still reserve (the card's free memory, or what the cap leaves) and its
        cached blocks together would have held the request."""
        reserved = self.allocated_bytes + self.unallocated_bytes
        room = self.free_bytes if self.allowed_bytes is None else min(
            self.free_bytes, self.allowed_bytes - reserved)
        return room < self.asked_bytes <= room + self.unallocated_bytes


def cuda_oom_figures(text: str) -> CudaOomFigures | None:
    """The figures of a CUDA out-of-memory message, or None for any other text."""
    found = _CUDA_OOM.search(text or "")
    if not found:
        return None
    figures = [None if found[k] is None else float(found[k]) * _UNITS[found[k + 1]]
               for k in (1, 3, 5, 7, 9)]
    asked, free, allowed, allocated, unallocated = figures
    return CudaOomFigures(asked, free, allowed, allocated, unallocated)
