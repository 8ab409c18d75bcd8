/* wgrad_batch.c — weight-gradient batching across microbatches (see wgrad_batch.h).
 *
 * Ownership: a window owns a reference to every leaf it holds products for and to both
 * operands of every deferred product, until that leaf's batch runs or the window closes.
 * It holds no reference to .grad (pc_autograd_fusable_grad needs .grad unshared), and reads
 * leaf->grad when the batch runs. Only the thread that opened a window touches it.
 */
#include "wgrad_batch.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <ctype.h>
#include <string.h>

#include "internal.h"

typedef struct Part {
    PcTensor *l, *r;     /* owned: l (p, m), r (m, q) */
    unsigned lv, rv;     /* their storages' versions when deferred */
} Part;

typedef struct LeafWork {
    PcTensor *leaf;      /* owned */
    double alpha;
    int64_t rows;        /* sum of the parts' m */
    int n, cap;
    Part *parts;
} LeafWork;

struct PcWgradBatch {
    int64_t max_rows;
    bool suspended;
    int n_excluded;
    PcTensor *const *excluded; /* borrowed: leaves whose .grad the caller reads back now */
    int n, cap;
    LeafWork *leaves;
};

static _Thread_local PcWgradBatch *tl_batch = NULL;
static atomic_llong g_batched, g_deferred;
static atomic_llong g_rows = -1; /* -1: not read from the environment yet; else rows >= 0 or
                                    PC_WGRAD_AUTO */

/* PIPEC_WGRAD_BATCH_ROWS: unset, empty or "auto" (any case, spaces around) is auto; a
 * number >= 0 is that many rows; "off", "false", "no", "none" and anything unreadable
 * (a negative number, "1e3") turn batching off, the conservative reading. */
static long long parse_rows(const char *e) {
    if (!e) return PC_WGRAD_AUTO;
    while (isspace((unsigned char)*e)) e++;
    size_t n = strlen(e);
    while (n > 0 && isspace((unsigned char)e[n - 1])) n--;
    bool is_auto = n == 4;
    for (size_t i = 0; is_auto && i < 4; i++) is_auto = tolower((unsigned char)e[i]) == "auto"[i];
    if (n == 0 || is_auto) return PC_WGRAD_AUTO;
    long long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)e[i]) || v > (1LL << 40)) return 0;
        v = v * 10 + (e[i] - '0');
    }
    return v;
}

int64_t pc_wgrad_batch_rows(void) {
    long long v = atomic_load(&g_rows);
    if (v != -1) return v;
    long long parsed = parse_rows(getenv("PIPEC_WGRAD_BATCH_ROWS"));
    long long expect = -1;
    atomic_compare_exchange_strong(&g_rows, &expect, parsed);
    return atomic_load(&g_rows);
}

void pc_wgrad_batch_set_rows(int64_t rows) {
    atomic_store(&g_rows, rows < 0 ? PC_WGRAD_AUTO : rows);
}

long long pc_wgrad_batched_count(void) { return atomic_load(&g_batched); }

long long pc_wgrad_deferred_count(void) { return atomic_load(&g_deferred); }

static void part_clear(Part *p) {
    pc_tensor_decref(p->l);
    pc_tensor_decref(p->r);
    memset(p, 0, sizeof *p);
}

static void leaf_clear(LeafWork *w) {
    for (int i = 0; i < w->n; i++) part_clear(&w->parts[i]);
    w->n = 0;
    w->rows = 0;
}

/* rows of the parts [0, n) copied one after another: the l's into a (p, rows) matrix stored
 * column by column (its transpose contiguous, as dY^T views are), the r's into a contiguous
 * (rows, q) one. New references in *L and *R. */
static PcStatus concat_parts(LeafWork *w, PcTensor **L, PcTensor **R) {
    *L = *R = NULL;
    const PcTensor *l0 = w->parts[0].l, *r0 = w->parts[0].r;
    int64_t p = l0->shape[0], q = r0->shape[1];
    int64_t lshape[2] = {w->rows, p}, rshape[2] = {w->rows, q};
    PcTensor *lt = NULL, *rb = NULL, *dst = NULL, *src = NULL;
    PcStatus st = PC_OK;
    const PcBackend *be = pc_be(l0); /* sets the error when there is none */
    if (!be) return PC_ERR_DEVICE;
    PC_TRY_GOTO(st, pc_tensor_empty(2, lshape, l0->dtype, l0->device, &lt));
    PC_TRY_GOTO(st, pc_tensor_empty(2, rshape, r0->dtype, r0->device, &rb));
    int64_t off = 0;
    for (int i = 0; i < w->n; i++) {
        Part *pt = &w->parts[i];
        int64_t m = pt->l->shape[1];
        /* l^T (m, p) into rows [off, off + m) of lt: both contiguous when l is the transposed
         * view of a contiguous dY, so the copy is a plain memcpy */
        int64_t ls[2] = {m, p}, lstr[2] = {p, 1};
        int64_t tstr[2] = {pt->l->strides[1], pt->l->strides[0]};
        PC_TRY_GOTO(st, pc_tensor_view_of(lt->storage, lt->offset + off * p, 2, ls, lstr,
                                          lt->dtype, &dst));
        PC_TRY_GOTO(st, pc_tensor_view_of(pt->l->storage, pt->l->offset, 2, ls, tstr,
                                          pt->l->dtype, &src));
        PC_TRY_GOTO(st, be->copy(dst, src));
        pc_tensor_decref(dst);
        pc_tensor_decref(src);
        dst = src = NULL;
        int64_t rs[2] = {m, q}, rstr[2] = {q, 1};
        PC_TRY_GOTO(st, pc_tensor_view_of(rb->storage, rb->offset + off * q, 2, rs, rstr,
                                          rb->dtype, &dst));
        PC_TRY_GOTO(st, be->copy(dst, pt->r));
        pc_tensor_decref(dst);
        dst = NULL;
        off += m;
    }
    int64_t vs[2] = {p, w->rows}, vstr[2] = {1, p};
    PC_TRY_GOTO(st, pc_tensor_view_of(lt->storage, lt->offset, 2, vs, vstr, lt->dtype, L));
    *R = rb;
    rb = NULL;
fail:
    pc_tensor_decref(dst);
    pc_tensor_decref(src);
    pc_tensor_decref(lt);
    pc_tensor_decref(rb);
    return st;
}

/* Run a leaf's deferred products as one GEMM into its .grad (made when absent). */
static PcStatus run_leaf(LeafWork *w) {
    if (w->n == 0) return PC_OK;
    PcTensor *leaf = w->leaf;
    char buf[96];
    for (int i = 0; i < w->n; i++)
        if (atomic_load(&w->parts[i].l->storage->version) != w->parts[i].lv ||
            atomic_load(&w->parts[i].r->storage->version) != w->parts[i].rv)
            return pc_set_error(PC_ERR_RUNTIME,
                                "a value needed for the weight gradient of a %s %s parameter "
                                "was modified in place before that gradient was computed "
                                "(weight-gradient batching defers it to the end of the "
                                "step; pipec.pipelining.set_weight_grad_batching(0) turns "
                                "it off)",
                                pc_dtype_name(leaf->dtype),
                                pc_shape_str(leaf->ndim, leaf->shape, buf, sizeof buf));
    PcTensor *L = NULL, *R = NULL, *fresh = NULL;
    PcStatus st = PC_OK;
    if (w->n == 1) {
        L = w->parts[0].l;
        R = w->parts[0].r;
        pc_tensor_incref(L);
        pc_tensor_incref(R);
    } else {
        PC_TRY_GOTO(st, concat_parts(w, &L, &R));
    }
    if (!leaf->requires_grad) goto done; /* turned off since: nothing to accumulate */
    PcTensor *acc = leaf->grad;
    bool fits = acc && acc->ndim == 2 && acc->shape[0] == L->shape[0] &&
                acc->shape[1] == R->shape[1] && acc->dtype == L->dtype &&
                pc_device_eq(acc->device, L->device);
    if (acc && !fits)
        PC_TRY_GOTO(st, pc_set_error(PC_ERR_RUNTIME,
                                     "weight-gradient batching: the parameter's .grad changed "
                                     "to %s %s during the step",
                                     pc_dtype_name(acc->dtype),
                                     pc_shape_str(acc->ndim, acc->shape, buf, sizeof buf)));
    if (acc && pc_tensor_is_contiguous(acc)) {
        PC_TRY_GOTO(st, pc_gemm_into(L, R, w->alpha, 1.0, acc));
        pc_tensor_bump_version(acc);
    } else {
        int64_t shape[2] = {L->shape[0], R->shape[1]};
        PC_TRY_GOTO(st, pc_tensor_empty(2, shape, L->dtype, L->device, &fresh));
        PC_TRY_GOTO(st, pc_gemm_into(L, R, w->alpha, 0.0, fresh));
        if (acc) { /* a strided .grad: add the product into it, as AccumulateGrad does */
            const PcBackend *be = pc_be(acc);
            if (!be) PC_TRY_GOTO(st, PC_ERR_DEVICE);
            PC_TRY_GOTO(st, be->binary(PC_B_ADD, acc, acc, fresh, 1.0));
            pc_tensor_bump_version(acc);
        } else {
            leaf->grad = fresh;
            fresh = NULL;
        }
    }
    if (w->n > 1) atomic_fetch_add(&g_batched, w->n);
done:
    leaf_clear(w);
fail:
    pc_tensor_decref(L);
    pc_tensor_decref(R);
    pc_tensor_decref(fresh);
    return st;
}

PcStatus pc_wgrad_batch_open(PcWgradBatch **out, bool has_w) {
    *out = NULL;
    int64_t rows = pc_wgrad_batch_rows();
    if (rows == PC_WGRAD_AUTO) rows = has_w ? 0 : PC_WGRAD_AUTO_ROWS;
    if (rows <= 0) return PC_OK;
    if (tl_batch) return PC_OK; /* nested: the open window covers it */
    PcWgradBatch *b = calloc(1, sizeof *b);
    if (!b) return pc_set_error(PC_ERR_OOM, "out of host memory");
    b->max_rows = rows;
    tl_batch = b;
    *out = b;
    return PC_OK;
}

PcWgradBatch *pc_wgrad_batch_current(void) { return tl_batch; }

bool pc_wgrad_batch_pending(const PcWgradBatch *b) {
    for (int i = 0; b && i < b->n; i++)
        if (b->leaves[i].n > 0) return true;
    return false;
}

PcStatus pc_wgrad_batch_flush(PcWgradBatch *b) {
    if (!b) return PC_OK;
    for (int i = 0; i < b->n; i++) PC_TRY(run_leaf(&b->leaves[i]));
    return PC_OK;
}

void pc_wgrad_batch_close(PcWgradBatch *b) {
    if (!b) return;
    for (int i = 0; i < b->n; i++) {
        leaf_clear(&b->leaves[i]);
        free(b->leaves[i].parts);
        pc_tensor_decref(b->leaves[i].leaf);
    }
    free(b->leaves);
    if (tl_batch == b) tl_batch = NULL;
    free(b);
}

void pc_wgrad_batch_resume(PcWgradBatch *b) {
    if (b) b->suspended = false;
}

bool pc_wgrad_batch_pause(PcWgradBatch *b) {
    if (!b || b->suspended) return false;
    b->suspended = true;
    return true;
}

void pc_wgrad_batch_exclude(PcWgradBatch *b, int n, PcTensor *const *leaves) {
    if (!b) return;
    b->n_excluded = leaves ? n : 0;
    b->excluded = leaves;
}

PcStatus pc_wgrad_defer(PcNode *self, int edge, PcTensor *l, PcTensor *r, double alpha,
                        bool *deferred) {
    *deferred = false;
    PcWgradBatch *b = tl_batch;
    if (!b || b->suspended || l->ndim != 2 || r->ndim != 2 || l->shape[1] == 0 ||
        l->shape[1] >= b->max_rows)
        return PC_OK;
    PcTensor *leaf = pc_autograd_fusable_leaf(self, edge);
    for (int i = 0; leaf && i < b->n_excluded; i++)
        if (b->excluded[i] == leaf) leaf = NULL;
    if (!leaf || leaf->ndim != 2 || leaf->shape[0] != l->shape[0] ||
        leaf->shape[1] != r->shape[1] || leaf->dtype != l->dtype || r->dtype != l->dtype ||
        !pc_device_eq(leaf->device, l->device) || !pc_device_eq(r->device, l->device))
        return PC_OK;
    LeafWork *w = NULL;
    for (int i = 0; i < b->n && !w; i++)
        if (b->leaves[i].leaf == leaf) w = &b->leaves[i];
    if (!w) {
        PC_TRY(pc_grow_array((void **)&b->leaves, &b->cap, b->n + 1, sizeof *b->leaves,
                             "weight-gradient batching"));
        w = &b->leaves[b->n++];
        memset(w, 0, sizeof *w);
        pc_tensor_incref(leaf);
        w->leaf = leaf;
    }
    if (w->n > 0 && w->alpha != alpha) PC_TRY(run_leaf(w));
    PC_TRY(pc_grow_array((void **)&w->parts, &w->cap, w->n + 1, sizeof *w->parts,
                         "weight-gradient batching"));
    pc_tensor_incref(l);
    pc_tensor_incref(r);
    w->parts[w->n++] = (Part){l, r, atomic_load(&l->storage->version),
                              atomic_load(&r->storage->version)};
    w->alpha = alpha;
    w->rows += l->shape[1];
    *deferred = true;
    atomic_fetch_add(&g_deferred, 1);
    if (w->rows >= b->max_rows) PC_TRY(run_leaf(w));
    return PC_OK;
}
