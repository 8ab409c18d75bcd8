/* shape.c — view and shape ops: view, reshape, flatten, transpose, t, permute, unsqueeze,
 * squeeze, expand, slice, select.
 *
 * Every op here except a reshape that has to copy returns a view: a new PcTensor header over
 * self's storage (pc_tensor_view_of), so writes through it are seen by self and bump the same
 * version counter. Nothing is copied and no kernel runs in the forward.
 *
 * Backward (torch's node names): a gradient of the output's shape is mapped back to the
 * input's shape —
 *   ViewBackward0 / UnsqueezeBackward0 / SqueezeBackward0/1: reshape to the input shape
 *     (only size-1 dims or a compatible regrouping differ, so this is a view when it can be);
 *   TransposeBackward0 / TBackward0: the same transpose; PermuteBackward0: the inverse;
 *   ExpandBackward0: sum over the expanded dims (pc_sum_to_shape);
 *   SliceBackward0 / SelectBackward0: zeros of the input's shape with the gradient copied
 *     into the matching slice through the backend's copy kernel.
 *
 * Exports: pc_op_view, pc_op_reshape, pc_op_flatten, pc_op_transpose, pc_op_t, pc_op_permute,
 * pc_op_unsqueeze, pc_op_squeeze, pc_op_expand, pc_op_slice, pc_op_select (see ops.h).
 */
#include <stdio.h>
#include <string.h>

#include "internal.h"

/* ---- helpers ---- */

/* A view of t's storage with the given geometry; no autograd. New reference. */
static PcStatus alias(PcTensor *t, int64_t offset, int ndim, const int64_t *shape,
                      const int64_t *strides, PcTensor **out) {
    return pc_tensor_view_of(t->storage, offset, ndim, shape, strides, t->dtype, out);
}

/* "[2, 5]" (torch's list form used in view/reshape messages) into buf. */
static const char *list_str(int ndim, const int64_t *v, char *buf, size_t n) {
    size_t pos = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && pos < n; i++)
        pos += (size_t)snprintf(buf + pos, n - pos, "%s%lld", i ? ", " : "", (long long)v[i]);
    if (pos < n) snprintf(buf + pos, n - pos, "]");
    return buf;
}

/* ---- shape-restoring backward (view, reshape, flatten, squeeze, unsqueeze) ---- */

typedef struct PcShapeNode {
    PcNode base;
    PcTensorMeta in; /* the input's shape: the gradient is reshaped back to it */
} PcShapeNode;

static PcStatus shape_apply(PcNode *self, PcTensor *const *go, const bool *needs,
                            PcTensor **gi) {
    PcShapeNode *n = (PcShapeNode *)self;
    gi[0] = NULL;
    if (!needs[0]) return PC_OK;
    return pc_op_reshape(go[0], n->in.ndim, n->in.shape, &gi[0]);
}

static const PcNodeVTable view_vt = {"ViewBackward0", shape_apply, NULL};
static const PcNodeVTable unsqueeze_vt = {"UnsqueezeBackward0", shape_apply, NULL};
static const PcNodeVTable squeeze_all_vt = {"SqueezeBackward0", shape_apply, NULL};
static const PcNodeVTable squeeze_dim_vt = {"SqueezeBackward1", shape_apply, NULL};

/* Make `v` (a fresh view of self) differentiable with a shape-restoring node. */
static PcStatus finish_shape_view(const PcNodeVTable *vt, PcTensor *self, PcTensor *v,
                                  PcTensor **out) {
    PcNode *node;
    PcStatus st = pc_attach_node(sizeof(PcShapeNode), vt, 1, &self, v, &node);
    if (st != PC_OK) {
        pc_tensor_decref(v);
        return st;
    }
    if (node) pc_meta_of(self, &((PcShapeNode *)node)->in);
    *out = v;
    return PC_OK;
}

/* ---- view / reshape / flatten ---- */

/* Resolve one -1 in `shape` against numel; errors as torch words them. */
static PcStatus infer_shape(int ndim, const int64_t *shape, int64_t numel, int64_t *out) {
    char buf[160];
    if (ndim < 0 || ndim > PC_MAX_DIMS)
        return pc_set_error(PC_ERR_INVALID, "view: shape has %d dims; at most %d are supported",
                            ndim, PC_MAX_DIMS);
    int infer = -1;
    int64_t known = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] == -1) {
            if (infer >= 0)
                return pc_set_error(PC_ERR_INVALID, "only one dimension can be inferred: "
                                    "shape %s", list_str(ndim, shape, buf, sizeof buf));
            infer = i;
        } else if (shape[i] < 0) {
            return pc_set_error(PC_ERR_INVALID, "invalid shape dimension %lld in shape %s",
                                (long long)shape[i], list_str(ndim, shape, buf, sizeof buf));
        } else {
            if (shape[i] != 0 && known > INT64_MAX / shape[i])
                return pc_set_error(PC_ERR_INVALID, "shape '%s' is invalid for input of "
                                    "size %lld", list_str(ndim, shape, buf, sizeof buf),
                                    (long long)numel);
            known *= shape[i];
        }
        out[i] = shape[i];
    }
    if (infer >= 0) {
        if (known == 0) {
            if (numel == 0)
                return pc_set_error(PC_ERR_INVALID, "cannot reshape tensor of 0 elements into "
                                    "shape %s because the unspecified dimension size -1 can "
                                    "be any value and is ambiguous",
                                    list_str(ndim, shape, buf, sizeof buf));
        } else if (numel % known == 0) {
            out[infer] = numel / known;
            return PC_OK;
        }
    } else if (known == numel) {
        return PC_OK;
    }
    return pc_set_error(PC_ERR_INVALID, "shape '%s' is invalid for input of size %lld",
                        list_str(ndim, shape, buf, sizeof buf), (long long)numel);
}

/* Strides that let (on, os, ost) be read as shape (nn, ns) without a copy; false when none
 * exist. Old dims are grouped into runs that are contiguous with each other ("chunks"); each
 * chunk must be covered exactly by a run of new dims, which then step through it with the
 * chunk's innermost stride. Size-1 dims take no part (their stride never matters). */
static bool view_strides(int on, const int64_t *os, const int64_t *ost, int nn,
                         const int64_t *ns, int64_t *nst) {
    int64_t numel = 1;
    for (int i = 0; i < on; i++) numel *= os[i];
    if (numel <= 1) {
        pc_contiguous_strides(nn, ns, nst);
        return true;
    }
    int ni = nn - 1;
    int oi = on - 1;
    while (oi >= 0) {
        if (os[oi] == 1) {
            oi--;
            continue;
        }
        int64_t base = ost[oi];
        int64_t chunk = os[oi];
        int lo = oi;
        for (;;) {
            int k = lo - 1;
            while (k >= 0 && os[k] == 1) k--;
            if (k < 0 || ost[k] != ost[lo] * os[lo]) break;
            chunk *= os[k];
            lo = k;
        }
        int64_t run = 1;
        while (run < chunk) {
            if (ni < 0) return false;
            nst[ni] = base * run;
            run *= ns[ni];
            ni--;
        }
        if (run != chunk) return false;
        oi = lo - 1;
    }
    for (; ni >= 0; ni--) nst[ni] = ni + 1 < nn ? nst[ni + 1] * ns[ni + 1] : 1;
    return true;
}

/* The view (no autograd) when the strides allow it; *ok false (and *out NULL) otherwise. */
static PcStatus try_view(PcTensor *self, int ndim, const int64_t *shape, bool *ok,
                         PcTensor **out) {
    int64_t ns[PC_MAX_DIMS], nst[PC_MAX_DIMS];
    *out = NULL;
    PC_TRY(infer_shape(ndim, shape, pc_tensor_numel(self), ns));
    *ok = view_strides(self->ndim, self->shape, self->strides, ndim, ns, nst);
    if (!*ok) return PC_OK;
    return alias(self, self->offset, ndim, ns, nst, out);
}

PcStatus pc_op_view(PcTensor *self, int ndim, const int64_t *shape, PcTensor **out) {
    *out = NULL;
    bool ok;
    PcTensor *v;
    PC_TRY(try_view(self, ndim, shape, &ok, &v));
    if (!ok) {
        char a[160], b[160], c[160];
        return pc_set_error(PC_ERR_RUNTIME, "view size is not compatible with input tensor's "
                            "size and stride (at least one dimension spans across two "
                            "contiguous subspaces): input %s with strides %s, shape %s. Use "
                            ".reshape(...) instead.",
                            pc_shape_str(self->ndim, self->shape, a, sizeof a),
                            pc_shape_str(self->ndim, self->strides, b, sizeof b),
                            list_str(ndim, shape, c, sizeof c));
    }
    return finish_shape_view(&view_vt, self, v, out);
}

PcStatus pc_op_reshape(PcTensor *self, int ndim, const int64_t *shape, PcTensor **out) {
    *out = NULL;
    bool ok;
    PcTensor *v;
    PC_TRY(try_view(self, ndim, shape, &ok, &v));
    if (ok) return finish_shape_view(&view_vt, self, v, out);
    /* Not viewable: a contiguous copy (CloneBackward0) viewed (ViewBackward0). */
    PcTensor *c;
    PC_TRY(pc_op_contiguous(self, &c));
    PcStatus st = pc_op_view(c, ndim, shape, out);
    pc_tensor_decref(c);
    return st;
}

PcStatus pc_op_flatten(PcTensor *self, int start_dim, int end_dim, PcTensor **out) {
    *out = NULL;
    if (self->ndim == 0) {
        int64_t one = 1;
        return pc_op_reshape(self, 1, &one, out);
    }
    int s, e;
    PC_TRY(pc_wrap_dim("flatten", start_dim, self->ndim, &s));
    PC_TRY(pc_wrap_dim("flatten", end_dim, self->ndim, &e));
    if (s > e)
        return pc_set_error(PC_ERR_INVALID, "flatten: start_dim (%d) cannot come after "
                            "end_dim (%d)", s, e);
    if (s == e) {
        pc_tensor_incref(self);
        *out = self;
        return PC_OK;
    }
    int64_t shape[PC_MAX_DIMS];
    int nd = 0;
    for (int i = 0; i < s; i++) shape[nd++] = self->shape[i];
    int64_t m = 1;
    for (int i = s; i <= e; i++) m *= self->shape[i];
    shape[nd++] = m;
    for (int i = e + 1; i < self->ndim; i++) shape[nd++] = self->shape[i];
    return pc_op_reshape(self, nd, shape, out);
}

/* ---- transpose / t / permute ---- */

typedef struct PcTransposeNode {
    PcNode base;
    int d0, d1; /* wrapped dims; the backward swaps them back */
} PcTransposeNode;

static PcStatus transpose_apply(PcNode *self, PcTensor *const *go, const bool *needs,
                                PcTensor **gi) {
    PcTransposeNode *n = (PcTransposeNode *)self;
    gi[0] = NULL;
    if (!needs[0]) return PC_OK;
    return pc_op_transpose(go[0], n->d0, n->d1, &gi[0]);
}

static const PcNodeVTable transpose_vt = {"TransposeBackward0", transpose_apply, NULL};
static const PcNodeVTable t_vt = {"TBackward0", transpose_apply, NULL};

static PcStatus transpose_impl(const PcNodeVTable *vt, PcTensor *self, int a, int b,
                               PcTensor **out) {
    int64_t shape[PC_MAX_DIMS], strides[PC_MAX_DIMS];
    for (int i = 0; i < self->ndim; i++) {
        shape[i] = self->shape[i];
        strides[i] = self->strides[i];
    }
    if (a != b && self->ndim > 0) {
        int64_t t = shape[a]; shape[a] = shape[b]; shape[b] = t;
        t = strides[a]; strides[a] = strides[b]; strides[b] = t;
    }
    PcTensor *v;
    PC_TRY(alias(self, self->offset, self->ndim, shape, strides, &v));
    PcNode *node;
    PcStatus st = pc_attach_node(sizeof(PcTransposeNode), vt, 1, &self, v, &node);
    if (st != PC_OK) {
        pc_tensor_decref(v);
        return st;
    }
    if (node) {
        ((PcTransposeNode *)node)->d0 = a;
        ((PcTransposeNode *)node)->d1 = b;
    }
    *out = v;
    return PC_OK;
}

PcStatus pc_op_transpose(PcTensor *self, int d0, int d1, PcTensor **out) {
    *out = NULL;
    int a, b;
    PC_TRY(pc_wrap_dim("transpose", d0, self->ndim, &a));
    PC_TRY(pc_wrap_dim("transpose", d1, self->ndim, &b));
    return transpose_impl(&transpose_vt, self, a, b, out);
}

PcStatus pc_op_t(PcTensor *self, PcTensor **out) {
    *out = NULL;
    char buf[160];
    if (self->ndim > 2)
        return pc_set_error(PC_ERR_INVALID, "t: expects a tensor with <= 2 dimensions, but "
                            "self %s is %dD", pc_shape_str(self->ndim, self->shape, buf,
                            sizeof buf), self->ndim);
    return transpose_impl(&t_vt, self, 0, self->ndim == 2 ? 1 : 0, out);
}

typedef struct PcPermuteNode {
    PcNode base;
    int ndim;
    int inv[PC_MAX_DIMS]; /* the inverse permutation */
} PcPermuteNode;

static PcStatus permute_apply(PcNode *self, PcTensor *const *go, const bool *needs,
                              PcTensor **gi) {
    PcPermuteNode *n = (PcPermuteNode *)self;
    gi[0] = NULL;
    if (!needs[0]) return PC_OK;
    return pc_op_permute(go[0], n->ndim, n->inv, &gi[0]);
}

static const PcNodeVTable permute_vt = {"PermuteBackward0", permute_apply, NULL};

PcStatus pc_op_permute(PcTensor *self, int ndims, const int *dims, PcTensor **out) {
    *out = NULL;
    char buf[160];
    if (ndims != self->ndim)
        return pc_set_error(PC_ERR_INVALID, "permute: number of dims don't match: got %d dims "
                            "for input %s (%d dims)", ndims,
                            pc_shape_str(self->ndim, self->shape, buf, sizeof buf), self->ndim);
    int perm[PC_MAX_DIMS];
    bool seen[PC_MAX_DIMS] = {false};
    for (int i = 0; i < ndims; i++) {
        PC_TRY(pc_wrap_dim("permute", dims[i], self->ndim, &perm[i]));
        if (seen[perm[i]])
            return pc_set_error(PC_ERR_INVALID, "permute: duplicate dims are not allowed: "
                                "dim %d appears twice (input %s)", perm[i],
                                pc_shape_str(self->ndim, self->shape, buf, sizeof buf));
        seen[perm[i]] = true;
    }
    int64_t shape[PC_MAX_DIMS], strides[PC_MAX_DIMS];
    for (int i = 0; i < ndims; i++) {
        shape[i] = self->shape[perm[i]];
        strides[i] = self->strides[perm[i]];
    }
    PcTensor *v;
    PC_TRY(alias(self, self->offset, ndims, shape, strides, &v));
    PcNode *node;
    PcStatus st = pc_attach_node(sizeof(PcPermuteNode), &permute_vt, 1, &self, v, &node);
    if (st != PC_OK) {
        pc_tensor_decref(v);
        return st;
    }
    if (node) {
        PcPermuteNode *n = (PcPermuteNode *)node;
        n->ndim = ndims;
        for (int i = 0; i < ndims; i++) n->inv[perm[i]] = i;
    }
    *out = v;
    return PC_OK;
}

/* ---- unsqueeze / squeeze ---- */

PcStatus pc_op_unsqueeze(PcTensor *self, int dim, PcTensor **out) {
    *out = NULL;
    if (self->ndim >= PC_MAX_DIMS)
        return pc_set_error(PC_ERR_INVALID, "unsqueeze: input already has %d dims (the most "
                            "supported)", self->ndim);
    int d;
    PC_TRY(pc_wrap_dim("unsqueeze", dim, self->ndim + 1, &d));
    int64_t shape[PC_MAX_DIMS], strides[PC_MAX_DIMS];
    int nd = 0;
    for (int i = 0; i <= self->ndim; i++) {
        if (i == d) {
            shape[nd] = 1;
            strides[nd] = d < self->ndim ? self->shape[d] * self->strides[d] : 1;
            nd++;
        }
        if (i < self->ndim) {
            shape[nd] = self->shape[i];
            strides[nd] = self->strides[i];
            nd++;
        }
    }
    PcTensor *v;
    PC_TRY(alias(self, self->offset, nd, shape, strides, &v));
    return finish_shape_view(&unsqueeze_vt, self, v, out);
}

PcStatus pc_op_squeeze(PcTensor *self, int dim, PcTensor **out) {
    *out = NULL;
    int d = -1;
    if (dim != PC_ALL_DIMS) PC_TRY(pc_wrap_dim("squeeze", dim, self->ndim, &d));
    int64_t shape[PC_MAX_DIMS], strides[PC_MAX_DIMS];
    int nd = 0;
    for (int i = 0; i < self->ndim; i++) {
        bool drop = self->shape[i] == 1 && (dim == PC_ALL_DIMS || i == d);
        if (drop) continue;
        shape[nd] = self->shape[i];
        strides[nd] = self->strides[i];
        nd++;
    }
    PcTensor *v;
    PC_TRY(alias(self, self->offset, nd, shape, strides, &v));
    return finish_shape_view(dim == PC_ALL_DIMS ? &squeeze_all_vt : &squeeze_dim_vt, self, v,
                             out);
}

/* ---- expand ---- */

typedef struct PcExpandNode {
    PcNode base;
    PcTensorMeta in;
} PcExpandNode;

static PcStatus expand_apply(PcNode *self, PcTensor *const *go, const bool *needs,
                             PcTensor **gi) {
    PcExpandNode *n = (PcExpandNode *)self;
    gi[0] = NULL;
    if (!needs[0]) return PC_OK;
    return pc_sum_to_shape(go[0], n->in.ndim, n->in.shape, &gi[0]);
}

static const PcNodeVTable expand_vt = {"ExpandBackward0", expand_apply, NULL};

PcStatus pc_op_expand(PcTensor *self, int ndim, const int64_t *shape, PcTensor **out) {
    *out = NULL;
    char a[160], b[160];
    if (ndim > PC_MAX_DIMS)
        return pc_set_error(PC_ERR_INVALID, "expand: %d dims requested; at most %d are "
                            "supported", ndim, PC_MAX_DIMS);
    if (ndim < self->ndim)
        return pc_set_error(PC_ERR_INVALID, "expand: the number of sizes provided (%d) must be "
                            "greater or equal to the number of dimensions in the tensor (%d): "
                            "target %s, tensor %s", ndim, self->ndim,
                            list_str(ndim, shape, a, sizeof a),
                            pc_shape_str(self->ndim, self->shape, b, sizeof b));
    int lead = ndim - self->ndim;
    int64_t ns[PC_MAX_DIMS], nst[PC_MAX_DIMS];
    for (int i = 0; i < ndim; i++) {
        int j = i - lead; /* the matching input dim, when >= 0 */
        if (j < 0) {
            if (shape[i] < 0)
                return pc_set_error(PC_ERR_INVALID, "expand: the expanded size of the tensor "
                                    "(%lld) isn't allowed in a leading, non-existing "
                                    "dimension %d: target %s, tensor %s", (long long)shape[i],
                                    i, list_str(ndim, shape, a, sizeof a),
                                    pc_shape_str(self->ndim, self->shape, b, sizeof b));
            ns[i] = shape[i];
            nst[i] = 0;
        } else if (shape[i] == -1 || shape[i] == self->shape[j]) {
            ns[i] = self->shape[j];
            nst[i] = self->strides[j];
        } else if (self->shape[j] == 1 && shape[i] >= 0) {
            ns[i] = shape[i];
            nst[i] = 0;
        } else {
            return pc_set_error(PC_ERR_INVALID, "expand: the expanded size of the tensor "
                                "(%lld) must match the existing size (%lld) at non-singleton "
                                "dimension %d: target %s, tensor %s", (long long)shape[i],
                                (long long)self->shape[j], i,
                                list_str(ndim, shape, a, sizeof a),
                                pc_shape_str(self->ndim, self->shape, b, sizeof b));
        }
    }
    PcTensor *v;
    PC_TRY(alias(self, self->offset, ndim, ns, nst, &v));
    PcNode *node;
    PcStatus st = pc_attach_node(sizeof(PcExpandNode), &expand_vt, 1, &self, v, &node);
    if (st != PC_OK) {
        pc_tensor_decref(v);
        return st;
    }
    if (node) pc_meta_of(self, &((PcExpandNode *)node)->in);
    *out = v;
    return PC_OK;
}

/* ---- slice / select ---- */

/* The slice view (no autograd): `len` elements start, start+step, ... along dim. */
static PcStatus slice_alias(PcTensor *t, int dim, int64_t start, int64_t len, int64_t step,
                            PcTensor **out) {
    int64_t shape[PC_MAX_DIMS], strides[PC_MAX_DIMS];
    for (int i = 0; i < t->ndim; i++) {
        shape[i] = t->shape[i];
        strides[i] = t->strides[i];
    }
    shape[dim] = len;
    strides[dim] = t->strides[dim] * step;
    int64_t offset = t->offset + (len > 0 ? start * t->strides[dim] : 0);
    return alias(t, offset, t->ndim, shape, strides, out);
}

/* The select view (no autograd): dim dropped at a non-negative in-range index. */
static PcStatus select_alias(PcTensor *t, int dim, int64_t index, PcTensor **out) {
    int64_t shape[PC_MAX_DIMS], strides[PC_MAX_DIMS];
    int nd = 0;
    for (int i = 0; i < t->ndim; i++) {
        if (i == dim) continue;
        shape[nd] = t->shape[i];
        strides[nd] = t->strides[i];
        nd++;
    }
    return alias(t, t->offset + index * t->strides[dim], nd, shape, strides, out);
}

typedef struct PcSliceNode {
    PcNode base;
    PcTensorMeta in;
    int dim;
    int64_t start, len, step; /* for select: start = index, len = -1 */
} PcSliceNode;

/* zeros(in) with grad written into the slice (or selected plane) the forward viewed. */
static PcStatus slice_apply(PcNode *self, PcTensor *const *go, const bool *needs,
                            PcTensor **gi) {
    PcSliceNode *n = (PcSliceNode *)self;
    gi[0] = NULL;
    if (!needs[0]) return PC_OK;
    PcTensor *z = NULL, *v = NULL;
    PcStatus st;
    const PcBackend *be = pc_backend_for(n->in.device);
    if (!be) return PC_ERR_DEVICE;
    PC_TRY_GOTO(st, pc_op_full(n->in.ndim, n->in.shape, 0.0, go[0]->dtype, n->in.device, &z));
    if (n->len < 0)
        PC_TRY_GOTO(st, select_alias(z, n->dim, n->start, &v));
    else
        PC_TRY_GOTO(st, slice_alias(z, n->dim, n->start, n->len, n->step, &v));
    PC_TRY_GOTO(st, be->copy(v, go[0]));
    pc_tensor_decref(v);
    gi[0] = z;
    return PC_OK;
fail:
    pc_tensor_decref(v);
    pc_tensor_decref(z);
    return st;
}

static const PcNodeVTable slice_vt = {"SliceBackward0", slice_apply, NULL};
static const PcNodeVTable select_vt = {"SelectBackward0", slice_apply, NULL};

static PcStatus finish_slice(const PcNodeVTable *vt, PcTensor *self, PcTensor *v, int dim,
                             int64_t start, int64_t len, int64_t step, PcTensor **out) {
    PcNode *node;
    PcStatus st = pc_attach_node(sizeof(PcSliceNode), vt, 1, &self, v, &node);
    if (st != PC_OK) {
        pc_tensor_decref(v);
        return st;
    }
    if (node) {
        PcSliceNode *n = (PcSliceNode *)node;
        pc_meta_of(self, &n->in);
        n->dim = dim;
        n->start = start;
        n->len = len;
        n->step = step;
    }
    *out = v;
    return PC_OK;
}

PcStatus pc_op_slice(PcTensor *self, int dim, int64_t start, int64_t stop, int64_t step,
                     PcTensor **out) {
    *out = NULL;
    int d;
    if (self->ndim == 0)
        return pc_set_error(PC_ERR_INDEX, "slice: cannot slice a 0-dim tensor");
    PC_TRY(pc_wrap_dim("slice", dim, self->ndim, &d));
    if (step <= 0)
        return pc_set_error(PC_ERR_INVALID, "slice: step must be positive, got %lld",
                            (long long)step);
    int64_t size = self->shape[d];
    if (start < 0) start = 0;
    if (start > size) start = size;
    if (stop > size) stop = size;
    if (stop < start) stop = start;
    int64_t len = (stop - start + step - 1) / step;
    PcTensor *v;
    PC_TRY(slice_alias(self, d, start, len, step, &v));
    return finish_slice(&slice_vt, self, v, d, start, len, step, out);
}

PcStatus pc_op_select(PcTensor *self, int dim, int64_t index, PcTensor **out) {
    *out = NULL;
    if (self->ndim == 0)
        return pc_set_error(PC_ERR_INDEX, "select: invalid index of a 0-dim tensor");
    int d;
    PC_TRY(pc_wrap_dim("select", dim, self->ndim, &d));
    int64_t size = self->shape[d];
    if (index < -size || index >= size)
        return pc_set_error(PC_ERR_INDEX, "index %lld is out of bounds for dimension %d with "
                            "size %lld", (long long)index, d, (long long)size);
    if (index < 0) index += size;
    PcTensor *v;
    PC_TRY(select_alias(self, d, index, &v));
    return finish_slice(&select_vt, self, v, d, index, -1, 1, out);
}
