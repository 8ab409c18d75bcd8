/* elementwise.c — unary and binary elementwise ops, out of place and in place, with autograd.
 *
 * Dtypes. Each op has a compute dtype (what the backend kernel runs in) and a result dtype:
 *   - floating inputs: both are the input's (binary: pc_dtype_promote of the two), except the
 *     comparisons (PC_U_GE_S, PC_U_GT_S, PC_B_EQ ... PC_B_GE), whose result is bool, as in
 *     torch;
 *   - int64/bool inputs: ops the kernels support on int64 (abs, +s, *s, add, sub, mul and the
 *     binary comparisons) run in int64 (comparisons exact over the whole int64 range); the
 *     other integer-valued ops (neg, relu, sign, pow, s-x, maximum, the scalar comparisons)
 *     run in float64 and are converted back (exact below 2^53); float-valued ops (exp, log,
 *     sqrt, tanh, sigmoid, gelu, s/x, div) give float32, as torch does. *_BWD ops are float
 *     only.
 *   Python scalars never change a floating tensor's dtype.
 *
 * Autograd. A differentiable op with a floating result records a node when grad mode is on
 * and an input requires grad: NegBackward0, AbsBackward0, ExpBackward0, LogBackward0,
 * SqrtBackward0, TanhBackward0, SigmoidBackward0, ReluBackward0, GeluBackward0, PowBackward0,
 * AddBackward0, MulBackward0, RsubBackward1, DivBackward0 (s / x) for the unary forms and
 * AddBackward0, SubBackward0, MulBackward0, DivBackward0, MaximumBackward0 for tensor pairs.
 * Broadcast gradients are summed back with pc_sum_to_shape and converted to each input's
 * dtype. Outputs a node needs are saved as history-free views (no reference cycle). sign and
 * the comparisons are not differentiable (their results never require grad).
 *
 * In place (pc_op_unary_, pc_op_binary_): pc_check_inplace first (leaf / view rules), the
 * result dtype must be self's (PC_ERR_TYPE otherwise, except comparisons, which write 0/1 in
 * self's dtype), the version is bumped, and with grad mode on and self or other requiring
 * grad, self's history is rebased onto a new node whose edges are self's old history. Inputs
 * the node needs from before the write (old self, an `other` sharing self's storage) are
 * cloned first.
 *
 * Exports: pc_op_unary, pc_op_unary_, pc_op_binary, pc_op_binary_ (ops.h).
 */
#include "internal.h"

#include <stdio.h>
#include <string.h>

/* ---- dtype rules ---- */

static const char *const pc_unary_op_names[PC_NUM_UNARY] = {
    "neg", "abs", "exp", "log", "sqrt", "tanh", "sigmoid", "relu", "gelu", "pow", "sign",
    "add", "mul", "rsub", "div", "ge", "gt"};

static bool pc_unary_is_compare(PcUnaryOp op) { return op == PC_U_GE_S || op == PC_U_GT_S; }

static void pc_unary_dtypes(PcUnaryOp op, PcDType in, PcDType *compute, PcDType *result) {
    if (pc_dtype_is_float(in)) {
        *compute = in;
        *result = pc_unary_is_compare(op) ? PC_BOOL : in;
        return;
    }
    switch (op) {
    case PC_U_ABS: case PC_U_ADD_S: case PC_U_MUL_S:
        *compute = *result = PC_INT64;
        break;
    case PC_U_NEG: case PC_U_RELU: case PC_U_POW: case PC_U_SIGN: case PC_U_RSUB_S:
        *compute = PC_FLOAT64;
        *result = PC_INT64;
        break;
    case PC_U_GE_S: case PC_U_GT_S:
        *compute = PC_FLOAT64;
        *result = PC_BOOL;
        break;
    default: /* exp, log, sqrt, tanh, sigmoid, gelu, s / x */
        *compute = *result = PC_FLOAT32;
        break;
    }
}

static bool pc_binary_is_bwd(PcBinaryOp op) { return op >= PC_B_RELU_BWD; }

static bool pc_binary_is_compare(PcBinaryOp op) {
    switch (op) {
    case PC_B_EQ: case PC_B_NE: case PC_B_LT: case PC_B_LE: case PC_B_GT: case PC_B_GE:
        return true;
    default:
        return false;
    }
}

static PcStatus pc_binary_dtypes(PcBinaryOp op, PcDType da, PcDType db, PcDType *compute,
                                 PcDType *result) {
    PcDType p = pc_dtype_promote(da, db);
    if (pc_dtype_is_float(p)) {
        *compute = p;
        *result = pc_binary_is_compare(op) ? PC_BOOL : p;
        return PC_OK;
    }
    if (pc_binary_is_compare(op)) {
        *compute = PC_INT64;
        *result = PC_BOOL;
        return PC_OK;
    }
    switch (op) {
    case PC_B_ADD: case PC_B_SUB: case PC_B_MUL:
        *compute = *result = PC_INT64;
        return PC_OK;
    case PC_B_DIV:
        *compute = *result = PC_FLOAT32;
        return PC_OK;
    case PC_B_MAXIMUM:
        *compute = PC_FLOAT64;
        *result = p;
        return PC_OK;
    default:
        return pc_set_error(PC_ERR_TYPE, "%s: expected floating point tensors, got %s and %s",
                            pc_binary_op_name(op), pc_dtype_name(da), pc_dtype_name(db));
    }
}

/* ---- small tensor helpers (no autograd) ---- */

/* A history-free view of t sharing its storage (what a node saves of its own output). */
static PcStatus pc_plain_view(PcTensor *t, PcTensor **out) {
    return pc_tensor_view_of(t->storage, t->offset, t->ndim, t->shape, t->strides, t->dtype,
                             out);
}

/* A fresh contiguous copy of t (no autograd). */
static PcStatus pc_fresh_copy(PcTensor *t, PcTensor **out) {
    *out = NULL;
    const PcBackend *be = pc_be(t);
    if (!be) return PC_ERR_DEVICE;
    PcTensor *c;
    PC_TRY(pc_empty_like(t, &c));
    PcStatus st = be->copy(c, t);
    if (st != PC_OK) {
        pc_tensor_decref(c);
        return st;
    }
    *out = c;
    return PC_OK;
}

static bool pc_same_view(const PcTensor *a, const PcTensor *b) {
    if (a->storage != b->storage || a->offset != b->offset || a->ndim != b->ndim ||
        a->dtype != b->dtype)
        return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i] || (a->shape[i] > 1 && a->strides[i] != b->strides[i]))
            return false;
    return true;
}

/* Run a unary kernel into dst (any dtype) from src (dst's shape) computing in `compute`. */
static PcStatus pc_run_unary(const PcBackend *be, PcUnaryOp op, PcTensor *dst, PcTensor *src,
                             double s, PcDType compute) {
    if (pc_tensor_numel(dst) == 0) return PC_OK;
    PcStatus st;
    if (dst->dtype == compute) {
        PcTensor *xc;
        PC_TRY(pc_cast(src, compute, &xc));
        st = be->unary(op, dst, xc, s);
        pc_tensor_decref(xc);
        return st;
    }
    PcTensor *tmp;
    PC_TRY(pc_tensor_empty(dst->ndim, dst->shape, compute, dst->device, &tmp));
    st = be->copy(tmp, src);
    if (st == PC_OK) st = be->unary(op, tmp, tmp, s);
    if (st == PC_OK) st = be->copy(dst, tmp);
    pc_tensor_decref(tmp);
    return st;
}

/* Run a binary kernel into dst from a, b (already of the compute dtype and broadcast to dst's
 * shape). dst may be a (in place). */
static PcStatus pc_run_binary(const PcBackend *be, PcBinaryOp op, PcTensor *dst, PcTensor *a,
                              PcTensor *b, double alpha, PcDType compute) {
    if (pc_tensor_numel(dst) == 0) return PC_OK;
    if (dst->dtype == compute) return be->binary(op, dst, a, b, alpha);
    PcTensor *tmp;
    PC_TRY(pc_tensor_empty(dst->ndim, dst->shape, compute, dst->device, &tmp));
    PcStatus st = be->binary(op, tmp, a, b, alpha);
    if (st == PC_OK) st = be->copy(dst, tmp);
    pc_tensor_decref(tmp);
    return st;
}

/* ---- unary autograd ---- */

typedef struct PcUnaryNode {
    PcNode base;
    PcUnaryOp op;
    double s;
    PcDType in_dtype;
    PcSaved x;   /* the input (before the op), when the formula needs it */
    PcSaved y;   /* a history-free view of the output, when the formula needs it */
} PcUnaryNode;

static bool pc_unary_differentiable(PcUnaryOp op) {
    return op != PC_U_SIGN && !pc_unary_is_compare(op);
}

static bool pc_unary_needs_x(PcUnaryOp op) {
    return op == PC_U_ABS || op == PC_U_LOG || op == PC_U_GELU || op == PC_U_POW ||
           op == PC_U_RDIV_S;
}

static bool pc_unary_needs_y(PcUnaryOp op) {
    return op == PC_U_EXP || op == PC_U_SQRT || op == PC_U_TANH || op == PC_U_SIGMOID ||
           op == PC_U_RELU;
}

static void pc_unary_node_release(PcNode *self) {
    PcUnaryNode *n = (PcUnaryNode *)self;
    pc_saved_clear(&n->x);
    pc_saved_clear(&n->y);
}

/* Gradient of the input for output gradient g (new reference in *out). */
static PcStatus pc_unary_grad(PcUnaryNode *n, PcTensor *g, PcTensor **out) {
    *out = NULL;
    PcTensor *x = NULL, *y = NULL, *t1 = NULL, *t2 = NULL, *r = NULL;
    PcStatus st = PC_OK;
    if (pc_unary_needs_x(n->op)) PC_TRY_GOTO(st, pc_saved_get(&n->x, &n->base, &x));
    if (pc_unary_needs_y(n->op)) PC_TRY_GOTO(st, pc_saved_get(&n->y, &n->base, &y));
    switch (n->op) {
    case PC_U_NEG: case PC_U_RSUB_S:
        PC_TRY_GOTO(st, pc_op_unary(PC_U_NEG, g, 0.0, &r));
        break;
    case PC_U_ADD_S:
        pc_tensor_incref(g);
        r = g;
        break;
    case PC_U_MUL_S:
        PC_TRY_GOTO(st, pc_op_unary(PC_U_MUL_S, g, n->s, &r));
        break;
    case PC_U_ABS:
        PC_TRY_GOTO(st, pc_op_unary(PC_U_SIGN, x, 0.0, &t1));
        PC_TRY_GOTO(st, pc_op_binary(PC_B_MUL, g, t1, 1.0, &r));
        break;
    case PC_U_EXP:
        PC_TRY_GOTO(st, pc_op_binary(PC_B_MUL, g, y, 1.0, &r));
        break;
    case PC_U_LOG:
        PC_TRY_GOTO(st, pc_op_binary(PC_B_DIV, g, x, 1.0, &r));
        break;
    case PC_U_SQRT: /* g / (2 sqrt(x)) */
        PC_TRY_GOTO(st, pc_op_binary(PC_B_DIV, g, y, 1.0, &t1));
        PC_TRY_GOTO(st, pc_op_unary(PC_U_MUL_S, t1, 0.5, &r));
        break;
    case PC_U_TANH:
        PC_TRY_GOTO(st, pc_op_binary(PC_B_TANH_BWD, g, y, 1.0, &r));
        break;
    case PC_U_SIGMOID:
        PC_TRY_GOTO(st, pc_op_binary(PC_B_SIGMOID_BWD, g, y, 1.0, &r));
        break;
    case PC_U_RELU: /* y > 0 exactly where x > 0 */
        PC_TRY_GOTO(st, pc_op_binary(PC_B_RELU_BWD, g, y, 1.0, &r));
        break;
    case PC_U_GELU:
        PC_TRY_GOTO(st, pc_op_binary(PC_B_GELU_BWD, g, x, 1.0, &r));
        break;
    case PC_U_POW:
        if (n->s == 0.0)
            PC_TRY_GOTO(st, pc_op_full(x->ndim, x->shape, 0.0, x->dtype, x->device, &r));
        else
            PC_TRY_GOTO(st, pc_op_binary(PC_B_POW_BWD, g, x, n->s, &r));
        break;
    case PC_U_RDIV_S: /* d(s / x) = -s g / x^2 */
        PC_TRY_GOTO(st, pc_op_binary(PC_B_MUL, x, x, 1.0, &t1));
        PC_TRY_GOTO(st, pc_op_binary(PC_B_DIV, g, t1, 1.0, &t2));
        PC_TRY_GOTO(st, pc_op_unary(PC_U_MUL_S, t2, -n->s, &r));
        break;
    default:
        st = pc_set_error(PC_ERR_RUNTIME, "%s: no gradient formula", n->base.vt->name);
        goto fail;
    }
    pc_tensor_decref(t1);
    t1 = NULL;
    PC_TRY_GOTO(st, pc_cast(r, n->in_dtype, &t1));
    pc_tensor_decref(r);
    r = NULL;
    *out = t1;
    t1 = NULL;
fail:
    pc_tensor_decref(x);
    pc_tensor_decref(y);
    pc_tensor_decref(t1);
    pc_tensor_decref(t2);
    pc_tensor_decref(r);
    return st;
}

static PcStatus pc_unary_node_apply(PcNode *self, PcTensor *const *grad_outputs,
                                    const bool *needs, PcTensor **grad_inputs) {
    if (!needs[0]) return PC_OK;
    if (!grad_outputs[0]) {
        grad_inputs[0] = NULL;
        return PC_OK;
    }
    return pc_unary_grad((PcUnaryNode *)self, grad_outputs[0], &grad_inputs[0]);
}

#define PC_UNARY_VT(nm) {nm, pc_unary_node_apply, pc_unary_node_release}
static const PcNodeVTable pc_unary_vts[PC_NUM_UNARY] = {
    [PC_U_NEG] = PC_UNARY_VT("NegBackward0"),
    [PC_U_ABS] = PC_UNARY_VT("AbsBackward0"),
    [PC_U_EXP] = PC_UNARY_VT("ExpBackward0"),
    [PC_U_LOG] = PC_UNARY_VT("LogBackward0"),
    [PC_U_SQRT] = PC_UNARY_VT("SqrtBackward0"),
    [PC_U_TANH] = PC_UNARY_VT("TanhBackward0"),
    [PC_U_SIGMOID] = PC_UNARY_VT("SigmoidBackward0"),
    [PC_U_RELU] = PC_UNARY_VT("ReluBackward0"),
    [PC_U_GELU] = PC_UNARY_VT("GeluBackward0"),
    [PC_U_POW] = PC_UNARY_VT("PowBackward0"),
    [PC_U_SIGN] = PC_UNARY_VT("SignBackward0"),
    [PC_U_ADD_S] = PC_UNARY_VT("AddBackward0"),
    [PC_U_MUL_S] = PC_UNARY_VT("MulBackward0"),
    [PC_U_RSUB_S] = PC_UNARY_VT("RsubBackward1"),
    [PC_U_RDIV_S] = PC_UNARY_VT("DivBackward0"),
    [PC_U_GE_S] = PC_UNARY_VT("GeBackward0"),
    [PC_U_GT_S] = PC_UNARY_VT("GtBackward0"),
};

/* Build the node for `out` = op(x) (x: the value before the op; for in-place ops a clone of
 * old self, `edge_src` the tensor whose history the edge follows). */
static PcStatus pc_unary_node_new(PcUnaryOp op, double s, PcTensor *edge_src, PcTensor *x,
                                  PcUnaryNode **out) {
    *out = NULL;
    PcNode *node;
    PC_TRY(pc_node_create(sizeof(PcUnaryNode), &pc_unary_vts[op], 1, 1, &edge_src, &node));
    PcUnaryNode *n = (PcUnaryNode *)node;
    n->op = op;
    n->s = s;
    n->in_dtype = edge_src->dtype;
    if (pc_unary_needs_x(op)) {
        PcStatus st = pc_saved_set(&n->x, x);
        if (st != PC_OK) {
            pc_node_decref(node);
            return st;
        }
    }
    *out = n;
    return PC_OK;
}

/* Save a history-free view of the output when the formula needs it. */
static PcStatus pc_unary_node_save_y(PcUnaryNode *n, PcTensor *y) {
    if (!pc_unary_needs_y(n->op)) return PC_OK;
    PcTensor *v;
    PC_TRY(pc_plain_view(y, &v));
    PcStatus st = pc_saved_set(&n->y, v);
    pc_tensor_decref(v);
    return st;
}

static PcStatus pc_check_unary_op(PcUnaryOp op) {
    if ((int)op < 0 || op >= PC_NUM_UNARY)
        return pc_set_error(PC_ERR_INVALID, "unary: unknown op %d", (int)op);
    return PC_OK;
}

/* ---- unary ops ---- */

PcStatus pc_op_unary(PcUnaryOp op, PcTensor *self, double s, PcTensor **out) {
    *out = NULL;
    PC_TRY(pc_check_unary_op(op));
    const PcBackend *be = pc_be(self);
    if (!be) return PC_ERR_DEVICE;
    PcDType compute, result;
    pc_unary_dtypes(op, self->dtype, &compute, &result);
    PcTensor *y;
    PC_TRY(pc_tensor_empty(self->ndim, self->shape, result, self->device, &y));
    PcStatus st;
    PC_TRY_GOTO(st, pc_run_unary(be, op, y, self, s, compute));
    if (pc_unary_differentiable(op) && pc_dtype_is_float(result) &&
        pc_dtype_is_float(self->dtype) && pc_autograd_any_requires_grad(1, &self)) {
        PcUnaryNode *n;
        PC_TRY_GOTO(st, pc_unary_node_new(op, s, self, self, &n));
        st = pc_unary_node_save_y(n, y);
        if (st == PC_OK) pc_autograd_set_history(y, &n->base, 0);
        pc_node_decref(&n->base);
        if (st != PC_OK) goto fail;
    }
    *out = y;
    return PC_OK;
fail:
    pc_tensor_decref(y);
    return st;
}

PcStatus pc_op_unary_(PcUnaryOp op, PcTensor *self, double s) {
    PC_TRY(pc_check_unary_op(op));
    char name[32];
    snprintf(name, sizeof name, "%s_", pc_unary_op_names[op]);
    PC_TRY(pc_check_inplace(name, self));
    const PcBackend *be = pc_be(self);
    if (!be) return PC_ERR_DEVICE;
    PcDType compute, result;
    pc_unary_dtypes(op, self->dtype, &compute, &result);
    if (result != self->dtype && !pc_unary_is_compare(op))
        return pc_set_error(PC_ERR_TYPE, "%s: result type %s can't be cast to the desired "
                                         "output type %s", name, pc_dtype_name(result),
                            pc_dtype_name(self->dtype));

    bool record = pc_unary_differentiable(op) && pc_dtype_is_float(self->dtype) &&
                  pc_autograd_any_requires_grad(1, &self);
    PcUnaryNode *n = NULL;
    PcTensor *old = NULL;
    PcStatus st = PC_OK;
    if (record) {
        if (pc_unary_needs_x(op)) PC_TRY(pc_fresh_copy(self, &old));
        /* Edges follow self's history from before the write. */
        PC_TRY_GOTO(st, pc_unary_node_new(op, s, self, old, &n));
    }
    PC_TRY_GOTO(st, pc_run_unary(be, op, self, self, s, compute));
    pc_tensor_bump_version(self);
    if (n) {
        PC_TRY_GOTO(st, pc_unary_node_save_y(n, self));
        pc_autograd_set_history(self, &n->base, 0);
    }
fail:
    if (n) pc_node_decref(&n->base);
    pc_tensor_decref(old);
    return st;
}

/* ---- binary autograd ---- */

typedef struct PcBinaryNode {
    PcNode base;
    PcBinaryOp op;
    double alpha;
    PcSaved a, b;        /* inputs, when the formulas need them (a: old self for in place) */
    PcTensorMeta ma, mb; /* shapes and dtypes of the inputs */
} PcBinaryNode;

static bool pc_binary_differentiable(PcBinaryOp op) {
    return op == PC_B_ADD || op == PC_B_SUB || op == PC_B_MUL || op == PC_B_DIV ||
           op == PC_B_MAXIMUM;
}

static void pc_binary_node_release(PcNode *self) {
    PcBinaryNode *n = (PcBinaryNode *)self;
    pc_saved_clear(&n->a);
    pc_saved_clear(&n->b);
}

/* Reduce a full-shape gradient to the input's shape and dtype; consumes *g. */
static PcStatus pc_grad_to_input(PcTensor **g, const PcTensorMeta *m, PcTensor **out) {
    *out = NULL;
    PcTensor *s = NULL;
    PcStatus st = pc_sum_to_shape(*g, m->ndim, m->shape, &s);
    pc_tensor_decref(*g);
    *g = NULL;
    if (st != PC_OK) return st;
    st = pc_cast(s, m->dtype, out);
    pc_tensor_decref(s);
    return st;
}

static PcStatus pc_binary_node_apply(PcNode *self, PcTensor *const *grad_outputs,
                                     const bool *needs, PcTensor **grad_inputs) {
    PcBinaryNode *n = (PcBinaryNode *)self;
    PcTensor *g = grad_outputs[0];
    if (!g) return PC_OK; /* grad_inputs stay NULL (zero) */
    bool na = needs[0], nb = n->base.n_edges > 1 && needs[1];
    PcTensor *a = NULL, *b = NULL, *ga = NULL, *gb = NULL, *t1 = NULL, *t2 = NULL, *t3 = NULL;
    PcStatus st = PC_OK;
    switch (n->op) {
    case PC_B_ADD: case PC_B_SUB:
        if (na) {
            pc_tensor_incref(g);
            ga = g;
        }
        if (nb) {
            double k = n->op == PC_B_ADD ? n->alpha : -n->alpha;
            if (k == 1.0) {
                pc_tensor_incref(g);
                gb = g;
            } else {
                PC_TRY_GOTO(st, pc_op_unary(PC_U_MUL_S, g, k, &gb));
            }
        }
        break;
    case PC_B_MUL:
        if (na) {
            PC_TRY_GOTO(st, pc_saved_get(&n->b, self, &b));
            PC_TRY_GOTO(st, pc_op_binary(PC_B_MUL, g, b, 1.0, &ga));
        }
        if (nb) {
            PC_TRY_GOTO(st, pc_saved_get(&n->a, self, &a));
            PC_TRY_GOTO(st, pc_op_binary(PC_B_MUL, g, a, 1.0, &gb));
        }
        break;
    case PC_B_DIV: /* ga = g / b; gb = -(g / b) * (a / b) */
        PC_TRY_GOTO(st, pc_saved_get(&n->b, self, &b));
        PC_TRY_GOTO(st, pc_op_binary(PC_B_DIV, g, b, 1.0, &t1));
        if (nb) {
            PC_TRY_GOTO(st, pc_saved_get(&n->a, self, &a));
            PC_TRY_GOTO(st, pc_op_binary(PC_B_DIV, a, b, 1.0, &t2));
            PC_TRY_GOTO(st, pc_op_binary(PC_B_MUL, t1, t2, 1.0, &t3));
            PC_TRY_GOTO(st, pc_op_unary(PC_U_NEG, t3, 0.0, &gb));
        }
        if (na) {
            ga = t1;
            t1 = NULL;
        }
        break;
    case PC_B_MAXIMUM: { /* the larger input gets g; ties split it evenly */
        PC_TRY_GOTO(st, pc_saved_get(&n->a, self, &a));
        PC_TRY_GOTO(st, pc_saved_get(&n->b, self, &b));
        PcTensor *m = NULL, *tie = NULL, *tief = NULL;
        st = pc_op_binary(PC_B_MAXIMUM, a, b, 1.0, &m);
        if (st == PC_OK) st = pc_op_binary(PC_B_EQ, a, b, 1.0, &tie);
        if (st == PC_OK) st = pc_cast(tie, g->dtype, &tief);
        for (int side = 0; side < 2 && st == PC_OK; side++) {
            if (!(side == 0 ? na : nb)) continue;
            PcTensor *e = NULL, *ef = NULL, *w = NULL;
            st = pc_op_binary(PC_B_EQ, side == 0 ? a : b, m, 1.0, &e);
            if (st == PC_OK) st = pc_cast(e, g->dtype, &ef);
            if (st == PC_OK) st = pc_op_binary(PC_B_SUB, ef, tief, 0.5, &w);
            if (st == PC_OK) st = pc_op_binary(PC_B_MUL, g, w, 1.0, side == 0 ? &ga : &gb);
            pc_tensor_decref(e);
            pc_tensor_decref(ef);
            pc_tensor_decref(w);
        }
        pc_tensor_decref(m);
        pc_tensor_decref(tie);
        pc_tensor_decref(tief);
        if (st != PC_OK) goto fail;
        break;
    }
    default:
        st = pc_set_error(PC_ERR_RUNTIME, "%s: no gradient formula", self->vt->name);
        goto fail;
    }
    if (ga) PC_TRY_GOTO(st, pc_grad_to_input(&ga, &n->ma, &grad_inputs[0]));
    if (gb) PC_TRY_GOTO(st, pc_grad_to_input(&gb, &n->mb, &grad_inputs[1]));
fail:
    pc_tensor_decref(a);
    pc_tensor_decref(b);
    pc_tensor_decref(ga);
    pc_tensor_decref(gb);
    pc_tensor_decref(t1);
    pc_tensor_decref(t2);
    pc_tensor_decref(t3);
    if (st != PC_OK) {
        pc_tensor_decref(grad_inputs[0]);
        grad_inputs[0] = NULL;
        if (n->base.n_edges > 1) {
            pc_tensor_decref(grad_inputs[1]);
            grad_inputs[1] = NULL;
        }
    }
    return st;
}

#define PC_BINARY_VT(nm) {nm, pc_binary_node_apply, pc_binary_node_release}
static const PcNodeVTable pc_add_vt = PC_BINARY_VT("AddBackward0");
static const PcNodeVTable pc_sub_vt = PC_BINARY_VT("SubBackward0");
static const PcNodeVTable pc_mul_vt = PC_BINARY_VT("MulBackward0");
static const PcNodeVTable pc_div_vt = PC_BINARY_VT("DivBackward0");
static const PcNodeVTable pc_maximum_vt = PC_BINARY_VT("MaximumBackward0");

static const PcNodeVTable *pc_binary_vt(PcBinaryOp op) {
    switch (op) {
    case PC_B_ADD: return &pc_add_vt;
    case PC_B_SUB: return &pc_sub_vt;
    case PC_B_MUL: return &pc_mul_vt;
    case PC_B_DIV: return &pc_div_vt;
    default: return &pc_maximum_vt;
    }
}

/* Node for op(a, b). edge_a: the tensor whose history the first edge follows (self before an
 * in-place write); a_val / b_val: the values the formulas use (old self / a copy of other). */
static PcStatus pc_binary_node_new(PcBinaryOp op, double alpha, PcTensor *edge_a,
                                   PcTensor *edge_b, PcTensor *a_val, PcTensor *b_val,
                                   PcNode **out) {
    *out = NULL;
    PcTensor *ins[2] = {edge_a, edge_b};
    PcNode *node;
    PC_TRY(pc_node_create(sizeof(PcBinaryNode), pc_binary_vt(op), 1, 2, ins, &node));
    PcBinaryNode *n = (PcBinaryNode *)node;
    n->op = op;
    n->alpha = alpha;
    pc_meta_of(edge_a, &n->ma);
    pc_meta_of(edge_b, &n->mb);
    bool ga = edge_a->requires_grad, gb = edge_b->requires_grad;
    bool save_a = (op == PC_B_MUL && gb) || (op == PC_B_DIV && gb) || op == PC_B_MAXIMUM;
    bool save_b = (op == PC_B_MUL && ga) || op == PC_B_DIV || op == PC_B_MAXIMUM;
    PcStatus st = PC_OK;
    if (save_a) st = pc_saved_set(&n->a, a_val);
    if (st == PC_OK && save_b) st = pc_saved_set(&n->b, b_val);
    if (st != PC_OK) {
        pc_node_decref(node);
        return st;
    }
    *out = node;
    return PC_OK;
}

static PcStatus pc_check_binary_args(const char *op, PcBinaryOp bop, PcTensor *a, PcTensor *b) {
    if ((int)bop < 0 || bop >= PC_NUM_BINARY)
        return pc_set_error(PC_ERR_INVALID, "binary: unknown op %d", (int)bop);
    PC_TRY(pc_check_same_device(op, a, b));
    if (pc_binary_is_bwd(bop) && (!pc_dtype_is_float(a->dtype) || !pc_dtype_is_float(b->dtype)))
        return pc_set_error(PC_ERR_TYPE, "%s: expected floating point tensors, got %s and %s",
                            op, pc_dtype_name(a->dtype), pc_dtype_name(b->dtype));
    return PC_OK;
}

/* ---- binary ops ---- */

PcStatus pc_op_binary(PcBinaryOp op, PcTensor *a, PcTensor *b, double alpha, PcTensor **out) {
    *out = NULL;
    const char *name = pc_binary_op_name(op);
    PC_TRY(pc_check_binary_args(name, op, a, b));
    const PcBackend *be = pc_be(a);
    if (!be) return PC_ERR_DEVICE;
    int nd;
    int64_t shape[PC_MAX_DIMS];
    PC_TRY(pc_broadcast_shapes(name, a->ndim, a->shape, b->ndim, b->shape, &nd, shape));
    PcDType compute, result;
    PC_TRY(pc_binary_dtypes(op, a->dtype, b->dtype, &compute, &result));

    PcTensor *ac = NULL, *bc = NULL, *ae = NULL, *bx = NULL, *y = NULL;
    PcStatus st;
    PC_TRY_GOTO(st, pc_cast(a, compute, &ac));
    PC_TRY_GOTO(st, pc_cast(b, compute, &bc));
    PC_TRY_GOTO(st, pc_expand_view(ac, nd, shape, &ae));
    PC_TRY_GOTO(st, pc_expand_view(bc, nd, shape, &bx));
    PC_TRY_GOTO(st, pc_tensor_empty(nd, shape, result, a->device, &y));
    PC_TRY_GOTO(st, pc_run_binary(be, op, y, ae, bx, alpha, compute));
    PcTensor *ins[2] = {a, b};
    if (pc_binary_differentiable(op) && pc_dtype_is_float(result) &&
        pc_autograd_any_requires_grad(2, ins)) {
        PcNode *node;
        PC_TRY_GOTO(st, pc_binary_node_new(op, alpha, a, b, a, b, &node));
        pc_autograd_set_history(y, node, 0);
        pc_node_decref(node);
    }
    *out = y;
    y = NULL;
fail:
    pc_tensor_decref(ac);
    pc_tensor_decref(bc);
    pc_tensor_decref(ae);
    pc_tensor_decref(bx);
    pc_tensor_decref(y);
    return st;
}

PcStatus pc_op_binary_(PcBinaryOp op, PcTensor *a, PcTensor *b, double alpha) {
    char name[40];
    snprintf(name, sizeof name, "%s_", pc_binary_op_name(op));
    PC_TRY(pc_check_binary_args(name, op, a, b));
    PC_TRY(pc_check_inplace(name, a));
    const PcBackend *be = pc_be(a);
    if (!be) return PC_ERR_DEVICE;
    int nd;
    int64_t shape[PC_MAX_DIMS];
    PC_TRY(pc_broadcast_shapes(name, a->ndim, a->shape, b->ndim, b->shape, &nd, shape));
    bool fits = nd == a->ndim;
    for (int i = 0; fits && i < nd; i++) fits = shape[i] == a->shape[i];
    if (!fits) {
        char sa[128], sb[128], so[128];
        return pc_set_error(PC_ERR_INVALID, "%s: output with shape %s doesn't match the "
                                            "broadcast shape %s (other has shape %s)",
                            name, pc_shape_str(a->ndim, a->shape, sa, sizeof sa),
                            pc_shape_str(nd, shape, so, sizeof so),
                            pc_shape_str(b->ndim, b->shape, sb, sizeof sb));
    }
    PcDType compute, result;
    PC_TRY(pc_binary_dtypes(op, a->dtype, b->dtype, &compute, &result));
    if (result != a->dtype && !pc_binary_is_compare(op))
        return pc_set_error(PC_ERR_TYPE, "%s: result type %s can't be cast to the desired "
                                         "output type %s", name, pc_dtype_name(result),
                            pc_dtype_name(a->dtype));

    PcTensor *ins[2] = {a, b};
    bool record = pc_binary_differentiable(op) && pc_dtype_is_float(a->dtype) &&
                  pc_autograd_any_requires_grad(2, ins);
    PcTensor *bsafe = NULL, *bc = NULL, *bx = NULL, *ac = NULL, *old = NULL;
    PcNode *node = NULL;
    PcStatus st = PC_OK;
    /* other must not be overwritten while it is read (nor, for the node, afterwards):
     * copy it out when it shares self's storage and is not self itself. */
    if (b->storage == a->storage && (record || !pc_same_view(a, b))) {
        PC_TRY(pc_fresh_copy(b, &bsafe));
    } else {
        pc_tensor_incref(b);
        bsafe = b;
    }
    if (record) {
        bool need_old = op == PC_B_MAXIMUM || ((op == PC_B_MUL || op == PC_B_DIV) &&
                                               b->requires_grad);
        if (need_old) PC_TRY_GOTO(st, pc_fresh_copy(a, &old));
        PC_TRY_GOTO(st, pc_binary_node_new(op, alpha, a, b, old, bsafe, &node));
    }
    PC_TRY_GOTO(st, pc_cast(bsafe, compute, &bc));
    PC_TRY_GOTO(st, pc_expand_view(bc, nd, shape, &bx));
    if (a->dtype == compute) {
        PC_TRY_GOTO(st, pc_run_binary(be, op, a, a, bx, alpha, compute));
    } else {
        PC_TRY_GOTO(st, pc_cast(a, compute, &ac));
        if (pc_tensor_numel(a) > 0) {
            PC_TRY_GOTO(st, be->binary(op, ac, ac, bx, alpha));
            PC_TRY_GOTO(st, be->copy(a, ac));
        }
    }
    pc_tensor_bump_version(a);
    if (node) pc_autograd_set_history(a, node, 0);
fail:
    pc_node_decref(node);
    pc_tensor_decref(bsafe);
    pc_tensor_decref(bc);
    pc_tensor_decref(bx);
    pc_tensor_decref(ac);
    pc_tensor_decref(old);
    return st;
}
