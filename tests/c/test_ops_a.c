/* test_ops_a.c — C smoke test for ops part A (factory, elementwise, reduce, matmul) through
 * the CPU backend and the autograd engine.
 *
 * Every case builds a scalar loss from float64 leaves with pc_op_* calls, runs
 * pc_autograd_backward, and compares each leaf's .grad with central finite differences
 * (h = 1e-6; |fd - grad| <= 1e-6 + 1e-5 |grad|: float64 central differences are accurate to
 * ~1e-9 for these smooth, O(1) functions; the bound leaves room for kinks near relu/max that
 * random inputs do not hit). It also checks forward values of a few ops against hand
 * computations and the error codes/messages of bad calls.
 *
 * Build (from the repository root):
 *   OB=.venv/lib/python3.11/site-packages/scipy_openblas32
 *   SRCS=$(find csrc -name '*.c' -not -path 'csrc/py/x' -not -path 'csrc/kernels/cuda/x')
 *   gcc -std=c11 -O2 -Wall -Wextra -DPC_BLAS_SCIPY -I$OB/include tests/c/test_ops_a.c $SRCS \
 *       -L$OB/lib -lscipy_openblas -Wl,-rpath,$PWD/$OB/lib -lm -lpthread -o /tmp/test_ops_a
 * (read 'x' in the two -path patterns as '*'). Exit status 0 = all passed.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "../../csrc/ops/ops.h"
#include "../../csrc/autograd/autograd.h"

static int g_failures = 0;
static const PcDevice CPU = {PC_CPU, 0};

#define CHECK(cond, ...)                                              \
    do {                                                              \
        if (!(cond)) {                                                \
            g_failures++;                                             \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);               \
            printf(__VA_ARGS__);                                      \
            printf("\n");                                             \
        }                                                             \
    } while (0)

#define OK(expr)                                                                    \
    do {                                                                            \
        PcStatus st_ = (expr);                                                      \
        if (st_ != PC_OK) {                                                         \
            printf("FAIL %s:%d: %s -> %d: %s\n", __FILE__, __LINE__, #expr, (int)st_, \
                   pc_last_error());                                                \
            g_failures++;                                                           \
            return PC_ERR_RUNTIME;                                                  \
        }                                                                           \
    } while (0)

/* ---- helpers ---- */

static PcTensor *leaf(int nd, const int64_t *shape, bool grad, double shift) {
    PcTensor *t = NULL;
    if (pc_op_randn(nd, shape, PC_FLOAT64, CPU, &t) != PC_OK) return NULL;
    if (shift != 0.0) {
        double *d = pc_tensor_data(t);
        for (int64_t i = 0; i < pc_tensor_numel(t); i++) d[i] = fabs(d[i]) + shift;
    }
    t->requires_grad = grad;
    return t;
}

static double scalar_of(PcTensor *t) {
    PcTensor *c = NULL;
    double v = NAN;
    if (pc_op_contiguous(t, &c) == PC_OK) {
        v = *(double *)pc_tensor_data(c);
        pc_tensor_decref(c);
    }
    return v;
}

typedef PcStatus (*PcLossFn)(PcTensor **in, PcTensor **out);

/* Run autograd and finite differences for loss(in) over the inputs with requires_grad. */
static void gradcheck(const char *name, PcLossFn fn, int n, PcTensor **in) {
    PcTensor *loss = NULL;
    PcStatus st = fn(in, &loss);
    if (st != PC_OK) {
        printf("FAIL %s: forward: %s\n", name, pc_last_error());
        g_failures++;
        return;
    }
    st = pc_autograd_backward(1, &loss, NULL, false);
    pc_tensor_decref(loss);
    if (st != PC_OK) {
        printf("FAIL %s: backward: %s\n", name, pc_last_error());
        g_failures++;
        return;
    }
    pc_set_grad_enabled(false);
    const double h = 1e-6;
    double worst = 0.0;
    for (int k = 0; k < n; k++) {
        PcTensor *t = in[k];
        if (!t->requires_grad) continue;
        if (!t->grad) {
            printf("FAIL %s: input %d has no grad\n", name, k);
            g_failures++;
            continue;
        }
        PcTensor *gc = NULL;
        if (pc_op_contiguous(t->grad, &gc) != PC_OK) continue;
        CHECK(gc->dtype == PC_FLOAT64 && gc->ndim == t->ndim, "%s: grad %d meta", name, k);
        double *d = pc_tensor_data(t), *g = pc_tensor_data(gc);
        for (int64_t i = 0; i < pc_tensor_numel(t); i++) {
            double keep = d[i];
            PcTensor *lp = NULL, *lm = NULL;
            d[i] = keep + h;
            fn(in, &lp);
            d[i] = keep - h;
            fn(in, &lm);
            d[i] = keep;
            if (!lp || !lm) {
                g_failures++;
                printf("FAIL %s: forward under no_grad failed: %s\n", name, pc_last_error());
                pc_tensor_decref(lp);
                pc_tensor_decref(lm);
                break;
            }
            double fd = (scalar_of(lp) - scalar_of(lm)) / (2 * h);
            pc_tensor_decref(lp);
            pc_tensor_decref(lm);
            double err = fabs(fd - g[i]);
            if (err > worst) worst = err;
            if (!(err <= 1e-6 + 1e-5 * fabs(g[i]))) {
                g_failures++;
                printf("FAIL %s: input %d element %lld: autograd %.10g vs finite diff %.10g\n",
                       name, k, (long long)i, g[i], fd);
                break;
            }
        }
        pc_tensor_decref(gc);
    }
    pc_set_grad_enabled(true);
    printf("%-28s max |fd - grad| = %.2e\n", name, worst);
}

static void free_all(int n, PcTensor **ts) {
    for (int i = 0; i < n; i++) pc_tensor_decref(ts[i]);
}

/* ---- loss functions ---- */

/* sum(relu(x @ W^T + b) * y) */
static PcStatus loss_linear(PcTensor **in, PcTensor **out) {
    PcTensor *h = NULL, *r = NULL, *p = NULL;
    OK(pc_op_linear(in[0], in[1], in[2], &h));
    OK(pc_op_unary(PC_U_RELU, h, 0, &r));
    OK(pc_op_binary(PC_B_MUL, r, in[3], 1.0, &p));
    OK(pc_op_sum(p, 0, NULL, false, out));
    pc_tensor_decref(h);
    pc_tensor_decref(r);
    pc_tensor_decref(p);
    return PC_OK;
}

/* mean(gelu(linear(x3d, W, b)) * y) without and with bias; W given transposed-strided. */
static PcStatus loss_linear3d(PcTensor **in, PcTensor **out) {
    PcTensor *wt = NULL, *w = NULL, *h = NULL, *r = NULL, *p = NULL, *h2 = NULL, *q = NULL;
    OK(pc_op_t(in[1], &wt));            /* in[1] is (in, out): wt is (out, in), strides (1, out) */
    OK(pc_op_linear(in[0], wt, in[2], &h));
    OK(pc_op_unary(PC_U_GELU, h, 0, &r));
    OK(pc_op_binary(PC_B_MUL, r, in[3], 1.0, &p));
    OK(pc_op_linear(in[0], wt, NULL, &h2));
    OK(pc_op_binary(PC_B_ADD, p, h2, 0.5, &q));
    OK(pc_op_mean(q, 0, NULL, false, out));
    pc_tensor_decref(wt);
    pc_tensor_decref(w);
    pc_tensor_decref(h);
    pc_tensor_decref(r);
    pc_tensor_decref(p);
    pc_tensor_decref(h2);
    pc_tensor_decref(q);
    return PC_OK;
}

/* sum(tanh(A @ B)) + sum(sigmoid(C @ D)) + dot(u, v) + sum(M @ v) + sum(u @ E)
 * A (2,3,4) B (4,5); C (2,1,3,4) D (3,4,2); u, v (4); M (3,4); E (2,4,3). */
static PcStatus loss_matmul(PcTensor **in, PcTensor **out) {
    PcTensor *t[16] = {0};
    OK(pc_op_matmul(in[0], in[1], &t[0]));
    OK(pc_op_unary(PC_U_TANH, t[0], 0, &t[1]));
    OK(pc_op_sum(t[1], 0, NULL, false, &t[2]));
    OK(pc_op_matmul(in[2], in[3], &t[3]));
    OK(pc_op_unary(PC_U_SIGMOID, t[3], 0, &t[4]));
    OK(pc_op_sum(t[4], 0, NULL, false, &t[5]));
    OK(pc_op_matmul(in[4], in[5], &t[6]));            /* 0-d */
    OK(pc_op_matmul(in[6], in[5], &t[7]));            /* (3,) */
    OK(pc_op_sum(t[7], 0, NULL, false, &t[8]));
    OK(pc_op_matmul(in[4], in[7], &t[9]));            /* (2, 3) */
    OK(pc_op_unary(PC_U_EXP, t[9], 0, &t[10]));
    OK(pc_op_sum(t[10], 0, NULL, false, &t[11]));
    OK(pc_op_binary(PC_B_ADD, t[2], t[5], 1.0, &t[12]));
    OK(pc_op_binary(PC_B_ADD, t[12], t[6], 1.0, &t[13]));
    OK(pc_op_binary(PC_B_ADD, t[13], t[8], 1.0, &t[14]));
    OK(pc_op_binary(PC_B_ADD, t[14], t[11], 1.0, out));
    free_all(16, t);
    return PC_OK;
}

/* mm with a transposed left operand and addmm. */
static PcStatus loss_mm(PcTensor **in, PcTensor **out) {
    PcTensor *t[8] = {0};
    OK(pc_op_t(in[0], &t[0]));                         /* (4,3) -> (3,4) */
    OK(pc_op_mm(t[0], in[1], &t[1]));                  /* (3,5) */
    OK(pc_op_addmm(in[2], t[1], in[3], 0.7, -1.3, &t[2])); /* bias (5,) + (3,5)@(5,2)?? */
    OK(pc_op_unary(PC_U_TANH, t[2], 0, &t[3]));
    OK(pc_op_sum(t[3], 0, NULL, false, out));
    free_all(8, t);
    return PC_OK;
}

/* elementwise mix: x (3,4), z (4,) positive, w (3,1) */
static PcStatus loss_elementwise(PcTensor **in, PcTensor **out) {
    PcTensor *x = in[0], *z = in[1], *w = in[2];
    PcTensor *t[32] = {0};
    OK(pc_op_unary(PC_U_MUL_S, x, 0.5, &t[0]));
    OK(pc_op_unary(PC_U_EXP, t[0], 0, &t[1]));
    OK(pc_op_binary(PC_B_DIV, t[1], z, 1.0, &t[2]));         /* broadcast (3,4)/(4,) */
    OK(pc_op_unary(PC_U_POW, x, 3.0, &t[3]));
    OK(pc_op_binary(PC_B_SUB, t[2], t[3], 0.25, &t[4]));
    OK(pc_op_binary(PC_B_MAXIMUM, t[4], w, 1.0, &t[5]));    /* broadcast (3,1) */
    OK(pc_op_unary(PC_U_LOG, z, 0, &t[6]));
    OK(pc_op_unary(PC_U_SQRT, z, 0, &t[7]));
    OK(pc_op_binary(PC_B_MUL, t[6], t[7], 1.0, &t[8]));      /* (4,) */
    OK(pc_op_binary(PC_B_MUL, t[5], t[8], 1.0, &t[9]));      /* (3,4) */
    OK(pc_op_unary(PC_U_RDIV_S, z, 2.0, &t[10]));
    OK(pc_op_unary(PC_U_RSUB_S, t[10], 1.0, &t[11]));
    OK(pc_op_unary(PC_U_ABS, x, 0, &t[12]));
    OK(pc_op_binary(PC_B_MUL, t[12], t[11], 1.0, &t[13]));
    OK(pc_op_unary(PC_U_NEG, t[13], 0, &t[14]));
    OK(pc_op_unary(PC_U_ADD_S, t[14], 3.0, &t[15]));
    OK(pc_op_binary(PC_B_ADD, t[9], t[15], 1.0, &t[16]));
    OK(pc_op_unary(PC_U_SIGMOID, w, 0, &t[17]));
    OK(pc_op_binary(PC_B_MUL, t[16], t[17], 1.0, &t[18]));
    int d1 = 1;
    OK(pc_op_mean(t[18], 1, &d1, true, &t[19]));             /* (3,1) */
    OK(pc_op_unary(PC_U_TANH, t[19], 0, &t[20]));
    OK(pc_op_sum(t[20], 0, NULL, false, out));
    free_all(32, t);
    return PC_OK;
}

/* reductions: x (3,4,5) */
static PcStatus loss_reduce(PcTensor **in, PcTensor **out) {
    PcTensor *x = in[0];
    PcTensor *t[16] = {0};
    int dims02[2] = {0, -1};
    OK(pc_op_sum(x, 2, dims02, false, &t[0]));              /* (4,) */
    OK(pc_op_unary(PC_U_TANH, t[0], 0, &t[1]));
    OK(pc_op_sum(t[1], 0, NULL, false, &t[2]));
    OK(pc_op_max_dim(x, 1, false, &t[3], &t[4]));           /* (3,5) */
    OK(pc_op_unary(PC_U_SIGMOID, t[3], 0, &t[5]));
    OK(pc_op_mean(t[5], 0, NULL, false, &t[6]));
    OK(pc_op_max_all(x, &t[7]));
    OK(pc_op_max_dim(x, -1, true, &t[8], &t[9]));           /* (3,4,1) */
    OK(pc_op_unary(PC_U_POW, t[8], 2.0, &t[10]));
    OK(pc_op_sum(t[10], 0, NULL, false, &t[11]));
    OK(pc_op_binary(PC_B_ADD, t[2], t[6], 1.0, &t[12]));
    OK(pc_op_binary(PC_B_ADD, t[12], t[7], 2.0, &t[13]));
    OK(pc_op_binary(PC_B_ADD, t[13], t[11], 1.0, out));
    free_all(16, t);
    return PC_OK;
}

/* in place on a non-leaf: y = x * 1; y *= z; y += 2 w; y /= z; y *= 0.3; y = relu_(y);
 * then (out of place) exp. (An in-place op after relu_/exp_ would invalidate the output
 * they saved, exactly as in torch; check_errors covers that.) */
static PcStatus loss_inplace(PcTensor **in, PcTensor **out) {
    PcTensor *y = NULL, *y2 = NULL, *y3 = NULL;
    OK(pc_op_unary(PC_U_MUL_S, in[0], 1.0, &y));
    OK(pc_op_binary_(PC_B_MUL, y, in[1], 1.0));
    OK(pc_op_binary_(PC_B_ADD, y, in[2], 2.0));
    OK(pc_op_binary_(PC_B_DIV, y, in[1], 1.0));
    OK(pc_op_unary_(PC_U_MUL_S, y, 0.3));
    OK(pc_op_unary_(PC_U_POW, y, 2.0));
    OK(pc_op_unary_(PC_U_ADD_S, y, -0.5));
    OK(pc_op_unary_(PC_U_RELU, y, 0.0));
    OK(pc_op_unary(PC_U_EXP, y, 0.0, &y3));
    OK(pc_op_binary(PC_B_MUL, y3, y, 1.0, &y2));
    pc_tensor_decref(y3);
    OK(pc_op_sum(y2, 0, NULL, false, out));
    pc_tensor_decref(y);
    pc_tensor_decref(y2);
    return PC_OK;
}

/* x.mul_(x) on a non-leaf (other shares self's storage) */
static PcStatus loss_self_mul(PcTensor **in, PcTensor **out) {
    PcTensor *y = NULL;
    OK(pc_op_unary(PC_U_ADD_S, in[0], 0.5, &y));
    OK(pc_op_binary_(PC_B_MUL, y, y, 1.0));
    OK(pc_op_sum(y, 0, NULL, false, out));
    pc_tensor_decref(y);
    return PC_OK;
}

/* ---- forward / error checks ---- */

static PcStatus check_forward(void) {
    /* arange and full */
    PcTensor *a = NULL, *b = NULL, *c = NULL, *d = NULL, *e = NULL;
    OK(pc_op_arange(0, 5, 1.5, PC_FLOAT64, CPU, &a));
    CHECK(a->ndim == 1 && a->shape[0] == 4, "arange(0, 5, 1.5) length %lld", (long long)a->shape[0]);
    CHECK(((double *)pc_tensor_data(a))[3] == 4.5, "arange value");
    OK(pc_op_arange(10, 0, -3, PC_INT64, CPU, &b));
    CHECK(b->shape[0] == 4 && ((int64_t *)pc_tensor_data(b))[3] == 1, "arange negative step");
    /* int64 sum stays int64; bool sum -> int64 */
    OK(pc_op_sum(b, 0, NULL, false, &c));
    CHECK(c->dtype == PC_INT64 && *(int64_t *)pc_tensor_data(c) == 10 + 7 + 4 + 1, "int sum");
    pc_tensor_decref(c);
    OK(pc_op_unary(PC_U_GE_S, b, 5.0, &c));
    CHECK(c->dtype == PC_BOOL && ((uint8_t *)pc_tensor_data(c))[1] == 1 &&
              ((uint8_t *)pc_tensor_data(c))[2] == 0, "ge on int64 -> bool");
    OK(pc_op_sum(c, 0, NULL, false, &d));
    CHECK(d->dtype == PC_INT64 && *(int64_t *)pc_tensor_data(d) == 2, "bool sum");
    pc_tensor_decref(c);
    pc_tensor_decref(d);
    OK(pc_op_unary(PC_U_NEG, b, 0, &c));
    CHECK(c->dtype == PC_INT64 && ((int64_t *)pc_tensor_data(c))[0] == -10, "int neg");
    pc_tensor_decref(c);
    /* int / int -> float32 */
    OK(pc_op_binary(PC_B_DIV, b, b, 1.0, &c));
    CHECK(c->dtype == PC_FLOAT32 && ((float *)pc_tensor_data(c))[0] == 1.0f, "int div");
    pc_tensor_decref(c);
    /* promotion float64 * float32 -> float64; the float32 input's grad is float32 */
    int64_t s3 = 3;
    PcTensor *x64 = leaf(1, &s3, true, 0), *x32 = NULL;
    OK(pc_op_full(1, &s3, 2.0, PC_FLOAT32, CPU, &x32));
    x32->requires_grad = true;
    OK(pc_op_binary(PC_B_MUL, x64, x32, 1.0, &c));
    CHECK(c->dtype == PC_FLOAT64, "promotion");
    OK(pc_op_sum(c, 0, NULL, false, &d));
    OK(pc_autograd_backward(1, &d, NULL, false));
    CHECK(x32->grad && x32->grad->dtype == PC_FLOAT32, "float32 input grad dtype");
    CHECK(x64->grad && ((double *)pc_tensor_data(x64->grad))[0] == 2.0, "float64 grad value");
    pc_tensor_decref(c);
    pc_tensor_decref(d);
    /* max_all: first maximal element gets the gradient */
    OK(pc_op_full(1, &s3, 1.0, PC_FLOAT64, CPU, &e));
    e->requires_grad = true;
    OK(pc_op_max_all(e, &c));
    CHECK(c->ndim == 0 && scalar_of(c) == 1.0, "max_all value");
    OK(pc_autograd_backward(1, &c, NULL, false));
    double *eg = pc_tensor_data(e->grad);
    CHECK(eg[0] == 1.0 && eg[1] == 0.0 && eg[2] == 0.0, "max_all grad to first max");
    pc_tensor_decref(c);
    /* rand in [0, 1), seeded reproducibly */
    int64_t s1000 = 1000;
    pc_rng_manual_seed(123);
    OK(pc_op_rand(1, &s1000, PC_FLOAT32, CPU, &c));
    pc_rng_manual_seed(123);
    OK(pc_op_rand(1, &s1000, PC_FLOAT32, CPU, &d));
    CHECK(memcmp(pc_tensor_data(c), pc_tensor_data(d), 4000) == 0, "rand reproducible");
    float lo = 1, hi = 0;
    for (int i = 0; i < 1000; i++) {
        float v = ((float *)pc_tensor_data(c))[i];
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
    }
    CHECK(lo >= 0 && hi < 1 && hi > 0.9f && lo < 0.1f, "rand range [%g, %g]", lo, hi);
    pc_tensor_decref(c);
    pc_tensor_decref(d);
    /* normal_ on a non-contiguous view */
    int64_t s44[2] = {400, 4};
    OK(pc_op_full(2, s44, 0.0, PC_FLOAT64, CPU, &c));
    OK(pc_op_t(c, &d));
    OK(pc_op_normal_(d, 3.0, 0.5));
    double mean = 0;
    for (int i = 0; i < 1600; i++) mean += ((double *)pc_tensor_data(c))[i] / 1600;
    CHECK(fabs(mean - 3.0) < 0.05, "normal_ mean %g", mean);
    pc_tensor_decref(c);
    pc_tensor_decref(d);
    /* batched matmul value check against a loop: (2,1,3,4) @ (3,4,2) */
    int64_t sa[4] = {2, 1, 3, 4}, sb[3] = {3, 4, 2};
    PcTensor *A = leaf(4, sa, false, 0), *B = leaf(3, sb, false, 0);
    OK(pc_op_matmul(A, B, &c));
    CHECK(c->ndim == 4 && c->shape[0] == 2 && c->shape[1] == 3 && c->shape[2] == 3 &&
              c->shape[3] == 2, "matmul broadcast shape");
    double *pa = pc_tensor_data(A), *pb = pc_tensor_data(B), *pcv = pc_tensor_data(c);
    double maxerr = 0;
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 3; j++)
            for (int r = 0; r < 3; r++)
                for (int q = 0; q < 2; q++) {
                    double acc = 0;
                    for (int k = 0; k < 4; k++) acc += pa[i * 12 + r * 4 + k] * pb[j * 8 + k * 2 + q];
                    double err = fabs(acc - pcv[((i * 3 + j) * 3 + r) * 2 + q]);
                    maxerr = err > maxerr ? err : maxerr;
                }
    CHECK(maxerr < 1e-12, "matmul broadcast values (err %g)", maxerr);
    pc_tensor_decref(c);
    pc_tensor_decref(A);
    pc_tensor_decref(B);
    pc_tensor_decref(a);
    pc_tensor_decref(b);
    pc_tensor_decref(x64);
    pc_tensor_decref(x32);
    pc_tensor_decref(e);
    return PC_OK;
}

/* Edge shapes, non-contiguous operands and the split backward over linear/mm nodes. */
static PcStatus check_edges(void) {
    PcTensor *t[24] = {0};
    /* k = 0 products are zeros; addmm with k = 0 is beta * bias */
    int64_t s20[2] = {2, 0}, s03[2] = {0, 3}, s3 = 3;
    OK(pc_op_full(2, s20, 1.0, PC_FLOAT64, CPU, &t[0]));
    OK(pc_op_full(2, s03, 1.0, PC_FLOAT64, CPU, &t[1]));
    OK(pc_op_mm(t[0], t[1], &t[2]));
    CHECK(t[2]->shape[0] == 2 && t[2]->shape[1] == 3 && ((double *)pc_tensor_data(t[2]))[5] == 0,
          "mm with k = 0");
    OK(pc_op_full(1, &s3, 2.0, PC_FLOAT64, CPU, &t[3]));
    OK(pc_op_addmm(t[3], t[0], t[1], 0.5, 1.0, &t[4]));
    CHECK(((double *)pc_tensor_data(t[4]))[4] == 1.0, "addmm with k = 0");
    /* 0-d inputs: max_dim and sum */
    OK(pc_op_full(0, NULL, 4.0, PC_FLOAT64, CPU, &t[5]));
    OK(pc_op_max_dim(t[5], -1, false, &t[6], &t[7]));
    CHECK(t[6]->ndim == 0 && scalar_of(t[6]) == 4.0 && *(int64_t *)pc_tensor_data(t[7]) == 0,
          "max_dim on 0-d");
    int d0 = 0;
    OK(pc_op_sum(t[5], 1, &d0, true, &t[8]));
    CHECK(t[8]->ndim == 0 && scalar_of(t[8]) == 4.0, "sum of 0-d");
    /* linear on a non-contiguous 3-D input equals linear on its contiguous copy */
    int64_t sx[3] = {4, 3, 5}, sw[2] = {6, 4};
    PcTensor *x = leaf(3, sx, false, 0), *w = leaf(2, sw, false, 0);
    OK(pc_op_transpose(x, 0, 2, &t[9]));          /* (5, 3, 4), strides (1, 5, 15) */
    OK(pc_op_linear(t[9], w, NULL, &t[10]));
    OK(pc_op_contiguous(t[9], &t[11]));
    OK(pc_op_linear(t[11], w, NULL, &t[12]));
    double *p1 = pc_tensor_data(t[10]), *p2 = pc_tensor_data(t[12]), err = 0;
    for (int i = 0; i < 5 * 3 * 6; i++) err = fmax(err, fabs(p1[i] - p2[i]));
    CHECK(err < 1e-12, "linear on a strided input (err %g)", err);
    /* split backward: input grads first, weight grads from the queued work, equal to a full
     * backward */
    int64_t sa[2] = {3, 4}, sl[2] = {5, 4}, sb = 5;
    PcTensor *a = leaf(2, sa, true, 0), *W = leaf(2, sl, true, 0), *bias = leaf(1, &sb, true, 0);
    W->is_param_hint = true;
    bias->is_param_hint = true;
    PcTensor *h = NULL, *r = NULL, *l = NULL, *dx = NULL;
    OK(pc_op_linear(a, W, bias, &h));
    OK(pc_op_unary(PC_U_TANH, h, 0, &r));
    OK(pc_op_sum(r, 0, NULL, false, &l));
    PcWeightWork *work = NULL;
    OK(pc_autograd_backward_input(1, &l, NULL, 1, &a, &dx, &work));
    CHECK(W->grad == NULL && pc_weight_work_size(work) > 0, "split: W deferred");
    OK(pc_weight_work_run(work, false));
    pc_weight_work_free(work);
    CHECK(W->grad && bias->grad && dx, "split: grads present");
    PcTensor *h2 = NULL, *r2 = NULL, *l2 = NULL;
    PcTensor *Wg = W->grad, *bg = bias->grad;
    W->grad = NULL;
    bias->grad = NULL;
    OK(pc_op_linear(a, W, bias, &h2));
    OK(pc_op_unary(PC_U_TANH, h2, 0, &r2));
    OK(pc_op_sum(r2, 0, NULL, false, &l2));
    OK(pc_autograd_backward(1, &l2, NULL, false));
    err = 0;
    for (int i = 0; i < 20; i++)
        err = fmax(err, fabs(((double *)pc_tensor_data(Wg))[i] -
                             ((double *)pc_tensor_data(W->grad))[i]));
    for (int i = 0; i < 5; i++)
        err = fmax(err, fabs(((double *)pc_tensor_data(bg))[i] -
                             ((double *)pc_tensor_data(bias->grad))[i]));
    for (int i = 0; i < 12; i++)
        err = fmax(err, fabs(((double *)pc_tensor_data(dx))[i] -
                             ((double *)pc_tensor_data(a->grad))[i]));
    CHECK(err < 1e-12, "split backward equals full backward (err %g)", err);
    pc_tensor_decref(Wg);
    pc_tensor_decref(bg);
    PcTensor *more[] = {x, w, a, W, bias, h, r, l, dx, h2, r2, l2};
    free_all((int)(sizeof more / sizeof more[0]), more);
    free_all(24, t);
    return PC_OK;
}

static void expect_error(const char *what, PcStatus st, PcStatus want, const char *substr) {
    CHECK(st == want, "%s: status %d, want %d (%s)", what, (int)st, (int)want, pc_last_error());
    CHECK(strstr(pc_last_error(), substr) != NULL, "%s: message '%s' lacks '%s'", what,
          pc_last_error(), substr);
}

static void check_errors(void) {
    int64_t s23[2] = {2, 3}, s45[2] = {4, 5}, s3 = 3;
    PcTensor *a = leaf(2, s23, true, 0), *b = leaf(2, s45, false, 0), *o = NULL;
    PcTensor *f32 = NULL, *i64 = NULL;
    pc_op_full(2, s45, 1.0, PC_FLOAT32, CPU, &f32);
    pc_op_full(1, &s3, 1.0, PC_INT64, CPU, &i64);
    expect_error("mm shape", pc_op_mm(a, b, &o), PC_ERR_INVALID,
                 "mm: shape mismatch: self (2, 3) @ mat2 (4, 5): self.shape[1]=3 != "
                 "mat2.shape[0]=4");
    expect_error("mm dtype", pc_op_mm(b, f32, &o), PC_ERR_TYPE, "float64 and float32");
    expect_error("matmul int", pc_op_matmul(i64, i64, &o), PC_ERR_TYPE, "int64");
    expect_error("inplace leaf", pc_op_unary_(PC_U_MUL_S, a, 2.0), PC_ERR_RUNTIME,
                 "leaf Variable that requires grad");
    expect_error("inplace dtype", pc_op_binary_(PC_B_ADD, i64, i64 /*ok*/, 1.0), PC_OK, "");
    expect_error("inplace promote", pc_op_unary_(PC_U_EXP, i64, 0.0), PC_ERR_TYPE,
                 "result type float32 can't be cast to the desired output type int64");
    int dd[2] = {1, -1};
    expect_error("dup dims", pc_op_sum(a, 2, dd, false, &o), PC_ERR_INVALID,
                 "appears multiple times");
    expect_error("dim range", pc_op_max_dim(a, 2, false, &o, &o), PC_ERR_INDEX, "out of range");
    expect_error("broadcast", pc_op_binary(PC_B_ADD, a, b, 1.0, &o), PC_ERR_INVALID,
                 "cannot be broadcast");
    expect_error("linear shape", pc_op_linear(a, b, NULL, &o), PC_ERR_INVALID,
                 "input.shape[-1]=3 != weight.shape[1]=5");
    expect_error("arange", pc_op_arange(0, 1, 0, PC_FLOAT32, CPU, &o), PC_ERR_INVALID, "step");
    /* in-place through a view of a tensor requiring grad */
    PcTensor *y = NULL, *v = NULL;
    pc_op_unary(PC_U_MUL_S, a, 1.0, &y);
    pc_op_t(y, &v);
    expect_error("inplace view", pc_op_unary_(PC_U_ADD_S, v, 1.0), PC_ERR_RUNTIME, "view");
    /* ... allowed under no_grad */
    pc_set_grad_enabled(false);
    expect_error("inplace view no_grad", pc_op_unary_(PC_U_ADD_S, v, 1.0), PC_OK, "");
    pc_set_grad_enabled(true);
    pc_tensor_decref(y);
    pc_tensor_decref(v);
    /* an in-place write to a saved output is caught at backward */
    PcTensor *ex = NULL, *sm = NULL;
    pc_op_unary(PC_U_EXP, a, 0.0, &ex);
    pc_op_unary_(PC_U_ADD_S, ex, 1.0);
    pc_op_sum(ex, 0, NULL, false, &sm);
    expect_error("saved modified", pc_autograd_backward(1, &sm, NULL, false), PC_ERR_RUNTIME,
                 "modified by an inplace operation");
    pc_tensor_decref(ex);
    pc_tensor_decref(sm);
    pc_tensor_decref(a);
    pc_tensor_decref(b);
    pc_tensor_decref(f32);
    pc_tensor_decref(i64);
}

int main(void) {
    pc_rng_manual_seed(0);
    {
        int64_t sx[2] = {4, 3}, sw[2] = {5, 3}, sb = 5, sy[2] = {4, 5};
        PcTensor *in[4] = {leaf(2, sx, true, 0), leaf(2, sw, true, 0), leaf(1, &sb, true, 0),
                           leaf(2, sy, false, 0)};
        gradcheck("linear+relu", loss_linear, 4, in);
        free_all(4, in);
    }
    {
        int64_t sx[3] = {2, 3, 4}, sw[2] = {4, 5}, sb = 5, sy[3] = {2, 3, 5};
        PcTensor *in[4] = {leaf(3, sx, true, 0), leaf(2, sw, true, 0), leaf(1, &sb, true, 0),
                           leaf(3, sy, false, 0)};
        gradcheck("linear 3-D, W^T strided", loss_linear3d, 4, in);
        free_all(4, in);
    }
    {
        int64_t sA[3] = {2, 3, 4}, sB[2] = {4, 5}, sC[4] = {2, 1, 3, 4}, sD[3] = {3, 4, 2};
        int64_t s4 = 4, sM[2] = {3, 4}, sE[3] = {2, 4, 3};
        PcTensor *in[8] = {leaf(3, sA, true, 0), leaf(2, sB, true, 0), leaf(4, sC, true, 0),
                           leaf(3, sD, true, 0), leaf(1, &s4, true, 0), leaf(1, &s4, true, 0),
                           leaf(2, sM, true, 0),  leaf(3, sE, true, 0)};
        gradcheck("matmul (batched/1-D)", loss_matmul, 8, in);
        free_all(8, in);
    }
    {
        int64_t s43[2] = {4, 3}, s45[2] = {4, 5}, s5 = 5, s52[2] = {5, 2};
        PcTensor *in[4] = {leaf(2, s43, true, 0), leaf(2, s45, true, 0), leaf(1, &s5, true, 0),
                           leaf(2, s52, true, 0)};
        (void)s5;
        /* addmm: bias must broadcast to (3, 2): use shape (2,) */
        pc_tensor_decref(in[2]);
        int64_t s2 = 2;
        in[2] = leaf(1, &s2, true, 0);
        gradcheck("mm(t) + addmm", loss_mm, 4, in);
        free_all(4, in);
    }
    {
        int64_t sx[2] = {3, 4}, sz = 4, sw[2] = {3, 1};
        PcTensor *in[3] = {leaf(2, sx, true, 0), leaf(1, &sz, true, 0.5), leaf(2, sw, true, 0)};
        gradcheck("elementwise", loss_elementwise, 3, in);
        free_all(3, in);
    }
    {
        int64_t sx[3] = {3, 4, 5};
        PcTensor *in[1] = {leaf(3, sx, true, 0)};
        gradcheck("sum/mean/max", loss_reduce, 1, in);
        free_all(1, in);
    }
    {
        int64_t sx[2] = {3, 4}, sz = 4, sw[2] = {3, 1};
        PcTensor *in[3] = {leaf(2, sx, true, 0), leaf(1, &sz, true, 0.5), leaf(2, sw, true, 0)};
        gradcheck("in-place rebase", loss_inplace, 3, in);
        free_all(3, in);
    }
    {
        int64_t sx[2] = {3, 4};
        PcTensor *in[1] = {leaf(2, sx, true, 0)};
        gradcheck("x.mul_(x)", loss_self_mul, 1, in);
        free_all(1, in);
    }
    check_forward();
    check_edges();
    check_errors();
    if (g_failures) {
        printf("%d failure(s)\n", g_failures);
        return 1;
    }
    printf("all ops-A checks passed\n");
    return 0;
}
