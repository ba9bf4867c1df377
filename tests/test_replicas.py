"""Several models trained at once (lenet.replicas): each replica trains as it would alone."""

import pytest
import torch

from bench.instruments.memory import LiveBytes
from bench.planning.grid import Config
from bench.planning.predict import step_peak_bytes
from lenet.data import synthetic_tensors
from lenet.model import build_lenet
from lenet.replicas import Replicas
from lenet.train import build_step

REPLICAS = 3


def _alone(seed: int, steps: int, optimizer: str = "default") -> list[torch.Tensor]:
    """A model trained by itself: its weights after `steps` steps, and its losses."""
    net = build_lenet(seed=seed)
    step = build_step(net, lr=0.9, optimizer=optimizer)
    data = synthetic_tensors(64, seed=1)
    losses = [float(step(data.images, data.labels)[0]) for _ in range(steps)]
    return [p.detach().clone() for p in net.parameters()], losses


def test_stacked_models_give_each_models_own_logits():
    nets = [build_lenet(seed=k) for k in range(REPLICAS)]
    images = torch.rand(8, 1, 28, 28)
    alone = [net(images) for net in nets]
    logits = Replicas([build_lenet(seed=k) for k in range(REPLICAS)])(images)
    assert logits.shape == (REPLICAS * 8, 10)
    for k in range(REPLICAS):
        torch.testing.assert_close(logits[8 * k:8 * (k + 1)], alone[k])


@pytest.mark.parametrize("method", ["vmap", "streams"])
@pytest.mark.parametrize("optimizer", ["default", "fused"])
def test_each_replica_trains_as_it_would_alone(method, optimizer):
    """Three steps of three models at once: each one's weights are those it reaches trained by
    itself from the same seed, and the step's loss is the mean of the three."""
    nets = [build_lenet(seed=k) for k in range(REPLICAS)]
    step = build_step(nets, lr=0.9, optimizer=optimizer, replica_method=method)
    data = synthetic_tensors(64, seed=1)
    losses = [float(step(data.images, data.labels)[0]) for _ in range(3)]
    alone = [_alone(k, 3, optimizer) for k in range(REPLICAS)]
    assert losses == pytest.approx([sum(run[1][i] for run in alone) / REPLICAS
                                    for i in range(3)], rel=1e-5)
    if method == "vmap":
        trained = [[p[k] for p in step.net.stacked] for k in range(REPLICAS)]
    else:
        trained = [list(net.parameters()) for net in nets]
    for k, (weights, _) in enumerate(alone):
        for got, want in zip(trained[k], weights):
            torch.testing.assert_close(got.detach(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_stacked_replicas_learn_in_every_dtype_and_layout(dtype):
    nets = [build_lenet(seed=k) for k in range(REPLICAS)]
    step = build_step(nets, lr=0.9, dtype=dtype, channels_last=True)
    data = synthetic_tensors(64, seed=0)
    losses = [float(step(data.images, data.labels)[0]) for _ in range(20)]
    assert losses[-1] < losses[0]


def test_streams_refuse_a_compiled_mode_with_the_way_that_works():
    why = ("replica_method streams runs K eager steps; mode compile would compile or capture "
           "each replica's step on its own: use replica_method vmap")
    assert Config(64, replicas=2, replica_method="streams", mode="compile").unsupported() == why
    with pytest.raises(ValueError, match="use replica_method vmap"):
        build_step([build_lenet(), build_lenet()], lr=0.1, mode="compile",
                   replica_method="streams")
    assert Config(64, replicas=2, mode="compile").unsupported() is None


def test_the_memory_model_counts_stacked_replicas_as_a_real_step_makes_them():
    """The fake-tensor count of four stacked LeNets' step equals a real CPU step's tracked
    peak, and is more than four times one model's (the stacked weights' gradients and the
    grouped convolutions' activations)."""
    nets = [build_lenet(seed=k) for k in range(4)]
    step = build_step(nets, lr=0.1)
    data = synthetic_tensors(64, seed=0)
    step(data.images[:2], data.labels[:2])  # the state built lazily, as the count's first step
    with LiveBytes() as tracker:
        step(data.images.clone(), data.labels.clone())
    predicted = step_peak_bytes(64, "float32", False, replicas=4)
    assert predicted == pytest.approx(tracker.peak_bytes, rel=0.01)
    assert predicted > 3.5 * step_peak_bytes(64, "float32", False)
