#!/usr/bin/env bash
# tools/gpu_check.sh — build pipec with CUDA and run the GPU tests and the CUDA op benchmark.
#
# Run on the GPU machine from the repository root:
#     bash tools/gpu_check.sh [all|nccl|wgrad|wgradq|group|group_off|verify|final ...]
# (default: all; several modes run one after another with one build)
# all: (1) editable install with nvcc (PIPEC_CUDA=1, so a missing nvcc fails loudly),
# (2) pytest -m "cuda or multigpu" over tests/, (3) the LocalPipeline numerics again with
# PIPEC_TEST_PEER_COPY=1 (the cross-GPU hand-off between ranks on this one GPU),
# (4) bench/ops_cuda.py (pipec vs torch), (5) bench/pipeline.py with both ranks on the one
# GPU (each schedule's overhead).
# nccl: the multi-process NCCL path with two ranks sharing this GPU (tests/gpu_share.py:
# one NCCL host id per rank, NCCL's socket transport on loopback): the smoke test, the
# `nccl_ranks` tests (every schedule's numerics over NCCL, the ported cases, a failing, a
# killed and a silent rank), and bench/pipeline_mp.py on the small config and bench/p2p.py
# next to torch (the scripts and pipec's correctness column; the times mean nothing with a
# shared GPU).
# wgrad: weight-gradient batching's GPU tests and bench/pipeline.py with it off and on
# (wgradq: its GPU tests and large_bf16 1F1B only, off then on).
# group: NCCL's send/receive pairs (nccl.c) with two ranks sharing this GPU: 32 MiB messages
# through the crossing order and every schedule, the Tensor and call-binding CUDA tests, the
# whole nccl_ranks suite, and bench/p2p.py next to torch.
# group_off: the same large-message cases with grouping off (PIPEC_NCCL_GROUP=0; diagnosing,
# not counted: the crossing order is expected to deadlock and time out, 1F1B's lowered order
# not; bench/results/nccl_grouping_H200.md has the 2026-12-07 run).
# final: the CUDA suite, every schedule's NCCL numerics, large_bf16 with weight-gradient
# batching auto and off (1F1B, ZBVZeroBubble).
# The build is skipped when this machine already built these very sources (a warm machine
# keeps the build between calls).
# Logs go to $OUT when it is set (the device runner collects that folder), else to
# ./gpu_check_logs. Every step runs even when an earlier one fails; the exit status is the
# first failure's.
set -u
cd "$(dirname "$0")/.."

. tools/gpu_check_lib.sh

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || true
    nvcc --version 2>&1 | tail -n 2 || true
    "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1 || true
} > "$LOGDIR/env.txt"
cat "$LOGDIR/env.txt"

WHAT="${*:-all}"
wants() { case " $WHAT " in *" $1 "*) return 0 ;; esac; return 1; }
HASH=$(find csrc setup.py pyproject.toml -type f | sort | xargs cat | sha1sum | cut -d' ' -f1)
built=0
if [ "$(cat .gpu_build_hash 2>/dev/null)" = "$HASH" ] && "$PY" -c 'import pipec' 2>/dev/null; then
    built=1
    echo "build: this machine already built these sources" | tee -a "$LOGDIR/summary.txt"
elif step build build.log env PIPEC_CUDA=1 "$PY" -m pip install --no-build-isolation --no-deps -v -e .; then
    built=1
    echo "$HASH" > .gpu_build_hash
fi
if [ $built = 1 ]; then
    "$PY" -c 'import pipec; print("pipec.cuda.is_available():", pipec.cuda.is_available(), "devices:", pipec.cuda.device_count())' \
        2>&1 | tee -a "$LOGDIR/summary.txt"
fi
if [ $built = 1 ] && wants nccl; then
    export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
    step smoke smoke.log timeout 120 "$PY" -m pipec.run --nproc-per-node 2 tools/nccl_smoke.py --quick
    step nccl_tests nccl_tests.log timeout 360 "$PY" -m pytest -q -m nccl_ranks -rs --maxfail=3 \
        --durations=8 tests/test_schedule_multiproc.py tests/test_distributed.py
    step pipeline_mp pipeline_mp.log timeout 60 "$PY" bench/pipeline_mp.py --configs small \
        --schedules 1F1B,Interleaved1F1B,ZBVZeroBubble,DualPipeV --steps 3 \
        --out "$LOGDIR/pipeline_mp_shared_gpu.md"
    step p2p p2p.log timeout 60 "$PY" bench/p2p.py --max-mib 64 --out "$LOGDIR/p2p_shared_gpu.md"
fi
# large_bf16 1F1B with weight-gradient batching off, then on ($1: seconds each)
batching_off_on() {
    for rows in 0 1024; do
        step "pipeline_rows$rows" "pipeline_rows$rows.log" timeout "$1" "$PY" bench/pipeline.py \
            --devices cuda:0,cuda:0 --configs large_bf16 --schedules 1F1B --steps 3 \
            --wgrad-batch-rows $rows --out "$LOGDIR/pipeline_1gpu_q_rows$rows.md"
        grep "| 1F1B" "$LOGDIR/pipeline_1gpu_q_rows$rows.md"
    done
}
if [ $built = 1 ] && wants verify; then
    # the short form of `group wgradq` for a small device budget, most important first:
    # the NCCL send/receive pairs (DualPipeV and every schedule with 32 MiB messages, the
    # crossing order), the CUDA tests of the call binding, Tensor comparisons and
    # weight-gradient batching, the DualPipeV cases of the nccl_ranks suite, then
    # weight-gradient batching's speed (off vs on)
    export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
    step pairs_first pairs_first.log timeout 100 "$PY" -m pytest -q -m nccl_ranks \
        tests/test_schedule_multiproc.py -rs --durations=4 \
        -k "(test_large_messages_nccl and DualPipeV) or test_crossing_transfers"
    step cuda_tests cuda_tests.log timeout 100 "$PY" -m pytest -q -m cuda tests/test_tensor.py \
        tests/test_call_binding.py tests/test_wgrad_batch.py tests/test_split_policy.py \
        tests/test_stage_backward.py -rs
    step large_messages large_messages.log timeout 150 "$PY" -m pytest -q -m nccl_ranks \
        tests/test_schedule_multiproc.py -k "test_large_messages_nccl and not DualPipeV" \
        --durations=8 -rs
    step nccl_dualpipev nccl_dualpipev.log timeout 150 "$PY" -m pytest -q -m nccl_ranks -rs \
        --durations=5 tests/test_schedule_multiproc.py -k "DualPipeV and not large_messages"
    batching_off_on 90
fi
if [ $built = 1 ] && wants final; then
    # the whole CUDA suite with the default weight-gradient batching ("auto"), the NCCL
    # numerics of every schedule (ranks sharing this GPU), then large_bf16 with batching
    # auto and off for a schedule of each kind (1F1B: batched under auto; ZBV: not)
    export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
    step cuda_suite cuda_suite.log timeout 120 "$PY" -m pytest -q -m cuda tests -rs
    step nccl_numerics nccl_numerics.log timeout 120 "$PY" -m pytest -q -m nccl_ranks \
        tests/test_schedule_multiproc.py -k "test_schedule_numerics_nccl" -rs
    for rows in auto 0; do
        arg=""; [ $rows = 0 ] && arg="--wgrad-batch-rows 0"
        step "pipeline_$rows" "pipeline_$rows.log" timeout 90 "$PY" bench/pipeline.py \
            --devices cuda:0,cuda:0 --configs large_bf16 \
            --schedules 1F1B,ZBVZeroBubble --steps 3 $arg \
            --out "$LOGDIR/pipeline_1gpu_$rows.md"
        grep "^| " "$LOGDIR/pipeline_1gpu_$rows.md"
    done
fi
if [ $built = 1 ] && wants wgradq; then
    # a shorter wgrad: its GPU tests, then large_bf16 1F1B with batching off and on
    export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
    step wgrad_tests wgrad_tests.log timeout 200 env PIPEC_WGRAD_BATCH_ROWS=1024 "$PY" -m pytest \
        -q -m "cuda or nccl_ranks" tests/test_wgrad_batch.py tests/test_schedule_multiproc.py \
        -k "wgrad" -rs
    batching_off_on 100
fi
if [ $built = 1 ] && wants wgrad; then
    # weight-gradient batching: its numerics on the GPU, then the pipelines with it off and on
    export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
    step wgrad_tests wgrad_tests.log timeout 240 env PIPEC_WGRAD_BATCH_ROWS=1024 "$PY" -m pytest \
        -q -m "cuda or nccl_ranks" tests/test_wgrad_batch.py tests/test_schedules.py \
        tests/test_schedule_multiproc.py -k "wgrad or (test_schedules and (1F1B or ZBV))" -rs
    for rows in 0 1024; do
        step "pipeline_rows$rows" "pipeline_rows$rows.log" timeout 220 "$PY" bench/pipeline.py \
            --devices cuda:0,cuda:0 --configs large_bf16,large_mb32 --schedules 1F1B,ZBVZeroBubble \
            --steps 3 \
            --wgrad-batch-rows $rows --out "$LOGDIR/pipeline_1gpu_rows$rows.md"
    done
fi
if [ $built = 1 ] && wants group; then
    export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
    # most important first (a short device budget may cut the tail)
    step large_messages large_messages.log timeout 300 "$PY" -m pytest -q -m nccl_ranks \
        tests/test_schedule_multiproc.py -k "test_large_messages_nccl or test_crossing_transfers" \
        --durations=8 -rs
    # Tensor comparisons' CUDA kernels; model-input gradients on CUDA (test_call_binding)
    step tensor_cuda tensor_cuda.log timeout 120 "$PY" -m pytest -q -m cuda tests/test_tensor.py \
        tests/test_call_binding.py -rs
    step nccl_tests nccl_tests.log timeout 360 "$PY" -m pytest -q -m nccl_ranks -rs --maxfail=3 \
        --durations=8 tests/test_schedule_multiproc.py tests/test_distributed.py \
        -k "not test_large_messages_nccl and not test_crossing_transfers"
    step p2p p2p.log timeout 90 "$PY" bench/p2p.py --max-mib 64 --out "$LOGDIR/p2p_shared_gpu.md"
fi
if [ $built = 1 ] && wants group_off; then
    # diagnosing, not counted; NCCL_MAX_P2P_NCHANNELS=1 keeps NCCL's buffering per peer
    # (chunk x 8 steps x channels) far below the 32 MiB messages on any transport
    for t in "test_crossing_transfers[nccl-8192]" "test_large_messages_nccl[1F1B]"; do
        echo "== group_off: $t with PIPEC_NCCL_GROUP=0 (crossing: expected to fail; 1F1B: to pass)" \
            | tee -a "$LOGDIR/summary.txt"
        PIPEC_NCCL_GROUP=0 NCCL_MAX_P2P_NCHANNELS=1 timeout 150 "$PY" -m pytest -q -rA -m nccl_ranks \
            "tests/test_schedule_multiproc.py::$t" >> "$LOGDIR/group_off.log" 2>&1
        echo "== group_off: exit $?" | tee -a "$LOGDIR/summary.txt"
        grep -E "^(PASSED|FAILED)|did not complete|timed out" "$LOGDIR/group_off.log" | tail -n 3
    done
fi
if [ $built = 1 ] && wants all; then
    step tests tests.log "$PY" -m pytest -q -m "cuda or multigpu" tests -rs
    # the LocalPipeline cross-GPU hand-off (peer copies, events, copy streams) with both
    # ranks on this GPU: its synchronisation under the same numerics tests
    step peer_copy peer_copy.log env PIPEC_TEST_PEER_COPY=1 "$PY" -m pytest -q -m cuda \
        tests/test_schedules.py tests/test_custom_schedules.py tests/test_viz.py -rs
    step bench bench.log "$PY" bench/ops_cuda.py --out "$LOGDIR/bench_ops_cuda.txt"
    # every schedule's overhead with both ranks on this one GPU (step time vs GPU busy time)
    step schedules schedules.log "$PY" bench/pipeline.py --devices cuda:0,cuda:0 \
        --configs small,large_mb32 --steps 5 --out "$LOGDIR/pipeline_1gpu.md"
fi

echo "gpu_check: exit $status" | tee -a "$LOGDIR/summary.txt"
pack_logs
exit $status
