/* nn.c — layer_norm, dropout and embedding.
 *
 * layer_norm normalises the last `norm_ndim` dims: x is made contiguous and seen as
 * (rows, D), the backend's layer_norm kernel writes y, mean and rstd (float32 for half
 * inputs); weight and bias, when given, must have exactly the normalised shape and x's
 * dtype. NativeLayerNormBackward0 saves x, mean, rstd and weight and calls the backend's
 * layer_norm_backward for whichever of dx, dweight, dbias the graph needs.
 *
 * dropout draws one uniform number per element from the process RNG (pc_rng_reserve, so a
 * seed reproduces the same mask on every device), keeps elements with u >= p and scales them
 * by 1/(1-p). The mask already holds the scale (0 or 1/(1-p), x's dtype); the backward
 * (NativeDropoutBackward0) multiplies the gradient by it. p == 1 gives zeros without drawing;
 * p == 0 or not training returns x itself.
 *
 * embedding gathers rows of weight (V, D) at int64 indices of any shape with the backend's
 * index_select0 and returns (*idx.shape, D); EmbeddingBackward0 scatters the gradient's rows
 * back with index_add0 into zeros of weight's shape (repeated indices accumulate).
 *
 * Exports: pc_op_layer_norm, pc_op_dropout, pc_op_embedding (see ops.h).
 */
#include <stdio.h>
#include <string.h>

#include "internal.h"

/* ---- helpers ---- */

/* A contiguous tensor's storage seen with a new contiguous shape; no autograd. */
static PcStatus reshape_contig(PcTensor *t, int ndim, const int64_t *shape, PcTensor **out) {
    return pc_tensor_view_of(t->storage, t->offset, ndim, shape, NULL, t->dtype, out);
}

/* t contiguous and seen as shape (no autograd). */
static PcStatus contig_as(PcTensor *t, int ndim, const int64_t *shape, PcTensor **out) {
    *out = NULL;
    PcTensor *c;
    PC_TRY(pc_make_contiguous(t, &c));
    PcStatus st = reshape_contig(c, ndim, shape, out);
    pc_tensor_decref(c);
    return st;
}

/* ---- layer_norm ---- */

typedef struct PcLayerNormNode {
    PcNode base;
    PcSaved x;              /* (rows, D) contiguous */
    PcSaved mean, rstd;     /* (rows,) */
    PcSaved w;              /* (D,) contiguous, or nothing */
    PcTensorMeta xm, wm, bm; /* the inputs' own shapes */
} PcLayerNormNode;

static void layer_norm_release(PcNode *self) {
    PcLayerNormNode *n = (PcLayerNormNode *)self;
    pc_saved_clear(&n->x);
    pc_saved_clear(&n->mean);
    pc_saved_clear(&n->rstd);
    pc_saved_clear(&n->w);
}

static PcStatus layer_norm_apply(PcNode *self, PcTensor *const *go, const bool *needs,
                                 PcTensor **gi) {
    PcLayerNormNode *n = (PcLayerNormNode *)self;
    gi[0] = gi[1] = gi[2] = NULL;
    if (!needs[0] && !needs[1] && !needs[2]) return PC_OK;
    PcTensor *x = NULL, *mean = NULL, *rstd = NULL, *w = NULL, *g = NULL, *dy = NULL;
    PcTensor *dx = NULL, *dw = NULL, *db = NULL;
    PcStatus st;
    PC_TRY_GOTO(st, pc_saved_get(&n->x, self, &x));
    PC_TRY_GOTO(st, pc_saved_get(&n->mean, self, &mean));
    PC_TRY_GOTO(st, pc_saved_get(&n->rstd, self, &rstd));
    PC_TRY_GOTO(st, pc_saved_get(&n->w, self, &w)); /* NULL when there was no weight */
    const PcBackend *be = pc_be(x);
    if (!be) {
        st = PC_ERR_DEVICE;
        goto fail;
    }
    int64_t D = x->shape[1];
    PC_TRY_GOTO(st, pc_cast(go[0], x->dtype, &g));
    PC_TRY_GOTO(st, contig_as(g, 2, x->shape, &dy));
    if (needs[0]) PC_TRY_GOTO(st, pc_empty_like(x, &dx));
    if (needs[1]) PC_TRY_GOTO(st, pc_tensor_empty(1, &D, n->wm.dtype, x->device, &dw));
    if (needs[2]) PC_TRY_GOTO(st, pc_tensor_empty(1, &D, n->bm.dtype, x->device, &db));
    if (pc_tensor_numel(x) > 0) {
        PC_TRY_GOTO(st, be->layer_norm_backward(dx, dw, db, dy, x, mean, rstd, w));
    } else {
        if (dw) PC_TRY_GOTO(st, be->fill(dw, 0.0));
        if (db) PC_TRY_GOTO(st, be->fill(db, 0.0));
    }
    if (dx) PC_TRY_GOTO(st, reshape_contig(dx, n->xm.ndim, n->xm.shape, &gi[0]));
    if (dw) PC_TRY_GOTO(st, reshape_contig(dw, n->wm.ndim, n->wm.shape, &gi[1]));
    if (db) PC_TRY_GOTO(st, reshape_contig(db, n->bm.ndim, n->bm.shape, &gi[2]));
    st = PC_OK;
    goto done;
fail:
    for (int i = 0; i < 3; i++) {
        pc_tensor_decref(gi[i]);
        gi[i] = NULL;
    }
done:
    pc_tensor_decref(db);
    pc_tensor_decref(dw);
    pc_tensor_decref(dx);
    pc_tensor_decref(dy);
    pc_tensor_decref(g);
    pc_tensor_decref(w);
    pc_tensor_decref(rstd);
    pc_tensor_decref(mean);
    pc_tensor_decref(x);
    return st;
}

static const PcNodeVTable layer_norm_vt = {"NativeLayerNormBackward0", layer_norm_apply,
                                           layer_norm_release};

/* weight / bias must be x's trailing `k` dims, x's dtype, x's device. */
static PcStatus check_affine(const char *arg, const PcTensor *p, const PcTensor *x, int k) {
    char a[160], b[160];
    const int64_t *ns = x->shape + (x->ndim - k);
    bool same = p->ndim == k;
    for (int i = 0; same && i < k; i++) same = p->shape[i] == ns[i];
    if (!same)
        return pc_set_error(PC_ERR_INVALID, "layer_norm: %s %s must have the normalized shape "
                            "%s (the last %d dims of input)", arg,
                            pc_shape_str(p->ndim, p->shape, a, sizeof a),
                            pc_shape_str(k, ns, b, sizeof b), k);
    PC_TRY(pc_check_same_device("layer_norm", x, p));
    if (p->dtype != x->dtype)
        return pc_set_error(PC_ERR_TYPE, "layer_norm: %s is %s but input is %s; they must have "
                            "the same dtype", arg, pc_dtype_name(p->dtype),
                            pc_dtype_name(x->dtype));
    return PC_OK;
}

PcStatus pc_op_layer_norm(PcTensor *x, int norm_ndim, PcTensor *weight, PcTensor *bias,
                          double eps, PcTensor **out) {
    *out = NULL;
    char a[160];
    PC_TRY(pc_check_float("layer_norm", "input", x));
    if (norm_ndim < 1 || norm_ndim > x->ndim)
        return pc_set_error(PC_ERR_INVALID, "layer_norm: normalized_shape must have between 1 "
                            "and input.ndim dims, got %d for input %s", norm_ndim,
                            pc_shape_str(x->ndim, x->shape, a, sizeof a));
    if (weight) PC_TRY(check_affine("weight", weight, x, norm_ndim));
    if (bias) PC_TRY(check_affine("bias", bias, x, norm_ndim));
    const PcBackend *be = pc_be(x);
    if (!be) return PC_ERR_DEVICE;

    int64_t D = 1;
    for (int i = x->ndim - norm_ndim; i < x->ndim; i++) D *= x->shape[i];
    int64_t rows = D > 0 ? pc_tensor_numel(x) / D : 0;
    if (D == 0) /* rows are the leading dims' product */
        for (int i = 0; i < x->ndim - norm_ndim; i++) rows *= x->shape[i];
    int64_t rd[2] = {rows, D};
    PcDType sdt = (x->dtype == PC_FLOAT16 || x->dtype == PC_BFLOAT16) ? PC_FLOAT32 : x->dtype;

    PcTensor *x2 = NULL, *w1 = NULL, *b1 = NULL, *y = NULL, *mean = NULL, *rstd = NULL,
             *res = NULL;
    PcStatus st;
    PC_TRY_GOTO(st, contig_as(x, 2, rd, &x2));
    if (weight) PC_TRY_GOTO(st, contig_as(weight, 1, &D, &w1));
    if (bias) PC_TRY_GOTO(st, contig_as(bias, 1, &D, &b1));
    PC_TRY_GOTO(st, pc_empty_like(x2, &y));
    PC_TRY_GOTO(st, pc_tensor_empty(1, &rows, sdt, x->device, &mean));
    PC_TRY_GOTO(st, pc_tensor_empty(1, &rows, sdt, x->device, &rstd));
    if (rows > 0 && D > 0) PC_TRY_GOTO(st, be->layer_norm(y, mean, rstd, x2, w1, b1, eps));
    PC_TRY_GOTO(st, reshape_contig(y, x->ndim, x->shape, &res));
    PcTensor *ins[3] = {x, weight, bias};
    PcNode *node;
    PC_TRY_GOTO(st, pc_attach_node(sizeof(PcLayerNormNode), &layer_norm_vt, 3, ins, res, &node));
    if (node) {
        PcLayerNormNode *n = (PcLayerNormNode *)node;
        pc_meta_of(x, &n->xm);
        if (weight) pc_meta_of(weight, &n->wm);
        if (bias) pc_meta_of(bias, &n->bm);
        PC_TRY_GOTO(st, pc_saved_set(&n->x, x2));
        PC_TRY_GOTO(st, pc_saved_set(&n->mean, mean));
        PC_TRY_GOTO(st, pc_saved_set(&n->rstd, rstd));
        if (w1) PC_TRY_GOTO(st, pc_saved_set(&n->w, w1));
    }
    *out = res;
    res = NULL;
    st = PC_OK;
fail:
    pc_tensor_decref(res);
    pc_tensor_decref(rstd);
    pc_tensor_decref(mean);
    pc_tensor_decref(y);
    pc_tensor_decref(b1);
    pc_tensor_decref(w1);
    pc_tensor_decref(x2);
    return st;
}

/* ---- dropout ---- */

typedef struct PcDropoutNode {
    PcNode base;
    PcSaved mask; /* x's shape, x's dtype: 0 or 1/(1-p) */
} PcDropoutNode;

static void dropout_release(PcNode *self) { pc_saved_clear(&((PcDropoutNode *)self)->mask); }

static PcStatus dropout_apply(PcNode *self, PcTensor *const *go, const bool *needs,
                              PcTensor **gi) {
    PcDropoutNode *n = (PcDropoutNode *)self;
    gi[0] = NULL;
    if (!needs[0]) return PC_OK;
    PcTensor *mask = NULL, *g = NULL, *dx = NULL;
    PcStatus st;
    PC_TRY_GOTO(st, pc_saved_get(&n->mask, self, &mask));
    const PcBackend *be = pc_be(mask);
    if (!be) {
        st = PC_ERR_DEVICE;
        goto fail;
    }
    PC_TRY_GOTO(st, pc_cast(go[0], mask->dtype, &g));
    PC_TRY_GOTO(st, pc_empty_like(mask, &dx));
    if (pc_tensor_numel(mask) > 0) PC_TRY_GOTO(st, be->binary(PC_B_MUL, dx, g, mask, 1.0));
    gi[0] = dx;
    dx = NULL;
    st = PC_OK;
fail:
    pc_tensor_decref(dx);
    pc_tensor_decref(g);
    pc_tensor_decref(mask);
    return st;
}

static const PcNodeVTable dropout_vt = {"NativeDropoutBackward0", dropout_apply,
                                        dropout_release};

PcStatus pc_op_dropout(PcTensor *x, double p, bool training, PcTensor **out) {
    *out = NULL;
    if (!(p >= 0.0 && p <= 1.0))
        return pc_set_error(PC_ERR_INVALID, "dropout: dropout probability has to be between 0 "
                            "and 1, but got %g", p);
    if (!training || p == 0.0) {
        pc_tensor_incref(x);
        *out = x;
        return PC_OK;
    }
    PC_TRY(pc_check_float("dropout", "input", x));
    const PcBackend *be = pc_be(x);
    if (!be) return PC_ERR_DEVICE;
    int64_t numel = pc_tensor_numel(x);
    /* Draw in float32 for half inputs (a finer grid than the half types), else x's dtype. */
    PcDType udt = (x->dtype == PC_FLOAT64) ? PC_FLOAT64 : PC_FLOAT32;
    PcTensor *u = NULL, *mask = NULL, *res = NULL;
    PcStatus st;
    PC_TRY_GOTO(st, pc_tensor_empty(x->ndim, x->shape, udt, x->device, &u));
    if (numel > 0) {
        if (p >= 1.0) {
            PC_TRY_GOTO(st, be->fill(u, 0.0));
        } else {
            uint64_t seed, offset;
            pc_rng_reserve((uint64_t)numel, &seed, &offset);
            PC_TRY_GOTO(st, be->random(u, PC_RAND_UNIFORM, 0.0, 1.0, seed, offset));
            PC_TRY_GOTO(st, be->unary(PC_U_GE_S, u, u, p));
            PC_TRY_GOTO(st, be->unary(PC_U_MUL_S, u, u, 1.0 / (1.0 - p)));
        }
    }
    PC_TRY_GOTO(st, pc_cast(u, x->dtype, &mask));
    PC_TRY_GOTO(st, pc_empty_like(mask, &res));
    if (numel > 0) PC_TRY_GOTO(st, be->binary(PC_B_MUL, res, x, mask, 1.0));
    PcNode *node;
    PC_TRY_GOTO(st, pc_attach_node(sizeof(PcDropoutNode), &dropout_vt, 1, &x, res, &node));
    if (node) PC_TRY_GOTO(st, pc_saved_set(&((PcDropoutNode *)node)->mask, mask));
    *out = res;
    res = NULL;
    st = PC_OK;
fail:
    pc_tensor_decref(res);
    pc_tensor_decref(mask);
    pc_tensor_decref(u);
    return st;
}

/* ---- embedding ---- */

typedef struct PcEmbeddingNode {
    PcNode base;
    PcSaved idx;      /* (n,) int64 contiguous */
    PcTensorMeta wm;  /* weight (V, D) */
} PcEmbeddingNode;

static void embedding_release(PcNode *self) {
    pc_saved_clear(&((PcEmbeddingNode *)self)->idx);
}

static PcStatus embedding_apply(PcNode *self, PcTensor *const *go, const bool *needs,
                                PcTensor **gi) {
    PcEmbeddingNode *n = (PcEmbeddingNode *)self;
    gi[0] = gi[1] = NULL;
    if (!needs[0]) return PC_OK;
    PcTensor *idx = NULL, *g = NULL, *g2 = NULL, *z = NULL;
    PcStatus st;
    PC_TRY_GOTO(st, pc_saved_get(&n->idx, self, &idx));
    const PcBackend *be = pc_backend_for(n->wm.device);
    if (!be) {
        st = PC_ERR_DEVICE;
        goto fail;
    }
    int64_t nd[2] = {idx->shape[0], n->wm.shape[1]};
    PC_TRY_GOTO(st, pc_cast(go[0], n->wm.dtype, &g));
    PC_TRY_GOTO(st, pc_make_contiguous(g, &g2));
    pc_tensor_decref(g);
    PC_TRY_GOTO(st, reshape_contig(g2, 2, nd, &g));
    PC_TRY_GOTO(st, pc_op_full(2, n->wm.shape, 0.0, n->wm.dtype, n->wm.device, &z));
    if (nd[0] > 0 && nd[1] > 0) PC_TRY_GOTO(st, be->index_add0(z, idx, g));
    gi[0] = z;
    z = NULL;
    st = PC_OK;
fail:
    pc_tensor_decref(z);
    pc_tensor_decref(g2);
    pc_tensor_decref(g);
    pc_tensor_decref(idx);
    return st;
}

static const PcNodeVTable embedding_vt = {"EmbeddingBackward0", embedding_apply,
                                          embedding_release};

PcStatus pc_op_embedding(PcTensor *weight, PcTensor *idx, PcTensor **out) {
    *out = NULL;
    char a[160];
    if (weight->ndim != 2)
        return pc_set_error(PC_ERR_INVALID, "embedding: weight must be 2-D (num_embeddings, "
                            "embedding_dim), got %s",
                            pc_shape_str(weight->ndim, weight->shape, a, sizeof a));
    PC_TRY(pc_check_float("embedding", "weight", weight));
    if (idx->dtype != PC_INT64)
        return pc_set_error(PC_ERR_TYPE, "embedding: indices must be int64, got %s",
                            pc_dtype_name(idx->dtype));
    PC_TRY(pc_check_same_device("embedding", weight, idx));
    if (idx->ndim + 1 > PC_MAX_DIMS)
        return pc_set_error(PC_ERR_INVALID, "embedding: indices %s have too many dims (the "
                            "result would exceed %d)",
                            pc_shape_str(idx->ndim, idx->shape, a, sizeof a), PC_MAX_DIMS);
    const PcBackend *be = pc_be(weight);
    if (!be) return PC_ERR_DEVICE;
    int64_t n = pc_tensor_numel(idx), D = weight->shape[1];
    int64_t nd[2] = {n, D};
    int64_t oshape[PC_MAX_DIMS];
    for (int i = 0; i < idx->ndim; i++) oshape[i] = idx->shape[i];
    oshape[idx->ndim] = D;

    PcTensor *w = NULL, *i1 = NULL, *y = NULL, *res = NULL;
    PcStatus st;
    PC_TRY_GOTO(st, pc_make_contiguous(weight, &w));
    PC_TRY_GOTO(st, contig_as(idx, 1, &n, &i1));
    PC_TRY_GOTO(st, pc_tensor_empty(2, nd, weight->dtype, weight->device, &y));
    if (n > 0) PC_TRY_GOTO(st, be->index_select0(y, w, i1));
    PC_TRY_GOTO(st, reshape_contig(y, idx->ndim + 1, oshape, &res));
    PcTensor *ins[2] = {weight, NULL};
    PcNode *node;
    PC_TRY_GOTO(st, pc_attach_node(sizeof(PcEmbeddingNode), &embedding_vt, 2, ins, res, &node));
    if (node) {
        PcEmbeddingNode *en = (PcEmbeddingNode *)node;
        pc_meta_of(weight, &en->wm);
        PC_TRY_GOTO(st, pc_saved_set(&en->idx, i1));
    }
    *out = res;
    res = NULL;
    st = PC_OK;
fail:
    pc_tensor_decref(res);
    pc_tensor_decref(y);
    pc_tensor_decref(i1);
    pc_tensor_decref(w);
    return st;
}
