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
    """An H100 (9.0) ran 65.3 to 66.9 MiB over the tensors: two handles' 32 MiB cuBLAS
    workspaces and the forward's 1 MiB cuBLASLt one (test_allocator.py replays each cell to
    2 KiB with them); an A100 (8.0) gets 8.125 MiB cuBLAS workspaces instead."""
    cpu = memory_model("float32", False, "device")
    hopper = memory_model("float32", False, "device", device_type="cuda", capability=(9, 0))
    ampere = memory_model("float32", False, "device", device_type="cuda", capability=(8, 0))
    assert hopper.peak_bytes(4096) - cpu.peak_bytes(4096) == 65 * 2**20
    assert ampere.peak_bytes(4096) - cpu.peak_bytes(4096) == 2 * 8_519_680 + 2**20
    assert hopper.max_batch(2**30) < ampere.max_batch(2**30) < cpu.max_batch(2**30)
    # a card not here to ask is read as the largest default
    unknown = memory_model("float32", False, "device", device_type="cuda")
    assert unknown.peak_bytes(4096) == hopper.peak_bytes(4096)


def test_the_workspaces_follow_the_environment_as_torch_reads_it():
    from bench.planning.predict import cuda_workspace_bytes

    # the deterministic setting PyTorch documents, :4096:8, on any card
    assert cuda_workspace_bytes((8, 6), {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}) == \
        2 * 32 * 2**20 + 2**20
    assert cuda_workspace_bytes((9, 0), {"CUBLAS_WORKSPACE_CONFIG": ":16:8"}) == \
        3 * 128 * 1024  # cuBLASLt's never more than cuBLAS's
    assert cuda_workspace_bytes((9, 0), {"CUBLASLT_WORKSPACE_SIZE": "4096"}) == \
        2 * 32 * 2**20 + 4 * 2**20
    assert cuda_workspace_bytes((9, 0), {"TORCH_CUBLASLT_UNIFIED_WORKSPACE": "1"}) == \
        2 * 32 * 2**20
    assert cuda_workspace_bytes((10, 0), {}) == 2 * 8_519_680 + 2**20


# An H200's allocator peaks for LeNet on device-resident data (compute capability 9.0, torch 2.11:
# docs/results/nvidia-h200/gpu-check.tgz, default/results.jsonl; the H100's were the same to the
# byte), by (dtype, channels_last, batch)
H200_ALLOCATED = {
    ("float32", False, 4096): 503_738_368, ("float32", False, 16384): 1_236_070_400,
    ("float32", True, 4096): 503_738_368, ("float32", True, 16384): 1_236_070_400,
    ("bfloat16", False, 4096): 418_742_784, ("bfloat16", False, 16384): 902_971_392,
    ("bfloat16", True, 4096): 457_277_952, ("bfloat16", True, 16384): 1_058_161_152,
    ("float16", False, 4096): 418_744_320, ("float16", False, 16384): 902_972_928,
    ("float16", True, 4096): 457_279_488, ("float16", True, 16384): 1_058_162_688,
}


@pytest.mark.parametrize("dtype, channels_last, batch", sorted(H200_ALLOCATED))
def test_a_gpu_steps_16_bit_peak_is_predicted_within_5_percent(dtype, channels_last, batch):
    """Without the per-sample term for what a CUDA step allocates beyond the count (cuDNN
    workspaces, layout copies, autocast's casts) the 16-bit predictions ran 7% to 33% low."""
    model = memory_model(dtype, channels_last, "device", device_type="cuda", capability=(9, 0))
    assert model.peak_bytes(batch) == pytest.approx(H200_ALLOCATED[dtype, channels_last, batch],
                                                    rel=0.05)


def test_a_16_bit_gpu_step_of_another_model_says_it_is_not_modelled():
    from bench.planning.grid import Config
    from bench.planning.predict import unmodelled

    assert unmodelled(Config(64, "bfloat16", device="cuda:0")) is None
    assert unmodelled(Config(64, "float32", device="cuda:0", model="torchvision:resnet18")) \
        is None
    assert unmodelled(Config(64, "bfloat16", device="cuda:0", model="torchvision:resnet18")) \
        .startswith("not modelled: at 16-bit a GPU step allocates cuDNN workspaces")
    assert unmodelled(Config(64, "bfloat16", device="cpu", model="torchvision:resnet18")) is None
