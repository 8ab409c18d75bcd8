/* loss.c — softmax / log_softmax, mse_loss and cross_entropy.
 *
 * softmax over any dim: the backend's row kernel works on the last dim of a contiguous
 * tensor, so a dim other than the last is swapped to the end (transpose + contiguous copy),
 * computed, and swapped back into a contiguous result (the same layout torch returns).
 * The backward (SoftmaxBackward0 / LogSoftmaxBackward0) saves the output and does the same
 * swap around the backend's softmax_backward.
 *
 * mse_loss needs input and target of the same shape (torch would broadcast with a warning;
 * pipec refuses). Both float; mixed dtypes promote. It keeps diff = input - target
 * (an internal tensor) for the backward: d input = 2 * diff * g (/ numel for mean),
 * d target = -d input, each converted back to its own dtype (MseLossBackward0).
 *
 * cross_entropy = log_softmax over classes + picking the target class (gather_dim) + the
 * reduction. Targets are int64 class indices; on the CPU every value is checked against
 * [0, C) before any work (on CUDA the gather kernel's own bounds check applies, avoiding a
 * device-to-host sync per loss). No ignore_index, weights or label smoothing. The backward
 * (NllLossBackward0, fused with the log_softmax) is (softmax - onehot(target)) * g, / N
 * for mean.
 *
 * Exports: pc_op_softmax, pc_op_mse_loss, pc_op_cross_entropy (see ops.h).
 */
#include <stdio.h>
#include <string.h>

#include "internal.h"

/* ---- helpers ---- */

/* A view of t's storage with a new geometry (strides NULL = contiguous); no autograd. */
static PcStatus alias(PcTensor *t, int ndim, const int64_t *shape, const int64_t *strides,
                      PcTensor **out) {
    return pc_tensor_view_of(t->storage, t->offset, ndim, shape, strides, t->dtype, out);
}

/* contiguous(t.transpose(d, last)): the same function moves dim d last and back. */
static PcStatus swap_last(PcTensor *t, int d, PcTensor **out) {
    int last = t->ndim - 1;
    if (d == last) return pc_make_contiguous(t, out);
    int64_t shape[PC_MAX_DIMS], strides[PC_MAX_DIMS];
    for (int i = 0; i < t->ndim; i++) {
        shape[i] = t->shape[i];
        strides[i] = t->strides[i];
    }
    shape[d] = t->shape[last];
    strides[d] = t->strides[last];
    shape[last] = t->shape[d];
    strides[last] = t->strides[d];
    PcTensor *v;
    PC_TRY(alias(t, t->ndim, shape, strides, &v));
    PcStatus st = pc_make_contiguous(v, out);
    pc_tensor_decref(v);
    return st;
}

/* 0-d tensors are handled as shape (1,). New reference: a view, or t itself. */
static PcStatus at_least_1d(PcTensor *t, PcTensor **out) {
    if (t->ndim > 0) {
        pc_tensor_incref(t);
        *out = t;
        return PC_OK;
    }
    int64_t one = 1, st1 = 1;
    return alias(t, 1, &one, &st1, out);
}

/* ---- softmax ---- */

typedef struct PcSoftmaxNode {
    PcNode base;
    PcSaved y; /* the forward's output (detached) */
    int dim;
    bool log;
} PcSoftmaxNode;

static void softmax_release(PcNode *self) { pc_saved_clear(&((PcSoftmaxNode *)self)->y); }

/* y = softmax(x) along d (no autograd); a contiguous result of x's shape. */
static PcStatus softmax_raw(PcTensor *x, int d, bool log, bool backward, PcTensor *dy,
                            PcTensor **out) {
    *out = NULL;
    const PcBackend *be = pc_be(x);
    if (!be) return PC_ERR_DEVICE;
    PcTensor *x1 = NULL, *xs = NULL, *dy1 = NULL, *dys = NULL, *rs = NULL, *r = NULL;
    PcStatus st;
    PC_TRY_GOTO(st, at_least_1d(x, &x1));
    PC_TRY_GOTO(st, swap_last(x1, d, &xs));
    PC_TRY_GOTO(st, pc_empty_like(xs, &rs));
    if (backward) {
        PC_TRY_GOTO(st, at_least_1d(dy, &dy1));
        PC_TRY_GOTO(st, pc_cast(dy1, x->dtype, &dys)); /* dys: dy in x's dtype */
        pc_tensor_decref(dy1);
        dy1 = dys;
        dys = NULL;
        PC_TRY_GOTO(st, swap_last(dy1, d, &dys));
        if (pc_tensor_numel(xs) > 0) PC_TRY_GOTO(st, be->softmax_backward(rs, dys, xs, log));
    } else {
        if (pc_tensor_numel(xs) > 0) PC_TRY_GOTO(st, be->softmax(rs, xs, log));
    }
    PC_TRY_GOTO(st, swap_last(rs, d, &r));
    pc_tensor_decref(rs);
    rs = NULL;
    if (x->ndim == 0) {
        PcTensor *v;
        PC_TRY_GOTO(st, alias(r, 0, NULL, NULL, &v));
        pc_tensor_decref(r);
        r = v;
    }
    *out = r;
    r = NULL;
    st = PC_OK;
fail:
    pc_tensor_decref(r);
    pc_tensor_decref(rs);
    pc_tensor_decref(dys);
    pc_tensor_decref(dy1);
    pc_tensor_decref(xs);
    pc_tensor_decref(x1);
    return st;
}

static PcStatus softmax_apply(PcNode *self, PcTensor *const *go, const bool *needs,
                              PcTensor **gi) {
    PcSoftmaxNode *n = (PcSoftmaxNode *)self;
    gi[0] = NULL;
    if (!needs[0]) return PC_OK;
    PcTensor *y;
    PC_TRY(pc_saved_get(&n->y, self, &y));
    PcStatus st = softmax_raw(y, n->dim, n->log, true, go[0], &gi[0]);
    pc_tensor_decref(y);
    return st;
}

static const PcNodeVTable softmax_vt = {"SoftmaxBackward0", softmax_apply, softmax_release};
static const PcNodeVTable log_softmax_vt = {"LogSoftmaxBackward0", softmax_apply,
                                            softmax_release};

PcStatus pc_op_softmax(PcTensor *self, int dim, bool log, PcTensor **out) {
    *out = NULL;
    const char *op = log ? "log_softmax" : "softmax";
    PC_TRY(pc_check_float(op, "input", self));
    int d;
    PC_TRY(pc_wrap_dim(op, dim, self->ndim, &d));
    PcTensor *y, *yd = NULL;
    PC_TRY(softmax_raw(self, d, log, false, NULL, &y));
    PcNode *node;
    PcStatus st;
    PC_TRY_GOTO(st, pc_attach_node(sizeof(PcSoftmaxNode), log ? &log_softmax_vt : &softmax_vt, 1,
                                &self, y, &node));
    if (node) {
        PcSoftmaxNode *n = (PcSoftmaxNode *)node;
        n->dim = d;
        n->log = log;
        PC_TRY_GOTO(st, pc_op_detach(y, &yd));
        PC_TRY_GOTO(st, pc_saved_set(&n->y, yd));
        pc_tensor_decref(yd);
    }
    *out = y;
    return PC_OK;
fail:
    pc_tensor_decref(yd);
    pc_tensor_decref(y);
    return st;
}

/* ---- mse_loss ---- */

typedef struct PcMseNode {
    PcNode base;
    PcSaved diff;           /* input - target, promoted dtype, input's shape */
    PcReduction red;
    PcTensorMeta in, tgt;
} PcMseNode;

static void mse_release(PcNode *self) { pc_saved_clear(&((PcMseNode *)self)->diff); }

static PcStatus mse_apply(PcNode *self, PcTensor *const *go, const bool *needs,
                          PcTensor **gi) {
    PcMseNode *n = (PcMseNode *)self;
    gi[0] = gi[1] = NULL;
    if (!needs[0] && !needs[1]) return PC_OK;
    PcTensor *diff = NULL, *g = NULL, *ge = NULL, *d = NULL, *nd = NULL;
    PcStatus st;
    PC_TRY(pc_saved_get(&n->diff, self, &diff));
    const PcBackend *be = pc_be(diff);
    if (!be) {
        st = PC_ERR_DEVICE;
        goto fail;
    }
    int64_t numel = pc_tensor_numel(diff);
    double scale = 2.0;
    if (n->red == PC_REDUCTION_MEAN) scale = numel > 0 ? 2.0 / (double)numel : 0.0;
    PC_TRY_GOTO(st, pc_cast(go[0], diff->dtype, &g));
    PC_TRY_GOTO(st, pc_expand_view(g, diff->ndim, diff->shape, &ge));
    PC_TRY_GOTO(st, pc_empty_like(diff, &d));
    if (numel > 0) {
        PC_TRY_GOTO(st, be->binary(PC_B_MUL, d, diff, ge, 1.0));
        PC_TRY_GOTO(st, be->unary(PC_U_MUL_S, d, d, scale));
    }
    if (needs[0]) PC_TRY_GOTO(st, pc_cast(d, n->in.dtype, &gi[0]));
    if (needs[1]) {
        PC_TRY_GOTO(st, pc_empty_like(d, &nd));
        if (numel > 0) PC_TRY_GOTO(st, be->unary(PC_U_NEG, nd, d, 0.0));
        PC_TRY_GOTO(st, pc_cast(nd, n->tgt.dtype, &gi[1]));
    }
    st = PC_OK;
    goto done;
fail:
    pc_tensor_decref(gi[0]);
    pc_tensor_decref(gi[1]);
    gi[0] = gi[1] = NULL;
done:
    pc_tensor_decref(nd);
    pc_tensor_decref(d);
    pc_tensor_decref(ge);
    pc_tensor_decref(g);
    pc_tensor_decref(diff);
    return st;
}

static const PcNodeVTable mse_vt = {"MseLossBackward0", mse_apply, mse_release};

/* Reduce src (any shape) to a 0-d tensor with the backend (MEAN or SUM). */
static PcStatus reduce_all(const PcBackend *be, PcReduceOp op, PcTensor *src, PcTensor **out) {
    *out = NULL;
    int64_t ones[PC_MAX_DIMS];
    for (int i = 0; i < src->ndim; i++) ones[i] = 1;
    PcTensor *r, *v;
    PC_TRY(pc_tensor_empty(src->ndim, ones, src->dtype, src->device, &r));
    PcStatus st = be->reduce(op, r, src);
    if (st == PC_OK) st = alias(r, 0, NULL, NULL, &v);
    pc_tensor_decref(r);
    if (st == PC_OK) *out = v;
    return st;
}

static PcStatus check_reduction(const char *op, PcReduction red) {
    if (red == PC_REDUCTION_NONE || red == PC_REDUCTION_MEAN || red == PC_REDUCTION_SUM)
        return PC_OK;
    return pc_set_error(PC_ERR_INVALID, "%s: reduction %d is not one of 'none' (0), 'mean' (1), "
                        "'sum' (2)", op, (int)red);
}

PcStatus pc_op_mse_loss(PcTensor *input, PcTensor *target, PcReduction red, PcTensor **out) {
    *out = NULL;
    char a[160], b[160];
    PC_TRY(check_reduction("mse_loss", red));
    PC_TRY(pc_check_float("mse_loss", "input", input));
    PC_TRY(pc_check_float("mse_loss", "target", target));
    PC_TRY(pc_check_same_device("mse_loss", input, target));
    bool same = input->ndim == target->ndim;
    for (int i = 0; same && i < input->ndim; i++) same = input->shape[i] == target->shape[i];
    if (!same)
        return pc_set_error(PC_ERR_INVALID, "mse_loss: input %s and target %s must have the "
                            "same shape", pc_shape_str(input->ndim, input->shape, a, sizeof a),
                            pc_shape_str(target->ndim, target->shape, b, sizeof b));
    const PcBackend *be = pc_be(input);
    if (!be) return PC_ERR_DEVICE;
    PcDType dt = pc_dtype_promote(input->dtype, target->dtype);
    PcTensor *ai = NULL, *bi = NULL, *diff = NULL, *sq = NULL, *res = NULL;
    PcStatus st;
    PC_TRY_GOTO(st, pc_cast(input, dt, &ai));
    PC_TRY_GOTO(st, pc_cast(target, dt, &bi));
    PC_TRY_GOTO(st, pc_tensor_empty(input->ndim, input->shape, dt, input->device, &diff));
    PC_TRY_GOTO(st, pc_empty_like(diff, &sq));
    if (pc_tensor_numel(diff) > 0) {
        PC_TRY_GOTO(st, be->binary(PC_B_SUB, diff, ai, bi, 1.0));
        PC_TRY_GOTO(st, be->binary(PC_B_MUL, sq, diff, diff, 1.0));
    }
    if (red == PC_REDUCTION_NONE) {
        res = sq;
        sq = NULL;
    } else {
        PC_TRY_GOTO(st, reduce_all(be, red == PC_REDUCTION_MEAN ? PC_R_MEAN : PC_R_SUM, sq,
                                   &res));
    }
    PcTensor *ins[2] = {input, target};
    PcNode *node;
    PC_TRY_GOTO(st, pc_attach_node(sizeof(PcMseNode), &mse_vt, 2, ins, res, &node));
    if (node) {
        PcMseNode *n = (PcMseNode *)node;
        n->red = red;
        pc_meta_of(input, &n->in);
        pc_meta_of(target, &n->tgt);
        PC_TRY_GOTO(st, pc_saved_set(&n->diff, diff));
    }
    *out = res;
    res = NULL;
    st = PC_OK;
fail:
    pc_tensor_decref(res);
    pc_tensor_decref(sq);
    pc_tensor_decref(diff);
    pc_tensor_decref(bi);
    pc_tensor_decref(ai);
    return st;
}

/* ---- cross_entropy ---- */

typedef struct PcNllNode {
    PcNode base;
    PcSaved lsm;            /* (N, C) contiguous log_softmax of the input (internal) */
    PcSaved target;         /* (N, 1) int64 class indices */
    PcReduction red;
    PcTensorMeta in;        /* (N, C) or (C,) */
} PcNllNode;

static void nll_release(PcNode *self) {
    PcNllNode *n = (PcNllNode *)self;
    pc_saved_clear(&n->lsm);
    pc_saved_clear(&n->target);
}

static PcStatus nll_apply(PcNode *self, PcTensor *const *go, const bool *needs,
                          PcTensor **gi) {
    PcNllNode *n = (PcNllNode *)self;
    gi[0] = gi[1] = NULL;
    if (!needs[0]) return PC_OK;
    PcTensor *lsm = NULL, *tgt = NULL, *dx = NULL, *m1 = NULL, *g = NULL, *g2 = NULL,
             *ge = NULL, *r = NULL;
    PcStatus st;
    PC_TRY_GOTO(st, pc_saved_get(&n->lsm, self, &lsm));
    PC_TRY_GOTO(st, pc_saved_get(&n->target, self, &tgt));
    const PcBackend *be = pc_be(lsm);
    if (!be) {
        st = PC_ERR_DEVICE;
        goto fail;
    }
    int64_t N = lsm->shape[0];
    int64_t one = 1;
    int64_t col[2] = {N, 1};
    PC_TRY_GOTO(st, pc_empty_like(lsm, &dx));
    PC_TRY_GOTO(st, pc_op_full(2, col, -1.0, lsm->dtype, lsm->device, &m1));
    PC_TRY_GOTO(st, pc_cast(go[0], lsm->dtype, &g));
    if (n->red == PC_REDUCTION_NONE && g->ndim == 1) {
        int64_t gst[2] = {g->strides[0], 1};
        PC_TRY_GOTO(st, pc_tensor_view_of(g->storage, g->offset, 2, col, gst, g->dtype, &g2));
    } else { /* 0-d gradient */
        PC_TRY_GOTO(st, pc_tensor_view_of(g->storage, g->offset, 1, &one, &one, g->dtype, &g2));
    }
    PC_TRY_GOTO(st, pc_expand_view(g2, 2, lsm->shape, &ge));
    if (pc_tensor_numel(lsm) > 0) {
        PC_TRY_GOTO(st, be->unary(PC_U_EXP, dx, lsm, 0.0));
        PC_TRY_GOTO(st, be->scatter_add_dim(dx, tgt, m1, 1));
        PC_TRY_GOTO(st, be->binary(PC_B_MUL, dx, dx, ge, 1.0));
        if (n->red == PC_REDUCTION_MEAN && N > 1)
            PC_TRY_GOTO(st, be->unary(PC_U_MUL_S, dx, dx, 1.0 / (double)N));
    }
    PC_TRY_GOTO(st, pc_tensor_view_of(dx->storage, dx->offset, n->in.ndim, n->in.shape, NULL,
                                      dx->dtype, &r));
    gi[0] = r;
    st = PC_OK;
fail:
    pc_tensor_decref(ge);
    pc_tensor_decref(g2);
    pc_tensor_decref(g);
    pc_tensor_decref(m1);
    pc_tensor_decref(dx);
    pc_tensor_decref(tgt);
    pc_tensor_decref(lsm);
    return st;
}

static const PcNodeVTable nll_vt = {"NllLossBackward0", nll_apply, nll_release};

/* Every target value in [0, C) (CPU tensors only; t is int64 (N,), any strides). */
static PcStatus check_targets(const PcTensor *t, int64_t C) {
    if (t->device.type != PC_CPU) return PC_OK;
    const int64_t *p = (const int64_t *)pc_tensor_data(t);
    int64_t n = t->ndim ? t->shape[0] : 1, s = t->ndim ? t->strides[0] : 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t v = p[i * s];
        if (v < 0 || v >= C)
            return pc_set_error(PC_ERR_INDEX, "cross_entropy: Target %lld is out of bounds: "
                                "target[%lld] must be a class index in [0, %lld)",
                                (long long)v, (long long)i, (long long)C);
    }
    return PC_OK;
}

PcStatus pc_op_cross_entropy(PcTensor *input, PcTensor *target, PcReduction red,
                             PcTensor **out) {
    *out = NULL;
    char a[160], b[160];
    PC_TRY(check_reduction("cross_entropy", red));
    PC_TRY(pc_check_float("cross_entropy", "input", input));
    if (target->dtype != PC_INT64)
        return pc_set_error(PC_ERR_TYPE, "cross_entropy: target must hold int64 class indices, "
                            "got %s", pc_dtype_name(target->dtype));
    PC_TRY(pc_check_same_device("cross_entropy", input, target));
    bool ok = (input->ndim == 2 && target->ndim == 1 && target->shape[0] == input->shape[0]) ||
              (input->ndim == 1 && target->ndim == 0);
    if (!ok)
        return pc_set_error(PC_ERR_INVALID, "cross_entropy: expected input (N, C) with target "
                            "(N,) or input (C,) with a 0-d target, got input %s and target %s",
                            pc_shape_str(input->ndim, input->shape, a, sizeof a),
                            pc_shape_str(target->ndim, target->shape, b, sizeof b));
    int64_t N = input->ndim == 2 ? input->shape[0] : 1;
    int64_t C = input->shape[input->ndim - 1];
    PC_TRY(check_targets(target, C));
    const PcBackend *be = pc_be(input);
    if (!be) return PC_ERR_DEVICE;

    PcTensor *xc = NULL, *x2 = NULL, *lsm = NULL, *tc = NULL, *t2 = NULL, *picked = NULL,
             *res = NULL;
    PcStatus st;
    int64_t nc[2] = {N, C}, col[2] = {N, 1};
    PC_TRY_GOTO(st, pc_make_contiguous(input, &xc));
    PC_TRY_GOTO(st, pc_tensor_view_of(xc->storage, xc->offset, 2, nc, NULL, xc->dtype, &x2));
    PC_TRY_GOTO(st, pc_empty_like(x2, &lsm));
    PC_TRY_GOTO(st, pc_make_contiguous(target, &tc));
    PC_TRY_GOTO(st, pc_tensor_view_of(tc->storage, tc->offset, 2, col, NULL, PC_INT64, &t2));
    PC_TRY_GOTO(st, pc_tensor_empty(2, col, input->dtype, input->device, &picked));
    if (N > 0 && C > 0) {
        PC_TRY_GOTO(st, be->softmax(lsm, x2, true));
        PC_TRY_GOTO(st, be->gather_dim(picked, lsm, t2, 1));
        PC_TRY_GOTO(st, be->unary(PC_U_NEG, picked, picked, 0.0));
    }
    if (red == PC_REDUCTION_NONE) {
        PC_TRY_GOTO(st, pc_tensor_view_of(picked->storage, picked->offset, target->ndim,
                                          target->shape, NULL, picked->dtype, &res));
    } else {
        PC_TRY_GOTO(st, reduce_all(be, red == PC_REDUCTION_MEAN ? PC_R_MEAN : PC_R_SUM, picked,
                                   &res));
    }
    PcTensor *ins[2] = {input, NULL};
    PcNode *node;
    PC_TRY_GOTO(st, pc_attach_node(sizeof(PcNllNode), &nll_vt, 2, ins, res, &node));
    if (node) {
        PcNllNode *n = (PcNllNode *)node;
        n->red = red;
        pc_meta_of(input, &n->in);
        PC_TRY_GOTO(st, pc_saved_set(&n->lsm, lsm));
        PC_TRY_GOTO(st, pc_saved_set(&n->target, t2));
    }
    *out = res;
    res = NULL;
    st = PC_OK;
fail:
    pc_tensor_decref(res);
    pc_tensor_decref(picked);
    pc_tensor_decref(t2);
    pc_tensor_decref(tc);
    pc_tensor_decref(lsm);
    pc_tensor_decref(x2);
    pc_tensor_decref(xc);
    return st;
}
