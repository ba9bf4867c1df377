"""The caching allocator replayed (bench.planning.allocator): its rules on small cases, and a
LeNet trial's allocations against what an H100 said when each of its trials ran out of memory."""

import json
import tarfile
from pathlib import Path

import pytest

from bench.basics.oom_message import cuda_oom_figures
from bench.planning import allocator
from bench.planning.grid import Config
from bench.planning.predict import (
    boundary_batch,
    model_for,
    prediction_method,
    step_fits,
    trial_allocations,
)

MiB, GiB = 2**20, 2**30
H100 = Path(__file__).parent.parent / "docs/results/nvidia-h100-80gb-hbm3/first-check"
H200 = Path(__file__).parent.parent / "docs/results/nvidia-h200/gpu-check.tgz"

def _events(steps):
    """Events of fixed sizes: (kind, key, bytes) as bench.planning.allocator takes them."""
    return [("alloc", key, nbytes, 0) if kind == "alloc" else ("free", key)
            for kind, key, nbytes in steps]


def test_a_freed_block_split_for_a_smaller_request_cannot_be_handed_back():
    """60 MiB freed, 30 of it taken again: a 50 MiB request then finds 30 MiB cached in a
    segment that is not wholly free, so there is no room though 80 MiB would fit 100."""
    events = _events([("alloc", "a", 60 * MiB), ("free", "a", 0), ("alloc", "b", 30 * MiB),
                      ("alloc", "c", 50 * MiB)])
    replayed = allocator.replay(events, 1, 100 * MiB)
    assert not replayed.fits
    assert replayed.failure.asked_bytes == 50 * MiB
    assert replayed.failure.allocated_bytes == 30 * MiB
    assert replayed.failure.reserved_bytes == 60 * MiB
    # freed whole, the segment is handed back and the request fits
    whole = _events([("alloc", "a", 60 * MiB), ("free", "a", 0), ("alloc", "c", 70 * MiB)])
    assert allocator.replay(whole, 1, 100 * MiB).fits


def test_freed_neighbours_merge_back_into_one_block():
    """Two halves of one segment, freed, serve a request of the whole segment again."""
    events = _events([("alloc", "a", 40 * MiB), ("free", "a", 0), ("alloc", "b", 20 * MiB),
                      ("alloc", "c", 20 * MiB), ("free", "b", 0), ("free", "c", 0),
                      ("alloc", "d", 40 * MiB)])
    replayed = allocator.replay(events, 1, 40 * MiB)
    assert replayed.fits and replayed.peak_reserved_bytes == 40 * MiB


def test_requests_are_rounded_and_share_segments_by_size():
    """Up to 1 MiB from 2 MiB segments, under 10 MiB from 20 MiB ones, larger in their own
    rounded to 2 MiB; every request to a multiple of 512 bytes."""
    small = _events([("alloc", k, 1000) for k in range(2048)])
    replayed = allocator.replay(small, 1, GiB)
    assert replayed.peak_allocated_bytes == 2048 * 1024
    assert replayed.peak_reserved_bytes == 2 * MiB
    mid = _events([("alloc", "a", 3 * MiB), ("alloc", "b", 3 * MiB)])
    assert allocator.replay(mid, 1, GiB).peak_reserved_bytes == 20 * MiB
    large = _events([("alloc", "a", 11 * MiB + 1)])
    assert allocator.replay(large, 1, GiB).peak_reserved_bytes == 12 * MiB


def test_a_replay_scales_each_allocation_with_the_batch():
    events = [("alloc", "batch", 1000, 100)]
    assert allocator.replay(events, 10, GiB).peak_allocated_bytes == 2048  # 2,000 rounded
    # past 1 MiB a request needs a 20 MiB segment, which 10 MiB cannot hold
    assert allocator.largest_batch(events, 10 * MiB, 1) == (MiB - 1000) // 100
    assert allocator.largest_batch([("alloc", "batch", 0, MiB)], 64 * MiB, 1) == 64


def test_a_traced_step_leaves_its_gradients_and_allocates_nothing_for_the_weights_update():
    """Every free in the trace names an allocation before it; what is alive once a LeNet step
    ends is its gradients, the weights' 246,824 bytes, and nothing was allocated for the
    weights' in-place update or their views (their storages existed before the step)."""
    from bench.planning.models import resolve
    from bench.planning.predict import _traced_step

    events = _traced_step(64, "float32", False, resolve("lenet"), 1)[1]
    freed = set()
    for index, event in enumerate(events):
        if event[0] == "free":
            assert event[1] < index and events[event[1]][0] == "alloc"
            assert event[1] not in freed
            freed.add(event[1])
    alive = [e for k, e in enumerate(events) if e[0] == "alloc" and k not in freed]
    assert sum(e[1] for e in alive) == 246_824
    assert not any("add_" in e[2] or e[2].startswith("aten.t.") for e in events
                   if e[0] == "alloc")


def _failed_trials(path: Path, key: str) -> list[tuple[int, dict]]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    attempts = [a for row in rows if row["key"].startswith(key)
                for a in (row.get("trials") or row["attempts"])]
    return [(a["batch_size"], a["error"]) for a in attempts]


@pytest.mark.parametrize("source, key, room_bytes", [
    # the boundary search at float32: the card's room read from its first failed trial
    ("default/boundaries.jsonl", "float32-nchw", None),
    # two cells under a 2 GiB cap, the allocator's limit
    ("cap-2gib/results.jsonl", "b", 2 * GiB)])
def test_a_trial_replayed_fails_where_the_h100s_did_with_the_figures_it_gave(source, key,
                                                                            room_bytes):
    """Each OOM an H100 gave a LeNet step (torch 2.11): the replay fails at the same batch,
    asking for the same block, with the same bytes allocated and reserved, to the two
    decimals its message prints; each batch that trained fits."""
    trials = _failed_trials(H100 / source, key)
    failed = [(batch, cuda_oom_figures(error)) for batch, error in trials if error]
    assert len(failed) >= 2 and all(figures for _, figures in failed)
    if room_bytes is None:  # what the allocator could have reserved: all it held, and the free
        first = failed[0][1]
        room_bytes = int(first.allocated_bytes + first.unallocated_bytes + first.free_bytes)
    events = trial_allocations(Config(256, device="cuda:0"))
    for batch, error in trials:
        replayed = allocator.replay(events, batch, room_bytes)
        if not error:
            assert replayed.fits, batch
            continue
        said = cuda_oom_figures(error)
        assert not replayed.fits, batch
        failure = replayed.failure
        for printed, figure in ((said.asked_bytes, failure.asked_bytes),
                                (said.allocated_bytes, failure.allocated_bytes),
                                (said.unallocated_bytes,
                                 failure.reserved_bytes - failure.allocated_bytes)):
            # two decimals of the printed unit: half a hundredth of it either way
            assert figure == pytest.approx(printed, abs=_print_precision(printed)), batch


def _print_precision(printed: float) -> float:
    unit = next(u for u in (2**30, 2**20, 2**10, 1) if printed >= u or u == 1)
    return 0.005 * unit


def _eager_rows():
    """Every eager single-model row that trained in the H100's and the H200's default grids."""
    with tarfile.open(H200) as archive:
        h200 = archive.extractfile("./default/results.jsonl").read().decode()
    texts = [(H100 / "default/results.jsonl").read_text(), h200]
    return [row for text in texts for row in map(json.loads, text.splitlines())
            if row["status"] == "ok" and row.get("mode", "eager") == "eager"
            and row.get("replicas", 1) == 1]


def test_a_float32_trials_replayed_peak_is_what_the_cards_allocated_to_the_kilobyte():
    """The allocator's peak of every float32 cell on both cards (torch 2.11), device data and
    the host loader, b256 to b16,384, is the replay's to within 2 KiB: the libraries'
    workspaces are two cuBLAS ones (the forward's thread's handle and the backward's) and one
    cuBLASLt one."""
    rows = [row for row in _eager_rows() if row["dtype"] == "float32"]
    assert len(rows) >= 30
    for row in rows:
        config = Config(row["batch_size"], channels_last=row["channels_last"],
                        placement=row["placement"], device="cuda:0")
        replayed = allocator.replay(trial_allocations(config), row["batch_size"], 80 * GiB)
        assert replayed.peak_allocated_bytes == pytest.approx(row["peak_allocated_bytes"],
                                                              abs=2048), row["key"]


def test_the_predicted_float32_boundary_on_an_h100_is_where_it_ran_out_of_memory():
    """The H100 trained b1,048,576 and ran out of memory at b1,114,112 with 79.17 GiB free
    before its worker: the boundary predicted from the live tensors was 1,422,469, 36% high;
    replayed through the allocator it lies between the two."""
    config = Config(256, device="cuda:0")
    capacity = int(79.17 * GiB)
    predicted = boundary_batch(config, capacity, capped=False)
    assert 1_048_576 <= predicted < 1_114_112
    assert predicted == pytest.approx(1_048_576, rel=0.10)
    # the live tensors alone would fit far past it: fragmentation is what ends it
    assert model_for(config).max_batch(capacity) > 1.3 * predicted
    assert step_fits(Config(1_048_576, device="cuda:0"), capacity, capped=False)
    assert not step_fits(Config(1_114_112, device="cuda:0"), capacity, capped=False)


def test_under_a_cap_the_allocator_may_reserve_the_cap_itself():
    """--memory-cap limits what the allocator reserves; the CUDA context is outside it. An
    H100 under a 2 GiB cap backed b32,768 off to b16,384."""
    predicted = boundary_batch(Config(256, device="cuda:0"), 2 * GiB, capped=True)
    assert 16_384 <= predicted < 32_768
    assert predicted > boundary_batch(Config(256, device="cuda:0"), 2 * GiB, capped=False)


def test_other_allocator_settings_are_not_replayed(monkeypatch):
    """Expandable segments map pages into one range: no fragmentation to replay, so the
    boundary is where the live tensors meet the room."""
    config = Config(256, device="cuda:0")
    replayed = boundary_batch(config, int(79.17 * GiB), capped=False)
    assert prediction_method(config) == "allocator"
    assert prediction_method(Config(256, device="cpu")) == "tensors"
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    assert not allocator.default_settings()
    assert prediction_method(config) == "tensors"
    line = boundary_batch(config, int(79.17 * GiB), capped=False)
    assert line == model_for(config).max_batch(int(79.17 * GiB) - 768 * MiB) > replayed


def test_the_cpu_boundary_is_the_live_tensors_line():
    """No caching allocator on the CPU: its boundary under a cap is where the tensors meet it
    (4.8% from the found one under 512 MiB, bench.run's end-to-end test)."""
    config = Config(64, device="cpu")
    assert boundary_batch(config, 512 * MiB, capped=True) == model_for(config).max_batch(
        512 * MiB)


def test_a_run_keeps_the_settings_that_change_what_a_gpu_step_allocates():
    """env.json names the allocator's settings and the cuBLAS workspaces' where they were set,
    so a page can say which prediction holds and two runs can be told apart."""
    import torch

    from bench.records.env import collect

    env = collect(torch.device("cpu"), {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
                                        "CUBLAS_WORKSPACE_CONFIG": ":4096:8", "HOME": "/root"})
    assert env["memory_settings"] == {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
                                      "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    assert collect(torch.device("cpu"), {})["memory_settings"] == {}
