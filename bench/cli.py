"""What the bench's command lines share: the grid options of `bench.run` and `bench.ab`, and the
one percentage parser of every bound (`bench.compare`, `bench.ab`, the pytest plugin's). The
plumbing the model package's own command line shares with these (one-line errors, exit status
2, the device) is lenet.cli's."""

from __future__ import annotations

import argparse
import math

from bench.planning.grid import AXES, grid_names


def add_grid_options(parser: argparse.ArgumentParser, grid: str | None, device: str | None,
                     data: str | None, data_choices: tuple[str, ...]) -> None:
    """--grid, --set, --device, --data and --data-root, with a command's own defaults (None:
    the command fills them in itself, as bench.run does so that --resume can tell what was
    given)."""
    parser.add_argument("--grid", default=grid,
                        help=f"one of: {', '.join(grid_names())} (default: {grid or 'default'})")
    parser.add_argument("--set", action="append", default=[], metavar="AXIS=V1,V2",
                        help=f"override an axis ({', '.join(AXES)})")
    parser.add_argument("--device", default=device,
                        help=f"auto, cpu or cuda:N (default: {device or 'auto'})")
    parser.add_argument("--data", choices=data_choices, default=data,
                        help=f"the data the steps train on: {', '.join(data_choices)} (default: "
                             f"{data or 'auto, real where installed'})")
    parser.add_argument("--data-root", help="a folder holding Fashion-MNIST's IDX files")


def percentage(text: str) -> float:
    """`5%` (or `5`) -> 0.05: a finite, non-negative number (a NaN bound would pass anything)."""
    try:
        value = float(text.strip().rstrip("%")) / 100
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage like 5%") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must not be negative")
    return value

