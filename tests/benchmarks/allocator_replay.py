"""The caching allocator replayed (bench.planning.allocator) against what the cards said: every
failed trial and capped cell of the H100's check, every eager cell's allocated peak on the H100
and the H200, and the predicted float32 boundary beside the one found.

    python tests/benchmarks/allocator_replay.py

Prints figures from the committed results (docs/results/); needs no GPU. Not a test: a table to
read (tests/test_allocator.py holds the same to their printed precision).
"""

import json
import tarfile
from pathlib import Path

from bench.basics.oom_message import cuda_oom_figures
from bench.planning import allocator
from bench.planning.grid import Config
from bench.planning.predict import boundary_batch, model_for, trial_allocations

ROOT = Path(__file__).resolve().parents[2] / "docs/results"
H100 = ROOT / "nvidia-h100-80gb-hbm3/first-check"
GiB = 2**30


def _rows(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def failed_trials() -> None:
    print("H100 float32 trials that ran out of memory (GiB: asked, allocated, reserved but "
          "unallocated), the card's message against the replay")
    searches = _rows((H100 / "default/boundaries.jsonl").read_text())
    trials = next(b for b in searches if b["key"] == "float32-nchw")["trials"]
    cells = _rows((H100 / "cap-2gib/results.jsonl").read_text())
    cases = [(t["batch_size"], t["error"], None) for t in trials if t["error"]]
    capped = {a["batch_size"]: a["error"] for row in cells for a in row["attempts"] if a["error"]}
    cases += [(batch, error, 2 * GiB) for batch, error in sorted(capped.items(), reverse=True)]
    events = trial_allocations(Config(256, device="cuda:0"))
    for batch, error, cap in cases:
        said = cuda_oom_figures(error)
        room = cap or int(said.allocated_bytes + said.unallocated_bytes + said.free_bytes)
        failure = allocator.replay(events, batch, room).failure
        card = (said.asked_bytes, said.allocated_bytes, said.unallocated_bytes)
        replayed = (failure.asked_bytes, failure.allocated_bytes,
                    failure.reserved_bytes - failure.allocated_bytes) if failure else None
        where = "2 GiB cap" if cap else f"{room / GiB:.2f} GiB room"
        print(f"  b{batch:>9,} {where:>15}  card {_gib(card)}  replay "
              f"{_gib(replayed) if replayed else 'fits'}")


def eager_cells() -> None:
    print("eager cells' allocated peaks, card against replay (bytes)")
    with tarfile.open(ROOT / "nvidia-h200/gpu-check.tgz") as archive:
        h200 = archive.extractfile("./default/results.jsonl").read().decode()
    for name, text in (("H100", (H100 / "default/results.jsonl").read_text()), ("H200", h200)):
        for row in _rows(text):
            if row["status"] != "ok" or row.get("mode", "eager") != "eager":
                continue
            config = Config(row["batch_size"], row["dtype"], row["channels_last"],
                            row["placement"], device="cuda:0")
            replayed = allocator.replay(trial_allocations(config), config.batch_size, 80 * GiB)
            card = row["peak_allocated_bytes"]
            print(f"  {name} {row['key']:<36} {card:>14,} {replayed.peak_allocated_bytes:>14,}"
                  f" {replayed.peak_allocated_bytes / card - 1:+.3%}")


def boundary() -> None:
    config, capacity = Config(256, device="cuda:0"), int(79.17 * GiB)
    print(f"H100 float32 boundary with {capacity / GiB:.2f} GiB free: trained 1,048,576, ran out "
          f"at 1,114,112; predicted {boundary_batch(config, capacity, capped=False):,} (the live "
          f"tensors alone: {model_for(config).max_batch(capacity):,})")


def _gib(figures) -> str:
    return " ".join(f"{f / GiB:6.2f}" for f in figures)


if __name__ == "__main__":
    failed_trials()
    eager_cells()
    boundary()
