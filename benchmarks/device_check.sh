#!/usr/bin/env bash
# The device check: one unattended script for a machine with one GPU and 16 CPU cores (docs/gpus.md), at most about
# 8 minutes. Every step has its own time limit, so the script always ends; a step that fails or runs out says so
# and the next one runs. Everything lands in benchmarks/results/<hardware>-<date>/device_check/ (and, where the
# device tool's $OUT is set, is copied there too).
#
#   bash benchmarks/device_check.sh            # python: $PYTHON, else .venv/bin/python, else python3
#
# Fashion-MNIST is read from ./data/fashion-mnist, $PIPELOCAL_DATA or /usr/share/datasets when present (carry
# ./data to a machine without it); otherwise the default job runs on synthetic data of its shape, and says so.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
HW=$($PY -c "import sys; sys.path.insert(0, 'benchmarks'); from common import hardware; print(hardware())")
DIR="benchmarks/results/$HW-$(date +%F)/device_check"
mkdir -p "$DIR"
GPU=$($PY -c "import torch; print(int(torch.cuda.is_available()))")
FMNIST=$($PY -c "import sys; sys.path.insert(0, 'benchmarks'); from gpu_timing import fashion_mnist_present as f; print(int(f()))")
step() {  # step NAME SECONDS COMMAND...: run it under a time limit, its output to $DIR/NAME.txt and the console
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s): $*" | tee "$DIR/$name.txt"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee -a "$DIR/$name.txt"
  local code=${PIPESTATUS[0]}
  echo "== $name: exit $code after $((SECONDS - start))s$([ "$code" = 124 ] && echo ' (time limit)')" | tee -a "$DIR/$name.txt"
}

step hardware 30 bash -c "date -u; nvidia-smi || echo 'nvidia-smi: none'; lscpu | head -20; nproc; $PY -c \"import torch; \
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpus', torch.cuda.device_count(), \
[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])\""
if [ "$GPU" = 1 ]; then
  step gpu_tier 150 "$PY" -m pytest -m gpu tests/gpu -q -rs
  data=()
  [ "$FMNIST" = 1 ] || data=(--data.name=synthetic "--data.synthetic_shape=[1,28,28]" --data.synthetic_train=60000)
  step default_job 100 "$PY" -m torch.distributed.run --standalone --nproc_per_node=4 -m pipelocal.run \
    --train.device=cuda --metrics.console=plain "--metrics.out_dir=$DIR/runs" --metrics.run_name=default "${data[@]}"
  step gpu_timing 90 "$PY" benchmarks/gpu_timing.py --steps 40 --epochs 3 --out "$DIR/gpu_timing"
else
  echo "no CUDA device: the GPU tier, the default job on the GPU and the GPU timings are skipped" | tee "$DIR/gpu_tier.txt"
fi
# The CPU table: e2e with every core against DDP, 1F1B and the local pipeline at P = 2, 4, 8 (cores / P threads each).
cores=$(nproc)
cpu_data=()
[ "$FMNIST" = 1 ] || cpu_data=(data.name=synthetic "data.synthetic_shape=[1,28,28]" data.synthetic_train=1920)
for p in 2 4 8; do
  [ "$p" -le "$cores" ] || continue
  step "cpu_p$p" 35 "$PY" benchmarks/throughput_vs_e2e.py --stages "$p" --modules "$p" --cores "$cores" --steps 15 \
    --epochs 2 --repeats 1 --modes e2e ddp 1f1b pipeline --set train.device=cpu "${cpu_data[@]}" --tag "cpu-p$p" \
    --out "$DIR/cpu_p$p"
done
if [ -n "${OUT:-}" ]; then  # the device tool brings back at most 8 files, two folders down
  tar czf "$OUT/device_check.tgz" --exclude='*/runs/*' -C "$(dirname "$DIR")" device_check
  cp "$DIR"/*.txt "$OUT"/ 2>/dev/null || true
fi
echo "device check written to $DIR"
