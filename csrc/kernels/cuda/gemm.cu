/* gemm.cu — matrix products through cuBLASLt / cuBLAS, and the TF32 switch.
 *
 * Row-major C = alpha * op(A) @ op(B) + beta * C is computed as the column-major product
 * C^T = op(B)^T @ op(A)^T: the operands swap places and keep their own transposition flags
 * (a row-major (r, c) matrix with row stride ld is a column-major (c, r) one with the same
 * ld), so no data moves.
 *
 *   - batch == 1, float32 / float16 / bfloat16: cublasLtMatmul with the bias add and the ReLU
 *     in the epilogue (bias along the rows of C^T = the columns of C). Descriptors, layouts
 *     and the heuristic's algorithm are cached per device by shape, transposition, leading
 *     dims, pointer alignment, epilogue and TF32 flag; the cache is guarded by the context's
 *     gemm_lock, which is held while a cached descriptor is used.
 *   - otherwise (batch > 1, float64, or no Lt algorithm for the case): cublasGemmEx /
 *     cublasGemmStridedBatchedEx, then a small epilogue kernel for bias / ReLU.
 *   - k == 0: C = beta * C (+ bias) (ReLU) by the epilogue kernel alone.
 * Compute type CUBLAS_COMPUTE_32F for float32 and the half types (half inputs accumulate in
 * float32), CUBLAS_COMPUTE_32F_FAST_TF32 for float32 when pipec.backends.cuda.matmul.
 * allow_tf32 is set (off by default), CUBLAS_COMPUTE_64F for float64.
 *
 * Exports: pc_cuda_gemm, pc_cuda_set_allow_tf32, pc_cuda_get_allow_tf32.
 */
#include "cuda_internal.h"

#include <atomic>
#include <climits>
#include <cstring>
#include <unordered_map>

/* ---- settings ---- */

static std::atomic<bool> pc_gemm_allow_tf32{false};

extern "C" void pc_cuda_set_allow_tf32(bool allow) { pc_gemm_allow_tf32.store(allow); }
extern "C" bool pc_cuda_get_allow_tf32(void) { return pc_gemm_allow_tf32.load(); }

/* ---- epilogue kernel (batched fallback and k == 0) ---- */

/* c[b, i, j] = relu?((scale ? (beta == 0 ? 0 : beta * c) : c) + bias[j]) */
template <typename T>
__global__ void pc_gemm_epilogue_kernel(T *c, int64_t ldc, int64_t stride_c, int64_t m,
                                        int64_t n, int64_t batch, bool scale, float beta,
                                        const T *bias, bool relu) {
    using Acc = pc_acc_t<T>;
    int64_t total = batch * m * n;
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (int64_t)gridDim.x * blockDim.x) {
        int64_t j = e % n;
        int64_t i = (e / n) % m;
        int64_t b = e / (n * m);
        T *p = c + b * stride_c + i * ldc + j;
        Acc v = pc_cvt<Acc>(*p);
        if (scale) v = beta == 0.0f ? Acc(0) : Acc(beta) * v;
        if (bias) v += pc_cvt<Acc>(bias[j]);
        if (relu) v = v > Acc(0) ? v : (v != v ? v : Acc(0));
        *p = pc_cvt<T>(v);
    }
}

static PcStatus pc_gemm_epilogue(PcCudaExec &ex, const PcGemmArgs *g, bool scale) {
    int64_t total = g->batch * g->m * g->n;
    if (total == 0) return PC_OK;
    unsigned blocks = pc_cuda_blocks(ex.ctx, total, PC_CUDA_THREADS);
    int64_t stride_c = g->batch > 1 ? g->stride_c : 0;
    PcStatus st = PC_OK;
    pc_cuda_dispatch_float(g->dtype, [&](auto tag) {
        using T = decltype(tag);
        pc_gemm_epilogue_kernel<T><<<blocks, PC_CUDA_THREADS, 0, ex.stream>>>(
            static_cast<T *>(g->c), g->ldc, stride_c, g->m, g->n, g->batch, scale,
            (float)g->beta, static_cast<const T *>(g->bias), g->relu);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess)
            st = pc_cuda_fail(e, "launch of pc_gemm_epilogue_kernel", __FILE__, __LINE__);
    });
    return st;
}

/* ---- column-major view of the row-major problem ---- */

struct PcGemmCm {
    cublasOperation_t opa, opb;      /* Lt / cuBLAS "A" is our B, "B" is our A */
    int64_t rows_a, cols_a, ld_a;    /* stored layout of our B, column-major */
    int64_t rows_b, cols_b, ld_b;    /* stored layout of our A, column-major */
    int64_t m, n, k;                 /* column-major problem: (n x k) @ (k x m) = n x m */
    int64_t ldc;
};

static PcStatus pc_gemm_cm(const PcGemmArgs *g, PcGemmCm *cm) {
    cm->opa = g->trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    cm->opb = g->trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    cm->rows_a = g->trans_b ? g->k : g->n;
    cm->cols_a = g->trans_b ? g->n : g->k;
    cm->rows_b = g->trans_a ? g->m : g->k;
    cm->cols_b = g->trans_a ? g->k : g->m;
    cm->ld_a = g->ldb;
    cm->ld_b = g->lda;
    cm->ldc = g->ldc;
    cm->m = g->n;
    cm->n = g->m;
    cm->k = g->k;
    /* A matrix with one stored row (row-major) has a meaningless row stride: use the tight one. */
    if (cm->cols_a == 1 && cm->ld_a < cm->rows_a) cm->ld_a = cm->rows_a;
    if (cm->cols_b == 1 && cm->ld_b < cm->rows_b) cm->ld_b = cm->rows_b;
    if (g->m == 1 && cm->ldc < g->n) cm->ldc = g->n;
    if (cm->ld_a < 1) cm->ld_a = 1;
    if (cm->ld_b < 1) cm->ld_b = 1;
    if (cm->ldc < 1) cm->ldc = 1;
    if (cm->ld_a < cm->rows_a || cm->ld_b < cm->rows_b || cm->ldc < cm->m)
        return pc_set_error(PC_ERR_INVALID,
                            "gemm: row strides too small for the shapes: lda=%lld ldb=%lld "
                            "ldc=%lld for m=%lld n=%lld k=%lld (trans_a=%d trans_b=%d)",
                            (long long)g->lda, (long long)g->ldb, (long long)g->ldc,
                            (long long)g->m, (long long)g->n, (long long)g->k, (int)g->trans_a,
                            (int)g->trans_b);
    return PC_OK;
}

static cudaDataType_t pc_cuda_dtype(PcDType dt) {
    switch (dt) {
    case PC_FLOAT64: return CUDA_R_64F;
    case PC_FLOAT16: return CUDA_R_16F;
    case PC_BFLOAT16: return CUDA_R_16BF;
    default: return CUDA_R_32F;
    }
}

static int pc_ptr_align(const void *p) {
    uintptr_t a = reinterpret_cast<uintptr_t>(p);
    int al = 256;
    while (al > 1 && (a % (uintptr_t)al) != 0) al >>= 1;
    return al;
}

/* ---- cuBLASLt descriptor cache ---- */

struct PcGemmKey {
    int dtype;
    int opa, opb;
    int64_t m, n, k, lda, ldb, ldc;
    int epilogue;
    int align_a, align_b, align_c;
    bool tf32;
    bool operator==(const PcGemmKey &o) const { return memcmp(this, &o, sizeof o) == 0; }
};

struct PcGemmKeyHash {
    size_t operator()(const PcGemmKey &k) const {
        const unsigned char *p = reinterpret_cast<const unsigned char *>(&k);
        uint64_t h = 1469598103934665603ull; /* FNV-1a */
        for (size_t i = 0; i < sizeof k; i++) h = (h ^ p[i]) * 1099511628211ull;
        return (size_t)h;
    }
};

struct PcGemmPlan {
    bool ok;                              /* false: no Lt algorithm, use cuBLAS */
    cublasLtMatmulDesc_t desc;            /* owned */
    cublasLtMatrixLayout_t la, lb, lc;    /* owned */
    cublasLtMatmulAlgo_t algo;
    size_t workspace;
};

struct PcCudaGemmCache {
    std::unordered_map<PcGemmKey, PcGemmPlan, PcGemmKeyHash> plans;
};

static void pc_gemm_plan_destroy(PcGemmPlan *p) {
    if (p->desc) cublasLtMatmulDescDestroy(p->desc);
    if (p->la) cublasLtMatrixLayoutDestroy(p->la);
    if (p->lb) cublasLtMatrixLayoutDestroy(p->lb);
    if (p->lc) cublasLtMatrixLayoutDestroy(p->lc);
    p->desc = nullptr;
    p->la = p->lb = p->lc = nullptr;
}

#define PC_GEMM_CACHE_MAX 1024

/* Builds descriptors and asks the heuristic for one algorithm. A plan without an algorithm
 * (ok = false) is a valid answer: the caller falls back to cuBLAS. */
static PcStatus pc_gemm_plan_build(PcCudaContext *ctx, const PcGemmKey &key, const PcGemmCm &cm,
                                   PcGemmPlan *p) {
    memset(p, 0, sizeof *p);
    cudaDataType_t dt = pc_cuda_dtype((PcDType)key.dtype);
    cublasComputeType_t ct = key.tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    cudaDataType_t scale = CUDA_R_32F;
    cublasOperation_t opa = (cublasOperation_t)key.opa, opb = (cublasOperation_t)key.opb;
    cublasLtEpilogue_t epi = (cublasLtEpilogue_t)key.epilogue;
    cublasLtMatmulPreference_t pref = nullptr;
    cublasLtMatmulHeuristicResult_t res;
    int count = 0;
    uint64_t ws = PC_CUDA_BLAS_WORKSPACE;
    uint32_t al_a = (uint32_t)key.align_a, al_b = (uint32_t)key.align_b,
             al_c = (uint32_t)key.align_c;
    cublasStatus_t s;
#define PC_LT_(call)                                                                    \
    do {                                                                                \
        s = (call);                                                                     \
        if (s != CUBLAS_STATUS_SUCCESS) goto fail;                                      \
    } while (0)
    PC_LT_(cublasLtMatmulDescCreate(&p->desc, ct, scale));
    PC_LT_(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
    PC_LT_(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
    if (epi != CUBLASLT_EPILOGUE_DEFAULT) {
        PC_LT_(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi,
                                              sizeof epi));
        if (epi == CUBLASLT_EPILOGUE_BIAS || epi == CUBLASLT_EPILOGUE_RELU_BIAS)
            PC_LT_(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                                                  &dt, sizeof dt));
    }
    PC_LT_(cublasLtMatrixLayoutCreate(&p->la, dt, (uint64_t)cm.rows_a, (uint64_t)cm.cols_a,
                                      cm.ld_a));
    PC_LT_(cublasLtMatrixLayoutCreate(&p->lb, dt, (uint64_t)cm.rows_b, (uint64_t)cm.cols_b,
                                      cm.ld_b));
    PC_LT_(cublasLtMatrixLayoutCreate(&p->lc, dt, (uint64_t)cm.m, (uint64_t)cm.n, cm.ldc));
    PC_LT_(cublasLtMatmulPreferenceCreate(&pref));
    PC_LT_(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                &ws, sizeof ws));
    PC_LT_(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                &al_a, sizeof al_a));
    PC_LT_(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                &al_b, sizeof al_b));
    PC_LT_(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                                &al_c, sizeof al_c));
    PC_LT_(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                                &al_c, sizeof al_c));
    s = cublasLtMatmulAlgoGetHeuristic(ctx->lt, p->desc, p->la, p->lb, p->lc, p->lc, pref, 1,
                                       &res, &count);
    cublasLtMatmulPreferenceDestroy(pref);
    pref = nullptr;
    if (s == CUBLAS_STATUS_SUCCESS && count > 0 && res.state == CUBLAS_STATUS_SUCCESS) {
        p->ok = true;
        p->algo = res.algo;
        p->workspace = res.workspaceSize;
    } else {
        p->ok = false; /* not supported here: cuBLAS fallback */
        pc_gemm_plan_destroy(p);
    }
    return PC_OK;
#undef PC_LT_
fail:
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    pc_gemm_plan_destroy(p);
    return pc_cublas_fail(s, "cuBLASLt descriptor set-up", __FILE__, __LINE__);
}

/* Runs the Lt path, with bias and ReLU in the epilogue when `fuse`; *done = false when no
 * Lt algorithm exists for the case. */
static PcStatus pc_gemm_lt(PcCudaExec &ex, const PcGemmArgs *g, const PcGemmCm &cm, bool fuse,
                           bool *done) {
    *done = false;
    PcCudaContext *ctx = ex.ctx;
    cublasHandle_t handle;
    void *workspace;
    PC_TRY(pc_cuda_ctx_blas(ctx, ex.stream, &handle, &workspace)); /* per-stream workspace */
    PcGemmKey key;
    memset(&key, 0, sizeof key); /* padding bytes take part in hash and compare */
    key.dtype = (int)g->dtype;
    key.opa = (int)cm.opa;
    key.opb = (int)cm.opb;
    key.m = cm.m;
    key.n = cm.n;
    key.k = cm.k;
    key.lda = cm.ld_a;
    key.ldb = cm.ld_b;
    key.ldc = cm.ldc;
    bool bias = fuse && g->bias;
    bool relu = fuse && g->relu;
    key.epilogue = (int)(bias ? (relu ? CUBLASLT_EPILOGUE_RELU_BIAS : CUBLASLT_EPILOGUE_BIAS)
                              : (relu ? CUBLASLT_EPILOGUE_RELU : CUBLASLT_EPILOGUE_DEFAULT));
    key.align_a = pc_ptr_align(g->b);
    key.align_b = pc_ptr_align(g->a);
    key.align_c = pc_ptr_align(g->c);
    key.tf32 = g->dtype == PC_FLOAT32 && pc_gemm_allow_tf32.load();

    std::lock_guard<std::mutex> lk(ctx->gemm_lock);
    if (!ctx->gemm_cache) {
        ctx->gemm_cache = new (std::nothrow) PcCudaGemmCache();
        if (!ctx->gemm_cache) return pc_set_error(PC_ERR_OOM, "out of host memory (gemm cache)");
    }
    auto &plans = ctx->gemm_cache->plans;
    auto it = plans.find(key);
    if (it == plans.end()) {
        if (plans.size() >= PC_GEMM_CACHE_MAX) {
            for (auto &kv : plans) pc_gemm_plan_destroy(&kv.second);
            plans.clear();
        }
        PcGemmPlan plan;
        PC_TRY(pc_gemm_plan_build(ctx, key, cm, &plan));
        it = plans.emplace(key, plan).first;
    }
    PcGemmPlan &p = it->second;
    if (!p.ok) return PC_OK;
    if (bias) {
        const void *bp = g->bias;
        PC_CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                     &bp, sizeof bp));
    }
    float alpha = (float)g->alpha, beta = (float)g->beta;
    PC_CUBLAS_TRY(cublasLtMatmul(ctx->lt, p.desc, &alpha, g->b, p.la, g->a, p.lb, &beta, g->c,
                                 p.lc, g->c, p.lc, &p.algo, workspace, p.workspace, ex.stream));
    *done = true;
    return PC_OK;
}

static PcStatus pc_gemm_blas(PcCudaExec &ex, const PcGemmArgs *g, const PcGemmCm &cm) {
    cublasHandle_t handle;
    void *workspace;
    PC_TRY(pc_cuda_ctx_blas(ex.ctx, ex.stream, &handle, &workspace));
    cudaDataType_t dt = pc_cuda_dtype(g->dtype);
    cublasComputeType_t ct;
    float af = (float)g->alpha, bf = (float)g->beta;
    double ad = g->alpha, bd = g->beta;
    const void *alpha = &af, *beta = &bf;
    if (g->dtype == PC_FLOAT64) {
        ct = CUBLAS_COMPUTE_64F;
        alpha = &ad;
        beta = &bd;
    } else {
        ct = (g->dtype == PC_FLOAT32 && pc_gemm_allow_tf32.load()) ? CUBLAS_COMPUTE_32F_FAST_TF32
                                                                  : CUBLAS_COMPUTE_32F;
    }
    if (g->batch == 1) {
        PC_CUBLAS_TRY(cublasGemmEx(handle, cm.opa, cm.opb, (int)cm.m, (int)cm.n, (int)cm.k, alpha,
                                   g->b, dt, (int)cm.ld_a, g->a, dt, (int)cm.ld_b, beta, g->c, dt,
                                   (int)cm.ldc, ct, CUBLAS_GEMM_DEFAULT));
    } else {
        PC_CUBLAS_TRY(cublasGemmStridedBatchedEx(
            handle, cm.opa, cm.opb, (int)cm.m, (int)cm.n, (int)cm.k, alpha, g->b, dt, (int)cm.ld_a,
            (long long)g->stride_b, g->a, dt, (int)cm.ld_b, (long long)g->stride_a, beta, g->c, dt,
            (int)cm.ldc, (long long)g->stride_c, (int)g->batch, ct, CUBLAS_GEMM_DEFAULT));
    }
    return PC_OK;
}

/* ---- entry point ---- */

PcStatus pc_cuda_gemm(PcDevice dev, const PcGemmArgs *g) {
    if (!pc_dtype_is_float(g->dtype))
        return pc_set_error(PC_ERR_TYPE, "gemm: %s is not supported on CUDA (float32, float64, "
                                         "float16, bfloat16)", pc_dtype_name(g->dtype));
    if (g->m < 0 || g->n < 0 || g->k < 0 || g->batch < 1)
        return pc_set_error(PC_ERR_INVALID, "gemm: invalid sizes m=%lld n=%lld k=%lld batch=%lld",
                            (long long)g->m, (long long)g->n, (long long)g->k,
                            (long long)g->batch);
    if (g->m == 0 || g->n == 0) return PC_OK;
    if (g->m > INT_MAX || g->n > INT_MAX || g->k > INT_MAX || g->batch > INT_MAX ||
        g->lda > INT_MAX || g->ldb > INT_MAX || g->ldc > INT_MAX)
        return pc_set_error(PC_ERR_NOTIMPL, "gemm: sizes beyond 2^31-1 are not supported on "
                                            "CUDA (m=%lld n=%lld k=%lld batch=%lld)",
                            (long long)g->m, (long long)g->n, (long long)g->k,
                            (long long)g->batch);
    PcCudaExec ex;
    PC_TRY(ex.begin(dev));
    if (g->k == 0) return pc_gemm_epilogue(ex, g, true); /* C = beta * C (+ bias) (relu) */
    PcGemmCm cm;
    PC_TRY(pc_gemm_cm(g, &cm));
    if (g->batch == 1 && g->dtype != PC_FLOAT64) {
        /* Lt reads the bias with vector loads: fuse only when it is 16-byte aligned. */
        bool fuse = !g->bias || pc_cuda_aligned(g->bias, 16);
        bool done = false;
        PC_TRY(pc_gemm_lt(ex, g, cm, fuse, &done));
        if (done) return fuse ? PC_OK : pc_gemm_epilogue(ex, g, false);
    }
    PC_TRY(pc_gemm_blas(ex, g, cm));
    if (g->bias || g->relu) return pc_gemm_epilogue(ex, g, false);
    return PC_OK;
}
