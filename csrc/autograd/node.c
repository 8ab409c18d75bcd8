/* node.c — the pieces autograd graphs are built from: grad mode, nodes and their lifetime,
 * edges, the AccumulateGrad node that feeds a leaf's .grad, and saved tensors.
 *
 * Invariants:
 *   - A node's refcount counts its owners: tensors (grad_fn), other nodes' edges, and the
 *     engine or a PcWeightWork while they hold it. The last decref destroys it: release hook,
 *     leaf reference (AccumulateGrad), edge references, arrays.
 *   - Destruction never recurses: a node whose count reaches zero while this thread is
 *     already destroying nodes is pushed on a thread-local pending list and destroyed by the
 *     outermost call, so freeing a long chain uses constant stack.
 *   - leaf->grad_acc is a borrowed pointer to the leaf's live AccumulateGrad node. It is
 *     read, set and cleared under g_acc_lock; a node found there with refcount 0 is dying and
 *     is replaced, never revived.
 *   - A PcSaved remembers the storage version at save time; reading it fails once the owner
 *     was released or after any in-place write to the storage.
 *
 * Exports: pc_grad_enabled, pc_set_grad_enabled, pc_node_create, pc_node_incref,
 * pc_node_decref, pc_autograd_set_history, pc_autograd_any_requires_grad,
 * pc_autograd_edge_of, pc_saved_set, pc_saved_get, pc_saved_clear. The engine is engine.c.
 */
#include "autograd.h"

#include <stdlib.h>

#include "../core/backend.h"

/* ---- grad mode ---- */

static _Thread_local bool g_grad_enabled = true;

bool pc_grad_enabled(void) { return g_grad_enabled; }
void pc_set_grad_enabled(bool on) { g_grad_enabled = on; }

/* ---- node lifetime ---- */

static atomic_uint_least64_t g_next_seq = 1;

/* Guards every leaf->grad_acc access. Critical sections are a few loads and stores. */
static atomic_flag g_acc_lock = ATOMIC_FLAG_INIT;

static void acc_lock(void) {
    while (atomic_flag_test_and_set_explicit(&g_acc_lock, memory_order_acquire)) {
    }
}

static void acc_unlock(void) { atomic_flag_clear_explicit(&g_acc_lock, memory_order_release); }

/* Nodes waiting to be destroyed by the outermost pc_node_decref of this thread. A dead
 * node's `seq` is no longer used, so it holds the link to the next pending node. */
static _Thread_local PcNode *g_pending = NULL;
static _Thread_local bool g_destroying = false;

static void node_destroy(PcNode *n) {
    if (n->vt && n->vt->release) n->vt->release(n);
    if (n->leaf) {
        acc_lock();
        if (n->leaf->grad_acc == n) n->leaf->grad_acc = NULL;
        acc_unlock();
        pc_tensor_decref(n->leaf); /* may queue more nodes; never recurses into us */
        n->leaf = NULL;
    }
    for (int j = 0; j < n->n_edges; j++) {
        PcNode *fn = n->edges[j].fn;
        n->edges[j].fn = NULL;
        pc_node_decref(fn);
    }
    free(n->edges);
    free(n->out_meta);
    free(n);
}

void pc_node_incref(PcNode *n) {
    if (n) atomic_fetch_add(&n->refcount, 1);
}

void pc_node_decref(PcNode *n) {
    if (!n || atomic_fetch_sub(&n->refcount, 1) != 1) return;
    n->seq = (uint64_t)(uintptr_t)g_pending;
    g_pending = n;
    if (g_destroying) return; /* the outer call below destroys it */
    g_destroying = true;
    while (g_pending) {
        PcNode *d = g_pending;
        g_pending = (PcNode *)(uintptr_t)d->seq;
        node_destroy(d);
    }
    g_destroying = false;
}

/* Take a reference unless the count already reached zero (the node is being destroyed). */
static bool node_try_incref(PcNode *n) {
    long c = atomic_load(&n->refcount);
    while (c > 0)
        if (atomic_compare_exchange_weak(&n->refcount, &c, c + 1)) return true;
    return false;
}

static void meta_of(const PcTensor *t, PcTensorMeta *m) {
    m->ndim = t->ndim;
    for (int i = 0; i < t->ndim; i++) m->shape[i] = t->shape[i];
    for (int i = t->ndim; i < PC_MAX_DIMS; i++) m->shape[i] = 0;
    m->dtype = t->dtype;
    m->device = t->device;
}

PcStatus pc_node_create(size_t size, const PcNodeVTable *vt, int n_outputs, int n_inputs,
                        PcTensor *const *inputs, PcNode **out) {
    *out = NULL;
    if (size < sizeof(PcNode) || !vt || n_outputs < 0 || n_inputs < 0)
        return pc_set_error(PC_ERR_INVALID,
                            "pc_node_create: invalid arguments (size %zu, vt %s, %d outputs, "
                            "%d inputs)",
                            size, vt ? vt->name : "NULL", n_outputs, n_inputs);
    PcNode *n = calloc(1, size);
    if (!n) return pc_set_error(PC_ERR_OOM, "out of host memory allocating a %s node", vt->name);
    atomic_init(&n->refcount, 1);
    n->seq = atomic_fetch_add(&g_next_seq, 1);
    n->n_outputs = n_outputs;
    n->n_edges = n_inputs;
    if (n_outputs > 0) n->out_meta = calloc((size_t)n_outputs, sizeof *n->out_meta);
    if (n_inputs > 0) n->edges = calloc((size_t)n_inputs, sizeof *n->edges);
    if ((n_outputs > 0 && !n->out_meta) || (n_inputs > 0 && !n->edges)) {
        pc_node_decref(n); /* vt still NULL: no release hook on a half-built node */
        return pc_set_error(PC_ERR_OOM, "out of host memory allocating a %s node", vt->name);
    }
    for (int i = 0; i < n_inputs; i++) {
        if (!inputs || !inputs[i] || !inputs[i]->requires_grad) continue;
        PcStatus st = pc_autograd_edge_of(inputs[i], &n->edges[i]);
        if (st != PC_OK) {
            pc_node_decref(n);
            return st;
        }
    }
    n->vt = vt;
    *out = n;
    return PC_OK;
}

void pc_autograd_set_history(PcTensor *out, PcNode *node, int output_nr) {
    pc_node_incref(node);
    PcNode *old = out->grad_fn;
    out->grad_fn = node;
    out->output_nr = output_nr;
    out->requires_grad = true;
    if (node && output_nr >= 0 && output_nr < node->n_outputs)
        meta_of(out, &node->out_meta[output_nr]);
    pc_node_decref(old);
}

bool pc_autograd_any_requires_grad(int n, PcTensor *const *ts) {
    if (!g_grad_enabled) return false;
    for (int i = 0; i < n; i++)
        if (ts[i] && ts[i]->requires_grad) return true;
    return false;
}

/* ---- AccumulateGrad ---- */

static PcStatus accumulate_apply(PcNode *self, PcTensor *const *grad_outputs, const bool *needs,
                                 PcTensor **grad_inputs) {
    (void)needs;
    (void)grad_inputs;
    PcTensor *leaf = self->leaf;
    PcTensor *g = grad_outputs[0];
    if (!g || !leaf || !leaf->requires_grad) return PC_OK;

    char s1[96], s2[96];
    bool same_shape = g->ndim == leaf->ndim;
    for (int i = 0; same_shape && i < g->ndim; i++) same_shape = g->shape[i] == leaf->shape[i];
    if (!same_shape || g->dtype != leaf->dtype || !pc_device_eq(g->device, leaf->device))
        return pc_set_error(PC_ERR_RUNTIME,
                            "AccumulateGrad: gradient %s %s (device type %d) does not match "
                            "the leaf %s %s (device type %d)",
                            pc_dtype_name(g->dtype), pc_shape_str(g->ndim, g->shape, s1, 96),
                            (int)g->device.type, pc_dtype_name(leaf->dtype),
                            pc_shape_str(leaf->ndim, leaf->shape, s2, 96),
                            (int)leaf->device.type);

    const PcBackend *be = pc_backend_for(leaf->device);
    if (!be) return PC_ERR_DEVICE;

    if (!leaf->grad) {
        /* Alias only a gradient nobody else can see or write: one reference (the engine's),
         * one storage reference, a plain contiguous layout. Otherwise copy. */
        if (atomic_load(&g->refcount) == 1 && atomic_load(&g->storage->refcount) == 1 &&
            pc_tensor_is_contiguous(g)) {
            pc_tensor_incref(g);
            leaf->grad = g;
            return PC_OK;
        }
        PcTensor *copy;
        PC_TRY(pc_tensor_empty(leaf->ndim, leaf->shape, leaf->dtype, leaf->device, &copy));
        PcStatus st = be->copy(copy, g);
        if (st != PC_OK) {
            pc_tensor_decref(copy);
            return st;
        }
        leaf->grad = copy;
        return PC_OK;
    }

    PcTensor *acc = leaf->grad;
    same_shape = acc->ndim == g->ndim;
    for (int i = 0; same_shape && i < g->ndim; i++) same_shape = acc->shape[i] == g->shape[i];
    if (!same_shape || acc->dtype != g->dtype || !pc_device_eq(acc->device, g->device))
        return pc_set_error(PC_ERR_RUNTIME,
                            "AccumulateGrad: the leaf's .grad is %s %s but the incoming "
                            "gradient is %s %s",
                            pc_dtype_name(acc->dtype), pc_shape_str(acc->ndim, acc->shape, s1, 96),
                            pc_dtype_name(g->dtype), pc_shape_str(g->ndim, g->shape, s2, 96));
    PC_TRY(be->binary(PC_B_ADD, acc, acc, g, 1.0));
    pc_tensor_bump_version(acc);
    return PC_OK;
}

static const PcNodeVTable accumulate_vt = {"AccumulateGrad", accumulate_apply, NULL};

PcStatus pc_autograd_edge_of(PcTensor *t, PcEdge *out) {
    out->fn = NULL;
    out->input_nr = 0;
    if (!t || !t->requires_grad) return PC_OK;
    if (t->grad_fn) {
        pc_node_incref(t->grad_fn);
        out->fn = t->grad_fn;
        out->input_nr = t->output_nr;
        return PC_OK;
    }

    /* A leaf: reuse its live accumulator, or make one. */
    acc_lock();
    PcNode *acc = t->grad_acc;
    bool got = acc && node_try_incref(acc);
    acc_unlock();
    if (got) {
        out->fn = acc;
        return PC_OK;
    }

    PcNode *fresh;
    PC_TRY(pc_node_create(sizeof(PcNode), &accumulate_vt, 1, 0, NULL, &fresh));
    meta_of(t, &fresh->out_meta[0]);
    pc_tensor_incref(t);
    fresh->leaf = t;

    acc_lock();
    acc = t->grad_acc;
    got = acc && node_try_incref(acc); /* another thread may have won the race */
    if (!got) t->grad_acc = fresh;
    acc_unlock();
    if (got) {
        pc_node_decref(fresh); /* grad_acc is not ours, so destroying it leaves it alone */
        out->fn = acc;
    } else {
        out->fn = fresh;
    }
    return PC_OK;
}

/* ---- saved tensors ---- */

PcStatus pc_saved_set(PcSaved *s, PcTensor *t) {
    pc_saved_clear(s);
    if (t) {
        pc_tensor_incref(t);
        s->t = t;
        s->version = atomic_load(&t->storage->version);
    }
    return PC_OK;
}

PcStatus pc_saved_get(const PcSaved *s, const PcNode *owner, PcTensor **out) {
    *out = NULL;
    if (owner && owner->released)
        return pc_set_error(PC_ERR_RUNTIME,
                            "Trying to backward through the graph a second time (or directly "
                            "access saved tensors after they have already been freed). Saved "
                            "intermediate values of the graph are freed when you call "
                            ".backward() or autograd.grad(). Specify retain_graph=True if you "
                            "need to backward through the graph a second time.");
    if (!s->t) return PC_OK;
    unsigned now = atomic_load(&s->t->storage->version);
    if (now != s->version) {
        char buf[96];
        return pc_set_error(PC_ERR_RUNTIME,
                            "one of the variables needed for gradient computation has been "
                            "modified by an inplace operation: [%s %s] is at version %u; "
                            "expected version %u instead.",
                            pc_dtype_name(s->t->dtype),
                            pc_shape_str(s->t->ndim, s->t->shape, buf, sizeof buf), now,
                            s->version);
    }
    pc_tensor_incref(s->t);
    *out = s->t;
    return PC_OK;
}

void pc_saved_clear(PcSaved *s) {
    PcTensor *t = s->t;
    s->t = NULL;
    s->version = 0;
    pc_tensor_decref(t);
}
