/* engine.c — the backward engine: full backward, autograd.grad, and split backward
 * (phase I for input gradients, phase W for weight gradients).
 *
 * One pass over the graph:
 *   1. seed: every root becomes (node, slot, gradient) — ones for a single-element root when
 *      no gradient is given — and the graph reachable from the roots is collected with an
 *      iterative DFS that also yields a post-order (every node after its successors);
 *   2. mark, in post-order: which nodes matter to this pass (`useful`), which edges of each
 *      node carry a gradient (`needs`), which nodes run; in split phase I also which nodes
 *      lead only to weights (`wuseful`) and which edges are deferred to phase W (`wmask`);
 *   3. count dependencies along needed edges, then run a ready queue (max-heap on seq, so
 *      later nodes first), summing the gradients that reach each node slot into a fresh
 *      tensor (backend PC_B_ADD) before the node runs.
 *
 * Invariants: a node runs only when every needed edge into it has delivered (dependency
 * count 0), so the gradient it receives is that slot's total. Gradient buffers are never
 * written in place once stored (sums go to fresh tensors), so a buffer may be shared with a
 * result or a PcWeightWork. Grad mode is off while nodes run. Every exit path frees what the
 * pass holds; a failing pass leaves no captured results behind.
 *
 * Fused accumulation: in passes that accumulate into leaves (full backward, phase W) a node
 * may add a product straight into a leaf's existing .grad (pc_autograd_fusable_grad) instead
 * of handing AccumulateGrad a fresh tensor to add, when nothing else references that .grad
 * (so no operand, saved value or Python object sees it change mid-pass). The leaf's other
 * contributions still arrive through AccumulateGrad; the sum is the same.
 *
 * Exports: pc_autograd_backward, pc_autograd_grad, pc_autograd_backward_input,
 * pc_weight_work_run, pc_weight_work_size, pc_weight_work_free, pc_autograd_fusable_grad,
 * pc_autograd_fusable_leaf, pc_autograd_note_fused, pc_autograd_fused_count.
 */
#include "autograd.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/backend.h"

/* ---- the weight work (split phase W) ---- */

/* One node to run in phase W: its output gradients (owned, NULL = absent) and the edges to
 * run (mask == NULL: every edge). */
typedef struct PcWeightEntry {
    PcNode *node;        /* owned reference */
    PcTensor **grads;    /* owned array [node->n_outputs] of owned references or NULL */
    bool *mask;          /* owned array [node->n_edges] or NULL */
} PcWeightEntry;

struct PcWeightWork {
    int n_entries, cap_entries;
    PcWeightEntry *entries;
    int n_ran, cap_ran;
    PcNode **ran;        /* owned references: nodes that ran in phase I (released after W) */
    bool done;
};

static void entry_clear(PcWeightEntry *e) {
    if (e->grads)
        for (int k = 0; k < e->node->n_outputs; k++) pc_tensor_decref(e->grads[k]);
    free(e->grads);
    free(e->mask);
    pc_node_decref(e->node);
    memset(e, 0, sizeof *e);
}

static void work_drop_all(PcWeightWork *w) {
    for (int i = 0; i < w->n_entries; i++) entry_clear(&w->entries[i]);
    for (int i = 0; i < w->n_ran; i++) pc_node_decref(w->ran[i]);
    free(w->entries);
    free(w->ran);
    w->entries = NULL;
    w->ran = NULL;
    w->n_entries = w->cap_entries = w->n_ran = w->cap_ran = 0;
}

void pc_weight_work_free(PcWeightWork *work) {
    if (!work) return;
    work_drop_all(work);
    free(work);
}

int pc_weight_work_size(const PcWeightWork *work) {
    return work && !work->done ? work->n_entries : 0;
}

/* ---- graph bookkeeping ---- */

typedef enum PassMode {
    MODE_BACKWARD, /* accumulate into every reachable leaf */
    MODE_GRAD,     /* capture the gradients of `inputs`; run only what leads to them */
    MODE_INPUT,    /* as MODE_GRAD, and queue the weight work */
    MODE_WEIGHT    /* run queued nodes' weight edges, accumulate into leaves */
} PassMode;

typedef struct NodeInfo {
    PcNode *node;        /* borrowed: kept alive by the roots, the pass or the work */
    const bool *mask;    /* borrowed: only these edges exist in this pass; NULL = all */
    PcTensor **buf;      /* owned array [n_outputs]: summed incoming gradients */
    int *eidx;           /* [n_edges] graph index of each edge's node, -1 none (pool) */
    bool *needs;         /* [n_edges] edges that get a gradient in this pass (pool) */
    bool *wmask;         /* [n_edges] MODE_INPUT: edges deferred to phase W (pool) */
    int deps;
    unsigned char state; /* DFS: 0 new, 1 open, 2 done */
    bool useful;         /* leads to (or is) a target of this pass */
    bool wuseful;        /* MODE_INPUT: leads only to weights */
    bool run;            /* apply is called */
    bool queued;         /* MODE_INPUT: goes to the weight work */
    bool capture;        /* some requested input's gradient is read here */
    bool ran;
} NodeInfo;

typedef struct Pass {
    PassMode mode;
    bool release_now;    /* release each node's saved state right after it runs */
    NodeInfo *info;
    int n, cap;
    int *slots;          /* open-addressing map node -> index + 1 (0 = empty) */
    size_t nslots;
    int *post;           /* post-order of the collected nodes */
    int npost, post_cap;
    int *heap;
    int nheap;
    bool *bool_pool;
    int *idx_pool;
    /* captures */
    int n_inputs;
    int *cap_idx;        /* [n_inputs] graph index or -1 */
    int *cap_slot;       /* [n_inputs] */
    PcTensor **results;  /* [n_inputs] caller's array */
    PcWeightWork *work;  /* MODE_INPUT: filled; MODE_WEIGHT: the work being run */
} Pass;

static size_t ptr_hash(const void *p) {
    uint64_t x = (uint64_t)(uintptr_t)p;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return (size_t)x;
}

static int graph_find(const Pass *p, const PcNode *node) {
    if (!p->nslots) return -1;
    size_t m = p->nslots - 1;
    for (size_t h = ptr_hash(node) & m;; h = (h + 1) & m) {
        int v = p->slots[h];
        if (v == 0) return -1;
        if (p->info[v - 1].node == node) return v - 1;
    }
}

static PcStatus graph_rehash(Pass *p, size_t nslots) {
    int *slots = calloc(nslots, sizeof *slots);
    if (!slots) return pc_set_error(PC_ERR_OOM, "autograd engine: out of host memory");
    size_t m = nslots - 1;
    for (int i = 0; i < p->n; i++) {
        size_t h = ptr_hash(p->info[i].node) & m;
        while (slots[h]) h = (h + 1) & m;
        slots[h] = i + 1;
    }
    free(p->slots);
    p->slots = slots;
    p->nslots = nslots;
    return PC_OK;
}

/* Index of node in the graph, adding it (with `mask`) when new. */
static PcStatus graph_add(Pass *p, PcNode *node, const bool *mask, int *idx) {
    int i = graph_find(p, node);
    if (i >= 0) {
        *idx = i;
        return PC_OK;
    }
    PC_TRY(pc_grow_array((void **)&p->info, &p->cap, p->n + 1, sizeof *p->info, "autograd engine"));
    if ((size_t)(p->n + 1) * 2 > p->nslots)
        PC_TRY(graph_rehash(p, p->nslots ? p->nslots * 2 : 64));
    NodeInfo *in = &p->info[p->n];
    memset(in, 0, sizeof *in);
    in->node = node;
    in->mask = mask;
    if (node->n_outputs > 0) {
        in->buf = calloc((size_t)node->n_outputs, sizeof *in->buf);
        if (!in->buf) return pc_set_error(PC_ERR_OOM, "autograd engine: out of host memory");
    }
    size_t m = p->nslots - 1;
    size_t h = ptr_hash(node) & m;
    while (p->slots[h]) h = (h + 1) & m;
    p->slots[h] = p->n + 1;
    *idx = p->n++;
    return PC_OK;
}

/* Iterative DFS from `start` (already in the graph), appending finished nodes to post. */
static PcStatus graph_collect(Pass *p, int start) {
    if (p->info[start].state != 0) return PC_OK;
    typedef struct Frame { int idx, next; } Frame;
    Frame *stack = NULL;
    int sp = 0, cap = 0;
    PcStatus st = PC_OK;
    PC_TRY_GOTO(st, pc_grow_array((void **)&stack, &cap, 1, sizeof *stack, "autograd engine"));
    stack[sp++] = (Frame){start, 0};
    p->info[start].state = 1;
    while (sp > 0) {
        Frame *f = &stack[sp - 1];
        PcNode *node = p->info[f->idx].node;
        const bool *mask = p->info[f->idx].mask;
        if (f->next < node->n_edges) {
            int j = f->next++;
            PcNode *c = node->edges[j].fn;
            if (!c || (mask && !mask[j])) continue;
            int ci;
            PC_TRY_GOTO(st, graph_add(p, c, NULL, &ci));
            if (p->info[ci].state != 0) continue;
            p->info[ci].state = 1;
            PC_TRY_GOTO(st, pc_grow_array((void **)&stack, &cap, sp + 1, sizeof *stack,
                                          "autograd engine"));
            stack[sp++] = (Frame){ci, 0};
        } else {
            p->info[f->idx].state = 2;
            PC_TRY_GOTO(st, pc_grow_array((void **)&p->post, &p->post_cap, p->npost + 1,
                                          sizeof *p->post, "autograd engine"));
            p->post[p->npost++] = f->idx;
            sp--;
        }
    }
fail:
    free(stack);
    return st;
}

/* ---- gradients ---- */

static bool shape_eq(int na, const int64_t *a, int nb, const int64_t *b) {
    if (na != nb) return false;
    for (int i = 0; i < na; i++)
        if (a[i] != b[i]) return false;
    return true;
}

static const char *device_str(PcDevice d, char *buf, size_t n) {
    if (d.type == PC_CPU) {
        snprintf(buf, n, "cpu");
    } else {
        snprintf(buf, n, "cuda:%d", d.index);
    }
    return buf;
}

/* A tensor of `meta` filled with `value`. */
static PcStatus make_filled(const PcTensorMeta *meta, double value, PcTensor **out) {
    *out = NULL;
    const PcBackend *be = pc_backend_for(meta->device);
    if (!be) return PC_ERR_DEVICE;
    PcTensor *t;
    PC_TRY(pc_tensor_empty(meta->ndim, meta->shape, meta->dtype, meta->device, &t));
    PcStatus st = be->fill(t, value);
    if (st != PC_OK) {
        pc_tensor_decref(t);
        return st;
    }
    *out = t;
    return PC_OK;
}

/* Check *g (owned) against the slot's meta: shape and device must match; a different dtype
 * is converted (replacing *g). `src` names the producing node (NULL: a root gradient). */
static PcStatus check_grad(const PcNode *src, int index, const PcTensorMeta *meta,
                           PcTensor **g) {
    PcTensor *t = *g;
    char s1[96], s2[96];
    if (!shape_eq(t->ndim, t->shape, meta->ndim, meta->shape)) {
        if (src)
            return pc_set_error(PC_ERR_RUNTIME,
                                "Function %s returned an invalid gradient at index %d - got %s "
                                "but expected shape compatible with %s",
                                src->vt ? src->vt->name : "?", index,
                                pc_shape_str(t->ndim, t->shape, s1, 96),
                                pc_shape_str(meta->ndim, meta->shape, s2, 96));
        return pc_set_error(PC_ERR_RUNTIME,
                            "Mismatch in shape: grad_output[%d] has a shape of %s and "
                            "output[%d] has a shape of %s",
                            index, pc_shape_str(t->ndim, t->shape, s1, 96), index,
                            pc_shape_str(meta->ndim, meta->shape, s2, 96));
    }
    if (!pc_device_eq(t->device, meta->device)) {
        if (src)
            return pc_set_error(PC_ERR_DEVICE,
                                "Function %s returned a gradient at index %d on device %s but "
                                "expected device %s",
                                src->vt ? src->vt->name : "?", index,
                                device_str(t->device, s1, 96), device_str(meta->device, s2, 96));
        return pc_set_error(PC_ERR_DEVICE,
                            "grad_output[%d] is on device %s but output[%d] is on device %s",
                            index, device_str(t->device, s1, 96), index,
                            device_str(meta->device, s2, 96));
    }
    if (t->dtype != meta->dtype) {
        const PcBackend *be = pc_backend_for(t->device);
        if (!be) return PC_ERR_DEVICE;
        PcTensor *c;
        PC_TRY(pc_tensor_empty(meta->ndim, meta->shape, meta->dtype, meta->device, &c));
        PcStatus st = be->copy(c, t);
        if (st != PC_OK) {
            pc_tensor_decref(c);
            return st;
        }
        pc_tensor_decref(t);
        *g = c;
    }
    return PC_OK;
}

/* Add g (stolen) into slot `slot` of info i: the first gradient is stored as is, later ones
 * are summed into a fresh tensor so stored buffers are never written. */
static PcStatus buf_add(Pass *p, int i, int slot, PcTensor *g) {
    NodeInfo *in = &p->info[i];
    if (!g) return PC_OK;
    if (slot < 0 || slot >= in->node->n_outputs) {
        pc_tensor_decref(g);
        return pc_set_error(PC_ERR_RUNTIME, "autograd engine: gradient for output %d of %s, "
                                            "which has %d outputs",
                            slot, in->node->vt ? in->node->vt->name : "?", in->node->n_outputs);
    }
    PcTensor *old = in->buf[slot];
    if (!old) {
        in->buf[slot] = g;
        return PC_OK;
    }
    PcStatus st = PC_OK;
    PcTensor *sum = NULL;
    const PcBackend *be = pc_backend_for(old->device);
    if (!be) {
        st = PC_ERR_DEVICE;
    } else if (old->dtype != g->dtype || !pc_device_eq(old->device, g->device) ||
               !shape_eq(old->ndim, old->shape, g->ndim, g->shape)) {
        char s1[96], s2[96];
        st = pc_set_error(PC_ERR_RUNTIME,
                          "autograd engine: gradients reaching output %d of %s disagree: %s %s "
                          "vs %s %s",
                          slot, in->node->vt ? in->node->vt->name : "?", pc_dtype_name(old->dtype),
                          pc_shape_str(old->ndim, old->shape, s1, 96), pc_dtype_name(g->dtype),
                          pc_shape_str(g->ndim, g->shape, s2, 96));
    } else {
        st = pc_tensor_empty(old->ndim, old->shape, old->dtype, old->device, &sum);
        if (st == PC_OK) st = be->binary(PC_B_ADD, sum, old, g, 1.0);
    }
    pc_tensor_decref(g);
    if (st != PC_OK) {
        pc_tensor_decref(sum);
        return st;
    }
    in->buf[slot] = sum;
    pc_tensor_decref(old);
    return PC_OK;
}

/* ---- the pass ---- */

static void pass_free(Pass *p) {
    for (int i = 0; i < p->n; i++) {
        NodeInfo *in = &p->info[i];
        if (in->buf)
            for (int k = 0; k < in->node->n_outputs; k++) pc_tensor_decref(in->buf[k]);
        free(in->buf);
    }
    free(p->info);
    free(p->slots);
    free(p->post);
    free(p->heap);
    free(p->bool_pool);
    free(p->idx_pool);
    free(p->cap_idx);
    free(p->cap_slot);
    memset(p, 0, sizeof *p);
}

static bool is_weight_leaf(const PcNode *n) {
    return n->leaf != NULL && n->leaf->requires_grad;
}

/* Edge tables and the marks of step 2, in post-order. */
static PcStatus pass_mark(Pass *p) {
    size_t total = 0;
    for (int i = 0; i < p->n; i++) total += (size_t)p->info[i].node->n_edges;
    p->bool_pool = calloc(2 * total + 1, sizeof *p->bool_pool);
    p->idx_pool = malloc((total + 1) * sizeof *p->idx_pool);
    if (!p->bool_pool || !p->idx_pool)
        return pc_set_error(PC_ERR_OOM, "autograd engine: out of host memory");
    size_t off = 0;
    for (int i = 0; i < p->n; i++) {
        NodeInfo *in = &p->info[i];
        PcNode *n = in->node;
        in->needs = p->bool_pool + off;
        in->wmask = p->bool_pool + total + off;
        in->eidx = p->idx_pool + off;
        off += (size_t)n->n_edges;
        for (int j = 0; j < n->n_edges; j++) {
            PcNode *c = n->edges[j].fn;
            in->eidx[j] = c && (!in->mask || in->mask[j]) ? graph_find(p, c) : -1;
        }
    }

    for (int k = 0; k < p->npost; k++) {
        NodeInfo *in = &p->info[p->post[k]];
        PcNode *n = in->node;
        bool any_need = false, any_w = false;
        for (int j = 0; j < n->n_edges; j++) {
            int c = in->eidx[j];
            if (c < 0) continue;
            if (p->info[c].useful) in->needs[j] = any_need = true;
            else if (p->info[c].wuseful) in->wmask[j] = any_w = true;
        }
        if (p->mode == MODE_BACKWARD || p->mode == MODE_WEIGHT) {
            in->useful = any_need || is_weight_leaf(n);
            in->run = in->useful;
        } else {
            in->useful = any_need || in->capture;
            in->run = any_need;
            if (p->mode == MODE_INPUT) {
                if (in->useful) {
                    in->queued = any_w;
                } else {
                    in->wuseful = any_w || is_weight_leaf(n);
                }
            }
        }
    }

    for (int i = 0; i < p->n; i++) {
        NodeInfo *in = &p->info[i];
        for (int j = 0; j < in->node->n_edges; j++)
            if (in->needs[j]) p->info[in->eidx[j]].deps++;
    }
    return PC_OK;
}

static bool heap_less(const Pass *p, int a, int b) {
    return p->info[a].node->seq < p->info[b].node->seq;
}

static void heap_push(Pass *p, int i) {
    int k = p->nheap++;
    p->heap[k] = i;
    while (k > 0) {
        int parent = (k - 1) / 2;
        if (!heap_less(p, p->heap[parent], p->heap[k])) break;
        int t = p->heap[parent];
        p->heap[parent] = p->heap[k];
        p->heap[k] = t;
        k = parent;
    }
}

static int heap_pop(Pass *p) {
    int top = p->heap[0];
    p->heap[0] = p->heap[--p->nheap];
    int k = 0;
    for (;;) {
        int l = 2 * k + 1, r = l + 1, m = k;
        if (l < p->nheap && heap_less(p, p->heap[m], p->heap[l])) m = l;
        if (r < p->nheap && heap_less(p, p->heap[m], p->heap[r])) m = r;
        if (m == k) break;
        int t = p->heap[m];
        p->heap[m] = p->heap[k];
        p->heap[k] = t;
        k = m;
    }
    return top;
}

static void node_release(PcNode *n) {
    if (n->leaf) return; /* AccumulateGrad: no saved state, shared by every graph of the leaf */
    if (n->vt && n->vt->release) n->vt->release(n);
    n->released = true;
}

/* Queue node i (MODE_INPUT) with its output gradients and deferred edges. */
static PcStatus work_queue(Pass *p, int i, const bool *mask) {
    PcWeightWork *w = p->work;
    NodeInfo *in = &p->info[i];
    PcNode *n = in->node;
    PC_TRY(pc_grow_array((void **)&w->entries, &w->cap_entries, w->n_entries + 1,
                         sizeof *w->entries, "autograd engine"));
    PcWeightEntry e = {0};
    e.grads = calloc((size_t)(n->n_outputs > 0 ? n->n_outputs : 1), sizeof *e.grads);
    if (mask) e.mask = malloc((size_t)(n->n_edges > 0 ? n->n_edges : 1) * sizeof *e.mask);
    if (!e.grads || (mask && !e.mask)) {
        free(e.grads);
        free(e.mask);
        return pc_set_error(PC_ERR_OOM, "autograd engine: out of host memory");
    }
    if (mask) memcpy(e.mask, mask, (size_t)n->n_edges * sizeof *e.mask);
    for (int k = 0; k < n->n_outputs; k++) {
        pc_tensor_incref(in->buf[k]);
        e.grads[k] = in->buf[k];
    }
    pc_node_incref(n);
    e.node = n;
    w->entries[w->n_entries++] = e;
    return PC_OK;
}

/* The pass and node whose apply runs on this thread (for pc_autograd_fusable_grad). */
static _Thread_local const Pass *tl_pass = NULL;
static _Thread_local int tl_node = -1;

static atomic_llong g_fused;

void pc_autograd_note_fused(void) { atomic_fetch_add(&g_fused, 1); }

long long pc_autograd_fused_count(void) { return atomic_load(&g_fused); }

/* The leaf behind edge `edge` of the running node `self` when this pass accumulates into it
 * (see pc_autograd_fusable_grad), else NULL. */
static PcTensor *accumulating_leaf(const PcNode *self, int edge) {
    const Pass *p = tl_pass;
    if (!p || tl_node < 0 || (p->mode != MODE_BACKWARD && p->mode != MODE_WEIGHT)) return NULL;
    const NodeInfo *in = &p->info[tl_node];
    if (in->node != self || edge < 0 || edge >= self->n_edges || !in->needs[edge]) return NULL;
    int c = in->eidx[edge];
    if (c < 0) return NULL;
    const PcNode *cn = p->info[c].node;
    PcTensor *leaf = cn->leaf;
    if (!leaf || !leaf->requires_grad || !p->info[c].useful) return NULL;
    return leaf;
}

PcTensor *pc_autograd_fusable_leaf(const PcNode *self, int edge) {
    PcTensor *leaf = accumulating_leaf(self, edge);
    if (!leaf || (leaf->grad && !pc_autograd_fusable_grad(self, edge))) return NULL;
    return leaf;
}

PcTensor *pc_autograd_fusable_grad(const PcNode *self, int edge) {
    PcTensor *leaf = accumulating_leaf(self, edge);
    if (!leaf) return NULL;
    PcTensor *g = leaf->grad;
    /* nothing else may see the buffer: not a saved tensor or an operand of this pass (the
     * GEMM would read what it writes, or a later node find its saved value changed), not a
     * view, not a Python object (the same rule as AccumulateGrad's alias shortcut) */
    if (!g || atomic_load(&g->refcount) != 1 || atomic_load(&g->storage->refcount) != 1 ||
        g->dtype != leaf->dtype || !pc_device_eq(g->device, leaf->device) ||
        g->ndim != leaf->ndim || !pc_tensor_is_contiguous(g))
        return NULL;
    for (int d = 0; d < g->ndim; d++)
        if (g->shape[d] != leaf->shape[d]) return NULL;
    return g;
}

/* Call node i's apply with grad mode off and route its gradients along needed edges. */
static PcStatus run_node(Pass *p, int i) {
    NodeInfo *in = &p->info[i];
    PcNode *n = in->node;
    if (!n->vt || !n->vt->apply)
        return pc_set_error(PC_ERR_RUNTIME, "autograd engine: node %s has no apply function",
                            n->vt ? n->vt->name : "?");
    int ne = n->n_edges;
    PcTensor **gin = calloc((size_t)(ne > 0 ? ne : 1), sizeof *gin);
    if (!gin) return pc_set_error(PC_ERR_OOM, "autograd engine: out of host memory");
    bool prev = pc_grad_enabled();
    pc_set_grad_enabled(false);
    const Pass *prev_pass = tl_pass;
    int prev_node = tl_node;
    tl_pass = p;
    tl_node = i;
    PcStatus st = n->vt->apply(n, in->buf, in->needs, gin);
    tl_pass = prev_pass;
    tl_node = prev_node;
    pc_set_grad_enabled(prev);
    if (st != PC_OK) goto done;
    in->ran = true;
    if (p->release_now) node_release(n);
    for (int j = 0; j < ne; j++) {
        PcTensor *g = gin[j];
        gin[j] = NULL;
        if (!in->needs[j]) {
            pc_tensor_decref(g); /* not asked for: ignore */
            continue;
        }
        int c = in->eidx[j];
        if (g) {
            PcNode *cn = p->info[c].node;
            int slot = n->edges[j].input_nr;
            if (slot < 0 || slot >= cn->n_outputs) {
                pc_tensor_decref(g);
                st = pc_set_error(PC_ERR_RUNTIME, "autograd engine: %s edge %d points at output "
                                                  "%d of %s, which has %d outputs",
                                  n->vt->name, j, slot, cn->vt ? cn->vt->name : "?",
                                  cn->n_outputs);
                goto done;
            }
            st = check_grad(n, j, &cn->out_meta[slot], &g);
            if (st != PC_OK) {
                pc_tensor_decref(g);
                goto done;
            }
            st = buf_add(p, c, slot, g);
            if (st != PC_OK) goto done;
        }
        if (--p->info[c].deps == 0) heap_push(p, c);
    }
done:
    for (int j = 0; j < ne; j++) pc_tensor_decref(gin[j]);
    free(gin);
    return st;
}

/* Step 3: the ready queue. */
static PcStatus pass_execute(Pass *p) {
    p->heap = malloc((size_t)(p->n > 0 ? p->n : 1) * sizeof *p->heap);
    if (!p->heap) return pc_set_error(PC_ERR_OOM, "autograd engine: out of host memory");
    for (int i = 0; i < p->n; i++)
        if (p->info[i].useful && p->info[i].deps == 0) heap_push(p, i);

    while (p->nheap > 0) {
        int i = heap_pop(p);
        NodeInfo *in = &p->info[i];
        PcNode *n = in->node;
        if (in->capture)
            for (int k = 0; k < p->n_inputs; k++)
                if (p->cap_idx[k] == i && !p->results[k]) {
                    PcTensor *g = in->buf[p->cap_slot[k]];
                    pc_tensor_incref(g);
                    p->results[k] = g;
                }
        if (n->leaf && !in->buf[0]) {
            /* nothing arrived for this leaf (e.g. a custom Function returned None for it):
             * leave its .grad untouched, as torch does */
            continue;
        }
        if ((in->run || in->queued) && n->n_outputs == 1 && !in->buf[0])
            PC_TRY(make_filled(&n->out_meta[0], 0.0, &in->buf[0]));
        if (in->queued) PC_TRY(work_queue(p, i, in->wmask));
        if (in->run) PC_TRY(run_node(p, i));
        for (int k = 0; k < n->n_outputs; k++) {
            pc_tensor_decref(in->buf[k]);
            in->buf[k] = NULL;
        }
    }
    return PC_OK;
}

/* Seed the pass with the roots: validated gradients into the roots' slots, graph collected.
 * root_fns[i] receives a reference to each root's node (released by the caller). */
static PcStatus pass_seed_roots(Pass *p, int n_roots, PcTensor *const *roots,
                                PcTensor *const *grads, PcNode **root_fns) {
    for (int i = 0; i < n_roots; i++) {
        PcTensor *r = roots[i];
        if (!r)
            return pc_set_error(PC_ERR_INVALID, "autograd: element %d of tensors is None", i);
        if (!r->requires_grad)
            return pc_set_error(PC_ERR_RUNTIME,
                                "element %d of tensors does not require grad and does not have "
                                "a grad_fn",
                                i);
        PcEdge e;
        PC_TRY(pc_autograd_edge_of(r, &e));
        root_fns[i] = e.fn;
        PcTensor *g = grads ? grads[i] : NULL;
        if (g) {
            PcTensorMeta meta;
            meta.ndim = r->ndim;
            memcpy(meta.shape, r->shape, sizeof meta.shape);
            meta.dtype = r->dtype;
            meta.device = r->device;
            pc_tensor_incref(g);
            PcStatus st = check_grad(NULL, i, &meta, &g);
            if (st != PC_OK) {
                pc_tensor_decref(g);
                return st;
            }
        } else {
            if (pc_tensor_numel(r) != 1)
                return pc_set_error(PC_ERR_RUNTIME,
                                    "grad can be implicitly created only for scalar outputs");
            PcTensorMeta meta;
            meta.ndim = r->ndim;
            memcpy(meta.shape, r->shape, sizeof meta.shape);
            meta.dtype = r->dtype;
            meta.device = r->device;
            PC_TRY(make_filled(&meta, 1.0, &g));
        }
        int idx;
        PcStatus st = graph_add(p, e.fn, NULL, &idx);
        if (st != PC_OK) {
            pc_tensor_decref(g);
            return st;
        }
        PC_TRY(buf_add(p, idx, e.input_nr, g));
    }
    for (int i = 0; i < n_roots; i++) PC_TRY(graph_collect(p, graph_find(p, root_fns[i])));
    return PC_OK;
}

/* Where each requested input's gradient is read: its (node, slot), or -1 when the node is not
 * in the graph. input_fns[k] receives a reference (released by the caller). */
static PcStatus pass_set_captures(Pass *p, int n_inputs, PcTensor *const *inputs,
                                  bool require_grad, PcNode **input_fns) {
    p->n_inputs = n_inputs;
    p->cap_idx = malloc((size_t)(n_inputs > 0 ? n_inputs : 1) * sizeof *p->cap_idx);
    p->cap_slot = malloc((size_t)(n_inputs > 0 ? n_inputs : 1) * sizeof *p->cap_slot);
    if (!p->cap_idx || !p->cap_slot)
        return pc_set_error(PC_ERR_OOM, "autograd engine: out of host memory");
    for (int k = 0; k < n_inputs; k++) {
        p->cap_idx[k] = -1;
        p->cap_slot[k] = 0;
        PcTensor *t = inputs[k];
        if (!t || !t->requires_grad) {
            if (require_grad)
                return pc_set_error(PC_ERR_RUNTIME,
                                    "One of the differentiated Tensors does not require grad");
            continue;
        }
        PcEdge e;
        PC_TRY(pc_autograd_edge_of(t, &e));
        input_fns[k] = e.fn;
        int idx = graph_find(p, e.fn);
        p->cap_idx[k] = idx;
        p->cap_slot[k] = e.input_nr;
        if (idx >= 0) p->info[idx].capture = true;
    }
    return PC_OK;
}

static PcNode **node_array(int n) {
    return calloc((size_t)(n > 0 ? n : 1), sizeof(PcNode *));
}

static void node_array_free(PcNode **a, int n) {
    if (!a) return;
    for (int i = 0; i < n; i++) pc_node_decref(a[i]);
    free(a);
}

/* ---- public entry points ---- */

PcStatus pc_autograd_backward(int n_roots, PcTensor *const *roots, PcTensor *const *grads,
                              bool retain_graph) {
    Pass p = {0};
    p.mode = MODE_BACKWARD;
    p.release_now = !retain_graph;
    PcStatus st = PC_OK;
    PcNode **root_fns = node_array(n_roots);
    if (!root_fns) return pc_set_error(PC_ERR_OOM, "autograd engine: out of host memory");
    PC_TRY_GOTO(st, pass_seed_roots(&p, n_roots, roots, grads, root_fns));
    PC_TRY_GOTO(st, pass_mark(&p));
    PC_TRY_GOTO(st, pass_execute(&p));
fail:
    pass_free(&p);
    node_array_free(root_fns, n_roots);
    return st;
}

/* Shared by pc_autograd_grad and phase I. */
static PcStatus grad_like(PassMode mode, int n_roots, PcTensor *const *roots,
                          PcTensor *const *grads, int n_inputs, PcTensor *const *inputs,
                          bool retain_graph, bool allow_unused, PcTensor **results,
                          PcWeightWork *work) {
    for (int k = 0; k < n_inputs; k++) results[k] = NULL;
    Pass p = {0};
    p.mode = mode;
    p.release_now = mode == MODE_GRAD && !retain_graph;
    p.results = results;
    p.work = work;
    PcStatus st = PC_OK;
    PcNode **root_fns = node_array(n_roots);
    PcNode **input_fns = node_array(n_inputs);
    if (!root_fns || !input_fns) {
        st = pc_set_error(PC_ERR_OOM, "autograd engine: out of host memory");
        goto fail;
    }
    PC_TRY_GOTO(st, pass_seed_roots(&p, n_roots, roots, grads, root_fns));
    PC_TRY_GOTO(st, pass_set_captures(&p, n_inputs, inputs, mode == MODE_GRAD, input_fns));
    PC_TRY_GOTO(st, pass_mark(&p));
    PC_TRY_GOTO(st, pass_execute(&p));
    if (!allow_unused)
        for (int k = 0; k < n_inputs; k++)
            if (!results[k]) {
                st = pc_set_error(PC_ERR_RUNTIME,
                                  "One of the differentiated Tensors appears to not have been "
                                  "used in the graph. Set allow_unused=True if this is the "
                                  "desired behavior.");
                goto fail;
            }
    if (mode == MODE_INPUT) {
        /* Roots that lead only to weights: their whole gradient is phase W's. */
        for (int i = 0; i < p.n; i++) {
            NodeInfo *in = &p.info[i];
            if (!in->wuseful) continue;
            bool any = false;
            for (int k = 0; k < in->node->n_outputs; k++) any = any || in->buf[k];
            if (any) PC_TRY_GOTO(st, work_queue(&p, i, NULL));
        }
        /* Every node that ran stays unreleased until W. */
        for (int i = 0; i < p.n; i++) {
            if (!p.info[i].ran) continue;
            PC_TRY_GOTO(st, pc_grow_array((void **)&work->ran, &work->cap_ran, work->n_ran + 1,
                                          sizeof *work->ran, "autograd engine"));
            pc_node_incref(p.info[i].node);
            work->ran[work->n_ran++] = p.info[i].node;
        }
    }
fail:
    if (st != PC_OK)
        for (int k = 0; k < n_inputs; k++) {
            pc_tensor_decref(results[k]);
            results[k] = NULL;
        }
    pass_free(&p);
    node_array_free(root_fns, n_roots);
    node_array_free(input_fns, n_inputs);
    return st;
}

PcStatus pc_autograd_grad(int n_roots, PcTensor *const *roots, PcTensor *const *grads,
                          int n_inputs, PcTensor *const *inputs, bool retain_graph,
                          bool allow_unused, PcTensor **results) {
    return grad_like(MODE_GRAD, n_roots, roots, grads, n_inputs, inputs, retain_graph,
                     allow_unused, results, NULL);
}

PcStatus pc_autograd_backward_input(int n_roots, PcTensor *const *roots,
                                    PcTensor *const *grads, int n_inputs,
                                    PcTensor *const *inputs, PcTensor **results,
                                    PcWeightWork **work) {
    *work = NULL;
    PcWeightWork *w = calloc(1, sizeof *w);
    if (!w) return pc_set_error(PC_ERR_OOM, "autograd engine: out of host memory");
    PcStatus st = grad_like(MODE_INPUT, n_roots, roots, grads, n_inputs, inputs, true, true,
                            results, w);
    if (st != PC_OK) {
        pc_weight_work_free(w);
        return st;
    }
    *work = w;
    return PC_OK;
}

PcStatus pc_weight_work_run(PcWeightWork *work, bool retain_graph) {
    if (!work) return pc_set_error(PC_ERR_INVALID, "weight work: NULL work");
    if (work->done)
        return pc_set_error(PC_ERR_RUNTIME, "weight work: this backward's weight gradients "
                                            "were already computed (W runs once)");
    work->done = true;
    Pass p = {0};
    p.mode = MODE_WEIGHT;
    p.release_now = false;
    PcStatus st = PC_OK;
    int *seeds = malloc((size_t)(work->n_entries > 0 ? work->n_entries : 1) * sizeof *seeds);
    if (!seeds) {
        st = pc_set_error(PC_ERR_OOM, "autograd engine: out of host memory");
        goto fail;
    }
    for (int e = 0; e < work->n_entries; e++) {
        PcWeightEntry *en = &work->entries[e];
        PC_TRY_GOTO(st, graph_add(&p, en->node, en->mask, &seeds[e]));
        for (int k = 0; k < en->node->n_outputs; k++) {
            PcTensor *g = en->grads[k];
            en->grads[k] = NULL;
            PC_TRY_GOTO(st, buf_add(&p, seeds[e], k, g));
        }
    }
    for (int e = 0; e < work->n_entries; e++) PC_TRY_GOTO(st, graph_collect(&p, seeds[e]));
    PC_TRY_GOTO(st, pass_mark(&p));
    PC_TRY_GOTO(st, pass_execute(&p));
fail:
    if (!retain_graph) {
        for (int i = 0; i < p.n; i++)
            if (p.info[i].ran) node_release(p.info[i].node);
        for (int i = 0; i < work->n_ran; i++) node_release(work->ran[i]);
    }
    free(seeds);
    pass_free(&p);
    work_drop_all(work);
    return st;
}
