#!/usr/bin/env bash
# tools/gpu_check_2gpu.sh — on a 2-GPU machine: build pipec, run the multi-GPU tests (the
# LocalPipeline numerics on cuda:0 + cuda:1 and the multi-process numerics over NCCL), then
# the multi-process benchmarks next to torch (bench/pipeline_mp.py, bench/p2p.py), and the
# single-process LocalPipeline benchmark (bench/pipeline.py).
#
#     bash tools/gpu_check_2gpu.sh [all|tests|bench|local|wgrad]     (default: all)
#
# `wgrad` (not part of `all`) repeats the pipeline benchmarks of the large configs with
# weight-gradient batching on (pipec.pipelining.set_weight_grad_batching), after its tests.
# `tests` runs an NCCL smoke test first and every test group under its own time limit.
# `tests`, `bench` and `local` split the work over device calls (each under 10 minutes); the
# editable build is kept between calls on a warm machine. Logs and tables go to $OUT (or
# ./gpu_check_logs); the exit status is the first failing step's.
set -u
cd "$(dirname "$0")/.."
WHAT="${1:-all}"
. tools/gpu_check_lib.sh

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$LOGDIR/env.txt"
# rebuild unless this machine already built these very sources (a warm machine keeps the
# ignored build outputs and .gpu_build_hash between calls)
HASH=$(find csrc setup.py pyproject.toml -type f | sort | xargs cat | sha1sum | cut -d' ' -f1)
if [ "$(cat .gpu_build_hash 2>/dev/null)" != "$HASH" ] || ! "$PY" -c 'import pipec' 2>/dev/null; then
    step build build.log env PIPEC_CUDA=1 "$PY" -m pip install --no-build-isolation --no-deps -e . || { pack_logs; exit $status; }
    echo "$HASH" > .gpu_build_hash
fi
if [ "$WHAT" = all ] || [ "$WHAT" = tests ]; then
    # cheapest first, each step under its own time limit, so one systematic hang cannot use
    # up the call: NCCL between the two processes (tensors, objects, byte messages), then
    # LocalPipeline on both GPUs, then the pipeline numerics over NCCL (stop after 2
    # failures), then the fault tests (a killed rank, a silent rank)
    export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
    step smoke smoke.log timeout 120 "$PY" -m pipec.run --nproc-per-node 2 tools/nccl_smoke.py --quick
    step tests_local tests_local.log timeout 200 "$PY" -m pytest -q -m multigpu -rs \
        tests/test_schedules.py tests/test_cuda.py
    # the same with every peer copy NaN-poisoned and delayed: a missing wait shows as NaN
    step tests_local_poisoned tests_local_poisoned.log env PIPEC_TEST_PEER_COPY=1 timeout 200 \
        "$PY" -m pytest -q -m multigpu tests/test_schedules.py
    step tests_nccl tests_nccl.log timeout 360 "$PY" -m pytest -q -m "multigpu or nccl_ranks" \
        -rs --maxfail=2 tests/test_schedule_multiproc.py -k "not failing_rank"
    step tests_faults tests_faults.log timeout 240 "$PY" -m pytest -q -m "multigpu or nccl_ranks" -rs \
        tests/test_schedule_multiproc.py tests/test_distributed.py -k "failing_rank or silent_rank"
fi
if [ "$WHAT" = all ] || [ "$WHAT" = bench ]; then
    step p2p p2p.log "$PY" bench/p2p.py --out "$LOGDIR/p2p_2gpu.md"
    step pipeline pipeline.log "$PY" bench/pipeline_mp.py --steps 10 --out "$LOGDIR/pipeline_mp_2gpu.md"
fi
if [ "$WHAT" = all ] || [ "$WHAT" = local ]; then
    step local local.log "$PY" bench/pipeline.py --steps 8 --out "$LOGDIR/pipeline_local_2gpu.md"
fi
if [ "$WHAT" = wgrad ]; then
    # weight-gradient batching on (1024 rows) where microbatch GEMMs are small: the same
    # tables as `bench` and `local` to set against them (pipeline_mp's ranks inherit the
    # setting from the environment)
    step wgrad_tests wgrad_tests.log timeout 120 "$PY" -m pytest -q -m "cuda or multigpu" -rs \
        tests/test_wgrad_batch.py
    step wgrad_mp wgrad_mp.log env PIPEC_WGRAD_BATCH_ROWS=1024 timeout 300 "$PY" \
        bench/pipeline_mp.py --configs large_bf16,large_mb32 --steps 6 \
        --out "$LOGDIR/pipeline_mp_2gpu_wgrad.md"
    step wgrad_local wgrad_local.log timeout 240 "$PY" bench/pipeline.py --steps 6 \
        --configs large,large_bf16,large_mb32 --wgrad-batch-rows 1024 \
        --out "$LOGDIR/pipeline_local_2gpu_wgrad.md"
fi
echo "gpu_check_2gpu: exit $status" | tee -a "$LOGDIR/summary.txt"
pack_logs
exit $status
