/* runtime.c — the in-process pipeline runtime (see runtime.h).
 *
 * Invariants:
 *   - one mutex guards every MbState field that another rank may touch (deposited inputs,
 *     output gradients, their counters); a condition variable wakes waiting ranks;
 *   - a rank only runs actions of stages it owns, so per-stage compute state (outputs,
 *     weight work) is touched by one thread at a time;
 *   - every wait has a deadline and gives up as soon as another rank failed.
 */
#define _POSIX_C_SOURCE 200809L
#include "runtime.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../autograd/autograd.h"
#include "../ops/wgrad_batch.h"
#ifdef PC_WITH_CUDA
#include "../kernels/cuda/cuda_api.h"
#endif

/* ---- state ---- */

typedef struct Consumer {
    int stage, input;
} Consumer;

typedef struct RtStage {
    PcRuntimeStageDesc d;
    PcStageInput *in;        /* owned copy of d.in */
    PcValueMeta *in_meta;    /* owned copy of d.in_meta, or NULL */
    PcValueMeta *out_meta;   /* owned copy of d.out_meta, or NULL */
    int *n_cons;             /* [n_out]: consumers of each output */
    Consumer **cons;         /* [n_out][n_cons] owned */
    int n_redge;             /* multi-process: consumers on other ranks, over all outputs */
    bool is_last;
} RtStage;

typedef struct MbState {
    PcTensor **in;           /* [n_in] deposited values (owned refs), then leaves */
    bool *in_grad;           /* [n_in] whether the producer's value required grad */
    int in_missing;          /* inputs not yet deposited */
    PcTensor **out;          /* [n_out] outputs with graph (owned) */
    PcTensor *loss;          /* last stage (owned) */
    PcTensor **gout;         /* [n_out] summed output gradients (owned) */
    int *gout_missing;       /* [n_out] contributions still expected */
    PcTensor **gin;          /* [n_in] input gradients (owned) until sent */
    PcWeightWork *work;      /* queued weight work between I and W */
    bool fwd_done, bwd_done;
    /* one process, several GPUs: a value copied from another GPU is usable once its event
     * completed (see peer_move); NULL when nothing is pending */
    void **in_done;          /* [n_in] */
    void **gout_done;        /* [n_out] */
    /* multi-process: receives from other ranks */
    void **in_req;           /* [n_in] posted receive of input k (into in[k]), or NULL */
    bool in_posted;          /* the inputs' receives were posted this step */
    void **g_req;            /* [n_redge] posted receive of one consumer's gradient */
    PcTensor **g_buf;        /* [n_redge] its buffer (owned), NULL when none is expected */
    bool g_posted;
} MbState;

struct PcRuntime {
    int n_stages, n_mb;
    RtStage *st;             /* [n_stages] */
    MbState *mb;             /* [n_stages * n_mb] */
    PcRuntimeCallbacks cb;
    double timeout_s;
    bool training, record;
    int n_model_in;
    PcTensor **model_in;     /* [n_mb * n_model_in] owned refs */
    PcComm *comm;            /* multi-process mode (borrowed), else NULL */
    const PcCommOps *comm_ops; /* comm's table (static): drops pending receives even after
                                  the communicator was destroyed */
    int my_rank;             /* the rank this process runs in multi-process mode */
    unsigned step;           /* steps begun: part of every message tag */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool failed;
    int failed_rank;         /* -1: none yet; -2: interrupted (pc_runtime_interrupt) */
    atomic_bool interrupted; /* read at every action without mu */
    /* timeline */
    PcTimelineEvent *events;
    int n_events, cap_events;
    struct timespec t0;
    /* sources of cross-GPU copies still running (peer_move), under copies_mu */
    pthread_mutex_t copies_mu;
    bool peer_same_gpu;      /* PIPEC_TEST_PEER_COPY: peer_move between ranks on one GPU too,
                                so one GPU can test the hand-off's synchronisation */
    struct PeerCopy {
        PcTensor *src;       /* the source's memory, kept until `done` completed (owned; a
                                detached alias, so the stage's graph is not kept with it) */
        void *done;          /* event after the copy (owned) */
    } *copies;
    int n_copies, cap_copies;
};

static MbState *MB(PcRuntime *rt, int stage, int mb) { return &rt->mb[stage * rt->n_mb + mb]; }

/* Limits of the message tags of multi-process mode (see xfer_tag). */
#define TAG_MAX_STAGES 4096
#define TAG_MAX_MB (1 << 20)

/* In multi-process mode: whether `stage` runs in another process. */
static bool is_foreign(const PcRuntime *rt, int stage) {
    return rt->comm && rt->st[stage].d.rank != rt->my_rank;
}

/* When the current action's compute started (after its waits for data), for the timeline. */
static _Thread_local double tl_compute_start = -1.0;

static double now_us(const PcRuntime *rt) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - rt->t0.tv_sec) * 1e6 + (double)(t.tv_nsec - rt->t0.tv_nsec) / 1e3;
}

static void decref_array(PcTensor **a, int n) {
    if (!a) return;
    for (int i = 0; i < n; i++) {
        pc_tensor_decref(a[i]);
        a[i] = NULL;
    }
}

/* Destroys a pending copy event (a no-op for NULL or without CUDA). */
static void drop_event(void **ev) {
#ifdef PC_WITH_CUDA
    pc_cuda_event_destroy(*ev);
#endif
    *ev = NULL;
}

/* Releases the sources of finished cross-GPU copies; all of them, waiting, when `wait`. */
static void reap_copies(PcRuntime *rt, bool wait) {
#ifdef PC_WITH_CUDA
    pthread_mutex_lock(&rt->copies_mu);
    int j = 0;
    for (int i = 0; i < rt->n_copies; i++) {
        struct PeerCopy *c = &rt->copies[i];
        bool done = true;
        PcStatus st = wait ? pc_cuda_event_synchronize(c->done) : pc_cuda_event_query(c->done, &done);
        if (st != PC_OK) { /* a device error is sticky: no copy runs any more */
            pc_clear_error();
            done = true;
        }
        if (done) {
            pc_cuda_event_destroy(c->done);
            pc_tensor_decref(c->src);
        } else {
            rt->copies[j++] = *c;
        }
    }
    rt->n_copies = j;
    pthread_mutex_unlock(&rt->copies_mu);
#else
    (void)rt;
    (void)wait;
#endif
}

/* Work queued after the step on the calling thread's current streams waits for the copies
 * still reading their sources, so an in-place write to a source (a model input refilled
 * for the next step) never overtakes them. The host does not wait. */
static void order_pending_copies(PcRuntime *rt) {
#ifdef PC_WITH_CUDA
    pthread_mutex_lock(&rt->copies_mu);
    for (int i = 0; i < rt->n_copies; i++) {
        void *cur;
        struct PeerCopy *c = &rt->copies[i];
        if (pc_cuda_current_stream(c->src->device.index, &cur) != PC_OK ||
            pc_cuda_stream_wait_event(cur, c->done) != PC_OK) {
            pc_clear_error(); /* a sticky device error: nothing runs any more */
        }
    }
    pthread_mutex_unlock(&rt->copies_mu);
#else
    (void)rt;
#endif
}

static void mb_clear(PcRuntime *rt, int s, int m) {
    MbState *x = MB(rt, s, m);
    RtStage *st = &rt->st[s];
    decref_array(x->in, st->d.n_in);
    decref_array(x->out, st->d.n_out);
    decref_array(x->gout, st->d.n_out);
    decref_array(x->gin, st->d.n_in);
    pc_tensor_decref(x->loss);
    x->loss = NULL;
    pc_weight_work_free(x->work);
    x->work = NULL;
    x->fwd_done = x->bwd_done = false;
    for (int k = 0; x->in_done && k < st->d.n_in; k++) drop_event(&x->in_done[k]);
    for (int o = 0; x->gout_done && o < st->d.n_out; o++) drop_event(&x->gout_done[o]);
    x->in_missing = 0;
    for (int k = 0; k < st->d.n_in; k++) {
        x->in_grad[k] = false;
        if (st->in[k].src_stage >= 0) x->in_missing++;
    }
    for (int o = 0; o < st->d.n_out; o++) x->gout_missing[o] = st->n_cons[o];
    for (int k = 0; x->in_req && k < st->d.n_in; k++) {
        if (x->in_req[k] && rt->comm_ops) rt->comm_ops->recv_drop(NULL, x->in_req[k]);
        x->in_req[k] = NULL;
    }
    for (int e = 0; x->g_req && e < st->n_redge; e++) {
        if (x->g_req[e] && rt->comm_ops) rt->comm_ops->recv_drop(NULL, x->g_req[e]);
        x->g_req[e] = NULL;
        pc_tensor_decref(x->g_buf[e]);
        x->g_buf[e] = NULL;
    }
    x->in_posted = x->g_posted = false;
}

void pc_runtime_free(PcRuntime *rt) {
    if (!rt) return;
    if (rt->mb) {
        for (int s = 0; s < rt->n_stages; s++) {
            for (int m = 0; m < rt->n_mb; m++) {
                MbState *x = MB(rt, s, m);
                if (x->in_grad) mb_clear(rt, s, m);
                free(x->in);
                free(x->in_grad);
                free(x->out);
                free(x->gout);
                free(x->gout_missing);
                free(x->gin);
                free(x->in_req);
                free(x->g_req);
                free(x->g_buf);
                free(x->in_done);
                free(x->gout_done);
            }
        }
    }
    free(rt->mb);
    if (rt->st) {
        for (int s = 0; s < rt->n_stages; s++) {
            RtStage *st = &rt->st[s];
            if (st->cons)
                for (int o = 0; o < st->d.n_out; o++) free(st->cons[o]);
            free(st->cons);
            free(st->n_cons);
            free(st->in);
            free(st->in_meta);
            free(st->out_meta);
        }
    }
    free(rt->st);
    reap_copies(rt, true);
    free(rt->copies);
    decref_array(rt->model_in, rt->n_mb * rt->n_model_in);
    free(rt->model_in);
    free(rt->events);
    pthread_mutex_destroy(&rt->mu);
    pthread_mutex_destroy(&rt->copies_mu);
    pthread_cond_destroy(&rt->cv);
    free(rt);
}

PcStatus pc_runtime_create(int n_stages, const PcRuntimeStageDesc *stages, int n_mb,
                           const PcRuntimeCallbacks *cb, double timeout_s, PcRuntime **out) {
    *out = NULL;
    PC_CHECK(n_stages > 0 && n_mb > 0, PC_ERR_INVALID,
             "runtime: need at least one stage and one microbatch (got %d, %d)", n_stages, n_mb);
    PcRuntime *rt = calloc(1, sizeof *rt);
    if (!rt) return pc_set_error(PC_ERR_OOM, "out of host memory creating a runtime");
    pthread_mutex_init(&rt->mu, NULL);
    pthread_mutex_init(&rt->copies_mu, NULL);
    pthread_cond_init(&rt->cv, NULL);
    rt->n_stages = n_stages;
    rt->n_mb = n_mb;
    rt->cb = *cb;
    rt->timeout_s = timeout_s > 0 ? timeout_s : 300.0;
    rt->failed_rank = -1;
    const char *tp = getenv("PIPEC_TEST_PEER_COPY");
    rt->peer_same_gpu = tp && *tp && strcmp(tp, "0") != 0;
    rt->st = calloc((size_t)n_stages, sizeof(RtStage));
    rt->mb = calloc((size_t)n_stages * (size_t)n_mb, sizeof(MbState));
    PcStatus st = PC_OK;
    if (!rt->st || !rt->mb) {
        st = pc_set_error(PC_ERR_OOM, "out of host memory creating a runtime");
        goto fail;
    }
    for (int s = 0; s < n_stages; s++) {
        RtStage *r = &rt->st[s];
        r->d = stages[s];
        r->is_last = s == n_stages - 1;
        r->in = malloc(sizeof(PcStageInput) * (size_t)(r->d.n_in ? r->d.n_in : 1));
        r->n_cons = calloc((size_t)(r->d.n_out ? r->d.n_out : 1), sizeof(int));
        r->cons = calloc((size_t)(r->d.n_out ? r->d.n_out : 1), sizeof(Consumer *));
        if (!r->in || !r->n_cons || !r->cons) {
            st = pc_set_error(PC_ERR_OOM, "out of host memory creating a runtime");
            goto fail;
        }
        memcpy(r->in, stages[s].in, sizeof(PcStageInput) * (size_t)r->d.n_in);
        r->d.in = r->in;
        if (stages[s].in_meta && r->d.n_in > 0) {
            r->in_meta = malloc(sizeof(PcValueMeta) * (size_t)r->d.n_in);
            if (!r->in_meta) {
                st = pc_set_error(PC_ERR_OOM, "out of host memory creating a runtime");
                goto fail;
            }
            memcpy(r->in_meta, stages[s].in_meta, sizeof(PcValueMeta) * (size_t)r->d.n_in);
        }
        if (stages[s].out_meta && r->d.n_out > 0) {
            r->out_meta = malloc(sizeof(PcValueMeta) * (size_t)r->d.n_out);
            if (!r->out_meta) {
                st = pc_set_error(PC_ERR_OOM, "out of host memory creating a runtime");
                goto fail;
            }
            memcpy(r->out_meta, stages[s].out_meta, sizeof(PcValueMeta) * (size_t)r->d.n_out);
        }
        r->d.in_meta = r->in_meta;
        r->d.out_meta = r->out_meta;
    }
    /* consumers of each output */
    for (int s = 0; s < n_stages; s++) {
        RtStage *r = &rt->st[s];
        for (int k = 0; k < r->d.n_in; k++) {
            PcStageInput src = r->in[k];
            if (src.src_stage < 0) continue;
            if (src.src_stage >= s || src.src_idx < 0 || src.src_idx >= rt->st[src.src_stage].d.n_out) {
                st = pc_set_error(PC_ERR_INVALID,
                                  "runtime: stage %d input %d comes from stage %d output %d, "
                                  "which is not an output of an earlier stage",
                                  s, k, src.src_stage, src.src_idx);
                goto fail;
            }
            RtStage *p = &rt->st[src.src_stage];
            Consumer *c = realloc(p->cons[src.src_idx],
                                  sizeof(Consumer) * (size_t)(p->n_cons[src.src_idx] + 1));
            if (!c) {
                st = pc_set_error(PC_ERR_OOM, "out of host memory creating a runtime");
                goto fail;
            }
            c[p->n_cons[src.src_idx]++] = (Consumer){s, k};
            p->cons[src.src_idx] = c;
        }
    }
    for (int s = 0; s + 1 < n_stages; s++) {
        for (int o = 0; o < rt->st[s].d.n_out; o++) {
            if (rt->st[s].n_cons[o] == 0) {
                st = pc_set_error(PC_ERR_INVALID,
                                  "runtime: output %d of stage %d is used by no later stage (only "
                                  "the last stage may produce model outputs)",
                                  o, s);
                goto fail;
            }
        }
    }
    for (int s = 0; s < n_stages; s++) {
        RtStage *r = &rt->st[s];
        size_t ni = (size_t)(r->d.n_in ? r->d.n_in : 1), no = (size_t)(r->d.n_out ? r->d.n_out : 1);
        for (int m = 0; m < n_mb; m++) {
            MbState *x = MB(rt, s, m);
            x->in = calloc(ni, sizeof(PcTensor *));
            x->in_grad = calloc(ni, sizeof(bool));
            x->gin = calloc(ni, sizeof(PcTensor *));
            x->out = calloc(no, sizeof(PcTensor *));
            x->gout = calloc(no, sizeof(PcTensor *));
            x->gout_missing = calloc(no, sizeof(int));
            x->in_req = calloc(ni, sizeof(void *));
            x->in_done = calloc(ni, sizeof(void *));
            x->gout_done = calloc(no, sizeof(void *));
            if (!x->in || !x->in_grad || !x->gin || !x->out || !x->gout || !x->gout_missing ||
                !x->in_req || !x->in_done || !x->gout_done) {
                st = pc_set_error(PC_ERR_OOM, "out of host memory creating a runtime");
                goto fail;
            }
            mb_clear(rt, s, m);
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &rt->t0);
    *out = rt;
    return PC_OK;
fail:
    pc_runtime_free(rt);
    return st;
}

PcStatus pc_runtime_set_comm(PcRuntime *rt, PcComm *comm, int rank) {
    PC_CHECK(comm && rank >= 0 && rank < comm->world, PC_ERR_INVALID,
             "runtime: rank %d is not in the communicator's world of %d", rank,
             comm ? comm->world : 0);
    PC_CHECK(comm->ops->recv_post && comm->ops->recv_wait && comm->ops->recv_drop,
             PC_ERR_NOTIMPL, "runtime: the %s communicator cannot post receives",
             comm->ops->name);
    PC_CHECK(!rt->comm, PC_ERR_RUNTIME, "runtime: a communicator is already set");
    PC_CHECK(rt->n_stages <= TAG_MAX_STAGES && rt->n_mb <= TAG_MAX_MB, PC_ERR_INVALID,
             "runtime: multi-process pipelines hold at most %d stages and %d microbatches "
             "(got %d, %d)", TAG_MAX_STAGES, TAG_MAX_MB, rt->n_stages, rt->n_mb);
    for (int s = 0; s < rt->n_stages; s++)
        PC_CHECK(rt->st[s].d.n_in <= TAG_MAX_STAGES, PC_ERR_INVALID,
                 "runtime: stage %d has %d inputs (at most %d across processes)", s,
                 rt->st[s].d.n_in, TAG_MAX_STAGES);
    for (int s = 0; s < rt->n_stages; s++) {
        RtStage *st = &rt->st[s];
        PC_CHECK(st->d.rank >= 0 && st->d.rank < comm->world, PC_ERR_INVALID,
                 "runtime: stage %d runs on rank %d, outside the world of %d", s, st->d.rank,
                 comm->world);
        if (st->d.rank != rank) continue;
        PC_CHECK(st->d.prog, PC_ERR_INVALID, "runtime: stage %d of rank %d has no Program", s,
                 rank);
        /* caught here, not at the first transfer (where the peer would wait out its timeout) */
        if (comm->device >= 0 &&
            !pc_device_eq(st->d.device, (PcDevice){PC_CUDA, comm->device})) {
            char where[32];
            return pc_set_error(PC_ERR_DEVICE,
                                "runtime: stage %d is on %s, but this rank's %s communicator "
                                "moves the memory of cuda:%d: put the rank's stages on that "
                                "GPU (or pass device_id= to init_process_group)",
                                s, pc_device_str(st->d.device, where, sizeof where),
                                comm->ops->name, comm->device);
        }
        int n_redge = 0;
        bool remote_out = false, remote_in = false;
        for (int o = 0; o < st->d.n_out; o++)
            for (int c = 0; c < st->n_cons[o]; c++)
                if (rt->st[st->cons[o][c].stage].d.rank != rank) n_redge++;
        remote_out = n_redge > 0;
        for (int k = 0; k < st->d.n_in; k++)
            if (st->in[k].src_stage >= 0 && rt->st[st->in[k].src_stage].d.rank != rank)
                remote_in = true;
        PC_CHECK(!(remote_out && !st->out_meta) && !(remote_in && !st->in_meta), PC_ERR_INVALID,
                 "runtime: stage %d exchanges values with other ranks but has no metadata "
                 "for them (shape inference did not run)", s);
        st->n_redge = n_redge;
        for (int m = 0; m < rt->n_mb && n_redge > 0; m++) {
            MbState *x = MB(rt, s, m);
            x->g_req = calloc((size_t)n_redge, sizeof(void *));
            x->g_buf = calloc((size_t)n_redge, sizeof(PcTensor *));
            if (!x->g_req || !x->g_buf) {
                st->n_redge = 0; /* never index the partly allocated arrays */
                return pc_set_error(PC_ERR_OOM, "out of host memory creating a runtime");
            }
        }
    }
    rt->comm = comm;
    rt->comm_ops = comm->ops;
    rt->my_rank = rank;
    return PC_OK;
}

PcStatus pc_runtime_begin_step(PcRuntime *rt, int n_model_in, PcTensor *const *inputs,
                               bool training, bool record_timeline) {
    pc_runtime_end_step(rt);
    PcTensor **mi = calloc((size_t)(n_model_in * rt->n_mb + 1), sizeof(PcTensor *));
    if (!mi) return pc_set_error(PC_ERR_OOM, "out of host memory starting a step");
    for (int i = 0; i < n_model_in * rt->n_mb; i++) {
        pc_tensor_incref(inputs[i]);
        mi[i] = inputs[i];
    }
    for (int s = 0; s < rt->n_stages; s++) {
        if (is_foreign(rt, s)) continue;
        for (int k = 0; k < rt->st[s].d.n_in; k++)
            if (rt->st[s].in[k].src_stage < 0 && rt->st[s].in[k].src_idx >= n_model_in) {
                free(mi);
                return pc_set_error(PC_ERR_INVALID,
                                    "runtime: stage %d needs model input %d, but %d were given",
                                    s, rt->st[s].in[k].src_idx, n_model_in);
            }
    }
    rt->model_in = mi;
    rt->n_model_in = n_model_in;
    rt->training = training;
    rt->record = record_timeline;
    rt->failed = false;
    rt->failed_rank = -1;
    atomic_store(&rt->interrupted, false);
    rt->n_events = 0;
    rt->step++;
    clock_gettime(CLOCK_MONOTONIC, &rt->t0);
    return PC_OK;
}

void pc_runtime_end_step(PcRuntime *rt) {
    for (int s = 0; s < rt->n_stages; s++)
        for (int m = 0; m < rt->n_mb; m++) mb_clear(rt, s, m);
    order_pending_copies(rt);
    reap_copies(rt, false);
    decref_array(rt->model_in, rt->n_mb * rt->n_model_in);
    free(rt->model_in);
    rt->model_in = NULL;
    rt->n_model_in = 0;
}

/* ---- waiting ---- */

static PcStatus interrupted_status(void) {
    return pc_set_error(PC_ERR_RUNTIME, "pipeline aborted: the step was interrupted");
}

static PcStatus fail_status(PcRuntime *rt) {
    if (rt->failed_rank == -2) return interrupted_status();
    return pc_set_error(PC_ERR_RUNTIME, "pipeline aborted: rank %d failed", rt->failed_rank);
}

void pc_runtime_interrupt(PcRuntime *rt) {
    atomic_store(&rt->interrupted, true);
    pthread_mutex_lock(&rt->mu);
    if (!rt->failed) {
        rt->failed = true;
        rt->failed_rank = -2;
    }
    pthread_cond_broadcast(&rt->cv);
    pthread_mutex_unlock(&rt->mu);
}

/* Wait (mutex held) until pred(rt, a, b) or deadline / failure. */
static PcStatus wait_for(PcRuntime *rt, bool (*pred)(PcRuntime *, int, int), int a, int b,
                         const char *what) {
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    double t = rt->timeout_s;
    dl.tv_sec += (time_t)t;
    dl.tv_nsec += (long)((t - (double)(time_t)t) * 1e9);
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    while (!pred(rt, a, b)) {
        if (rt->failed) return fail_status(rt);
        int r = pthread_cond_timedwait(&rt->cv, &rt->mu, &dl);
        if (r == ETIMEDOUT && !pred(rt, a, b))
            return pc_set_error(PC_ERR_TIMEOUT, "pipeline: timed out after %.0f s waiting for %s "
                                                "of stage %d microbatch %d",
                                rt->timeout_s, what, a, b);
    }
    return PC_OK;
}

static bool inputs_ready(PcRuntime *rt, int s, int m) { return MB(rt, s, m)->in_missing == 0; }

static bool grads_ready(PcRuntime *rt, int s, int m) {
    MbState *x = MB(rt, s, m);
    for (int o = 0; o < rt->st[s].d.n_out; o++)
        if (x->gout_missing[o] > 0) return false;
    return true;
}

/* ---- transfers (mutex held by caller where noted) ---- */

/* Kinds of producer -> consumer edges. The lowering adds SEND/RECV actions only for a stage
 * and the next one (a chain); values between stages further apart on different ranks (skip
 * connections) have no action of their own and move when they are made (forward) or when
 * the consumer's backward is done (gradients). */
enum { XF_LOCAL = 1, XF_ADJ = 2, XF_SKIP = 4 };

static int edge_kind(const PcRuntime *rt, int producer, int consumer) {
    if (rt->st[producer].d.rank == rt->st[consumer].d.rank) return XF_LOCAL;
    return consumer == producer + 1 ? XF_ADJ : XF_SKIP;
}

/* ---- copies between GPUs driven by one process (LocalPipeline) ---- */

/* Whether a value made on `from` goes to `to` by peer_move: two GPUs, one process (or one
 * GPU under PIPEC_TEST_PEER_COPY). */
static bool is_peer_move(const PcRuntime *rt, PcDevice from, PcDevice to) {
#ifdef PC_WITH_CUDA
    return !rt->comm && from.type == PC_CUDA && to.type == PC_CUDA &&
           (from.index != to.index || rt->peer_same_gpu);
#else
    (void)rt;
    (void)from;
    (void)to;
    return false;
#endif
}

#ifdef PC_WITH_CUDA
/* Copy v, just made on its GPU by the calling thread, to GPU `dev` without tying the two
 * GPUs' compute streams together (pc_op_to orders each current stream behind the other's,
 * so one GPU would wait for all the work the other had queued, and vice versa):
 *   - the copy runs on dev's stream for copies from v's GPU (pc_cuda_peer_stream, shared by
 *     the ranks on v's GPU) after an event recorded now on the producer's stream: it waits
 *     for v, not for work queued after v;
 *   - the consumer's stream waits for *done only when it uses the copy (settle);
 *   - v stays alive until the copy ran (rt->copies), instead of the producer's stream
 *     waiting for it.
 * The copy's memory is tied to the copy stream; settle records its use on the consumer's
 * stream. Under PIPEC_TEST_PEER_COPY the copy stream first fills the copy with NaN and
 * idles a while, so a consumer that used it without waiting would read NaN, and a source
 * released too early would be overwritten before the copy read it. Called without mu (it
 * allocates and enqueues). */
static PcStatus peer_move(PcRuntime *rt, PcTensor *v, PcDevice dev, PcTensor **out,
                          void **done) {
    *out = NULL;
    *done = NULL;
    reap_copies(rt, false);
    PcTensor *c = NULL, *dst = NULL;
    void *ready = NULL, *copied = NULL, *src_stream = NULL, *copy_stream = NULL, *cur = NULL;
    bool enqueued = false;
    PcStatus st = pc_op_contiguous(v, &c);
    if (st == PC_OK) st = pc_cuda_current_stream(v->device.index, &src_stream);
    if (st == PC_OK) st = pc_cuda_event_create(v->device.index, false, false, false, &ready);
    if (st == PC_OK) st = pc_cuda_event_record(ready, src_stream);
    if (st == PC_OK) st = pc_cuda_peer_stream(dev.index, v->device.index, &copy_stream);
    if (st == PC_OK) st = pc_cuda_current_stream(dev.index, &cur);
    if (st == PC_OK) st = pc_cuda_set_current_stream(dev.index, copy_stream);
    if (st == PC_OK) {
        st = pc_op_empty(c->ndim, c->shape, c->dtype, dev, &dst);
        PcStatus back = pc_cuda_set_current_stream(dev.index, cur);
        if (st == PC_OK) st = back;
    }
    if (st == PC_OK) st = pc_cuda_stream_wait_event(copy_stream, ready);
    if (st == PC_OK && rt->peer_same_gpu)
        st = pc_cuda_test_delay(copy_stream, dev.index, pc_tensor_data(dst),
                                pc_tensor_nbytes(dst), 300);
    if (st == PC_OK) {
        st = pc_cuda_memcpy_peer_async(copy_stream, dev.index, pc_tensor_data(dst),
                                       v->device.index, pc_tensor_data(c), pc_tensor_nbytes(c));
        enqueued = st == PC_OK;
    }
    if (st == PC_OK) st = pc_cuda_event_create(dev.index, false, false, false, &copied);
    if (st == PC_OK) st = pc_cuda_event_record(copied, copy_stream);
    if (st == PC_OK) st = pc_cuda_event_create(dev.index, false, false, false, done);
    if (st == PC_OK) st = pc_cuda_event_record(*done, copy_stream);
    pc_cuda_event_destroy(ready); /* released by CUDA once the copy stream passed it */
    if (st != PC_OK) {
        if (enqueued && pc_cuda_stream_synchronize(copy_stream) != PC_OK)
            pc_clear_error(); /* keep the first error; the source must outlive the copy */
        pc_cuda_event_destroy(copied);
        drop_event(done);
        pc_tensor_decref(dst);
        pc_tensor_decref(c);
        return st;
    }
    PcTensor *alias = NULL; /* the memory without the graph behind v */
    if (pc_op_detach(c, &alias) == PC_OK) {
        pc_tensor_decref(c);
        c = alias;
    } else {
        pc_clear_error(); /* keep v itself */
    }
    pthread_mutex_lock(&rt->copies_mu);
    if (rt->n_copies == rt->cap_copies) {
        int cap = rt->cap_copies ? 2 * rt->cap_copies : 16;
        struct PeerCopy *p = realloc(rt->copies, (size_t)cap * sizeof *p);
        if (p) {
            rt->copies = p;
            rt->cap_copies = cap;
        }
    }
    bool kept = rt->n_copies < rt->cap_copies;
    if (kept) rt->copies[rt->n_copies++] = (struct PeerCopy){c, copied};
    pthread_mutex_unlock(&rt->copies_mu);
    if (!kept) { /* no host memory to remember the source: wait for the copy instead */
        if (pc_cuda_event_synchronize(copied) != PC_OK) pc_clear_error();
        pc_cuda_event_destroy(copied);
        pc_tensor_decref(c);
    }
    *out = dst;
    return PC_OK;
}
#else
static PcStatus peer_move(PcRuntime *rt, PcTensor *v, PcDevice dev, PcTensor **out,
                          void **done) {
    (void)rt;
    (void)v;
    (void)dev;
    *out = NULL;
    *done = NULL;
    return pc_set_error(PC_ERR_DEVICE, "copies between GPUs need a build with CUDA");
}
#endif

/* Before the calling thread's stream uses t: wait for the copy that made it (peer_move). */
static PcStatus settle(PcTensor *t, void **done) {
    if (!*done) return PC_OK;
    PcStatus st = PC_OK;
#ifdef PC_WITH_CUDA
    void *cur;
    st = pc_cuda_current_stream(t->device.index, &cur);
    if (st == PC_OK) st = pc_cuda_stream_wait_event(cur, *done);
    if (st == PC_OK && t->storage->data) /* no memory behind an empty tensor */
        st = pc_cuda_record_stream(t->device.index, t->storage->data, cur);
#else
    (void)t;
#endif
    drop_event(done);
    return st;
}

/* Deliver the outputs of stage s, microbatch m, to the consumers whose edge kind is in
 * `kinds`. A copy to another GPU is made before taking mu (it allocates and enqueues). */
static PcStatus deliver_forward(PcRuntime *rt, int s, int m, int kinds) {
    RtStage *st = &rt->st[s];
    MbState *x = MB(rt, s, m);
    for (int o = 0; o < st->d.n_out; o++) {
        for (int c = 0; c < st->n_cons[o]; c++) {
            Consumer cn = st->cons[o][c];
            if (!(edge_kind(rt, s, cn.stage) & kinds)) continue;
            PcTensor *v = x->out[o], *val = v;
            PcDevice to = rt->st[cn.stage].d.device;
            void *done = NULL;
            if (is_peer_move(rt, v->device, to))
                PC_TRY(peer_move(rt, v, to, &val, &done));
            else
                pc_tensor_incref(v);
            pthread_mutex_lock(&rt->mu);
            MbState *y = MB(rt, cn.stage, m);
            if (y->in[cn.input]) { /* already delivered */
                pthread_mutex_unlock(&rt->mu);
                pc_tensor_decref(val);
                drop_event(&done);
                continue;
            }
            y->in[cn.input] = val;
            y->in_done[cn.input] = done;
            y->in_grad[cn.input] = v->requires_grad;
            y->in_missing--;
            pthread_cond_broadcast(&rt->cv);
            pthread_mutex_unlock(&rt->mu);
        }
    }
    return PC_OK;
}

/* Send input gradients of stage s, microbatch m, to the producers whose edge kind is in
 * `kinds`. A copy to another GPU is made before taking mu; a producer output with several
 * consumers sums their gradients under mu. A failure leaves the producer's count of
 * expected gradients alone, so it never runs its backward with one missing. */
static PcStatus deliver_backward(PcRuntime *rt, int s, int m, int kinds) {
    RtStage *st = &rt->st[s];
    MbState *x = MB(rt, s, m);
    PcStatus status = PC_OK;
    for (int k = 0; k < st->d.n_in && status == PC_OK; k++) {
        PcStageInput src = st->in[k];
        if (src.src_stage < 0) continue;
        if (!(edge_kind(rt, src.src_stage, s) & kinds)) continue;
        MbState *p = MB(rt, src.src_stage, m);
        int i = src.src_idx;
        PcTensor *g = x->gin[k];
        x->gin[k] = NULL;
        void *done = NULL;
        PcDevice dev = rt->st[src.src_stage].d.device;
        if (g && (!pc_device_eq(g->device, dev) || is_peer_move(rt, g->device, dev))) {
            PcTensor *moved = NULL;
            status = is_peer_move(rt, g->device, dev) ? peer_move(rt, g, dev, &moved, &done)
                                                      : pc_op_to(g, g->dtype, dev, &moved);
            pc_tensor_decref(g);
            g = moved;
            if (status != PC_OK) break;
        }
        pthread_mutex_lock(&rt->mu);
        if (p->gout_missing[i] <= 0) { /* already complete */
            pthread_mutex_unlock(&rt->mu);
            pc_tensor_decref(g);
            drop_event(&done);
            continue;
        }
        if (g && p->gout[i]) {
            PcTensor *sum = NULL;
            status = settle(p->gout[i], &p->gout_done[i]);
            if (status == PC_OK) status = settle(g, &done);
            if (status == PC_OK) status = pc_op_binary(PC_B_ADD, p->gout[i], g, 1.0, &sum);
            pc_tensor_decref(g);
            drop_event(&done);
            if (status == PC_OK) {
                pc_tensor_decref(p->gout[i]);
                p->gout[i] = sum;
            }
        } else if (g) {
            p->gout[i] = g;
            p->gout_done[i] = done;
        }
        if (status == PC_OK) p->gout_missing[i]--;
        pthread_cond_broadcast(&rt->cv);
        pthread_mutex_unlock(&rt->mu);
    }
    return status;
}

/* ---- transfers between processes (multi-process mode; one rank thread, no mutex needed
 * for this rank's own stages except around counters that wait_for reads) ---- */

/* Tag of a value: bit 61 (runtime; user point-to-point tags are below 2^61), direction
 * (bit 60: 0 forward, 1 gradient), step (16 bits), consumer stage (12), its input (12),
 * microbatch (20). set_comm refuses pipelines that do not fit. */
static uint64_t xfer_tag(const PcRuntime *rt, int bwd, int stage, int input, int mb) {
    return ((uint64_t)1 << 61) | ((uint64_t)bwd << 60) | ((uint64_t)(rt->step & 0xffffu) << 44) |
           ((uint64_t)(stage & 0xfff) << 32) | ((uint64_t)(input & 0xfff) << 20) |
           (uint64_t)(mb & 0xfffff);
}

static bool meta_wants_grad(const PcRuntime *rt, const PcValueMeta *m) {
    return rt->training && m->requires_grad && pc_dtype_is_float(m->dtype);
}

/* `t` (what stage s produced as `what` number `idx`: "output" or "gradient of input")
 * against its metadata: a tensor of another shape or dtype would not fit the peer's
 * buffer. Runs on every send, so it formats nothing unless it fails. */
static PcStatus check_meta(const PcTensor *t, const PcValueMeta *m, int s, int mb,
                           const char *what, int idx) {
    char a[160], b[160];
    if (t->dtype != m->dtype)
        return pc_set_error(PC_ERR_RUNTIME, "stage %d microbatch %d: %s %d: dtype mismatch: "
                                            "expected %s (from shape inference), got %s",
                            s, mb, what, idx, pc_dtype_name(m->dtype), pc_dtype_name(t->dtype));
    bool same = t->ndim == m->ndim;
    for (int d = 0; same && d < t->ndim; d++) same = t->shape[d] == m->shape[d];
    if (!same)
        return pc_set_error(PC_ERR_RUNTIME, "stage %d microbatch %d: %s %d: shape mismatch: "
                                            "expected %s (from shape inference), got %s",
                            s, mb, what, idx, pc_shape_str(m->ndim, m->shape, a, sizeof a),
                            pc_shape_str(t->ndim, t->shape, b, sizeof b));
    return PC_OK;
}

/* Where receives land: the stage's device, or host memory for a host-only transport (TCP
 * between processes whose stages are on GPUs), whence the consumer copies them. */
static PcDevice recv_device(const PcRuntime *rt, PcDevice stage_dev) {
    return rt->comm->ops->host_memory ? (PcDevice){PC_CPU, 0} : stage_dev;
}

static PcStatus send_value(PcRuntime *rt, PcTensor *t, int peer, uint64_t tag) {
    PcTensor *c;
    if (rt->comm->ops->host_memory && t->device.type != PC_CPU)
        PC_TRY(pc_op_to(t, t->dtype, (PcDevice){PC_CPU, 0}, &c)); /* staged (and contiguous) */
    else
        PC_TRY(pc_op_contiguous(t, &c));
    PcStatus st = rt->comm->ops->send(rt->comm, peer, tag, c);
    pc_tensor_decref(c);
    return st;
}

/* Outputs of stage s to their consumers on other ranks whose edge kind is in `kinds`
 * (SEND_F: the next stage; the forward itself: skip connections). */
static PcStatus send_forward(PcRuntime *rt, int s, int m, int kinds) {
    RtStage *st = &rt->st[s];
    MbState *x = MB(rt, s, m);
    for (int o = 0; o < st->d.n_out; o++) {
        for (int c = 0; c < st->n_cons[o]; c++) {
            Consumer cn = st->cons[o][c];
            if (!(edge_kind(rt, s, cn.stage) & kinds)) continue;
            PC_TRY(check_meta(x->out[o], &st->out_meta[o], s, m, "output", o));
            if (rt->training && x->out[o]->requires_grad && !st->out_meta[o].requires_grad)
                return pc_set_error(PC_ERR_RUNTIME,
                                    "stage %d output %d now requires grad, but did not when "
                                    "the pipeline was set up (shape inference at the first "
                                    "step): its gradient would be lost; build a new schedule "
                                    "after changing requires_grad", s, o);
            PC_TRY(send_value(rt, x->out[o], rt->st[cn.stage].d.rank,
                              xfer_tag(rt, 0, cn.stage, cn.input, m)));
        }
    }
    return PC_OK;
}

/* RECV_F (or the forward itself): post the receives of stage s's inputs from other ranks. */
static PcStatus post_inputs(PcRuntime *rt, int s, int m) {
    RtStage *st = &rt->st[s];
    MbState *x = MB(rt, s, m);
    if (x->in_posted) return PC_OK;
    x->in_posted = true;
    for (int k = 0; k < st->d.n_in; k++) {
        int src = st->in[k].src_stage;
        if (src < 0 || !is_foreign(rt, src)) continue;
        const PcValueMeta *mt = &st->in_meta[k];
        PcTensor *buf;
        PC_TRY(pc_op_empty(mt->ndim, mt->shape, mt->dtype, recv_device(rt, st->d.device),
                           &buf));
        PcStatus status = rt->comm->ops->recv_post(rt->comm, rt->st[src].d.rank,
                                                   xfer_tag(rt, 0, s, k, m), buf,
                                                   &x->in_req[k]);
        if (status != PC_OK) {
            pc_tensor_decref(buf);
            return status;
        }
        x->in[k] = buf;
    }
    return PC_OK;
}

static PcStatus wait_inputs(PcRuntime *rt, int s, int m) {
    RtStage *st = &rt->st[s];
    MbState *x = MB(rt, s, m);
    PC_TRY(post_inputs(rt, s, m));
    for (int k = 0; k < st->d.n_in; k++) {
        if (!x->in_req[k]) continue;
        void *req = x->in_req[k];
        x->in_req[k] = NULL;
        PC_TRY(rt->comm->ops->recv_wait(rt->comm, req));
        pthread_mutex_lock(&rt->mu);
        x->in_grad[k] = st->in_meta[k].requires_grad;
        x->in_missing--;
        pthread_mutex_unlock(&rt->mu);
    }
    return PC_OK;
}

/* Input gradients of stage s to producers on other ranks whose edge kind is in `kinds`
 * (SEND_B: the previous stage; the backward itself: skip connections). The producer
 * expects one message per consumer input whose value requires grad: an input whose
 * gradient is absent (not on the loss's path) sends zeros. */
static PcStatus send_backward(PcRuntime *rt, int s, int m, int kinds) {
    RtStage *st = &rt->st[s];
    MbState *x = MB(rt, s, m);
    for (int k = 0; k < st->d.n_in; k++) {
        int src = st->in[k].src_stage;
        if (src < 0 || !(edge_kind(rt, src, s) & kinds)) continue;
        PcTensor *g = x->gin[k];
        x->gin[k] = NULL;
        const PcValueMeta *mt = &st->in_meta[k];
        if (!meta_wants_grad(rt, mt)) {
            pc_tensor_decref(g);
            continue;
        }
        PcStatus status = PC_OK;
        if (!g) status = pc_op_full(mt->ndim, mt->shape, 0.0, mt->dtype, st->d.device, &g);
        if (status == PC_OK) status = check_meta(g, mt, s, m, "gradient of input", k);
        if (status == PC_OK)
            status = send_value(rt, g, rt->st[src].d.rank, xfer_tag(rt, 1, s, k, m));
        pc_tensor_decref(g);
        PC_TRY(status);
    }
    return PC_OK;
}

/* RECV_B (or the backward itself): post the receives of the gradients that consumers on
 * other ranks send for stage s's outputs, one per consumer (edge e, in output order). */
static PcStatus post_grads(PcRuntime *rt, int s, int m) {
    RtStage *st = &rt->st[s];
    MbState *x = MB(rt, s, m);
    if (x->g_posted) return PC_OK;
    x->g_posted = true;
    int e = 0;
    for (int o = 0; o < st->d.n_out; o++) {
        for (int c = 0; c < st->n_cons[o]; c++) {
            Consumer cn = st->cons[o][c];
            if (!is_foreign(rt, cn.stage)) continue;
            const PcValueMeta *mt = &st->out_meta[o];
            if (meta_wants_grad(rt, mt)) {
                PC_TRY(pc_op_empty(mt->ndim, mt->shape, mt->dtype, recv_device(rt, st->d.device),
                                   &x->g_buf[e]));
                PcStatus status = rt->comm->ops->recv_post(
                    rt->comm, rt->st[cn.stage].d.rank, xfer_tag(rt, 1, cn.stage, cn.input, m),
                    x->g_buf[e], &x->g_req[e]);
                if (status != PC_OK) { /* never read a buffer nothing was received into */
                    pc_tensor_decref(x->g_buf[e]);
                    x->g_buf[e] = NULL;
                    return status;
                }
            }
            e++;
        }
    }
    return PC_OK;
}

static PcStatus wait_grads(PcRuntime *rt, int s, int m) {
    RtStage *st = &rt->st[s];
    MbState *x = MB(rt, s, m);
    PC_TRY(post_grads(rt, s, m));
    int e = 0;
    for (int o = 0; o < st->d.n_out; o++) {
        for (int c = 0; c < st->n_cons[o]; c++) {
            if (!is_foreign(rt, st->cons[o][c].stage)) continue;
            int ei = e++;
            PcTensor *g = x->g_buf[ei];
            if (x->g_req[ei]) {
                void *req = x->g_req[ei];
                x->g_req[ei] = NULL;
                PC_TRY(rt->comm->ops->recv_wait(rt->comm, req));
            }
            /* g is NULL when no gradient travels on this edge (it does not require grad) */
            x->g_buf[ei] = NULL;
            PcStatus status = PC_OK;
            if (g && !pc_device_eq(g->device, st->d.device)) { /* staged through the host */
                PcTensor *moved;
                status = pc_op_to(g, g->dtype, st->d.device, &moved);
                pc_tensor_decref(g);
                PC_TRY(status);
                g = moved;
            }
            pthread_mutex_lock(&rt->mu);
            if (g && x->gout[o]) {
                PcTensor *sum;
                status = pc_op_binary(PC_B_ADD, x->gout[o], g, 1.0, &sum);
                if (status == PC_OK) {
                    pc_tensor_decref(x->gout[o]);
                    x->gout[o] = sum;
                }
                pc_tensor_decref(g);
            } else if (g) {
                x->gout[o] = g;
            }
            x->gout_missing[o]--;
            pthread_mutex_unlock(&rt->mu);
            PC_TRY(status);
        }
    }
    return PC_OK;
}

/* ---- compute actions ---- */

/* Issues the transfer the communicator holds back (comm.h: NCCL holds a send, to pair it
 * with a receive from the same peer that follows). Runs before each leaf action that is
 * not a transfer, before user callbacks (loss, dW) and before the end-of-step work:
 * compute or user code may block the host while the peer waits for a held send. */
static PcStatus comm_flush(PcRuntime *rt) {
    return rt->comm && rt->comm->ops->flush ? rt->comm->ops->flush(rt->comm) : PC_OK;
}

static PcStatus do_forward(PcRuntime *rt, int s, int m) {
    RtStage *st = &rt->st[s];
    MbState *x = MB(rt, s, m);
    PcStatus status;
    if (x->fwd_done)
        return pc_set_error(PC_ERR_RUNTIME, "schedule error: stage %d forward of microbatch %d "
                                            "ran twice", s, m);
    if (rt->comm) PC_TRY(wait_inputs(rt, s, m));
    pthread_mutex_lock(&rt->mu);
    status = wait_for(rt, inputs_ready, s, m, "inputs");
    pthread_mutex_unlock(&rt->mu);
    PC_TRY(status);
    for (int k = 0; k < st->d.n_in; k++) PC_TRY(settle(x->in[k], &x->in_done[k]));
    if (rt->record && tl_compute_start < 0) tl_compute_start = now_us(rt);
    PcTensor **leaves = calloc((size_t)(st->d.n_in + 1), sizeof(PcTensor *));
    if (!leaves) return pc_set_error(PC_ERR_OOM, "out of host memory in forward");
    for (int k = 0; k < st->d.n_in; k++) {
        PcTensor *v;
        bool grad;
        if (st->in[k].src_stage < 0) {
            /* a model input that requires grad gets its gradient (pc_runtime_input_grads) */
            v = rt->model_in[m * rt->n_model_in + st->in[k].src_idx];
            grad = v->requires_grad && rt->training;
        } else {
            v = x->in[k];
            grad = x->in_grad[k] && rt->training;
        }
        PcTensor *leaf;
        bool was = pc_grad_enabled();
        pc_set_grad_enabled(false);
        status = pc_device_eq(v->device, st->d.device) ? pc_op_detach(v, &leaf)
                                                        : pc_op_to(v, v->dtype, st->d.device, &leaf);
        if (status == PC_OK && leaf == v) { /* pc_op_to returned v itself: make a leaf */
            pc_tensor_decref(leaf);
            status = pc_op_detach(v, &leaf);
        }
        pc_set_grad_enabled(was);
        if (status != PC_OK) goto out;
        leaf->requires_grad = grad && pc_dtype_is_float(leaf->dtype);
        leaves[k] = leaf;
    }
    /* the stored inputs become the leaves (keeps them for backward) */
    for (int k = 0; k < st->d.n_in; k++) {
        pc_tensor_decref(x->in[k]);
        x->in[k] = leaves[k];
        leaves[k] = NULL;
    }
    {
        bool was = pc_grad_enabled();
        pc_set_grad_enabled(rt->training);
        status = pc_program_run(st->d.prog, x->in, st->d.ext, x->out);
        if (status == PC_OK && st->is_last && rt->cb.loss &&
            (status = comm_flush(rt)) == PC_OK) { /* the loss function is user code */
            bool paused = pc_wgrad_batch_pause(pc_wgrad_batch_current()); /* user code */
            status = rt->cb.loss(rt->cb.ctx, s, m, st->d.n_out, x->out, &x->loss);
            if (paused) pc_wgrad_batch_resume(pc_wgrad_batch_current());
        }
        pc_set_grad_enabled(was);
    }
    if (status != PC_OK) goto out;
    x->fwd_done = true;
    if (rt->comm) status = send_forward(rt, s, m, XF_SKIP);
    if (status == PC_OK) status = deliver_forward(rt, s, m, rt->comm ? XF_LOCAL : XF_LOCAL | XF_SKIP);
out:
    for (int k = 0; k < st->d.n_in; k++) pc_tensor_decref(leaves[k]);
    free(leaves);
    return status;
}

/* Input-gradient half of the backward (also the whole backward for dW stages). */
static PcStatus do_backward_input(PcRuntime *rt, int s, int m, bool full) {
    RtStage *st = &rt->st[s];
    MbState *x = MB(rt, s, m);
    PcStatus status;
    if (!x->fwd_done)
        return pc_set_error(PC_ERR_RUNTIME, "schedule error: backward of stage %d microbatch %d "
                                            "before its forward", s, m);
    if (x->bwd_done)
        return pc_set_error(PC_ERR_RUNTIME, "schedule error: stage %d backward of microbatch %d "
                                            "ran twice", s, m);
    if (!st->is_last) {
        if (rt->comm) PC_TRY(wait_grads(rt, s, m));
        pthread_mutex_lock(&rt->mu);
        status = wait_for(rt, grads_ready, s, m, "output gradients");
        pthread_mutex_unlock(&rt->mu);
        PC_TRY(status);
        for (int o = 0; o < st->d.n_out; o++) PC_TRY(settle(x->gout[o], &x->gout_done[o]));
    }
    if (rt->record && tl_compute_start < 0) tl_compute_start = now_us(rt);
    int n_roots = 0, n_grad_in = 0;
    PcTensor *roots[PC_CALL_MAX_IN], *grads[PC_CALL_MAX_IN], *inputs[PC_CALL_MAX_IN];
    int in_pos[PC_CALL_MAX_IN];
    if (st->is_last) {
        if (!x->loss)
            return pc_set_error(PC_ERR_RUNTIME, "the last stage has no loss to backward: pass "
                                                "loss_fn to the schedule");
        roots[n_roots] = x->loss;
        grads[n_roots++] = NULL;
    } else {
        for (int o = 0; o < st->d.n_out && n_roots < PC_CALL_MAX_IN; o++) {
            if (!x->gout[o] || !x->out[o]->requires_grad) continue;
            roots[n_roots] = x->out[o];
            grads[n_roots++] = x->gout[o];
        }
    }
    for (int k = 0; k < st->d.n_in && n_grad_in < PC_CALL_MAX_IN; k++) {
        if (x->in[k] && x->in[k]->requires_grad) {
            in_pos[n_grad_in] = k;
            inputs[n_grad_in++] = x->in[k];
        }
    }
    PcTensor *res[PC_CALL_MAX_IN] = {NULL};
    bool has_dw = rt->cb.has_dw && rt->cb.has_dw(rt->cb.ctx, s);
    if (n_roots > 0 && roots[0]->requires_grad) {
        if (has_dw || full) {
            /* full backward: weights accumulate now (a dW stage defers them itself) */
            /* the inputs' gradients are read back below: never deferred */
            PcWgradBatch *wb = pc_wgrad_batch_current();
            pc_wgrad_batch_exclude(wb, n_grad_in, inputs);
            status = pc_autograd_backward(n_roots, roots, grads, false);
            pc_wgrad_batch_exclude(wb, 0, NULL);
            for (int i = 0; status == PC_OK && i < n_grad_in; i++) {
                res[i] = inputs[i]->grad;
                inputs[i]->grad = NULL;
            }
        } else {
            status = pc_autograd_backward_input(n_roots, roots, grads, n_grad_in, inputs, res,
                                                &x->work);
        }
        if (status != PC_OK) return status;
    }
    for (int i = 0; i < n_grad_in; i++) x->gin[in_pos[i]] = res[i];
    x->bwd_done = true;
    if (rt->comm) {
        PC_TRY(send_backward(rt, s, m, XF_SKIP));
        return deliver_backward(rt, s, m, XF_LOCAL);
    }
    return deliver_backward(rt, s, m, XF_LOCAL | XF_SKIP);
}

static PcStatus do_backward_weight(PcRuntime *rt, int s, int m) {
    MbState *x = MB(rt, s, m);
    PcStatus status = PC_OK;
    if (!x->bwd_done)
        return pc_set_error(PC_ERR_RUNTIME, "schedule error: W of stage %d microbatch %d before "
                                            "its I", s, m);
    if (rt->cb.has_dw && rt->cb.has_dw(rt->cb.ctx, s)) {
        PC_TRY(comm_flush(rt));
        bool paused = pc_wgrad_batch_pause(pc_wgrad_batch_current()); /* user code */
        status = rt->cb.dw(rt->cb.ctx, s, m);
        if (paused) pc_wgrad_batch_resume(pc_wgrad_batch_current());
    } else if (x->work) {
        status = pc_weight_work_run(x->work, false);
        pc_weight_work_free(x->work);
        x->work = NULL;
    }
    /* activations are no longer needed (last-stage outputs stay for merging) */
    if (!rt->st[s].is_last) decref_array(x->out, rt->st[s].d.n_out);
    decref_array(x->in, rt->st[s].d.n_in);
    decref_array(x->gout, rt->st[s].d.n_out);
    return status;
}

/* ---- the rank loop ---- */

static PcStatus run_leaf(PcRuntime *rt, PcActType type, int s, int m) {
    if (type == PC_ACT_UNSHARD || type == PC_ACT_RESHARD || type == PC_ACT_REDUCE_GRAD)
        return PC_OK;
    if (s < 0 || s >= rt->n_stages || m < 0 || m >= rt->n_mb)
        return pc_set_error(PC_ERR_INVALID, "schedule action refers to stage %d microbatch %d "
                                            "(pipeline has %d stages, %d microbatches)",
                            s, m, rt->n_stages, rt->n_mb);
    bool bwd = type == PC_ACT_B || type == PC_ACT_I || type == PC_ACT_W ||
               type == PC_ACT_SEND_B || type == PC_ACT_RECV_B;
    if (bwd && !rt->training) return PC_OK;
    switch (type) {
    case PC_ACT_F: return do_forward(rt, s, m);
    case PC_ACT_I: return do_backward_input(rt, s, m, false);
    case PC_ACT_W: return do_backward_weight(rt, s, m);
    case PC_ACT_B:
        PC_TRY(do_backward_input(rt, s, m, false));
        return do_backward_weight(rt, s, m);
    case PC_ACT_SEND_F:
        if (!MB(rt, s, m)->fwd_done)
            return pc_set_error(PC_ERR_RUNTIME, "schedule error: SEND_F of stage %d microbatch "
                                                "%d before its forward", s, m);
        if (rt->comm) return send_forward(rt, s, m, XF_ADJ);
        return deliver_forward(rt, s, m, XF_ADJ);
    case PC_ACT_RECV_F:
    case PC_ACT_RECV_B:
        /* a receive is only posted here (as torch's runtime does); the action that uses the
         * data waits for it, so a receive for the next microbatch placed before the current
         * backward does not stall that backward */
        if (!rt->comm) return PC_OK;
        return type == PC_ACT_RECV_F ? post_inputs(rt, s, m) : post_grads(rt, s, m);
    case PC_ACT_SEND_B:
        if (!MB(rt, s, m)->bwd_done)
            return pc_set_error(PC_ERR_RUNTIME, "schedule error: SEND_B of stage %d microbatch "
                                                "%d before its backward", s, m);
        if (rt->comm) return send_backward(rt, s, m, XF_ADJ);
        return deliver_backward(rt, s, m, XF_ADJ);
    default: break;
    }
    return pc_set_error(PC_ERR_INVALID, "runtime: unsupported action type %s",
                        pc_act_type_name(type));
}

/* Appends a timeline event for action a, or for the text `name` when a is NULL; returns its
 * index (or -1 when out of memory). */
static int record_event(PcRuntime *rt, int rank, const PcAction *a, const char *name, double t0,
                        double t1) {
    pthread_mutex_lock(&rt->mu);
    if (rt->n_events == rt->cap_events) {
        int nc = rt->cap_events ? rt->cap_events * 2 : 256;
        PcTimelineEvent *e = realloc(rt->events, sizeof *e * (size_t)nc);
        if (!e) {
            pthread_mutex_unlock(&rt->mu);
            return -1;
        }
        rt->events = e;
        rt->cap_events = nc;
    }
    int idx = rt->n_events++;
    PcTimelineEvent *ev = &rt->events[idx];
    ev->rank = rank;
    if (a)
        pc_action_format(a, ev->action, sizeof ev->action);
    else
        snprintf(ev->action, sizeof ev->action, "%s", name);
    ev->start_us = t0;
    ev->end_us = t1;
    pthread_mutex_unlock(&rt->mu);
    return idx;
}

/* ---- GPU timing of a rank's actions (timeline only) ----
 * On a CUDA stage, host time measures when work was enqueued, not when it ran: a timed
 * rank records a CUDA event pair around each compute action on the stage's stream and,
 * once its actions are done, rewrites those events' times as reference + GPU elapsed time,
 * the reference being an event recorded when the rank started. */
typedef struct GpuMark {
    int event;            /* index into rt->events */
    void *start, *end;    /* CUDA events (owned) */
} GpuMark;

typedef struct GpuTimer {
    int dev;              /* -1: the rank has no CUDA stage (host timing) */
    void *ref;            /* event recorded at the rank's start */
    double ref_us;        /* host time of that record */
    GpuMark *marks;
    int n, cap;
} GpuTimer;

static void gpu_timer_start(PcRuntime *rt, int rank, GpuTimer *g) {
    memset(g, 0, sizeof *g);
    g->dev = -1;
#ifdef PC_WITH_CUDA
    if (!rt->record) return;
    for (int s = 0; s < rt->n_stages; s++) {
        if (rt->st[s].d.rank != rank || rt->st[s].d.device.type != PC_CUDA) continue;
        int dev = rt->st[s].d.device.index;
        void *stream;
        if (pc_cuda_event_create(dev, true, false, false, &g->ref) != PC_OK ||
            pc_cuda_current_stream(dev, &stream) != PC_OK ||
            pc_cuda_event_record(g->ref, stream) != PC_OK) {
            pc_clear_error();
            pc_cuda_event_destroy(g->ref);
            g->ref = NULL;
            return;
        }
        g->dev = dev;
        g->ref_us = now_us(rt);
        return;
    }
#else
    (void)rt;
    (void)rank;
#endif
}

/* Around one action: phase 0 before it (start event), 1 after it (end event). */
static void gpu_timer_mark(GpuTimer *g, int phase, int event) {
#ifdef PC_WITH_CUDA
    if (g->dev < 0) return;
    void *stream, *ev = NULL;
    if (pc_cuda_current_stream(g->dev, &stream) != PC_OK ||
        pc_cuda_event_create(g->dev, true, false, false, &ev) != PC_OK ||
        pc_cuda_event_record(ev, stream) != PC_OK) {
        pc_clear_error();
        pc_cuda_event_destroy(ev);
        return;
    }
    if (phase == 0) {
        if (g->n == g->cap) {
            int nc = g->cap ? g->cap * 2 : 64;
            GpuMark *m = realloc(g->marks, sizeof *m * (size_t)nc);
            if (!m) {
                pc_cuda_event_destroy(ev);
                return;
            }
            g->marks = m;
            g->cap = nc;
        }
        g->marks[g->n++] = (GpuMark){-1, ev, NULL};
    } else if (g->n > 0 && !g->marks[g->n - 1].end) {
        g->marks[g->n - 1].end = ev;
        g->marks[g->n - 1].event = event;
    } else {
        pc_cuda_event_destroy(ev);
    }
#else
    (void)g;
    (void)phase;
    (void)event;
#endif
}

/* After the rank's actions: GPU times into the timeline, events freed. */
static void gpu_timer_finish(PcRuntime *rt, GpuTimer *g, bool ok) {
#ifdef PC_WITH_CUDA
    for (int i = 0; i < g->n; i++) {
        GpuMark *m = &g->marks[i];
        float a_ms, b_ms;
        if (ok && m->event >= 0 && m->end && pc_cuda_event_synchronize(m->end) == PC_OK &&
            pc_cuda_event_elapsed_time(g->ref, m->start, &a_ms) == PC_OK &&
            pc_cuda_event_elapsed_time(g->ref, m->end, &b_ms) == PC_OK) {
            pthread_mutex_lock(&rt->mu);
            rt->events[m->event].start_us = g->ref_us + (double)a_ms * 1e3;
            rt->events[m->event].end_us = g->ref_us + (double)b_ms * 1e3;
            pthread_mutex_unlock(&rt->mu);
        }
        if (ok) pc_clear_error(); /* a failed query only loses that event's GPU time */
        pc_cuda_event_destroy(m->start);
        pc_cuda_event_destroy(m->end);
    }
    pc_cuda_event_destroy(g->ref);
#else
    (void)rt;
    (void)ok;
#endif
    free(g->marks);
    memset(g, 0, sizeof *g);
}

/* A user function for an action: it may read .grad, so deferred weight gradients are added
 * first and none is deferred while it runs. */
static PcStatus custom_call(PcRuntime *rt, PcWgradBatch *wb, int rank, const char *txt) {
    PC_TRY(comm_flush(rt));
    PC_TRY(pc_wgrad_batch_flush(wb));
    bool paused = pc_wgrad_batch_pause(wb);
    PcStatus st = rt->cb.custom(rt->cb.ctx, rank, txt);
    if (paused) pc_wgrad_batch_resume(wb);
    return st;
}

/* Whether a rank's actions hold W (weight-gradient) actions, also inside OVERLAP_F_B. */
static bool has_weight_actions(const PcActionList *actions) {
    for (int i = 0; i < actions->len; i++) {
        PcActionSub leaves[PC_ACTION_MAX_SUB];
        int n = pc_action_leaves(&actions->items[i], leaves);
        for (int j = 0; j < n; j++)
            if (leaves[j].type == PC_ACT_W) return true;
    }
    return false;
}

PcStatus pc_runtime_run_rank(PcRuntime *rt, int rank, const PcActionList *actions) {
    PcStatus status = PC_OK;
    PC_CHECK(!rt->comm || rank == rt->my_rank, PC_ERR_INVALID,
             "runtime: this process runs rank %d, not %d", rt->my_rank, rank);
    GpuTimer gt;
    gpu_timer_start(rt, rank, &gt);
    /* weight gradients of this rank's microbatches are added into .grad in batches
     * (csrc/ops/wgrad_batch.h), all of them before the step ends */
    PcWgradBatch *wb = NULL;
    if (rt->training) status = pc_wgrad_batch_open(&wb, has_weight_actions(actions));
    for (int i = 0; i < actions->len && status == PC_OK; i++) {
        const PcAction *a = &actions->items[i];
        if (a->type == PC_ACT_IDLE) continue;
        if (atomic_load(&rt->interrupted)) {
            status = interrupted_status();
            break;
        }
        double t0 = rt->record ? now_us(rt) : 0;
        tl_compute_start = -1.0;
        bool timed = rt->record && pc_act_type_is_compute(a->type);
        if (timed) gpu_timer_mark(&gt, 0, -1);
        PcActionSub leaves[PC_ACTION_MAX_SUB];
        int n = pc_action_leaves(a, leaves);
        if (rt->cb.has_custom && rt->cb.has_custom(rt->cb.ctx, a->type)) {
            char txt[PC_ACTION_TEXT_MAX];
            pc_action_format(a, txt, sizeof txt);
            status = custom_call(rt, wb, rank, txt);
            n = 0; /* the user function replaced the built-in handler */
        }
        for (int j = 0; j < n && status == PC_OK; j++) {
            if (leaves[j].stage >= 0 && leaves[j].stage < rt->n_stages &&
                rt->st[leaves[j].stage].d.rank != rank) {
                status = pc_set_error(PC_ERR_INVALID, "schedule error: rank %d was given action "
                                                      "for stage %d, which runs on rank %d",
                                      rank, leaves[j].stage, rt->st[leaves[j].stage].d.rank);
                break;
            }
            if (!pc_act_type_is_comm(leaves[j].type) && (status = comm_flush(rt)) != PC_OK)
                break;
            if (a->n_sub > 0 && rt->cb.has_custom &&
                rt->cb.has_custom(rt->cb.ctx, leaves[j].type)) {
                PcAction leaf = pc_action_from_sub(leaves[j]);
                char txt[PC_ACTION_TEXT_MAX];
                pc_action_format(&leaf, txt, sizeof txt);
                status = custom_call(rt, wb, rank, txt);
            } else {
                status = run_leaf(rt, leaves[j].type, leaves[j].stage, leaves[j].mb);
            }
        }
        if (status == PC_OK && timed)
            gpu_timer_mark(&gt, 1, record_event(rt, rank, a, NULL,
                                                tl_compute_start >= 0 ? tl_compute_start : t0,
                                                now_us(rt)));
        if (status != PC_OK) {
            char txt[PC_ACTION_TEXT_MAX];
            pc_action_format(a, txt, sizeof txt);
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", pc_last_error());
            if (!strstr(msg, "pipeline aborted"))
                pc_set_error(status, "rank %d, action %s (#%d of its list): %s", rank, txt, i,
                             msg);
        }
    }
    if (status == PC_OK) status = comm_flush(rt); /* the last transfers, before the end's work */
    if (status == PC_OK && pc_wgrad_batch_pending(wb)) {
        /* the batched weight gradients left for the step's end: an event of their own in the
         * timeline (not an action, so charts of actions leave it out; busy times include it) */
        double t0 = rt->record ? now_us(rt) : 0;
        if (rt->record) gpu_timer_mark(&gt, 0, -1);
        status = pc_wgrad_batch_flush(wb);
        if (status == PC_OK && rt->record)
            gpu_timer_mark(&gt, 1, record_event(rt, rank, NULL, PC_WGRAD_FLUSH_EVENT, t0,
                                                now_us(rt)));
    }
    pc_wgrad_batch_close(wb);
    /* multi-process: the step ends when this rank's transfers have (the buffers they read
     * stay valid until then, and a dead peer is found here, within the deadline) */
    if (status == PC_OK && rt->comm && rt->comm->ops->wait_idle)
        status = rt->comm->ops->wait_idle(rt->comm);
    gpu_timer_finish(rt, &gt, status == PC_OK);
    if (status != PC_OK) {
        pthread_mutex_lock(&rt->mu);
        if (!rt->failed) {
            rt->failed = true;
            rt->failed_rank = rank;
        }
        pthread_cond_broadcast(&rt->cv);
        pthread_mutex_unlock(&rt->mu);
    }
    return status;
}

PcStatus pc_runtime_run_builtin(PcRuntime *rt, int rank, const PcAction *action) {
    PC_CHECK(!rt->comm || rank == rt->my_rank, PC_ERR_INVALID,
             "run_builtin: this process runs rank %d, not %d", rt->my_rank, rank);
    PcActionSub leaves[PC_ACTION_MAX_SUB];
    int n = pc_action_leaves(action, leaves);
    for (int j = 0; j < n; j++) {
        int s = leaves[j].stage;
        if (s >= 0 && s < rt->n_stages && rt->st[s].d.rank != rank)
            return pc_set_error(PC_ERR_INVALID, "run_builtin: stage %d runs on rank %d, not %d",
                                s, rt->st[s].d.rank, rank);
        PC_TRY(run_leaf(rt, leaves[j].type, s, leaves[j].mb));
    }
    return PC_OK;
}

PcStatus pc_runtime_outputs(PcRuntime *rt, int mb, int *n_out, PcTensor ***outs) {
    RtStage *st = &rt->st[rt->n_stages - 1];
    *n_out = 0;
    *outs = NULL;
    PC_CHECK(mb >= 0 && mb < rt->n_mb, PC_ERR_INDEX, "microbatch %d out of range (%d)", mb,
             rt->n_mb);
    PC_CHECK(!is_foreign(rt, rt->n_stages - 1), PC_ERR_RUNTIME,
             "the model outputs live on rank %d (the last stage's), not on rank %d",
             st->d.rank, rt->my_rank);
    MbState *x = MB(rt, rt->n_stages - 1, mb);
    *n_out = st->d.n_out;
    *outs = x->out;
    if (!x->fwd_done)
        return pc_set_error(PC_ERR_RUNTIME, "microbatch %d never reached the last stage", mb);
    return PC_OK;
}

int pc_runtime_input_grads(PcRuntime *rt, int mb, int cap, int *idx, PcTensor **grads) {
    int n = 0;
    if (mb < 0 || mb >= rt->n_mb) return 0;
    for (int s = 0; s < rt->n_stages; s++) {
        if (is_foreign(rt, s)) continue;
        const RtStage *st = &rt->st[s];
        const MbState *x = MB(rt, s, mb);
        for (int k = 0; x->gin && k < st->d.n_in; k++) {
            if (st->in[k].src_stage >= 0 || !x->gin[k]) continue;
            if (n < cap) {
                idx[n] = st->in[k].src_idx;
                grads[n] = x->gin[k];
            }
            n++;
        }
    }
    return n;
}

PcTensor *pc_runtime_loss(PcRuntime *rt, int mb) {
    if (mb < 0 || mb >= rt->n_mb || is_foreign(rt, rt->n_stages - 1)) return NULL;
    return MB(rt, rt->n_stages - 1, mb)->loss;
}

int pc_runtime_timeline(const PcRuntime *rt, const PcTimelineEvent **events) {
    *events = rt->events;
    return rt->n_events;
}
