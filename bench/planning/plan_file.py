"""plan.json as a type: the frozen `Plan` a run is made from, and what it names (the model, the
Slurm job array's options), read back through the schema's upgrade path.

A plan is written once, by the command that makes the run, and read by every process that
works in or reads the run directory: the resume, each Slurm task, the report and the gate. Past
the command line nothing reads a plan by string key: `Plan.from_dict` turns the stored JSON into
this type (a field an older plan lacks takes its default here, from the grid's dataclasses), and
`Plan.as_dict` is the only way back to JSON. Without torch: reports and workers import it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from bench.basics.schema import SCHEMA_VERSION, field_defaults, upgraded
from bench.basics.settings import Settings
from bench.planning.devices import Slot, single
from bench.planning.grid import LENET, Config, Grid

# Fields without which a JSON object is not a plan at all (the others have defaults).
REQUIRED = ("grid", "device", "data", "settings", "cells")


class PlanError(ValueError):
    """plan.json cannot be read as a plan by this version; the message says what to do."""


@dataclass(frozen=True)
class ModelInfo:
    """What a plan and the page say of the model. A plan from before --model trained LeNet and
    did not record its counts."""

    name: str = LENET
    input_shape: tuple[int, ...] = (1, 28, 28)
    num_classes: int = 10
    parameters: int | None = None
    # bench.planning.models.fingerprint: the architecture, not the weights
    fingerprint: str | None = None


@dataclass(frozen=True)
class SlurmOptions:
    """What the job array asks Slurm for; stored in the plan, so --resume asks the same."""

    partition: str | None = None
    gpus_per_task: int = 0
    time_limit_min: int = 60
    tasks: int | None = None  # how many array tasks share the cells; None: one per cell
    extra: dict[str, str] = field(default_factory=dict)  # --slurm KEY=VALUE, as sbatch takes it


@dataclass(frozen=True)
class Plan:
    """What a run measures and how: its cells, the settings they share and where they run."""

    grid: str
    device: str  # the run's device as its cells name it: cpu or cuda:N
    data: str  # fashion-mnist or synthetic
    settings: Settings
    cells: tuple[Config, ...]
    grid_description: str = ""
    overrides: dict[str, tuple] = field(default_factory=dict)  # --set, by axis
    model: ModelInfo = ModelInfo()
    input_shape: str = ""  # as keys hold it: "" where the model's own
    device_notice: str | None = None
    data_notice: str | None = None
    data_root: str | None = None
    memory_cap_bytes: int | None = None
    cell_timeout_s: float | None = None
    find_max_batch: bool = False
    boundary_limit: int = Grid.boundary_limit
    boundary_budget_s: float = Grid.boundary_budget_s
    skipped: dict[str, str] = field(default_factory=dict)  # cell key -> why it cannot run here
    # this host's workers (bench.planning.devices); None: the run's one device, as before --devices
    devices: tuple[Slot, ...] | None = None
    executor: SlurmOptions | None = None  # None: this machine; else a Slurm job array
    schema_version: int = SCHEMA_VERSION

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")

    def slots(self) -> list[Slot]:
        """This host's workers as the plan names them, or its one device."""
        return list(self.devices) if self.devices else single(self.device)

    def as_dict(self) -> dict:
        """The plan as plan.json holds it."""
        stored = {f.name: getattr(self, f.name) for f in fields(self)}
        stored.update(
            settings=asdict(self.settings), cells=[c.as_dict() for c in self.cells],
            overrides={axis: list(values) for axis, values in self.overrides.items()},
            model={**asdict(self.model), "input_shape": list(self.model.input_shape)},
            devices=None if self.devices is None else [
                {**asdict(s), "cpu_cores": None if s.cpu_cores is None else list(s.cpu_cores)}
                for s in self.devices],
            executor=None if self.executor is None else {"name": "slurm",
                                                         **asdict(self.executor)})
        return stored

    @classmethod
    def from_dict(cls, raw, where: str) -> Plan:
        """A stored plan at this schema: NewerSchemaError for a newer one (its cells may have
        axes this version lacks), PlanError for one this version cannot read."""
        missing = [k for k in REQUIRED if not isinstance(raw, dict) or k not in raw]
        if missing or not isinstance(raw["cells"], list):
            lacks = ", ".join(missing) or "a list of cells"
            raise PlanError(f"{where} is not a plan (it lacks {lacks}); start a new run instead")
        stored = upgraded(raw, _DEFAULTS, where)
        stored = {name: stored[name] for name in _FIELDS if name in stored}
        try:
            model = stored.get("model") or {}
            return cls(**{
                **stored,
                "settings": Settings(**stored["settings"]),
                "cells": tuple(Config(**c) for c in stored["cells"]),
                "overrides": {axis: tuple(values) for axis, values in
                              (stored.get("overrides") or {}).items()},
                "model": ModelInfo(**{**model, "input_shape": tuple(
                    model.get("input_shape", ModelInfo.input_shape))}),
                "devices": None if not stored.get("devices") else tuple(
                    Slot(**{**s, "cpu_cores": tuple(s["cpu_cores"]) if s.get("cpu_cores")
                            else None}) for s in stored["devices"]),
                "executor": None if stored.get("executor") is None else SlurmOptions(
                    **{k: v for k, v in stored["executor"].items() if k != "name"}),
            })
        except (TypeError, AttributeError) as exc:
            raise PlanError(f"{where} holds a plan this version cannot read ({exc}); start a "
                            f"new run instead") from None


_FIELDS = tuple(f.name for f in fields(Plan))
# what a plan written before a field existed is read with: the field's default here
_DEFAULTS = {name: value for name, value in field_defaults(Plan).items()
             if name not in ("schema_version", "model", "devices", "executor")}
