/* test_autograd.c — the autograd engine (csrc/autograd/) driven by toy nodes, from C.
 *
 * The nodes here (scale by a constant, elementwise product, sum of two, sum to a scalar,
 * split in halves, X @ W^T) compute float32 values with plain loops on contiguous tensors,
 * so the test needs nothing from csrc/ops/. Built with PC_TEST_STUB_BACKEND it also carries
 * a minimal CPU backend (alloc, fill, copy, PC_B_ADD) for use before csrc/kernels/cpu/ exists.
 *
 * Checks: accumulation into leaves over two backward calls, diamonds, freed graphs, version
 * counters, grad() on leaves and non-leaves, unused inputs, multi-output nodes, split
 * backward (I then W equals one full backward, bitwise), the weight-work size, and freeing
 * and running 10,000-node chains on a small thread stack. Run under valgrind for leaks.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../csrc/autograd/autograd.h"
#include "../../csrc/core/backend.h"

static int g_failures = 0;
static int g_checks = 0;

#define CHECK(cond)                                                                   \
    do {                                                                              \
        g_checks++;                                                                   \
        if (!(cond)) {                                                                \
            g_failures++;                                                             \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);  \
        }                                                                             \
    } while (0)

#define CHECK_OK(expr)                                                                \
    do {                                                                              \
        PcStatus st_ = (expr);                                                        \
        g_checks++;                                                                   \
        if (st_ != PC_OK) {                                                           \
            g_failures++;                                                             \
            fprintf(stderr, "%s:%d: %s failed (%d): %s\n", __FILE__, __LINE__, #expr, \
                    (int)st_, pc_last_error());                                       \
        }                                                                             \
    } while (0)

/* The call fails with `code` and a message containing `text`. */
#define CHECK_ERR(expr, code, text)                                                   \
    do {                                                                              \
        PcStatus st_ = (expr);                                                        \
        g_checks++;                                                                   \
        if (st_ != (code) || !strstr(pc_last_error(), (text))) {                      \
            g_failures++;                                                             \
            fprintf(stderr, "%s:%d: %s gave %d \"%s\", expected %d with \"%s\"\n",    \
                    __FILE__, __LINE__, #expr, (int)st_, pc_last_error(), (int)(code),  \
                    (text));                                                          \
        }                                                                             \
    } while (0)

static void die(const char *what) {
    fprintf(stderr, "fatal: %s: %s\n", what, pc_last_error());
    exit(2);
}

#define MUST(expr)                   \
    do {                             \
        if ((expr) != PC_OK) die(#expr); \
    } while (0)

static const PcDevice CPU = {PC_CPU, 0};

/* ---- stub backend ---- */

#ifdef PC_TEST_STUB_BACKEND
static PcStatus stub_alloc(PcDevice dev, size_t nbytes, void **out) {
    (void)dev;
    *out = malloc(nbytes ? nbytes : 1);
    return *out ? PC_OK : pc_set_error(PC_ERR_OOM, "stub alloc");
}

static void stub_free(PcDevice dev, void *ptr, size_t nbytes) {
    (void)dev;
    (void)nbytes;
    free(ptr);
}

static double load(const PcTensor *t, int64_t off) {
    const char *base = (const char *)t->storage->data;
    if (t->dtype == PC_FLOAT32) return ((const float *)base)[off];
    return ((const double *)base)[off];
}

static void store(PcTensor *t, int64_t off, double v) {
    char *base = (char *)t->storage->data;
    if (t->dtype == PC_FLOAT32)
        ((float *)base)[off] = (float)v;
    else
        ((double *)base)[off] = v;
}

/* Element offsets of t in row-major order of its shape, one at a time. */
typedef struct Iter {
    int64_t idx[PC_MAX_DIMS];
} Iter;

static int64_t iter_offset(const PcTensor *t, const Iter *it) {
    int64_t off = t->offset;
    for (int d = 0; d < t->ndim; d++) off += it->idx[d] * t->strides[d];
    return off;
}

static void iter_next(const PcTensor *t, Iter *it) {
    for (int d = t->ndim - 1; d >= 0; d--) {
        if (++it->idx[d] < t->shape[d]) return;
        it->idx[d] = 0;
    }
}

static bool stub_dtype_ok(const PcTensor *t) {
    return t->dtype == PC_FLOAT32 || t->dtype == PC_FLOAT64;
}

static PcStatus stub_fill(PcTensor *dst, double v) {
    if (!stub_dtype_ok(dst)) return pc_set_error(PC_ERR_TYPE, "stub fill: dtype");
    Iter it = {{0}};
    for (int64_t i = 0, n = pc_tensor_numel(dst); i < n; i++, iter_next(dst, &it))
        store(dst, iter_offset(dst, &it), v);
    return PC_OK;
}

static PcStatus stub_copy(PcTensor *dst, const PcTensor *src) {
    if (!stub_dtype_ok(dst) || !stub_dtype_ok(src))
        return pc_set_error(PC_ERR_TYPE, "stub copy: dtype");
    Iter a = {{0}}, b = {{0}};
    for (int64_t i = 0, n = pc_tensor_numel(dst); i < n; i++) {
        store(dst, iter_offset(dst, &a), load(src, iter_offset(src, &b)));
        iter_next(dst, &a);
        iter_next(src, &b);
    }
    return PC_OK;
}

static PcStatus stub_binary(PcBinaryOp op, PcTensor *dst, const PcTensor *x, const PcTensor *y,
                            double alpha) {
    if (op != PC_B_ADD) return pc_set_error(PC_ERR_NOTIMPL, "stub binary: op %d", (int)op);
    if (!stub_dtype_ok(dst)) return pc_set_error(PC_ERR_TYPE, "stub binary: dtype");
    Iter a = {{0}}, b = {{0}}, c = {{0}};
    for (int64_t i = 0, n = pc_tensor_numel(dst); i < n; i++) {
        double v = load(x, iter_offset(x, &b)) + alpha * load(y, iter_offset(y, &c));
        store(dst, iter_offset(dst, &a), v);
        iter_next(dst, &a);
        iter_next(x, &b);
        iter_next(y, &c);
    }
    return PC_OK;
}

const PcBackend pc_cpu_backend = {
    .name = "cpu-stub",
    .alloc = stub_alloc,
    .free = stub_free,
    .copy = stub_copy,
    .fill = stub_fill,
    .binary = stub_binary,
};
#endif

/* ---- tensors ---- */

static PcTensor *tnew(int ndim, const int64_t *shape, const float *vals, bool requires_grad) {
    PcTensor *t;
    MUST(pc_tensor_empty(ndim, shape, PC_FLOAT32, CPU, &t));
    float *d = pc_tensor_data(t);
    for (int64_t i = 0, n = pc_tensor_numel(t); i < n; i++) d[i] = vals ? vals[i] : 0.0f;
    t->requires_grad = requires_grad;
    return t;
}

static PcTensor *vec(int n, const float *vals, bool requires_grad) {
    int64_t shape[1] = {n};
    return tnew(1, shape, vals, requires_grad);
}

static PcTensor *like(const PcTensor *t) {
    PcTensor *o;
    MUST(pc_tensor_empty(t->ndim, t->shape, PC_FLOAT32, CPU, &o));
    return o;
}

static float *F(const PcTensor *t) { return (float *)pc_tensor_data(t); }

static bool values_are(const PcTensor *t, int n, const float *expect) {
    if (!t || pc_tensor_numel(t) != n) return false;
    for (int i = 0; i < n; i++)
        if (F(t)[i] != expect[i]) return false;
    return true;
}

static bool bitwise_equal(const PcTensor *a, const PcTensor *b) {
    if (!a || !b || pc_tensor_nbytes(a) != pc_tensor_nbytes(b)) return false;
    return memcmp(pc_tensor_data(a), pc_tensor_data(b), pc_tensor_nbytes(a)) == 0;
}

/* ---- toy nodes ---- */

static int g_applies_mulc = 0;
static int g_applies_linear = 0;
static int g_dw_computed = 0;

/* y = c * x */
typedef struct MulCNode {
    PcNode base;
    float c;
} MulCNode;

static PcStatus mulc_apply(PcNode *self, PcTensor *const *go, const bool *needs, PcTensor **gi) {
    g_applies_mulc++;
    if (!needs[0]) return PC_OK;
    PcTensor *g = like(go[0]);
    for (int64_t i = 0, n = pc_tensor_numel(g); i < n; i++)
        F(g)[i] = ((MulCNode *)self)->c * F(go[0])[i];
    gi[0] = g;
    return PC_OK;
}

static const PcNodeVTable mulc_vt = {"MulCBackward", mulc_apply, NULL};

static PcTensor *op_mulc(PcTensor *x, float c) {
    PcTensor *y = like(x);
    for (int64_t i = 0, n = pc_tensor_numel(x); i < n; i++) F(y)[i] = c * F(x)[i];
    if (pc_autograd_any_requires_grad(1, &x)) {
        PcNode *node;
        MUST(pc_node_create(sizeof(MulCNode), &mulc_vt, 1, 1, &x, &node));
        ((MulCNode *)node)->c = c;
        pc_autograd_set_history(y, node, 0);
        pc_node_decref(node);
    }
    return y;
}

/* y = a * b elementwise (same shapes); saves a and b. */
typedef struct MulNode {
    PcNode base;
    PcSaved a, b;
} MulNode;

static PcStatus mul_apply(PcNode *self, PcTensor *const *go, const bool *needs, PcTensor **gi) {
    MulNode *m = (MulNode *)self;
    PcTensor *a, *b;
    PC_TRY(pc_saved_get(&m->a, self, &a));
    PcStatus st = pc_saved_get(&m->b, self, &b);
    if (st != PC_OK) {
        pc_tensor_decref(a);
        return st;
    }
    int64_t n = pc_tensor_numel(go[0]);
    if (needs[0]) {
        gi[0] = like(go[0]);
        for (int64_t i = 0; i < n; i++) F(gi[0])[i] = F(go[0])[i] * F(b)[i];
    }
    if (needs[1]) {
        gi[1] = like(go[0]);
        for (int64_t i = 0; i < n; i++) F(gi[1])[i] = F(go[0])[i] * F(a)[i];
    }
    pc_tensor_decref(a);
    pc_tensor_decref(b);
    return PC_OK;
}

static void mul_release(PcNode *self) {
    pc_saved_clear(&((MulNode *)self)->a);
    pc_saved_clear(&((MulNode *)self)->b);
}

static const PcNodeVTable mul_vt = {"MulBackward0", mul_apply, mul_release};

static PcTensor *op_mul(PcTensor *a, PcTensor *b) {
    PcTensor *y = like(a);
    for (int64_t i = 0, n = pc_tensor_numel(a); i < n; i++) F(y)[i] = F(a)[i] * F(b)[i];
    PcTensor *in[2] = {a, b};
    if (pc_autograd_any_requires_grad(2, in)) {
        PcNode *node;
        MUST(pc_node_create(sizeof(MulNode), &mul_vt, 1, 2, in, &node));
        MUST(pc_saved_set(&((MulNode *)node)->a, a));
        MUST(pc_saved_set(&((MulNode *)node)->b, b));
        pc_autograd_set_history(y, node, 0);
        pc_node_decref(node);
    }
    return y;
}

/* y = a + b: both gradients are the incoming tensor itself (shared references). */
static PcStatus add_apply(PcNode *self, PcTensor *const *go, const bool *needs, PcTensor **gi) {
    (void)self;
    for (int j = 0; j < 2; j++)
        if (needs[j]) {
            pc_tensor_incref(go[0]);
            gi[j] = go[0];
        }
    return PC_OK;
}

static const PcNodeVTable add_vt = {"AddBackward0", add_apply, NULL};

static PcTensor *op_add(PcTensor *a, PcTensor *b) {
    PcTensor *y = like(a);
    for (int64_t i = 0, n = pc_tensor_numel(a); i < n; i++) F(y)[i] = F(a)[i] + F(b)[i];
    PcTensor *in[2] = {a, b};
    if (pc_autograd_any_requires_grad(2, in)) {
        PcNode *node;
        MUST(pc_node_create(sizeof(PcNode), &add_vt, 1, 2, in, &node));
        pc_autograd_set_history(y, node, 0);
        pc_node_decref(node);
    }
    return y;
}

/* y = sum(x), a 0-d tensor. */
typedef struct SumNode {
    PcNode base;
    int ndim;
    int64_t shape[PC_MAX_DIMS];
} SumNode;

static PcStatus sum_apply(PcNode *self, PcTensor *const *go, const bool *needs, PcTensor **gi) {
    SumNode *s = (SumNode *)self;
    if (!needs[0]) return PC_OK;
    PcTensor *g = tnew(s->ndim, s->shape, NULL, false);
    for (int64_t i = 0, n = pc_tensor_numel(g); i < n; i++) F(g)[i] = F(go[0])[0];
    gi[0] = g;
    return PC_OK;
}

static const PcNodeVTable sum_vt = {"SumBackward0", sum_apply, NULL};

static PcTensor *op_sum(PcTensor *x) {
    PcTensor *y = tnew(0, NULL, NULL, false);
    float acc = 0.0f;
    for (int64_t i = 0, n = pc_tensor_numel(x); i < n; i++) acc += F(x)[i];
    F(y)[0] = acc;
    if (pc_autograd_any_requires_grad(1, &x)) {
        PcNode *node;
        MUST(pc_node_create(sizeof(SumNode), &sum_vt, 1, 1, &x, &node));
        ((SumNode *)node)->ndim = x->ndim;
        memcpy(((SumNode *)node)->shape, x->shape, sizeof x->shape);
        pc_autograd_set_history(y, node, 0);
        pc_node_decref(node);
    }
    return y;
}

/* (y0, y1) = the two halves of a 1-D x: a node with two outputs. */
static PcStatus split_apply(PcNode *self, PcTensor *const *go, const bool *needs, PcTensor **gi) {
    if (!needs[0]) return PC_OK;
    int64_t h = self->out_meta[0].shape[0];
    PcTensor *g = vec((int)(2 * h), NULL, false);
    for (int k = 0; k < 2; k++)
        if (go[k])
            for (int64_t i = 0; i < h; i++) F(g)[k * h + i] = F(go[k])[i];
    gi[0] = g;
    return PC_OK;
}

static const PcNodeVTable split_vt = {"SplitBackward0", split_apply, NULL};

static void op_split(PcTensor *x, PcTensor **y0, PcTensor **y1) {
    int h = (int)(x->shape[0] / 2);
    *y0 = vec(h, F(x), false);
    *y1 = vec(h, F(x) + h, false);
    if (pc_autograd_any_requires_grad(1, &x)) {
        PcNode *node;
        MUST(pc_node_create(sizeof(PcNode), &split_vt, 2, 1, &x, &node));
        pc_autograd_set_history(*y0, node, 0);
        pc_autograd_set_history(*y1, node, 1);
        pc_node_decref(node);
    }
}

/* Y (m, n) = X (m, k) @ W (n, k)^T; saves X and W. dX = dY W, dW = dY^T X. */
typedef struct LinearNode {
    PcNode base;
    PcSaved x, w;
} LinearNode;

static PcStatus linear_apply(PcNode *self, PcTensor *const *go, const bool *needs,
                             PcTensor **gi) {
    LinearNode *l = (LinearNode *)self;
    g_applies_linear++;
    PcTensor *x, *w;
    PC_TRY(pc_saved_get(&l->x, self, &x));
    PcStatus st = pc_saved_get(&l->w, self, &w);
    if (st != PC_OK) {
        pc_tensor_decref(x);
        return st;
    }
    int64_t m = x->shape[0], k = x->shape[1], n = w->shape[0];
    const float *dy = F(go[0]);
    if (needs[0]) {
        gi[0] = like(x);
        for (int64_t i = 0; i < m; i++)
            for (int64_t c = 0; c < k; c++) {
                float acc = 0.0f;
                for (int64_t j = 0; j < n; j++) acc += dy[i * n + j] * F(w)[j * k + c];
                F(gi[0])[i * k + c] = acc;
            }
    }
    if (needs[1]) {
        g_dw_computed++;
        gi[1] = like(w);
        for (int64_t j = 0; j < n; j++)
            for (int64_t c = 0; c < k; c++) {
                float acc = 0.0f;
                for (int64_t i = 0; i < m; i++) acc += dy[i * n + j] * F(x)[i * k + c];
                F(gi[1])[j * k + c] = acc;
            }
    }
    pc_tensor_decref(x);
    pc_tensor_decref(w);
    return PC_OK;
}

static void linear_release(PcNode *self) {
    pc_saved_clear(&((LinearNode *)self)->x);
    pc_saved_clear(&((LinearNode *)self)->w);
}

static const PcNodeVTable linear_vt = {"LinearBackward0", linear_apply, linear_release};

static PcTensor *op_linear(PcTensor *x, PcTensor *w) {
    int64_t m = x->shape[0], k = x->shape[1], n = w->shape[0];
    int64_t shape[2] = {m, n};
    PcTensor *y = tnew(2, shape, NULL, false);
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            float acc = 0.0f;
            for (int64_t c = 0; c < k; c++) acc += F(x)[i * k + c] * F(w)[j * k + c];
            F(y)[i * n + j] = acc;
        }
    PcTensor *in[2] = {x, w};
    if (pc_autograd_any_requires_grad(2, in)) {
        PcNode *node;
        MUST(pc_node_create(sizeof(LinearNode), &linear_vt, 1, 2, in, &node));
        MUST(pc_saved_set(&((LinearNode *)node)->x, x));
        MUST(pc_saved_set(&((LinearNode *)node)->w, w));
        pc_autograd_set_history(y, node, 0);
        pc_node_decref(node);
    }
    return y;
}

/* ---- tests ---- */

static void test_accumulate_two_backwards(void) {
    const float xv[3] = {1, 2, 3};
    PcTensor *x = vec(3, xv, true);
    for (int round = 1; round <= 2; round++) {
        PcTensor *h = op_mulc(x, 2.0f);
        PcTensor *y = op_sum(h);
        CHECK(y->grad_fn && strcmp(y->grad_fn->vt->name, "SumBackward0") == 0);
        CHECK_OK(pc_autograd_backward(1, &y, NULL, false));
        float e = 2.0f * (float)round;
        const float expect[3] = {e, e, e};
        CHECK(values_are(x->grad, 3, expect));
        pc_tensor_decref(y);
        pc_tensor_decref(h);
    }
    CHECK(atomic_load(&x->grad->storage->version) == 1u); /* one in-place accumulation */
    CHECK(x->grad_acc == NULL); /* the accumulator died with its graphs */
    pc_tensor_decref(x);
}

static void test_shared_accumulator(void) {
    const float xv[2] = {1, 2};
    PcTensor *x = vec(2, xv, true);
    PcTensor *a = op_mulc(x, 2.0f);
    PcTensor *b = op_mulc(x, 3.0f);
    CHECK(a->grad_fn->edges[0].fn == b->grad_fn->edges[0].fn);
    CHECK(x->grad_acc == a->grad_fn->edges[0].fn);
    CHECK(strcmp(x->grad_acc->vt->name, "AccumulateGrad") == 0);
    CHECK(x->grad_acc->leaf == x);
    pc_tensor_decref(a);
    CHECK(x->grad_acc != NULL);
    pc_tensor_decref(b);
    CHECK(x->grad_acc == NULL);
    pc_tensor_decref(x);
}

static void test_diamond(void) {
    const float xv[3] = {1, -2, 4};
    PcTensor *x = vec(3, xv, true);
    /* leaf diamond through AddBackward's shared gradient: d/dx sum(2x + 3x) = 5 */
    PcTensor *a = op_mulc(x, 2.0f), *b = op_mulc(x, 3.0f);
    PcTensor *s = op_add(a, b);
    PcTensor *y = op_sum(s);
    CHECK_OK(pc_autograd_backward(1, &y, NULL, false));
    const float e5[3] = {5, 5, 5};
    CHECK(values_are(x->grad, 3, e5));
    pc_tensor_decref(y);
    pc_tensor_decref(s);
    pc_tensor_decref(a);
    pc_tensor_decref(b);
    pc_tensor_decref(x->grad);
    x->grad = NULL;

    /* non-leaf diamond: h = x*1; y = sum(h + h*h) -> dy/dx = 1 + 2x */
    PcTensor *h = op_mulc(x, 1.0f);
    PcTensor *hh = op_mul(h, h);
    PcTensor *t = op_add(h, hh);
    y = op_sum(t);
    CHECK_OK(pc_autograd_backward(1, &y, NULL, false));
    const float e[3] = {3, -3, 9};
    CHECK(values_are(x->grad, 3, e));
    pc_tensor_decref(y);
    pc_tensor_decref(t);
    pc_tensor_decref(hh);
    pc_tensor_decref(h);
    pc_tensor_decref(x);
}

static void test_same_add_aliasing(void) {
    /* y = sum(x + x): AddBackward hands the same tensor to both edges of one leaf; the
     * accumulator must get 2, and .grad must not alias anything the engine shares. */
    const float xv[2] = {1, 1};
    PcTensor *x = vec(2, xv, true);
    PcTensor *s = op_add(x, x);
    PcTensor *y = op_sum(s);
    CHECK_OK(pc_autograd_backward(1, &y, NULL, true));
    const float e2[2] = {2, 2};
    CHECK(values_are(x->grad, 2, e2));
    CHECK_OK(pc_autograd_backward(1, &y, NULL, false));
    const float e4[2] = {4, 4};
    CHECK(values_are(x->grad, 2, e4));
    pc_tensor_decref(y);
    pc_tensor_decref(s);
    pc_tensor_decref(x);
}

static void test_leaf_root_and_user_grad(void) {
    PcTensor *x = vec(1, (const float[]){7}, true);
    CHECK_OK(pc_autograd_backward(1, &x, NULL, false));
    CHECK(values_are(x->grad, 1, (const float[]){1}));
    pc_tensor_decref(x);

    /* a user-supplied gradient is copied, never aliased into .grad */
    PcTensor *w = vec(2, (const float[]){1, 2}, true);
    PcTensor *g = vec(2, (const float[]){5, 6}, false);
    CHECK_OK(pc_autograd_backward(1, &w, (PcTensor *const[]){g}, false));
    CHECK(w->grad != g && values_are(w->grad, 2, (const float[]){5, 6}));
    F(g)[0] = 100;
    CHECK(F(w->grad)[0] == 5);
    pc_tensor_decref(g);
    pc_tensor_decref(w);
}

static void test_root_errors(void) {
    PcTensor *x = vec(3, (const float[]){1, 2, 3}, true);
    PcTensor *c = vec(3, (const float[]){1, 2, 3}, false);
    PcTensor *h = op_mulc(x, 2.0f);
    CHECK_ERR(pc_autograd_backward(1, &h, NULL, false), PC_ERR_RUNTIME,
              "grad can be implicitly created only for scalar outputs");
    CHECK_ERR(pc_autograd_backward(1, &c, NULL, false), PC_ERR_RUNTIME,
              "element 0 of tensors does not require grad and does not have a grad_fn");
    PcTensor *bad = vec(2, (const float[]){1, 1}, false);
    CHECK_ERR(pc_autograd_backward(1, &h, (PcTensor *const[]){bad}, false), PC_ERR_RUNTIME,
              "Mismatch in shape");
    /* a float64 gradient for a float32 root is converted */
    PcTensor *g64;
    MUST(pc_tensor_empty(1, (const int64_t[]){3}, PC_FLOAT64, CPU, &g64));
    for (int i = 0; i < 3; i++) ((double *)pc_tensor_data(g64))[i] = 1.0 + i;
    CHECK_OK(pc_autograd_backward(1, &h, (PcTensor *const[]){g64}, false));
    CHECK(x->grad && x->grad->dtype == PC_FLOAT32 &&
          values_are(x->grad, 3, (const float[]){2, 4, 6}));
    CHECK(x->grad == NULL || x->grad->dtype == PC_FLOAT32);
    pc_tensor_decref(g64);
    pc_tensor_decref(bad);
    pc_tensor_decref(h);
    pc_tensor_decref(c);
    pc_tensor_decref(x);
}

static void test_freed_graph(void) {
    PcTensor *x = vec(2, (const float[]){1, 3}, true);
    PcTensor *xx = op_mul(x, x);
    PcTensor *y = op_sum(xx);
    CHECK_OK(pc_autograd_backward(1, &y, NULL, true));
    CHECK(!xx->grad_fn->released);
    CHECK_OK(pc_autograd_backward(1, &y, NULL, false));
    CHECK(values_are(x->grad, 2, (const float[]){4, 12}));
    CHECK(xx->grad_fn->released && y->grad_fn->released);
    CHECK_ERR(pc_autograd_backward(1, &y, NULL, false), PC_ERR_RUNTIME,
              "Trying to backward through the graph a second time");
    CHECK(values_are(x->grad, 2, (const float[]){4, 12})); /* untouched by the failure */
    PcTensor *r[1];
    CHECK_ERR(pc_autograd_grad(1, &y, NULL, 1, &x, false, false, r), PC_ERR_RUNTIME,
              "Specify retain_graph=True");
    pc_tensor_decref(y);
    pc_tensor_decref(xx);
    pc_tensor_decref(x);
}

static void test_version_mismatch(void) {
    PcTensor *x = vec(2, (const float[]){1, 3}, true);
    PcTensor *a = op_mulc(x, 1.0f);
    PcTensor *aa = op_mul(a, a);
    PcTensor *y = op_sum(aa);
    pc_tensor_bump_version(a); /* as an in-place op on `a` would */
    CHECK_ERR(pc_autograd_backward(1, &y, NULL, false), PC_ERR_RUNTIME,
              "one of the variables needed for gradient computation has been modified by an "
              "inplace operation: [float32 (2,)] is at version 1; expected version 0 instead.");
    CHECK(x->grad == NULL);
    pc_tensor_decref(y);
    pc_tensor_decref(aa);
    pc_tensor_decref(a);
    pc_tensor_decref(x);
}

static void test_grad_api(void) {
    PcTensor *x = vec(2, (const float[]){1, 2}, true);
    PcTensor *z = vec(2, (const float[]){0, 0}, true); /* not in the graph */
    PcTensor *k = vec(2, (const float[]){0, 0}, false);
    PcTensor *h = op_mulc(x, 2.0f);
    PcTensor *hh = op_mul(h, h);
    PcTensor *y = op_sum(hh);
    PcTensor *r[2] = {NULL, NULL};

    /* non-leaf input: d/dh sum(h*h) = 2h; the MulC node behind h must not run */
    int before = g_applies_mulc;
    CHECK_OK(pc_autograd_grad(1, &y, NULL, 1, &h, true, false, r));
    CHECK(values_are(r[0], 2, (const float[]){4, 8}));
    CHECK(g_applies_mulc == before);
    CHECK(x->grad == NULL && h->grad == NULL);
    pc_tensor_decref(r[0]);

    /* leaf and non-leaf together */
    CHECK_OK(pc_autograd_grad(1, &y, NULL, 2, (PcTensor *const[]){x, h}, true, false, r));
    CHECK(values_are(r[0], 2, (const float[]){8, 16}));
    CHECK(values_are(r[1], 2, (const float[]){4, 8}));
    CHECK(x->grad == NULL);
    pc_tensor_decref(r[0]);
    pc_tensor_decref(r[1]);

    /* unused inputs */
    CHECK_ERR(pc_autograd_grad(1, &y, NULL, 2, (PcTensor *const[]){x, z}, true, false, r),
              PC_ERR_RUNTIME, "appears to not have been used in the graph");
    CHECK(r[0] == NULL && r[1] == NULL);
    CHECK_OK(pc_autograd_grad(1, &y, NULL, 2, (PcTensor *const[]){x, z}, true, true, r));
    CHECK(values_are(r[0], 2, (const float[]){8, 16}) && r[1] == NULL);
    pc_tensor_decref(r[0]);
    CHECK_ERR(pc_autograd_grad(1, &y, NULL, 1, &k, true, true, r), PC_ERR_RUNTIME,
              "does not require grad");

    /* retain_graph false frees the graph */
    CHECK_OK(pc_autograd_grad(1, &y, NULL, 1, &x, false, false, r));
    pc_tensor_decref(r[0]);
    CHECK_ERR(pc_autograd_grad(1, &y, NULL, 1, &x, false, false, r), PC_ERR_RUNTIME,
              "second time");
    CHECK(x->grad == NULL && z->grad == NULL);
    pc_tensor_decref(y);
    pc_tensor_decref(hh);
    pc_tensor_decref(h);
    pc_tensor_decref(k);
    pc_tensor_decref(z);
    pc_tensor_decref(x);
}

static void test_multi_output(void) {
    PcTensor *x = vec(4, (const float[]){1, 2, 3, 4}, true);
    PcTensor *a, *b;
    op_split(x, &a, &b);
    PcTensor *s = op_mulc(a, 3.0f);
    PcTensor *y = op_sum(s);
    CHECK_OK(pc_autograd_backward(1, &y, NULL, false)); /* output 1 gets no gradient */
    CHECK(values_are(x->grad, 4, (const float[]){3, 3, 0, 0}));
    pc_tensor_decref(y);
    pc_tensor_decref(s);
    /* both outputs, two roots */
    PcTensor *b2 = op_mulc(b, 2.0f);
    PcTensor *y0 = op_sum(a), *y1 = op_sum(b2);
    CHECK_OK(pc_autograd_backward(2, (PcTensor *const[]){y0, y1}, NULL, false));
    CHECK(values_are(x->grad, 4, (const float[]){4, 4, 2, 2}));
    pc_tensor_decref(y0);
    pc_tensor_decref(y1);
    pc_tensor_decref(b2);
    pc_tensor_decref(a);
    pc_tensor_decref(b);
    pc_tensor_decref(x);
}

static void test_grad_mode(void) {
    CHECK(pc_grad_enabled());
    PcTensor *x = vec(1, (const float[]){1}, true);
    pc_set_grad_enabled(false);
    PcTensor *y = op_mulc(x, 2.0f);
    CHECK(!y->requires_grad && y->grad_fn == NULL);
    pc_set_grad_enabled(true);
    CHECK(x->grad_acc == NULL);
    pc_tensor_decref(y);
    pc_tensor_decref(x);
}

/* ---- split backward ---- */

typedef struct Net {
    PcTensor *x, *w1, *w2;             /* leaves */
    PcTensor *h, *a, *w2c, *y, *l1, *wr, *l2; /* intermediates and roots */
} Net;

static const float X0[2 * 3] = {1, -2, 0.5f, 3, 0.25f, -1};
static const float W10[4 * 3] = {0.5f, -1, 2, 1, 0.75f, -0.5f, -2, 1, 0.125f, 0.25f, 3, -1};
static const float W20[2 * 4] = {1, -1, 0.5f, 2, -0.25f, 1.5f, 1, -3};

/* l1 = sum(linear(0.5 * linear(x, w1), 1 * w2)); l2 = sum(0.25 * w1) (only weights). */
static void net_build(Net *n) {
    n->x = tnew(2, (const int64_t[]){2, 3}, X0, true);
    n->w1 = tnew(2, (const int64_t[]){4, 3}, W10, true);
    n->w2 = tnew(2, (const int64_t[]){2, 4}, W20, true);
    n->h = op_linear(n->x, n->w1);
    n->a = op_mulc(n->h, 0.5f);
    n->w2c = op_mulc(n->w2, 1.0f);
    n->y = op_linear(n->a, n->w2c);
    n->l1 = op_sum(n->y);
    n->wr = op_mulc(n->w1, 0.25f);
    n->l2 = op_sum(n->wr);
}

static void net_free(Net *n) {
    PcTensor *all[] = {n->l2, n->wr, n->l1, n->y, n->w2c, n->a, n->h, n->w2, n->w1, n->x};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) pc_tensor_decref(all[i]);
}

static void test_split_equals_full(void) {
    Net full, split;
    net_build(&full);
    net_build(&split);
    PcTensor *roots_f[2] = {full.l1, full.l2}, *roots_s[2] = {split.l1, split.l2};

    CHECK_OK(pc_autograd_backward(2, roots_f, NULL, false));

    int dw_before = g_dw_computed;
    PcTensor *dx = NULL;
    PcWeightWork *work = NULL;
    CHECK_OK(pc_autograd_backward_input(2, roots_s, NULL, 1, &split.x, &dx, &work));
    CHECK(g_dw_computed == dw_before);      /* no weight gradient in phase I */
    CHECK(bitwise_equal(dx, full.x->grad)); /* input gradient == full backward's */
    CHECK(split.x->grad == NULL);           /* returned, not accumulated */
    CHECK(split.w1->grad == NULL && split.w2->grad == NULL);
    /* queued: both linears (weight edges) and the weight-only root l2 */
    CHECK(pc_weight_work_size(work) == 3);
    CHECK(!split.h->grad_fn->released && !split.y->grad_fn->released);

    CHECK_OK(pc_weight_work_run(work, false));
    CHECK(g_dw_computed == dw_before + 2);
    CHECK(pc_weight_work_size(work) == 0);
    CHECK(bitwise_equal(split.w1->grad, full.w1->grad));
    CHECK(bitwise_equal(split.w2->grad, full.w2->grad));
    CHECK(split.x->grad == NULL);
    CHECK_ERR(pc_weight_work_run(work, false), PC_ERR_RUNTIME, "already");
    pc_weight_work_free(work);
    /* the graph was released after W */
    CHECK(split.h->grad_fn->released && split.y->grad_fn->released);
    CHECK_ERR(pc_autograd_backward(1, &split.l1, NULL, false), PC_ERR_RUNTIME, "second time");
    pc_tensor_decref(dx);
    net_free(&full);
    net_free(&split);
}

static void test_split_free_and_retain(void) {
    Net n;
    net_build(&n);
    PcTensor *roots[2] = {n.l1, n.l2};
    PcTensor *dx = NULL;
    PcWeightWork *work = NULL;

    /* free without running: nothing accumulated, nothing leaked, graph still usable */
    CHECK_OK(pc_autograd_backward_input(2, roots, NULL, 1, &n.x, &dx, &work));
    pc_weight_work_free(work);
    pc_tensor_decref(dx);
    CHECK(n.w1->grad == NULL && n.w2->grad == NULL);

    /* retain_graph in W: a later full backward still works and doubles the weight grads */
    CHECK_OK(pc_autograd_backward_input(2, roots, NULL, 1, &n.x, &dx, &work));
    CHECK_OK(pc_weight_work_run(work, true));
    pc_weight_work_free(work);
    PcTensor *w1g = n.w1->grad;
    pc_tensor_incref(w1g);
    PcTensor *once;
    MUST(pc_tensor_empty(2, (const int64_t[]){4, 3}, PC_FLOAT32, CPU, &once));
    memcpy(F(once), F(w1g), 12 * sizeof(float));
    CHECK_OK(pc_autograd_backward(2, roots, NULL, false));
    bool doubled = true;
    for (int i = 0; i < 12; i++) doubled = doubled && F(n.w1->grad)[i] == 2 * F(once)[i];
    CHECK(doubled);
    CHECK(n.x->grad && bitwise_equal(n.x->grad, dx));
    pc_tensor_decref(once);
    pc_tensor_decref(w1g);
    pc_tensor_decref(dx);
    net_free(&n);

    /* no weights at all: an empty work */
    PcTensor *x = vec(2, (const float[]){1, 2}, true);
    PcTensor *x3 = op_mulc(x, 3.0f);
    PcTensor *y = op_sum(x3);
    CHECK_OK(pc_autograd_backward_input(1, &y, NULL, 1, &x, &dx, &work));
    CHECK(work != NULL && pc_weight_work_size(work) == 0);
    CHECK(values_are(dx, 2, (const float[]){3, 3}));
    CHECK_OK(pc_weight_work_run(work, false));
    pc_weight_work_free(work);
    pc_tensor_decref(dx);
    pc_tensor_decref(y);
    pc_tensor_decref(x3);
    pc_tensor_decref(x);
}

/* ---- long chains on a small stack ---- */

static void *chain_body(void *arg) {
    (void)arg;
    enum { N = 10000 };
    PcTensor *x = vec(2, (const float[]){1, 2}, true);
    PcTensor *one = vec(2, (const float[]){1, 1}, false);
    PcTensor *h = x;
    pc_tensor_incref(h);
    for (int i = 0; i < N; i++) { /* every node saves its input: freeing goes through release */
        PcTensor *next = (i % 2) ? op_mul(h, one) : op_mulc(h, 1.0f);
        pc_tensor_decref(h);
        h = next;
    }
    PcTensor *y = op_sum(h);
    pc_tensor_decref(h);
    CHECK_OK(pc_autograd_backward(1, &y, NULL, true));
    CHECK(values_are(x->grad, 2, (const float[]){1, 1}));
    pc_tensor_decref(y); /* frees the whole chain */
    CHECK(x->grad_acc == NULL);

    /* a chain freed without ever running backward */
    h = x;
    pc_tensor_incref(h);
    for (int i = 0; i < N; i++) {
        PcTensor *next = op_mul(h, one);
        pc_tensor_decref(h);
        h = next;
    }
    pc_tensor_decref(h);
    CHECK(x->grad_acc == NULL);
    pc_tensor_decref(one);
    pc_tensor_decref(x);
    return NULL;
}

static void test_long_chain_small_stack(void) {
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 128 * 1024);
    pthread_t th;
    if (pthread_create(&th, &attr, chain_body, NULL) != 0) {
        CHECK(!"pthread_create failed");
        return;
    }
    pthread_join(th, NULL);
    pthread_attr_destroy(&attr);
}

int main(void) {
    test_accumulate_two_backwards();
    test_shared_accumulator();
    test_diamond();
    test_same_add_aliasing();
    test_leaf_root_and_user_grad();
    test_root_errors();
    test_freed_graph();
    test_version_mismatch();
    test_grad_api();
    test_multi_output();
    test_grad_mode();
    test_split_equals_full();
    test_split_free_and_retain();
    test_long_chain_small_stack();
    printf("test_autograd: %d checks, %d failures\n", g_checks, g_failures);
    return g_failures ? 1 : 0;
}
