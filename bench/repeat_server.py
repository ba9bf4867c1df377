"""Timed repeats of one cell on request, for bench.ab: a JSON request a line on standard input,
a JSON answer a line on standard output. bench.ab starts one in each source tree it compares, so
each side runs its own tree's code.

    {"op": "prepare", "config": {...}, "settings": {...}, "data": "synthetic", "data_root": null}
        -> {"steps": N}: built, warmed up, and the steps that make one repeat
    {"op": "repeat", "steps": N}  -> {"seconds": S}
A request that fails is answered {"error": "..."}.
"""

from __future__ import annotations

import json
import sys

from lenet.cli import exit_with

# the protocol's version: bench.ab refuses a server that speaks another
PROTOCOL = 1


class _Cell:
    def __init__(self, request: dict):
        import torch

        from bench.execution.cell import Settings, _prepare, steps_per_repeat, warmup_steps_for
        from bench.instruments.timing import timed_steps
        from bench.planning.grid import Config
        from lenet.data import real_tensors, synthetic_tensors

        self.config = Config(**request["config"])
        settings = Settings(**request["settings"])
        data = (synthetic_tensors() if request["data"] == "synthetic"
                else real_tensors(True, request.get("data_root")))
        self.device = torch.device(self.config.device)
        self.step, self.batches = _prepare(self.config, self.config.batch_size, data, settings)
        self._timed = timed_steps
        for _ in range(warmup_steps_for(self.config, settings)):
            self.step(*next(self.batches))
        self.steps = steps_per_repeat(lambda n: self.repeat(n), settings)

    def repeat(self, steps: int) -> float:
        return self._timed(self.step, self.batches, steps, self.device)[0]

    def close(self) -> None:
        self.batches.close()


def main() -> int:
    from bench.instruments.oom import one_line

    out = sys.stdout
    sys.stdout = sys.stderr  # a stray print must not break the protocol
    cell = None
    print(json.dumps({"protocol": PROTOCOL}), file=out, flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if request["op"] == "prepare":
                if cell is not None:
                    cell.close()
                cell = _Cell(request)
                answer = {"steps": cell.steps}
            else:
                answer = {"seconds": cell.repeat(request["steps"])}
        except Exception as exc:  # noqa: BLE001 - told to the parent, which says what to do
            answer = {"error": one_line(exc)}
        print(json.dumps(answer), file=out, flush=True)
    if cell is not None:
        cell.close()
    return 0


if __name__ == "__main__":
    exit_with(main)
