"""Run a grid of LeNet training cells and record speed and memory, surviving OOM.

    python -m bench.run --grid default
    python -m bench.run --grid smoke --set batch_size=64,512 --dry-run
    python -m bench.run --grid default --memory-cap 2GiB --out runs/capped
    python -m bench.run --resume runs/20261127-101500
    python -m bench.run --grid default --devices all
    python -m bench.run --grid default --executor slurm --partition gpu --gpus-per-task 1

Each cell runs in a spawned worker (one per device with --devices); the parent appends one
fsync'd row per cell to RUN_DIR/results.jsonl, so a killed run loses at most the cells in flight
and `--resume` carries on.
Exit status: 0 the run finished with figures; 1 it stopped before the end (a write failed, a
Slurm job ended before its cells ran, Slurm stopped answering) or no cell produced a figure; 2
bad input; 128 + the signal's number when a signal stopped it (130 for Ctrl-C, 143 for SIGTERM,
129 for SIGHUP), the rows kept and the resume command printed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from bench.basics.outcome import Outcome
from bench.basics.schema import NewerSchemaError
from bench.basics.units import format_bytes, parse_bytes
from bench.cli import add_grid_options
from bench.doctor import report
from bench.execution import slurm
from bench.execution.session import Session
from bench.planning import devices as placing
from bench.planning import plan as planning
from bench.planning.grid import Config, GridError
from bench.planning.models import ModelError
from bench.planning.plan_file import Plan, SlurmOptions
from bench.records import env as run_env
from bench.records import store
from bench.records.boundary import Boundary
from bench.records.phases import AHEAD, phase_lines, phases
from bench.records.row import not_learning
from bench.series import points as series_points
from lenet.cli import (
    OneLineParser,
    UsageError,
    exit_with,
    fail,
    non_negative_int,
    positive_float,
    positive_int,
    resolve_device,
)
from lenet.data import DataError

PROG = "python -m bench.run"
# the options that make a plan: --resume takes none of these but the Slurm queueing ones, as the
# run carries on with its own plan
PLAN_OPTIONS = ("grid", "set", "device", "devices", "data", "data_root", "memory_cap",
                "cell_timeout", "find_max_batch", "boundary_budget", "repeats", "model",
                "input_shape", "executor", "partition", "gpus_per_task", "time_limit", "tasks",
                "slurm")
# the Slurm options a resume may change: where and how long tasks queue, not what they measure
SLURM_RESUMABLE = ("partition", "time_limit", "tasks", "slurm")
POLL_S = 2.0  # how often the submitting process looks at Slurm and the rows
SLURM_PATIENCE_S = 600.0  # how long it waits for a controller that does not answer
SMALLEST_CAP_BYTES = 2**20  # LeNet's weights and one small step
LARGEST_CAP_BYTES = 2**50  # a PiB: past any card or host


class Stopped(BaseException):
    """SIGTERM or SIGHUP (what schedulers and `timeout` send): stop as Ctrl-C stops."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _stop(signum, frame):
    raise Stopped(signum)


def _parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    add_grid_options(p, grid=None, device=None, data=None,
                     data_choices=("auto", "real", "synthetic"))
    p.add_argument("--devices", metavar="all|0,2,3|cpu,cpu|Nxcpu",
                   help="one worker per device, pulling cells from one queue (default: --device "
                        "alone)")
    p.add_argument("--model", help="lenet (the default), torchvision:NAME (randomly "
                                   "initialised) or package.module:factory (your own)")
    p.add_argument("--input-shape", metavar="CxHxW",
                   help="one example's shape where not the model's own, e.g. 3x64x64")
    p.add_argument("--out", type=_directory, help="run directory (default runs/<timestamp>)")
    p.add_argument("--resume", type=_directory, metavar="RUN_DIR",
                   help="finish an interrupted run, with its own plan")
    p.add_argument("--memory-cap", type=_memory_cap, metavar="SIZE",
                   help="emulate a smaller card, e.g. 2GiB: real OOMs past it")
    p.add_argument("--find-max-batch", action="store_true", default=None,
                   help="search the OOM boundary per dtype and layout (on in default and full)")
    p.add_argument("--no-find-max-batch", dest="find_max_batch", action="store_false")
    p.add_argument("--boundary-budget", type=positive_float, metavar="SECONDS",
                   help="time for all boundary searches together (default: the grid's)")
    p.add_argument("--repeats", type=positive_int, help="timed repeats per cell (at least 5)")
    p.add_argument("--compile-ahead", type=non_negative_int, metavar="N",
                   help="compile the compiled cells' graphs in N processes side by side before "
                        "any cell is timed; 0: each in its own cell (default: one process per "
                        "two cores, none below four)")
    p.add_argument("--cell-timeout", type=positive_float, metavar="SECONDS",
                   help="stop a cell (and its worker) that runs longer than this (default 900)")
    slurm = p.add_argument_group("Slurm (--executor slurm; pip install 'lenet-bench[slurm]')")
    slurm.add_argument("--executor", choices=("local", "slurm"),
                       help="local (the default): this machine; slurm: a job array")
    slurm.add_argument("--partition", help="the partition to submit to (default: Slurm's)")
    slurm.add_argument("--gpus-per-task", type=non_negative_int, metavar="N",
                       help="GPUs each array task holds (default 1 with a CUDA device, else 0)")
    slurm.add_argument("--time-limit", type=positive_int, metavar="MINUTES",
                       help="each task's time limit (default 60)")
    slurm.add_argument("--tasks", type=positive_int, metavar="N",
                       help="array tasks that share the cells (default: one per cell)")
    slurm.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                       help="any other sbatch option, e.g. qos=high, account=ml")
    slurm.add_argument("--no-wait", action="store_true",
                       help="submit and return; pick the run up later with --resume RUN_DIR")
    p.add_argument("--dry-run", action="store_true", help="list the cells and stop")
    p.add_argument("--json", action="store_true", help="with --dry-run: the plan as JSON")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report")
    p.add_argument("--history", metavar="DB",
                   help="record the run in this history store as it finishes, and show each "
                        "cell's trend in the report: a SQLite file or postgresql://... (see "
                        "python -m bench.history)")
    return p


def _memory_cap(text: str) -> int:
    import argparse

    try:
        value = parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not SMALLEST_CAP_BYTES <= value <= LARGEST_CAP_BYTES:
        raise argparse.ArgumentTypeError(
            f"{text!r} is {value:,} bytes; a cap must lie between 1 MiB and 1 PiB")
    return value


def _directory(text: str) -> Path:
    import argparse

    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; name a directory")
    return Path(text)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop)
    try:
        return _run(args)
    except (UsageError, GridError, DataError, ModelError, store.RunDirError,
            NewerSchemaError) as exc:
        fail(PROG, str(exc))
    except (KeyboardInterrupt, Stopped) as exc:
        # outside the cells (planning, the summary, the report): every finished row is on disk
        signum = exc.signum if isinstance(exc, Stopped) else signal.SIGINT
        run_dir = args.resume or args.out
        more = (f"; carry on with: {PROG} --resume {run_dir}"
                if run_dir is not None and (run_dir / store.PLAN).is_file() else "")
        print(f"\nstopped by {signal.Signals(signum).name}{more}", file=sys.stderr)
        return 128 + signum


def _request(args) -> planning.Request:
    """The command line's new-run options as a typed request; what it leaves out takes the
    request's defaults."""
    given = {"grid": args.grid, "set": tuple(args.set), "device": args.device, "data": args.data,
             "data_root": args.data_root, "memory_cap_bytes": args.memory_cap,
             "cell_timeout_s": args.cell_timeout, "find_max_batch": args.find_max_batch,
             "boundary_budget_s": args.boundary_budget, "repeats": args.repeats,
             "model": args.model, "input_shape": args.input_shape,
             "slurm": args.executor == "slurm", "dry_run": args.dry_run}
    return planning.Request(**{k: v for k, v in given.items() if v is not None})


def _open_plan(args) -> tuple[Plan, Path, Plan | None]:
    """(plan, run directory, the plan as stored): a new plan and None, or the plan of the run to
    resume, with the Slurm options a resume may change, and the plan its run directory holds."""
    if args.resume is None:
        if args.out is not None and not args.dry_run:
            store.refuse_used(args.out)  # before any notice: a refusal is one line
        request = _request(args)
        slots = None
        if args.devices is not None:
            slots = placing.parse(args.devices, torch.cuda.device_count())
            if request.device not in ("auto", slots[0].device.partition(":")[0]):
                raise UsageError(f"--device {args.device} and --devices {args.devices} disagree; "
                                 f"--devices alone says where the cells run")
            request = replace(request, device=slots[0].device)
        plan = planning.new_plan(request)
        plan = replace(plan, devices=tuple(slots or placing.single(plan.device)),
                       executor=_executor_of(args, plan))
        return plan, args.out or store.default_run_dir(), None
    plan = stored = store.open_existing(args.resume)
    # where a Slurm run's tasks queue and for how long does not change what they measure: a
    # resume may change it (after Slurm refused a partition, say)
    movable = SLURM_RESUMABLE if plan.executor is not None else ()
    given = [f"--{n.replace('_', '-')}" for n in PLAN_OPTIONS
             if getattr(args, n) not in (None, []) and n not in movable]
    if args.out is not None:
        given.append("--out")
    if given:
        raise UsageError(f"--resume carries on {args.resume} with its own plan (grid "
                         f"'{plan.grid}' on {plan.device}); drop {', '.join(given)}, or "
                         f"start a new run")
    planning.same_model(plan, args.resume)
    if any(getattr(args, n) not in (None, []) for n in movable):
        plan = replace(plan, executor=_moved_executor(plan.executor, args))
    if plan.executor is None:
        resolve_device(plan.device)  # the same device must still be there
    return plan, args.resume, stored


def _executor_of(args, plan: Plan) -> SlurmOptions | None:
    """The plan's executor: None for this machine, else the Slurm job array's options."""
    slurm_only = [f"--{n.replace('_', '-')}" for n in ("partition", "gpus_per_task",
                                                          "time_limit", "tasks", "slurm")
                  if getattr(args, n) not in (None, [])] + (["--no-wait"] if args.no_wait else [])
    if args.executor != "slurm":
        if slurm_only:
            raise UsageError(f"{', '.join(slurm_only)} only apply with --executor slurm")
        return None
    if args.devices is not None:
        raise UsageError("--devices is for this machine's GPUs; under --executor slurm each "
                         "array task holds --gpus-per-task GPUs")
    slurm.require()
    options, gpus_given = slurm.options_of(args.partition, args.gpus_per_task, args.time_limit,
                                           args.tasks, slurm.parse_extra(args.slurm))
    if not gpus_given and plan.on_gpu:
        options = replace(options, gpus_per_task=1)
    if options.gpus_per_task == 0 and plan.on_gpu:
        raise UsageError("--gpus-per-task 0 with a CUDA device: each task needs a GPU")
    return options


def _moved_executor(old: SlurmOptions, args) -> SlurmOptions:
    """A Slurm run's options with the queueing ones a resume gave in place of the plan's."""
    extra = slurm.parse_extra(args.slurm)
    new, gpus_given = slurm.options_of(args.partition, None, args.time_limit, args.tasks, extra)
    if gpus_given:
        raise UsageError("--slurm gpus_per_task changes what each task measures; start a new "
                         "run for it")
    timed = args.time_limit is not None or "time" in extra
    return replace(old, partition=new.partition or old.partition, tasks=new.tasks or old.tasks,
                   time_limit_min=new.time_limit_min if timed else old.time_limit_min,
                   extra={**old.extra, **new.extra})


def _announce(plan: Plan, device: torch.device, resumed: bool) -> None:
    """Notices, on standard error: under --json, standard output is the JSON alone."""
    if device.type == "cpu" and not resumed:
        why = "no GPU" if not torch.cuda.is_available() else "--device cpu"
        print(f"{why}: grid '{plan.grid}' runs CPU-sized settings "
              f"({plan.grid_description})", file=sys.stderr)
    for notice in (plan.device_notice, plan.data_notice,
                   *planning.skipped_words(plan.skipped)):
        if notice:
            print(notice, file=sys.stderr)


def _preflight(slots: list[placing.Slot], cells: list[Config]) -> list[placing.Slot]:
    """The slots whose card has room for the smallest cell; a busy card is left out with the
    reason, and a run with no card left is refused."""
    gpus = [s for s in slots if s.gpu_index is not None]
    if not gpus:
        return slots
    need = planning.smallest_need_bytes(cells)
    verdicts = {s: report(torch.device("cuda", s.gpu_index), need) for s in gpus}
    kept = [s for s in slots if verdicts[s].fits]
    if len(slots) == 1 and not kept:
        raise UsageError(verdicts[slots[0]].verdict)
    for slot in slots:
        if not verdicts[slot].fits:
            print(f"leaving out {slot.label}: {verdicts[slot].verdict}", file=sys.stderr)
    if not kept:
        raise UsageError("every listed GPU is too busy for the smallest cell (see above); free "
                         "one, or list others with --devices")
    return kept


def _todo(run_dir: Path, cells: list[Config]) -> list[Config]:
    """The cells still to run (store.read_run refuses rows of another run)."""
    results = run_dir / store.RESULTS
    if store.cut_torn_tail(results):
        print(f"cut a torn last line from {results} (the cell in flight when it was killed)")
    store.cut_torn_tail(run_dir / store.BOUNDARIES)
    rows, warnings = store.read_run(run_dir)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    done = store.done_keys(rows)
    todo = [c for c in cells if c.key() not in done]
    if done:
        print(f"resuming {run_dir}: {len(done)} cells done, {len(todo)} to go")
    return todo


def _process_age_s() -> float | None:
    """Seconds since this process started, from Linux's /proc; None elsewhere."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime_s = float(Path("/proc/uptime").read_text().split()[0])
        return uptime_s - int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime
    except (OSError, ValueError, IndexError):
        return None


# the interpreter's start and the imports above, paid before main() runs: known where this
# module is the program (python -m bench.run), not where another imported it
_STARTED_S = _process_age_s() if __name__ == "__main__" else None


def _run(args) -> int:
    began = time.monotonic()
    if args.history is not None and not args.dry_run:
        database = _history_store()
        try:  # a store that cannot be used: one line, before any cell
            database.History(args.history).close()
        except database.HistoryError as exc:
            raise UsageError(str(exc)) from exc
    plan, run_dir, stored = _open_plan(args)
    resumed = stored is not None
    cells = list(plan.cells)
    device = torch.device(placing.parent_device(plan.slots()))
    _announce(plan, device, resumed)
    capacity, capacity_words = planning.capacity_bytes(device, plan.memory_cap_bytes)
    if args.dry_run:
        planning.forecast(cells, str(device), capacity, capacity_words,
                          plan.memory_cap_bytes is not None).print(args.json)
        return 0
    if plan.executor is not None:
        return _run_slurm(plan, cells, run_dir, stored, args)
    slots, notice = placing.usable(plan.slots())
    if notice:
        print(notice, file=sys.stderr)
    slots = _preflight(slots, cells)
    store.make_dir(run_dir)
    with store.locked(run_dir):
        if not resumed:
            store.create(run_dir, plan, run_env.collect(device))
        todo = _todo(run_dir, cells)
        with Session(plan, slots, capacity) as session:
            if len(slots) > 1:
                print(f"{len(slots)} workers, one queue: "
                      f"{', '.join(slot.label for slot in slots)}", file=sys.stderr)
            start = time.monotonic()
            spent: dict[str, float] = {}
            stopped = _measure(session, todo, run_dir, args.compile_ahead, spent)
        if stopped is not None:
            return stopped
        return _finish(run_dir, len(todo), time.monotonic() - start, args,
                       planning_s=start - began, spent=spent)


def _measure(session: Session, todo: list[Config], run_dir: Path,
             compile_ahead: int | None, spent: dict[str, float]) -> int | None:
    """Compile ahead, run the cells, then the boundary searches, this process writing every
    row, and into `spent` the seconds of what only it times. None when done, else the exit
    status of a run that was stopped, having said what is kept and how to carry on."""
    results = run_dir / store.RESULTS
    carry_on = f"carry on with: {PROG} --resume {run_dir}"
    try:
        began = time.monotonic()
        if _compile_ahead(session, todo, compile_ahead):
            # the wall clock, the processes' starts included: their rows' compile times overlap
            spent[AHEAD] = time.monotonic() - began
        with tqdm(total=len(todo), desc="cells", unit="cell", file=sys.stderr) as bar:
            def record(config: Config, row) -> None:
                store.append_row(results, row.as_dict())
                bar.set_postfix_str(config.key())
                bar.update()

            session.measure(todo, record)
        if session.plan.find_max_batch:
            _search_boundaries(session, run_dir)
    except KeyboardInterrupt:
        print(f"\ninterrupted: every finished cell is saved in {results}; {carry_on}",
              file=sys.stderr)
        return 128 + signal.SIGINT
    except Stopped as exc:
        print(f"\nstopped by {signal.Signals(exc.signum).name}: every finished cell is saved in "
              f"{results}; {carry_on}", file=sys.stderr)
        return 128 + exc.signum
    except store.StoreWriteError as exc:
        kept = len(store.read_run(run_dir)[0])
        print(f"{exc}; the {kept} rows written before it are safe; make room (or fix the file), "
              f"then {carry_on}", file=sys.stderr)
        return 1
    return None


def _compile_ahead(session: Session, todo: list[Config], requested: int | None) -> bool:
    """The compiled cells' graphs, compiled side by side before any cell is timed, or why each
    compiles in its own setup. Whether any compiled ahead."""
    cells, processes, why = session.ahead_processes(todo, requested)
    if not processes:
        if why:
            print(f"{len(cells)} compiled cells compile in their own setup: {why}",
                  file=sys.stderr)
        return False
    failed = []
    side_by_side = "1 process" if processes == 1 else f"{processes} processes side by side"
    if why:  # fewer than the cores or the option asked for: the memory holds no more
        print(f"compiling ahead in {side_by_side}: {why}", file=sys.stderr)
    with tqdm(total=len(cells), desc=f"compiling ahead ({side_by_side})", unit="cell",
              file=sys.stderr) as bar:
        def done(config: Config, compiled) -> None:
            if compiled.error:
                failed.append(f"{config.key()}: {compiled.error}")
            bar.update()

        session.compile_ahead(cells, processes, done)
    for line in failed:  # the cell compiles on its own, and its row says what happened
        print(f"compiling ahead failed for {line}", file=sys.stderr)
    return True


def _search_boundaries(session: Session, run_dir: Path) -> None:
    """One search per boundary and card model: identical cards do not search twice, and each
    model's searches spread over its cards."""
    jobs = session.boundary_jobs(store.done_boundaries(run_dir))
    if not jobs:
        return
    path = run_dir / store.BOUNDARIES
    with tqdm(total=len(jobs), desc="OOM boundary", unit="search", file=sys.stderr) as bar:
        def record(job: tuple, boundary: Boundary) -> None:
            store.append_row(path, boundary.as_dict())
            bar.update()

        session.search_boundaries(jobs, record)


def _run_slurm(plan: Plan, cells: list[Config], run_dir: Path, stored: Plan | None,
               args) -> int:
    """Submit what is missing as a job array (tasks still queued or running are picked up), then
    wait for the tasks, unless told not to."""
    store.make_dir(run_dir)
    with store.locked(run_dir):
        if stored is not None and plan.executor != stored.executor:
            store.write_plan(run_dir, plan)  # the next resume asks the same
        if stored is None:
            # this host's: each host that runs cells adds its own (bench.records.store.HOSTS)
            store.create(run_dir, plan, run_env.collect(torch.device("cpu")))
            (run_dir / store.RESULTS).touch()
        submissions = store.read_submissions(run_dir)
        live = slurm.live_tasks(submissions, slurm.task_states(_array_ids(submissions)))
        done = store.done_keys(store.read_run(run_dir)[0])
        held = {key for task in live for key in task["keys"]}
        missing = [c.key() for c in cells if c.key() not in done | held]
        searches = plan.find_max_batch and not any(t["boundaries"] for t in live) and \
            bool(unsearched(run_dir, cells))
        if live:
            print(f"picking up {len(live)} Slurm tasks still queued or running "
                  f"({len(held)} cells)", file=sys.stderr)
        if missing or searches:
            submission = slurm.submit(run_dir, missing, plan.executor, searches)
            submissions.append(submission)
            print(f"submitted Slurm job {submission['array_job_id']}: "
                  f"{len(submission['tasks'])} tasks for {len(missing)} cells"
                  f"{' and the boundary searches' if searches else ''}; logs in "
                  f"{run_dir / store.SLURM_LOGS}", file=sys.stderr)
        follow = (f"follow it with: {PROG} --resume {run_dir}; stop it with: "
                  f"{slurm.cancel_words(submissions)}")
        if args.no_wait:
            print(f"not waiting: {follow}")
            return 0
        start = time.monotonic()
        try:
            _wait_for_tasks(run_dir, plan, cells, submissions)
        except (KeyboardInterrupt, Stopped) as exc:
            signum = exc.signum if isinstance(exc, Stopped) else signal.SIGINT
            print(f"\nstopped waiting; the Slurm tasks carry on: {follow}", file=sys.stderr)
            return 128 + signum
        except slurm.SlurmUnreachable as exc:
            print(f"\n{exc}; the tasks may still run: {follow}", file=sys.stderr)
            return 1
        status = _finish(run_dir, len(missing) + len(held), time.monotonic() - start, args)
    lost = [r for r in store.read_run(run_dir)[0] if r["error_kind"] == Outcome.JOB_ENDED]
    if lost:
        print(f"{len(lost)} cells did not run because their Slurm job ended (the reasons are "
              f"above); run them again with: {PROG} --resume {run_dir}", file=sys.stderr)
        return 1
    return status


def unsearched(run_dir: Path, cells: list[Config]) -> list[Config]:
    """The boundaries no card has searched yet. Which card models a partition gives is Slurm's
    to say, so a boundary searched on any card counts as done for the submitting process; a task
    searches again only for a model its own cards lack."""
    searched = {key for key, _ in store.done_boundaries(run_dir)}
    return [c for c in planning.boundary_configs(cells) if c.boundary_key() not in searched]


def _array_ids(submissions: list[dict]) -> list[str]:
    return [s["array_job_id"] for s in submissions]


def _wait_for_tasks(run_dir: Path, plan: Plan, cells: list[Config],
                    submissions: list[dict]) -> None:
    """Show progress until no task can write another row; then give each cell whose task ended
    without it a `job_ended` row."""
    keys = {c.key() for c in cells}
    unanswered_since = None
    with tqdm(total=len(keys), desc="cells (Slurm)", unit="cell", file=sys.stderr) as bar:
        while True:
            try:
                states = slurm.task_states(_array_ids(submissions))
                unanswered_since = None
            except slurm.SlurmUnreachable as exc:
                # a controller restarting is not a job ending: wait for it, a while
                unanswered_since = unanswered_since or time.monotonic()
                if time.monotonic() - unanswered_since > SLURM_PATIENCE_S:
                    raise slurm.SlurmUnreachable(f"Slurm has not answered for "
                                                 f"{SLURM_PATIENCE_S:.0f} s ({exc})") from None
                bar.set_postfix_str(f"Slurm does not answer: {exc}")
                time.sleep(POLL_S)
                continue
            live = slurm.live_tasks(submissions, states)
            done = store.done_keys(store.read_run(run_dir)[0]) & keys
            bar.n = len(done)
            bar.set_postfix_str(f"{len(live)} tasks queued or running")
            bar.refresh()
            if not live:
                break
            time.sleep(POLL_S)
    for row in slurm.ended_rows(run_dir, plan, submissions, states, done):
        store.append_row(run_dir / store.RESULTS, row.as_dict())


def _finish(run_dir: Path, ran: int, elapsed_s: float, args,
            planning_s: float | None = None, spent: dict[str, float] | None = None) -> int:
    """The summary, the history, the report, where the time went, and the exit status: 1 where
    no cell produced a figure, 2 where the history store could not record the run. `spent`:
    phases this command timed itself, in place of its rows' sums."""
    results = run_dir / store.RESULTS
    rows, warnings = store.read_run(run_dir)
    boundary_rows, _ = store.read_run_boundaries(run_dir)
    print("\n".join(warnings + _summary(rows, boundary_rows)))
    print(f"{ran} cells in {elapsed_s:.0f} s; results: {results}")
    more = dict(spent or {})
    if planning_s is not None:
        if _STARTED_S is not None:
            more["starting the command (interpreter, imports)"] = _STARTED_S
        more["planning (the grid, the memory model, the checks)"] = planning_s
    recorded = args.history is None or _record(run_dir, args.history)
    if not args.no_report:
        began = time.monotonic()
        _write_report(run_dir, args.history)
        more["the report"] = time.monotonic() - began
    print("\n".join(phase_lines(phases(rows, boundary_rows), more, _process_age_s())))
    if not any(r["examples_per_s"] for r in rows):
        print("no cell produced a figure: every cell failed (the errors are above and in "
              f"{results})", file=sys.stderr)
        return 1
    return 0 if recorded else 2


def _record(run_dir: Path, db: str) -> bool:
    """Record the run in the history store; False, having said how to record it later, where
    the store cannot."""
    database = _history_store()
    try:
        recorded, new_points = series_points.read(run_dir)
        with database.History(db) as history:
            word = history.add(recorded, new_points)
    except (database.HistoryError, UsageError) as exc:
        print(f"the run is not in the history: {exc}; its results are safe in {run_dir}; "
              f"record it with: python -m bench.history add {run_dir} "
              f"--db {database.shown(db)}", file=sys.stderr)
        return False
    print(f"history: {word} ({len(new_points)} points) in {database.shown(db)}")
    return True


def _history_store():
    """bench.series.database, imported only where a run is recorded: SQLAlchemy and alembic
    load then, so a run without --history needs neither (a checkout run as it is on a host
    with torch and the report's libraries alone)."""
    try:
        from bench.series import database
    except ImportError as exc:
        raise UsageError(f"--history needs the history store's libraries ({exc.name} is not "
                         f"installed); install the project with: pip install -e .") from exc
    return database


def _per_model(row: dict) -> str:
    """A cell of several models: each one's speed, beside their total."""
    count = row["replicas"]
    if count == 1:
        return ""
    return f"  ({count} models, {row['examples_per_s'] / count:,.0f} examples/s each)"


def _summary(rows: list[dict], boundaries: list[dict]) -> list[str]:
    lines = []
    timed = [r for r in rows if r["examples_per_s"]]
    # why a cell that ran fast did not train, read once: such a cell is never among the fastest
    stalled = {r["key"]: why for r in timed if (why := not_learning(r["loss_first"],
                                                                   r["loss_last"]))}
    done = [r for r in timed if r["key"] not in stalled]
    done.sort(key=lambda r: r["examples_per_s"], reverse=True)
    if done:
        lines.append("fastest cells:")
        for r in done[:5]:
            peak = r["peak_allocated_bytes"] or r["tracked_peak_bytes"]
            lines.append(f"  {r['key']:<40} {r['examples_per_s']:>12,.0f} examples/s  "
                         f"step {r['step_ms_median']:.2f} ms  peak {format_bytes(peak)}"
                         f"{_per_model(r)}{'  (noisy)' if r['noisy'] else ''}"
                         f"{'  (busy: ' + '; '.join(r['busy_reasons']) + ')' if r['busy'] else ''}")
    failed = [r for r in rows if r["status"] != Outcome.OK]
    for key, why in stalled.items():
        lines.append(f"  {key}: left out, it did not train: {why}")
    for r in failed:
        lines.append(f"  {r['key']}: {r['status']}"
                     f"{' at batch ' + str(r['batch_size']) if r['batch_size'] else ''}"
                     f"{' - ' + r['error'][:160] if r['error'] else ''}")
    if boundaries:
        lines.append("OOM boundary (largest batch that trained, why it stopped):")
        for b in boundaries:
            lines.append(f"  {b['key']:<18} {b['max_ok_batch'] or 'none':>10}  {b['stop_reason']}"
                         f"  (predicted {b['predicted_max_batch'] or '?'})")
    return lines


def _write_report(run_dir: Path, history: str | None) -> None:
    trend = [] if history is None else ["--history", history]
    result = subprocess.run([sys.executable, "-m", "reports", str(run_dir), *trend])
    if result.returncode != 0:
        print(f"the report could not be written; the results are safe in {run_dir}; "
              f"retry with: python -m reports {run_dir}", file=sys.stderr)


if __name__ == "__main__":
    exit_with(main)
