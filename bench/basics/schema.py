"""The version of what a run directory stores, and the one way stored rows are read back.

Version 1 rows (written before rows carried a version) lack the contention figures; version 2
rows lack the mode (they ran eager, its default), setup_s and the energy figures; version 3 rows
lack where they ran (host, GPU, Slurm job); version 4 rows and boundaries lack where their time
went (the worker's start, the data, sizing the repeats, a search's wall time); version 5 rows
lack whether a compiled cell's compile found torch.compile's caches warm; version 6 rows lack
the FLOPs of an example's step and the step's memory traffic; version 7 rows lack the
replicas (they trained one model, so their examples/s is one model's) and an operator's launch
time; version 8 rows lack a compile ahead of the cells; version 9 boundaries lack how their
prediction was made (the live tensors' peak, then, on a GPU too). Reading fills
every field a row lacks with its default, so every reader sees every key. A row or plan from a
newer version than this reader is refused: its fields may mean something this version cannot
know.
"""

from __future__ import annotations

from dataclasses import MISSING, fields

SCHEMA_VERSION = 10


class NewerSchemaError(ValueError):
    """Stored data written by a newer lenet-bench; the message says what to do."""


def field_defaults(cls, leave_out: tuple[str, ...] = ()) -> dict:
    """A dataclass's defaults by field name, a factory where the field has one (called for each
    row); fields without a default are left out."""
    return {f.name: f.default_factory if f.default is MISSING else f.default
            for f in fields(cls) if f.name not in leave_out
            and (f.default is not MISSING or f.default_factory is not MISSING)}


def upgraded(raw: dict, defaults: dict, where: str) -> dict:
    """`raw` at this schema: its version checked, every missing field at its default."""
    version = raw.get("schema_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise NewerSchemaError(f"{where}: schema_version {version!r} is not a version; the file "
                               f"was not written by lenet-bench")
    if version > SCHEMA_VERSION:
        raise NewerSchemaError(f"{where} was written by a newer lenet-bench (schema {version}; "
                               f"this one reads up to {SCHEMA_VERSION}): upgrade lenet-bench to "
                               f"read it")
    fresh = {name: value() if callable(value) else value for name, value in defaults.items()}
    return {**fresh, **raw, "schema_version": SCHEMA_VERSION}
