/* gemm.c — CPU GEMM through CBLAS (row-major), with batch loop and bias/ReLU epilogue.
 *
 * float32 -> sgemm, float64 -> dgemm, one call per batch entry. float16/bfloat16 are widened
 * per batch entry into packed float32 scratch (A, B, and C when beta != 0), multiplied with
 * sgemm, given the epilogue in float32, and rounded back once. k == 0 is handled here
 * (C = beta * C) rather than relying on every BLAS to accept it. The epilogue (C += bias
 * per row, then max(., 0)) runs after the product.
 *
 * Invariants checked: m, n, k >= 0, batch >= 1, every size and leading dimension fits in a
 * 32-bit BLAS int, and each leading dimension covers its row (a single-row matrix may pass
 * any ld, and so may an empty one).
 *
 * Exports: pc_cpu_gemm.
 */
#include <limits.h>
#include <stdlib.h>

#include "blas.h"
#include "kernels_cpu.h"

/* ---- argument checks ---- */

/* Effective leading dimension of a stored rows x cols matrix; -1 when invalid. */
static int64_t pc_gemm_ld(int64_t ld, int64_t rows, int64_t cols) {
    int64_t need = cols > 1 ? cols : 1;
    if (rows <= 1 || cols == 0) return ld > need ? ld : need; /* ld never used */
    return ld >= need ? ld : -1;
}

static PcStatus pc_gemm_check(const PcGemmArgs *g, int64_t *lda, int64_t *ldb, int64_t *ldc) {
    if (g->m < 0 || g->n < 0 || g->k < 0 || g->batch < 1)
        return pc_set_error(PC_ERR_INVALID, "gemm: invalid sizes m=%lld n=%lld k=%lld "
                                            "batch=%lld",
                            (long long)g->m, (long long)g->n, (long long)g->k,
                            (long long)g->batch);
    const int64_t ra = g->trans_a ? g->k : g->m, ca = g->trans_a ? g->m : g->k;
    const int64_t rb = g->trans_b ? g->n : g->k, cb = g->trans_b ? g->k : g->n;
    *lda = pc_gemm_ld(g->lda, ra, ca);
    *ldb = pc_gemm_ld(g->ldb, rb, cb);
    *ldc = pc_gemm_ld(g->ldc, g->m, g->n);
    if (*lda < 0 || *ldb < 0 || *ldc < 0)
        return pc_set_error(PC_ERR_INVALID, "gemm: leading dimensions lda=%lld ldb=%lld "
                                            "ldc=%lld too small for m=%lld n=%lld k=%lld "
                                            "(trans_a=%d trans_b=%d)",
                            (long long)g->lda, (long long)g->ldb, (long long)g->ldc,
                            (long long)g->m, (long long)g->n, (long long)g->k, (int)g->trans_a,
                            (int)g->trans_b);
    if (g->m > INT_MAX || g->n > INT_MAX || g->k > INT_MAX || *lda > INT_MAX ||
        *ldb > INT_MAX || *ldc > INT_MAX)
        return pc_set_error(PC_ERR_INVALID, "gemm: sizes m=%lld n=%lld k=%lld exceed the "
                                            "32-bit BLAS interface",
                            (long long)g->m, (long long)g->n, (long long)g->k);
    if (g->batch > 1 && (g->stride_a < 0 || g->stride_b < 0 || g->stride_c < 0))
        return pc_set_error(PC_ERR_INVALID, "gemm: negative batch strides");
    return PC_OK;
}

/* ---- float32 / float64 ---- */

/* C (m x n, ldc) = beta * C, for k == 0 (beta == 0 writes zeros, ignoring NaN in C). */
#define PC_GEMM_SCALE_C(T)                                                            \
    do {                                                                              \
        for (int64_t i = 0; i < m; i++)                                               \
            for (int64_t j = 0; j < n; j++)                                           \
                c[i * ldc + j] = beta == 0 ? (T)0 : (T)(beta * c[i * ldc + j]);       \
    } while (0)

#define PC_GEMM_EPILOGUE(T)                                                           \
    do {                                                                              \
        if (bias || relu)                                                             \
            for (int64_t i = 0; i < m; i++) {                                         \
                T *row = c + i * ldc;                                                 \
                if (bias)                                                             \
                    for (int64_t j = 0; j < n; j++) row[j] += bias[j];                \
                if (relu)                                                             \
                    for (int64_t j = 0; j < n; j++) row[j] = row[j] < 0 ? (T)0 : row[j]; \
            }                                                                         \
    } while (0)

static void pc_gemm_f32_one(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha,
                            const float *a, int64_t lda, const float *b, int64_t ldb,
                            double beta, float *c, int64_t ldc, const float *bias, bool relu) {
    if (k == 0)
        PC_GEMM_SCALE_C(float);
    else
        PC_CBLAS(cblas_sgemm)(CblasRowMajor, ta ? CblasTrans : CblasNoTrans,
                              tb ? CblasTrans : CblasNoTrans, (int)m, (int)n, (int)k,
                              (float)alpha, a, (int)lda, b, (int)ldb, (float)beta, c, (int)ldc);
    PC_GEMM_EPILOGUE(float);
}

static void pc_gemm_f64_one(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha,
                            const double *a, int64_t lda, const double *b, int64_t ldb,
                            double beta, double *c, int64_t ldc, const double *bias,
                            bool relu) {
    if (k == 0)
        PC_GEMM_SCALE_C(double);
    else
        PC_CBLAS(cblas_dgemm)(CblasRowMajor, ta ? CblasTrans : CblasNoTrans,
                              tb ? CblasTrans : CblasNoTrans, (int)m, (int)n, (int)k, alpha, a,
                              (int)lda, b, (int)ldb, beta, c, (int)ldc);
    PC_GEMM_EPILOGUE(double);
}

/* ---- half types through float32 ---- */

/* Packed float32 copy of a rows x cols half matrix with row stride ld. */
static void pc_half_to_f32(float *dst, const uint16_t *src, int64_t rows, int64_t cols,
                           int64_t ld, PcDType dt) {
    for (int64_t i = 0; i < rows; i++) {
        const uint16_t *s = src + i * ld;
        float *d = dst + i * cols;
        if (dt == PC_FLOAT16)
            for (int64_t j = 0; j < cols; j++) d[j] = pc_f16_to_f32(s[j]);
        else
            for (int64_t j = 0; j < cols; j++) d[j] = pc_bf16_to_f32(s[j]);
    }
}

static void pc_f32_to_half(uint16_t *dst, const float *src, int64_t rows, int64_t cols,
                           int64_t ld, PcDType dt) {
    for (int64_t i = 0; i < rows; i++) {
        const float *s = src + i * cols;
        uint16_t *d = dst + i * ld;
        if (dt == PC_FLOAT16)
            for (int64_t j = 0; j < cols; j++) d[j] = pc_f32_to_f16(s[j]);
        else
            for (int64_t j = 0; j < cols; j++) d[j] = pc_f32_to_bf16(s[j]);
    }
}

static PcStatus pc_gemm_half(const PcGemmArgs *g, int64_t lda, int64_t ldb, int64_t ldc) {
    const int64_t m = g->m, n = g->n, k = g->k;
    const int64_t ra = g->trans_a ? k : m, ca = g->trans_a ? m : k;
    const int64_t rb = g->trans_b ? n : k, cb = g->trans_b ? k : n;
    const size_t na = (size_t)(ra * ca), nb = (size_t)(rb * cb), nc = (size_t)(m * n);
    float *buf = malloc((na + nb + nc + (size_t)n) * sizeof(float));
    if (!buf)
        return pc_set_error(PC_ERR_OOM, "gemm: out of memory for float32 scratch (m=%lld "
                                        "n=%lld k=%lld)",
                            (long long)m, (long long)n, (long long)k);
    float *fa = buf, *fb = buf + na, *fc = fb + nb, *fbias = fc + nc;
    if (g->bias) pc_half_to_f32(fbias, (const uint16_t *)g->bias, 1, n, n, g->dtype);
    for (int64_t bi = 0; bi < g->batch; bi++) {
        const uint16_t *a = (const uint16_t *)g->a + bi * g->stride_a;
        const uint16_t *b = (const uint16_t *)g->b + bi * g->stride_b;
        uint16_t *c = (uint16_t *)g->c + bi * g->stride_c;
        pc_half_to_f32(fa, a, ra, ca, lda, g->dtype);
        pc_half_to_f32(fb, b, rb, cb, ldb, g->dtype);
        if (g->beta != 0) pc_half_to_f32(fc, c, m, n, ldc, g->dtype);
        pc_gemm_f32_one(g->trans_a, g->trans_b, m, n, k, g->alpha, fa, ca > 1 ? ca : 1, fb,
                        cb > 1 ? cb : 1, g->beta, fc, n > 1 ? n : 1, g->bias ? fbias : NULL,
                        g->relu);
        pc_f32_to_half(c, fc, m, n, ldc, g->dtype);
    }
    free(buf);
    return PC_OK;
}

/* ---- entry ---- */

PcStatus pc_cpu_gemm(PcDevice dev, const PcGemmArgs *g) {
    (void)dev;
    int64_t lda = 0, ldb = 0, ldc = 0;
    PC_TRY(pc_gemm_check(g, &lda, &ldb, &ldc));
    if (g->m == 0 || g->n == 0) return PC_OK;
    switch (g->dtype) {
    case PC_FLOAT32:
        for (int64_t bi = 0; bi < g->batch; bi++)
            pc_gemm_f32_one(g->trans_a, g->trans_b, g->m, g->n, g->k, g->alpha,
                            (const float *)g->a + bi * g->stride_a, lda,
                            (const float *)g->b + bi * g->stride_b, ldb, g->beta,
                            (float *)g->c + bi * g->stride_c, ldc, (const float *)g->bias,
                            g->relu);
        return PC_OK;
    case PC_FLOAT64:
        for (int64_t bi = 0; bi < g->batch; bi++)
            pc_gemm_f64_one(g->trans_a, g->trans_b, g->m, g->n, g->k, g->alpha,
                            (const double *)g->a + bi * g->stride_a, lda,
                            (const double *)g->b + bi * g->stride_b, ldb, g->beta,
                            (double *)g->c + bi * g->stride_c, ldc, (const double *)g->bias,
                            g->relu);
        return PC_OK;
    case PC_FLOAT16:
    case PC_BFLOAT16: return pc_gemm_half(g, lda, ldb, ldc);
    default: return pc_cpu_dtype_error("gemm", g->dtype);
    }
}
