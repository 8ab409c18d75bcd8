/* elementwise.cu — copy (with dtype conversion), fill, unary and binary kernels.
 *
 * Three layouts per kernel family:
 *   - contiguous, 16-byte aligned operands: vector loads/stores of 16 bytes per thread
 *     (4 float32, 8 half, 2 float64/int64), a scalar tail for the last few elements;
 *   - contiguous but unaligned: coalesced scalar loop, 4 elements in flight per thread;
 *   - strided / broadcast (stride 0): a PcCudaIter passed by value, dims of size 1 dropped and
 *     mergeable dims merged, 32-bit index arithmetic whenever every offset fits.
 * Half types compute in float32, float64 in double, int64 in int64 (see backend.h for which
 * ops accept int64; bool supports copy and fill only). All launches are grid-stride loops on
 * the current stream and are checked.
 *
 * Exports: pc_cuda_copy, pc_cuda_fill, pc_cuda_unary, pc_cuda_binary, pc_cuda_fill_raw.
 */
#include "cuda_internal.h"

#include <cmath>
#include <cstring>

/* ---- math helpers (float and double overloads) ---- */

__device__ __forceinline__ float pc_exp(float x) { return expf(x); }
__device__ __forceinline__ double pc_exp(double x) { return exp(x); }
__device__ __forceinline__ float pc_log(float x) { return logf(x); }
__device__ __forceinline__ double pc_log(double x) { return log(x); }
__device__ __forceinline__ float pc_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double pc_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float pc_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double pc_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float pc_erf(float x) { return erff(x); }
__device__ __forceinline__ double pc_erf(double x) { return erf(x); }
__device__ __forceinline__ float pc_pow(float x, float y) { return powf(x, y); }
__device__ __forceinline__ double pc_pow(double x, double y) { return pow(x, y); }
__device__ __forceinline__ float pc_fabs(float x) { return fabsf(x); }
__device__ __forceinline__ double pc_fabs(double x) { return fabs(x); }

/* ---- functors ---- */

template <typename Acc> __device__ __forceinline__ Acc pc_gelu_grad(Acc x) {
    const Acc inv_sqrt2 = Acc(0.70710678118654752440);
    const Acc inv_sqrt_2pi = Acc(0.39894228040143267794);
    Acc cdf = Acc(0.5) * (Acc(1) + pc_erf(x * inv_sqrt2));
    Acc pdf = inv_sqrt_2pi * pc_exp(Acc(-0.5) * x * x);
    return cdf + x * pdf;
}

/* The unary ops int64 supports. */
constexpr bool pc_unary_int_ok(int op) {
    return op == PC_U_NEG || op == PC_U_ABS || op == PC_U_ADD_S || op == PC_U_MUL_S ||
           op == PC_U_SIGN || op == PC_U_GE_S || op == PC_U_GT_S || op == PC_U_RSUB_S;
}
constexpr bool pc_binary_int_ok(int op) {
    return op == PC_B_ADD || op == PC_B_SUB || op == PC_B_MUL || op == PC_B_MAXIMUM ||
           op == PC_B_EQ || op == PC_B_NE || op == PC_B_LT || op == PC_B_LE || op == PC_B_GT ||
           op == PC_B_GE;
}

template <typename Acc, int OP> struct PcUnaryFn {
    Acc s;
    __device__ __forceinline__ Acc operator()(Acc x) const {
        if constexpr (OP == PC_U_NEG) return -x;
        else if constexpr (OP == PC_U_ABS) {
            if constexpr (std::is_integral_v<Acc>) return x < 0 ? -x : x;
            else return pc_fabs(x);
        }
        else if constexpr (OP == PC_U_EXP) return pc_exp(x);
        else if constexpr (OP == PC_U_LOG) return pc_log(x);
        else if constexpr (OP == PC_U_SQRT) return pc_sqrt(x);
        else if constexpr (OP == PC_U_TANH) return pc_tanh(x);
        else if constexpr (OP == PC_U_SIGMOID) return Acc(1) / (Acc(1) + pc_exp(-x));
        else if constexpr (OP == PC_U_RELU) return x > Acc(0) ? x : (x != x ? x : Acc(0));
        else if constexpr (OP == PC_U_GELU)
            return Acc(0.5) * x * (Acc(1) + pc_erf(x * Acc(0.70710678118654752440)));
        else if constexpr (OP == PC_U_POW) return pc_pow(x, s);
        else if constexpr (OP == PC_U_SIGN) return Acc((x > Acc(0)) - (x < Acc(0)));
        else if constexpr (OP == PC_U_ADD_S) return x + s;
        else if constexpr (OP == PC_U_MUL_S) return x * s;
        else if constexpr (OP == PC_U_RSUB_S) return s - x;
        else if constexpr (OP == PC_U_RDIV_S) return s / x;
        else if constexpr (OP == PC_U_GE_S) return x >= s ? Acc(1) : Acc(0);
        else return x > s ? Acc(1) : Acc(0); /* PC_U_GT_S */
    }
};

template <typename Acc, int OP> struct PcBinaryFn {
    Acc alpha;
    __device__ __forceinline__ Acc operator()(Acc a, Acc b) const {
        if constexpr (OP == PC_B_ADD) return a + alpha * b;
        else if constexpr (OP == PC_B_SUB) return a - alpha * b;
        else if constexpr (OP == PC_B_MUL) return a * b;
        else if constexpr (OP == PC_B_DIV) return a / b;
        else if constexpr (OP == PC_B_MAXIMUM) return (a > b || a != a) ? a : b;
        else if constexpr (OP == PC_B_EQ) return a == b ? Acc(1) : Acc(0);
        else if constexpr (OP == PC_B_NE) return a != b ? Acc(1) : Acc(0);
        else if constexpr (OP == PC_B_LT) return a < b ? Acc(1) : Acc(0);
        else if constexpr (OP == PC_B_LE) return a <= b ? Acc(1) : Acc(0);
        else if constexpr (OP == PC_B_GT) return a > b ? Acc(1) : Acc(0);
        else if constexpr (OP == PC_B_GE) return a >= b ? Acc(1) : Acc(0);
        else if constexpr (OP == PC_B_RELU_BWD) return b > Acc(0) ? a : Acc(0);
        else if constexpr (OP == PC_B_GELU_BWD) return a * pc_gelu_grad(b);
        else if constexpr (OP == PC_B_TANH_BWD) return a * (Acc(1) - b * b);
        else if constexpr (OP == PC_B_SIGMOID_BWD) return a * b * (Acc(1) - b);
        else return a * alpha * pc_pow(b, alpha - Acc(1)); /* PC_B_POW_BWD */
    }
};

/* ---- kernels: unary ---- */

template <typename T, typename F, int N>
__global__ void pc_unary_vec_kernel(T *dst, const T *src, int64_t n, F f) {
    using Acc = pc_acc_t<T>;
    int64_t nvec = n / N;
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    int64_t tid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (int64_t i = tid; i < nvec; i += stride) {
        PcVec<T, N> v = reinterpret_cast<const PcVec<T, N> *>(src)[i];
#pragma unroll
        for (int j = 0; j < N; j++) v.v[j] = pc_cvt<T>(f(pc_cvt<Acc>(v.v[j])));
        reinterpret_cast<PcVec<T, N> *>(dst)[i] = v;
    }
    for (int64_t i = nvec * N + tid; i < n; i += stride) dst[i] = pc_cvt<T>(f(pc_cvt<Acc>(src[i])));
}

template <typename T, typename F>
__global__ void pc_unary_contig_kernel(T *dst, const T *src, int64_t n, F f) {
    using Acc = pc_acc_t<T>;
    for (int64_t base = (int64_t)blockIdx.x * blockDim.x * 4; base < n;
         base += (int64_t)gridDim.x * blockDim.x * 4) {
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int64_t i = base + (int64_t)j * blockDim.x + threadIdx.x;
            if (i < n) dst[i] = pc_cvt<T>(f(pc_cvt<Acc>(src[i])));
        }
    }
}

template <typename T, typename F, typename IndexT>
__global__ void pc_unary_strided_kernel(PcCudaIter<2> it, T *dst, const T *src, IndexT n, F f) {
    using Acc = pc_acc_t<T>;
    for (IndexT i = (IndexT)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (IndexT)gridDim.x * blockDim.x) {
        IndexT off[2];
        pc_cuda_iter_offsets<2, IndexT>(it, i, off);
        dst[off[0]] = pc_cvt<T>(f(pc_cvt<Acc>(src[off[1]])));
    }
}

/* ---- kernels: binary ---- */

template <typename T, typename F, int N>
__global__ void pc_binary_vec_kernel(T *dst, const T *a, const T *b, int64_t n, F f) {
    using Acc = pc_acc_t<T>;
    int64_t nvec = n / N;
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    int64_t tid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (int64_t i = tid; i < nvec; i += stride) {
        PcVec<T, N> va = reinterpret_cast<const PcVec<T, N> *>(a)[i];
        PcVec<T, N> vb = reinterpret_cast<const PcVec<T, N> *>(b)[i];
#pragma unroll
        for (int j = 0; j < N; j++)
            va.v[j] = pc_cvt<T>(f(pc_cvt<Acc>(va.v[j]), pc_cvt<Acc>(vb.v[j])));
        reinterpret_cast<PcVec<T, N> *>(dst)[i] = va;
    }
    for (int64_t i = nvec * N + tid; i < n; i += stride)
        dst[i] = pc_cvt<T>(f(pc_cvt<Acc>(a[i]), pc_cvt<Acc>(b[i])));
}

template <typename T, typename F>
__global__ void pc_binary_contig_kernel(T *dst, const T *a, const T *b, int64_t n, F f) {
    using Acc = pc_acc_t<T>;
    for (int64_t base = (int64_t)blockIdx.x * blockDim.x * 4; base < n;
         base += (int64_t)gridDim.x * blockDim.x * 4) {
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int64_t i = base + (int64_t)j * blockDim.x + threadIdx.x;
            if (i < n) dst[i] = pc_cvt<T>(f(pc_cvt<Acc>(a[i]), pc_cvt<Acc>(b[i])));
        }
    }
}

template <typename T, typename F, typename IndexT>
__global__ void pc_binary_strided_kernel(PcCudaIter<3> it, T *dst, const T *a, const T *b,
                                         IndexT n, F f) {
    using Acc = pc_acc_t<T>;
    for (IndexT i = (IndexT)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (IndexT)gridDim.x * blockDim.x) {
        IndexT off[3];
        pc_cuda_iter_offsets<3, IndexT>(it, i, off);
        dst[off[0]] = pc_cvt<T>(f(pc_cvt<Acc>(a[off[1]]), pc_cvt<Acc>(b[off[2]])));
    }
}

/* ---- kernels: copy and fill ---- */

template <typename D, typename S>
__global__ void pc_copy_contig_kernel(D *dst, const S *src, int64_t n) {
    for (int64_t base = (int64_t)blockIdx.x * blockDim.x * 4; base < n;
         base += (int64_t)gridDim.x * blockDim.x * 4) {
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int64_t i = base + (int64_t)j * blockDim.x + threadIdx.x;
            if (i < n) dst[i] = pc_cvt<D>(src[i]);
        }
    }
}

template <typename D, typename S, typename IndexT>
__global__ void pc_copy_strided_kernel(PcCudaIter<2> it, D *dst, const S *src, IndexT n) {
    for (IndexT i = (IndexT)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (IndexT)gridDim.x * blockDim.x) {
        IndexT off[2];
        pc_cuda_iter_offsets<2, IndexT>(it, i, off);
        dst[off[0]] = pc_cvt<D>(src[off[1]]);
    }
}

template <typename T, int N>
__global__ void pc_fill_vec_kernel(T *dst, int64_t n, T value) {
    int64_t nvec = n / N;
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    int64_t tid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    PcVec<T, N> v;
#pragma unroll
    for (int j = 0; j < N; j++) v.v[j] = value;
    for (int64_t i = tid; i < nvec; i += stride) reinterpret_cast<PcVec<T, N> *>(dst)[i] = v;
    for (int64_t i = nvec * N + tid; i < n; i += stride) dst[i] = value;
}

template <typename T, typename IndexT>
__global__ void pc_fill_strided_kernel(PcCudaIter<1> it, T *dst, IndexT n, T value) {
    for (IndexT i = (IndexT)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (IndexT)gridDim.x * blockDim.x) {
        IndexT off[1];
        pc_cuda_iter_offsets<1, IndexT>(it, i, off);
        dst[off[0]] = value;
    }
}

/* ---- launchers ---- */

/* The host value of a double in T (same rounding as the CPU backend). */
template <typename T> static T pc_host_value(double v) {
    if constexpr (std::is_same_v<T, __half>) return __float2half_rn((float)v);
    else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __float2bfloat16_rn((float)v);
    else if constexpr (std::is_same_v<T, bool>) return v != 0.0;
    else return static_cast<T>(v);
}

template <typename T> static constexpr int pc_vec_width() { return (int)(16 / sizeof(T)); }

static PcStatus pc_elementwise_check(const char *op, const PcTensor *dst, const PcTensor *x,
                                     const char *xname) {
    PC_TRY(pc_cuda_check_device(op, xname, x, dst->device.index));
    if (x->dtype != dst->dtype)
        return pc_set_error(PC_ERR_TYPE, "%s: %s has dtype %s but the output is %s (the op layer "
                                         "converts inputs first)",
                            op, xname, pc_dtype_name(x->dtype), pc_dtype_name(dst->dtype));
    if (x->ndim != dst->ndim ||
        memcmp(x->shape, dst->shape, sizeof(int64_t) * (size_t)dst->ndim) != 0) {
        char b1[128], b2[128];
        return pc_set_error(PC_ERR_INVALID, "%s: %s has shape %s, the output %s (inputs arrive "
                                            "broadcast to the output's shape)",
                            op, xname, pc_shape_str(x->ndim, x->shape, b1, sizeof b1),
                            pc_shape_str(dst->ndim, dst->shape, b2, sizeof b2));
    }
    return PC_OK;
}

template <typename T, int OP>
static PcStatus pc_unary_launch(PcCudaExec &ex, PcTensor *dst, const PcTensor *src, double s) {
    if constexpr (std::is_same_v<T, int64_t> && !pc_unary_int_ok(OP)) {
        (void)ex; (void)dst; (void)src; (void)s;
        return pc_set_error(PC_ERR_TYPE, "unary op %d is not defined for int64 tensors", OP);
    } else {
        using Acc = pc_acc_t<T>;
        PcUnaryFn<Acc, OP> f{static_cast<Acc>(s)};
        int64_t n = pc_tensor_numel(dst);
        T *d = static_cast<T *>(pc_tensor_data(dst));
        const T *x = static_cast<const T *>(pc_tensor_data(src));
        constexpr int N = pc_vec_width<T>();
        if (pc_tensor_is_contiguous(dst) && pc_tensor_is_contiguous(src)) {
            unsigned blocks;
            if (pc_cuda_aligned(d, 16) && pc_cuda_aligned(x, 16)) {
                blocks = pc_cuda_blocks(ex.ctx, (n + N - 1) / N, PC_CUDA_THREADS);
                pc_unary_vec_kernel<T, decltype(f), N>
                    <<<blocks, PC_CUDA_THREADS, 0, ex.stream>>>(d, x, n, f);
            } else {
                blocks = pc_cuda_blocks(ex.ctx, (n + 3) / 4, PC_CUDA_THREADS);
                pc_unary_contig_kernel<T, decltype(f)>
                    <<<blocks, PC_CUDA_THREADS, 0, ex.stream>>>(d, x, n, f);
            }
            PC_CUDA_CHECK_LAUNCH("pc_unary_kernel (contiguous)");
            return PC_OK;
        }
        PcCudaIter<2> it;
        const int64_t *strides[2] = {dst->strides, src->strides};
        pc_cuda_iter_init<2>(&it, dst->ndim, dst->shape, strides);
        unsigned blocks = pc_cuda_blocks(ex.ctx, n, PC_CUDA_THREADS);
        if (pc_cuda_iter_fits32(it, n))
            pc_unary_strided_kernel<T, decltype(f), uint32_t>
                <<<blocks, PC_CUDA_THREADS, 0, ex.stream>>>(it, d, x, (uint32_t)n, f);
        else
            pc_unary_strided_kernel<T, decltype(f), int64_t>
                <<<blocks, PC_CUDA_THREADS, 0, ex.stream>>>(it, d, x, n, f);
        PC_CUDA_CHECK_LAUNCH("pc_unary_strided_kernel");
        return PC_OK;
    }
}

template <typename T>
static PcStatus pc_unary_typed(PcCudaExec &ex, PcUnaryOp op, PcTensor *dst, const PcTensor *src,
                               double s) {
    switch (op) {
#define PC_U_(name) case name: return pc_unary_launch<T, name>(ex, dst, src, s);
        PC_U_(PC_U_NEG) PC_U_(PC_U_ABS) PC_U_(PC_U_EXP) PC_U_(PC_U_LOG) PC_U_(PC_U_SQRT)
        PC_U_(PC_U_TANH) PC_U_(PC_U_SIGMOID) PC_U_(PC_U_RELU) PC_U_(PC_U_GELU) PC_U_(PC_U_POW)
        PC_U_(PC_U_SIGN) PC_U_(PC_U_ADD_S) PC_U_(PC_U_MUL_S) PC_U_(PC_U_RSUB_S)
        PC_U_(PC_U_RDIV_S) PC_U_(PC_U_GE_S) PC_U_(PC_U_GT_S)
#undef PC_U_
    default:
        return pc_set_error(PC_ERR_INVALID, "unknown unary op %d", (int)op);
    }
}

PcStatus pc_cuda_unary(PcUnaryOp op, PcTensor *dst, const PcTensor *src, double s) {
    PC_TRY(pc_elementwise_check("unary", dst, src, "input"));
    if (pc_tensor_numel(dst) == 0) return PC_OK;
    PcCudaExec ex;
    PC_TRY(ex.begin(dst->device));
    PcStatus st = PC_OK;
    bool ok = pc_cuda_dispatch_all(dst->dtype, [&](auto tag) {
        using T = decltype(tag);
        if constexpr (std::is_same_v<T, bool>)
            st = pc_set_error(PC_ERR_TYPE, "unary op %d is not defined for bool tensors",
                              (int)op);
        else
            st = pc_unary_typed<T>(ex, op, dst, src, s);
    });
    if (!ok) return pc_set_error(PC_ERR_TYPE, "unary: unsupported dtype %d", (int)dst->dtype);
    return st;
}

template <typename T, int OP>
static PcStatus pc_binary_launch(PcCudaExec &ex, PcTensor *dst, const PcTensor *a,
                                 const PcTensor *b, double alpha) {
    if constexpr (std::is_same_v<T, int64_t> && !pc_binary_int_ok(OP)) {
        (void)ex; (void)dst; (void)a; (void)b; (void)alpha;
        return pc_set_error(PC_ERR_TYPE, "binary op %d is not defined for int64 tensors", OP);
    } else {
        using Acc = pc_acc_t<T>;
        PcBinaryFn<Acc, OP> f{static_cast<Acc>(alpha)};
        int64_t n = pc_tensor_numel(dst);
        T *d = static_cast<T *>(pc_tensor_data(dst));
        const T *pa = static_cast<const T *>(pc_tensor_data(a));
        const T *pb = static_cast<const T *>(pc_tensor_data(b));
        constexpr int N = pc_vec_width<T>();
        if (pc_tensor_is_contiguous(dst) && pc_tensor_is_contiguous(a) &&
            pc_tensor_is_contiguous(b)) {
            unsigned blocks;
            if (pc_cuda_aligned(d, 16) && pc_cuda_aligned(pa, 16) && pc_cuda_aligned(pb, 16)) {
                blocks = pc_cuda_blocks(ex.ctx, (n + N - 1) / N, PC_CUDA_THREADS);
                pc_binary_vec_kernel<T, decltype(f), N>
                    <<<blocks, PC_CUDA_THREADS, 0, ex.stream>>>(d, pa, pb, n, f);
            } else {
                blocks = pc_cuda_blocks(ex.ctx, (n + 3) / 4, PC_CUDA_THREADS);
                pc_binary_contig_kernel<T, decltype(f)>
                    <<<blocks, PC_CUDA_THREADS, 0, ex.stream>>>(d, pa, pb, n, f);
            }
            PC_CUDA_CHECK_LAUNCH("pc_binary_kernel (contiguous)");
            return PC_OK;
        }
        PcCudaIter<3> it;
        const int64_t *strides[3] = {dst->strides, a->strides, b->strides};
        pc_cuda_iter_init<3>(&it, dst->ndim, dst->shape, strides);
        unsigned blocks = pc_cuda_blocks(ex.ctx, n, PC_CUDA_THREADS);
        if (pc_cuda_iter_fits32(it, n))
            pc_binary_strided_kernel<T, decltype(f), uint32_t>
                <<<blocks, PC_CUDA_THREADS, 0, ex.stream>>>(it, d, pa, pb, (uint32_t)n, f);
        else
            pc_binary_strided_kernel<T, decltype(f), int64_t>
                <<<blocks, PC_CUDA_THREADS, 0, ex.stream>>>(it, d, pa, pb, n, f);
        PC_CUDA_CHECK_LAUNCH("pc_binary_strided_kernel");
        return PC_OK;
    }
}

template <typename T>
static PcStatus pc_binary_typed(PcCudaExec &ex, PcBinaryOp op, PcTensor *dst, const PcTensor *a,
                                const PcTensor *b, double alpha) {
    switch (op) {
#define PC_B_(name) case name: return pc_binary_launch<T, name>(ex, dst, a, b, alpha);
        PC_B_(PC_B_ADD) PC_B_(PC_B_SUB) PC_B_(PC_B_MUL) PC_B_(PC_B_DIV) PC_B_(PC_B_MAXIMUM)
        PC_B_(PC_B_EQ) PC_B_(PC_B_NE) PC_B_(PC_B_LT) PC_B_(PC_B_LE) PC_B_(PC_B_GT)
        PC_B_(PC_B_GE) PC_B_(PC_B_RELU_BWD) PC_B_(PC_B_GELU_BWD) PC_B_(PC_B_TANH_BWD)
        PC_B_(PC_B_SIGMOID_BWD) PC_B_(PC_B_POW_BWD)
#undef PC_B_
    default:
        return pc_set_error(PC_ERR_INVALID, "unknown binary op %d", (int)op);
    }
}

PcStatus pc_cuda_binary(PcBinaryOp op, PcTensor *dst, const PcTensor *a, const PcTensor *b,
                        double alpha) {
    PC_TRY(pc_elementwise_check("binary", dst, a, "a"));
    PC_TRY(pc_elementwise_check("binary", dst, b, "b"));
    if (pc_tensor_numel(dst) == 0) return PC_OK;
    PcCudaExec ex;
    PC_TRY(ex.begin(dst->device));
    PcStatus st = PC_OK;
    bool ok = pc_cuda_dispatch_all(dst->dtype, [&](auto tag) {
        using T = decltype(tag);
        if constexpr (std::is_same_v<T, bool>)
            st = pc_set_error(PC_ERR_TYPE, "binary op %d is not defined for bool tensors",
                              (int)op);
        else
            st = pc_binary_typed<T>(ex, op, dst, a, b, alpha);
    });
    if (!ok) return pc_set_error(PC_ERR_TYPE, "binary: unsupported dtype %d", (int)dst->dtype);
    return st;
}

/* ---- copy ---- */

template <typename D, typename S>
static PcStatus pc_copy_launch(PcCudaExec &ex, PcTensor *dst, const void *src_data,
                               const int64_t *src_strides, bool src_contig) {
    int64_t n = pc_tensor_numel(dst);
    D *d = static_cast<D *>(pc_tensor_data(dst));
    const S *s = static_cast<const S *>(src_data);
    if (pc_tensor_is_contiguous(dst) && src_contig) {
        unsigned blocks = pc_cuda_blocks(ex.ctx, (n + 3) / 4, PC_CUDA_THREADS);
        pc_copy_contig_kernel<D, S><<<blocks, PC_CUDA_THREADS, 0, ex.stream>>>(d, s, n);
        PC_CUDA_CHECK_LAUNCH("pc_copy_contig_kernel");
        return PC_OK;
    }
    PcCudaIter<2> it;
    const int64_t *strides[2] = {dst->strides, src_strides};
    pc_cuda_iter_init<2>(&it, dst->ndim, dst->shape, strides);
    unsigned blocks = pc_cuda_blocks(ex.ctx, n, PC_CUDA_THREADS);
    if (pc_cuda_iter_fits32(it, n))
        pc_copy_strided_kernel<D, S, uint32_t>
            <<<blocks, PC_CUDA_THREADS, 0, ex.stream>>>(it, d, s, (uint32_t)n);
    else
        pc_copy_strided_kernel<D, S, int64_t>
            <<<blocks, PC_CUDA_THREADS, 0, ex.stream>>>(it, d, s, n);
    PC_CUDA_CHECK_LAUNCH("pc_copy_strided_kernel");
    return PC_OK;
}

/* Elements spanned by a view with non-negative strides (0 when it is empty). */
static int64_t pc_view_span(const PcTensor *t) {
    int64_t span = 1;
    for (int d = 0; d < t->ndim; d++) {
        if (t->shape[d] == 0) return 0;
        span += (t->shape[d] - 1) * t->strides[d];
    }
    return span;
}

PcStatus pc_cuda_copy(PcTensor *dst, const PcTensor *src) {
    if (dst->device.type != PC_CUDA || src->device.type != PC_CUDA)
        return pc_set_error(PC_ERR_DEVICE, "copy: the CUDA kernel copies between CUDA tensors "
                                           "only (host transfers go through copy_h2d/d2h)");
    char b1[128], b2[128];
    if (dst->ndim != src->ndim ||
        memcmp(dst->shape, src->shape, sizeof(int64_t) * (size_t)dst->ndim) != 0)
        return pc_set_error(PC_ERR_INVALID, "copy: source shape %s differs from destination %s",
                            pc_shape_str(src->ndim, src->shape, b1, sizeof b1),
                            pc_shape_str(dst->ndim, dst->shape, b2, sizeof b2));
    int64_t n = pc_tensor_numel(dst);
    if (n == 0) return PC_OK;
    size_t isz = pc_dtype_size(src->dtype);
    PcCudaExec ex;
    PC_TRY(ex.begin(dst->device));

    /* Another device: bring the spanned bytes of src over first, then convert locally. */
    const void *src_data = pc_tensor_data(src);
    PcCudaTemp staged;
    if (src->device.index != dst->device.index) {
        int64_t span = pc_view_span(src);
        PC_TRY(staged.alloc(dst->device.index, (size_t)span * isz));
        PC_TRY(pc_cuda_copy_d2d(dst->device, staged.as<void>(), src->device, src_data,
                                (size_t)span * isz));
        src_data = staged.as<void>();
    }
    bool src_contig = pc_tensor_is_contiguous(src);
    if (dst->dtype == src->dtype && src_contig && pc_tensor_is_contiguous(dst)) {
        PC_CUDA_TRY(cudaMemcpyAsync(pc_tensor_data(dst), src_data, (size_t)n * isz,
                                    cudaMemcpyDeviceToDevice, ex.stream));
        return PC_OK;
    }
    PcStatus st = PC_OK;
    bool ok = pc_cuda_dispatch_all(dst->dtype, [&](auto dtag) {
        using D = decltype(dtag);
        bool ok2 = pc_cuda_dispatch_all(src->dtype, [&](auto stag) {
            using S = decltype(stag);
            st = pc_copy_launch<D, S>(ex, dst, src_data, src->strides, src_contig);
        });
        if (!ok2) st = pc_set_error(PC_ERR_TYPE, "copy: unsupported source dtype %d",
                                    (int)src->dtype);
    });
    if (!ok) return pc_set_error(PC_ERR_TYPE, "copy: unsupported dtype %d", (int)dst->dtype);
    return st;
}

/* ---- fill ---- */

template <typename T>
static PcStatus pc_fill_contig(PcCudaExec *ex, T *d, int64_t n, double value) {
    T v = pc_host_value<T>(value);
    constexpr int N = pc_vec_width<T>() > 0 ? pc_vec_width<T>() : 1;
    unsigned blocks;
    if (pc_cuda_aligned(d, 16)) {
        blocks = pc_cuda_blocks(ex->ctx, (n + N - 1) / N, PC_CUDA_THREADS);
        pc_fill_vec_kernel<T, N><<<blocks, PC_CUDA_THREADS, 0, ex->stream>>>(d, n, v);
    } else {
        blocks = pc_cuda_blocks(ex->ctx, n, PC_CUDA_THREADS);
        pc_fill_vec_kernel<T, 1><<<blocks, PC_CUDA_THREADS, 0, ex->stream>>>(d, n, v);
    }
    PC_CUDA_CHECK_LAUNCH("pc_fill_vec_kernel");
    return PC_OK;
}

PcStatus pc_cuda_fill_raw(PcCudaExec *ex, void *ptr, PcDType dtype, int64_t numel, double value) {
    if (numel == 0) return PC_OK;
    if (value == 0.0 && !std::signbit(value)) {
        PC_CUDA_TRY(cudaMemsetAsync(ptr, 0, (size_t)numel * pc_dtype_size(dtype), ex->stream));
        return PC_OK;
    }
    PcStatus st = PC_OK;
    bool ok = pc_cuda_dispatch_all(dtype, [&](auto tag) {
        using T = decltype(tag);
        st = pc_fill_contig<T>(ex, static_cast<T *>(ptr), numel, value);
    });
    if (!ok) return pc_set_error(PC_ERR_TYPE, "fill: unsupported dtype %d", (int)dtype);
    return st;
}

PcStatus pc_cuda_fill(PcTensor *dst, double value) {
    int64_t n = pc_tensor_numel(dst);
    if (n == 0) return PC_OK;
    PcCudaExec ex;
    PC_TRY(ex.begin(dst->device));
    if (pc_tensor_is_contiguous(dst))
        return pc_cuda_fill_raw(&ex, pc_tensor_data(dst), dst->dtype, n, value);
    PcCudaIter<1> it;
    const int64_t *strides[1] = {dst->strides};
    pc_cuda_iter_init<1>(&it, dst->ndim, dst->shape, strides);
    PcStatus st = PC_OK;
    bool ok = pc_cuda_dispatch_all(dst->dtype, [&](auto tag) {
        using T = decltype(tag);
        T v = pc_host_value<T>(value);
        T *d = static_cast<T *>(pc_tensor_data(dst));
        unsigned blocks = pc_cuda_blocks(ex.ctx, n, PC_CUDA_THREADS);
        if (pc_cuda_iter_fits32(it, n))
            pc_fill_strided_kernel<T, uint32_t>
                <<<blocks, PC_CUDA_THREADS, 0, ex.stream>>>(it, d, (uint32_t)n, v);
        else
            pc_fill_strided_kernel<T, int64_t><<<blocks, PC_CUDA_THREADS, 0, ex.stream>>>(it, d, n, v);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) st = pc_cuda_fail(e, "launch of pc_fill_strided_kernel", __FILE__,
                                                __LINE__);
    });
    if (!ok) return pc_set_error(PC_ERR_TYPE, "fill: unsupported dtype %d", (int)dst->dtype);
    return st;
}
