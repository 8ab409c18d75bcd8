/* cuda_internal.h — what the CUDA backend's .cu files share (C++, compiled by nvcc only).
 *
 *   - check macros: PC_CUDA_TRY / PC_CUBLAS_TRY record file, line, the failing call and the
 *     library's error string through pc_set_error(PC_ERR_CUDA, ...) and return the status;
 *     PC_CUDA_CHECK_LAUNCH checks cudaGetLastError() after a kernel launch;
 *   - PcCudaContext: one per device, created lazily (context.cu): compute and communication
 *     streams, the cuBLASLt handle, a cuBLAS handle + workspace per stream, an event pool,
 *     pinned staging buffers for host copies, slots for device-side index checks;
 *   - PcCudaExec: the scope of one backend call (device guard, context, current stream);
 *   - PcCudaTemp: a temporary device buffer from the caching allocator, stream-ordered;
 *   - device helpers: dtype traits and conversions, the strided iterator passed to kernels by
 *     value, launch-size helpers;
 *   - the backend entry points implemented by each .cu file (assembled in context.cu).
 *
 * Invariants: every function returning PcStatus has set an error message when it fails;
 * kernels run on the stream of the PcCudaExec they were launched from.
 */
#ifndef PC_KERNELS_CUDA_CUDA_INTERNAL_H
#define PC_KERNELS_CUDA_CUDA_INTERNAL_H

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <mutex>
#include <type_traits>
#include <vector>

#include "../../core/backend.h"
#include "cuda_api.h"

/* ---- error checks ---- */

/* Record a CUDA runtime failure (clearing the non-sticky error) and return PC_ERR_CUDA. */
PcStatus pc_cuda_fail(cudaError_t err, const char *call, const char *file, int line);
/* Record a cuBLAS / cuBLASLt failure and return PC_ERR_CUDA. */
PcStatus pc_cublas_fail(cublasStatus_t err, const char *call, const char *file, int line);

#define PC_CUDA_TRY(call)                                                           \
    do {                                                                            \
        cudaError_t pc_cuda_err_ = (call);                                          \
        if (pc_cuda_err_ != cudaSuccess)                                            \
            return pc_cuda_fail(pc_cuda_err_, #call, __FILE__, __LINE__);           \
    } while (0)

#define PC_CUDA_TRY_GOTO(st, call)                                                  \
    do {                                                                            \
        cudaError_t pc_cuda_err_ = (call);                                          \
        if (pc_cuda_err_ != cudaSuccess) {                                          \
            (st) = pc_cuda_fail(pc_cuda_err_, #call, __FILE__, __LINE__);           \
            goto fail;                                                              \
        }                                                                           \
    } while (0)

#define PC_CUBLAS_TRY(call)                                                         \
    do {                                                                            \
        cublasStatus_t pc_blas_err_ = (call);                                       \
        if (pc_blas_err_ != CUBLAS_STATUS_SUCCESS)                                  \
            return pc_cublas_fail(pc_blas_err_, #call, __FILE__, __LINE__);         \
    } while (0)

/* After every kernel launch: a bad configuration or an earlier asynchronous fault. */
#define PC_CUDA_CHECK_LAUNCH(kernel_name)                                           \
    do {                                                                            \
        cudaError_t pc_cuda_err_ = cudaGetLastError();                              \
        if (pc_cuda_err_ != cudaSuccess)                                            \
            return pc_cuda_fail(pc_cuda_err_, "launch of " kernel_name, __FILE__,   \
                                __LINE__);                                          \
    } while (0)

/* ---- device context ---- */

/* Bytes of cuBLAS/cuBLASLt workspace per stream (Hopper wants 32 MiB for its best kernels). */
#define PC_CUDA_BLAS_WORKSPACE ((size_t)32 << 20)
/* Host copies at least this large go through the pinned staging buffers. */
#define PC_CUDA_STAGING_MIN ((size_t)1 << 20)
#define PC_CUDA_STAGING_CHUNK ((size_t)8 << 20)
/* Index checks in flight at once per device. */
#define PC_CUDA_INDEX_SLOTS 64

struct PcCudaGemmCache; /* gemm.cu */

typedef struct PcCudaBlasEntry {
    cudaStream_t stream;          /* the stream this handle is bound to (not owned) */
    cublasHandle_t handle;        /* owned */
    void *workspace;              /* owned, cudaMalloc'd, PC_CUDA_BLAS_WORKSPACE bytes */
} PcCudaBlasEntry;

typedef struct PcCudaContext {
    int device;
    int sm_count;
    int cc_major, cc_minor;
    size_t total_memory;
    bool index_checks;            /* synchronous bounds checks (PIPEC_CUDA_INDEX_CHECK != 0) */

    cudaStream_t compute;                          /* owned */
    cudaStream_t comm[PC_CUDA_NUM_COMM_STREAMS];   /* owned, high priority, non-blocking */
    cublasLtHandle_t lt;                           /* owned; stream-agnostic */

    std::mutex lock;                    /* guards blas, events, index_free, peer_in */
    cudaStream_t peer_in[PC_CUDA_MAX_DEVICES]; /* owned, created on first use: copies from
                                                  device i into this one (high priority,
                                                  non-blocking) */
    std::vector<PcCudaBlasEntry> blas;  /* one per stream that ran a GEMM */
    std::vector<cudaEvent_t> events;    /* free timing-disabled events (owned) */

    int64_t *index_host;                /* owned, mapped pinned: PC_CUDA_INDEX_SLOTS x 4 */
    int64_t *index_dev;                 /* the device alias of index_host */
    std::vector<int> index_free;        /* free slot numbers */

    std::mutex staging_lock;            /* one host copy at a time uses the staging buffers */
    void *staging[2];                   /* owned, pinned, PC_CUDA_STAGING_CHUNK bytes each */
    cudaEvent_t staging_ev[2];          /* owned: the last copy that used each buffer */

    std::mutex gemm_lock;               /* guards gemm_cache and its descriptors */
    struct PcCudaGemmCache *gemm_cache; /* owned by gemm.cu, created on first GEMM */
} PcCudaContext;

/* The context of device `dev`, created on first use. Never destroyed (process lifetime). */
PcStatus pc_cuda_ctx_get(int dev, PcCudaContext **out);
/* The calling thread's current stream on the context's device. */
cudaStream_t pc_cuda_ctx_stream(PcCudaContext *ctx);
/* The cuBLAS handle bound to `stream` (created with its workspace on first use). */
PcStatus pc_cuda_ctx_blas(PcCudaContext *ctx, cudaStream_t stream, cublasHandle_t *handle,
                          void **workspace);
/* Borrow / return a timing-disabled event from the pool. */
PcStatus pc_cuda_ctx_event_get(PcCudaContext *ctx, cudaEvent_t *out);
void pc_cuda_ctx_event_put(PcCudaContext *ctx, cudaEvent_t ev);

/* Sets the current device for a scope and restores the previous one on exit. */
class PcCudaDeviceGuard {
  public:
    PcCudaDeviceGuard() = default;
    PcCudaDeviceGuard(const PcCudaDeviceGuard &) = delete;
    PcCudaDeviceGuard &operator=(const PcCudaDeviceGuard &) = delete;
    PcStatus enter(int dev);
    ~PcCudaDeviceGuard();

  private:
    int prev_ = -1;
    bool changed_ = false;
};

/* The scope of one backend call on device `dev`: device guard, context and current stream.
 * Use: PcCudaExec ex; PC_TRY(ex.begin(dev)); ... ex.stream ... */
struct PcCudaExec {
    PcCudaDeviceGuard guard;
    PcCudaContext *ctx = nullptr;
    cudaStream_t stream = nullptr;
    PcStatus begin(int dev);
    PcStatus begin(PcDevice dev) { return begin(dev.index); }
};

/* ---- index checks (gather, scatter, index_select, index_add) ----
 * A slot is 4 int64 in mapped pinned memory: [0] set to 1 by the first out-of-range index,
 * [1] the bad index, [2] the position, [3] the bound. With checks on, the launcher waits for
 * the stream and reports PC_ERR_INDEX; with PIPEC_CUDA_INDEX_CHECK=0 in the environment,
 * kernels skip bad indices (reads give 0) and nothing waits. */
typedef struct PcCudaIndexCheck {
    PcCudaContext *ctx;
    int slot;           /* -1 when checks are off */
    int64_t *dev_ptr;   /* NULL when checks are off; passed to the kernel */
} PcCudaIndexCheck;

PcStatus pc_cuda_index_check_begin(PcCudaExec *ex, PcCudaIndexCheck *chk);
/* Waits for the stream, reports the first bad index naming `op`, frees the slot. */
PcStatus pc_cuda_index_check_end(PcCudaExec *ex, PcCudaIndexCheck *chk, const char *op);

__device__ __forceinline__ void pc_cuda_index_fail(int64_t *slot, int64_t bad, int64_t pos,
                                                   int64_t bound) {
    if (slot && atomicCAS(reinterpret_cast<unsigned long long *>(slot), 0ull, 1ull) == 0ull) {
        slot[1] = bad;
        slot[2] = pos;
        slot[3] = bound;
    }
}

/* ---- allocator (allocator.cu) ---- */

PcStatus pc_cuda_alloc(PcDevice dev, size_t nbytes, void **out);
void pc_cuda_free(PcDevice dev, void *ptr, size_t nbytes);

/* A temporary device buffer, freed (to the cache, stream-ordered) at scope exit. Only use it
 * on the stream that was current when it was allocated. */
class PcCudaTemp {
  public:
    PcCudaTemp() = default;
    PcCudaTemp(const PcCudaTemp &) = delete;
    PcCudaTemp &operator=(const PcCudaTemp &) = delete;
    PcStatus alloc(int dev, size_t nbytes) {
        release();
        dev_ = dev;
        nbytes_ = nbytes;
        return pc_cuda_alloc(PcDevice{PC_CUDA, dev}, nbytes ? nbytes : 1, &ptr_);
    }
    void release() {
        if (ptr_) pc_cuda_free(PcDevice{PC_CUDA, dev_}, ptr_, nbytes_);
        ptr_ = nullptr;
    }
    ~PcCudaTemp() { release(); }
    template <typename T> T *as() const { return static_cast<T *>(ptr_); }

  private:
    void *ptr_ = nullptr;
    size_t nbytes_ = 0;
    int dev_ = 0;
};

/* ---- dtype traits and conversions ---- */

/* The type kernels compute in: float for float32 and the half types. */
template <typename T> struct PcAcc { using type = float; };
template <> struct PcAcc<double> { using type = double; };
template <> struct PcAcc<int64_t> { using type = int64_t; };
template <> struct PcAcc<bool> { using type = int64_t; };
template <typename T> using pc_acc_t = typename PcAcc<T>::type;

/* Value conversion with the CPU backend's rules: half types round to nearest even through
 * float32; to bool is `!= 0`; float to int64 truncates. */
template <typename To, typename From> __device__ __forceinline__ To pc_cvt(From x) {
    if constexpr (std::is_same_v<From, __half>) {
        return pc_cvt<To, float>(__half2float(x));
    } else if constexpr (std::is_same_v<From, __nv_bfloat16>) {
        return pc_cvt<To, float>(__bfloat162float(x));
    } else if constexpr (std::is_same_v<To, From>) {
        return x;
    } else if constexpr (std::is_same_v<To, __half>) {
        return __float2half_rn(static_cast<float>(x));
    } else if constexpr (std::is_same_v<To, __nv_bfloat16>) {
        return __float2bfloat16_rn(static_cast<float>(x));
    } else if constexpr (std::is_same_v<To, bool>) {
        return x != From(0);
    } else {
        return static_cast<To>(x);
    }
}

/* Call f(T{}) with the C++ type of a PcDType; false when the dtype is not in the set. */
#define PC_CUDA_FLOAT_TYPES(X) X(PC_FLOAT32, float) X(PC_FLOAT64, double) \
    X(PC_FLOAT16, __half) X(PC_BFLOAT16, __nv_bfloat16)
#define PC_CUDA_ALL_TYPES(X) PC_CUDA_FLOAT_TYPES(X) X(PC_INT64, int64_t) X(PC_BOOL, bool)

template <typename F> bool pc_cuda_dispatch_float(PcDType dt, F &&f) {
    switch (dt) {
#define PC_X_(code, type) case code: f(type{}); return true;
        PC_CUDA_FLOAT_TYPES(PC_X_)
#undef PC_X_
    default: return false;
    }
}
template <typename F> bool pc_cuda_dispatch_all(PcDType dt, F &&f) {
    switch (dt) {
#define PC_X_(code, type) case code: f(type{}); return true;
        PC_CUDA_ALL_TYPES(PC_X_)
#undef PC_X_
    default: return false;
    }
}

/* A 16-byte (or smaller) aligned vector of N elements for vectorised loads and stores. */
template <typename T, int N> struct alignas(sizeof(T) * N) PcVec {
    T v[N];
};

/* ---- strided iteration ----
 * Up to NARGS operands over one logical shape. Passed to kernels by value; dims of size 1 are
 * dropped and adjacent dims merged where every operand allows it (pc_cuda_iter_init). */
template <int NARGS> struct PcCudaIter {
    int ndim;
    int64_t shape[PC_MAX_DIMS];
    int64_t strides[NARGS][PC_MAX_DIMS]; /* in elements */
};

template <int NARGS>
void pc_cuda_iter_init(PcCudaIter<NARGS> *it, int ndim, const int64_t *shape,
                       const int64_t *const *strides) {
    int n = 0;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] == 1) continue;
        if (n > 0) {
            bool merge = true; /* dim n-1 (outer) and d (inner) form one dim */
            for (int k = 0; k < NARGS; k++)
                if (it->strides[k][n - 1] != strides[k][d] * shape[d]) merge = false;
            if (merge) {
                it->shape[n - 1] *= shape[d];
                for (int k = 0; k < NARGS; k++) it->strides[k][n - 1] = strides[k][d];
                continue;
            }
        }
        it->shape[n] = shape[d];
        for (int k = 0; k < NARGS; k++) it->strides[k][n] = strides[k][d];
        n++;
    }
    for (int d = n; d < PC_MAX_DIMS; d++) {
        it->shape[d] = 1;
        for (int k = 0; k < NARGS; k++) it->strides[k][d] = 0;
    }
    it->ndim = n;
}

/* True when every element offset of the iteration fits IndexT-sized arithmetic (2^31). */
template <int NARGS> bool pc_cuda_iter_fits32(const PcCudaIter<NARGS> &it, int64_t numel) {
    if (numel >= (int64_t(1) << 31)) return false;
    for (int k = 0; k < NARGS; k++) {
        int64_t span = 0;
        for (int d = 0; d < it.ndim; d++) span += (it.shape[d] - 1) * it.strides[k][d];
        if (span >= (int64_t(1) << 31)) return false;
    }
    return true;
}

/* Element offsets (in elements) of linear index `i` (row-major over it.shape). */
template <int NARGS, typename IndexT>
__device__ __forceinline__ void pc_cuda_iter_offsets(const PcCudaIter<NARGS> &it, IndexT i,
                                                     IndexT (&off)[NARGS]) {
#pragma unroll
    for (int k = 0; k < NARGS; k++) off[k] = 0;
#pragma unroll
    for (int d = PC_MAX_DIMS - 1; d >= 1; d--) {
        if (d < it.ndim) {
            IndexT sz = static_cast<IndexT>(it.shape[d]);
            IndexT q = i / sz;
            IndexT r = i - q * sz;
            i = q;
#pragma unroll
            for (int k = 0; k < NARGS; k++) off[k] += r * static_cast<IndexT>(it.strides[k][d]);
        }
    }
    /* the outermost dim needs no division (i < shape[0] already) */
#pragma unroll
    for (int k = 0; k < NARGS; k++) off[k] += i * static_cast<IndexT>(it.strides[k][0]);
}

/* ---- launch sizes ---- */

#define PC_CUDA_THREADS 256

/* Blocks for a grid-stride loop over n items with `threads` per block (at least 1). */
static inline unsigned int pc_cuda_blocks(const PcCudaContext *ctx, int64_t n, int threads) {
    int64_t want = (n + threads - 1) / threads;
    int64_t cap = (int64_t)ctx->sm_count * (2048 / threads) * 4;
    if (want > cap) want = cap;
    return want < 1 ? 1u : (unsigned int)want;
}

static inline bool pc_cuda_aligned(const void *p, size_t align) {
    return (reinterpret_cast<uintptr_t>(p) % align) == 0;
}

/* ---- backend entry points (one .cu file each family) ---- */

/* context.cu */
PcStatus pc_cuda_copy_h2d(PcDevice dev, void *dst, const void *src, size_t nbytes);
PcStatus pc_cuda_copy_d2h(PcDevice dev, void *dst, const void *src, size_t nbytes);
PcStatus pc_cuda_copy_d2d(PcDevice dst_dev, void *dst, PcDevice src_dev, const void *src,
                          size_t nbytes);
PcStatus pc_cuda_synchronize(PcDevice dev);

/* elementwise.cu */
PcStatus pc_cuda_copy(PcTensor *dst, const PcTensor *src);
PcStatus pc_cuda_fill(PcTensor *dst, double value);
PcStatus pc_cuda_unary(PcUnaryOp op, PcTensor *dst, const PcTensor *src, double s);
PcStatus pc_cuda_binary(PcBinaryOp op, PcTensor *dst, const PcTensor *a, const PcTensor *b,
                        double alpha);
/* Fill `numel` contiguous elements of dtype at ptr on the exec's stream. */
PcStatus pc_cuda_fill_raw(PcCudaExec *ex, void *ptr, PcDType dtype, int64_t numel,
                          double value);

/* reduce.cu */
PcStatus pc_cuda_reduce(PcReduceOp op, PcTensor *dst, const PcTensor *src);
PcStatus pc_cuda_max_dim(PcTensor *vals, PcTensor *idx, const PcTensor *src, int dim);

/* index.cu */
PcStatus pc_cuda_gather_dim(PcTensor *dst, const PcTensor *src, const PcTensor *idx, int dim);
PcStatus pc_cuda_scatter_add_dim(PcTensor *dst, const PcTensor *idx, const PcTensor *src,
                                 int dim);
PcStatus pc_cuda_index_select0(PcTensor *dst, const PcTensor *src, const PcTensor *idx);
PcStatus pc_cuda_index_add0(PcTensor *dst, const PcTensor *idx, const PcTensor *src);

/* gemm.cu */
PcStatus pc_cuda_gemm(PcDevice dev, const PcGemmArgs *args);

/* rowwise.cu */
PcStatus pc_cuda_softmax(PcTensor *y, const PcTensor *x, bool log);
PcStatus pc_cuda_softmax_backward(PcTensor *dx, const PcTensor *dy, const PcTensor *y,
                                  bool log);
PcStatus pc_cuda_layer_norm(PcTensor *y, PcTensor *mean, PcTensor *rstd, const PcTensor *x,
                            const PcTensor *w, const PcTensor *b, double eps);
PcStatus pc_cuda_layer_norm_backward(PcTensor *dx, PcTensor *dw, PcTensor *db,
                                     const PcTensor *dy, const PcTensor *x,
                                     const PcTensor *mean, const PcTensor *rstd,
                                     const PcTensor *w);

/* random.cu */
PcStatus pc_cuda_random(PcTensor *dst, PcRandomDist dist, double a, double b, uint64_t seed,
                        uint64_t offset);

/* optim.cu */
PcStatus pc_cuda_sgd_step(int n, PcTensor *const *params, PcTensor *const *grads,
                          PcTensor *const *momentum_bufs, const PcSgdArgs *args);
PcStatus pc_cuda_adamw_step(int n, PcTensor *const *params, PcTensor *const *grads,
                            PcTensor *const *exp_avgs, PcTensor *const *exp_avg_sqs,
                            const PcAdamWArgs *args);

/* ---- argument checks shared by the launchers ---- */

/* t is on a CUDA device equal to `dev` (else PC_ERR_DEVICE naming op and arg). */
PcStatus pc_cuda_check_device(const char *op, const char *arg, const PcTensor *t, int dev);
/* t is contiguous (else PC_ERR_INVALID naming op and arg). */
PcStatus pc_cuda_check_contiguous(const char *op, const char *arg, const PcTensor *t);

#endif /* PC_KERNELS_CUDA_CUDA_INTERNAL_H */
