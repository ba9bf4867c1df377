#!/usr/bin/env bash
# Everything a lent GPU should show, in one go, packed into one file for the trip back.
#
#   mkdir -p data/FashionMNIST/raw && cp /usr/share/datasets/fashion-mnist/*.gz data/FashionMNIST/raw/
#   bash docs/gpu-check.sh "$OUT"        # on the GPU machine, with 'data' carried
#
# Writes OUT/gpu-check.tgz: the default grid's run directory and report, the 2 GiB cap check,
# bench.doctor, the notebook's loop, the harness overhead and the GPU-only tests. Each step has
# its own time limit, and a step that fails does not stop the others.
set -u
out=${1:?usage: bash docs/gpu-check.sh OUT_DIR}
work=$(mktemp -d)
step() {  # step NAME SECONDS COMMAND...: run it, keep its output and exit status
    local name=$1 limit=$2
    shift 2
    echo "== $name"
    timeout "$limit" "$@" > "$work/$name.log" 2>&1
    echo "exit $?" >> "$work/$name.log"
    tail -n 3 "$work/$name.log"
}
nvidia-smi > "$work/nvidia-smi.txt" 2>&1
step doctor 60 python -m bench.doctor
step default-grid 420 python -m bench.run --grid default --data real --out "$work/default"
step cap-2gib 120 python -m bench.run --grid smoke --set batch_size=32768,65536 \
    --set placement=device --memory-cap 2GiB --data real --no-find-max-batch --out "$work/cap-2gib"
step notebook-loop 120 python -m lenet.train --epochs 2 --no-progress
step harness-overhead 120 python tests/benchmarks/harness_overhead.py
step gpu-tests 180 python -m pytest -q tests/test_gpu.py tests/test_nvml.py tests/benchmarks
mkdir -p "$out"
tar czf "$out/gpu-check.tgz" -C "$work" .
echo "packed: $out/gpu-check.tgz"
