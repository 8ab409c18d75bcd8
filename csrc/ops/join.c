/* join.c — concatenation: cat and stack.
 *
 * Both allocate a contiguous result of the promoted dtype and copy every input into its
 * slice of the result through the backend's `copy` kernel (which converts dtypes).
 * cat follows torch's legacy rule of skipping 1-D empty tensors (shape (0,)) whatever the
 * other inputs' ranks; every other input must have the same ndim and equal sizes except
 * along `dim`. stack needs equal shapes and inserts a new dim.
 *
 * Backward: CatBackward0 hands each input the slice of the gradient it filled (a view,
 * converted back to the input's dtype when promotion changed it); StackBackward0 hands each
 * input its plane (select along the new dim). Per-input bookkeeping lives in a flexible
 * array at the end of the node, so nothing besides the node itself is allocated.
 *
 * Exports: pc_op_cat, pc_op_stack (see ops.h).
 */
#include <stdio.h>
#include <string.h>

#include "internal.h"

/* ---- helpers ---- */

/* One input as the node remembers it. */
typedef struct PcJoinItem {
    PcTensorMeta meta; /* shape/dtype/device of the input */
    int64_t offset;    /* cat: where its slice starts along dim */
    bool skipped;      /* cat: a 1-D empty input that took no part */
} PcJoinItem;

typedef struct PcJoinNode {
    PcNode base;
    int dim;
    int n;
    PcJoinItem items[]; /* [n] */
} PcJoinNode;

/* Empty gradient for a skipped input; otherwise `g` converted to the input's dtype. */
static PcStatus finish_grad(const PcJoinItem *it, PcTensor *g, PcTensor **out) {
    return pc_cast(g, it->meta.dtype, out);
}

/* When grad mode is on and an input requires grad: a join node of n items attached to out. */
static PcStatus attach_join(const PcNodeVTable *vt, int n, PcTensor *const *ts, int dim,
                            PcTensor *out, PcJoinNode **node) {
    *node = NULL;
    if (!pc_autograd_any_requires_grad(n, ts)) return PC_OK;
    PcNode *nd;
    PC_TRY(pc_node_create(sizeof(PcJoinNode) + (size_t)n * sizeof(PcJoinItem), vt, 1, n, ts,
                          &nd));
    PcJoinNode *j = (PcJoinNode *)nd;
    j->dim = dim;
    j->n = n;
    for (int i = 0; i < n; i++) pc_meta_of(ts[i], &j->items[i].meta);
    pc_autograd_set_history(out, nd, 0);
    pc_node_decref(nd);
    *node = j;
    return PC_OK;
}

/* ---- cat ---- */

static PcStatus cat_apply(PcNode *self, PcTensor *const *go, const bool *needs,
                          PcTensor **gi) {
    PcJoinNode *n = (PcJoinNode *)self;
    for (int i = 0; i < n->n; i++) gi[i] = NULL;
    for (int i = 0; i < n->n; i++) {
        if (!needs[i]) continue;
        const PcJoinItem *it = &n->items[i];
        PcStatus st;
        if (it->skipped) {
            st = pc_op_empty(it->meta.ndim, it->meta.shape, it->meta.dtype, it->meta.device,
                             &gi[i]);
        } else {
            PcTensor *s;
            st = pc_op_slice(go[0], n->dim, it->offset, it->offset + it->meta.shape[n->dim], 1,
                             &s);
            if (st == PC_OK) {
                st = finish_grad(it, s, &gi[i]);
                pc_tensor_decref(s);
            }
        }
        if (st != PC_OK) {
            for (int k = 0; k < n->n; k++) {
                pc_tensor_decref(gi[k]);
                gi[k] = NULL;
            }
            return st;
        }
    }
    return PC_OK;
}

static const PcNodeVTable cat_vt = {"CatBackward0", cat_apply, NULL};

static bool cat_skips(const PcTensor *t) { return t->ndim == 1 && t->shape[0] == 0; }

/* Copy src into dst's view (offset, shape, dst's strides) through the backend. */
static PcStatus copy_into(const PcBackend *be, PcTensor *dst, int64_t offset, int ndim,
                          const int64_t *shape, const PcTensor *src) {
    PcTensor *v;
    PC_TRY(pc_tensor_view_of(dst->storage, offset, ndim, shape, dst->strides, dst->dtype, &v));
    PcStatus st = be->copy(v, src);
    pc_tensor_decref(v);
    return st;
}

PcStatus pc_op_cat(int n, PcTensor *const *ts, int dim, PcTensor **out) {
    *out = NULL;
    char a[160], b[160];
    if (n <= 0 || !ts) return pc_set_error(PC_ERR_INVALID, "cat: expected a non-empty list of "
                                           "tensors");
    for (int i = 0; i < n; i++)
        if (!ts[i]) return pc_set_error(PC_ERR_INVALID, "cat: tensor %d is NULL", i);
    int ref = -1;
    for (int i = 0; i < n && ref < 0; i++)
        if (!cat_skips(ts[i])) ref = i;
    const PcTensor *r = ts[ref >= 0 ? ref : 0];
    PcDType dtype = ts[0]->dtype;
    for (int i = 0; i < n; i++) {
        PC_TRY(pc_check_same_device("cat", r, ts[i]));
        dtype = pc_dtype_promote(dtype, ts[i]->dtype);
        if (ts[i]->ndim == 0)
            return pc_set_error(PC_ERR_INVALID, "cat: zero-dimensional tensor (at position %d) "
                                "cannot be concatenated", i);
    }
    int d;
    PC_TRY(pc_wrap_dim("cat", dim, r->ndim, &d));
    int64_t shape[PC_MAX_DIMS];
    for (int k = 0; k < r->ndim; k++) shape[k] = r->shape[k];
    shape[d] = 0;
    for (int i = 0; i < n; i++) {
        const PcTensor *t = ts[i];
        if (ref >= 0 && cat_skips(t)) continue;
        if (t->ndim != r->ndim)
            return pc_set_error(PC_ERR_INVALID, "cat: tensors must have the same number of "
                                "dimensions: tensor %d %s has %d, tensor %d %s has %d", ref,
                                pc_shape_str(r->ndim, r->shape, a, sizeof a), r->ndim, i,
                                pc_shape_str(t->ndim, t->shape, b, sizeof b), t->ndim);
        for (int k = 0; k < r->ndim; k++)
            if (k != d && t->shape[k] != r->shape[k])
                return pc_set_error(PC_ERR_INVALID, "cat: sizes of tensors must match except "
                                    "in dimension %d: expected size %lld but got size %lld "
                                    "for tensor number %d in the list (tensor %d %s, tensor "
                                    "%d %s)", d, (long long)r->shape[k],
                                    (long long)t->shape[k], i, ref,
                                    pc_shape_str(r->ndim, r->shape, a, sizeof a), i,
                                    pc_shape_str(t->ndim, t->shape, b, sizeof b));
        shape[d] += t->shape[d];
    }

    const PcBackend *be = pc_be(r);
    if (!be) return PC_ERR_DEVICE;
    PcTensor *res;
    PC_TRY(pc_tensor_empty(r->ndim, shape, dtype, r->device, &res));
    PcStatus st;
    PcJoinNode *node = NULL;
    int64_t off = 0;
    for (int i = 0; i < n; i++) {
        const PcTensor *t = ts[i];
        if (ref >= 0 && cat_skips(t)) continue;
        if (t->shape[d] > 0 && pc_tensor_numel(t) > 0)
            PC_TRY_GOTO(st, copy_into(be, res, res->offset + off * res->strides[d], t->ndim,
                                      t->shape, t));
        off += t->shape[d];
    }
    PC_TRY_GOTO(st, attach_join(&cat_vt, n, ts, d, res, &node));
    if (node) {
        off = 0;
        for (int i = 0; i < n; i++) {
            node->items[i].skipped = ref >= 0 && cat_skips(ts[i]);
            if (node->items[i].skipped) continue;
            node->items[i].offset = off;
            off += ts[i]->shape[d];
        }
    }
    *out = res;
    return PC_OK;
fail:
    pc_tensor_decref(res);
    return st;
}

/* ---- stack ---- */

static PcStatus stack_apply(PcNode *self, PcTensor *const *go, const bool *needs,
                            PcTensor **gi) {
    PcJoinNode *n = (PcJoinNode *)self;
    for (int i = 0; i < n->n; i++) gi[i] = NULL;
    for (int i = 0; i < n->n; i++) {
        if (!needs[i]) continue;
        PcTensor *s;
        PcStatus st = pc_op_select(go[0], n->dim, i, &s);
        if (st == PC_OK) {
            st = finish_grad(&n->items[i], s, &gi[i]);
            pc_tensor_decref(s);
        }
        if (st != PC_OK) {
            for (int k = 0; k < n->n; k++) {
                pc_tensor_decref(gi[k]);
                gi[k] = NULL;
            }
            return st;
        }
    }
    return PC_OK;
}

static const PcNodeVTable stack_vt = {"StackBackward0", stack_apply, NULL};

PcStatus pc_op_stack(int n, PcTensor *const *ts, int dim, PcTensor **out) {
    *out = NULL;
    char a[160], b[160];
    if (n <= 0 || !ts) return pc_set_error(PC_ERR_INVALID, "stack: expected a non-empty list "
                                           "of tensors");
    const PcTensor *r = ts[0];
    PcDType dtype = r->dtype;
    for (int i = 0; i < n; i++) {
        const PcTensor *t = ts[i];
        if (!t) return pc_set_error(PC_ERR_INVALID, "stack: tensor %d is NULL", i);
        PC_TRY(pc_check_same_device("stack", r, t));
        bool same = t->ndim == r->ndim;
        for (int k = 0; same && k < r->ndim; k++) same = t->shape[k] == r->shape[k];
        if (!same)
            return pc_set_error(PC_ERR_INVALID, "stack: expects each tensor to be equal size, "
                                "but got %s at entry 0 and %s at entry %d",
                                pc_shape_str(r->ndim, r->shape, a, sizeof a),
                                pc_shape_str(t->ndim, t->shape, b, sizeof b), i);
        dtype = pc_dtype_promote(dtype, t->dtype);
    }
    if (r->ndim >= PC_MAX_DIMS)
        return pc_set_error(PC_ERR_INVALID, "stack: inputs already have %d dims (the most "
                            "supported)", r->ndim);
    int d;
    PC_TRY(pc_wrap_dim("stack", dim, r->ndim + 1, &d));
    int64_t shape[PC_MAX_DIMS];
    for (int k = 0, j = 0; k <= r->ndim; k++) shape[k] = k == d ? n : r->shape[j++];

    const PcBackend *be = pc_be(r);
    if (!be) return PC_ERR_DEVICE;
    PcTensor *res;
    PC_TRY(pc_tensor_empty(r->ndim + 1, shape, dtype, r->device, &res));
    PcStatus st;
    PcJoinNode *node = NULL;
    if (pc_tensor_numel(res) > 0) {
        /* Input i fills the plane at index i of dim d: res's strides without dim d. */
        int64_t strides[PC_MAX_DIMS];
        for (int k = 0, j = 0; k <= r->ndim; k++)
            if (k != d) strides[j++] = res->strides[k];
        for (int i = 0; i < n; i++) {
            PcTensor *v;
            PC_TRY_GOTO(st, pc_tensor_view_of(res->storage, res->offset + i * res->strides[d],
                                              r->ndim, r->shape, strides, dtype, &v));
            st = be->copy(v, ts[i]);
            pc_tensor_decref(v);
            if (st != PC_OK) goto fail;
        }
    }
    PC_TRY_GOTO(st, attach_join(&stack_vt, n, ts, d, res, &node));
    *out = res;
    return PC_OK;
fail:
    pc_tensor_decref(res);
    return st;
}
