/* test_ops_b.c — smoke test of the shape/join/convert/loss/nn ops (csrc/ops part B).
 *
 * Gradients are checked against central finite differences in float64 on the CPU: for an op
 * f and a fixed random cotangent R of the output's shape, the autograd vector-Jacobian
 * product (pc_autograd_grad with grad_outputs = R) must match d/dx_j sum(f(x) * R) for every
 * input element j. Step 1e-6; tolerance 1e-6 absolute + 1e-5 relative (the central
 * difference's truncation error is O(h^2) and its rounding error about 1e-16 / 1e-6 = 1e-10
 * times the function's scale, far below it). Forward values and error paths are checked on
 * small hand-computed cases.
 *
 * Build (from the repository root):
 *   gcc -std=c11 -O2 -Wall -Wextra -Icsrc tests/c/test_ops_b.c <every csrc .c file except
 *       those under csrc/py and csrc/kernels/cuda> <BLAS flags> -lm -lpthread \
 *       -o /tmp/test_ops_b && /tmp/test_ops_b
 * Exit status 0 when every check passes; each failure prints one line.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops/internal.h"

static int g_failures = 0;
static int g_checks = 0;

#define CHECK(cond, ...)                                                  \
    do {                                                                  \
        g_checks++;                                                       \
        if (!(cond)) {                                                    \
            g_failures++;                                                 \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                   \
            printf(__VA_ARGS__);                                          \
            printf("\n");                                                 \
        }                                                                 \
    } while (0)

#define OK(expr)                                                                      \
    do {                                                                              \
        PcStatus st_ = (expr);                                                        \
        if (st_ != PC_OK) {                                                           \
            printf("FAIL %s:%d: %s -> %d: %s\n", __FILE__, __LINE__, #expr, (int)st_, \
                   pc_last_error());                                                  \
            exit(1);                                                                  \
        }                                                                             \
    } while (0)

static const PcDevice CPU = {PC_CPU, 0};

/* ---- tensor helpers ---- */

static uint64_t g_rng = 88172645463325252ull;
static double urand(void) { /* xorshift64, uniform in [-1, 1) */
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (double)(g_rng >> 11) * (2.0 / 9007199254740992.0) - 1.0;
}

static PcTensor *randt(int ndim, const int64_t *shape, bool requires_grad) {
    PcTensor *t;
    OK(pc_tensor_empty(ndim, shape, PC_FLOAT64, CPU, &t));
    double *p = pc_tensor_data(t);
    for (int64_t i = 0; i < pc_tensor_numel(t); i++) p[i] = urand();
    t->requires_grad = requires_grad;
    return t;
}

static PcTensor *int_tensor(int ndim, const int64_t *shape, const int64_t *vals) {
    PcTensor *t;
    OK(pc_tensor_empty(ndim, shape, PC_INT64, CPU, &t));
    memcpy(pc_tensor_data(t), vals, (size_t)pc_tensor_numel(t) * 8);
    return t;
}

/* Element i (row-major over the shape) of a float64 tensor with any strides. */
static double at(const PcTensor *t, int64_t i) {
    int64_t off = 0;
    for (int d = t->ndim - 1; d >= 0; d--) {
        off += (i % t->shape[d]) * t->strides[d];
        i /= t->shape[d];
    }
    return ((const double *)pc_tensor_data(t))[off];
}

static double dot(const PcTensor *a, const PcTensor *b) {
    double s = 0;
    for (int64_t i = 0; i < pc_tensor_numel(a); i++) s += at(a, i) * at(b, i);
    return s;
}

/* ---- finite-difference gradient check ---- */

typedef PcStatus (*FwdFn)(PcTensor *const *ins, void *ctx, PcTensor **out);

/* ins: contiguous float64 tensors; those with requires_grad are checked. */
static void gradcheck(const char *name, FwdFn f, void *ctx, int n, PcTensor *const *ins) {
    PcTensor *out;
    OK(f(ins, ctx, &out));
    CHECK(out->grad_fn != NULL, "%s: output has no grad_fn", name);
    PcTensor *R = randt(out->ndim, out->shape, false);
    PcTensor *grads[8] = {NULL};
    PcTensor *want[8];
    int nw = 0;
    for (int i = 0; i < n; i++)
        if (ins[i]->requires_grad) want[nw++] = ins[i];
    OK(pc_autograd_grad(1, &out, &R, nw, want, false, true, grads));
    pc_tensor_decref(out);

    const double h = 1e-6;
    pc_set_grad_enabled(false);
    for (int k = 0; k < nw; k++) {
        PcTensor *x = want[k];
        /* NULL (unused) means zero: the finite differences must then vanish too */
        CHECK(!grads[k] || (grads[k]->ndim == x->ndim && grads[k]->dtype == x->dtype),
              "%s: gradient %d has the wrong shape or dtype", name, k);
        double *p = pc_tensor_data(x);
        double worst = 0;
        for (int64_t j = 0; j < pc_tensor_numel(x); j++) {
            double v = p[j];
            PcTensor *o;
            p[j] = v + h;
            OK(f(ins, ctx, &o));
            double fp = dot(o, R);
            pc_tensor_decref(o);
            p[j] = v - h;
            OK(f(ins, ctx, &o));
            double fm = dot(o, R);
            pc_tensor_decref(o);
            p[j] = v;
            double fd = (fp - fm) / (2 * h), ad = grads[k] ? at(grads[k], j) : 0.0;
            double err = fabs(fd - ad) / (1e-6 + 1e-5 * fabs(fd));
            if (err > worst) worst = err;
            if (err > 1.0) {
                CHECK(0, "%s: d/d input%d[%lld]: autograd %.10g vs finite difference %.10g",
                      name, k, (long long)j, ad, fd);
                break;
            }
        }
        g_checks++;
        pc_tensor_decref(grads[k]);
    }
    pc_set_grad_enabled(true);
    pc_tensor_decref(R);
}

/* ---- forwards under test ---- */

static PcStatus fwd_cross_entropy(PcTensor *const *ins, void *ctx, PcTensor **out) {
    return pc_op_cross_entropy(ins[0], ins[1], *(PcReduction *)ctx, out);
}

/* layer_norm over the last 2 dims of a transposed (non-contiguous) input. */
static PcStatus fwd_layer_norm(PcTensor *const *ins, void *ctx, PcTensor **out) {
    (void)ctx;
    PcTensor *xt;
    PC_TRY(pc_op_transpose(ins[0], 0, 1, &xt)); /* (4, 3, 5) -> (3, 4, 5) */
    PcStatus st = pc_op_layer_norm(xt, 2, ins[1], ins[2], 1e-5, out);
    pc_tensor_decref(xt);
    return st;
}

/* slice(cat([a, b], 1), 1, 1, 6, 2) then stack with select(c, 0) */
static PcStatus fwd_cat_slice(PcTensor *const *ins, void *ctx, PcTensor **out) {
    (void)ctx;
    PcTensor *c = NULL, *s = NULL, *e = NULL, *r = NULL;
    PcStatus st;
    PC_TRY_GOTO(st, pc_op_cat(2, ins, 1, &c));          /* (2, 7) */
    PC_TRY_GOTO(st, pc_op_slice(c, 1, 1, 6, 2, &s));    /* (2, 3): cols 1, 3, 5 */
    PC_TRY_GOTO(st, pc_op_select(ins[0], 0, -1, &e));   /* (3,) */
    PC_TRY_GOTO(st, pc_op_unsqueeze(e, 0, &r));         /* (1, 3) */
    PcTensor *parts[2] = {s, r};
    PC_TRY_GOTO(st, pc_op_cat(2, parts, 0, out));       /* (3, 3) */
    PcTensor *st2[2] = {*out, *out};
    PcTensor *stacked;
    PC_TRY_GOTO(st, pc_op_stack(2, st2, 2, &stacked));  /* (3, 3, 2) */
    pc_tensor_decref(*out);
    *out = stacked;
fail:
    pc_tensor_decref(r);
    pc_tensor_decref(e);
    pc_tensor_decref(s);
    pc_tensor_decref(c);
    return st;
}

typedef struct { int dim; bool log; } SoftmaxCtx;

static PcStatus fwd_softmax(PcTensor *const *ins, void *ctx, PcTensor **out) {
    SoftmaxCtx *c = ctx;
    return pc_op_softmax(ins[0], c->dim, c->log, out);
}

static PcStatus fwd_mse(PcTensor *const *ins, void *ctx, PcTensor **out) {
    return pc_op_mse_loss(ins[0], ins[1], *(PcReduction *)ctx, out);
}

/* permute + reshape (copying) + expand + squeeze + flatten + t + contiguous */
static PcStatus fwd_views(PcTensor *const *ins, void *ctx, PcTensor **out) {
    (void)ctx;
    PcTensor *a = NULL, *b = NULL, *c = NULL, *d = NULL, *e = NULL, *f = NULL;
    PcStatus st;
    int perm[3] = {2, 0, 1};
    int64_t shp[2] = {4, -1}, ex[4] = {2, 4, 6, -1};
    PC_TRY_GOTO(st, pc_op_permute(ins[0], 3, perm, &a));     /* (2,3,4) -> (4,2,3) */
    PC_TRY_GOTO(st, pc_op_reshape(a, 2, shp, &b));           /* (4, 6): copies */
    PC_TRY_GOTO(st, pc_op_unsqueeze(b, -1, &c));             /* (4, 6, 1) */
    PC_TRY_GOTO(st, pc_op_expand(c, 4, ex, &d));             /* (2, 4, 6, 1) */
    pc_tensor_decref(c);
    PC_TRY_GOTO(st, pc_op_squeeze(d, PC_ALL_DIMS, &c));      /* (2, 4, 6) */
    PC_TRY_GOTO(st, pc_op_flatten(c, 0, 1, &e));             /* (8, 6) */
    pc_tensor_decref(d);
    PC_TRY_GOTO(st, pc_op_t(e, &d));                         /* (6, 8) */
    PC_TRY_GOTO(st, pc_op_contiguous(d, &f));
    PC_TRY_GOTO(st, pc_op_slice(f, 0, 0, 6, 1, out));
fail:
    pc_tensor_decref(f);
    pc_tensor_decref(e);
    pc_tensor_decref(d);
    pc_tensor_decref(c);
    pc_tensor_decref(b);
    pc_tensor_decref(a);
    return st;
}

static PcStatus fwd_embedding(PcTensor *const *ins, void *ctx, PcTensor **out) {
    return pc_op_embedding(ins[0], (PcTensor *)ctx, out);
}

/* clone, then copy_ a broadcast source into a slice-free clone of x */
static PcStatus fwd_copy(PcTensor *const *ins, void *ctx, PcTensor **out) {
    (void)ctx;
    PcTensor *c;
    PC_TRY(pc_op_clone(ins[0], &c));         /* (4, 3), non-leaf */
    PcStatus st = pc_op_copy_(c, ins[1]);    /* src (3,) broadcast over rows */
    if (st != PC_OK) {
        pc_tensor_decref(c);
        return st;
    }
    *out = c;
    return PC_OK;
}

/* ---- tests ---- */

static void test_cross_entropy(void) {
    int64_t xs[2] = {4, 5}, ts = 4;
    int64_t tv[4] = {0, 3, 4, 3};
    PcTensor *x = randt(2, xs, true), *t = int_tensor(1, &ts, tv);
    PcTensor *ins[2] = {x, t};
    PcReduction reds[3] = {PC_REDUCTION_MEAN, PC_REDUCTION_SUM, PC_REDUCTION_NONE};
    for (int r = 0; r < 3; r++) gradcheck("cross_entropy", fwd_cross_entropy, &reds[r], 2, ins);

    /* forward value: mean of logsumexp(x_i) - x_i[t_i] */
    PcTensor *l;
    OK(pc_op_cross_entropy(x, t, PC_REDUCTION_MEAN, &l));
    double want = 0;
    for (int i = 0; i < 4; i++) {
        double m = 0;
        for (int j = 0; j < 5; j++) m += exp(at(x, i * 5 + j));
        want += (log(m) - at(x, i * 5 + tv[i])) / 4;
    }
    CHECK(l->ndim == 0 && fabs(at(l, 0) - want) < 1e-12, "cross_entropy mean %g vs %g",
          at(l, 0), want);
    CHECK(strcmp(l->grad_fn->vt->name, "NllLossBackward0") == 0, "cross_entropy node name");
    pc_tensor_decref(l);

    /* (C,) input with a 0-d target */
    PcTensor *row, *t0;
    int64_t three = 3;
    OK(pc_op_select(x, 0, 1, &row));
    t0 = int_tensor(0, NULL, &three);
    OK(pc_op_cross_entropy(row, t0, PC_REDUCTION_NONE, &l));
    CHECK(l->ndim == 0, "cross_entropy (C,) gives a 0-d loss");
    pc_tensor_decref(l);
    pc_tensor_decref(t0);
    pc_tensor_decref(row);

    /* a bad target value */
    int64_t bad[4] = {0, 5, 1, 1};
    PcTensor *tb = int_tensor(1, &ts, bad);
    PcStatus st = pc_op_cross_entropy(x, tb, PC_REDUCTION_MEAN, &l);
    CHECK(st == PC_ERR_INDEX && strstr(pc_last_error(), "5"), "bad target -> %d %s", (int)st,
          pc_last_error());
    pc_tensor_decref(tb);
    pc_tensor_decref(t);
    pc_tensor_decref(x);
}

static void test_layer_norm(void) {
    int64_t xs[3] = {4, 3, 5}, ws[2] = {4, 5};
    PcTensor *x = randt(3, xs, true), *w = randt(2, ws, true), *b = randt(2, ws, true);
    PcTensor *ins[3] = {x, w, b};
    gradcheck("layer_norm", fwd_layer_norm, NULL, 3, ins);

    /* the normalised rows have mean 0 and variance ~1 without affine */
    PcTensor *y;
    OK(pc_op_layer_norm(x, 1, NULL, NULL, 0.0, &y));
    double m = 0, v = 0;
    for (int j = 0; j < 5; j++) m += at(y, j) / 5;
    for (int j = 0; j < 5; j++) v += (at(y, j) - m) * (at(y, j) - m) / 5;
    CHECK(fabs(m) < 1e-12 && fabs(v - 1) < 1e-9, "layer_norm row mean %g var %g", m, v);
    pc_tensor_decref(y);

    int64_t bs = 3;
    PcTensor *wb = randt(1, &bs, false);
    PcStatus st = pc_op_layer_norm(x, 1, wb, NULL, 1e-5, &y);
    CHECK(st == PC_ERR_INVALID, "layer_norm with a wrong weight shape -> %d", (int)st);
    pc_tensor_decref(wb);
    pc_tensor_decref(b);
    pc_tensor_decref(w);
    pc_tensor_decref(x);
}

static void test_cat_slice(void) {
    int64_t as[2] = {2, 3}, bs[2] = {2, 4};
    PcTensor *a = randt(2, as, true), *b = randt(2, bs, true);
    PcTensor *ins[2] = {a, b};
    gradcheck("cat+slice+stack", fwd_cat_slice, NULL, 2, ins);

    PcTensor *c;
    OK(pc_op_cat(2, ins, -1, &c));
    CHECK(c->shape[0] == 2 && c->shape[1] == 7, "cat shape");
    CHECK(at(c, 7 + 3) == at(b, 4) && at(c, 2) == at(a, 2), "cat values");
    pc_tensor_decref(c);
    PcStatus st = pc_op_cat(2, ins, 0, &c);
    CHECK(st == PC_ERR_INVALID, "cat of mismatched sizes -> %d", (int)st);

    PcTensor *s;
    st = pc_op_select(a, 0, 5, &s);
    CHECK(st == PC_ERR_INDEX &&
          strcmp(pc_last_error(), "index 5 is out of bounds for dimension 0 with size 2") == 0,
          "select out of range: %s", pc_last_error());
    pc_tensor_decref(b);
    pc_tensor_decref(a);
}

static void test_softmax(void) {
    int64_t xs[3] = {3, 4, 5};
    PcTensor *x = randt(3, xs, true);
    SoftmaxCtx c1 = {1, false}, c2 = {-1, true}, c3 = {0, true};
    gradcheck("softmax dim 1", fwd_softmax, &c1, 1, &x);
    gradcheck("log_softmax dim -1", fwd_softmax, &c2, 1, &x);
    gradcheck("log_softmax dim 0", fwd_softmax, &c3, 1, &x);

    PcTensor *y;
    OK(pc_op_softmax(x, 1, false, &y));
    CHECK(pc_tensor_is_contiguous(y), "softmax over dim 1 is contiguous");
    double s = 0;
    for (int k = 0; k < 4; k++) s += at(y, k * 5 + 2); /* [0, :, 2] */
    CHECK(fabs(s - 1) < 1e-12, "softmax sums to %g over dim 1", s);
    pc_tensor_decref(y);
    pc_tensor_decref(x);
}

static void test_misc(void) {
    int64_t xs[2] = {4, 3}, ts[2] = {4, 1};
    PcTensor *a = randt(2, xs, true), *b = randt(2, xs, true), *bad = randt(2, ts, false);
    PcTensor *ins[2] = {a, b};
    PcReduction reds[3] = {PC_REDUCTION_MEAN, PC_REDUCTION_SUM, PC_REDUCTION_NONE};
    for (int r = 0; r < 3; r++) gradcheck("mse_loss", fwd_mse, &reds[r], 2, ins);
    PcTensor *l;
    PcStatus st = pc_op_mse_loss(a, bad, PC_REDUCTION_MEAN, &l);
    CHECK(st == PC_ERR_INVALID &&
          strcmp(pc_last_error(),
                 "mse_loss: input (4, 3) and target (4, 1) must have the same shape") == 0,
          "mse shape error: %s", pc_last_error());

    int64_t vs[3] = {2, 3, 4};
    PcTensor *v = randt(3, vs, true);
    gradcheck("views", fwd_views, NULL, 1, &v);

    /* view errors */
    PcTensor *tt, *o;
    int64_t six = 6, two_five[2] = {2, 5};
    OK(pc_op_t(a, &tt)); /* (3, 4) non-contiguous */
    st = pc_op_view(tt, 1, &six, &o);
    CHECK(st == PC_ERR_INVALID, "view numel mismatch -> %d", (int)st);
    int64_t twelve = 12;
    st = pc_op_view(tt, 1, &twelve, &o);
    CHECK(st == PC_ERR_RUNTIME && strstr(pc_last_error(), "Use .reshape(...) instead."),
          "view of a transpose: %s", pc_last_error());
    st = pc_op_view(tt, 2, two_five, &o);
    CHECK(strcmp(pc_last_error(), "shape '[2, 5]' is invalid for input of size 12") == 0,
          "view size message: %s", pc_last_error());
    int64_t split[3] = {3, 2, 2};
    OK(pc_op_view(tt, 3, split, &o)); /* splitting a dim is a view */
    CHECK(o->storage == a->storage && o->strides[0] == 1 && o->strides[1] == 6 &&
          o->strides[2] == 3, "split view strides (%lld, %lld, %lld)", (long long)o->strides[0],
          (long long)o->strides[1], (long long)o->strides[2]);
    pc_tensor_decref(o);
    pc_tensor_decref(tt);

    /* embedding */
    int64_t ws[2] = {5, 3}, is[2] = {2, 3}, iv[6] = {4, 0, 4, 1, 2, 4};
    PcTensor *w = randt(2, ws, true), *idx = int_tensor(2, is, iv);
    gradcheck("embedding", fwd_embedding, idx, 1, &w);
    OK(pc_op_embedding(w, idx, &o));
    CHECK(o->ndim == 3 && o->shape[2] == 3 && at(o, 3 * 3 + 1) == at(w, 1 * 3 + 1),
          "embedding values");
    pc_tensor_decref(o);

    /* copy_ with broadcasting */
    int64_t three = 3;
    PcTensor *src = randt(1, &three, true);
    PcTensor *cins[2] = {a, src};
    gradcheck("copy_", fwd_copy, NULL, 2, cins);

    /* to(float32): the gradient comes back as float64 */
    PcTensor *f32, *g32, *gx = NULL;
    OK(pc_op_to(a, PC_FLOAT32, CPU, &f32));
    CHECK(f32->dtype == PC_FLOAT32 && strcmp(f32->grad_fn->vt->name, "ToCopyBackward0") == 0,
          "to float32");
    OK(pc_op_full(2, xs, 2.0, PC_FLOAT32, CPU, &g32));
    OK(pc_autograd_grad(1, &f32, &g32, 1, &a, false, false, &gx));
    CHECK(gx && gx->dtype == PC_FLOAT64 && at(gx, 5) == 2.0, "to float32 backward");
    pc_tensor_decref(gx);
    pc_tensor_decref(g32);
    pc_tensor_decref(f32);
    OK(pc_op_to(a, PC_FLOAT64, CPU, &f32));
    CHECK(f32 == a, "to with nothing to change returns self");
    pc_tensor_decref(f32);

    /* dropout: the kept share and the scale */
    int64_t big = 20000;
    PcTensor *ones, *d;
    OK(pc_op_full(1, &big, 1.0, PC_FLOAT64, CPU, &ones));
    pc_rng_manual_seed(7);
    OK(pc_op_dropout(ones, 0.25, true, &d));
    int64_t kept = 0;
    bool scale_ok = true;
    for (int64_t i = 0; i < big; i++) {
        double e = at(d, i);
        if (e != 0) {
            kept++;
            scale_ok = scale_ok && fabs(e - 1 / 0.75) < 1e-12;
        }
    }
    CHECK(scale_ok && kept > 14700 && kept < 15300, "dropout kept %lld of 20000",
          (long long)kept);
    pc_tensor_decref(d);
    OK(pc_op_dropout(ones, 0.25, false, &d));
    CHECK(d == ones, "dropout in eval returns x");
    pc_tensor_decref(d);
    st = pc_op_dropout(ones, 1.5, true, &d);
    CHECK(st == PC_ERR_INVALID, "dropout p=1.5 -> %d", (int)st);
    pc_tensor_decref(ones);

    pc_tensor_decref(src);
    pc_tensor_decref(idx);
    pc_tensor_decref(w);
    pc_tensor_decref(v);
    pc_tensor_decref(bad);
    pc_tensor_decref(b);
    pc_tensor_decref(a);
}

int main(void) {
    test_cross_entropy();
    test_layer_norm();
    test_cat_slice();
    test_softmax();
    test_misc();
    printf("%s: %d checks, %d failures\n", g_failures ? "FAILED" : "OK", g_checks, g_failures);
    return g_failures ? 1 : 0;
}
