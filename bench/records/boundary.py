"""What a boundary search keeps: the cell searched, the largest batch that trained and the
smallest that did not, why the search stopped, its trials and its time. The search that fills
it is bench.execution.boundary_search.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from bench.basics.outcome import Attempt
from bench.basics.schema import SCHEMA_VERSION, field_defaults, upgraded
from bench.planning.grid import DEFAULTS, Config


@dataclass
class Boundary:
    config: Config  # the cell searched, its batch left to the search
    max_ok_batch: int | None = None  # the largest batch that trained
    first_failed_batch: int | None = None  # the smallest that did not
    stop_reason: str = ""  # a failed trial's outcome, or: batch limit, time budget
    failure: str | None = None  # the error text of the first failed batch
    trials: list[Attempt] = field(default_factory=list)
    predicted_max_batch: int | None = None
    # how it was predicted (bench.planning.predict.prediction_method): "allocator", a trial
    # replayed through the caching allocator, or "tensors", where the live tensors' peak meets
    # the room; None in a boundary from before schema 10, whose prediction was the tensors'
    prediction: str | None = None
    gpu_name: str | None = None  # the card model searched on: one search per model in a pool
    search_s: float | None = None  # the search's wall time, every trial's worker included

    def as_dict(self) -> dict:
        """As stored: flat, the cell's settings (but its batch) beside the search's findings."""
        stored = asdict(self)
        settings = stored.pop("config")
        del settings["batch_size"]
        return {"schema_version": SCHEMA_VERSION, "key": self.config.boundary_key(), **settings,
                **stored}


_DEFAULTS = {**DEFAULTS, **field_defaults(Boundary, leave_out=("config",))}


def read_boundary(raw: dict, where: str) -> dict:
    """A stored boundary at this schema, every key present; NewerSchemaError for a newer one."""
    return upgraded(raw, _DEFAULTS, where)

