/* test_cpu_kernels.c — checks every entry of pc_cpu_backend against plain float64 loops.
 *
 * Inputs are drawn from a fixed xorshift stream, rounded to the tested dtype, read back, and
 * the reference is computed in double from those rounded values. Tolerances (|got - ref| <=
 * atol + rtol * |ref|): float64 1e-12 (libm differences only), float32 2e-6 relative for
 * elementwise (a few ulp of float libm), float16 2e-3 and bfloat16 1e-2 (about 2 ulp of the
 * output rounding), looser where a kernel sums in the narrow type (stated at the call).
 * Layouts: contiguous, transposed (permuted strides), broadcast (stride 0) and strided dst.
 * Gradients (GELU/tanh/sigmoid/pow, softmax, layer_norm) are also checked against central
 * finite differences in float64. Philox is checked against Random123's known-answer vectors.
 *
 * Build and run: `make -C tests/c test`. Exit status 0 iff every check passed.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../csrc/core/backend.h"
#include "../../csrc/kernels/cpu/kernels_cpu.h"
#include "../../csrc/kernels/philox.h"

/* tensor.c drops grad_fn references through the autograd engine; this test builds without
 * it, and no tensor here has a grad_fn. The real definition wins when linked. */
__attribute__((weak)) void pc_node_decref(struct PcNode *n) { (void)n; }

/* ---- harness ---- */

static int g_checks, g_fails;
static const PcBackend *BE;
static const PcDevice CPU = {PC_CPU, 0};

#define CHECK(cond, ...)                                                              \
    do {                                                                              \
        g_checks++;                                                                   \
        if (!(cond)) {                                                                \
            g_fails++;                                                                \
            if (g_fails <= 60) {                                                      \
                printf("FAIL %s:%d: ", __FILE__, __LINE__);                           \
                printf(__VA_ARGS__);                                                  \
                printf("\n");                                                         \
            }                                                                         \
        }                                                                             \
    } while (0)

#define OK(expr)                                                                      \
    do {                                                                              \
        PcStatus st_ = (expr);                                                        \
        CHECK(st_ == PC_OK, "%s -> %d (%s)", #expr, (int)st_, pc_last_error());       \
    } while (0)

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
static double rnd(void) { /* uniform [-1, 1) */
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (double)(g_rng >> 11) * (2.0 / 9007199254740992.0) - 1.0;
}

static PcTensor *new_t(int ndim, const int64_t *shape, PcDType dt) {
    PcTensor *t = NULL;
    PcStatus st = pc_tensor_empty(ndim, shape, dt, CPU, &t);
    if (st != PC_OK) {
        printf("pc_tensor_empty failed: %s\n", pc_last_error());
        exit(2);
    }
    return t;
}

static PcTensor *view(PcTensor *base, int64_t offset, int ndim, const int64_t *shape,
                      const int64_t *strides) {
    PcTensor *t = NULL;
    if (pc_tensor_view_of(base->storage, base->offset + offset, ndim, shape, strides,
                          base->dtype, &t) != PC_OK) {
        printf("view failed: %s\n", pc_last_error());
        exit(2);
    }
    return t;
}

/* Byte address of the element with row-major logical index lin. */
static char *addr(const PcTensor *t, int64_t lin) {
    int64_t off = 0;
    for (int d = t->ndim - 1; d >= 0; d--) {
        int64_t i = lin % t->shape[d];
        lin /= t->shape[d];
        off += i * t->strides[d];
    }
    return (char *)pc_tensor_data(t) + off * (int64_t)pc_dtype_size(t->dtype);
}

static double get(const PcTensor *t, int64_t lin) { return pc_cpu_load_f(addr(t, lin), t->dtype); }
static void set(PcTensor *t, int64_t lin, double v) { pc_cpu_store_f(addr(t, lin), t->dtype, v); }
static int64_t geti(const PcTensor *t, int64_t lin) { return *(const int64_t *)addr(t, lin); }

/* Fill every logical element with f(i) = scale * rnd() + shift (rounded to the dtype). */
static void fill_rand(PcTensor *t, double scale, double shift) {
    int64_t n = pc_tensor_numel(t);
    for (int64_t i = 0; i < n; i++) set(t, i, scale * rnd() + shift);
}

static bool close_to(double got, double ref, double atol, double rtol) {
    if (isnan(ref)) return isnan(got);
    if (isinf(ref)) return got == ref;
    return fabs(got - ref) <= atol + rtol * fabs(ref);
}

static double tol_for(PcDType dt) {
    switch (dt) {
    case PC_FLOAT64: return 1e-12;
    case PC_FLOAT32: return 2e-6;
    case PC_FLOAT16: return 2e-3;
    case PC_BFLOAT16: return 1e-2;
    default: return 0;
    }
}

static const PcDType FLOATS[4] = {PC_FLOAT32, PC_FLOAT64, PC_FLOAT16, PC_BFLOAT16};

/* ---- copy / fill ---- */

static void test_copy(void) {
    const int64_t shp[2] = {3, 5}, tshp[2] = {5, 3};
    const double vals[15] = {0, 1, -1, 2.7, -2.7, 0.5, 1e-3, -123.25, 65504, 3e9,
                             -0.0, 7, 100.5, 0.1, 4};
    for (int s = 0; s < PC_NUM_DTYPES; s++) {
        for (int d = 0; d < PC_NUM_DTYPES; d++) {
            /* src: a transposed (3, 5) view of a (5, 3) buffer. */
            PcTensor *base = new_t(2, tshp, (PcDType)s);
            const int64_t st[2] = {1, 3};
            PcTensor *src = view(base, 0, 2, shp, st);
            for (int i = 0; i < 15; i++) set(src, i, vals[i]);
            PcTensor *dst = new_t(2, shp, (PcDType)d);
            OK(BE->copy(dst, src));
            int bad = 0;
            for (int i = 0; i < 15; i++) {
                double v = get(src, i); /* the source value after its own rounding */
                double ref;
                if (d == PC_BOOL) ref = v != 0;
                else if (d == PC_INT64)
                    ref = isnan(v) ? (double)INT64_MIN
                        : fmax(fmin(trunc(v), (double)INT64_MAX), (double)INT64_MIN);
                else {
                    PcTensor *one = new_t(0, NULL, (PcDType)d);
                    set(one, 0, v);
                    ref = get(one, 0);
                    pc_tensor_decref(one);
                }
                if (!(get(dst, i) == ref || (isnan(ref) && isnan(get(dst, i))))) bad++;
            }
            CHECK(bad == 0, "copy %s -> %s: %d mismatches", pc_dtype_name((PcDType)s),
                  pc_dtype_name((PcDType)d), bad);
            pc_tensor_decref(dst);
            pc_tensor_decref(src);
            pc_tensor_decref(base);
        }
    }
    /* int64 -> int64 and int64 -> float64 keep large values; float -> int64 saturates. */
    {
        const int64_t n1 = 3;
        PcTensor *a = new_t(1, &n1, PC_INT64), *b = new_t(1, &n1, PC_INT64);
        int64_t *ap = pc_tensor_data(a);
        ap[0] = (1ll << 60) + 1;
        ap[1] = -5;
        ap[2] = INT64_MIN;
        OK(BE->copy(b, a));
        CHECK(memcmp(pc_tensor_data(a), pc_tensor_data(b), 24) == 0, "int64 copy not exact");
        PcTensor *f = new_t(1, &n1, PC_FLOAT64);
        double *fp = pc_tensor_data(f);
        fp[0] = 1e30;
        fp[1] = -1e30;
        fp[2] = NAN;
        OK(BE->copy(b, f));
        const int64_t *bp = pc_tensor_data(b);
        CHECK(bp[0] == INT64_MAX && bp[1] == INT64_MIN && bp[2] == INT64_MIN,
              "float64 -> int64 saturation: %lld %lld %lld", (long long)bp[0],
              (long long)bp[1], (long long)bp[2]);
        pc_tensor_decref(a);
        pc_tensor_decref(b);
        pc_tensor_decref(f);
    }
    /* Known half bit patterns. */
    {
        const int64_t n1 = 4;
        PcTensor *f = new_t(1, &n1, PC_FLOAT32), *h = new_t(1, &n1, PC_FLOAT16),
                 *bf = new_t(1, &n1, PC_BFLOAT16);
        float *fp = pc_tensor_data(f);
        fp[0] = 1.0f;
        fp[1] = -2.0f;
        fp[2] = 65504.0f;
        fp[3] = 1e6f;
        OK(BE->copy(h, f));
        OK(BE->copy(bf, f));
        const uint16_t *hp = pc_tensor_data(h), *bp = pc_tensor_data(bf);
        CHECK(hp[0] == 0x3c00 && hp[1] == 0xc000 && hp[2] == 0x7bff && hp[3] == 0x7c00,
              "float16 bits %04x %04x %04x %04x", hp[0], hp[1], hp[2], hp[3]);
        CHECK(bp[0] == 0x3f80 && bp[1] == 0xc000, "bfloat16 bits %04x %04x", bp[0], bp[1]);
        pc_tensor_decref(f);
        pc_tensor_decref(h);
        pc_tensor_decref(bf);
    }
    /* A permuted 4-d copy exercises the iterator with no mergeable dims. */
    {
        const int64_t bshape[4] = {2, 3, 4, 5};
        PcTensor *base = new_t(4, bshape, PC_FLOAT64);
        for (int i = 0; i < 120; i++) ((double *)pc_tensor_data(base))[i] = i;
        /* permute (3, 1, 0, 2): shape (5, 3, 2, 4), strides (1, 20, 60, 5) */
        const int64_t pshape[4] = {5, 3, 2, 4}, pstr[4] = {1, 20, 60, 5};
        PcTensor *p = view(base, 0, 4, pshape, pstr);
        PcTensor *out = new_t(4, pshape, PC_FLOAT32);
        OK(BE->copy(out, p));
        int bad = 0;
        for (int64_t i = 0; i < 120; i++) {
            int64_t l = i, i2 = l % 4, i0, i1, i3;
            l /= 4;
            int64_t j0 = l % 2;
            l /= 2;
            i1 = l % 3;
            i3 = l / 3;
            i0 = j0;
            double ref = (double)(i0 * 60 + i1 * 20 + i2 * 5 + i3);
            if (((float *)pc_tensor_data(out))[i] != (float)ref) bad++;
        }
        CHECK(bad == 0, "permuted 4-d copy: %d mismatches", bad);
        pc_tensor_decref(out);
        pc_tensor_decref(p);
        pc_tensor_decref(base);
    }
}

static void test_fill(void) {
    const int64_t bshape[2] = {4, 6}, vshape[2] = {3, 2}, vstr[2] = {6, 3};
    for (int d = 0; d < PC_NUM_DTYPES; d++) {
        PcTensor *base = new_t(2, bshape, (PcDType)d);
        OK(BE->fill(base, 0.0));
        PcTensor *v = view(base, 1, 2, vshape, vstr); /* strided dst */
        OK(BE->fill(v, 2.5));
        double want = d == PC_INT64 ? 2.0 : d == PC_BOOL ? 1.0 : 2.5;
        int bad = 0;
        for (int64_t i = 0; i < 24; i++) {
            int64_t r = i / 6, c = i % 6;
            bool in = r < 3 && c >= 1 && (c - 1) % 3 == 0;
            if (get(base, i) != (in ? want : 0.0)) bad++;
        }
        CHECK(bad == 0, "fill %s strided: %d mismatches", pc_dtype_name((PcDType)d), bad);
        pc_tensor_decref(v);
        pc_tensor_decref(base);
    }
}

/* ---- unary ---- */

static double gelu_ref(double x) { return 0.5 * x * (1.0 + erf(x / sqrt(2.0))); }

static double unary_ref(PcUnaryOp op, double x, double s) {
    switch (op) {
    case PC_U_NEG: return -x;
    case PC_U_ABS: return fabs(x);
    case PC_U_EXP: return exp(x);
    case PC_U_LOG: return log(x);
    case PC_U_SQRT: return sqrt(x);
    case PC_U_TANH: return tanh(x);
    case PC_U_SIGMOID: return 1.0 / (1.0 + exp(-x));
    case PC_U_RELU: return x < 0 ? 0 : x;
    case PC_U_GELU: return gelu_ref(x);
    case PC_U_POW: return pow(x, s);
    case PC_U_SIGN: return (x > 0) - (x < 0);
    case PC_U_ADD_S: return x + s;
    case PC_U_MUL_S: return x * s;
    case PC_U_RSUB_S: return s - x;
    case PC_U_RDIV_S: return s / x;
    case PC_U_GE_S: return x >= s;
    case PC_U_GT_S: return x > s;
    default: return NAN;
    }
}

static void test_unary(void) {
    const int64_t shp[2] = {6, 9}, tshp[2] = {9, 6}, tstr[2] = {1, 6};
    const int64_t wide[2] = {6, 18}, dstr[2] = {18, 2};
    const double scal[PC_NUM_UNARY] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 3.0, 0, 1.5, -0.75, 2.0,
                                       1.25, 0.25, 0.25};
    for (int di = 0; di < 4; di++) {
        PcDType dt = FLOATS[di];
        for (int op = 0; op < PC_NUM_UNARY; op++) {
            bool positive = op == PC_U_LOG || op == PC_U_SQRT || op == PC_U_POW ||
                            op == PC_U_RDIV_S;
            PcTensor *base = new_t(2, tshp, dt);
            PcTensor *src = view(base, 0, 2, shp, tstr); /* transposed */
            fill_rand(src, 2.0, positive ? 2.5 : 0.0);
            set(src, 0, scal[op]); /* an exact tie for GE/GT */
            if (positive) set(src, 0, 0.5);
            PcTensor *dbase = new_t(2, wide, dt);
            PcTensor *dst = view(dbase, 1, 2, shp, dstr); /* strided dst */
            OK(BE->unary((PcUnaryOp)op, dst, src, scal[op]));
            int bad = 0;
            double worst = 0;
            for (int64_t i = 0; i < 54; i++) {
                double ref = unary_ref((PcUnaryOp)op, get(src, i), scal[op]);
                /* Round the reference like the output is rounded. */
                PcTensor *one = new_t(0, NULL, dt);
                set(one, 0, ref);
                double rr = get(one, 0);
                pc_tensor_decref(one);
                double g = get(dst, i);
                if (!close_to(g, rr, tol_for(dt), tol_for(dt))) {
                    bad++;
                    if (fabs(g - rr) > worst) worst = fabs(g - rr);
                }
            }
            CHECK(bad == 0, "unary op %d %s: %d mismatches (worst %g)", op, pc_dtype_name(dt),
                  bad, worst);
            /* In place, contiguous. */
            PcTensor *c = new_t(2, shp, dt);
            OK(BE->copy(c, src));
            OK(BE->unary((PcUnaryOp)op, c, c, scal[op]));
            bad = 0;
            for (int64_t i = 0; i < 54; i++)
                if (!(get(c, i) == get(dst, i) || (isnan(get(c, i)) && isnan(get(dst, i)))))
                    bad++;
            CHECK(bad == 0, "unary op %d %s in place differs from out of place", op,
                  pc_dtype_name(dt));
            pc_tensor_decref(c);
            pc_tensor_decref(dst);
            pc_tensor_decref(dbase);
            pc_tensor_decref(src);
            pc_tensor_decref(base);
        }
    }
    /* int64 subset. */
    {
        const int64_t n = 5;
        PcTensor *a = new_t(1, &n, PC_INT64), *o = new_t(1, &n, PC_INT64);
        int64_t *ap = pc_tensor_data(a);
        const int64_t *op_ = pc_tensor_data(o);
        const int64_t in[5] = {-3, 0, 2, 7, -1};
        memcpy(ap, in, sizeof in);
        OK(BE->unary(PC_U_ABS, o, a, 0));
        CHECK(op_[0] == 3 && op_[4] == 1 && op_[3] == 7, "int64 abs");
        OK(BE->unary(PC_U_ADD_S, o, a, 4));
        CHECK(op_[0] == 1 && op_[3] == 11, "int64 add_scalar");
        OK(BE->unary(PC_U_MUL_S, o, a, -2));
        CHECK(op_[0] == 6 && op_[2] == -4, "int64 mul_scalar");
        OK(BE->unary(PC_U_GE_S, o, a, 2));
        CHECK(op_[0] == 0 && op_[2] == 1 && op_[3] == 1, "int64 ge_scalar");
        PcStatus st = BE->unary(PC_U_EXP, o, a, 0);
        CHECK(st == PC_ERR_TYPE && strstr(pc_last_error(), "dtype int64 not supported"),
              "int64 exp should be a type error: %d %s", (int)st, pc_last_error());
        PcTensor *bl = new_t(1, &n, PC_BOOL);
        st = BE->unary(PC_U_NEG, bl, bl, 0);
        CHECK(st == PC_ERR_TYPE, "bool neg should be a type error");
        PcTensor *f = new_t(1, &n, PC_FLOAT32);
        st = BE->unary(PC_U_NEG, f, a, 0);
        CHECK(st == PC_ERR_TYPE, "mixed dtypes should be a type error");
        pc_tensor_decref(a);
        pc_tensor_decref(o);
        pc_tensor_decref(bl);
        pc_tensor_decref(f);
    }
    /* 0-d tensors. */
    {
        PcTensor *a = new_t(0, NULL, PC_FLOAT32), *b = new_t(0, NULL, PC_FLOAT32),
                 *o = new_t(0, NULL, PC_FLOAT32);
        set(a, 0, 1.5);
        set(b, 0, 2.0);
        OK(BE->binary(PC_B_MUL, o, a, b, 1.0));
        CHECK(get(o, 0) == 3.0, "0-d mul");
        OK(BE->unary(PC_U_NEG, o, o, 0));
        CHECK(get(o, 0) == -3.0, "0-d neg");
        OK(BE->reduce(PC_R_SUM, o, a));
        CHECK(get(o, 0) == 1.5, "0-d sum");
        pc_tensor_decref(a);
        pc_tensor_decref(b);
        pc_tensor_decref(o);
    }
    /* NaN handling: relu keeps NaN. */
    {
        const int64_t n = 2;
        PcTensor *a = new_t(1, &n, PC_FLOAT32), *o = new_t(1, &n, PC_FLOAT32);
        ((float *)pc_tensor_data(a))[0] = NAN;
        ((float *)pc_tensor_data(a))[1] = -1;
        OK(BE->unary(PC_U_RELU, o, a, 0));
        CHECK(isnan(get(o, 0)) && get(o, 1) == 0, "relu NaN handling");
        pc_tensor_decref(a);
        pc_tensor_decref(o);
    }
}

/* ---- binary ---- */

static double binary_ref(PcBinaryOp op, double a, double b, double al) {
    switch (op) {
    case PC_B_ADD: return a + al * b;
    case PC_B_SUB: return a - al * b;
    case PC_B_MUL: return a * b;
    case PC_B_DIV: return a / b;
    case PC_B_MAXIMUM: return isnan(a) || isnan(b) ? NAN : (a > b ? a : b);
    case PC_B_EQ: return a == b;
    case PC_B_NE: return a != b;
    case PC_B_LT: return a < b;
    case PC_B_LE: return a <= b;
    case PC_B_GT: return a > b;
    case PC_B_GE: return a >= b;
    case PC_B_RELU_BWD: return b > 0 ? a : 0;
    case PC_B_GELU_BWD:
        return a * (0.5 * (1 + erf(b / sqrt(2.0))) + b * exp(-0.5 * b * b) / sqrt(2 * 3.14159265358979323846));
    case PC_B_TANH_BWD: return a * (1 - b * b);
    case PC_B_SIGMOID_BWD: return a * b * (1 - b);
    case PC_B_POW_BWD: return al == 0 ? 0 : a * al * pow(b, al - 1);
    default: return NAN;
    }
}

static void test_binary(void) {
    const int64_t shp[2] = {5, 11}, tshp[2] = {11, 5}, tstr[2] = {1, 5};
    const int64_t bshape[1] = {11}, bstr[2] = {0, 1};
    double alphas[PC_NUM_BINARY];
    for (int op = 0; op < PC_NUM_BINARY; op++) alphas[op] = 1.0;
    alphas[PC_B_ADD] = 0.5;
    alphas[PC_B_SUB] = 2.0;
    alphas[PC_B_POW_BWD] = 3.0;
    for (int di = 0; di < 4; di++) {
        PcDType dt = FLOATS[di];
        for (int op = 0; op < PC_NUM_BINARY; op++) {
            bool pos_b = op == PC_B_DIV || op == PC_B_POW_BWD;
            PcTensor *abase = new_t(2, tshp, dt);
            PcTensor *a = view(abase, 0, 2, shp, tstr); /* transposed */
            fill_rand(a, 2.0, 0.0);
            PcTensor *bv = new_t(1, bshape, dt);
            fill_rand(bv, pos_b ? 1.0 : 2.0, pos_b ? 1.5 : 0.0);
            PcTensor *b = view(bv, 0, 2, shp, bstr); /* broadcast rows */
            set(a, 3, get(b, 3));      /* an equal pair for the comparisons / MAXIMUM */
            PcTensor *dst = new_t(2, shp, dt);
            OK(BE->binary((PcBinaryOp)op, dst, a, b, alphas[op]));
            int bad = 0;
            for (int64_t i = 0; i < 55; i++) {
                double ref = binary_ref((PcBinaryOp)op, get(a, i), get(b, i), alphas[op]);
                PcTensor *one = new_t(0, NULL, dt);
                set(one, 0, ref);
                double rr = get(one, 0);
                pc_tensor_decref(one);
                if (!close_to(get(dst, i), rr, tol_for(dt), 2 * tol_for(dt))) bad++;
            }
            CHECK(bad == 0, "binary op %d %s: %d mismatches", op, pc_dtype_name(dt), bad);
            /* Contiguous fast path, in place on a (dst is a). */
            PcTensor *ac = new_t(2, shp, dt), *bc = new_t(2, shp, dt);
            OK(BE->copy(ac, a));
            OK(BE->copy(bc, b));
            OK(BE->binary((PcBinaryOp)op, ac, ac, bc, alphas[op]));
            bad = 0;
            for (int64_t i = 0; i < 55; i++)
                if (!(get(ac, i) == get(dst, i) || (isnan(get(ac, i)) && isnan(get(dst, i)))))
                    bad++;
            CHECK(bad == 0, "binary op %d %s: contiguous in-place differs (%d)", op,
                  pc_dtype_name(dt), bad);
            pc_tensor_decref(ac);
            pc_tensor_decref(bc);
            pc_tensor_decref(dst);
            pc_tensor_decref(b);
            pc_tensor_decref(bv);
            pc_tensor_decref(a);
            pc_tensor_decref(abase);
        }
    }
    /* Backward formulas against finite differences of the forward kernels (float64). */
    {
        const int64_t n = 64;
        const double h = 1e-6;
        PcTensor *x = new_t(1, &n, PC_FLOAT64), *xp = new_t(1, &n, PC_FLOAT64),
                 *xm = new_t(1, &n, PC_FLOAT64), *fp = new_t(1, &n, PC_FLOAT64),
                 *fm = new_t(1, &n, PC_FLOAT64), *y = new_t(1, &n, PC_FLOAT64),
                 *one = new_t(1, &n, PC_FLOAT64), *g = new_t(1, &n, PC_FLOAT64);
        fill_rand(x, 3.0, 0.0);
        OK(BE->fill(one, 1.0));
        struct { PcUnaryOp f; PcBinaryOp b; bool uses_y; double s; } cases[4] = {
            {PC_U_GELU, PC_B_GELU_BWD, false, 0}, {PC_U_TANH, PC_B_TANH_BWD, true, 0},
            {PC_U_SIGMOID, PC_B_SIGMOID_BWD, true, 0}, {PC_U_POW, PC_B_POW_BWD, false, 3.0}};
        for (int c = 0; c < 4; c++) {
            OK(BE->unary(PC_U_ADD_S, xp, x, h));
            OK(BE->unary(PC_U_ADD_S, xm, x, -h));
            OK(BE->unary(cases[c].f, fp, xp, cases[c].s));
            OK(BE->unary(cases[c].f, fm, xm, cases[c].s));
            OK(BE->unary(cases[c].f, y, x, cases[c].s));
            OK(BE->binary(cases[c].b, g, one, cases[c].uses_y ? y : x, cases[c].s));
            int bad = 0;
            for (int64_t i = 0; i < n; i++) {
                double fd = (get(fp, i) - get(fm, i)) / (2 * h);
                if (!close_to(get(g, i), fd, 1e-7, 1e-6)) bad++;
            }
            CHECK(bad == 0, "backward %d vs finite differences: %d mismatches", c, bad);
        }
        PcTensor *all[8] = {x, xp, xm, fp, fm, y, one, g};
        for (int i = 0; i < 8; i++) pc_tensor_decref(all[i]);
    }
    /* int64 add with alpha, shape mismatch error. */
    {
        const int64_t n = 3, m = 4;
        PcTensor *a = new_t(1, &n, PC_INT64), *b = new_t(1, &n, PC_INT64),
                 *o = new_t(1, &n, PC_INT64), *w = new_t(1, &m, PC_INT64);
        for (int i = 0; i < 3; i++) {
            ((int64_t *)pc_tensor_data(a))[i] = 10 * i;
            ((int64_t *)pc_tensor_data(b))[i] = i + 1;
        }
        OK(BE->binary(PC_B_SUB, o, a, b, 2));
        CHECK(geti(o, 0) == -2 && geti(o, 1) == 6 && geti(o, 2) == 14, "int64 sub alpha");
        OK(BE->binary(PC_B_EQ, o, a, a, 1));
        CHECK(geti(o, 0) == 1 && geti(o, 2) == 1, "int64 eq");
        /* the comparisons, exact where float64 is not: a = {2^62, 2^62 + 1, -2^62},
         * b = {2^62 + 1, 2^62 + 1, -2^62 - 1} */
        const int64_t big = (int64_t)1 << 62;
        const int64_t av[3] = {big, big + 1, -big}, bv[3] = {big + 1, big + 1, -big - 1};
        memcpy(pc_tensor_data(a), av, sizeof av);
        memcpy(pc_tensor_data(b), bv, sizeof bv);
        const struct { PcBinaryOp op; int64_t want[3]; } cmps[6] = {
            {PC_B_EQ, {0, 1, 0}}, {PC_B_NE, {1, 0, 1}}, {PC_B_LT, {1, 0, 0}},
            {PC_B_LE, {1, 1, 0}}, {PC_B_GT, {0, 0, 1}}, {PC_B_GE, {0, 1, 1}}};
        for (int k = 0; k < 6; k++) {
            OK(BE->binary(cmps[k].op, o, a, b, 1));
            CHECK(geti(o, 0) == cmps[k].want[0] && geti(o, 1) == cmps[k].want[1] &&
                      geti(o, 2) == cmps[k].want[2],
                  "int64 %s: got %lld %lld %lld", pc_binary_op_name(cmps[k].op),
                  (long long)geti(o, 0), (long long)geti(o, 1), (long long)geti(o, 2));
        }
        PcStatus st = BE->binary(PC_B_ADD, w, a, b, 1);
        CHECK(st == PC_ERR_INVALID && strstr(pc_last_error(), "(4,)"),
              "shape mismatch message: %s", pc_last_error());
        st = BE->binary(PC_B_DIV, o, a, b, 1);
        CHECK(st == PC_ERR_TYPE, "int64 div should be a type error");
        pc_tensor_decref(a);
        pc_tensor_decref(b);
        pc_tensor_decref(o);
        pc_tensor_decref(w);
    }
}

/* ---- reductions ---- */

static void test_reduce(void) {
    const int64_t sshape[3] = {3, 4, 5};
    const int64_t outs[6][3] = {{1, 1, 1}, {3, 1, 5}, {1, 4, 1}, {3, 4, 1}, {1, 4, 5}, {3, 4, 5}};
    const PcDType dts[5] = {PC_FLOAT32, PC_FLOAT64, PC_FLOAT16, PC_BFLOAT16, PC_INT64};
    for (int di = 0; di < 5; di++) {
        PcDType dt = dts[di];
        /* src: a permuted view (strides not row-major) of a (5, 3, 4) buffer. */
        const int64_t bshape[3] = {5, 3, 4}, pstr[3] = {4, 1, 12};
        PcTensor *base = new_t(3, bshape, dt);
        PcTensor *src = view(base, 0, 3, sshape, pstr);
        fill_rand(src, dt == PC_INT64 ? 50.0 : 2.0, 0.0);
        for (int op = 0; op < PC_NUM_REDUCE; op++) {
            if (dt == PC_INT64 && op != PC_R_SUM) {
                PcTensor *o = new_t(3, outs[0], dt);
                CHECK(BE->reduce((PcReduceOp)op, o, src) == PC_ERR_TYPE, "int64 reduce %d", op);
                pc_tensor_decref(o);
                continue;
            }
            for (int k = 0; k < 6; k++) {
                PcTensor *o = new_t(3, outs[k], dt);
                OK(BE->reduce((PcReduceOp)op, o, src));
                int bad = 0;
                int64_t no = pc_tensor_numel(o);
                for (int64_t j = 0; j < no; j++) {
                    int64_t oi[3] = {j / (outs[k][1] * outs[k][2]),
                                     (j / outs[k][2]) % outs[k][1], j % outs[k][2]};
                    double acc = op == PC_R_MAX ? -INFINITY : 0;
                    int cnt = 0;
                    for (int64_t i = 0; i < 60; i++) {
                        int64_t si[3] = {i / 20, (i / 5) % 4, i % 5};
                        bool hit = true;
                        for (int d = 0; d < 3; d++)
                            if (outs[k][d] != 1 && si[d] != oi[d]) hit = false;
                        if (!hit) continue;
                        double v = get(src, i);
                        acc = op == PC_R_MAX ? (v > acc ? v : acc) : acc + v;
                        cnt++;
                    }
                    if (op == PC_R_MEAN) acc /= cnt;
                    double t = dt == PC_INT64 ? 0 : 2 * tol_for(dt);
                    if (!close_to(get(o, j), acc, t, t)) bad++;
                }
                CHECK(bad == 0, "reduce op %d %s out (%lld,%lld,%lld): %d mismatches", op,
                      pc_dtype_name(dt), (long long)outs[k][0], (long long)outs[k][1],
                      (long long)outs[k][2], bad);
                pc_tensor_decref(o);
            }
        }
        pc_tensor_decref(src);
        pc_tensor_decref(base);
    }
    /* float32 sums accumulate in float64: 2^24 + many ones is exact. */
    {
        const int64_t n = 1 << 20, one = 1;
        PcTensor *x = new_t(1, &n, PC_FLOAT32), *o = new_t(1, &one, PC_FLOAT32);
        OK(BE->fill(x, 1.0));
        ((float *)pc_tensor_data(x))[0] = 16777216.0f;
        OK(BE->reduce(PC_R_SUM, o, x));
        /* A float32 running sum would stay at 2^24; the exact sum rounds to 2^24 + 2^20. */
        CHECK(get(o, 0) == (double)(float)(16777216.0 + (double)(n - 1)),
              "float32 sum accuracy: %.1f", get(o, 0));
        pc_tensor_decref(x);
        pc_tensor_decref(o);
    }
    /* NaN propagates through max; empty reductions. */
    {
        const int64_t s2[2] = {2, 3}, o2[2] = {2, 1}, e2[2] = {0, 3}, eo[2] = {1, 3};
        PcTensor *x = new_t(2, s2, PC_FLOAT32), *o = new_t(2, o2, PC_FLOAT32);
        fill_rand(x, 1.0, 0.0);
        set(x, 4, NAN);
        OK(BE->reduce(PC_R_MAX, o, x));
        CHECK(!isnan(get(o, 0)) && isnan(get(o, 1)), "max NaN propagation");
        PcTensor *e = new_t(2, e2, PC_FLOAT32), *oe = new_t(2, eo, PC_FLOAT32);
        OK(BE->reduce(PC_R_SUM, oe, e));
        CHECK(get(oe, 0) == 0 && get(oe, 2) == 0, "empty sum is 0");
        OK(BE->reduce(PC_R_MEAN, oe, e));
        CHECK(isnan(get(oe, 1)), "empty mean is NaN");
        CHECK(BE->reduce(PC_R_MAX, oe, e) == PC_ERR_INVALID, "empty max is an error");
        CHECK(BE->reduce(PC_R_SUM, o, e) == PC_ERR_INVALID, "bad keepdim shape is an error");
        pc_tensor_decref(x);
        pc_tensor_decref(o);
        pc_tensor_decref(e);
        pc_tensor_decref(oe);
    }
}

static void test_dim_ops(void) {
    /* max_dim over dim 1 of a transposed (4, 6) view, ties and a NaN. */
    const int64_t shp[2] = {4, 6}, tshp[2] = {6, 4}, tstr[2] = {1, 4}, oshp[2] = {4, 1};
    for (int di = 0; di < 4; di++) {
        PcDType dt = FLOATS[di];
        PcTensor *base = new_t(2, tshp, dt);
        PcTensor *x = view(base, 0, 2, shp, tstr);
        fill_rand(x, 1.0, 0.0);
        set(x, 1, 5.0);
        set(x, 4, 5.0); /* row 0: tie at 1 and 4 -> 1 */
        set(x, 8, NAN); /* row 1: NaN at column 2 */
        set(x, 10, 9.0);
        PcTensor *v = new_t(2, oshp, dt), *ix = new_t(2, oshp, PC_INT64);
        OK(BE->max_dim(v, ix, x, 1));
        CHECK(geti(ix, 0) == 1 && get(v, 0) == 5.0, "max_dim tie %s: %lld", pc_dtype_name(dt),
              (long long)geti(ix, 0));
        CHECK(geti(ix, 1) == 2 && isnan(get(v, 1)), "max_dim NaN %s", pc_dtype_name(dt));
        for (int r = 2; r < 4; r++) {
            int64_t best = 0;
            for (int c = 1; c < 6; c++)
                if (get(x, r * 6 + c) > get(x, r * 6 + best)) best = c;
            CHECK(geti(ix, r) == best && get(v, r) == get(x, r * 6 + best), "max_dim row %d", r);
        }
        /* dim 0 */
        const int64_t o0[2] = {1, 6};
        PcTensor *v0 = new_t(2, o0, dt), *i0 = new_t(2, o0, PC_INT64);
        OK(BE->max_dim(v0, i0, x, 0));
        for (int c = 0; c < 6; c++) {
            if (c == 2) continue; /* NaN column */
            int64_t best = 0;
            for (int r = 1; r < 4; r++)
                if (get(x, r * 6 + c) > get(x, best * 6 + c)) best = r;
            CHECK(geti(i0, c) == best, "max_dim dim0 col %d", c);
        }
        pc_tensor_decref(v0);
        pc_tensor_decref(i0);
        pc_tensor_decref(v);
        pc_tensor_decref(ix);

        /* gather along dim 1 and scatter_add back. */
        const int64_t ishp[2] = {4, 3};
        PcTensor *idx = new_t(2, ishp, PC_INT64), *g = new_t(2, ishp, dt);
        for (int i = 0; i < 12; i++) ((int64_t *)pc_tensor_data(idx))[i] = (i * 5 + 1) % 6;
        ((int64_t *)pc_tensor_data(idx))[1] = ((int64_t *)pc_tensor_data(idx))[0]; /* dup */
        set(x, 8, 0.25); /* remove the NaN */
        OK(BE->gather_dim(g, x, idx, 1));
        int bad = 0;
        for (int i = 0; i < 12; i++)
            if (get(g, i) != get(x, (i / 3) * 6 + geti(idx, i))) bad++;
        CHECK(bad == 0, "gather_dim %s: %d mismatches", pc_dtype_name(dt), bad);
        PcTensor *acc = new_t(2, shp, dt);
        OK(BE->fill(acc, 0.0));
        OK(BE->scatter_add_dim(acc, idx, g, 1));
        bad = 0;
        for (int r = 0; r < 4; r++)
            for (int c = 0; c < 6; c++) {
                double ref = 0;
                for (int j = 0; j < 3; j++)
                    if (geti(idx, r * 3 + j) == c) ref += get(g, r * 3 + j);
                if (!close_to(get(acc, r * 6 + c), ref, tol_for(dt), tol_for(dt))) bad++;
            }
        CHECK(bad == 0, "scatter_add_dim %s: %d mismatches", pc_dtype_name(dt), bad);
        ((int64_t *)pc_tensor_data(idx))[5] = 6;
        PcStatus st = BE->gather_dim(g, x, idx, 1);
        CHECK(st == PC_ERR_INDEX && strstr(pc_last_error(), "index 6"), "gather bounds: %s",
              pc_last_error());
        ((int64_t *)pc_tensor_data(idx))[5] = -1;
        double before = get(acc, 0);
        CHECK(BE->scatter_add_dim(acc, idx, g, 1) == PC_ERR_INDEX, "scatter bounds");
        CHECK(get(acc, 0) == before, "scatter_add wrote before failing");
        pc_tensor_decref(acc);
        pc_tensor_decref(idx);
        pc_tensor_decref(g);
        pc_tensor_decref(x);
        pc_tensor_decref(base);
    }
}

/* ---- gemm ---- */

static void test_gemm(void) {
    const int64_t M = 13, N = 9, K = 7, B = 3, PAD = 2;
    for (int di = 0; di < 4; di++) {
        PcDType dt = FLOATS[di];
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++)
                for (int epi = 0; epi < 2; epi++) {
                    int64_t ra = ta ? K : M, ca = ta ? M : K, rb = tb ? N : K, cb = tb ? K : N;
                    int64_t lda = ca + PAD, ldb = cb + PAD, ldc = N + PAD;
                    int64_t sa = ra * lda, sb = rb * ldb, sc = M * ldc;
                    int64_t na = B * sa, nb = B * sb, nc = B * sc;
                    PcTensor *A = new_t(1, &na, dt), *Bm = new_t(1, &nb, dt),
                             *C = new_t(1, &nc, dt), *C0 = new_t(1, &nc, dt),
                             *bias = new_t(1, &N, dt);
                    fill_rand(A, 1.0, 0.0);
                    fill_rand(Bm, 1.0, 0.0);
                    fill_rand(C, 1.0, 0.0);
                    fill_rand(bias, 1.0, 0.0);
                    OK(BE->copy(C0, C));
                    PcGemmArgs g = {.dtype = dt, .trans_a = ta, .trans_b = tb, .m = M, .n = N,
                                    .k = K, .alpha = 0.7, .beta = epi ? 0.3 : 0.0,
                                    .a = pc_tensor_data(A), .lda = lda, .stride_a = sa,
                                    .b = pc_tensor_data(Bm), .ldb = ldb, .stride_b = sb,
                                    .c = pc_tensor_data(C), .ldc = ldc, .stride_c = sc,
                                    .batch = B, .bias = epi ? pc_tensor_data(bias) : NULL,
                                    .relu = epi};
                    OK(BE->gemm(CPU, &g));
                    int bad = 0;
                    double atol = dt == PC_FLOAT64 ? 1e-12 : dt == PC_FLOAT32 ? 1e-5
                                : dt == PC_FLOAT16 ? 4e-3 : 3e-2;
                    for (int64_t bi = 0; bi < B; bi++)
                        for (int64_t i = 0; i < M; i++)
                            for (int64_t j = 0; j < N; j++) {
                                double s = 0;
                                for (int64_t l = 0; l < K; l++) {
                                    double av = get(A, bi * sa + (ta ? l * lda + i : i * lda + l));
                                    double bv = get(Bm, bi * sb + (tb ? j * ldb + l : l * ldb + j));
                                    s += av * bv;
                                }
                                int64_t ci = bi * sc + i * ldc + j;
                                double ref = 0.7 * s + (epi ? 0.3 * get(C0, ci) : 0.0);
                                if (epi) ref += get(bias, j);
                                if (epi && ref < 0) ref = 0;
                                if (!close_to(get(C, ci), ref, atol, atol)) bad++;
                            }
                    /* Padding columns are untouched. */
                    for (int64_t bi = 0; bi < B; bi++)
                        for (int64_t i = 0; i < M; i++)
                            for (int64_t j = N; j < ldc; j++) {
                                int64_t ci = bi * sc + i * ldc + j;
                                if (get(C, ci) != get(C0, ci)) bad++;
                            }
                    CHECK(bad == 0, "gemm %s ta=%d tb=%d epi=%d: %d mismatches",
                          pc_dtype_name(dt), ta, tb, epi, bad);
                    pc_tensor_decref(A);
                    pc_tensor_decref(Bm);
                    pc_tensor_decref(C);
                    pc_tensor_decref(C0);
                    pc_tensor_decref(bias);
                }
    }
    /* k == 0: C = beta * C + bias; broadcast (stride 0) B across the batch. */
    {
        const int64_t n6 = 6;
        PcTensor *C = new_t(1, &n6, PC_FLOAT32), *bias = new_t(1, &n6, PC_FLOAT32);
        OK(BE->fill(C, 2.0));
        OK(BE->fill(bias, 1.0));
        float dummy = 0;
        PcGemmArgs g = {.dtype = PC_FLOAT32, .m = 2, .n = 3, .k = 0, .alpha = 1, .beta = 0.5,
                        .a = &dummy, .lda = 0, .b = &dummy, .ldb = 3, .c = pc_tensor_data(C),
                        .ldc = 3, .batch = 1, .bias = pc_tensor_data(bias)};
        OK(BE->gemm(CPU, &g));
        CHECK(get(C, 0) == 2.0 && get(C, 5) == 2.0, "gemm k=0: %g", get(C, 0));
        g.ldc = 2; /* too small */
        CHECK(BE->gemm(CPU, &g) == PC_ERR_INVALID, "gemm bad ldc");
        pc_tensor_decref(C);
        pc_tensor_decref(bias);
    }
}

/* ---- softmax / layer_norm ---- */

static void test_softmax(void) {
    const int64_t R = 6, D = 10, shp[2] = {6, 10};
    for (int di = 0; di < 4; di++) {
        PcDType dt = FLOATS[di];
        for (int lg = 0; lg < 2; lg++) {
            PcTensor *x = new_t(2, shp, dt), *y = new_t(2, shp, dt), *dy = new_t(2, shp, dt),
                     *dx = new_t(2, shp, dt);
            fill_rand(x, 3.0, 0.0);
            for (int j = 0; j < D; j++) set(x, 1 * D + j, 1000.0 + j); /* large row */
            set(x, 2 * D + 3, -INFINITY);
            fill_rand(dy, 1.0, 0.0);
            OK(BE->softmax(y, x, lg));
            int bad = 0;
            double t = dt == PC_FLOAT32 ? 1e-6 : 2 * tol_for(dt);
            for (int64_t r = 0; r < R; r++) {
                double m = -INFINITY, s = 0;
                for (int j = 0; j < D; j++) m = fmax(m, get(x, r * D + j));
                for (int j = 0; j < D; j++) s += exp(get(x, r * D + j) - m);
                for (int j = 0; j < D; j++) {
                    double ref = lg ? get(x, r * D + j) - m - log(s)
                                    : exp(get(x, r * D + j) - m) / s;
                    if (!close_to(get(y, r * D + j), ref, t, t)) bad++;
                }
            }
            CHECK(bad == 0, "%s %s forward: %d mismatches", lg ? "log_softmax" : "softmax",
                  pc_dtype_name(dt), bad);
            OK(BE->softmax_backward(dx, dy, y, lg));
            bad = 0;
            for (int64_t r = 0; r < R; r++) {
                double s = 0;
                for (int j = 0; j < D; j++)
                    s += lg ? get(dy, r * D + j) : get(dy, r * D + j) * get(y, r * D + j);
                for (int j = 0; j < D; j++) {
                    double yv = get(y, r * D + j), g = get(dy, r * D + j);
                    double ref = lg ? g - exp(yv) * s : yv * (g - s);
                    if (!close_to(get(dx, r * D + j), ref, 2 * t, 2 * t)) bad++;
                }
            }
            CHECK(bad == 0, "%s %s backward: %d mismatches", lg ? "log_softmax" : "softmax",
                  pc_dtype_name(dt), bad);
            /* in place forward */
            OK(BE->softmax(x, x, lg));
            bad = 0;
            for (int64_t i = 0; i < R * D; i++)
                if (get(x, i) != get(y, i)) bad++;
            CHECK(bad == 0, "softmax in place %s", pc_dtype_name(dt));
            pc_tensor_decref(x);
            pc_tensor_decref(y);
            pc_tensor_decref(dy);
            pc_tensor_decref(dx);
        }
    }
    /* Finite differences of L = sum(r * softmax(x)) in float64. */
    for (int lg = 0; lg < 2; lg++) {
        const int64_t s1[2] = {2, 7};
        PcTensor *x = new_t(2, s1, PC_FLOAT64), *y = new_t(2, s1, PC_FLOAT64),
                 *r = new_t(2, s1, PC_FLOAT64), *dx = new_t(2, s1, PC_FLOAT64);
        fill_rand(x, 2.0, 0.0);
        fill_rand(r, 1.0, 0.0);
        OK(BE->softmax(y, x, lg));
        OK(BE->softmax_backward(dx, r, y, lg));
        int bad = 0;
        for (int64_t i = 0; i < 14; i++) {
            double x0 = get(x, i), lp = 0, lm = 0, h = 1e-6;
            set(x, i, x0 + h);
            BE->softmax(y, x, lg);
            for (int j = 0; j < 14; j++) lp += get(r, j) * get(y, j);
            set(x, i, x0 - h);
            BE->softmax(y, x, lg);
            for (int j = 0; j < 14; j++) lm += get(r, j) * get(y, j);
            set(x, i, x0);
            if (!close_to(get(dx, i), (lp - lm) / (2 * h), 1e-7, 1e-6)) bad++;
        }
        CHECK(bad == 0, "softmax log=%d backward vs finite differences: %d", lg, bad);
        pc_tensor_decref(x);
        pc_tensor_decref(y);
        pc_tensor_decref(r);
        pc_tensor_decref(dx);
    }
}

static double ln_loss(PcTensor *y, PcTensor *x, PcTensor *w, PcTensor *b, PcTensor *r) {
    BE->layer_norm(y, NULL, NULL, x, w, b, 1e-5);
    double l = 0;
    for (int64_t i = 0; i < pc_tensor_numel(y); i++) l += get(r, i) * get(y, i);
    return l;
}

static void test_layer_norm(void) {
    const int64_t R = 5, D = 8, shp[2] = {5, 8};
    for (int di = 0; di < 4; di++) {
        PcDType dt = FLOATS[di];
        PcDType sdt = dt == PC_FLOAT64 ? PC_FLOAT64 : PC_FLOAT32;
        PcTensor *x = new_t(2, shp, dt), *y = new_t(2, shp, dt), *w = new_t(1, &D, dt),
                 *b = new_t(1, &D, dt), *mean = new_t(1, &R, sdt), *rstd = new_t(1, &R, sdt);
        fill_rand(x, 2.0, 0.5);
        fill_rand(w, 1.0, 1.0);
        fill_rand(b, 1.0, 0.0);
        OK(BE->layer_norm(y, mean, rstd, x, w, b, 1e-5));
        int bad = 0;
        for (int64_t r = 0; r < R; r++) {
            double mu = 0, var = 0;
            for (int j = 0; j < D; j++) mu += get(x, r * D + j);
            mu /= D;
            for (int j = 0; j < D; j++) var += pow(get(x, r * D + j) - mu, 2);
            double rs = 1 / sqrt(var / D + 1e-5);
            if (!close_to(get(mean, r), mu, 1e-6, 1e-6) || !close_to(get(rstd, r), rs, 1e-6, 1e-6))
                bad++;
            for (int j = 0; j < D; j++) {
                double ref = (get(x, r * D + j) - mu) * rs * get(w, j) + get(b, j);
                if (!close_to(get(y, r * D + j), ref, 2 * tol_for(dt), 2 * tol_for(dt))) bad++;
            }
        }
        CHECK(bad == 0, "layer_norm %s forward: %d mismatches", pc_dtype_name(dt), bad);
        pc_tensor_decref(x);
        pc_tensor_decref(y);
        pc_tensor_decref(w);
        pc_tensor_decref(b);
        pc_tensor_decref(mean);
        pc_tensor_decref(rstd);
    }
    /* Backward vs central differences (float64), with and without weight. */
    for (int with_w = 0; with_w < 2; with_w++) {
        PcTensor *x = new_t(2, shp, PC_FLOAT64), *y = new_t(2, shp, PC_FLOAT64),
                 *r = new_t(2, shp, PC_FLOAT64), *dx = new_t(2, shp, PC_FLOAT64),
                 *w = new_t(1, &D, PC_FLOAT64), *b = new_t(1, &D, PC_FLOAT64),
                 *dw = new_t(1, &D, PC_FLOAT64), *db = new_t(1, &D, PC_FLOAT64),
                 *mean = new_t(1, &R, PC_FLOAT64), *rstd = new_t(1, &R, PC_FLOAT64);
        fill_rand(x, 2.0, 0.3);
        fill_rand(r, 1.0, 0.0);
        fill_rand(w, 1.0, 1.0);
        fill_rand(b, 1.0, 0.0);
        PcTensor *wp = with_w ? w : NULL;
        OK(BE->layer_norm(y, mean, rstd, x, wp, b, 1e-5));
        OK(BE->layer_norm_backward(dx, with_w ? dw : NULL, db, r, x, mean, rstd, wp));
        const double h = 1e-6;
        int bad = 0;
        for (int64_t i = 0; i < R * D; i++) {
            double v = get(x, i);
            set(x, i, v + h);
            double lp = ln_loss(y, x, wp, b, r);
            set(x, i, v - h);
            double lm = ln_loss(y, x, wp, b, r);
            set(x, i, v);
            if (!close_to(get(dx, i), (lp - lm) / (2 * h), 1e-6, 1e-5)) bad++;
        }
        CHECK(bad == 0, "layer_norm dx vs finite differences (w=%d): %d mismatches", with_w, bad);
        bad = 0;
        for (int64_t j = 0; j < D; j++) {
            PcTensor *ps[2] = {w, b};
            PcTensor *gs[2] = {dw, db};
            for (int q = with_w ? 0 : 1; q < 2; q++) {
                double v = get(ps[q], j);
                set(ps[q], j, v + h);
                double lp = ln_loss(y, x, wp, b, r);
                set(ps[q], j, v - h);
                double lm = ln_loss(y, x, wp, b, r);
                set(ps[q], j, v);
                if (!close_to(get(gs[q], j), (lp - lm) / (2 * h), 1e-6, 1e-5)) bad++;
            }
        }
        CHECK(bad == 0, "layer_norm dw/db vs finite differences (w=%d): %d mismatches", with_w,
              bad);
        /* dx NULL still gives the same dw/db. */
        PcTensor *dw2 = new_t(1, &D, PC_FLOAT64), *db2 = new_t(1, &D, PC_FLOAT64);
        OK(BE->layer_norm_backward(NULL, dw2, db2, r, x, mean, rstd, w));
        PcTensor *dw3 = new_t(1, &D, PC_FLOAT64);
        OK(BE->layer_norm_backward(dx, dw3, NULL, r, x, mean, rstd, w));
        bad = 0;
        for (int j = 0; j < D; j++)
            if (get(dw2, j) != get(dw3, j) || get(db2, j) != get(db, j)) bad++;
        CHECK(bad == 0, "layer_norm_backward optional outputs");
        PcTensor *all[13] = {x, y, r, dx, w, b, dw, db, mean, rstd, dw2, db2, dw3};
        for (int i = 0; i < 13; i++) pc_tensor_decref(all[i]);
    }
    /* float32 backward agrees with float64 backward. */
    {
        PcTensor *x = new_t(2, shp, PC_FLOAT32), *y = new_t(2, shp, PC_FLOAT32),
                 *dy = new_t(2, shp, PC_FLOAT32), *dx = new_t(2, shp, PC_FLOAT32),
                 *w = new_t(1, &D, PC_FLOAT32), *dw = new_t(1, &D, PC_FLOAT32),
                 *db = new_t(1, &D, PC_FLOAT32), *mean = new_t(1, &R, PC_FLOAT32),
                 *rstd = new_t(1, &R, PC_FLOAT32);
        PcTensor *x8 = new_t(2, shp, PC_FLOAT64), *y8 = new_t(2, shp, PC_FLOAT64),
                 *dy8 = new_t(2, shp, PC_FLOAT64), *dx8 = new_t(2, shp, PC_FLOAT64),
                 *w8 = new_t(1, &D, PC_FLOAT64), *dw8 = new_t(1, &D, PC_FLOAT64),
                 *db8 = new_t(1, &D, PC_FLOAT64), *mean8 = new_t(1, &R, PC_FLOAT64),
                 *rstd8 = new_t(1, &R, PC_FLOAT64);
        fill_rand(x, 2.0, 0.0);
        fill_rand(dy, 1.0, 0.0);
        fill_rand(w, 1.0, 1.0);
        OK(BE->copy(x8, x));
        OK(BE->copy(dy8, dy));
        OK(BE->copy(w8, w));
        OK(BE->layer_norm(y, mean, rstd, x, w, NULL, 1e-5));
        OK(BE->layer_norm(y8, mean8, rstd8, x8, w8, NULL, 1e-5));
        OK(BE->layer_norm_backward(dx, dw, db, dy, x, mean, rstd, w));
        OK(BE->layer_norm_backward(dx8, dw8, db8, dy8, x8, mean8, rstd8, w8));
        int bad = 0;
        for (int64_t i = 0; i < R * D; i++)
            if (!close_to(get(dx, i), get(dx8, i), 1e-5, 1e-5)) bad++;
        for (int64_t j = 0; j < D; j++)
            if (!close_to(get(dw, j), get(dw8, j), 1e-5, 1e-5) ||
                !close_to(get(db, j), get(db8, j), 1e-5, 1e-5))
                bad++;
        CHECK(bad == 0, "layer_norm float32 backward vs float64: %d", bad);
        PcTensor *all[18] = {x, y, dy, dx, w, dw, db, mean, rstd,
                             x8, y8, dy8, dx8, w8, dw8, db8, mean8, rstd8};
        for (int i = 0; i < 18; i++) pc_tensor_decref(all[i]);
    }
}

/* ---- random ---- */

static void test_random(void) {
    /* Random123 known-answer vectors for Philox4x32-10. */
    {
        const uint32_t ctr[3][4] = {{0, 0, 0, 0},
                                    {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
                                    {0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}};
        const uint32_t key[3][2] = {{0, 0}, {0xffffffffu, 0xffffffffu},
                                    {0xa4093822u, 0x299f31d0u}};
        const uint32_t want[3][4] = {{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u},
                                     {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu},
                                     {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}};
        for (int i = 0; i < 3; i++) {
            uint32_t out[4];
            pc_philox4x32_10(ctr[i], key[i], out);
            CHECK(memcmp(out, want[i], sizeof out) == 0,
                  "philox KAT %d: %08x %08x %08x %08x", i, out[0], out[1], out[2], out[3]);
        }
    }
    const int64_t n = 100000;
    PcTensor *u = new_t(1, &n, PC_FLOAT32);
    OK(BE->random(u, PC_RAND_UNIFORM, 0.0, 1.0, 0, 0));
    printf("philox uniform float32, seed 0 offset 0:");
    for (int i = 0; i < 8; i++) printf(" %.9g", get(u, i));
    printf("\n");
    {
        /* element 0 by hand from the specification */
        uint32_t x0, x1;
        pc_philox_pair(0, 0, &x0, &x1);
        double ref = (double)((((uint64_t)x0 << 32) | x1) >> 11) * 0x1p-53;
        CHECK(get(u, 0) == (double)(float)ref, "uniform element 0 vs specification");
    }
    double s = 0, s2 = 0;
    int out = 0;
    for (int64_t i = 0; i < n; i++) {
        double v = get(u, i);
        if (!(v >= 0 && v < 1)) out++;
        s += v;
        s2 += v * v;
    }
    CHECK(out == 0, "uniform: %d values outside [0, 1)", out);
    double mu = s / n, var = s2 / n - mu * mu;
    CHECK(fabs(mu - 0.5) < 0.005 && fabs(var - 1.0 / 12) < 0.003, "uniform mean %g var %g", mu,
          var);
    /* Offsets compose: elements [5, 10) of one call == a call at offset 5. */
    {
        const int64_t m = 5;
        PcTensor *part = new_t(1, &m, PC_FLOAT32);
        OK(BE->random(part, PC_RAND_UNIFORM, 0.0, 1.0, 0, 5));
        int bad = 0;
        for (int i = 0; i < 5; i++)
            if (get(part, i) != get(u, 5 + i)) bad++;
        CHECK(bad == 0, "random offset composition");
        OK(BE->random(part, PC_RAND_UNIFORM, 0.0, 1.0, 1, 5));
        CHECK(get(part, 0) != get(u, 5), "a different seed gives different numbers");
        pc_tensor_decref(part);
    }
    PcTensor *z = new_t(1, &n, PC_FLOAT64);
    OK(BE->random(z, PC_RAND_NORMAL, 2.0, 3.0, 1234, 77));
    s = s2 = 0;
    for (int64_t i = 0; i < n; i++) {
        double v = (get(z, i) - 2.0) / 3.0;
        s += v;
        s2 += v * v;
    }
    mu = s / n;
    double sd = sqrt(s2 / n - mu * mu);
    printf("philox normal float64 (standardised), 1e5 samples: mean %.5f std %.5f\n", mu, sd);
    CHECK(fabs(mu) < 0.015 && fabs(sd - 1) < 0.015, "normal mean %g std %g", mu, sd);
    /* Half dtypes and a [2, 5) range. */
    {
        const int64_t m = 1000;
        for (int di = 0; di < 4; di++) {
            PcTensor *t = new_t(1, &m, FLOATS[di]);
            OK(BE->random(t, PC_RAND_UNIFORM, 2.0, 5.0, 9, 0));
            int bad = 0;
            for (int64_t i = 0; i < m; i++)
                if (!(get(t, i) >= 2.0 && get(t, i) <= 5.0)) bad++;
            CHECK(bad == 0, "uniform [2, 5) %s: %d outside", pc_dtype_name(FLOATS[di]), bad);
            pc_tensor_decref(t);
        }
        PcTensor *ti = new_t(1, &m, PC_INT64);
        CHECK(BE->random(ti, PC_RAND_UNIFORM, 0, 1, 0, 0) == PC_ERR_TYPE, "random int64");
        pc_tensor_decref(ti);
    }
    pc_tensor_decref(u);
    pc_tensor_decref(z);
}

/* ---- indexing ---- */

static void test_index(void) {
    const int64_t sshape[2] = {5, 3}, ishape = 4, dshape[2] = {4, 3};
    for (int di = 0; di < 4; di++) {
        PcDType dt = FLOATS[di];
        PcTensor *src = new_t(2, sshape, dt), *idx = new_t(1, &ishape, PC_INT64),
                 *dst = new_t(2, dshape, dt);
        fill_rand(src, 1.0, 0.0);
        const int64_t iv[4] = {4, 0, 4, 2};
        memcpy(pc_tensor_data(idx), iv, sizeof iv);
        OK(BE->index_select0(dst, src, idx));
        int bad = 0;
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 3; j++)
                if (get(dst, i * 3 + j) != get(src, iv[i] * 3 + j)) bad++;
        CHECK(bad == 0, "index_select0 %s", pc_dtype_name(dt));
        PcTensor *acc = new_t(2, sshape, dt);
        OK(BE->fill(acc, 1.0));
        OK(BE->index_add0(acc, idx, dst));
        bad = 0;
        for (int r = 0; r < 5; r++)
            for (int j = 0; j < 3; j++) {
                double ref = 1.0;
                for (int i = 0; i < 4; i++)
                    if (iv[i] == r) ref += get(dst, i * 3 + j);
                if (!close_to(get(acc, r * 3 + j), ref, tol_for(dt), 2 * tol_for(dt))) bad++;
            }
        CHECK(bad == 0, "index_add0 %s (duplicates accumulate)", pc_dtype_name(dt));
        ((int64_t *)pc_tensor_data(idx))[2] = 5;
        PcStatus st = BE->index_select0(dst, src, idx);
        CHECK(st == PC_ERR_INDEX, "index_select0 out of range: %d", (int)st);
        ((int64_t *)pc_tensor_data(idx))[2] = -1;
        double before = get(acc, 0);
        CHECK(BE->index_add0(acc, idx, dst) == PC_ERR_INDEX, "index_add0 negative index");
        CHECK(get(acc, 0) == before, "index_add0 wrote before failing");
        pc_tensor_decref(src);
        pc_tensor_decref(idx);
        pc_tensor_decref(dst);
        pc_tensor_decref(acc);
    }
}

/* ---- optimisers ---- */

static void test_optim(void) {
    const int64_t n0 = 7, n1 = 3;
    const int64_t ns[2] = {n0, n1};
    for (int variant = 0; variant < 4; variant++) {
        PcSgdArgs a = {.lr = 0.1, .momentum = variant ? 0.9 : 0.0, .dampening = 0.1 * (variant == 2),
                       .weight_decay = 0.01, .nesterov = variant == 3, .maximize = variant == 2};
        PcTensor *p[2], *g[2], *b[2];
        double rp[2][7], rb[2][7];
        for (int t = 0; t < 2; t++) {
            p[t] = new_t(1, &ns[t], PC_FLOAT64);
            g[t] = new_t(1, &ns[t], PC_FLOAT64);
            b[t] = new_t(1, &ns[t], PC_FLOAT64);
            fill_rand(p[t], 1.0, 0.0);
            for (int i = 0; i < ns[t]; i++) rp[t][i] = get(p[t], i);
        }
        for (int step = 0; step < 3; step++) {
            a.first_step = step == 0;
            for (int t = 0; t < 2; t++) fill_rand(g[t], 1.0, 0.0);
            for (int t = 0; t < 2; t++)
                for (int i = 0; i < ns[t]; i++) {
                    double gr = get(g[t], i);
                    if (a.maximize) gr = -gr;
                    gr += a.weight_decay * rp[t][i];
                    if (a.momentum != 0) {
                        rb[t][i] = step == 0 ? gr : a.momentum * rb[t][i] + (1 - a.dampening) * gr;
                        gr = a.nesterov ? gr + a.momentum * rb[t][i] : rb[t][i];
                    }
                    rp[t][i] -= a.lr * gr;
                }
            OK(BE->sgd_step(2, p, g, a.momentum != 0 ? b : NULL, &a));
        }
        int bad = 0;
        for (int t = 0; t < 2; t++)
            for (int i = 0; i < ns[t]; i++)
                if (!close_to(get(p[t], i), rp[t][i], 1e-14, 1e-12)) bad++;
        CHECK(bad == 0, "sgd variant %d: %d mismatches", variant, bad);
        for (int t = 0; t < 2; t++) {
            pc_tensor_decref(p[t]);
            pc_tensor_decref(g[t]);
            pc_tensor_decref(b[t]);
        }
    }
    for (int di = 0; di < 4; di++) {
        PcDType dt = FLOATS[di];
        for (int maximize = 0; maximize < 2; maximize++) {
            PcAdamWArgs a = {.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8,
                             .weight_decay = 0.05, .maximize = maximize};
            PcTensor *p = new_t(1, &n0, dt), *g = new_t(1, &n0, dt), *m = new_t(1, &n0, dt),
                     *v = new_t(1, &n0, dt);
            fill_rand(p, 1.0, 0.0);
            OK(BE->fill(m, 0.0));
            OK(BE->fill(v, 0.0));
            double rp[7], rm[7] = {0}, rv[7] = {0};
            for (int i = 0; i < 7; i++) rp[i] = get(p, i);
            for (int step = 1; step <= 4; step++) {
                a.step = step;
                fill_rand(g, 1.0, 0.0);
                for (int i = 0; i < 7; i++) {
                    double gr = maximize ? -get(g, i) : get(g, i);
                    rp[i] *= 1 - a.lr * a.weight_decay;
                    rm[i] = a.beta1 * rm[i] + (1 - a.beta1) * gr;
                    rv[i] = a.beta2 * rv[i] + (1 - a.beta2) * gr * gr;
                    double mh = rm[i] / (1 - pow(a.beta1, step));
                    double vh = rv[i] / (1 - pow(a.beta2, step));
                    rp[i] -= a.lr * mh / (sqrt(vh) + a.eps);
                }
                PcTensor *ps[1] = {p}, *gs[1] = {g}, *ms[1] = {m}, *vs[1] = {v};
                OK(BE->adamw_step(1, ps, gs, ms, vs, &a));
            }
            int bad = 0;
            /* half types store p, m, v rounded every step: allow a few output ulps */
            double t = dt == PC_FLOAT64 ? 1e-12 : dt == PC_FLOAT32 ? 1e-5 : 5 * tol_for(dt);
            for (int i = 0; i < 7; i++)
                if (!close_to(get(p, i), rp[i], t, t)) bad++;
            CHECK(bad == 0, "adamw %s maximize=%d: %d mismatches", pc_dtype_name(dt), maximize,
                  bad);
            pc_tensor_decref(p);
            pc_tensor_decref(g);
            pc_tensor_decref(m);
            pc_tensor_decref(v);
        }
    }
    {
        PcTensor *p = new_t(1, &n0, PC_FLOAT32), *g = new_t(1, &n1, PC_FLOAT32);
        PcSgdArgs a = {.lr = 0.1};
        CHECK(BE->sgd_step(1, &p, &g, NULL, &a) == PC_ERR_INVALID, "sgd numel mismatch");
        pc_tensor_decref(p);
        pc_tensor_decref(g);
    }
}

/* ---- memory and throughput ---- */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void test_memory_and_speed(void) {
    void *p = NULL;
    OK(BE->alloc(CPU, 100, &p));
    CHECK(p && ((uintptr_t)p % 64) == 0, "alloc is 64-byte aligned");
    char host[100];
    memset(host, 7, sizeof host);
    OK(BE->copy_h2d(CPU, p, host, 100));
    memset(host, 0, sizeof host);
    OK(BE->copy_d2h(CPU, host, p, 100));
    CHECK(host[99] == 7, "h2d/d2h round trip");
    OK(BE->synchronize(CPU));
    BE->free(CPU, p, 100);
    CHECK(strcmp(BE->name, "cpu") == 0, "backend name");

    /* Contiguous float32 throughput vs memcpy (informational; asserts only a loose floor). */
    const int64_t n = 1 << 24;
    PcTensor *a = new_t(1, &n, PC_FLOAT32), *b = new_t(1, &n, PC_FLOAT32),
             *c = new_t(1, &n, PC_FLOAT32);
    OK(BE->fill(a, 1.5));
    OK(BE->fill(b, -0.5));
    OK(BE->fill(c, 0.0));
    const double mb = (double)n * 4 / 1e9;
    double best_cpy = 1e9, best_add = 1e9, best_mul = 1e9, best_relu = 1e9;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = now_s();
        memcpy(pc_tensor_data(c), pc_tensor_data(a), (size_t)n * 4);
        double t1 = now_s();
        BE->binary(PC_B_ADD, c, a, b, 1.0);
        double t2 = now_s();
        BE->binary(PC_B_MUL, c, a, b, 1.0);
        double t3 = now_s();
        BE->unary(PC_U_RELU, c, a, 0.0);
        double t4 = now_s();
        best_cpy = fmin(best_cpy, t1 - t0);
        best_add = fmin(best_add, t2 - t1);
        best_mul = fmin(best_mul, t3 - t2);
        best_relu = fmin(best_relu, t4 - t3);
    }
    double bw_cpy = 2 * mb / best_cpy, bw_add = 3 * mb / best_add, bw_mul = 3 * mb / best_mul,
           bw_relu = 2 * mb / best_relu;
    printf("float32 %lld elements, best of 5: memcpy %.1f GB/s | add %.1f GB/s (%.2fx) | "
           "mul %.1f GB/s (%.2fx) | relu %.1f GB/s (%.2fx)\n",
           (long long)n, bw_cpy, bw_add, bw_add / bw_cpy, bw_mul, bw_mul / bw_cpy, bw_relu,
           bw_relu / bw_cpy);
    CHECK(get(c, 0) == 1.5, "relu result");
    CHECK(bw_add > 0.4 * bw_cpy && bw_relu > 0.4 * bw_cpy,
          "elementwise throughput far below memcpy");
    pc_tensor_decref(a);
    pc_tensor_decref(b);
    pc_tensor_decref(c);
}

int main(void) {
    BE = pc_backend_for(CPU);
    if (BE != &pc_cpu_backend) {
        printf("pc_backend_for(cpu) did not return pc_cpu_backend\n");
        return 1;
    }
    test_copy();
    test_fill();
    test_unary();
    test_binary();
    test_reduce();
    test_dim_ops();
    test_gemm();
    test_softmax();
    test_layer_norm();
    test_random();
    test_index();
    test_optim();
    test_memory_and_speed();
    printf("%d checks, %d failures\n", g_checks, g_fails);
    return g_fails == 0 ? 0 : 1;
}
