"""PyTorch's CUDA caching allocator, replayed: whether a step's allocations fit a card, as the
allocator places them, not as their sum.

At huge batches the sum of live tensors says little about where a step runs out of memory. Each
activation is a block of gigabytes in a segment of its own; a freed one serves a smaller request
by being split, and a split segment cannot be handed back, so a later, larger request finds the
memory reserved but in pieces. On an H100 a float32 LeNet step at 1,114,112 asked for 19.52 GiB
with 42.60 GiB allocated and 19.42 GiB reserved but unallocated, though the live tensors' peak
(about 62 GiB) was well inside the card's 78.4 GiB: the sum predicted 1,422,469, the card
trained 1,048,576 (docs/results/nvidia-h100-80gb-hbm3/first-check/default/boundaries.jsonl).

This replays a step's allocations and frees, in order, through the allocator's own rules at its
default settings (c10/cuda/CUDACachingAllocator.cpp): sizes rounded to 512 bytes; requests of up
to 1 MiB from 2 MiB segments, of up to 10 MiB from 20 MiB ones, larger ones from a segment of
their own rounded to 2 MiB; the smallest cached block that fits is taken, and split when more
than 1 MiB (512 bytes for small ones) is left; freed blocks merge with free neighbours; where no
cached block fits and the card has no room for a new segment, every wholly free segment is handed
back and the request tried once more, then it is out of memory. Replayed on the trace of a fake
step (bench.instruments.memory.AllocationTrace) it gives that H100 run's five failed trials to
0.01 GiB: the request, the allocated bytes and the reserved ones.

Other settings of PYTORCH_CUDA_ALLOC_CONF (expandable segments above all, which map pages into one
range and so do not fragment) are not replayed: `default_settings` says whether they hold.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

_MIN_BLOCK_BYTES = 512  # every request is rounded up to a multiple of this
_SMALL_BYTES = 1 << 20  # the largest request of the small pool
_SMALL_SEGMENT_BYTES = 2 << 20  # small requests share segments of this size
_MID_SEGMENT_BYTES = 20 << 20  # requests under _MID_LIMIT_BYTES share segments of this size
_MID_LIMIT_BYTES = 10 << 20
_LARGE_ROUND_BYTES = 2 << 20  # a larger request's own segment is rounded up to this

# Room for the CUDA context and libraries beside what the allocator reserves (about 617 MiB was
# measured on an H200 with torch 2.11, 0.75 GiB on an H100): a worker needs this much of a card's
# free memory besides its own tensors.
CONTEXT_ALLOWANCE_BYTES = 768 * 2**20


def default_settings(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the allocator runs at the settings this replays: PYTORCH_CUDA_ALLOC_CONF (or its
    newer name, PYTORCH_ALLOC_CONF) unset or empty."""
    return not (environ.get("PYTORCH_CUDA_ALLOC_CONF", "").strip()
                or environ.get("PYTORCH_ALLOC_CONF", "").strip())


def _rounded(nbytes: int) -> int:
    return max(_MIN_BLOCK_BYTES, -(-nbytes // _MIN_BLOCK_BYTES) * _MIN_BLOCK_BYTES)


def _segment_bytes(size: int) -> int:
    if size <= _SMALL_BYTES:
        return _SMALL_SEGMENT_BYTES
    if size < _MID_LIMIT_BYTES:
        return _MID_SEGMENT_BYTES
    return -(-size // _LARGE_ROUND_BYTES) * _LARGE_ROUND_BYTES


class _Block:
    __slots__ = ("address", "size", "free", "prev", "next", "small")

    def __init__(self, address: int, size: int, small: bool):
        self.address, self.size, self.small = address, size, small
        self.free = True
        self.prev: _Block | None = None  # neighbours split from the same segment
        self.next: _Block | None = None

    @property
    def whole_segment(self) -> bool:
        return self.prev is None and self.next is None


@dataclass(eq=False)
class OutOfMemory(Exception):
    """A request the card had no room for, with the allocator's figures as its error gives
    them, after it handed back every wholly free segment."""

    asked_bytes: int  # the segment it tried to add
    allocated_bytes: int
    reserved_bytes: int


class CachingAllocator:
    """One device's caching allocator that may reserve up to `limit_bytes` in segments."""

    def __init__(self, limit_bytes: int):
        self.limit_bytes = limit_bytes
        self.allocated_bytes = self.reserved_bytes = 0
        self.peak_allocated_bytes = self.peak_reserved_bytes = 0
        # cached blocks of each pool (small: True), ordered as the allocator's set orders them:
        # by size, then address
        self._cached: dict[bool, list[tuple[int, int, _Block]]] = {True: [], False: []}
        self._next_address = 0

    def malloc(self, nbytes: int) -> _Block:
        size = _rounded(nbytes)
        small = size <= _SMALL_BYTES
        cached = self._cached[small]
        at = bisect.bisect_left(cached, (size, -1))
        if at < len(cached):
            block = cached.pop(at)[2]
        else:
            block = self._new_segment(_segment_bytes(size), small)
        left = block.size - size
        if left >= _MIN_BLOCK_BYTES if small else left > _SMALL_BYTES:
            rest = _Block(block.address + size, left, small)
            rest.prev, rest.next = block, block.next
            if block.next is not None:
                block.next.prev = rest
            block.next, block.size = rest, size
            self._cache(rest)
        block.free = False
        self.allocated_bytes += block.size
        self.peak_allocated_bytes = max(self.peak_allocated_bytes, self.allocated_bytes)
        return block

    def free(self, block: _Block) -> None:
        block.free = True
        self.allocated_bytes -= block.size
        for neighbour in (block.prev, block.next):
            if neighbour is None or not neighbour.free:
                continue
            self._uncache(neighbour)
            first, second = (neighbour, block) if neighbour is block.prev else (block, neighbour)
            first.size += second.size
            first.next = second.next
            if second.next is not None:
                second.next.prev = first
            block = first
        self._cache(block)

    def _new_segment(self, size: int, small: bool) -> _Block:
        if self.reserved_bytes + size > self.limit_bytes:
            self._release_free_segments()
            if self.reserved_bytes + size > self.limit_bytes:
                raise OutOfMemory(size, self.allocated_bytes, self.reserved_bytes)
        # segments never border each other: a gap keeps their blocks from merging
        block = _Block(self._next_address, size, small)
        self._next_address += 2 * size
        self.reserved_bytes += size
        self.peak_reserved_bytes = max(self.peak_reserved_bytes, self.reserved_bytes)
        return block

    def _release_free_segments(self) -> None:
        for small, cached in self._cached.items():
            self.reserved_bytes -= sum(e[2].size for e in cached if e[2].whole_segment)
            self._cached[small] = [e for e in cached if not e[2].whole_segment]

    def _cache(self, block: _Block) -> None:
        bisect.insort(self._cached[block.small], (block.size, block.address, block))

    def _uncache(self, block: _Block) -> None:
        cached = self._cached[block.small]
        del cached[bisect.bisect_left(cached, (block.size, block.address))]


@dataclass(frozen=True)
class Replayed:
    """What a replay came to: the peaks it reached, and the request that failed if one did."""

    peak_allocated_bytes: int
    peak_reserved_bytes: int
    failure: OutOfMemory | None

    @property
    def fits(self) -> bool:
        return self.failure is None


# One event of a step's allocations: ("alloc", a key, fixed bytes, bytes a sample), its size a
# line in the batch, or ("free", the key of the allocation it frees)
Event = tuple


def replay(events: Sequence[Event], batch_size: int, limit_bytes: int) -> Replayed:
    """Run `events` at `batch_size` through an allocator that may reserve `limit_bytes`."""
    allocator = CachingAllocator(limit_bytes)
    live: dict = {}
    failure = None
    try:
        for event in events:
            if event[0] == "alloc":
                _, key, fixed, per_sample = event
                live[key] = allocator.malloc(int(fixed + per_sample * batch_size))
            else:
                allocator.free(live.pop(event[1]))
    except OutOfMemory as exc:
        failure = exc
    return Replayed(allocator.peak_allocated_bytes, allocator.peak_reserved_bytes, failure)


def largest_batch(events: Sequence[Event], limit_bytes: int, guess: int) -> int:
    """The largest batch whose replay fits (0: not even one example), by bisection between 0
    and `guess` (doubled while it fits), as the boundary search bisects on the card."""
    fits, fails = 0, max(1, guess)
    while replay(events, fails, limit_bytes).fits:
        fits, fails = fails, 2 * fails
    while fails - fits > 1:
        middle = (fits + fails) // 2
        if replay(events, middle, limit_bytes).fits:
            fits = middle
        else:
            fails = middle
    return fits
