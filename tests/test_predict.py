"""The memory model against what the step itself creates, and against what autograd saves."""

import pytest
import torch

from bench.planning.predict import memory_model, step_peak_bytes
from lenet.model import build_lenet


def _saved_bytes(batch_size: int) -> int:
    """Bytes of the distinct tensors autograd saves for backward in one forward pass."""
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    net = build_lenet(seed=0)
    images = torch.rand(batch_size, 1, 28, 28)
    labels = torch.randint(0, 10, (batch_size,))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = torch.nn.functional.cross_entropy(net(images), labels)
    del loss
    return sum(storages.values())


@pytest.mark.parametrize("batch_size", [256, 1024])
def test_model_matches_a_measured_step_at_other_batch_sizes(batch_size):
    model = memory_model("float32", False, "host")
    weights = sum(p.numel() * 4 for p in build_lenet().parameters())
    measured = step_peak_bytes(batch_size, "float32", False) + weights
    assert model.peak_bytes(batch_size) == pytest.approx(measured, rel=0.01)


def test_per_sample_bytes_exceed_what_autograd_saves():
    """The peak holds the saved activations plus the gradients being formed in backward."""
    model = memory_model("float32", False, "host")
    saved_per_sample = (_saved_bytes(512) - _saved_bytes(256)) / 256
    # LeNet saves about 8,900 floats per sample (input, sigmoid outputs, pools, linears)
    assert 30_000 < saved_per_sample < 40_000
    assert saved_per_sample < model.per_sample_bytes < 2 * saved_per_sample


def test_half_precision_halves_the_activations():
    fp32 = memory_model("float32", False, "host").per_sample_bytes
    bf16 = memory_model("bfloat16", False, "host").per_sample_bytes
    assert 0.45 * fp32 < bf16 < 0.65 * fp32


def test_device_resident_data_adds_the_whole_set():
    host = memory_model("float32", False, "host")
    device = memory_model("float32", False, "device", dataset_size=60_000)
    assert device.peak_bytes(64) - host.peak_bytes(64) == 60_000 * (784 * 4 + 8)


def test_max_batch_inverts_the_peak():
    model = memory_model("float32", False, "device")
    capacity = 2 * 2**30
    best = model.max_batch(capacity)
    assert model.peak_bytes(best) <= capacity < model.peak_bytes(best + 1)


def test_the_2gib_card_boundary_seen_on_an_h200():
    """Under a 2 GiB cap an H200 trained b32,768 and ran out of memory at b65,536."""
    model = memory_model("float32", False, "device")
    assert 32_768 <= model.max_batch(2 * 2**30) < 65_536



def test_on_cuda_the_library_workspaces_are_added():
    cpu = memory_model("float32", False, "device")
    cuda = memory_model("float32", False, "device", device_type="cuda")
    assert cuda.peak_bytes(4096) - cpu.peak_bytes(4096) == 64 * 2**20
    assert cuda.max_batch(2**30) < cpu.max_batch(2**30)
