"""Any model through the grid: torchvision's by name, a user's factory, the example of
docs/any-model.md as written, the memory model fitted to each, and every way a model can be
named wrong."""

import json
import math
import re
import time

import pytest

from bench.execution.session import build_row
from bench.planning.models import resolve
from bench.planning.predict import memory_model, probe_batches, step_peak_bytes
from helpers import CPU_SYNTHETIC, ROOT, one_line_error, rows_of, run_main, run_module

TESTS = ROOT / "tests"


@pytest.mark.e2e
def test_a_torchvision_model_trains_through_the_smoke_grid_and_its_report(tmp_path):
    out = tmp_path / "run"
    began = time.monotonic()
    result = run_module("bench.run", "--grid", "smoke", "--model", "torchvision:resnet18",
                        "--input-shape", "3x64x64", "--device", "cpu", "--out", str(out))
    took_s = time.monotonic() - began
    assert result.returncode == 0, result.stderr
    print(f"smoke grid of torchvision:resnet18 at 3x64x64: {took_s:.0f} s")
    assert "batch sizes placed by the memory model for torchvision:resnet18: 4, 8" \
        in result.stderr
    assert "torchvision:resnet18 trains on synthetic data of its input shape (3x64x64, 1000 " \
           "classes)" in result.stderr
    rows = rows_of(out)
    assert [r["key"] for r in rows][:2] == [
        "b4-float32-nchw-device-torchvision:resnet18-3x64x64",
        "b4-float32-nchw-host-w0-torchvision:resnet18-3x64x64"]
    for row in rows:
        assert row["status"] == "ok" and row["data_source"] == "synthetic"
        assert row["model"] == "torchvision:resnet18" and row["input_shape"] == "3x64x64"
        assert re.fullmatch(r"[0-9a-f]{12}", row["model_fingerprint"])
        # predicted and measured mean the same in a row: one step's tensors on the CPU
        assert row["predicted_peak_bytes"] == pytest.approx(row["tracked_peak_bytes"], rel=0.10)
    plan = json.loads((out / "plan.json").read_text())
    assert plan["model"]["parameters"] == 11_689_512  # torchvision's resnet18, 1000 classes
    page = (out / "report" / "index.html").read_text()
    assert "<h1>torchvision:resnet18 training bench on CPU</h1>" in page
    assert "torchvision:resnet18: 11,689,512 parameters, input 3x64x64, 1000 classes" in page
    assert "notebook" not in page.split("<h2>The answer</h2>")[1].split("</ul>")[0]


@pytest.mark.e2e
def test_a_users_factory_runs_the_same_way(tmp_path):
    out = tmp_path / "run"
    result = run_module("bench.run", "--grid", "smoke", "--model", "user_factories:tiny_mlp",
                        "--out", str(out), *CPU_SYNTHETIC, cwd=TESTS)
    assert result.returncode == 0, result.stderr
    assert "batch sizes placed by the memory model for user_factories:tiny_mlp: 128, 256 " \
           "(powers of two up to the grid's largest, 256)" in result.stderr
    rows = rows_of(out)
    assert [r["key"] for r in rows] == [
        f"b{b}-float32-nchw-{loader}-user_factories:tiny_mlp"
        for b in (128, 256) for loader in ("device", "host-w0")]
    assert all(r["status"] == "ok" and math.isfinite(r["loss_last"]) for r in rows)


def _readme_model_example():
    section = (ROOT / "docs" / "any-model.md").read_text()
    code = re.search(r"```python\n(.*?)```", section, re.S)[1]
    command = re.findall(r"```sh\n(.*?)```", section, re.S)[1].strip()
    return code, command


@pytest.mark.e2e
def test_the_documented_factory_example_runs_as_written(tmp_path):
    code, command = _readme_model_example()
    (tmp_path / re.match(r"# (\S+\.py)", code)[1]).write_text(code)
    args = command.split()
    assert args[:3] == ["python", "-m", "bench.run"]
    result = run_module(*args[2:], "--no-report", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = rows_of(tmp_path / "runs" / "my-model")
    assert rows and all(r["status"] == "ok" for r in rows)
    assert all(r["model"] == "my_model:small_cnn" for r in rows)


@pytest.mark.parametrize("model, shape", [
    ("torchvision:resnet18", "3x64x64"),
    # its many small layers make the fit take about 15 s on 2 cores: in the full suite
    pytest.param("torchvision:mobilenet_v3_small", "3x64x64", marks=pytest.mark.slow)])
def test_the_memory_model_predicts_a_step_within_10_percent(model, shape):
    spec = resolve(model, shape)
    predicted = memory_model("float32", False, "host", model=spec)
    for batch in (24, 96):
        assert batch not in probe_batches("float32", False, spec)  # not what it was fitted to
        tracked = step_peak_bytes(batch, "float32", False, spec)
        error = predicted.step_bytes(batch) / tracked - 1
        print(f"{model} {shape} b{batch}: predicted {predicted.step_bytes(batch):,} bytes, "
              f"tracked {tracked:,} ({error:+.1%})")
        assert abs(error) < 0.10


@pytest.mark.parametrize("args, message", [
    (["--model", "torchvision:resnet19"], "torchvision has no classification model 'resnet19'; "
                                          "such as: resnet18, resnet152, resnet101"),
    (["--model", "torchvision:ResNet18"], "torchvision has no classification model 'ResNet18'; "
                                          "such as: resnet18"),
    (["--model", "user_factories:exits_zero"], "--model user_factories:exits_zero: the factory "
                                               "called sys.exit(0); it must return, not exit"),
    (["--model", "exits_at_import:make"], "--model exits_at_import:make: importing "
                                          "exits_at_import called sys.exit(3); it must return"),
    (["--model", "user_factories:no_parameters"], "--model user_factories:no_parameters has no "
                                                  "parameters to train"),
    (["--model", "user_factories:integer_logits"], "--model user_factories:integer_logits "
                                                   "returns logits of torch.int64; a classifier's "
                                                   "logits are floating point"),
    (["--model", "user_factories:raises"], "--model user_factories:raises: the factory raised "
                                           "RuntimeError: the weights file is missing"),
    (["--model", "user_factories:returns_a_model_alone"],
     "the factory must return (model, input_shape, num_classes), such as (net, (3, 32, 32), "
     "10); it returned a Linear"),
    (["--model", "user_factories:wrong_class_count"],
     "--model user_factories:wrong_class_count must map a batch to logits of shape (batch, 7); "
     "on a batch of 2 it returned a tensor of shape (2, 3)"),
    (["--model", "user_factories:nothing"], "user_factories has no callable 'nothing'"),
    (["--model", "no_such_module:f"], "cannot import no_such_module (ModuleNotFoundError: No "
                                      "module named 'no_such_module')"),
    (["--model", "torchvision:vit_b_16", "--input-shape", "3x64x64"],
     "--model torchvision:vit_b_16 fails on input 3x64x64: AssertionError: Wrong image height!"),
    (["--input-shape", "3x64"], None),
    (["--input-shape", "3xsixty"], "--input-shape '3xsixty': write one example's shape as "
                                   "whole numbers joined by x"),
    (["--model", "torchvision:resnet18", "--data", "real"],
     "Fashion-MNIST is LeNet's data: torchvision:resnet18 trains on synthetic data"),
])
def test_a_model_named_wrong_is_one_line_and_exit_2(tmp_path, args, message):
    result = run_main("bench.run", "--grid", "smoke", *args, "--device", "cpu", "--out",
                 tmp_path / "run", cwd=TESTS)
    if message is None:  # LeNet's 28x28 images do not fit a 3x64 input: the model says why
        assert "--model lenet fails on input 3x64: RuntimeError: " in one_line_error(result)
    else:
        assert message in one_line_error(result)
    assert not (tmp_path / "run").exists()


def test_a_factory_that_hangs_is_stopped_with_a_line(tmp_path, monkeypatch):
    monkeypatch.setattr("bench.planning.models.USER_CODE_TIMEOUT_S", 1.0)
    began = time.monotonic()
    result = run_main("bench.run", "--grid", "smoke", "--model", "user_factories:hangs",
                      "--device", "cpu", "--out", tmp_path / "run", cwd=TESTS)
    assert time.monotonic() - began < 30
    assert ("--model user_factories:hangs: the factory took longer than 1 s and was stopped; "
            "make it return sooner") in one_line_error(result)


def test_a_factory_that_prints_leaves_the_json_plan_alone(tmp_path):
    result = run_main("bench.run", "--grid", "smoke", "--model", "user_factories:prints",
                      "--device", "cpu", "--dry-run", "--json", cwd=TESTS)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["cells"]
    assert "building the model..." in result.stderr


@pytest.mark.parametrize("shape", ["1X28X28", "1x28x28"])
def test_lenets_own_shape_given_explicitly_makes_a_plain_runs_keys(shape):
    plain = run_main("bench.run", "--grid", "smoke", "--device", "cpu", "--dry-run", "--json")
    given = run_main("bench.run", "--grid", "smoke", "--device", "cpu", "--dry-run", "--json",
                     "--input-shape", shape)
    keys = [[c["key"] for c in json.loads(r.stdout)["cells"]] for r in (plain, given)]
    assert keys[0] == keys[1] and keys[0]


@pytest.mark.e2e  # real runs, about 10 s a case: the full tier
def test_a_resume_after_the_model_changed_is_refused_in_one_line(tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv("LENET_BENCH_TEST_WIDTH", "8")
    model = ["--model", "user_factories:width_from_env", "--set", "batch_size=8,16"]
    first = run_main("bench.run", "--grid", "smoke", *model, "--set", "placement=device",
                     "--out", out, *CPU_SYNTHETIC, cwd=TESTS)
    assert first.returncode == 0, first.stderr
    planned = json.loads((out / "plan.json").read_text())["model"]["fingerprint"]
    assert {r["model_fingerprint"] for r in rows_of(out)} == {planned}  # the workers' own stamp
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text(lines[0] + "\n")  # stopped after its first cell

    monkeypatch.setenv("LENET_BENCH_TEST_WIDTH", "64")  # the user edits the model
    line = one_line_error(run_main("bench.run", "--resume", out, cwd=TESTS))
    assert f"user_factories:width_from_env has changed since {out} was planned (architecture " \
           f"{planned} then, " in line
    assert "restore the model to resume, or start a new run with another --out" in line
    assert len(rows_of(out)) == 1


def test_a_worker_that_builds_another_model_than_planned_measures_nothing(monkeypatch):
    """A Slurm task that starts after the model was edited: its cells fail, saying why."""
    from bench.execution.cell import Settings
    from bench.execution.runner import Runner
    from bench.execution.worker import WorkerSpec
    from bench.planning.grid import Config

    monkeypatch.chdir(TESTS)
    name = "user_factories:width_from_env"
    spec = WorkerSpec("cpu", "synthetic", None, Settings(repeats=5, min_repeat_s=0.0,
                                                         warmup_steps=1),
                      model=name, model_fingerprint="0123456789ab")
    runner = Runner(spec, None, timeout_s=120)
    row = build_row(*runner.cell(Config(8, device="cpu", model=name)))
    assert row.status == "error" and row.examples_per_s is None
    assert f"{name} has changed since this run was planned (architecture 0123456789ab then, " \
           in row.error
    assert row.model_fingerprint is None
    assert row.energy_note == "not measured: the cell did not reach its timed repeats (see its " \
                              "error)"


def test_a_model_whose_loss_is_nan_from_the_first_step_is_never_the_answer(tmp_path):
    out = tmp_path / "run"
    model = "user_factories:nan_from_the_start"
    result = run_main("bench.run", "--grid", "smoke", "--model", model, "--set", "batch_size=8",
                      "--set", "placement=device", "--out", out,
                      *CPU_SYNTHETIC, cwd=TESTS)
    key = "b8-float32-nchw-device-user_factories:nan_from_the_start"
    assert f"  {key}: left out, it did not train: the loss was nan from the first step" \
           in result.stdout
    assert "fastest cells:" not in result.stdout
    from reports.write import write_report

    answer = write_report(out).read_text().split("<h2>The answer</h2>")[1].split("</ul>")[0]
    assert "Fastest" not in answer
    assert (f"Left out of the answers, as they did not train: {key}: the loss was nan from "
            f"the first step.") in answer
