"""FLOPs of a training step, each model's checked against a count by hand or its library's own
figure, and a cell's arithmetic rate against a card's peak."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torchvision.models import get_model_weights

from bench.planning.flops import counted, flop_counter, step_flops_per_example
from bench.planning.models import resolve
from bench.planning.peaks import card_peaks


def test_lenets_step_is_the_hand_counted_2_263_920_flops_an_example():
    """conv1 6x28x28 outputs of 25 multiply-adds, conv2 16x10x10 of 150, the linear layers
    400x120 + 120x84 + 84x10: 833,040 FLOPs forward; the backward takes every weight's gradient
    and every input's but conv1's: 1,430,880."""
    forward = 2 * (6 * 28 * 28 * 25 + 16 * 10 * 10 * 150 + 400 * 120 + 120 * 84 + 84 * 10)
    backward = 2 * forward - 2 * 6 * 28 * 28 * 25
    assert forward == 833_040 and forward + backward == 2_263_920
    assert step_flops_per_example(resolve("lenet")) == 2_263_920


def _forward_flops(model) -> float:
    with FakeTensorMode():
        net = model.build(seed=0)
        with flop_counter() as counter:
            net(torch.rand(2, *model.input_shape))
    return counter.get_total_flops() / 2


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_a_torchvision_models_forward_is_its_own_published_figure_and_its_step_about_3x(name):
    """torchvision publishes each model's forward multiply-adds at 224x224 ("GFLOPS" in its
    tables: 1.814 and 0.057); a step's backward costs about twice the forward, less the first
    layer's input gradient, which nobody needs."""
    model = resolve(f"torchvision:{name}")
    forward = _forward_flops(model)
    published = get_model_weights(name).DEFAULT.meta["_ops"]
    assert forward / 2 / 1e9 == pytest.approx(published, abs=0.0005)
    assert 2.85 < step_flops_per_example(model) / forward < 3.0


def test_a_depthwise_convolutions_backward_counts_each_gradient_once():
    """torch's own formula counted the weights' gradient of a grouped convolution once per
    group too many (mobilenet_v3_small's step came to 34x its forward)."""
    conv = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
    images = torch.rand(1, 8, 10, 10, requires_grad=True)
    with flop_counter() as counter:
        conv(images).sum().backward()
    forward = 2 * 10 * 10 * 8 * 9  # each output point: 9 multiply-adds over one channel
    assert counter.get_total_flops() == 3 * forward  # forward, the input's and weights' grads


def test_a_model_the_counter_cannot_trace_has_no_figure():
    from bench.planning.models import ModelSpec

    class Refuses(ModelSpec):
        def build(self, seed=0):
            raise RuntimeError("no fake tensors here")

    assert counted(Refuses("refuses", (1, 4, 4), 2)) is None


def test_a_cards_peak_is_its_datasheets_and_an_unknown_card_has_none():
    h200 = card_peaks("NVIDIA H200")
    assert h200.tflops("float32") == 66.9 and h200.tflops("bfloat16") == 989.4
    assert h200.memory_tb_per_s == 4.8
    assert card_peaks("NVIDIA H100 80GB HBM3").name == "H100 SXM5"
    assert card_peaks("NVIDIA GeForce RTX 4090") is None and card_peaks(None) is None


def test_a_steps_traffic_is_a_line_in_the_batch_and_halves_its_activations_in_bfloat16():
    """Counted at batches 2 and 4, the line holds at 256 to the byte; LeNet's float32 step
    moves 1.48 MB plus 300 KB an example, a bfloat16 one about half as much an example (its
    activations are 16-bit) over more operators (autocast's casts). The same figures on every
    torch the package allows: a device query reads no memory and launches nothing (torch 2.11
    and 2.14.1 ask for tensors' devices 133 times a step, a different number of them per batch)."""
    from bench.planning.flops import bytes_moved, step_traffic

    lenet = resolve("lenet")
    float32, bfloat16 = step_traffic(lenet, "float32"), step_traffic(lenet, "bfloat16")
    assert bytes_moved(lenet, "float32", 256) == (float32.bytes_at(256), float32.operators)
    # forward, about 120 KB an example: the first convolution reads 3,136 bytes and writes
    # 18,816, its sigmoid reads and writes 18,816 each, its pooling reads them and writes 4,704,
    # and so on down to the 40 bytes of logits; the backward moves about one and a half times
    assert (float32.fixed_bytes, float32.per_example_bytes) == (1_480_024, 300_240)
    # two convolutions, two poolings, three linear layers (addmm), four sigmoids, the loss (log
    # softmax, NLL), each with its backward (mm twice a linear layer, sums for their biases),
    # the loss's seed gradient (ones_like) and SGD's ten in-place adds
    assert float32.operators == 43
    assert 0.45 < bfloat16.per_example_bytes / float32.per_example_bytes < 0.6
    assert bfloat16.operators > float32.operators


@pytest.mark.parametrize("optimizer, device, counted", [
    ("default", "cpu", "loop"), ("default", "cuda:0", "foreach"),  # torch's own choice
    ("fused", "cpu", "fused"), ("loop", "cuda:1", "loop"), ("foreach", "cpu", "foreach")])
def test_a_cells_update_is_counted_as_the_implementation_its_device_runs(optimizer, device,
                                                                         counted):
    from lenet.modes import implementation

    assert implementation(optimizer, device) == counted


def test_every_sgd_implementation_moves_the_same_bytes_in_its_own_number_of_operators():
    """SGD's update reads each weight and its gradient and writes the weight: a loop does it in
    ten in-place adds, foreach in one multi-tensor add (which returns nothing: what it writes is
    its first argument), fused in one kernel, whose schema declares the gradients written too
    (it may unscale them in place): counted so, one set of weights more."""
    from bench.planning.flops import step_traffic

    lenet = resolve("lenet")
    loop, foreach, fused = (step_traffic(lenet, "float32", optimizer)
                            for optimizer in ("loop", "foreach", "fused"))
    assert loop == step_traffic(lenet, "float32")  # the CPU's default
    assert loop.operators == 43 and foreach.operators == fused.operators == 34
    assert (foreach.fixed_bytes, foreach.per_example_bytes) == (loop.fixed_bytes,
                                                                loop.per_example_bytes)
    weights = sum(p.numel() * 4 for p in lenet.build(seed=0).parameters())
    assert weights == 246_824
    assert fused.fixed_bytes - loop.fixed_bytes == weights
    assert fused.per_example_bytes == loop.per_example_bytes


def test_a_tf32_cell_is_placed_against_the_tf32_peak_not_the_float32_one():
    """precision=tf32 runs float32's matrix products on the tensor cores: its peak is TF32's."""
    h200 = card_peaks("NVIDIA H200")
    assert h200.tflops("float32", "tf32") == 494.7
    assert h200.tflops("float32", "highest") == h200.tflops("float32") == 66.9
    assert h200.tflops("bfloat16", "tf32") == 989.4  # autocast's 16-bit math is not float32's
