/* reduce.cu — sum / mean / max over any set of dims, and max with indices along one dim.
 *
 * A reduction is seen as O outputs (the kept dims of dst) times R inputs each (the reduced
 * dims), both walked with PcCudaIter over src's strides, so any strides work. Three kernels:
 *   - warp per output: the reduced elements are the closest in memory (e.g. the last dim)
 *     and R is small or there are many outputs; lanes stride over r, shuffles combine;
 *   - block per (output, split): the same for long rows with few outputs; R is cut into
 *     `splits` chunks, one block each, and a finalize kernel combines the partials;
 *   - outer: kept elements are the closest (e.g. summing over rows for a bias gradient);
 *     32 adjacent outputs per block row (coalesced), 8 threads along r per output, splits of
 *     R across blockIdx.y with the same finalize kernel.
 * float32 and the half types accumulate in float32, float64 in double, int64 in int64. Max
 * propagates NaN; max_dim returns the first maximal index, NaN counting as the maximum.
 *
 * Exports: pc_cuda_reduce, pc_cuda_max_dim.
 */
#include "cuda_internal.h"

#include <cmath>
#include <cstring>

/* ---- reduction operators ---- */

template <typename V> struct PcArgAcc {
    V v;
    int64_t i;
};

template <typename T> struct PcSumOp {
    using Acc = pc_acc_t<T>;
    __device__ __forceinline__ Acc identity() const { return Acc(0); }
    __device__ __forceinline__ Acc load(T x, int64_t) const { return pc_cvt<Acc>(x); }
    __device__ __forceinline__ Acc combine(Acc a, Acc b) const { return a + b; }
};

template <typename T> struct PcMaxOp {
    using Acc = pc_acc_t<T>;
    __device__ __forceinline__ Acc identity() const { return -Acc(INFINITY); }
    __device__ __forceinline__ Acc load(T x, int64_t) const { return pc_cvt<Acc>(x); }
    __device__ __forceinline__ Acc combine(Acc a, Acc b) const {
        return (a > b || a != a) ? a : b;
    }
};

template <typename T> struct PcArgMaxOp {
    using V = pc_acc_t<T>;
    using Acc = PcArgAcc<V>;
    __device__ __forceinline__ Acc identity() const { return Acc{-V(INFINITY), INT64_MAX}; }
    __device__ __forceinline__ Acc load(T x, int64_t r) const { return Acc{pc_cvt<V>(x), r}; }
    __device__ __forceinline__ Acc combine(Acc a, Acc b) const {
        bool an = a.v != a.v, bn = b.v != b.v;
        if (an || bn) {
            if (an && bn) return a.i < b.i ? a : b;
            return an ? a : b;
        }
        if (a.v > b.v) return a;
        if (b.v > a.v) return b;
        return a.i < b.i ? a : b;
    }
};

template <typename A> __device__ __forceinline__ A pc_shfl_down(A v, int delta) {
    if constexpr (std::is_arithmetic_v<A>) {
        return __shfl_down_sync(0xffffffffu, v, delta);
    } else {
        A r;
        r.v = __shfl_down_sync(0xffffffffu, v.v, delta);
        r.i = __shfl_down_sync(0xffffffffu, v.i, delta);
        return r;
    }
}

template <typename Op, typename Acc>
__device__ __forceinline__ Acc pc_warp_reduce(const Op &op, Acc v) {
#pragma unroll
    for (int d = 16; d > 0; d >>= 1) v = op.combine(v, pc_shfl_down(v, d));
    return v;
}

/* ---- kernel arguments ---- */

template <typename Op, typename T> struct PcReduceArgs {
    using Acc = typename Op::Acc;
    PcCudaIter<3> kit;       /* kept dims: strides of src, dst, dst_idx */
    PcCudaIter<1> rit;       /* reduced dims: strides of src */
    const T *src;
    T *dst;
    int64_t *dst_idx;        /* max_dim only */
    Acc *partial;            /* (splits, O) when splits > 1 */
    int64_t O, R, chunk;     /* outputs, inputs per output, inputs per split */
    int splits;
    double divisor;          /* MEAN: R; else 1 */
};

/* Final value of output o. */
template <typename Op, typename T, typename IndexT>
__device__ __forceinline__ void pc_reduce_store(const PcReduceArgs<Op, T> &a, IndexT o,
                                                typename Op::Acc acc) {
    IndexT off[3];
    pc_cuda_iter_offsets<3, IndexT>(a.kit, o, off);
    if constexpr (std::is_same_v<Op, PcArgMaxOp<T>>) {
        a.dst[off[1]] = pc_cvt<T>(acc.v);
        a.dst_idx[off[2]] = acc.i;
    } else if constexpr (std::is_integral_v<typename Op::Acc>) {
        a.dst[off[1]] = pc_cvt<T>(acc);
    } else {
        using Acc = typename Op::Acc;
        a.dst[off[1]] = pc_cvt<T>(a.divisor == 1.0 ? acc : acc / Acc(a.divisor));
    }
}

/* Reduce inputs [begin, end) of output o with a stride of `step` starting at `first`. */
template <typename Op, typename T, typename IndexT>
__device__ __forceinline__ typename Op::Acc pc_reduce_range(const PcReduceArgs<Op, T> &a,
                                                            const Op &op, IndexT base,
                                                            IndexT first, IndexT end,
                                                            IndexT step) {
    using Acc = typename Op::Acc;
    Acc acc[4] = {op.identity(), op.identity(), op.identity(), op.identity()};
    IndexT r = first;
    for (; r + 3 * step < end; r += 4 * step) {
#pragma unroll
        for (int j = 0; j < 4; j++) {
            IndexT rr = r + (IndexT)j * step;
            IndexT roff[1];
            pc_cuda_iter_offsets<1, IndexT>(a.rit, rr, roff);
            acc[j] = op.combine(acc[j], op.load(a.src[base + roff[0]], (int64_t)rr));
        }
    }
    for (; r < end; r += step) {
        IndexT roff[1];
        pc_cuda_iter_offsets<1, IndexT>(a.rit, r, roff);
        acc[0] = op.combine(acc[0], op.load(a.src[base + roff[0]], (int64_t)r));
    }
    return op.combine(op.combine(acc[0], acc[1]), op.combine(acc[2], acc[3]));
}

/* ---- kernels ---- */

template <typename Op, typename T, typename IndexT>
__global__ void pc_reduce_warp_kernel(PcReduceArgs<Op, T> a, Op op) {
    int lane = threadIdx.x & 31;
    IndexT warp = ((IndexT)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    IndexT nwarps = ((IndexT)gridDim.x * blockDim.x) >> 5;
    for (IndexT o = warp; o < (IndexT)a.O; o += nwarps) {
        IndexT koff[3];
        pc_cuda_iter_offsets<3, IndexT>(a.kit, o, koff);
        auto acc = pc_reduce_range<Op, T, IndexT>(a, op, koff[0], (IndexT)lane, (IndexT)a.R,
                                                  (IndexT)32);
        acc = pc_warp_reduce(op, acc);
        if (lane == 0) pc_reduce_store<Op, T, IndexT>(a, o, acc);
    }
}

/* One block per (output, split); blockDim.x is a multiple of 32, at most 1024. */
template <typename Op, typename T, typename IndexT>
__global__ void pc_reduce_block_kernel(PcReduceArgs<Op, T> a, Op op) {
    using Acc = typename Op::Acc;
    __shared__ Acc warp_acc[32];
    IndexT o = (IndexT)blockIdx.x / (IndexT)a.splits;
    IndexT sp = (IndexT)blockIdx.x % (IndexT)a.splits;
    IndexT begin = sp * (IndexT)a.chunk;
    IndexT end = begin + (IndexT)a.chunk < (IndexT)a.R ? begin + (IndexT)a.chunk : (IndexT)a.R;
    IndexT koff[3];
    pc_cuda_iter_offsets<3, IndexT>(a.kit, o, koff);
    Acc acc = pc_reduce_range<Op, T, IndexT>(a, op, koff[0], begin + threadIdx.x, end,
                                             (IndexT)blockDim.x);
    acc = pc_warp_reduce(op, acc);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) warp_acc[warp] = acc;
    __syncthreads();
    if (warp == 0) {
        int nw = blockDim.x >> 5;
        acc = lane < nw ? warp_acc[lane] : op.identity();
        acc = pc_warp_reduce(op, acc);
        if (lane == 0) {
            if (a.splits == 1) pc_reduce_store<Op, T, IndexT>(a, o, acc);
            else a.partial[(int64_t)sp * a.O + o] = acc;
        }
    }
}

/* Block (32, 8): 32 adjacent outputs, 8 threads along r each; blockIdx.y is the split. */
template <typename Op, typename T, typename IndexT>
__global__ void pc_reduce_outer_kernel(PcReduceArgs<Op, T> a, Op op) {
    using Acc = typename Op::Acc;
    __shared__ Acc sm[8][33];
    IndexT o = (IndexT)blockIdx.x * 32 + threadIdx.x;
    IndexT sp = blockIdx.y;
    IndexT begin = sp * (IndexT)a.chunk;
    IndexT end = begin + (IndexT)a.chunk < (IndexT)a.R ? begin + (IndexT)a.chunk : (IndexT)a.R;
    Acc acc = op.identity();
    if (o < (IndexT)a.O) {
        IndexT koff[3];
        pc_cuda_iter_offsets<3, IndexT>(a.kit, o, koff);
        acc = pc_reduce_range<Op, T, IndexT>(a, op, koff[0], begin + threadIdx.y, end,
                                             (IndexT)8);
    }
    sm[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && o < (IndexT)a.O) {
#pragma unroll
        for (int j = 1; j < 8; j++) acc = op.combine(acc, sm[j][threadIdx.x]);
        if (a.splits == 1) pc_reduce_store<Op, T, IndexT>(a, o, acc);
        else a.partial[(int64_t)sp * a.O + o] = acc;
    }
}

template <typename Op, typename T, typename IndexT>
__global__ void pc_reduce_finalize_kernel(PcReduceArgs<Op, T> a, Op op) {
    for (IndexT o = (IndexT)blockIdx.x * blockDim.x + threadIdx.x; o < (IndexT)a.O;
         o += (IndexT)gridDim.x * blockDim.x) {
        using Acc = typename Op::Acc;
        if constexpr (std::is_same_v<Op, PcSumOp<T>> && std::is_same_v<Acc, float>) {
            /* up to thousands of float partials: add them in double */
            double wide = 0.0;
            for (int s = 0; s < a.splits; s++) wide += (double)a.partial[(int64_t)s * a.O + o];
            pc_reduce_store<Op, T, IndexT>(a, o, (float)wide);
        } else {
            Acc acc = a.partial[o];
            for (int s = 1; s < a.splits; s++)
                acc = op.combine(acc, a.partial[(int64_t)s * a.O + o]);
            pc_reduce_store<Op, T, IndexT>(a, o, acc);
        }
    }
}

/* ---- launcher ---- */

/* Kept / reduced dims of a reduction of src into an output of shape oshape (1 where
 * reduced), and the strides of the outputs. */
struct PcReducePlan {
    int nk, nr;
    int64_t kshape[PC_MAX_DIMS], kstr[3][PC_MAX_DIMS];
    int64_t rshape[PC_MAX_DIMS], rstr[PC_MAX_DIMS];
    int64_t O, R;
    bool inner;              /* reduced elements closer in memory than kept ones */
};

static void pc_reduce_plan(const PcTensor *src, const int64_t *oshape, const int64_t *ostr,
                           const int64_t *ostr2, PcReducePlan *p) {
    p->nk = p->nr = 0;
    p->O = p->R = 1;
    int64_t min_k = INT64_MAX, min_r = INT64_MAX;
    for (int d = 0; d < src->ndim; d++) {
        if (src->shape[d] == 1) continue;
        if (oshape[d] == src->shape[d]) {
            p->kshape[p->nk] = src->shape[d];
            p->kstr[0][p->nk] = src->strides[d];
            p->kstr[1][p->nk] = ostr[d];
            p->kstr[2][p->nk] = ostr2 ? ostr2[d] : 0;
            p->nk++;
            p->O *= src->shape[d];
            if (src->strides[d] < min_k) min_k = src->strides[d];
        } else {
            p->rshape[p->nr] = src->shape[d];
            p->rstr[p->nr] = src->strides[d];
            p->nr++;
            p->R *= src->shape[d];
            if (src->strides[d] < min_r) min_r = src->strides[d];
        }
    }
    p->inner = min_r < min_k;
}

template <typename Op, typename T>
static PcStatus pc_reduce_run(PcCudaExec &ex, const PcReducePlan &p, const T *src, T *dst,
                              int64_t *dst_idx, double divisor) {
    using Acc = typename Op::Acc;
    PcReduceArgs<Op, T> a;
    const int64_t *kstr[3] = {p.kstr[0], p.kstr[1], p.kstr[2]};
    const int64_t *rstr[1] = {p.rstr};
    pc_cuda_iter_init<3>(&a.kit, p.nk, p.kshape, kstr);
    pc_cuda_iter_init<1>(&a.rit, p.nr, p.rshape, rstr);
    a.src = src;
    a.dst = dst;
    a.dst_idx = dst_idx;
    a.partial = nullptr;
    a.O = p.O;
    a.R = p.R;
    a.chunk = p.R;
    a.splits = 1;
    a.divisor = divisor;
    Op op;

    int64_t src_span = 0;
    for (int d = 0; d < p.nk; d++) src_span += (p.kshape[d] - 1) * p.kstr[0][d];
    for (int d = 0; d < p.nr; d++) src_span += (p.rshape[d] - 1) * p.rstr[d];
    bool fits32 = pc_cuda_iter_fits32(a.kit, p.O) && p.R < (int64_t(1) << 31) &&
                  src_span < (int64_t(1) << 31) && p.O * p.R < (int64_t(1) << 31);
    int sms = ex.ctx->sm_count;
    PcCudaTemp partial;

    enum { WARP, BLOCK, OUTER } kind;
    if (!p.inner) kind = OUTER;
    else if (p.R <= 1024 || p.O >= (int64_t)sms * 64) kind = WARP;
    else kind = BLOCK;

    dim3 grid, block;
    if (kind == WARP) {
        block = dim3(PC_CUDA_THREADS);
        grid = dim3(pc_cuda_blocks(ex.ctx, p.O * 32, PC_CUDA_THREADS));
    } else if (kind == BLOCK) {
        int threads = p.R >= 8192 ? 512 : 256;
        /* enough blocks to fill the GPU twice, each with >= 4096 inputs */
        int64_t want = ((int64_t)sms * 2 + p.O - 1) / p.O;
        int64_t most = (p.R + 4095) / 4096;
        int64_t splits = want < most ? want : most;
        if (splits < 1) splits = 1;
        a.chunk = (p.R + splits - 1) / splits;
        a.splits = (int)((p.R + a.chunk - 1) / a.chunk);
        block = dim3((unsigned)threads);
        grid = dim3((unsigned)(p.O * a.splits));
    } else {
        int64_t xblocks = (p.O + 31) / 32;
        int64_t want = ((int64_t)sms * 8 + xblocks - 1) / xblocks;
        int64_t most = (p.R + 127) / 128; /* each thread at least 16 inputs */
        int64_t splits = want < most ? want : most;
        if (splits > 65535) splits = 65535;
        if (splits < 1) splits = 1;
        a.chunk = (p.R + splits - 1) / splits;
        a.splits = (int)((p.R + a.chunk - 1) / a.chunk);
        block = dim3(32, 8);
        grid = dim3((unsigned)xblocks, (unsigned)a.splits);
    }
    if (a.splits > 1) {
        PC_TRY(partial.alloc(ex.ctx->device, sizeof(Acc) * (size_t)a.splits * (size_t)p.O));
        a.partial = partial.as<Acc>();
    }

#define PC_REDUCE_LAUNCH_(IndexT)                                                          \
    do {                                                                                   \
        if (kind == WARP)                                                                  \
            pc_reduce_warp_kernel<Op, T, IndexT><<<grid, block, 0, ex.stream>>>(a, op);    \
        else if (kind == BLOCK)                                                            \
            pc_reduce_block_kernel<Op, T, IndexT><<<grid, block, 0, ex.stream>>>(a, op);   \
        else                                                                               \
            pc_reduce_outer_kernel<Op, T, IndexT><<<grid, block, 0, ex.stream>>>(a, op);   \
        PC_CUDA_CHECK_LAUNCH("pc_reduce_kernel");                                          \
        if (a.splits > 1) {                                                                \
            unsigned fb = pc_cuda_blocks(ex.ctx, p.O, PC_CUDA_THREADS);                    \
            pc_reduce_finalize_kernel<Op, T, IndexT>                                       \
                <<<fb, PC_CUDA_THREADS, 0, ex.stream>>>(a, op);                            \
            PC_CUDA_CHECK_LAUNCH("pc_reduce_finalize_kernel");                             \
        }                                                                                  \
    } while (0)

    if (fits32) PC_REDUCE_LAUNCH_(uint32_t);
    else PC_REDUCE_LAUNCH_(int64_t);
#undef PC_REDUCE_LAUNCH_
    return PC_OK;
}

PcStatus pc_cuda_reduce(PcReduceOp op, PcTensor *dst, const PcTensor *src) {
    static const char *names[] = {"sum", "mean", "max"};
    const char *name = (op >= 0 && op < PC_NUM_REDUCE) ? names[op] : "reduce";
    PC_TRY(pc_cuda_check_device(name, "input", src, dst->device.index));
    if (dst->ndim != src->ndim)
        return pc_set_error(PC_ERR_INVALID, "%s: output has %d dims, input %d (keepdim shape "
                                            "expected)", name, dst->ndim, src->ndim);
    for (int d = 0; d < src->ndim; d++)
        if (dst->shape[d] != src->shape[d] && dst->shape[d] != 1) {
            char b1[128], b2[128];
            return pc_set_error(PC_ERR_INVALID, "%s: output shape %s does not match input %s "
                                                "with 1 at the reduced dims", name,
                                pc_shape_str(dst->ndim, dst->shape, b1, sizeof b1),
                                pc_shape_str(src->ndim, src->shape, b2, sizeof b2));
        }
    if (dst->dtype != src->dtype)
        return pc_set_error(PC_ERR_TYPE, "%s: output dtype %s differs from input %s", name,
                            pc_dtype_name(dst->dtype), pc_dtype_name(src->dtype));
    bool fl = pc_dtype_is_float(src->dtype);
    if (!fl && !(op == PC_R_SUM && src->dtype == PC_INT64))
        return pc_set_error(PC_ERR_TYPE, "%s: not defined for %s tensors on CUDA", name,
                            pc_dtype_name(src->dtype));
    int64_t O = pc_tensor_numel(dst);
    if (O == 0) return PC_OK;
    PcCudaExec ex;
    PC_TRY(ex.begin(dst->device));
    PcReducePlan p;
    pc_reduce_plan(src, dst->shape, dst->strides, nullptr, &p);
    if (p.R == 0 || pc_tensor_numel(src) == 0) {
        if (op == PC_R_MAX)
            return pc_set_error(PC_ERR_INVALID, "max: cannot reduce over an empty dimension "
                                                "(the reduction has no identity)");
        /* SUM of nothing is 0, MEAN is NaN. Contiguous dst? fill handles any strides. */
        return pc_cuda_fill(dst, op == PC_R_SUM ? 0.0 : NAN);
    }
    PcStatus st = PC_OK;
    pc_cuda_dispatch_all(src->dtype, [&](auto tag) {
        using T = decltype(tag);
        if constexpr (std::is_same_v<T, bool>) {
            st = pc_set_error(PC_ERR_TYPE, "%s: not defined for bool tensors", name);
        } else if constexpr (std::is_same_v<T, int64_t>) {
            st = pc_reduce_run<PcSumOp<T>, T>(ex, p, static_cast<const T *>(pc_tensor_data(src)),
                                              static_cast<T *>(pc_tensor_data(dst)), nullptr,
                                              1.0);
        } else {
            const T *s = static_cast<const T *>(pc_tensor_data(src));
            T *d = static_cast<T *>(pc_tensor_data(dst));
            if (op == PC_R_MAX)
                st = pc_reduce_run<PcMaxOp<T>, T>(ex, p, s, d, nullptr, 1.0);
            else
                st = pc_reduce_run<PcSumOp<T>, T>(ex, p, s, d, nullptr,
                                                  op == PC_R_MEAN ? (double)p.R : 1.0);
        }
    });
    return st;
}

PcStatus pc_cuda_max_dim(PcTensor *vals, PcTensor *idx, const PcTensor *src, int dim) {
    PC_TRY(pc_cuda_check_device("max", "input", src, vals->device.index));
    PC_TRY(pc_cuda_check_device("max", "indices", idx, vals->device.index));
    if (dim < 0 || dim >= src->ndim)
        return pc_set_error(PC_ERR_INDEX, "max: dim %d out of range for %d dims", dim, src->ndim);
    if (idx->dtype != PC_INT64 || vals->dtype != src->dtype)
        return pc_set_error(PC_ERR_TYPE, "max: values must be %s and indices int64 (got %s, %s)",
                            pc_dtype_name(src->dtype), pc_dtype_name(vals->dtype),
                            pc_dtype_name(idx->dtype));
    if (!pc_dtype_is_float(src->dtype))
        return pc_set_error(PC_ERR_TYPE, "max: not defined for %s tensors on CUDA",
                            pc_dtype_name(src->dtype));
    int64_t oshape[PC_MAX_DIMS];
    for (int d = 0; d < src->ndim; d++) oshape[d] = d == dim ? 1 : src->shape[d];
    if (vals->ndim != src->ndim || idx->ndim != src->ndim ||
        memcmp(vals->shape, oshape, sizeof(int64_t) * (size_t)src->ndim) != 0 ||
        memcmp(idx->shape, oshape, sizeof(int64_t) * (size_t)src->ndim) != 0) {
        char b1[128], b2[128];
        return pc_set_error(PC_ERR_INVALID, "max: values/indices must have shape %s, got %s",
                            pc_shape_str(src->ndim, oshape, b1, sizeof b1),
                            pc_shape_str(vals->ndim, vals->shape, b2, sizeof b2));
    }
    if (pc_tensor_numel(vals) == 0) return PC_OK;
    if (src->shape[dim] == 0)
        return pc_set_error(PC_ERR_INVALID, "max: cannot reduce over dimension %d of size 0",
                            dim);
    PcCudaExec ex;
    PC_TRY(ex.begin(vals->device));
    /* Only `dim` is reduced, even when other dims have size 1. */
    PcReducePlan p;
    int64_t fake_shape[PC_MAX_DIMS];
    for (int d = 0; d < src->ndim; d++) fake_shape[d] = d == dim ? -1 : src->shape[d];
    pc_reduce_plan(src, fake_shape, vals->strides, idx->strides, &p);
    PcStatus st = PC_OK;
    pc_cuda_dispatch_float(src->dtype, [&](auto tag) {
        using T = decltype(tag);
        st = pc_reduce_run<PcArgMaxOp<T>, T>(ex, p, static_cast<const T *>(pc_tensor_data(src)),
                                             static_cast<T *>(pc_tensor_data(vals)),
                                             static_cast<int64_t *>(pc_tensor_data(idx)), 1.0);
    });
    return st;
}
