#!/usr/bin/env bash
# One call on a GPU machine: build in place (no network), then the steps named as arguments.
#   bash scripts/device_check.sh build gpu gpu89 demo tune probe ncu bench-quick bench-seed bench-sweep bench models
# relink instead of build: link the kernels another machine compiled (carry build/aot, e.g. from the Triton the
# wheels are built with) against this machine's torch, without compiling them here (setup.py FUSEDOPS_PREBUILT_AOT).
# MODELS_ARGS: arguments for bench.models (e.g. --dtypes fp16 --layers 4).
# PROBE_ARGS / NCU_PROBE_ARGS: arguments for bench.probe (e.g. --groups m64_half --rounds 3).
# bench-seed + bench-sweep together are the full benchmark split in two (the seed problems with every
# contender and torch.compile for fp16/bf16; the sweep against the cuBLAS floor with a shorter budget).
# BENCH_LIMIT_S caps each bench step (SIGINT: the bench still prints and saves what it timed).
# Logs go to $OUT (or ./device-logs) so they come back even when a step fails.
set -u
OUT=${OUT:-$PWD/device-logs}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# The system compiler, whose libstdc++ torch loads, for every build here (the tests build wheels too): the GPU image's
# CXX (/opt/gcc) links a static copy of libstdc++, which crashes when it meets torch's, and setup.py refuses it.
export CXX=g++ CC=gcc
step() { echo "=== $1 ($(date +%T))"; }
status=0
NCU_METRICS=gpu__time_duration.sum,sm__cycles_elapsed.avg,launch__grid_size,launch__registers_per_thread,\
launch__occupancy_limit_shared_mem,launch__occupancy_limit_registers,sm__warps_active.avg.pct_of_peak_sustained_active,\
sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active
for s in "$@"; do
  case $s in
    build|relink)
      # relink: the kernels in build/aot were compiled elsewhere; only link them here (an empty value compiles). `info`
      # names the Triton that compiled the kernels.
      step "$s"
      nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv
      python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
      FUSEDOPS_PREBUILT_AOT=$([ "$s" = relink ] && echo build/aot) \
        python3 -m pip install --no-build-isolation --no-deps --no-index -e . > "$OUT/build.log" 2>&1 \
        || { tail -40 "$OUT/build.log"; exit 1; }
      python3 -m fusedops info | head -5 ;;
    gpu)
      step "GPU suite (native arch)"
      python3 -m pytest ${GPU_TESTS:-tests} -m gpu -q -rs -p no:cacheprovider 2>&1 | tee "$OUT/gpu_suite.log" | tail -25
      [ "${PIPESTATUS[0]}" = 0 ] || status=1 ;;
    gpu89)
      step "GPU suite with FUSEDOPS_FORCE_ARCH=89 (sm_89 kernels from PTX)"
      FUSEDOPS_FORCE_ARCH=89 python3 -m pytest tests/test_gpu.py tests/test_robustness.py -q -rs -p no:cacheprovider \
        -k "not sanitizer" 2>&1 \
        | tee "$OUT/gpu_suite_sm89.log" | tail -15
      [ "${PIPESTATUS[0]}" = 0 ] || status=1 ;;
    demo)
      step demo; python3 -m fusedops demo 2>&1 | tee "$OUT/demo.log" ;;
    tune)
      step tune; python3 -m bench.tune ${TUNE_ARGS:-} 2>&1 | tee "$OUT/tune.log" | grep -E "^\s+\S+\s+\S+\s+m<=\S+\s+\*|wrote"
      cp aot/tuning/sm_9*.json "$OUT/"
      for f in aot/tuning/evidence/sm_9*.json; do cp "$f" "$OUT/evidence_$(basename "$f")"; done ;;
    bench-quick)
      step bench-quick; python3 -m bench.bench --quick --out "$OUT" 2>&1 | tee "$OUT/bench_quick.log" | tail -60 ;;
    bench-seed)
      step bench-seed; timeout -s INT ${BENCH_LIMIT_S:-3000} python3 -m bench.bench --seed-problems-only \
        --compile seed-half --out "$OUT" --no-progress \
        2>&1 | tee "$OUT/bench_seed.log" | tail -60 ;;
    bench-sweep)
      step bench-sweep; timeout -s INT ${BENCH_LIMIT_S:-3000} python3 -m bench.bench --no-seed-problems --no-compile \
        --families cublas fusedops cublaslt --budget-ms 40 --settle-ms 30 --rounds 2 --out "$OUT" --no-progress 2>&1 \
        | tee "$OUT/bench_sweep.log" | tail -40 ;;
    probe)
      step probe; python3 -m bench.probe ${PROBE_ARGS:-} --out "$OUT" 2>&1 | tee "$OUT/probe.log" | tail -80 ;;
    ncu)
      # kernel time at locked (base) clocks, so two launch paths of one kernel compare without power-limit noise
      step ncu; ncu --kernel-name regex:fused_linear --csv --print-units base --metrics "$NCU_METRICS" \
        python3 -m bench.probe --calls 3 ${NCU_PROBE_ARGS:-} > "$OUT/ncu.csv" 2> "$OUT/ncu.err" || tail -5 "$OUT/ncu.err"
      python3 scripts/ncu_table.py "$OUT/ncu.csv" ;;
    models)
      step models; timeout -s INT ${BENCH_LIMIT_S:-3000} python3 -m bench.models ${MODELS_ARGS:-} 2>&1 \
        | tee "$OUT/models.log" | tail -30 ;;
    bench)
      step bench; python3 -m bench.bench --out "$OUT" 2>&1 | tee "$OUT/bench.log" | tail -90 ;;
    *) echo "unknown step $s"; exit 2 ;;
  esac
done
step done
exit $status
