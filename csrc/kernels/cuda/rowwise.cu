/* rowwise.cu — softmax / log-softmax (forward, backward) and layer norm (forward, backward)
 * over the last dim of contiguous tensors.
 *
 * Rows of up to 1024 elements get one warp each (8 rows per 256-thread block); longer rows
 * get one block each (256 to 1024 threads). Softmax keeps a running (max, sum of exp) pair per
 * thread (one pass over x), merges the pairs across the row, then writes y in a second pass.
 * Layer norm takes the mean first and then the sum of squared deviations (two passes over a
 * row that sits in L1/L2, more accurate than sum-of-squares), then writes y. Its backward
 * computes dx row-wise and dw/db as column sums: (32 columns x 8 rows) blocks over row chunks,
 * float32 partials in a temporary buffer, a finalize kernel.
 * Half types compute in float32, float64 in double. mean/rstd are float32 for float32 and the
 * half types, float64 for float64.
 *
 * Exports: pc_cuda_softmax, pc_cuda_softmax_backward, pc_cuda_layer_norm,
 * pc_cuda_layer_norm_backward.
 */
#include "cuda_internal.h"

#include <cmath>
#include <cstring>

/* ---- reductions inside a row ---- */

__device__ __forceinline__ float pc_expr(float x) { return expf(x); }
__device__ __forceinline__ double pc_expr(double x) { return exp(x); }
__device__ __forceinline__ float pc_logr(float x) { return logf(x); }
__device__ __forceinline__ double pc_logr(double x) { return log(x); }
__device__ __forceinline__ float pc_sqrtr(float x) { return sqrtf(x); }
__device__ __forceinline__ double pc_sqrtr(double x) { return sqrt(x); }

template <typename A> struct PcMaxSum {
    A m, s;
};

/* Merge two (max, sum exp(x - max)) pairs; -inf maxima contribute only through counts. */
template <typename A> __device__ __forceinline__ PcMaxSum<A> pc_ms_merge(PcMaxSum<A> p, PcMaxSum<A> q) {
    A m = p.m > q.m ? p.m : q.m;
    if (m == -A(INFINITY)) return PcMaxSum<A>{m, p.s + q.s};
    A s = (p.m == -A(INFINITY) ? A(0) : p.s * pc_expr(p.m - m)) +
          (q.m == -A(INFINITY) ? A(0) : q.s * pc_expr(q.m - m));
    return PcMaxSum<A>{m, s};
}

template <typename A> __device__ __forceinline__ PcMaxSum<A> pc_ms_add(PcMaxSum<A> p, A x) {
    if (x > p.m) {
        p.s = (p.m == -A(INFINITY) ? A(0) : p.s * pc_expr(p.m - x)) + A(1);
        p.m = x;
    } else if (x == -A(INFINITY) && p.m == -A(INFINITY)) {
        p.s += A(1);
    } else {
        p.s += pc_expr(x - p.m); /* NaN x makes s NaN: the whole row becomes NaN */
    }
    return p;
}

template <typename A> __device__ __forceinline__ PcMaxSum<A> pc_ms_warp(PcMaxSum<A> p) {
#pragma unroll
    for (int d = 16; d > 0; d >>= 1) {
        PcMaxSum<A> q{__shfl_xor_sync(0xffffffffu, p.m, d), __shfl_xor_sync(0xffffffffu, p.s, d)};
        p = pc_ms_merge(p, q);
    }
    return p;
}

template <typename A> __device__ __forceinline__ A pc_sum_warp(A v) {
#pragma unroll
    for (int d = 16; d > 0; d >>= 1) v += __shfl_xor_sync(0xffffffffu, v, d);
    return v;
}

/* Sum over the block; every thread gets the result. `sh` holds >= 32 values. */
template <typename A> __device__ __forceinline__ A pc_sum_block(A v, A *sh) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = pc_sum_warp(v);
    __syncthreads(); /* sh may still be read from a previous call */
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : A(0);
    return pc_sum_warp(v);
}

template <typename A> __device__ __forceinline__ PcMaxSum<A> pc_ms_block(PcMaxSum<A> p, A *sh) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    p = pc_ms_warp(p);
    __syncthreads();
    if (lane == 0) {
        sh[warp] = p.m;
        sh[32 + warp] = p.s;
    }
    __syncthreads();
    PcMaxSum<A> q = lane < nw ? PcMaxSum<A>{sh[lane], sh[32 + lane]}
                              : PcMaxSum<A>{-A(INFINITY), A(0)};
    return pc_ms_warp(q);
}

/* A row of the launch: one warp (ROW_THREADS == 32) or one block. */
template <int ROW_THREADS> struct PcRowCtx {
    __device__ static int lane() { return ROW_THREADS == 32 ? (threadIdx.x & 31) : threadIdx.x; }
    __device__ static int64_t row0() {
        return ROW_THREADS == 32 ? (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)
                                 : (int64_t)blockIdx.x;
    }
    __device__ static int64_t rstep() {
        return ROW_THREADS == 32 ? (int64_t)gridDim.x * (blockDim.x >> 5) : (int64_t)gridDim.x;
    }
    __device__ static int width() { return ROW_THREADS == 32 ? 32 : blockDim.x; }
};

/* ---- softmax ---- */

template <typename T, int RT>
__global__ void pc_softmax_kernel(T *y, const T *x, int64_t rows, int64_t D, bool log) {
    using A = pc_acc_t<T>;
    __shared__ A sh[64];
    using R = PcRowCtx<RT>;
    for (int64_t row = R::row0(); row < rows; row += R::rstep()) {
        const T *xr = x + row * D;
        T *yr = y + row * D;
        PcMaxSum<A> p{-A(INFINITY), A(0)};
        for (int64_t i = R::lane(); i < D; i += R::width()) p = pc_ms_add(p, pc_cvt<A>(xr[i]));
        p = RT == 32 ? pc_ms_warp(p) : pc_ms_block(p, sh);
        A lse = p.m + pc_logr(p.s);
        A inv = A(1) / p.s;
        for (int64_t i = R::lane(); i < D; i += R::width()) {
            A v = pc_cvt<A>(xr[i]);
            yr[i] = pc_cvt<T>(log ? v - lse : pc_expr(v - p.m) * inv);
        }
    }
}

template <typename T, int RT>
__global__ void pc_softmax_bwd_kernel(T *dx, const T *dy, const T *y, int64_t rows, int64_t D,
                                      bool log) {
    using A = pc_acc_t<T>;
    __shared__ A sh[64];
    using R = PcRowCtx<RT>;
    for (int64_t row = R::row0(); row < rows; row += R::rstep()) {
        const T *dyr = dy + row * D;
        const T *yr = y + row * D;
        T *dxr = dx + row * D;
        A s = A(0);
        for (int64_t i = R::lane(); i < D; i += R::width())
            s += log ? pc_cvt<A>(dyr[i]) : pc_cvt<A>(dyr[i]) * pc_cvt<A>(yr[i]);
        s = RT == 32 ? pc_sum_warp(s) : pc_sum_block(s, sh);
        for (int64_t i = R::lane(); i < D; i += R::width()) {
            A g = pc_cvt<A>(dyr[i]), v = pc_cvt<A>(yr[i]);
            dxr[i] = pc_cvt<T>(log ? g - pc_expr(v) * s : v * (g - s));
        }
    }
}

/* ---- layer norm ---- */

template <typename T, typename S, int RT>
__global__ void pc_layer_norm_kernel(T *y, S *mean, S *rstd, const T *x, const T *w, const T *b,
                                     int64_t rows, int64_t D, double eps) {
    using A = pc_acc_t<T>;
    __shared__ A sh[64];
    using R = PcRowCtx<RT>;
    for (int64_t row = R::row0(); row < rows; row += R::rstep()) {
        const T *xr = x + row * D;
        T *yr = y + row * D;
        A s = A(0);
        for (int64_t i = R::lane(); i < D; i += R::width()) s += pc_cvt<A>(xr[i]);
        s = RT == 32 ? pc_sum_warp(s) : pc_sum_block(s, sh);
        A mu = s / A(D);
        A q = A(0);
        for (int64_t i = R::lane(); i < D; i += R::width()) {
            A d = pc_cvt<A>(xr[i]) - mu;
            q += d * d;
        }
        q = RT == 32 ? pc_sum_warp(q) : pc_sum_block(q, sh);
        A rs = A(1) / pc_sqrtr(q / A(D) + A(eps));
        if (R::lane() == 0) {
            mean[row] = (S)mu;
            rstd[row] = (S)rs;
        }
        for (int64_t i = R::lane(); i < D; i += R::width()) {
            A v = (pc_cvt<A>(xr[i]) - mu) * rs;
            if (w) v *= pc_cvt<A>(w[i]);
            if (b) v += pc_cvt<A>(b[i]);
            yr[i] = pc_cvt<T>(v);
        }
    }
}

template <typename T, typename S, int RT>
__global__ void pc_layer_norm_dx_kernel(T *dx, const T *dy, const T *x, const S *mean,
                                        const S *rstd, const T *w, int64_t rows, int64_t D) {
    using A = pc_acc_t<T>;
    __shared__ A sh[64];
    using R = PcRowCtx<RT>;
    for (int64_t row = R::row0(); row < rows; row += R::rstep()) {
        const T *xr = x + row * D;
        const T *dyr = dy + row * D;
        T *dxr = dx + row * D;
        A mu = (A)mean[row], rs = (A)rstd[row];
        A s1 = A(0), s2 = A(0); /* sum g, sum g * xhat */
        for (int64_t i = R::lane(); i < D; i += R::width()) {
            A g = pc_cvt<A>(dyr[i]);
            if (w) g *= pc_cvt<A>(w[i]);
            A xh = (pc_cvt<A>(xr[i]) - mu) * rs;
            s1 += g;
            s2 += g * xh;
        }
        if (RT == 32) {
            s1 = pc_sum_warp(s1);
            s2 = pc_sum_warp(s2);
        } else {
            s1 = pc_sum_block(s1, sh);
            s2 = pc_sum_block(s2, sh);
        }
        A inv_d = A(1) / A(D);
        for (int64_t i = R::lane(); i < D; i += R::width()) {
            A g = pc_cvt<A>(dyr[i]);
            if (w) g *= pc_cvt<A>(w[i]);
            A xh = (pc_cvt<A>(xr[i]) - mu) * rs;
            dxr[i] = pc_cvt<T>(rs * (g - s1 * inv_d - xh * s2 * inv_d));
        }
    }
}

/* Column sums of dy * xhat (dw) and dy (db) over a chunk of rows: block (32, 8), blockIdx.y is
 * the chunk; partial is (chunks, 2, D) in the accumulation type. */
template <typename T, typename S>
__global__ void pc_layer_norm_dwdb_kernel(pc_acc_t<T> *partial, const T *dy, const T *x,
                                          const S *mean, const S *rstd, int64_t rows, int64_t D,
                                          int64_t chunk) {
    using A = pc_acc_t<T>;
    __shared__ A sw[8][33], sb[8][33];
    int64_t j = (int64_t)blockIdx.x * 32 + threadIdx.x;
    int64_t r0 = (int64_t)blockIdx.y * chunk;
    int64_t r1 = r0 + chunk < rows ? r0 + chunk : rows;
    A aw = A(0), ab = A(0);
    if (j < D) {
        for (int64_t r = r0 + threadIdx.y; r < r1; r += 8) {
            A g = pc_cvt<A>(dy[r * D + j]);
            A xh = (pc_cvt<A>(x[r * D + j]) - (A)mean[r]) * (A)rstd[r];
            aw += g * xh;
            ab += g;
        }
    }
    sw[threadIdx.y][threadIdx.x] = aw;
    sb[threadIdx.y][threadIdx.x] = ab;
    __syncthreads();
    if (threadIdx.y == 0 && j < D) {
#pragma unroll
        for (int k = 1; k < 8; k++) {
            aw += sw[k][threadIdx.x];
            ab += sb[k][threadIdx.x];
        }
        partial[((int64_t)blockIdx.y * 2 + 0) * D + j] = aw;
        partial[((int64_t)blockIdx.y * 2 + 1) * D + j] = ab;
    }
}

template <typename T>
__global__ void pc_layer_norm_dwdb_finalize_kernel(T *dw, T *db, const pc_acc_t<T> *partial,
                                                   int64_t chunks, int64_t D) {
    using A = pc_acc_t<T>;
    for (int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; j < D;
         j += (int64_t)gridDim.x * blockDim.x) {
        A aw = A(0), ab = A(0);
        for (int64_t c = 0; c < chunks; c++) {
            aw += partial[(c * 2 + 0) * D + j];
            ab += partial[(c * 2 + 1) * D + j];
        }
        if (dw) dw[j] = pc_cvt<T>(aw);
        if (db) db[j] = pc_cvt<T>(ab);
    }
}

/* ---- launchers ---- */

/* Launch `kernel` for rows of D elements: warp per row up to 1024, else block per row. */
struct PcRowLaunch {
    bool warp;
    unsigned blocks, threads;
};

static PcRowLaunch pc_row_launch(const PcCudaContext *ctx, int64_t rows, int64_t D) {
    PcRowLaunch l;
    if (D <= 1024) {
        l.warp = true;
        l.threads = PC_CUDA_THREADS;
        l.blocks = pc_cuda_blocks(ctx, rows * 32, PC_CUDA_THREADS);
    } else {
        l.warp = false;
        l.threads = D <= 4096 ? 256 : (D <= 16384 ? 512 : 1024);
        int64_t cap = (int64_t)ctx->sm_count * 16;
        l.blocks = (unsigned)(rows < cap ? rows : cap);
    }
    return l;
}

static PcStatus pc_rowwise_check(const char *op, const PcTensor *ref, const PcTensor *t,
                                 const char *arg) {
    PC_TRY(pc_cuda_check_device(op, arg, t, ref->device.index));
    PC_TRY(pc_cuda_check_contiguous(op, arg, t));
    if (t->dtype != ref->dtype)
        return pc_set_error(PC_ERR_TYPE, "%s: %s has dtype %s, expected %s", op, arg,
                            pc_dtype_name(t->dtype), pc_dtype_name(ref->dtype));
    if (pc_tensor_numel(t) != pc_tensor_numel(ref)) {
        char b1[128], b2[128];
        return pc_set_error(PC_ERR_INVALID, "%s: %s has shape %s, expected %s", op, arg,
                            pc_shape_str(t->ndim, t->shape, b1, sizeof b1),
                            pc_shape_str(ref->ndim, ref->shape, b2, sizeof b2));
    }
    return PC_OK;
}

static int64_t pc_last_dim(const PcTensor *t) { return t->ndim ? t->shape[t->ndim - 1] : 1; }

PcStatus pc_cuda_softmax(PcTensor *y, const PcTensor *x, bool log) {
    const char *op = log ? "log_softmax" : "softmax";
    PC_TRY(pc_rowwise_check(op, x, x, "input"));
    PC_TRY(pc_rowwise_check(op, x, y, "output"));
    if (!pc_dtype_is_float(x->dtype))
        return pc_set_error(PC_ERR_TYPE, "%s: not defined for %s", op, pc_dtype_name(x->dtype));
    int64_t D = pc_last_dim(x), n = pc_tensor_numel(x);
    if (n == 0) return PC_OK;
    int64_t rows = n / D;
    PcCudaExec ex;
    PC_TRY(ex.begin(x->device));
    PcRowLaunch l = pc_row_launch(ex.ctx, rows, D);
    pc_cuda_dispatch_float(x->dtype, [&](auto tag) {
        using T = decltype(tag);
        T *yp = static_cast<T *>(pc_tensor_data(y));
        const T *xp = static_cast<const T *>(pc_tensor_data(x));
        if (l.warp)
            pc_softmax_kernel<T, 32><<<l.blocks, l.threads, 0, ex.stream>>>(yp, xp, rows, D, log);
        else
            pc_softmax_kernel<T, 0><<<l.blocks, l.threads, 0, ex.stream>>>(yp, xp, rows, D, log);
    });
    PC_CUDA_CHECK_LAUNCH("pc_softmax_kernel");
    return PC_OK;
}

PcStatus pc_cuda_softmax_backward(PcTensor *dx, const PcTensor *dy, const PcTensor *y, bool log) {
    const char *op = log ? "log_softmax_backward" : "softmax_backward";
    PC_TRY(pc_rowwise_check(op, y, y, "output"));
    PC_TRY(pc_rowwise_check(op, y, dy, "grad_output"));
    PC_TRY(pc_rowwise_check(op, y, dx, "grad_input"));
    if (!pc_dtype_is_float(y->dtype))
        return pc_set_error(PC_ERR_TYPE, "%s: not defined for %s", op, pc_dtype_name(y->dtype));
    int64_t D = pc_last_dim(y), n = pc_tensor_numel(y);
    if (n == 0) return PC_OK;
    int64_t rows = n / D;
    PcCudaExec ex;
    PC_TRY(ex.begin(y->device));
    PcRowLaunch l = pc_row_launch(ex.ctx, rows, D);
    pc_cuda_dispatch_float(y->dtype, [&](auto tag) {
        using T = decltype(tag);
        T *dxp = static_cast<T *>(pc_tensor_data(dx));
        const T *dyp = static_cast<const T *>(pc_tensor_data(dy));
        const T *yp = static_cast<const T *>(pc_tensor_data(y));
        if (l.warp)
            pc_softmax_bwd_kernel<T, 32>
                <<<l.blocks, l.threads, 0, ex.stream>>>(dxp, dyp, yp, rows, D, log);
        else
            pc_softmax_bwd_kernel<T, 0>
                <<<l.blocks, l.threads, 0, ex.stream>>>(dxp, dyp, yp, rows, D, log);
    });
    PC_CUDA_CHECK_LAUNCH("pc_softmax_bwd_kernel");
    return PC_OK;
}

/* Checks shared by the layer norm entry points; *rows / *D from x and mean. */
static PcStatus pc_layer_norm_check(const char *op, const PcTensor *x, const PcTensor *mean,
                                    const PcTensor *rstd, const PcTensor *w, int64_t *rows,
                                    int64_t *D) {
    PC_TRY(pc_rowwise_check(op, x, x, "input"));
    if (!pc_dtype_is_float(x->dtype))
        return pc_set_error(PC_ERR_TYPE, "%s: not defined for %s", op, pc_dtype_name(x->dtype));
    PcDType sdt = x->dtype == PC_FLOAT64 ? PC_FLOAT64 : PC_FLOAT32;
    const PcTensor *stats[2] = {mean, rstd};
    const char *names[2] = {"mean", "rstd"};
    for (int i = 0; i < 2; i++) {
        PC_TRY(pc_cuda_check_device(op, names[i], stats[i], x->device.index));
        PC_TRY(pc_cuda_check_contiguous(op, names[i], stats[i]));
        if (stats[i]->dtype != sdt)
            return pc_set_error(PC_ERR_TYPE, "%s: %s must be %s for %s input, got %s", op,
                                names[i], pc_dtype_name(sdt), pc_dtype_name(x->dtype),
                                pc_dtype_name(stats[i]->dtype));
    }
    int64_t n = pc_tensor_numel(x), r = pc_tensor_numel(mean);
    if (pc_tensor_numel(rstd) != r || (r == 0 ? n != 0 : n % r != 0))
        return pc_set_error(PC_ERR_INVALID, "%s: mean/rstd have %lld/%lld elements, which does "
                                            "not divide the input's %lld into rows", op,
                            (long long)r, (long long)pc_tensor_numel(rstd), (long long)n);
    *rows = r;
    *D = r ? n / r : 0;
    if (w) {
        PC_TRY(pc_cuda_check_device(op, "weight", w, x->device.index));
        PC_TRY(pc_cuda_check_contiguous(op, "weight", w));
        if (w->dtype != x->dtype || pc_tensor_numel(w) != *D)
            return pc_set_error(PC_ERR_INVALID, "%s: weight must be (%lld,) %s, got %lld "
                                                "elements of %s", op, (long long)*D,
                                pc_dtype_name(x->dtype), (long long)pc_tensor_numel(w),
                                pc_dtype_name(w->dtype));
    }
    return PC_OK;
}

PcStatus pc_cuda_layer_norm(PcTensor *y, PcTensor *mean, PcTensor *rstd, const PcTensor *x,
                            const PcTensor *w, const PcTensor *b, double eps) {
    int64_t rows, D;
    PC_TRY(pc_layer_norm_check("layer_norm", x, mean, rstd, w, &rows, &D));
    PC_TRY(pc_rowwise_check("layer_norm", x, y, "output"));
    if (b) {
        PC_TRY(pc_cuda_check_device("layer_norm", "bias", b, x->device.index));
        PC_TRY(pc_cuda_check_contiguous("layer_norm", "bias", b));
        if (b->dtype != x->dtype || pc_tensor_numel(b) != D)
            return pc_set_error(PC_ERR_INVALID, "layer_norm: bias must be (%lld,) %s",
                                (long long)D, pc_dtype_name(x->dtype));
    }
    if (rows == 0) return PC_OK;
    if (D == 0) { /* mean of nothing: NaN statistics, nothing to normalise */
        PcCudaExec ex;
        PC_TRY(ex.begin(x->device));
        PC_TRY(pc_cuda_fill_raw(&ex, pc_tensor_data(mean), mean->dtype, rows, NAN));
        return pc_cuda_fill_raw(&ex, pc_tensor_data(rstd), rstd->dtype, rows, NAN);
    }
    PcCudaExec ex;
    PC_TRY(ex.begin(x->device));
    PcRowLaunch l = pc_row_launch(ex.ctx, rows, D);
    pc_cuda_dispatch_float(x->dtype, [&](auto tag) {
        using T = decltype(tag);
        using S = std::conditional_t<std::is_same_v<T, double>, double, float>;
        T *yp = static_cast<T *>(pc_tensor_data(y));
        S *mp = static_cast<S *>(pc_tensor_data(mean));
        S *rp = static_cast<S *>(pc_tensor_data(rstd));
        const T *xp = static_cast<const T *>(pc_tensor_data(x));
        const T *wp = w ? static_cast<const T *>(pc_tensor_data(w)) : nullptr;
        const T *bp = b ? static_cast<const T *>(pc_tensor_data(b)) : nullptr;
        if (l.warp)
            pc_layer_norm_kernel<T, S, 32>
                <<<l.blocks, l.threads, 0, ex.stream>>>(yp, mp, rp, xp, wp, bp, rows, D, eps);
        else
            pc_layer_norm_kernel<T, S, 0>
                <<<l.blocks, l.threads, 0, ex.stream>>>(yp, mp, rp, xp, wp, bp, rows, D, eps);
    });
    PC_CUDA_CHECK_LAUNCH("pc_layer_norm_kernel");
    return PC_OK;
}

PcStatus pc_cuda_layer_norm_backward(PcTensor *dx, PcTensor *dw, PcTensor *db,
                                     const PcTensor *dy, const PcTensor *x, const PcTensor *mean,
                                     const PcTensor *rstd, const PcTensor *w) {
    const char *op = "layer_norm_backward";
    int64_t rows, D;
    PC_TRY(pc_layer_norm_check(op, x, mean, rstd, w, &rows, &D));
    PC_TRY(pc_rowwise_check(op, x, dy, "grad_output"));
    if (dx) PC_TRY(pc_rowwise_check(op, x, dx, "grad_input"));
    PcTensor *outs[2] = {dw, db};
    const char *onames[2] = {"grad_weight", "grad_bias"};
    for (int i = 0; i < 2; i++) {
        if (!outs[i]) continue;
        PC_TRY(pc_cuda_check_device(op, onames[i], outs[i], x->device.index));
        PC_TRY(pc_cuda_check_contiguous(op, onames[i], outs[i]));
        if (outs[i]->dtype != x->dtype || pc_tensor_numel(outs[i]) != D)
            return pc_set_error(PC_ERR_INVALID, "%s: %s must be (%lld,) %s", op, onames[i],
                                (long long)D, pc_dtype_name(x->dtype));
    }
    PcCudaExec ex;
    PC_TRY(ex.begin(x->device));
    if (D == 0) return PC_OK;
    if (rows == 0) {
        if (dw) PC_TRY(pc_cuda_fill_raw(&ex, pc_tensor_data(dw), dw->dtype, D, 0.0));
        if (db) PC_TRY(pc_cuda_fill_raw(&ex, pc_tensor_data(db), db->dtype, D, 0.0));
        return PC_OK;
    }
    PcStatus st = PC_OK;
    pc_cuda_dispatch_float(x->dtype, [&](auto tag) {
        using T = decltype(tag);
        using S = std::conditional_t<std::is_same_v<T, double>, double, float>;
        using A = pc_acc_t<T>;
        const T *dyp = static_cast<const T *>(pc_tensor_data(dy));
        const T *xp = static_cast<const T *>(pc_tensor_data(x));
        const S *mp = static_cast<const S *>(pc_tensor_data(mean));
        const S *rp = static_cast<const S *>(pc_tensor_data(rstd));
        const T *wp = w ? static_cast<const T *>(pc_tensor_data(w)) : nullptr;
        if (dx) {
            PcRowLaunch l = pc_row_launch(ex.ctx, rows, D);
            T *dxp = static_cast<T *>(pc_tensor_data(dx));
            if (l.warp)
                pc_layer_norm_dx_kernel<T, S, 32>
                    <<<l.blocks, l.threads, 0, ex.stream>>>(dxp, dyp, xp, mp, rp, wp, rows, D);
            else
                pc_layer_norm_dx_kernel<T, S, 0>
                    <<<l.blocks, l.threads, 0, ex.stream>>>(dxp, dyp, xp, mp, rp, wp, rows, D);
            cudaError_t e = cudaGetLastError();
            if (e != cudaSuccess) {
                st = pc_cuda_fail(e, "launch of pc_layer_norm_dx_kernel", __FILE__, __LINE__);
                return;
            }
        }
        if (!dw && !db) return;
        int64_t xblocks = (D + 31) / 32;
        int64_t want = ((int64_t)ex.ctx->sm_count * 8 + xblocks - 1) / xblocks;
        int64_t most = (rows + 127) / 128; /* >= 16 rows per thread */
        int64_t chunks = want < most ? want : most;
        if (chunks > 65535) chunks = 65535;
        if (chunks < 1) chunks = 1;
        int64_t chunk = (rows + chunks - 1) / chunks;
        chunks = (rows + chunk - 1) / chunk;
        PcCudaTemp partial;
        st = partial.alloc(ex.ctx->device, sizeof(A) * 2 * (size_t)chunks * (size_t)D);
        if (st != PC_OK) return;
        pc_layer_norm_dwdb_kernel<T, S><<<dim3((unsigned)xblocks, (unsigned)chunks), dim3(32, 8),
                                          0, ex.stream>>>(partial.as<A>(), dyp, xp, mp, rp, rows,
                                                          D, chunk);
        cudaError_t e = cudaGetLastError();
        if (e == cudaSuccess) {
            pc_layer_norm_dwdb_finalize_kernel<T>
                <<<pc_cuda_blocks(ex.ctx, D, PC_CUDA_THREADS), PC_CUDA_THREADS, 0, ex.stream>>>(
                    dw ? static_cast<T *>(pc_tensor_data(dw)) : nullptr,
                    db ? static_cast<T *>(pc_tensor_data(db)) : nullptr, partial.as<A>(), chunks,
                    D);
            e = cudaGetLastError();
        }
        if (e != cudaSuccess)
            st = pc_cuda_fail(e, "launch of pc_layer_norm_dwdb kernels", __FILE__, __LINE__);
    });
    return st;
}
