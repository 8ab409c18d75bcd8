// gemm_algos.cu — does timing cuBLASLt's candidate algorithms beat its heuristic's first
// choice on the GEMMs of a pipeline's microbatches? An experiment, not part of pipec.
//
//     nvcc -O2 -o /tmp/gemm_algos bench/gemm_algos.cu -lcublasLt && /tmp/gemm_algos
//
// For the three GEMMs of a Linear layer (d x d weight) on a microbatch of M rows, as pipec
// issues them (row-major, computed as the column-major transpose; float32 without TF32, and
// bfloat16): forward Y = X W^T, input gradient dX = dY W, weight gradient dW += dY^T X
// (beta 1, the fused accumulation). Asks the heuristic for up to 32 algorithms (32 MiB
// workspace, pipec's), times each (median of 5 trials of 20 runs, after 3 warm-up runs) on
// scratch buffers, and prints the first choice's time, the best one's, its index and split-K.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CK(x)                                                                         \
    do {                                                                              \
        cudaError_t e_ = (x);                                                         \
        if (e_ != cudaSuccess) {                                                      \
            fprintf(stderr, "%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e_)); \
            exit(1);                                                                  \
        }                                                                             \
    } while (0)
#define LK(x)                                                                  \
    do {                                                                       \
        cublasStatus_t s_ = (x);                                               \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                     \
            fprintf(stderr, "%s:%d cublas status %d\n", __FILE__, __LINE__, (int)s_); \
            exit(1);                                                           \
        }                                                                      \
    } while (0)

static const size_t WS = (size_t)32 << 20;

struct Case {
    const char *what;
    // column-major problem: C(m x n) = op(A) op(B), A is (rows_a x cols_a, lda), ...
    cublasOperation_t opa, opb;
    int m, n, k;
    float beta;
};

// The column-major form of pipec's row-major products for M rows and a d x d weight.
static std::vector<Case> cases_for(int M, int d) {
    return {
        // Y(M x d) = X(M x d) @ W^T: C^T(d x M) = W (as col-major d x d, op T) @ X^T (op N)
        {"fwd   Y=XW^T", CUBLAS_OP_T, CUBLAS_OP_N, d, M, d, 0.0f},
        // dX(M x d) = dY(M x d) @ W(d x d): C^T = W^T (col-major view of W, op N) @ dY^T
        {"dgrad dX=dYW", CUBLAS_OP_N, CUBLAS_OP_N, d, M, d, 0.0f},
        // dW(d x d) += dY^T(d x M) @ X(M x d): C^T = X^T (op N, d x M) @ dY (op T)
        {"wgrad dW+=dY^TX", CUBLAS_OP_N, CUBLAS_OP_T, d, d, M, 1.0f},
    };
}

static float time_algo(cublasLtHandle_t lt, cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t la,
                       cublasLtMatrixLayout_t lb, cublasLtMatrixLayout_t lc,
                       const cublasLtMatmulAlgo_t *algo, const void *a, const void *b, void *c,
                       float beta, void *ws, size_t ws_size, cudaStream_t st) {
    float alpha = 1.0f;
    for (int i = 0; i < 3; i++)
        if (cublasLtMatmul(lt, desc, &alpha, a, la, b, lb, &beta, c, lc, c, lc, algo, ws,
                           ws_size, st) != CUBLAS_STATUS_SUCCESS)
            return -1.0f;
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    std::vector<float> trials;
    for (int t = 0; t < 5; t++) {
        CK(cudaEventRecord(e0, st));
        for (int i = 0; i < 20; i++)
            LK(cublasLtMatmul(lt, desc, &alpha, a, la, b, lb, &beta, c, lc, c, lc, algo, ws,
                              ws_size, st));
        CK(cudaEventRecord(e1, st));
        CK(cudaEventSynchronize(e1));
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        trials.push_back(ms * 1000.0f / 20);
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    std::sort(trials.begin(), trials.end());
    return trials[2];
}

static void run(cublasLtHandle_t lt, cudaDataType_t dt, const char *dname, int M, int d,
                void *bufa, void *bufb, void *bufc, void *ws, cudaStream_t st) {
    for (const Case &cs : cases_for(M, d)) {
        cublasLtMatmulDesc_t desc;
        LK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
        LK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &cs.opa,
                                          sizeof cs.opa));
        LK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &cs.opb,
                                          sizeof cs.opb));
        int ra = cs.opa == CUBLAS_OP_N ? cs.m : cs.k, ca = cs.opa == CUBLAS_OP_N ? cs.k : cs.m;
        int rb = cs.opb == CUBLAS_OP_N ? cs.k : cs.n, cb = cs.opb == CUBLAS_OP_N ? cs.n : cs.k;
        cublasLtMatrixLayout_t la, lb, lc;
        LK(cublasLtMatrixLayoutCreate(&la, dt, ra, ca, ra));
        LK(cublasLtMatrixLayoutCreate(&lb, dt, rb, cb, rb));
        LK(cublasLtMatrixLayoutCreate(&lc, dt, cs.m, cs.n, cs.m));
        cublasLtMatmulPreference_t pref;
        LK(cublasLtMatmulPreferenceCreate(&pref));
        uint64_t wsz = WS;
        LK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                &wsz, sizeof wsz));
        cublasLtMatmulHeuristicResult_t res[32];
        int count = 0;
        LK(cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lb, lc, lc, pref, 32, res, &count));
        float first = -1, best = 1e30f;
        int best_i = -1;
        for (int i = 0; i < count; i++) {
            if (res[i].state != CUBLAS_STATUS_SUCCESS) continue;
            float us = time_algo(lt, desc, la, lb, lc, &res[i].algo, bufa, bufb, bufc, cs.beta,
                                 ws, res[i].workspaceSize, st);
            if (i == 0) first = us;
            if (us > 0 && us < best) {
                best = us;
                best_i = i;
            }
        }
        int splitk = 0;
        size_t got = 0;
        if (best_i >= 0)
            cublasLtMatmulAlgoConfigGetAttribute(&res[best_i].algo,
                                                 CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitk,
                                                 sizeof splitk, &got);
        double flop = 2.0 * cs.m * cs.n * cs.k;
        printf("%-5s M=%-5d d=%-5d %-16s algos %2d  first %9.2f us  best %9.2f us (#%d, "
               "split-k %d)  speed-up %.2fx  best %.1f TF/s\n",
               dname, M, d, cs.what, count, first, best, best_i, splitk,
               first > 0 ? first / best : 0.0, flop / best * 1e-6);
        fflush(stdout);
        cublasLtMatmulPreferenceDestroy(pref);
        cublasLtMatrixLayoutDestroy(la);
        cublasLtMatrixLayoutDestroy(lb);
        cublasLtMatrixLayoutDestroy(lc);
        cublasLtMatmulDescDestroy(desc);
    }
}

int main() {
    cublasLtHandle_t lt;
    LK(cublasLtCreate(&lt));
    cudaStream_t st;
    CK(cudaStreamCreate(&st));
    size_t big = (size_t)8192 * 8192 * 4;
    void *a, *b, *c, *ws;
    CK(cudaMalloc(&a, big));
    CK(cudaMalloc(&b, big));
    CK(cudaMalloc(&c, big));
    CK(cudaMalloc(&ws, WS));
    // every byte 0x3c: float32 ~0.0115, bfloat16 ~0.0115 (non-zero data, timing only)
    CK(cudaMemset(a, 0x3c, big));
    CK(cudaMemset(b, 0x3c, big));
    CK(cudaMemset(c, 0x3c, big));
    const int small_m[] = {32, 64, 128, 256};
    const int big_m[] = {64, 128, 256};
    for (int M : small_m) run(lt, CUDA_R_32F, "fp32", M, 1024, a, b, c, ws, st);
    for (int M : big_m) run(lt, CUDA_R_32F, "fp32", M, 8192, a, b, c, ws, st);
    for (int M : big_m) run(lt, CUDA_R_16BF, "bf16", M, 8192, a, b, c, ws, st);
    return 0;
}
