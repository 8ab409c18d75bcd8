/* nccl.c — the NCCL backend of the communicator interface (comm.h), for one GPU per rank.
 *
 * Invariants:
 *   - all NCCL work runs on the device context's communication stream 0; before a send the
 *     comm stream waits for the caller's current stream, after a receive the current stream
 *     waits for the comm stream, so compute and transfers are ordered by the GPU, not by
 *     host-side synchronisation;
 *   - a sent or received buffer is recorded on the comm stream, so the caching allocator
 *     does not reuse it before the transfer finished;
 *   - NCCL matches point-to-point operations per peer in posting order; tags are checked by
 *     the callers' schedule, not by NCCL;
 *   - a send is held back (`pend`) until the next operation: when that is a receive from
 *     the same peer, the two are issued as one ncclGroupStart/End group, so they progress
 *     together; anything else issues the send by itself first. NCCL runs a communicator's
 *     kernels one after another and a send larger than its buffers waits for its receive,
 *     so two ranks that each send and then receive from the other would otherwise each wait
 *     for a receive queued behind their own send (a custom order can do that; the built-in
 *     lowered orders do not). Only such a pair is grouped: NCCL runs a group's operations
 *     with one peer in rounds (k-th send with k-th receive), so a wider group can make an
 *     operation wait for one posted after it, and DualPipeV's lowered order then deadlocks
 *     (seen on a GPU; tests/test_nccl_ordering.py models it). The pair only drops the
 *     receive's wait for the send, so it cannot add a deadlock. The runtime flushes before
 *     each compute action and user callback; every other operation flushes first. A held
 *     send keeps its tensor referenced until issued;
 *   - creation waits in the store for every rank first, so a missing rank is a timeout that
 *     names it, not a hang inside ncclCommInitRank; point-to-point connections to every peer
 *     are made then too (a grouped exchange), so the first pipeline step is not slow;
 *   - a dead or silent peer becomes an error, never a hang. Every NCCL operation is
 *     bracketed by two events on the comm stream, kept in a ring: `start` completes when the
 *     operation may begin (the compute it waits for and earlier transfers are done), `end`
 *     when it finished. A watchdog thread looks every 100 ms at the oldest unfinished
 *     operation; once it has been able to run for `timeout` without finishing, or NCCL
 *     reports an asynchronous error, the watchdog aborts the communicator (ncclCommAbort),
 *     which ends NCCL's kernels and so unblocks every stream and host call waiting on them;
 *     later operations fail with the reason. So the deadline measures a stall, not a step:
 *     this rank's long compute ahead of a transfer does not count against it (a peer that
 *     takes longer than `timeout` to reach the matching operation does). This covers the
 *     waits that are not ours too (a loss function reading a value, a device-to-host copy,
 *     a full launch queue). nc_sync (our own host waits) polls the stream, checks
 *     ncclCommGetAsyncError and returns when the watchdog aborted; when no watchdog runs,
 *     or an operation could not be watched (`wd_blind`), it applies the timeout itself;
 *   - NCCL communicators are not thread-safe: every NCCL call sequence holds `io_mu` (from
 *     wd_begin to wd_end), so the ring has one producer at a time and one consumer (the
 *     watchdog);
 *   - ncclCommAbort frees the communicator: the abort and every other-thread query of
 *     c->comm (ncclCommGetAsyncError) hold `abort_mu`, nothing calls NCCL once `aborted`
 *     is set, and the abort waits (2 s at most) for a call sequence already begun to end.
 * Compiled only when nccl.h is found (PC_WITH_NCCL, with PC_WITH_CUDA).
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime, nanosleep */
#if defined(PC_WITH_NCCL) && defined(PC_WITH_CUDA)

#include "comm.h"

#include <cuda_runtime_api.h>
#include <nccl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../kernels/cuda/cuda_api.h"

#define WD_RING 1024 /* operations in flight the watchdog can follow; more wait for a slot */

/* Split receive: the transfer is enqueued on the comm stream when it is posted (after a
 * held send, or in one group with it); an event recorded after it lets the wait order the
 * caller's current stream behind it without blocking the host. Two owners while in `pend`
 * (the caller and `pend`): freed when both let go. */
typedef struct NcclRecvReq {
    atomic_int refs;
    atomic_bool issued; /* it was issued and `event` recorded after it */
    void *event;
    PcTensor *t; /* owned reference: the buffer lives until the request is freed */
} NcclRecvReq;

/* A held send (req NULL) or receive. */
typedef struct NcPending {
    int peer;
    ncclDataType_t dt;
    PcTensor *t;        /* owned reference */
    NcclRecvReq *req;   /* receives: one reference */
} NcPending;

typedef struct NcclComm {
    PcComm base;
    ncclComm_t comm;
    void *stream;     /* the context's comm stream 0 (borrowed) */
    atomic_int aborted; /* set once, under abort_mu, by whoever aborts first; c->comm is
                           gone from then on */
    char why[256];      /* why it was aborted (written under abort_mu before `aborted`) */
    pthread_mutex_t abort_mu; /* the abort vs. ncclCommGetAsyncError from other threads */
    pthread_mutex_t io_mu;    /* one NCCL call sequence at a time (wd_begin .. wd_end) */
    /* watchdog (see the header) */
    pthread_t wd;
    bool wd_started, wd_stop;          /* wd_stop under wd_mu */
    pthread_mutex_t wd_mu;
    pthread_cond_t wd_cv;
    struct {
        void *start, *end;             /* events on the comm stream around one operation */
    } wd_ring[WD_RING];
    atomic_ullong wd_head;             /* oldest unfinished operation (watchdog advances) */
    atomic_ullong wd_tail;             /* next free slot (issuer advances, under io_mu) */
    atomic_bool wd_blind;              /* an operation went unwatched: nc_sync times itself */
    /* a held send, then at most the operation that issues it (under io_mu) */
    NcPending pend[2];
    int n_pend;
    bool no_group; /* PIPEC_NCCL_GROUP=0: nothing held or grouped (diagnosing only) */
} NcclComm;




#define NC(c) ((NcclComm *)(c))

static PcStatus nccl_fail(ncclResult_t r, const char *what, const char *file, int line) {
    return pc_set_error(PC_ERR_NCCL, "%s:%d: %s failed: %s", file, line, what,
                        ncclGetErrorString(r));
}

#define PC_NCCL_TRY(call)                                                   \
    do {                                                                    \
        ncclResult_t pc_nr_ = (call);                                       \
        if (pc_nr_ != ncclSuccess) return nccl_fail(pc_nr_, #call, __FILE__, __LINE__); \
    } while (0)

#define PC_CUDART_TRY(call)                                                 \
    do {                                                                    \
        cudaError_t pc_ce_ = (call);                                        \
        if (pc_ce_ != cudaSuccess)                                          \
            return pc_set_error(PC_ERR_CUDA, "%s:%d: %s failed: %s", __FILE__, __LINE__, #call, \
                                cudaGetErrorString(pc_ce_));                \
    } while (0)

static PcStatus nccl_dtype(PcDType dt, ncclDataType_t *out) {
    switch (dt) {
    case PC_FLOAT32: *out = ncclFloat32; return PC_OK;
    case PC_FLOAT64: *out = ncclFloat64; return PC_OK;
    case PC_FLOAT16: *out = ncclFloat16; return PC_OK;
    case PC_BFLOAT16: *out = ncclBfloat16; return PC_OK;
    case PC_INT64: *out = ncclInt64; return PC_OK;
    case PC_BOOL: *out = ncclUint8; return PC_OK;
    default: break;
    }
    return pc_set_error(PC_ERR_TYPE, "nccl: unsupported dtype %s", pc_dtype_name(dt));
}

static double mono_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static PcStatus aborted_error(NcclComm *c, const char *op) {
    return pc_set_error(PC_ERR_COMM, "nccl %s: the communicator was aborted%s%s", op,
                        c->why[0] ? ": " : "", c->why);
}

/* Whether NCCL reported an asynchronous error (*res); false once aborted (the communicator
 * is gone then). Any thread. */
static bool nc_async_failed(NcclComm *c, ncclResult_t *res) {
    bool failed = false;
    *res = ncclSuccess;
    if (atomic_load(&c->aborted)) return false; /* never wait behind an abort in progress */
    pthread_mutex_lock(&c->abort_mu);
    if (c->comm && !atomic_load(&c->aborted))
        failed = ncclCommGetAsyncError(c->comm, res) == ncclSuccess && *res != ncclSuccess &&
                 *res != ncclInProgress;
    pthread_mutex_unlock(&c->abort_mu);
    return failed;
}

/* Aborts the communicator once (any thread), keeping `why` (may be NULL) for later errors.
 * NCCL's kernels end, so every stream and host call waiting on them is released. */
static void nc_abort_why(NcclComm *c, const char *why) {
    /* a second caller returns at once instead of blocking while the first one's
     * ncclCommAbort runs (it can take long: NCCL waits for its proxy threads) */
    if (atomic_load(&c->aborted)) return;
    pthread_mutex_lock(&c->abort_mu);
    if (c->comm && !atomic_load(&c->aborted)) {
        if (why) snprintf(c->why, sizeof c->why, "%s", why);
        atomic_store(&c->aborted, 1); /* wd_begin refuses new NCCL calls from here on */
        /* A call another thread has begun (wd_begin .. wd_end) finishes first, so the
         * communicator is not freed under it; that takes microseconds, unless the call is
         * stuck inside NCCL, which only the abort can release: wait 2 s at most. Never
         * called with io_mu held by this thread. */
        struct timespec dl;
        clock_gettime(CLOCK_REALTIME, &dl);
        dl.tv_sec += 2;
        bool quiet = pthread_mutex_timedlock(&c->io_mu, &dl) == 0;
        ncclCommAbort(c->comm);
        if (quiet) pthread_mutex_unlock(&c->io_mu);
    }
    pthread_mutex_unlock(&c->abort_mu);
}

static void nc_abort(PcComm *cm) { nc_abort_why(NC(cm), NULL); }

/* Wait until `stream`'s work is done. Polls with a short back-off; an NCCL asynchronous
 * error aborts the communicator; the watchdog's abort ends the wait; without a watchdog
 * that sees every operation, the communicator's timeout (from now) aborts it. */
static PcStatus nc_sync(NcclComm *c, void *stream, const char *what) {
    double deadline = mono_now() + c->base.timeout_s;
    long sleep_ns = 2000;
    for (;;) {
        if (atomic_load(&c->aborted)) return aborted_error(c, what);
        cudaError_t ce = cudaStreamQuery((cudaStream_t)stream);
        if (ce == cudaSuccess)
            return atomic_load(&c->aborted) ? aborted_error(c, what) : PC_OK;
        if (ce != cudaErrorNotReady)
            return pc_set_error(PC_ERR_CUDA, "nccl %s: %s", what, cudaGetErrorString(ce));
        ncclResult_t async;
        if (nc_async_failed(c, &async)) {
            nc_abort_why(c, "NCCL reported an asynchronous error");
            return pc_set_error(PC_ERR_NCCL, "nccl %s failed: %s (the communicator was aborted)",
                                what, ncclGetErrorString(async));
        }
        bool self_timed = !c->wd_started || atomic_load(&c->wd_blind);
        if (self_timed && mono_now() > deadline) {
            char why[160];
            snprintf(why, sizeof why, "%s did not complete within %.0f s", what,
                     c->base.timeout_s);
            nc_abort_why(c, why);
            return pc_set_error(PC_ERR_TIMEOUT,
                                "nccl %s did not complete within %.0f s: a peer rank died or "
                                "stopped answering (rank %d aborted its communicator)",
                                what, c->base.timeout_s, c->base.rank);
        }
        struct timespec ts = {0, sleep_ns};
        nanosleep(&ts, NULL);
        if (sleep_ns < 1000000) sleep_ns *= 2;
    }
}

static PcStatus check_tensor(NcclComm *c, const PcTensor *t, const char *op) {
    if (atomic_load(&c->aborted)) return aborted_error(c, op);
    if (t->device.type != PC_CUDA || t->device.index != c->base.device)
        return pc_set_error(PC_ERR_DEVICE, "nccl %s: tensor is not on cuda:%d", op, c->base.device);
    if (!pc_tensor_is_contiguous(t))
        return pc_set_error(PC_ERR_INVALID, "nccl %s: tensor must be contiguous", op);
    return PC_OK;
}

/* ---- point to point ---- */

/* Start of one NCCL call sequence, after the comm stream was ordered behind the work it
 * needs: takes io_mu, fails (releasing it) when the communicator was aborted, and takes a
 * ring slot with its start event recorded (*slot = -1: not watched). The caller then calls
 * wd_end whatever happens. A full ring waits for the watchdog to retire a slot, at most
 * `timeout` (then the operation goes unwatched and nc_sync times itself). */
static PcStatus wd_begin(NcclComm *c, const char *op, long long *slot) {
    *slot = -1;
    pthread_mutex_lock(&c->io_mu);
    if (atomic_load(&c->aborted)) {
        pthread_mutex_unlock(&c->io_mu);
        return aborted_error(c, op);
    }
    if (!c->wd_started || atomic_load(&c->wd_blind)) return PC_OK;
    unsigned long long t = atomic_load(&c->wd_tail);
    double give_up = mono_now() + c->base.timeout_s;
    long sleep_ns = 20000;
    while (t - atomic_load(&c->wd_head) >= WD_RING) {
        if (atomic_load(&c->aborted)) {
            pthread_mutex_unlock(&c->io_mu);
            return aborted_error(c, op);
        }
        if (mono_now() > give_up) {
            atomic_store(&c->wd_blind, true);
            return PC_OK;
        }
        pthread_cond_signal(&c->wd_cv); /* look now rather than at the next tick */
        struct timespec ts = {0, sleep_ns};
        nanosleep(&ts, NULL);
        if (sleep_ns < 1000000) sleep_ns *= 2;
    }
    if (pc_cuda_event_record(c->wd_ring[t % WD_RING].start, c->stream) != PC_OK) {
        pc_clear_error();
        atomic_store(&c->wd_blind, true);
        return PC_OK;
    }
    *slot = (long long)t;
    return PC_OK;
}

/* End of the sequence: when it was enqueued, record the slot's end event and hand the slot
 * to the watchdog; release io_mu. */
static void wd_end(NcclComm *c, long long slot, bool enqueued) {
    if (slot >= 0 && enqueued) {
        if (pc_cuda_event_record(c->wd_ring[slot % WD_RING].end, c->stream) != PC_OK) {
            pc_clear_error();
            atomic_store(&c->wd_blind, true);
        } else {
            atomic_store(&c->wd_tail, (unsigned long long)slot + 1);
        }
    }
    pthread_mutex_unlock(&c->io_mu);
}

/* One look: retire the finished operations; returns how long the oldest unfinished one has
 * been able to run (0: none is running). `*started` is when the watchdog first saw the
 * current oldest one's start event complete (0: not yet). */
static double wd_scan(NcclComm *c, double *started) {
    unsigned long long h = atomic_load(&c->wd_head), t = atomic_load(&c->wd_tail);
    double stalled = 0.0;
    while (h < t) {
        cudaError_t q = cudaEventQuery((cudaEvent_t)c->wd_ring[h % WD_RING].end);
        if (q == cudaSuccess) {
            h++;
            *started = 0.0;
            continue;
        }
        if (q != cudaErrorNotReady) { /* a CUDA error: the issuer's own calls report it */
            (void)cudaGetLastError();
            atomic_store(&c->wd_blind, true);
            break;
        }
        double now = mono_now();
        if (*started == 0.0) {
            cudaError_t qs = cudaEventQuery((cudaEvent_t)c->wd_ring[h % WD_RING].start);
            if (qs == cudaSuccess) *started = now;
            else if (qs != cudaErrorNotReady) (void)cudaGetLastError();
        }
        if (*started > 0.0) stalled = now - *started;
        break;
    }
    atomic_store(&c->wd_head, h);
    return stalled;
}

static void *wd_main(void *arg) {
    NcclComm *c = arg;
    if (cudaSetDevice(c->base.device) != cudaSuccess) {
        (void)cudaGetLastError();
        atomic_store(&c->wd_blind, true); /* no watchdog after all: nc_sync times itself */
        return NULL;
    }
    double started = 0.0;
    pthread_mutex_lock(&c->wd_mu);
    while (!c->wd_stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 100000000L; /* look every 100 ms */
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&c->wd_cv, &c->wd_mu, &ts);
        if (c->wd_stop || atomic_load(&c->aborted) || atomic_load(&c->wd_blind)) continue;
        double stalled = wd_scan(c, &started);
        if (atomic_load(&c->wd_head) == atomic_load(&c->wd_tail)) continue; /* idle */
        ncclResult_t async;
        bool failed = nc_async_failed(c, &async);
        if (!failed && stalled <= c->base.timeout_s) continue;
        char why[256];
        if (failed)
            snprintf(why, sizeof why, "NCCL reported %s", ncclGetErrorString(async));
        else
            snprintf(why, sizeof why,
                     "a transfer made no progress for %.0f s (the timeout) after it could "
                     "start: a peer rank died or stopped answering", stalled);
        pthread_mutex_unlock(&c->wd_mu);
        nc_abort_why(c, why);
        pthread_mutex_lock(&c->wd_mu);
    }
    pthread_mutex_unlock(&c->wd_mu);
    return NULL;
}

static void wd_free_events(NcclComm *c) {
    for (int i = 0; i < WD_RING; i++) {
        pc_cuda_event_destroy(c->wd_ring[i].start);
        pc_cuda_event_destroy(c->wd_ring[i].end);
        c->wd_ring[i].start = c->wd_ring[i].end = NULL;
    }
}

static void wd_stop(NcclComm *c) {
    if (c->wd_started) {
        pthread_mutex_lock(&c->wd_mu);
        c->wd_stop = true;
        pthread_cond_signal(&c->wd_cv);
        pthread_mutex_unlock(&c->wd_mu);
        pthread_join(c->wd, NULL);
        c->wd_started = false;
    }
    wd_free_events(c);
}

static PcStatus wd_start(NcclComm *c) {
    PcStatus st = PC_OK;
    for (int i = 0; st == PC_OK && i < WD_RING; i++) {
        st = pc_cuda_event_create(c->base.device, false, false, false, &c->wd_ring[i].start);
        if (st == PC_OK)
            st = pc_cuda_event_create(c->base.device, false, false, false, &c->wd_ring[i].end);
    }
    if (st == PC_OK && pthread_create(&c->wd, NULL, wd_main, c) != 0)
        st = pc_set_error(PC_ERR_COMM, "nccl: could not start the watchdog thread");
    if (st != PC_OK) {
        wd_free_events(c);
        return st;
    }
    c->wd_started = true;
    return PC_OK;
}

/* Before a tensor operation is queued on the comm stream: checks t (`what` names the call)
 * and its NCCL type (*dt), makes the comm stream follow the caller's current stream (*cur:
 * t was written or allocated there) and has the caching allocator keep t's memory until
 * the comm stream's work is done. Keeping never fails: an empty tensor has no memory, and
 * memory pipec did not allocate (DLPack) is its owner's to keep alive. */
static PcStatus nc_prepare(NcclComm *c, const PcTensor *t, const char *what,
                           ncclDataType_t *dt, void **cur) {
    PC_TRY(check_tensor(c, t, what));
    PC_TRY(nccl_dtype(t->dtype, dt));
    PC_TRY(pc_cuda_current_stream(c->base.device, cur));
    PC_TRY(pc_cuda_stream_wait_stream(c->base.device, c->stream, *cur));
    if (t->storage->data && pc_cuda_record_stream(c->base.device, t->storage->data, c->stream) != PC_OK)
        pc_clear_error();
    return PC_OK;
}

static void req_release(NcclRecvReq *r) {
    if (!r || atomic_fetch_sub(&r->refs, 1) != 1) return;
    pc_cuda_event_destroy(r->event);
    pc_tensor_decref(r->t);
    free(r);
}

/* Lets go of held operations taken out of `pend` (outside io_mu: a last reference may
 * free memory, or release a DLPack owner, which takes the GIL). */
static void release_ops(NcPending *ops, int n) {
    for (int i = 0; i < n; i++) {
        pc_tensor_decref(ops[i].t); /* the allocator keeps it for the comm stream */
        req_release(ops[i].req);
    }
}

/* Moves the held operations into ops[2] (io_mu held); returns how many. */
static int take_pending(NcclComm *c, NcPending *ops) {
    int n = c->n_pend;
    memcpy(ops, c->pend, sizeof c->pend);
    c->n_pend = 0;
    return n;
}

static ncclResult_t issue_one(NcclComm *c, const NcPending *p) {
    void *data = pc_tensor_data(p->t);
    size_t count = (size_t)pc_tensor_numel(p->t);
    return p->req ? ncclRecv(data, count, p->dt, p->peer, c->comm, (cudaStream_t)c->stream)
                  : ncclSend(data, count, p->dt, p->peer, c->comm, (cudaStream_t)c->stream);
}

/* Issues ops[0..n) in posting order (io_mu held, through wd_begin; released here): a send
 * directly followed by a receive from the same peer as one group, everything else by
 * itself (see the header). Every one is issued or, when NCCL fails, the communicator is
 * aborted (a peer would otherwise wait for transfers that never come). */
static PcStatus issue_ops(NcclComm *c, long long slot, NcPending *ops, int n) {
    ncclResult_t r = ncclSuccess;
    PcStatus st = PC_OK;
    for (int i = 0; i < n && r == ncclSuccess && st == PC_OK; i++) {
        bool pair = !ops[i].req && i + 1 < n && ops[i + 1].req && ops[i + 1].peer == ops[i].peer;
        if (pair) {
            r = ncclGroupStart();
            if (r == ncclSuccess) {
                r = issue_one(c, &ops[i]);
                if (r == ncclSuccess) r = issue_one(c, &ops[++i]);
                ncclResult_t r2 = ncclGroupEnd();
                if (r == ncclSuccess) r = r2;
            }
        } else {
            r = issue_one(c, &ops[i]);
        }
        /* a receive's event follows its own kernel (or its pair's group) */
        if (r == ncclSuccess && ops[i].req) {
            st = pc_cuda_event_record(ops[i].req->event, c->stream);
            if (st == PC_OK) atomic_store(&ops[i].req->issued, true);
        }
    }
    wd_end(c, slot, r == ncclSuccess);
    release_ops(ops, n);
    if (r != ncclSuccess) st = nccl_fail(r, "ncclSend/ncclRecv", __FILE__, __LINE__);
    if (st != PC_OK) {
        char why[200];
        snprintf(why, sizeof why, "issuing %s", pc_last_error());
        nc_abort_why(c, why);
    }
    return st;
}

/* Drops the held operations without issuing them (aborted: they would never run). */
static void drop_pending(NcclComm *c) {
    NcPending ops[2];
    pthread_mutex_lock(&c->io_mu);
    int n = take_pending(c, ops);
    pthread_mutex_unlock(&c->io_mu);
    release_ops(ops, n);
}

/* Issues what is held; with keep_send, a send held last stays held (it may pair with the
 * next operation). */
static PcStatus issue_held(NcclComm *c, bool keep_send) {
    pthread_mutex_lock(&c->io_mu);
    bool keep = keep_send && c->n_pend > 0 && !c->pend[c->n_pend - 1].req;
    bool any = c->n_pend > (keep ? 1 : 0);
    pthread_mutex_unlock(&c->io_mu);
    if (!any) return PC_OK;
    long long slot;
    PcStatus st = wd_begin(c, "send/recv", &slot);
    if (st != PC_OK) {
        drop_pending(c);
        return st;
    }
    NcPending ops[2];
    int n = take_pending(c, ops);
    if (keep && n > 0 && !ops[n - 1].req) /* the held send stays */
        c->pend[c->n_pend++] = ops[--n];
    return issue_ops(c, slot, ops, n); /* releases io_mu */
}

static PcStatus nc_flush(PcComm *cm) { return issue_held(NC(cm), false); }

/* Holds a send (req NULL) or a receive; issues what can go now: a receive at once (with
 * the send held before it, paired or not), a send only when the next operation comes. */
static PcStatus hold(NcclComm *c, int peer, const PcTensor *t, ncclDataType_t dt,
                     NcclRecvReq *req) {
    if (peer < 0 || peer >= c->base.world || peer == c->base.rank)
        return pc_set_error(PC_ERR_INVALID, "nccl %s: peer %d is not another rank of 0..%d",
                            req ? "recv" : "send", peer, c->base.world - 1);
    pthread_mutex_lock(&c->io_mu);
    /* at most one send is held between calls (issue_held below keeps only the last) */
    bool room = c->n_pend < 2;
    if (room) {
        pc_tensor_incref((PcTensor *)t);
        if (req) atomic_fetch_add(&req->refs, 1);
        c->pend[c->n_pend++] = (NcPending){peer, dt, (PcTensor *)t, req};
    }
    pthread_mutex_unlock(&c->io_mu);
    if (!room)
        return pc_set_error(PC_ERR_RUNTIME, "nccl %s: two operations already held "
                                            "(concurrent callers?)", req ? "recv" : "send");
    return issue_held(c, !req && !c->no_group);
}

static PcStatus nc_send(PcComm *cm, int peer, uint64_t tag, const PcTensor *t) {
    (void)tag;
    NcclComm *c = NC(cm);
    ncclDataType_t dt;
    void *cur;
    PC_TRY(nc_prepare(c, t, "send", &dt, &cur));
    return hold(c, peer, t, dt, NULL);
}

static void nc_recv_drop(PcComm *cm, void *req) {
    (void)cm;
    req_release(req);
}

static PcStatus nc_recv_post(PcComm *cm, int peer, uint64_t tag, PcTensor *t, void **req) {
    (void)tag;
    *req = NULL;
    NcclComm *c = NC(cm);
    ncclDataType_t dt;
    void *cur;
    PC_TRY(nc_prepare(c, t, "recv", &dt, &cur));
    NcclRecvReq *r = calloc(1, sizeof *r);
    if (!r) return pc_set_error(PC_ERR_OOM, "recv: out of host memory posting a receive");
    atomic_init(&r->refs, 1);
    pc_tensor_incref(t);
    r->t = t;
    PcStatus st = pc_cuda_event_create(c->base.device, false, false, false, &r->event);
    if (st == PC_OK) st = hold(c, peer, t, dt, r);
    if (st != PC_OK) {
        req_release(r);
        return st;
    }
    *req = r;
    return PC_OK;
}

static PcStatus nc_recv_wait(PcComm *cm, void *req) {
    NcclComm *c = NC(cm);
    NcclRecvReq *r = req;
    void *cur;
    PcStatus st = nc_flush(cm); /* a send held after the receive goes now */
    /* dropped unissued (another thread's flush failed, or an abort): its buffer is empty */
    if (st == PC_OK && !atomic_load(&r->issued))
        st = atomic_load(&c->aborted) ? aborted_error(c, "recv")
                                      : pc_set_error(PC_ERR_COMM, "nccl recv: the receive was "
                                                                  "never issued");
    if (st == PC_OK) st = pc_cuda_current_stream(c->base.device, &cur);
    if (st == PC_OK) st = pc_cuda_stream_wait_event(cur, r->event);
    req_release(r);
    return st;
}

static PcStatus nc_recv(PcComm *cm, int peer, uint64_t tag, PcTensor *t) {
    void *req;
    PC_TRY(nc_recv_post(cm, peer, tag, t, &req));
    return nc_recv_wait(cm, req);
}

/* Bytes travel through a device staging buffer: an 8-byte size, then the payload. */
static PcStatus nc_send_bytes(PcComm *cm, int peer, uint64_t tag, const void *buf, size_t n) {
    (void)tag;
    NcclComm *c = NC(cm);
    PC_TRY(nc_flush(cm)); /* in posting order behind held transfers */
    PC_CUDART_TRY(cudaSetDevice(c->base.device));
    void *d = NULL;
    size_t total = 8 + n;
    PC_CUDART_TRY(cudaMalloc(&d, total));
    uint64_t n64 = n;
    PcStatus st = PC_OK;
    /* on the comm stream, so the send below reads the bytes after they landed (a plain
     * cudaMemcpy from pageable memory may return before that, and runs on the legacy
     * stream, which the comm stream does not follow); the host bytes are staged before the
     * call returns */
    cudaError_t ce = cudaMemcpyAsync(d, &n64, 8, cudaMemcpyHostToDevice, (cudaStream_t)c->stream);
    if (ce == cudaSuccess && n)
        ce = cudaMemcpyAsync((char *)d + 8, buf, n, cudaMemcpyHostToDevice,
                             (cudaStream_t)c->stream);
    if (ce != cudaSuccess) {
        st = pc_set_error(PC_ERR_CUDA, "nccl send_bytes: staging copy failed: %s",
                          cudaGetErrorString(ce));
    } else {
        long long slot;
        st = wd_begin(c, "send_bytes", &slot);
        if (st == PC_OK) {
            ncclResult_t r = ncclGroupStart();
            if (r == ncclSuccess)
                r = ncclSend(d, 8, ncclUint8, peer, c->comm, (cudaStream_t)c->stream);
            if (r == ncclSuccess && n)
                r = ncclSend((char *)d + 8, n, ncclUint8, peer, c->comm, (cudaStream_t)c->stream);
            ncclResult_t r2 = ncclGroupEnd();
            if (r == ncclSuccess) r = r2;
            wd_end(c, slot, r == ncclSuccess);
            if (r != ncclSuccess) st = nccl_fail(r, "ncclSend(bytes)", __FILE__, __LINE__);
            else st = nc_sync(c, c->stream, "send_bytes");
        }
    }
    cudaFree(d);
    return st;
}

static PcStatus nc_recv_bytes(PcComm *cm, int peer, uint64_t tag, void **buf, size_t *n) {
    (void)tag;
    NcclComm *c = NC(cm);
    *buf = NULL;
    *n = 0;
    PC_TRY(nc_flush(cm));
    PC_CUDART_TRY(cudaSetDevice(c->base.device));
    void *d = NULL;
    PC_CUDART_TRY(cudaMalloc(&d, 8));
    uint64_t n64 = 0;
    long long slot;
    PcStatus sync = wd_begin(c, "recv_bytes", &slot);
    if (sync != PC_OK) {
        cudaFree(d);
        return sync;
    }
    ncclResult_t r = ncclRecv(d, 8, ncclUint8, peer, c->comm, (cudaStream_t)c->stream);
    wd_end(c, slot, r == ncclSuccess);
    sync = r == ncclSuccess ? nc_sync(c, c->stream, "recv_bytes") : PC_OK;
    cudaError_t ce = cudaSuccess;
    if (r == ncclSuccess && sync == PC_OK) ce = cudaMemcpy(&n64, d, 8, cudaMemcpyDeviceToHost);
    cudaFree(d);
    if (r != ncclSuccess) return nccl_fail(r, "ncclRecv(size)", __FILE__, __LINE__);
    if (sync != PC_OK) return sync;
    if (ce != cudaSuccess) return pc_set_error(PC_ERR_CUDA, "nccl recv_bytes: %s", cudaGetErrorString(ce));
    void *host = malloc(n64 ? n64 : 1);
    if (!host) return pc_set_error(PC_ERR_OOM, "nccl recv_bytes: %llu bytes", (unsigned long long)n64);
    if (n64) {
        PcStatus st = PC_OK;
        if (cudaMalloc(&d, n64) != cudaSuccess) {
            free(host);
            return pc_set_error(PC_ERR_OOM, "nccl recv_bytes: device staging of %llu bytes",
                                (unsigned long long)n64);
        }
        if ((st = wd_begin(c, "recv_bytes", &slot)) == PC_OK) {
            r = ncclRecv(d, n64, ncclUint8, peer, c->comm, (cudaStream_t)c->stream);
            wd_end(c, slot, r == ncclSuccess);
            if (r != ncclSuccess) st = nccl_fail(r, "ncclRecv(bytes)", __FILE__, __LINE__);
        }
        if (st == PC_OK && (st = nc_sync(c, c->stream, "recv_bytes")) == PC_OK &&
                 (ce = cudaMemcpy(host, d, n64, cudaMemcpyDeviceToHost)) != cudaSuccess)
            st = pc_set_error(PC_ERR_CUDA, "nccl recv_bytes: %s", cudaGetErrorString(ce));
        cudaFree(d);
        if (st != PC_OK) {
            free(host);
            return st;
        }
    }
    *buf = host;
    *n = n64;
    return PC_OK;
}

/* ---- collectives ---- */

static PcStatus nc_all_reduce_sum(PcComm *cm, PcTensor *t) {
    NcclComm *c = NC(cm);
    ncclDataType_t dt;
    void *cur;
    PC_TRY(nc_flush(cm));
    PC_TRY(nc_prepare(c, t, "all_reduce", &dt, &cur));
    void *p = pc_tensor_data(t);
    long long slot;
    PC_TRY(wd_begin(c, "all_reduce", &slot));
    ncclResult_t r = ncclAllReduce(p, p, (size_t)pc_tensor_numel(t), dt, ncclSum, c->comm,
                                   (cudaStream_t)c->stream);
    wd_end(c, slot, r == ncclSuccess);
    if (r != ncclSuccess) return nccl_fail(r, "ncclAllReduce", __FILE__, __LINE__);
    return pc_cuda_stream_wait_stream(c->base.device, cur, c->stream);
}

static PcStatus nc_broadcast_bytes(PcComm *cm, int root, void *buf, size_t n) {
    NcclComm *c = NC(cm);
    PC_TRY(nc_flush(cm));
    if (n == 0) return PC_OK;
    PC_CUDART_TRY(cudaSetDevice(c->base.device));
    void *d = NULL;
    PC_CUDART_TRY(cudaMalloc(&d, n));
    PcStatus st = PC_OK;
    cudaError_t ce = cudaSuccess;
    if (cm->rank == root) /* on the comm stream: see nc_send_bytes */
        ce = cudaMemcpyAsync(d, buf, n, cudaMemcpyHostToDevice, (cudaStream_t)c->stream);
    long long slot;
    if (ce == cudaSuccess && (st = wd_begin(c, "broadcast", &slot)) == PC_OK) {
        ncclResult_t r = ncclBroadcast(d, d, n, ncclUint8, root, c->comm, (cudaStream_t)c->stream);
        wd_end(c, slot, r == ncclSuccess);
        if (r != ncclSuccess) st = nccl_fail(r, "ncclBroadcast", __FILE__, __LINE__);
        else if ((st = nc_sync(c, c->stream, "broadcast")) == PC_OK && cm->rank != root)
            ce = cudaMemcpy(buf, d, n, cudaMemcpyDeviceToHost);
    }
    if (st == PC_OK && ce != cudaSuccess)
        st = pc_set_error(PC_ERR_CUDA, "nccl broadcast: %s", cudaGetErrorString(ce));
    cudaFree(d);
    return st;
}

static PcStatus nc_barrier(PcComm *cm) {
    unsigned char b = 0;
    return nc_broadcast_bytes(cm, 0, &b, 1);
}

/* Everything queued on the comm stream has finished (end of a pipeline step). */
static PcStatus nc_wait_idle(PcComm *cm) {
    NcclComm *c = NC(cm);
    if (atomic_load(&c->aborted)) return aborted_error(c, "step");
    PC_TRY(nc_flush(cm));
    PC_TRY(nc_sync(c, c->stream, "transfers of this step"));
    /* an abort from another thread ends NCCL's kernels too: the stream then looks done */
    if (atomic_load(&c->aborted)) return aborted_error(c, "step");
    return PC_OK;
}

/* A tiny grouped send/recv with every peer: NCCL connects point-to-point channels lazily,
 * on first use, which would otherwise land in the first pipeline step. */
static PcStatus nc_connect_peers(NcclComm *c) {
    if (c->base.world < 2) return PC_OK;
    void *d = NULL;
    PC_CUDART_TRY(cudaMalloc(&d, 2 * (size_t)c->base.world));
    long long slot;
    PcStatus st = wd_begin(c, "connecting to peers", &slot);
    if (st != PC_OK) {
        cudaFree(d);
        return st;
    }
    ncclResult_t r = ncclGroupStart();
    for (int p = 0; r == ncclSuccess && p < c->base.world; p++) {
        if (p == c->base.rank) continue;
        r = ncclSend((char *)d + p, 1, ncclUint8, p, c->comm, (cudaStream_t)c->stream);
        if (r == ncclSuccess)
            r = ncclRecv((char *)d + c->base.world + p, 1, ncclUint8, p, c->comm,
                         (cudaStream_t)c->stream);
    }
    ncclResult_t r2 = ncclGroupEnd();
    if (r == ncclSuccess) r = r2;
    wd_end(c, slot, r == ncclSuccess);
    if (r != ncclSuccess) st = nccl_fail(r, "connecting to peers", __FILE__, __LINE__);
    else st = nc_sync(c, c->stream, "connecting to peers");
    cudaFree(d);
    return st;
}

static void nc_destroy(PcComm *cm) {
    NcclComm *c = NC(cm);
    if (!c) return;
    if (c->n_pend > 0) {
        /* a failed step left transfers unissued: issuing them now could make
         * ncclCommDestroy wait for a peer that is gone, with no watchdog left */
        nc_abort_why(c, "destroyed with transfers not issued");
        drop_pending(c);
    }
    wd_stop(c);
    if (c->comm && !atomic_load(&c->aborted)) ncclCommDestroy(c->comm);
    c->comm = NULL;
    pthread_mutex_destroy(&c->wd_mu);
    pthread_mutex_destroy(&c->io_mu);
    pthread_mutex_destroy(&c->abort_mu);
    pthread_cond_destroy(&c->wd_cv);
    free(c);
}

static const PcCommOps nccl_ops = {
    .name = "nccl",
    .send = nc_send,
    .recv = nc_recv,
    .recv_post = nc_recv_post,
    .recv_wait = nc_recv_wait,
    .recv_drop = nc_recv_drop,
    .flush = nc_flush,
    .wait_idle = nc_wait_idle,
    .send_bytes = nc_send_bytes,
    .recv_bytes = nc_recv_bytes,
    .barrier = nc_barrier,
    .all_reduce_sum = nc_all_reduce_sum,
    .broadcast_bytes = nc_broadcast_bytes,
    .abort = nc_abort,
    .destroy = nc_destroy,
};

PcStatus pc_comm_nccl_create(PcStore *store, int rank, int world, int device, double timeout_s,
                             PcComm **out) {
    *out = NULL;
    PC_CUDART_TRY(cudaSetDevice(device));
    ncclUniqueId id;
    if (rank == 0) {
        PC_NCCL_TRY(ncclGetUniqueId(&id));
        PC_TRY(pc_store_set(store, "pipec/nccl_id", &id, sizeof id));
    } else {
        void *val = NULL;
        size_t n = 0;
        PC_TRY(pc_store_get(store, "pipec/nccl_id", &val, &n));
        if (n != sizeof id) {
            free(val);
            return pc_set_error(PC_ERR_COMM, "nccl: malformed unique id in the store (%zu bytes)", n);
        }
        memcpy(&id, val, sizeof id);
        free(val);
    }
    /* every rank present before NCCL's own (untimed) rendezvous */
    PC_TRY(pc_store_barrier(store, "pipec/nccl_init", rank));
    NcclComm *c = calloc(1, sizeof *c);
    if (!c) return pc_set_error(PC_ERR_OOM, "nccl: out of host memory");
    c->base.ops = &nccl_ops;
    c->base.rank = rank;
    c->base.world = world;
    c->base.timeout_s = timeout_s;
    c->base.device = device;
    const char *grp = getenv("PIPEC_NCCL_GROUP");
    c->no_group = grp && strcmp(grp, "0") == 0;
    pthread_mutex_init(&c->wd_mu, NULL);
    pthread_mutex_init(&c->io_mu, NULL);
    pthread_mutex_init(&c->abort_mu, NULL);
    pthread_cond_init(&c->wd_cv, NULL);
    PcStatus st = pc_cuda_comm_stream(device, 0, &c->stream);
    ncclResult_t r = st == PC_OK ? ncclCommInitRank(&c->comm, world, id, rank) : ncclSuccess;
    if (st != PC_OK || r != ncclSuccess) {
        c->comm = NULL;
        nc_destroy(&c->base);
        return st != PC_OK ? st : nccl_fail(r, "ncclCommInitRank", __FILE__, __LINE__);
    }
    /* the watchdog first, so the warm-up below is watched too; then warm up the connections
     * (collective and point-to-point), so the first pipeline step is not slow */
    st = wd_start(c);
    if (st == PC_OK) st = nc_barrier(&c->base);
    if (st == PC_OK) st = nc_connect_peers(c);
    if (st != PC_OK) {
        nc_destroy(&c->base);
        return st;
    }
    *out = &c->base;
    return PC_OK;
}

#else
/* keep the translation unit non-empty in builds without NCCL */
typedef int pc_nccl_not_built;
#endif
