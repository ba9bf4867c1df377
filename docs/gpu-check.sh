#!/usr/bin/env bash
# What a lent GPU should show, in two calls, the main job first, packed for the trip back.
#
#   mkdir -p data/FashionMNIST/raw && cp /usr/share/datasets/fashion-mnist/*.gz data/FashionMNIST/raw/
#   bash docs/gpu-check.sh "$OUT" main    # call 1, at most 480 s: the whole default grid as a
#                                         # user runs it (boundaries, report), then the cap check
#   bash docs/gpu-check.sh "$OUT" rest    # call 2, at most 300 s: the GPU tests, another model's
#                                         # smoke grid with its predictions, the notebook loop,
#                                         # the harness overhead
#
# Run from the repo root on the GPU machine, 'data' carried. Nothing is installed: it runs the
# checkout as it is with the machine's python3. Each step runs under its own limit and all of a
# call's within its budget (CHECK_BUDGET_S overrides it). OUT/gpu-check-PART.tgz is packed again
# after every step, so a call cut short still brings back each step that finished; a step that
# fails does not stop the others. Where the default grid does not fit its limit, bench.run is
# stopped by SIGTERM with every finished row kept, and the log says how many cells it reached. On
# a machine without a GPU the same script is a dry run: every step runs on the CPU and the
# GPU-only tests skip.
set -u
out=${1:?usage: bash docs/gpu-check.sh OUT_DIR main|rest}
part=${2:?usage: bash docs/gpu-check.sh OUT_DIR main|rest}
case $part in
    main) budget_s=${CHECK_BUDGET_S:-480} ;;
    rest) budget_s=${CHECK_BUDGET_S:-300} ;;
    *) echo "usage: bash docs/gpu-check.sh OUT_DIR main|rest" >&2; exit 2 ;;
esac
py=$(command -v python3 || command -v python)
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export TQDM_MININTERVAL=5  # progress bars in a log: a line every 5 s, not every cell
work=$(mktemp -d)
mkdir -p "$out"
started=$SECONDS

pack() {  # the archive as it stands, replaced whole so a cut-off never leaves half of one
    tar czf "$out/gpu-check-$part.tgz.part" -C "$work" . \
        && mv "$out/gpu-check-$part.tgz.part" "$out/gpu-check-$part.tgz"
}

step() {  # step NAME SECONDS COMMAND...: run it within its limit and what is left of the budget
    local name=$1 limit=$2 left
    shift 2
    left=$((budget_s - (SECONDS - started)))
    if ((left < limit)); then limit=$left; fi
    echo "== $name (limit ${limit} s, ${left} s of the budget left)"
    if ((limit < 5)); then
        echo "skipped: the ${budget_s} s budget is spent" | tee "$work/$name.log"
        return
    fi
    local begun=$SECONDS
    timeout -k 10 "$limit" "$@" > "$work/$name.log" 2>&1
    local status=$?
    echo "exit $status after $((SECONDS - begun)) s$([ $status = 124 ] && echo ' (timed out)')" \
        >> "$work/$name.log"
    tail -n 4 "$work/$name.log"
    pack
}

environment() {
    nvidia-smi
    "$py" - <<'PY'
import importlib.metadata as metadata, platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, p.total_memory, "bytes,", p.multi_processor_count, "SMs, uuid", p.uuid)
for name in ("torchvision", "pandas", "matplotlib", "nvidia-ml-py", "pytest", "pytest-benchmark",
             "tqdm"):
    try:
        print(name, metadata.version(name))
    except metadata.PackageNotFoundError:
        print(name, "not installed")
PY
}

cells_reached() {  # cells_reached RUN_DIR: how far a run got, for a step that was cut off
    local planned done
    planned=$("$py" -c "import json,sys; print(len(json.load(open(sys.argv[1]))['cells']))" \
        "$1/plan.json" 2>/dev/null || echo "?")
    done=$(cat "$1/results.jsonl" 2>/dev/null | wc -l)
    echo "the run reached $done of $planned cells" | tee -a "$work/$(basename "$1").log"
}

export py
export -f environment  # so that timeout's bash can call it
if [ "$part" = main ]; then
    step environment 20 bash -c environment
    step doctor 30 "$py" -m bench.doctor
    # the main job as a user runs it: every cell, the boundary searches and the report
    step default-grid 370 "$py" -m bench.run --grid default --data real --out "$work/default-grid"
    cells_reached "$work/default-grid"
    pack
    step cap-2gib 50 "$py" -m bench.run --grid smoke --set batch_size=32768,65536 \
        --set placement=device --memory-cap 2GiB --data real --no-find-max-batch \
        --out "$work/cap-2gib"
else
    step gpu-tests 130 "$py" -m pytest -q -p no:cacheprovider -m "" tests/test_gpu.py \
        tests/test_nvml.py tests/test_energy.py tests/benchmarks
    # another model through the same grid: batch sizes placed by its memory model on this card,
    # each row's prediction beside its allocator peak
    step any-model 70 "$py" -m bench.run --grid smoke --model torchvision:resnet50 \
        --no-find-max-batch --out "$work/resnet50"
    step notebook-loop 45 "$py" -m lenet.train --epochs 2 --no-progress
    step harness-overhead 45 "$py" tests/benchmarks/harness_overhead.py --rounds 5
fi
echo "packed: $out/gpu-check-$part.tgz after $((SECONDS - started)) s"
