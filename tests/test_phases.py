"""Where a run's time went, from its rows and boundary searches, figures computed by hand."""

from bench.records.phases import phase_lines, phases
from helpers import crafted_cpu_row


def _row(batch, **figures):
    return crafted_cpu_row(batch, **{"worker_start_s": None, "data_load_s": None,
                                     "sizing_s": 0.5, "setup_s": 1.0, "repeat_s": [0.2] * 5,
                                     "wall_s": 3.0, **figures})


def test_each_phase_adds_up_its_cells_and_searches():
    rows = [_row(64, worker_start_s=6.0, data_load_s=1.5), _row(256),
            _row(1024, setup_s=11.0, wall_s=14.0),  # a compiled cell: its setup is compiling
            _row(256, setup_s=2.0, wall_s=4.0, compile_ahead_s=9.0)]  # compiled ahead first
    boundaries = [{"search_s": 20.0}, {"search_s": 4.5}]
    assert phases(rows, boundaries) == {
        "starting workers (interpreter, torch, first step)": 4.5,
        "loading data": 1.5,
        "compiling ahead (processes side by side, before the cells)": 9.0,
        "building, warm-up, compiling": 15.0,
        "sizing the repeats": 2.0,
        "timed repeats": 4.0,
        # 3 + 3 + 14 + 4 s in the cells, less 15 + 2 + 4 accounted for above
        "rest of the cells (probes, memory tracking, OOM attempts)": 3.0,
        "boundary searches": 24.5,
    }


def test_figures_an_older_run_lacks_are_left_out_not_zero():
    older = _row(64, sizing_s=None, wall_s=None)
    older.pop("worker_start_s"), older.pop("data_load_s")
    got = phases([older], [{"search_s": None}])
    assert got == {"building, warm-up, compiling": 1.0, "timed repeats": 1.0}


def test_the_lines_give_seconds_and_shares_of_the_total_with_more_phases():
    rows = [_row(64, worker_start_s=6.0, data_load_s=1.5)]
    lines = phase_lines(phases(rows, []), {"planning": 2.0, "the report": 3.5}, wall_s=16.0)
    total = 4.5 + 1.5 + 1.0 + 0.5 + 1.0 + 0.5 + 2.0 + 3.5
    assert lines[0] == f"where the time went ({total:.1f} s in all; the command took 16.0 s):"
    assert f"  {'starting workers (interpreter, torch, first step)':<58}     4.5 s   31%" in lines
    assert lines[-1] == f"  {'the report':<58}     3.5 s   24%"


def test_the_commands_own_time_of_compiling_ahead_stands_in_for_the_rows_overlapping_sum():
    """Two cells compiled ahead side by side, 9 s and 8 s each: their rows sum to 17 s, but the
    command waited 11 s for them, their processes' starts included. It says 11, in its place."""
    rows = [_row(256, compile_ahead_s=9.0), _row(512, compile_ahead_s=8.0)]
    ahead = "compiling ahead (processes side by side, before the cells)"
    assert phases(rows, [])[ahead] == 17.0
    lines = phase_lines(phases(rows, []), {ahead: 11.0})
    names = [line[2:60].rstrip() for line in lines[1:]]
    assert names.index(ahead) == 0  # where the rows' phases put it, before the cells' own
    assert f"  {ahead:<58}    11.0 s" in lines[1]
    assert lines[0] == f"where the time went ({11.0 + 2 * (1.0 + 0.5 + 1.0 + 0.5):.1f} s in all):"
