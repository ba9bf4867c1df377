"""Command-line plumbing shared by the project's entry points: one-line errors, exit status 2."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable


class UsageError(Exception):
    """Bad input a user can fix; the message says how."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one line (no usage dump) and exits with status 2."""

    def error(self, message: str):
        fail(self.prog, message)


def exit_with(main: Callable[[], int]) -> None:
    """sys.exit(main()); and where the reader of standard output went away (`| head`), exit as a
    command that a broken pipe stops does (status 141), without a traceback. What a run wrote
    to its files before is kept: they are written as they go. A Ctrl-C that lands after the
    command's own handler (its work done, its last line being printed) ends it as a Ctrl-C ends
    a command, status 130, without a traceback."""
    try:
        status = main()
        sys.stdout.flush()  # a broken pipe surfaces here, inside the try, not at exit
    except BrokenPipeError:
        # Python flushes standard output again as it exits: point it at nothing first
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(128 + signal.SIGPIPE)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    sys.exit(status)


def fail(prog: str, message: str):
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def non_negative_int(text: str) -> int:
    value = int(text) if text.lstrip("-").isdigit() else None
    if value is None or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole number, 0 or more")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be greater than 0")
    return value


def resolve_device(spec: str):
    """`auto` is the first GPU when there is one, else the CPU; a GPU asked for must exist."""
    import torch  # here, so that reports (which never imports torch) can share this module

    if spec == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UsageError(f"unknown device {spec!r}; use auto, cpu or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise UsageError(f"unsupported device {spec!r}; use auto, cpu or cuda:N")
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise UsageError(
            f"--device {spec} needs a CUDA GPU, but none is visible (torch {torch.__version__}, "
            f"{build}); use --device cpu"
        )
    index = 0 if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise UsageError(
            f"--device {spec}: there are only {torch.cuda.device_count()} GPU(s); "
            f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}"
        )
    return torch.device("cuda", index)
