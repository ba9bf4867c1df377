"""Which model a run trains: LeNet (the default), any torchvision classification model by name, or
the user's own through a factory.

    --model lenet
    --model torchvision:resnet18            randomly initialised: nothing is downloaded
    --model mypackage.models:make_model     the user's own (the contract below)
    --input-shape 3x64x64                   another input shape, to try a big model quickly

A factory is a callable that takes no arguments and returns `(model, input_shape, num_classes)`:
a freshly initialised `torch.nn.Module` that maps a batch of `input_shape` inputs to logits of
`num_classes` classes, the input shape of one example (a tuple of ints, such as (3, 32, 32)), and
the number of classes. It is called once per cell, after the seed is set, from the directory the
run started in. Models other than LeNet train on synthetic data of their input shape.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import importlib
import signal
import sys
import threading
from dataclasses import dataclass

import torch
from torch import nn

from bench.instruments.oom import one_line
from bench.planning.grid import LENET
from bench.planning.plan_file import ModelInfo

TORCHVISION = "torchvision:"
# Samples in another model's synthetic set: batches are drawn with replacement, so any batch size
# works, and a set of 224x224 images stays at 0.6 GiB where the device holds it.
SYNTHETIC_SIZE = 1024
# torchvision's models that take another input size, and those whose auxiliary heads would make
# training mode return a tuple instead of logits
_TORCHVISION_SHAPES = {"inception_v3": (3, 299, 299)}
_AUX_LOGITS = ("googlenet", "inception_v3")
_TORCHVISION_SHAPE = (3, 224, 224)
_TORCHVISION_CLASSES = 1000
# how long the user's code may take to import, build a model or run its check forward pass
USER_CODE_TIMEOUT_S = 120.0


class ModelError(ValueError):
    """A model that cannot be named, built or trained as given; the message says what to do."""


class _TooLong(Exception):
    pass


@contextlib.contextmanager
def users_code(name: str, doing: str):
    """Run the user's code (`doing`: what it is doing, in words) with its prints sent to standard
    error, where they cannot break --json's standard output; with a time limit where a timer
    signal can give one (the main thread, no limit already running); and any exit or exception
    it raises turned into one ModelError naming the model."""
    def too_long(signum, frame):
        raise _TooLong

    timed = (threading.current_thread() is threading.main_thread()
             and signal.getitimer(signal.ITIMER_REAL)[0] == 0)
    if timed:
        previous = signal.signal(signal.SIGALRM, too_long)
        signal.setitimer(signal.ITIMER_REAL, USER_CODE_TIMEOUT_S)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    except _TooLong:
        raise ModelError(f"--model {name}: {doing} took longer than {USER_CODE_TIMEOUT_S:g} s "
                         f"and was stopped; make it return sooner") from None
    except SystemExit as exc:
        raise ModelError(f"--model {name}: {doing} called sys.exit({exc.code!r}); it must "
                         f"return, not exit") from None
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's code: its failure is the message
        raise ModelError(f"--model {name}: {doing} raised {one_line(exc)}") from None
    finally:
        if timed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


@dataclass(frozen=True)
class ModelSpec:
    """A model by name, with the input shape and classes its cells train on."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int

    @property
    def is_lenet(self) -> bool:
        return self.name == LENET

    @property
    def shape_words(self) -> str:
        return "x".join(str(d) for d in self.input_shape)

    def build(self, seed: int | None = 0) -> nn.Module:
        return build_model(self.name, seed)


def build_model(name: str, seed: int | None = 0) -> nn.Module:
    """A freshly initialised model (the same weights for the same seed)."""
    if seed is not None:
        torch.manual_seed(seed)
    return _factory(name)()[0]


def parse_input_shape(text: str) -> tuple[int, ...]:
    """`3x64x64` -> (3, 64, 64)."""
    parts = text.lower().split("x")
    if not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ModelError(f"--input-shape {text!r}: write one example's shape as whole numbers "
                         f"joined by x, such as 3x64x64")
    return tuple(int(p) for p in parts)


def _lenet():
    from lenet.model import IMAGE_SHAPE, NUM_CLASSES, build_lenet

    return build_lenet(), IMAGE_SHAPE, NUM_CLASSES


def _torchvision(name: str):
    from torchvision import models

    known = models.list_models(module=models)  # classification models only
    if name not in known:
        close = (difflib.get_close_matches(name.lower(), known, n=6, cutoff=0.6)
                 or [k for k in known if k.startswith(name[:4].lower())] or known[:5])
        raise ModelError(f"torchvision has no classification model {name!r}; such as: "
                         f"{', '.join(close[:6])} (all: torchvision.models.list_models())")
    extra = {"aux_logits": False, "init_weights": True} if name in _AUX_LOGITS else {}

    def build():
        model = models.get_model(name, weights=None, **extra)
        return model, _TORCHVISION_SHAPES.get(name, _TORCHVISION_SHAPE), _TORCHVISION_CLASSES
    return build


def _user_factory(name: str):
    module_name, _, attribute = name.partition(":")
    if not module_name or not attribute:
        raise ModelError(f"--model {name!r}: name lenet, torchvision:NAME or "
                         f"package.module:factory")
    with users_code(name, f"importing {module_name}"):
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # noqa: BLE001 - whatever importing the user's module raises
            raise ModelError(f"--model {name}: cannot import {module_name} "
                             f"({one_line(exc)}); run from the directory "
                             f"that holds it, or install it") from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ModelError(f"--model {name}: {module_name} has no callable {attribute!r}")

    def build():
        with users_code(name, "the factory"):
            made = factory()
        if not (isinstance(made, tuple) and len(made) == 3 and isinstance(made[0], nn.Module)
                and isinstance(made[1], (tuple, list)) and made[1]
                and all(isinstance(d, int) and d > 0 for d in made[1])
                and isinstance(made[2], int) and made[2] > 1):
            raise ModelError(f"--model {name}: the factory must return (model, input_shape, "
                             f"num_classes), such as (net, (3, 32, 32), 10); it returned "
                             f"{_describe(made)}")
        return made[0], tuple(made[1]), made[2]
    return build


@functools.cache
def _factory(name: str):
    if name == LENET:
        return _lenet
    if name.startswith(TORCHVISION):
        return _torchvision(name.removeprefix(TORCHVISION))
    return _user_factory(name)


@functools.cache
def resolve(name: str, input_shape: str = "") -> ModelSpec:
    """The model named, checked: it builds, and one training-mode forward on a batch of two
    gives logits. ModelError, in one line, where it does not. Cached: the plan, the memory model
    and a worker ask for the same model."""
    model, shape, num_classes = _factory(name)()
    if input_shape:
        shape = parse_input_shape(input_shape)
    spec = ModelSpec(name, shape, num_classes)
    if not any(p.requires_grad for p in model.parameters()):
        raise ModelError(f"--model {name} has no parameters to train; a bench of training "
                         f"steps needs some")
    with users_code(name, f"its forward pass on input {spec.shape_words}"):
        try:
            model.train()
            out = model(torch.rand(2, *shape))
        except Exception as exc:  # noqa: BLE001 - the model's own failure is the message
            raise ModelError(f"--model {name} fails on input {spec.shape_words}: "
                             f"{one_line(exc)}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        raise ModelError(f"--model {name} must map a batch to logits of shape (batch, "
                         f"{num_classes}); on a batch of 2 it returned {_describe(out)}")
    if not out.is_floating_point():
        raise ModelError(f"--model {name} returns logits of {out.dtype}; a classifier's logits "
                         f"are floating point, for the loss and its gradient")
    return spec


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def fingerprint(model: nn.Module) -> str:
    """A short hash of the architecture (layers and parameter shapes, not values): two versions
    of a model under one name never compare as the same cell."""
    text = repr(model) + "".join(f"{n}{tuple(p.shape)}{p.dtype}"
                                 for n, p in model.named_parameters())
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def describe(spec: ModelSpec) -> ModelInfo:
    """What a plan and the page say of the model."""
    model = spec.build(seed=0)
    return ModelInfo(spec.name, tuple(spec.input_shape), spec.num_classes, parameters(model),
                     fingerprint(model))


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, tuple):
        return f"a tuple of {len(value)}: ({', '.join(type(v).__name__ for v in value)})"
    return f"a {type(value).__name__}"
