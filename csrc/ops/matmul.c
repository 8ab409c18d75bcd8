/* matmul.c — matrix products: mm, matmul (NumPy rules), addmm, linear, with autograd.
 *
 * Every product goes to the backend `gemm` without materialising transposes: a 2-D operand
 * whose strides are (s, 1) is row-major with ld = s; one with strides (1, s) is the transpose
 * of a row-major matrix with ld = s (trans flag); anything else is made contiguous first.
 * Batched products (matmul with batch dims) use one gemm call with a uniform batch stride when
 * the (broadcast) batch dims flatten to one stride, else the expanded operand is copied
 * contiguous. A batched left operand against a plain matrix is folded into one tall product.
 *
 * Checks: operands on one device, of one floating dtype (PC_ERR_TYPE otherwise, int64
 * included), inner sizes equal (PC_ERR_INVALID naming both shapes).
 *
 * Backward nodes: MmBackward0 (mm, 2-D matmul, bias-free 2-D linear), DotBackward0, MvBackward0,
 * BmmBackward0 (other matmul cases), AddmmBackward0 (addmm, 2-D linear with bias),
 * LinearBackward0 (N-D linear). Gradients: dA = dC B^T, dB = A^T dC (summed over broadcast
 * batch dims), dbias = sum of dC over rows; linear: dX = dY W, dW = dY^T X, db = sum dY.
 *
 * Exports: pc_op_mm, pc_op_matmul, pc_op_addmm, pc_op_linear (ops.h).
 */
#include "internal.h"
#include "wgrad_batch.h"
#include "../graph/program.h"

#include <string.h>

/* ---- layout helpers (no autograd) ---- */

static int64_t pc_max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* How gemm can read an (r, c) matrix with strides (sr, sc): row-major with ld (trans false)
 * or as the transpose of a row-major (c, r) matrix with ld (trans true). */
static bool pc_mat_layout(int64_t r, int64_t c, int64_t sr, int64_t sc, bool *trans,
                          int64_t *ld) {
    if ((c <= 1 || sc == 1) && (r <= 1 || sr >= pc_max64(1, c))) {
        *trans = false;
        *ld = r <= 1 ? pc_max64(1, c) : sr;
        return true;
    }
    if ((r <= 1 || sr == 1) && (c <= 1 || sc >= pc_max64(1, r))) {
        *trans = true;
        *ld = c <= 1 ? pc_max64(1, r) : sc;
        return true;
    }
    return false;
}

/* Whether dims [lo, hi) of t flatten to one dim; *count is their product and *stride the
 * step between consecutive flattened elements (0 when count <= 1). */
static bool pc_flatten_dims(const PcTensor *t, int lo, int hi, int64_t *count, int64_t *stride) {
    int64_t n = 1, st = 0;
    int prev = -1;
    for (int i = lo; i < hi; i++) {
        n *= t->shape[i];
        if (t->shape[i] == 1) continue;
        if (prev >= 0 && t->strides[prev] != t->strides[i] * t->shape[i]) return false;
        prev = i;
        st = t->strides[i];
    }
    *count = n;
    *stride = n <= 1 ? 0 : st;
    return true;
}

/* The last two dims swapped (a view, no autograd). */
static PcStatus pc_mT_view(PcTensor *t, PcTensor **out) {
    int64_t shape[PC_MAX_DIMS], strides[PC_MAX_DIMS];
    int nd = t->ndim;
    memcpy(shape, t->shape, sizeof shape);
    memcpy(strides, t->strides, sizeof strides);
    shape[nd - 2] = t->shape[nd - 1];
    shape[nd - 1] = t->shape[nd - 2];
    strides[nd - 2] = t->strides[nd - 1];
    strides[nd - 1] = t->strides[nd - 2];
    return pc_tensor_view_of(t->storage, t->offset, nd, shape, strides, t->dtype, out);
}

/* t (..., c) as a 2-D (rows, c) tensor: a view when the leading dims flatten, else a
 * contiguous copy viewed so. 1-D t gives (1, c). */
static PcStatus pc_as_rows(PcTensor *t, PcTensor **out) {
    *out = NULL;
    int nd = t->ndim;
    int64_t c = t->shape[nd - 1], rows, rstride;
    if (pc_flatten_dims(t, 0, nd - 1, &rows, &rstride)) {
        int64_t shape[2] = {rows, c};
        int64_t strides[2] = {rows <= 1 ? pc_max64(1, c) : rstride, t->strides[nd - 1]};
        return pc_tensor_view_of(t->storage, t->offset, 2, shape, strides, t->dtype, out);
    }
    PcTensor *ct;
    PC_TRY(pc_make_contiguous(t, &ct));
    int64_t shape[2] = {pc_tensor_numel(ct) / (c > 0 ? c : 1), c};
    if (c == 0) PC_TRY(pc_shape_numel(nd - 1, t->shape, &shape[0]));
    PcStatus st = pc_tensor_view_of(ct->storage, ct->offset, 2, shape, NULL, ct->dtype, out);
    pc_tensor_decref(ct);
    return st;
}

/* A contiguous-layout view of a fresh contiguous tensor under another shape. */
static PcStatus pc_reshape_fresh(PcTensor *t, int nd, const int64_t *shape, PcTensor **out) {
    return pc_tensor_view_of(t->storage, t->offset, nd, shape, NULL, t->dtype, out);
}

/* ---- gemm drivers ---- */

/* c (m, n), contiguous, = alpha * a @ b + beta * c (+ bias (n,) contiguous or NULL).
 * a (m, k), b (k, n): 2-D of c's dtype. */
static PcStatus pc_gemm2d(PcTensor *a, PcTensor *b, double alpha, double beta,
                          const PcTensor *bias, PcTensor *c) {
    const PcBackend *be = pc_be(c);
    if (!be) return PC_ERR_DEVICE;
    int64_t m = a->shape[0], k = a->shape[1], n = b->shape[1];
    if (m == 0 || n == 0) return PC_OK;
    if (k == 0) { /* no products: beta * c (+ bias) */
        if (beta == 0.0)
            PC_TRY(be->fill(c, 0.0));
        else if (beta != 1.0)
            PC_TRY(be->unary(PC_U_MUL_S, c, c, beta));
        if (bias) {
            PcTensor *bx;
            int64_t shape[2] = {m, n};
            PC_TRY(pc_expand_view((PcTensor *)bias, 2, shape, &bx));
            PcStatus st = be->binary(PC_B_ADD, c, c, bx, 1.0);
            pc_tensor_decref(bx);
            return st;
        }
        return PC_OK;
    }
    PcTensor *ac = NULL, *bc = NULL;
    PcGemmArgs g;
    memset(&g, 0, sizeof g);
    PcStatus st = PC_OK;
    if (!pc_mat_layout(m, k, a->strides[0], a->strides[1], &g.trans_a, &g.lda)) {
        PC_TRY_GOTO(st, pc_make_contiguous(a, &ac));
        a = ac;
        pc_mat_layout(m, k, a->strides[0], a->strides[1], &g.trans_a, &g.lda);
    }
    if (!pc_mat_layout(k, n, b->strides[0], b->strides[1], &g.trans_b, &g.ldb)) {
        PC_TRY_GOTO(st, pc_make_contiguous(b, &bc));
        b = bc;
        pc_mat_layout(k, n, b->strides[0], b->strides[1], &g.trans_b, &g.ldb);
    }
    g.dtype = c->dtype;
    g.m = m;
    g.n = n;
    g.k = k;
    g.alpha = alpha;
    g.beta = beta;
    g.a = pc_tensor_data(a);
    g.b = pc_tensor_data(b);
    g.c = pc_tensor_data(c);
    g.ldc = pc_max64(1, n);
    g.batch = 1;
    g.bias = bias ? pc_tensor_data(bias) : NULL;
    pc_trace_count_flops(2.0 * (double)m * (double)n * (double)k);
    st = be->gemm(c->device, &g);
fail:
    pc_tensor_decref(ac);
    pc_tensor_decref(bc);
    return st;
}

PcStatus pc_gemm_into(PcTensor *a, PcTensor *b, double alpha, double beta, PcTensor *c) {
    return pc_gemm2d(a, b, alpha, beta, NULL, c);
}

static PcStatus pc_mm_new(PcTensor *a, PcTensor *b, double alpha, PcTensor **out);

/* The gradient alpha * l @ r (2-D) of the input behind `self`'s edge `edge`: deferred to a
 * batch of microbatches (pc_wgrad_defer) or added straight into that leaf's .grad when the
 * backward pass allows it (pc_autograd_fusable_grad); *out stays NULL then. Else a fresh
 * tensor in *out. */
static PcStatus pc_grad_mm(PcNode *self, int edge, PcTensor *l, PcTensor *r, double alpha,
                           PcTensor **out) {
    *out = NULL;
    bool deferred;
    PC_TRY(pc_wgrad_defer(self, edge, l, r, alpha, &deferred));
    if (deferred) return PC_OK;
    PcTensor *acc = pc_autograd_fusable_grad(self, edge);
    if (acc && acc->dtype == l->dtype && pc_device_eq(acc->device, l->device) &&
        acc->ndim == 2 && acc->shape[0] == l->shape[0] && acc->shape[1] == r->shape[1]) {
        PC_TRY(pc_gemm2d(l, r, alpha, 1.0, NULL, acc));
        pc_tensor_bump_version(acc);
        pc_autograd_note_fused();
        return PC_OK;
    }
    return pc_mm_new(l, r, alpha, out);
}

/* Fresh (m, n) = alpha * a @ b for 2-D a, b. */
static PcStatus pc_mm_new(PcTensor *a, PcTensor *b, double alpha, PcTensor **out) {
    *out = NULL;
    int64_t shape[2] = {a->shape[0], b->shape[1]};
    PcTensor *c;
    PC_TRY(pc_tensor_empty(2, shape, a->dtype, a->device, &c));
    PcStatus st = pc_gemm2d(a, b, alpha, 0.0, NULL, c);
    if (st != PC_OK) {
        pc_tensor_decref(c);
        return st;
    }
    *out = c;
    return PC_OK;
}

/* An operand of a batched gemm: expanded view x (batch..., r, c); fills pointer, ld, trans and
 * the batch stride, copying x contiguous when its layout does not fit. *hold keeps the copy. */
static PcStatus pc_batch_operand(PcTensor *x, int bnd, const void **ptr, int64_t *ld,
                                 bool *trans, int64_t *bstride, PcTensor **hold) {
    *hold = NULL;
    int nd = x->ndim;
    int64_t r = x->shape[nd - 2], c = x->shape[nd - 1], cnt;
    if (!pc_flatten_dims(x, 0, bnd, &cnt, bstride) ||
        !pc_mat_layout(r, c, x->strides[nd - 2], x->strides[nd - 1], trans, ld)) {
        PC_TRY(pc_make_contiguous(x, hold));
        x = *hold;
        pc_flatten_dims(x, 0, bnd, &cnt, bstride);
        pc_mat_layout(r, c, x->strides[nd - 2], x->strides[nd - 1], trans, ld);
    }
    *ptr = pc_tensor_data(x);
    return PC_OK;
}

/* Fresh (batch..., m, n) = a @ b for a (..., m, k), b (..., k, n) (ndim >= 2 each, inner
 * sizes already checked), batch dims broadcast. */
static PcStatus pc_matmul_core(const char *op, PcTensor *a, PcTensor *b, PcTensor **out) {
    *out = NULL;
    if (a->ndim == 2 && b->ndim == 2) return pc_mm_new(a, b, 1.0, out);
    const PcBackend *be = pc_be(a);
    if (!be) return PC_ERR_DEVICE;
    int bnd;
    int64_t oshape[PC_MAX_DIMS + 2];
    PC_TRY(pc_broadcast_shapes(op, a->ndim - 2, a->shape, b->ndim - 2, b->shape, &bnd, oshape));
    if (bnd + 2 > PC_MAX_DIMS)
        return pc_set_error(PC_ERR_INVALID, "%s: result would have more than %d dims", op,
                            PC_MAX_DIMS);
    int64_t m = a->shape[a->ndim - 2], k = a->shape[a->ndim - 1], n = b->shape[b->ndim - 1];
    oshape[bnd] = m;
    oshape[bnd + 1] = n;
    int64_t nb = 1, bb = 1;
    for (int i = 0; i < bnd; i++) nb *= oshape[i];
    for (int i = 0; i < b->ndim - 2; i++) bb *= b->shape[i];
    bool a_full = a->ndim - 2 == bnd;
    for (int i = 0; a_full && i < bnd; i++) a_full = a->shape[i] == oshape[i];

    PcTensor *y = NULL, *t1 = NULL, *t2 = NULL, *t3 = NULL, *ha = NULL, *hb = NULL;
    PcStatus st = PC_OK;
    if (bb == 1 && a_full) {
        /* Fold: (batch * m, k) @ (k, n). */
        int64_t b2shape[2] = {k, n};
        int64_t b2strides[2] = {b->strides[b->ndim - 2], b->strides[b->ndim - 1]};
        PC_TRY_GOTO(st, pc_as_rows(a, &t1));
        PC_TRY_GOTO(st, pc_tensor_view_of(b->storage, b->offset, 2, b2shape, b2strides,
                                          b->dtype, &t2));
        PC_TRY_GOTO(st, pc_mm_new(t1, t2, 1.0, &t3));
        PC_TRY_GOTO(st, pc_reshape_fresh(t3, bnd + 2, oshape, &y));
        goto done;
    }
    PC_TRY_GOTO(st, pc_tensor_empty(bnd + 2, oshape, a->dtype, a->device, &y));
    if (pc_tensor_numel(y) == 0) goto done;
    if (k == 0) {
        PC_TRY_GOTO(st, be->fill(y, 0.0));
        goto done;
    }
    int64_t ashape[PC_MAX_DIMS], bshape[PC_MAX_DIMS];
    memcpy(ashape, oshape, sizeof ashape);
    memcpy(bshape, oshape, sizeof bshape);
    ashape[bnd + 1] = k;
    bshape[bnd] = k;
    PC_TRY_GOTO(st, pc_expand_view(a, bnd + 2, ashape, &t1));
    PC_TRY_GOTO(st, pc_expand_view(b, bnd + 2, bshape, &t2));
    PcGemmArgs g;
    memset(&g, 0, sizeof g);
    PC_TRY_GOTO(st, pc_batch_operand(t1, bnd, &g.a, &g.lda, &g.trans_a, &g.stride_a, &ha));
    PC_TRY_GOTO(st, pc_batch_operand(t2, bnd, &g.b, &g.ldb, &g.trans_b, &g.stride_b, &hb));
    g.dtype = a->dtype;
    g.m = m;
    g.n = n;
    g.k = k;
    g.alpha = 1.0;
    g.beta = 0.0;
    g.c = pc_tensor_data(y);
    g.ldc = pc_max64(1, n);
    g.stride_c = m * n;
    g.batch = nb;
    pc_trace_count_flops(2.0 * (double)nb * (double)m * (double)n * (double)k);
    PC_TRY_GOTO(st, be->gemm(y->device, &g));
done:
    *out = y;
    y = NULL;
fail:
    pc_tensor_decref(y);
    pc_tensor_decref(t1);
    pc_tensor_decref(t2);
    pc_tensor_decref(t3);
    pc_tensor_decref(ha);
    pc_tensor_decref(hb);
    return st;
}

/* ---- argument checks ---- */

static PcStatus pc_check_operands(const char *op, const char *na, const PcTensor *a,
                                  const char *nb, const PcTensor *b) {
    PC_TRY(pc_check_same_device(op, a, b));
    if (a->dtype != b->dtype)
        return pc_set_error(PC_ERR_TYPE, "%s: expected both operands to have the same dtype, "
                                         "got %s and %s (%s and %s)", op,
                            pc_dtype_name(a->dtype), pc_dtype_name(b->dtype), na, nb);
    if (!pc_dtype_is_float(a->dtype))
        return pc_set_error(PC_ERR_TYPE, "%s: %s is not supported (expected float32, float64, "
                                         "float16 or bfloat16)", op, pc_dtype_name(a->dtype));
    return PC_OK;
}

static PcStatus pc_check_matrix(const char *op, const char *arg, const PcTensor *t) {
    if (t->ndim == 2) return PC_OK;
    char bs[128];
    return pc_set_error(PC_ERR_INVALID, "%s: %s must be a 2-D matrix, got a %d-D tensor of "
                                        "shape %s", op, arg, t->ndim,
                        pc_shape_str(t->ndim, t->shape, bs, sizeof bs));
}

/* ---- matmul family autograd ---- */

typedef struct PcMatmulNode {
    PcNode base;
    PcSaved a, b;        /* a when b needs a gradient, b when a does */
    bool a1d, b1d;       /* the operand was 1-D (promoted to (1, k) / (k, 1)) */
    PcTensorMeta ma, mb; /* the operands' shapes */
} PcMatmulNode;

static void pc_matmul_release(PcNode *self) {
    PcMatmulNode *n = (PcMatmulNode *)self;
    pc_saved_clear(&n->a);
    pc_saved_clear(&n->b);
}

/* 1-D promotion: a (k) -> (1, k); b (k) -> (k, 1). Views, no autograd. */
static PcStatus pc_promote_a(PcTensor *a, PcTensor **out) {
    if (a->ndim != 1) {
        pc_tensor_incref(a);
        *out = a;
        return PC_OK;
    }
    int64_t shape[2] = {1, a->shape[0]}, strides[2] = {pc_max64(1, a->shape[0]), a->strides[0]};
    return pc_tensor_view_of(a->storage, a->offset, 2, shape, strides, a->dtype, out);
}

static PcStatus pc_promote_b(PcTensor *b, PcTensor **out) {
    if (b->ndim != 1) {
        pc_tensor_incref(b);
        *out = b;
        return PC_OK;
    }
    int64_t shape[2] = {b->shape[0], 1}, strides[2] = {b->strides[0], 1};
    return pc_tensor_view_of(b->storage, b->offset, 2, shape, strides, b->dtype, out);
}

/* The promoted shape of an operand from its meta (is_a: left operand). */
static int pc_promoted_shape(const PcTensorMeta *m, bool is_a, int64_t *shape) {
    if (m->ndim != 1) {
        memcpy(shape, m->shape, sizeof(int64_t) * (size_t)m->ndim);
        return m->ndim;
    }
    shape[0] = is_a ? 1 : m->shape[0];
    shape[1] = is_a ? m->shape[0] : 1;
    return 2;
}

/* g of the squeezed output back to the full (batch..., m, n) shape (a view). */
static PcStatus pc_unsqueeze_grad(PcTensor *g, bool a1d, bool b1d, PcTensor **out) {
    int64_t shape[PC_MAX_DIMS + 2], strides[PC_MAX_DIMS + 2];
    int nd = 0, j = 0;
    int lead = g->ndim - (a1d ? 0 : 1) - (b1d ? 0 : 1);
    for (; j < lead; j++, nd++) {
        shape[nd] = g->shape[j];
        strides[nd] = g->strides[j];
    }
    if (a1d) {
        shape[nd] = 1;
        strides[nd++] = 1;
    } else {
        shape[nd] = g->shape[j];
        strides[nd++] = g->strides[j++];
    }
    if (b1d) {
        shape[nd] = 1;
        strides[nd++] = 1;
    } else {
        shape[nd] = g->shape[j];
        strides[nd++] = g->strides[j++];
    }
    return pc_tensor_view_of(g->storage, g->offset, nd, shape, strides, g->dtype, out);
}

/* Reduce a product's gradient to the operand's promoted shape, then view it in the operand's
 * own shape (dropping the promoted dim). Consumes *full. */
static PcStatus pc_grad_to_operand(PcTensor **full, const PcTensorMeta *m, bool is_a,
                                   PcTensor **out) {
    int64_t pshape[PC_MAX_DIMS];
    int pnd = pc_promoted_shape(m, is_a, pshape);
    PcTensor *s = NULL;
    PcStatus st = pc_sum_to_shape(*full, pnd, pshape, &s);
    pc_tensor_decref(*full);
    *full = NULL;
    if (st != PC_OK) return st;
    if (!pc_tensor_is_contiguous(s)) {
        PcTensor *c;
        st = pc_make_contiguous(s, &c);
        pc_tensor_decref(s);
        if (st != PC_OK) return st;
        s = c;
    }
    st = pc_reshape_fresh(s, m->ndim, m->shape, out);
    pc_tensor_decref(s);
    return st;
}

static PcStatus pc_matmul_apply(PcNode *self, PcTensor *const *grad_outputs, const bool *needs,
                                PcTensor **grad_inputs) {
    PcMatmulNode *n = (PcMatmulNode *)self;
    PcTensor *g = grad_outputs[0];
    if (!g) return PC_OK;
    PcTensor *a = NULL, *b = NULL, *ap = NULL, *bp = NULL, *gf = NULL, *tv = NULL, *full = NULL;
    PcTensor *ar = NULL, *gr = NULL;
    PcStatus st = PC_OK;
    PC_TRY(pc_unsqueeze_grad(g, n->a1d, n->b1d, &gf));
    if (needs[0]) { /* dA = dC B^T */
        PC_TRY_GOTO(st, pc_saved_get(&n->b, self, &b));
        PC_TRY_GOTO(st, pc_promote_b(b, &bp));
        PC_TRY_GOTO(st, pc_mT_view(bp, &tv));
        PC_TRY_GOTO(st, pc_matmul_core("matmul backward", gf, tv, &full));
        pc_tensor_decref(tv);
        tv = NULL;
        PC_TRY_GOTO(st, pc_grad_to_operand(&full, &n->ma, true, &grad_inputs[0]));
    }
    if (needs[1]) { /* dB = A^T dC */
        PC_TRY_GOTO(st, pc_saved_get(&n->a, self, &a));
        PC_TRY_GOTO(st, pc_promote_a(a, &ap));
        bool b_plain = n->mb.ndim <= 2;
        bool a_full = ap->ndim == gf->ndim;
        for (int i = 0; a_full && i < ap->ndim - 2; i++) a_full = ap->shape[i] == gf->shape[i];
        if (n->mb.ndim == 2 && a_full) {
            /* a 2-D B: one GEMM, the batch folded, (k, B*m) @ (B*m, n), added into B.grad
             * when the pass allows */
            PC_TRY_GOTO(st, pc_as_rows(ap, &ar));
            PC_TRY_GOTO(st, pc_as_rows(gf, &gr));
            PC_TRY_GOTO(st, pc_mT_view(ar, &tv));
            PC_TRY_GOTO(st, pc_grad_mm(self, 1, tv, gr, 1.0, &grad_inputs[1]));
        } else {
            if (b_plain && a_full && ap->ndim > 2) { /* fold the batch */
                PC_TRY_GOTO(st, pc_as_rows(ap, &ar));
                PC_TRY_GOTO(st, pc_as_rows(gf, &gr));
                PC_TRY_GOTO(st, pc_mT_view(ar, &tv));
                PC_TRY_GOTO(st, pc_mm_new(tv, gr, 1.0, &full));
            } else {
                PC_TRY_GOTO(st, pc_mT_view(ap, &tv));
                PC_TRY_GOTO(st, pc_matmul_core("matmul backward", tv, gf, &full));
            }
            PC_TRY_GOTO(st, pc_grad_to_operand(&full, &n->mb, false, &grad_inputs[1]));
        }
    }
fail:
    pc_tensor_decref(a);
    pc_tensor_decref(b);
    pc_tensor_decref(ap);
    pc_tensor_decref(bp);
    pc_tensor_decref(gf);
    pc_tensor_decref(tv);
    pc_tensor_decref(full);
    pc_tensor_decref(ar);
    pc_tensor_decref(gr);
    if (st != PC_OK)
        for (int j = 0; j < 2; j++) {
            pc_tensor_decref(grad_inputs[j]);
            grad_inputs[j] = NULL;
        }
    return st;
}

static const PcNodeVTable pc_mm_vt = {"MmBackward0", pc_matmul_apply, pc_matmul_release};
static const PcNodeVTable pc_dot_vt = {"DotBackward0", pc_matmul_apply, pc_matmul_release};
static const PcNodeVTable pc_mv_vt = {"MvBackward0", pc_matmul_apply, pc_matmul_release};
static const PcNodeVTable pc_bmm_vt = {"BmmBackward0", pc_matmul_apply, pc_matmul_release};

/* Record the node for y = a @ b: b is saved when a needs a gradient, a when b does. */
static PcStatus pc_matmul_record(const PcNodeVTable *vt, PcTensor *a, PcTensor *b, PcTensor *y) {
    PcTensor *ins[2] = {a, b};
    if (!pc_autograd_any_requires_grad(2, ins)) return PC_OK;
    PcNode *node;
    PC_TRY(pc_node_create(sizeof(PcMatmulNode), vt, 1, 2, ins, &node));
    PcMatmulNode *n = (PcMatmulNode *)node;
    n->a1d = a->ndim == 1;
    n->b1d = b->ndim == 1;
    pc_meta_of(a, &n->ma);
    pc_meta_of(b, &n->mb);
    PcStatus st = PC_OK;
    if (b->requires_grad) st = pc_saved_set(&n->a, a);
    if (st == PC_OK && a->requires_grad) st = pc_saved_set(&n->b, b);
    if (st == PC_OK) pc_autograd_set_history(y, node, 0);
    pc_node_decref(node);
    return st;
}

/* ---- mm / matmul ---- */

PcStatus pc_op_mm(PcTensor *a, PcTensor *b, PcTensor **out) {
    *out = NULL;
    PC_TRY(pc_check_matrix("mm", "self", a));
    PC_TRY(pc_check_matrix("mm", "mat2", b));
    PC_TRY(pc_check_operands("mm", "self", a, "mat2", b));
    if (a->shape[1] != b->shape[0]) {
        char sa[128], sb[128];
        return pc_set_error(PC_ERR_INVALID, "mm: shape mismatch: self %s @ mat2 %s: "
                                            "self.shape[1]=%lld != mat2.shape[0]=%lld",
                            pc_shape_str(2, a->shape, sa, sizeof sa),
                            pc_shape_str(2, b->shape, sb, sizeof sb), (long long)a->shape[1],
                            (long long)b->shape[0]);
    }
    PcTensor *y;
    PC_TRY(pc_mm_new(a, b, 1.0, &y));
    PcStatus st = pc_matmul_record(&pc_mm_vt, a, b, y);
    if (st != PC_OK) {
        pc_tensor_decref(y);
        return st;
    }
    *out = y;
    return PC_OK;
}

PcStatus pc_op_matmul(PcTensor *a, PcTensor *b, PcTensor **out) {
    *out = NULL;
    if (a->ndim == 0 || b->ndim == 0)
        return pc_set_error(PC_ERR_INVALID, "matmul: both arguments need to be at least 1-D, "
                                            "got %d-D and %d-D", a->ndim, b->ndim);
    PC_TRY(pc_check_operands("matmul", "self", a, "other", b));
    int64_t ka = a->shape[a->ndim - 1], kb = b->shape[b->ndim >= 2 ? b->ndim - 2 : 0];
    if (ka != kb) {
        char sa[128], sb[128];
        return pc_set_error(PC_ERR_INVALID, "matmul: shape mismatch: self %s @ other %s: "
                                            "self.shape[-1]=%lld != other.shape[%d]=%lld",
                            pc_shape_str(a->ndim, a->shape, sa, sizeof sa),
                            pc_shape_str(b->ndim, b->shape, sb, sizeof sb), (long long)ka,
                            b->ndim >= 2 ? -2 : 0, (long long)kb);
    }
    PcTensor *ap = NULL, *bp = NULL, *full = NULL, *y = NULL;
    PcStatus st;
    PC_TRY_GOTO(st, pc_promote_a(a, &ap));
    PC_TRY_GOTO(st, pc_promote_b(b, &bp));
    PC_TRY_GOTO(st, pc_matmul_core("matmul", ap, bp, &full));
    if (a->ndim == 1 || b->ndim == 1) {
        int64_t shape[PC_MAX_DIMS + 2];
        int nd = 0;
        for (int i = 0; i < full->ndim - 2; i++) shape[nd++] = full->shape[i];
        if (a->ndim != 1) shape[nd++] = full->shape[full->ndim - 2];
        if (b->ndim != 1) shape[nd++] = full->shape[full->ndim - 1];
        PC_TRY_GOTO(st, pc_reshape_fresh(full, nd, shape, &y));
    } else {
        y = full;
        full = NULL;
    }
    const PcNodeVTable *vt = &pc_bmm_vt;
    if (a->ndim == 1 && b->ndim == 1) vt = &pc_dot_vt;
    else if (a->ndim == 2 && b->ndim == 1) vt = &pc_mv_vt;
    else if (a->ndim == 2 && b->ndim == 2) vt = &pc_mm_vt;
    PC_TRY_GOTO(st, pc_matmul_record(vt, a, b, y));
    *out = y;
    y = NULL;
fail:
    pc_tensor_decref(ap);
    pc_tensor_decref(bp);
    pc_tensor_decref(full);
    pc_tensor_decref(y);
    return st;
}

/* ---- addmm ---- */

typedef struct PcAddmmNode {
    PcNode base;
    double beta, alpha;
    PcTensorMeta mbias;
    PcSaved a, b;
} PcAddmmNode;

static void pc_addmm_release(PcNode *self) {
    PcAddmmNode *n = (PcAddmmNode *)self;
    pc_saved_clear(&n->a);
    pc_saved_clear(&n->b);
}

static PcStatus pc_addmm_apply(PcNode *self, PcTensor *const *grad_outputs, const bool *needs,
                               PcTensor **grad_inputs) {
    PcAddmmNode *n = (PcAddmmNode *)self;
    PcTensor *g = grad_outputs[0];
    if (!g) return PC_OK;
    PcTensor *a = NULL, *b = NULL, *tv = NULL, *s = NULL;
    PcStatus st = PC_OK;
    if (needs[0]) {
        PC_TRY_GOTO(st, pc_sum_to_shape(g, n->mbias.ndim, n->mbias.shape, &s));
        if (n->beta != 1.0) {
            PC_TRY_GOTO(st, pc_op_unary(PC_U_MUL_S, s, n->beta, &grad_inputs[0]));
        } else {
            grad_inputs[0] = s;
            s = NULL;
        }
    }
    if (needs[1]) { /* alpha * g @ b^T */
        PC_TRY_GOTO(st, pc_saved_get(&n->b, self, &b));
        PC_TRY_GOTO(st, pc_mT_view(b, &tv));
        PC_TRY_GOTO(st, pc_grad_mm(self, 1, g, tv, n->alpha, &grad_inputs[1]));
        pc_tensor_decref(tv);
        tv = NULL;
    }
    if (needs[2]) { /* alpha * a^T @ g */
        PC_TRY_GOTO(st, pc_saved_get(&n->a, self, &a));
        PC_TRY_GOTO(st, pc_mT_view(a, &tv));
        PC_TRY_GOTO(st, pc_grad_mm(self, 2, tv, g, n->alpha, &grad_inputs[2]));
    }
fail:
    pc_tensor_decref(a);
    pc_tensor_decref(b);
    pc_tensor_decref(tv);
    pc_tensor_decref(s);
    if (st != PC_OK)
        for (int j = 0; j < 3; j++) {
            pc_tensor_decref(grad_inputs[j]);
            grad_inputs[j] = NULL;
        }
    return st;
}

static const PcNodeVTable pc_addmm_vt = {"AddmmBackward0", pc_addmm_apply, pc_addmm_release};

PcStatus pc_op_addmm(PcTensor *bias, PcTensor *a, PcTensor *b, double beta, double alpha,
                     PcTensor **out) {
    *out = NULL;
    PC_TRY(pc_check_matrix("addmm", "mat1", a));
    PC_TRY(pc_check_matrix("addmm", "mat2", b));
    PC_TRY(pc_check_operands("addmm", "mat1", a, "mat2", b));
    PC_TRY(pc_check_operands("addmm", "self", bias, "mat1", a));
    if (a->shape[1] != b->shape[0]) {
        char sa[128], sb[128];
        return pc_set_error(PC_ERR_INVALID, "addmm: shape mismatch: mat1 %s @ mat2 %s: "
                                            "mat1.shape[1]=%lld != mat2.shape[0]=%lld",
                            pc_shape_str(2, a->shape, sa, sizeof sa),
                            pc_shape_str(2, b->shape, sb, sizeof sb), (long long)a->shape[1],
                            (long long)b->shape[0]);
    }
    const PcBackend *be = pc_be(a);
    if (!be) return PC_ERR_DEVICE;
    int64_t shape[2] = {a->shape[0], b->shape[1]};
    PcTensor *bx = NULL, *y = NULL;
    PcStatus st;
    if (bias->ndim > 2) {
        char sb[128], so[128];
        return pc_set_error(PC_ERR_INVALID, "addmm: self of shape %s cannot be broadcast to "
                                            "the product's shape %s",
                            pc_shape_str(bias->ndim, bias->shape, sb, sizeof sb),
                            pc_shape_str(2, shape, so, sizeof so));
    }
    for (int i = 0; i < bias->ndim; i++) {
        int64_t want = shape[2 - bias->ndim + i];
        if (bias->shape[i] != 1 && bias->shape[i] != want) {
            char sb[128], so[128];
            return pc_set_error(PC_ERR_INVALID, "addmm: self of shape %s cannot be broadcast to "
                                                "the product's shape %s",
                                pc_shape_str(bias->ndim, bias->shape, sb, sizeof sb),
                                pc_shape_str(2, shape, so, sizeof so));
        }
    }
    PC_TRY(pc_expand_view(bias, 2, shape, &bx));
    PC_TRY_GOTO(st, pc_tensor_empty(2, shape, a->dtype, a->device, &y));
    if (pc_tensor_numel(y) > 0) {
        if (beta == 0.0)
            PC_TRY_GOTO(st, be->fill(y, 0.0));
        else
            PC_TRY_GOTO(st, be->copy(y, bx));
    }
    PC_TRY_GOTO(st, pc_gemm2d(a, b, alpha, beta, NULL, y));
    PcTensor *ins[3] = {bias, a, b};
    if (pc_autograd_any_requires_grad(3, ins)) {
        PcNode *node;
        PC_TRY_GOTO(st, pc_node_create(sizeof(PcAddmmNode), &pc_addmm_vt, 1, 3, ins, &node));
        PcAddmmNode *n = (PcAddmmNode *)node;
        n->beta = beta;
        n->alpha = alpha;
        pc_meta_of(bias, &n->mbias);
        if (b->requires_grad) st = pc_saved_set(&n->a, a);
        if (st == PC_OK && a->requires_grad) st = pc_saved_set(&n->b, b);
        if (st == PC_OK) pc_autograd_set_history(y, node, 0);
        pc_node_decref(node);
        if (st != PC_OK) goto fail;
    }
    *out = y;
    y = NULL;
fail:
    pc_tensor_decref(bx);
    pc_tensor_decref(y);
    return st;
}

/* ---- linear ---- */

typedef struct PcLinearNode {
    PcNode base;
    PcTensorMeta mx;     /* x's shape (dX is viewed back to it) */
    PcSaved x;           /* when w needs a gradient */
    PcSaved w;           /* when x needs a gradient */
} PcLinearNode;

static void pc_linear_release(PcNode *self) {
    PcLinearNode *n = (PcLinearNode *)self;
    pc_saved_clear(&n->x);
    pc_saved_clear(&n->w);
}

static PcStatus pc_linear_apply(PcNode *self, PcTensor *const *grad_outputs, const bool *needs,
                                PcTensor **grad_inputs) {
    PcLinearNode *n = (PcLinearNode *)self;
    PcTensor *g = grad_outputs[0];
    if (!g) return PC_OK;
    PcTensor *gr = NULL, *x = NULL, *xr = NULL, *w = NULL, *tv = NULL, *t = NULL, *s = NULL;
    PcStatus st = PC_OK;
    PC_TRY(pc_as_rows(g, &gr)); /* (N, out) */
    if (needs[0]) {             /* dX = dY W */
        PC_TRY_GOTO(st, pc_saved_get(&n->w, self, &w));
        PC_TRY_GOTO(st, pc_mm_new(gr, w, 1.0, &t));
        PC_TRY_GOTO(st, pc_reshape_fresh(t, n->mx.ndim, n->mx.shape, &grad_inputs[0]));
    }
    if (needs[1]) { /* dW = dY^T X, added straight into W.grad when the pass allows */
        PC_TRY_GOTO(st, pc_saved_get(&n->x, self, &x));
        PC_TRY_GOTO(st, pc_as_rows(x, &xr));
        PC_TRY_GOTO(st, pc_mT_view(gr, &tv));
        PC_TRY_GOTO(st, pc_grad_mm(self, 1, tv, xr, 1.0, &grad_inputs[1]));
    }
    if (n->base.n_edges > 2 && needs[2]) { /* db = sum of dY over rows */
        int64_t nout = gr->shape[1];
        PC_TRY_GOTO(st, pc_sum_to_shape(gr, 1, &nout, &s)); /* always a fresh tensor */
        grad_inputs[2] = s;
        s = NULL;
    }
fail:
    pc_tensor_decref(gr);
    pc_tensor_decref(x);
    pc_tensor_decref(xr);
    pc_tensor_decref(w);
    pc_tensor_decref(tv);
    pc_tensor_decref(t);
    pc_tensor_decref(s);
    if (st != PC_OK)
        for (int j = 0; j < n->base.n_edges; j++) {
            pc_tensor_decref(grad_inputs[j]);
            grad_inputs[j] = NULL;
        }
    return st;
}

static const PcNodeVTable pc_linear_addmm_vt = {"AddmmBackward0", pc_linear_apply,
                                                pc_linear_release};
static const PcNodeVTable pc_linear_mm_vt = {"MmBackward0", pc_linear_apply, pc_linear_release};
static const PcNodeVTable pc_linear_vt = {"LinearBackward0", pc_linear_apply, pc_linear_release};

PcStatus pc_op_linear(PcTensor *x, PcTensor *w, PcTensor *b, PcTensor **out) {
    *out = NULL;
    PC_TRY(pc_check_matrix("linear", "weight", w));
    if (x->ndim < 1)
        return pc_set_error(PC_ERR_INVALID, "linear: input must have at least 1 dim, got a "
                                            "0-D tensor");
    PC_TRY(pc_check_operands("linear", "input", x, "weight", w));
    int64_t nin = w->shape[1], nout = w->shape[0];
    if (x->shape[x->ndim - 1] != nin) {
        char sx[128], sw[128];
        return pc_set_error(PC_ERR_INVALID, "linear: shape mismatch: input %s and weight %s: "
                                            "input.shape[-1]=%lld != weight.shape[1]=%lld",
                            pc_shape_str(x->ndim, x->shape, sx, sizeof sx),
                            pc_shape_str(2, w->shape, sw, sizeof sw),
                            (long long)x->shape[x->ndim - 1], (long long)nin);
    }
    if (b) {
        PC_TRY(pc_check_operands("linear", "bias", b, "weight", w));
        if (b->ndim != 1 || b->shape[0] != nout) {
            char sb[128], sw[128];
            return pc_set_error(PC_ERR_INVALID, "linear: bias must have shape (%lld,) for "
                                                "weight %s, got %s", (long long)nout,
                                pc_shape_str(2, w->shape, sw, sizeof sw),
                                pc_shape_str(b->ndim, b->shape, sb, sizeof sb));
        }
    }
    PcTensor *xr = NULL, *wt = NULL, *bc = NULL, *y2 = NULL, *y = NULL;
    PcStatus st;
    PC_TRY_GOTO(st, pc_as_rows(x, &xr));
    PC_TRY_GOTO(st, pc_mT_view(w, &wt));
    if (b) PC_TRY_GOTO(st, pc_make_contiguous(b, &bc));
    int64_t shape2[2] = {xr->shape[0], nout};
    PC_TRY_GOTO(st, pc_tensor_empty(2, shape2, x->dtype, x->device, &y2));
    PC_TRY_GOTO(st, pc_gemm2d(xr, wt, 1.0, 0.0, bc, y2));
    int64_t oshape[PC_MAX_DIMS];
    memcpy(oshape, x->shape, sizeof oshape);
    oshape[x->ndim - 1] = nout;
    PC_TRY_GOTO(st, pc_reshape_fresh(y2, x->ndim, oshape, &y));
    PcTensor *ins[3] = {x, w, b};
    if (pc_autograd_any_requires_grad(b ? 3 : 2, ins)) {
        const PcNodeVTable *vt = x->ndim != 2 ? &pc_linear_vt
                                 : b          ? &pc_linear_addmm_vt
                                              : &pc_linear_mm_vt;
        PcNode *node;
        PC_TRY_GOTO(st, pc_node_create(sizeof(PcLinearNode), vt, 1, b ? 3 : 2, ins, &node));
        PcLinearNode *n = (PcLinearNode *)node;
        pc_meta_of(x, &n->mx);
        if (w->requires_grad) st = pc_saved_set(&n->x, x);
        if (st == PC_OK && x->requires_grad) st = pc_saved_set(&n->w, w);
        if (st == PC_OK) pc_autograd_set_history(y, node, 0);
        pc_node_decref(node);
        if (st != PC_OK) goto fail;
    }
    *out = y;
    y = NULL;
fail:
    pc_tensor_decref(xr);
    pc_tensor_decref(wt);
    pc_tensor_decref(bc);
    pc_tensor_decref(y2);
    pc_tensor_decref(y);
    return st;
}
