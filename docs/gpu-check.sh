#!/usr/bin/env bash
# Everything a lent GPU should show, in one call of at most 540 s, packed for the trip back.
#
#   mkdir -p data/FashionMNIST/raw && cp /usr/share/datasets/fashion-mnist/*.gz data/FashionMNIST/raw/
#   bash docs/gpu-check.sh "$OUT"        # on the GPU machine, from the repo root, 'data' carried
#
# Nothing is installed: it runs the checkout as it is with the machine's python3. The steps run
# most valuable first, each under its own limit and all of them within CHECK_BUDGET_S (540 s).
# OUT/gpu-check.tgz is packed again after every step, so a call cut short still brings back each
# step that finished; a step that fails does not stop the others. On a machine without a GPU the
# same script is a dry run: every step runs on the CPU and the GPU-only tests skip.
set -u
out=${1:?usage: bash docs/gpu-check.sh OUT_DIR}
budget_s=${CHECK_BUDGET_S:-540}
py=$(command -v python3 || command -v python)
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export TQDM_MININTERVAL=5  # progress bars in a log: a line every 5 s, not every cell
work=$(mktemp -d)
mkdir -p "$out"
started=$SECONDS

pack() {  # the archive as it stands, replaced whole so a cut-off never leaves half of one
    tar czf "$out/gpu-check.tgz.part" -C "$work" . && mv "$out/gpu-check.tgz.part" "$out/gpu-check.tgz"
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

export py
export -f environment  # so that timeout's bash can call it
step environment 20 bash -c environment
step doctor 30 "$py" -m bench.doctor
step gpu-tests 150 "$py" -m pytest -q -p no:cacheprovider -m "" tests/test_gpu.py \
    tests/test_nvml.py tests/test_energy.py tests/benchmarks
# every mode at a launch-bound and a large batch, in both fast dtypes, with energy per cell:
# 16 cells, 8 of them compiling (about 11 s each on a fresh machine)
step modes 200 "$py" -m bench.run --grid default --set batch_size=256,16384 \
    --set placement=device --set channels_last=false --set dtype=float32,bfloat16 \
    --set mode=eager,compile,compile-cudagraphs,graph --no-find-max-batch --data real \
    --out "$work/modes"
step cap-2gib 60 "$py" -m bench.run --grid smoke --set batch_size=32768,65536 \
    --set placement=device --memory-cap 2GiB --data real --no-find-max-batch --out "$work/cap-2gib"
# the default grid at three of its five batch sizes in eager mode (the modes step ran the
# others), to fit the budget
step default-grid 200 "$py" -m bench.run --grid default --set batch_size=256,4096,16384 \
    --set mode=eager --boundary-budget 60 --data real --out "$work/default"
# another model through the same grid: batch sizes placed by its memory model on this card
step any-model 90 "$py" -m bench.run --grid smoke --model torchvision:resnet50 \
    --no-find-max-batch --out "$work/resnet50"
step notebook-loop 60 "$py" -m lenet.train --epochs 2 --no-progress
step harness-overhead 60 "$py" tests/benchmarks/harness_overhead.py --rounds 5
step fast-tests 400 "$py" -m pytest -q -p no:cacheprovider
echo "packed: $out/gpu-check.tgz after $((SECONDS - started)) s"
