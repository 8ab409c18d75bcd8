# tools/gpu_check_lib.sh — sourced by tools/gpu_check*.sh: the log folder and the step runner.
#   LOGDIR   $OUT when set (the device runner collects it), else ./gpu_check_logs
#   PY       $PYTHON or python3
#   status   the first failing step's exit status (0 while all succeed)
LOGDIR="${OUT:-$PWD/gpu_check_logs}"
mkdir -p "$LOGDIR"
PY="${PYTHON:-python3}"
status=0

step() {  # step NAME LOGFILE CMD...: run CMD into LOGFILE, show its tail, record the result
    local name="$1" log="$2"
    shift 2
    echo "== $name: $*" | tee -a "$LOGDIR/summary.txt"
    local t0=$SECONDS
    "$@" > "$LOGDIR/$log" 2>&1
    local rc=$?
    tail -n 25 "$LOGDIR/$log"
    echo "== $name: exit $rc after $((SECONDS - t0)) s (log: $LOGDIR/$log)" | tee -a "$LOGDIR/summary.txt"
    if [ $rc -ne 0 ] && [ $status -eq 0 ]; then status=$rc; fi
    return $rc
}

pack_logs() {  # the device runner returns at most 8 files: the step logs go into one archive
    ( cd "$LOGDIR" && ls *.log >/dev/null 2>&1 && tar czf logs.tgz *.log && rm -f *.log ) || true
    ls "$LOGDIR"
}
