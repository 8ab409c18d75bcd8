/* index.cu — gather / scatter-add along a dim, index_select / index_add along dim 0.
 *
 * gather_dim and scatter_add_dim accept any strides: one PcCudaIter over the index tensor's
 * shape walks the three operands, with the indexed operand's stride along `dim` set to 0 in
 * the iterator and applied to the loaded index instead. index_select0 and index_add0 work on
 * contiguous rows: index_select0 moves raw bytes (every dtype), 16 bytes per thread when rows
 * and pointers allow; the adds use atomicAdd (float32/64, float16, bfloat16, int64).
 *
 * Bounds: every index is checked on the device; the first bad one is recorded in a slot of
 * mapped pinned memory (PcCudaIndexCheck) and the launcher reports PC_ERR_INDEX after waiting
 * for the stream. Bad reads give 0 and bad writes are skipped, so memory is never touched out
 * of range even with the checks off (PIPEC_CUDA_INDEX_CHECK=0).
 *
 * Exports: pc_cuda_gather_dim, pc_cuda_scatter_add_dim, pc_cuda_index_select0,
 * pc_cuda_index_add0.
 */
#include "cuda_internal.h"

#include <cstring>

/* ---- atomics ---- */

template <typename T> __device__ __forceinline__ void pc_atomic_add(T *p, T v) {
    if constexpr (std::is_same_v<T, int64_t>)
        atomicAdd(reinterpret_cast<unsigned long long *>(p), static_cast<unsigned long long>(v));
    else
        atomicAdd(p, v);
}

/* ---- kernels ---- */

/* it: idx's shape; strides {out (dst of gather / src of scatter), idx, indexed operand with
 * its `dim` stride zeroed}. */
template <typename T, typename IndexT>
__global__ void pc_gather_kernel(PcCudaIter<3> it, T *dst, const int64_t *idx, const T *src,
                                 IndexT n, int64_t size, int64_t stride, int64_t *check) {
    for (IndexT i = (IndexT)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (IndexT)gridDim.x * blockDim.x) {
        IndexT off[3];
        pc_cuda_iter_offsets<3, IndexT>(it, i, off);
        int64_t j = idx[off[1]];
        if (j < 0 || j >= size) {
            pc_cuda_index_fail(check, j, (int64_t)i, size);
            dst[off[0]] = pc_cvt<T>(0);
            continue;
        }
        dst[off[0]] = src[(int64_t)off[2] + j * stride];
    }
}

template <typename T, typename IndexT>
__global__ void pc_scatter_add_kernel(PcCudaIter<3> it, const T *src, const int64_t *idx, T *dst,
                                      IndexT n, int64_t size, int64_t stride, int64_t *check) {
    for (IndexT i = (IndexT)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (IndexT)gridDim.x * blockDim.x) {
        IndexT off[3];
        pc_cuda_iter_offsets<3, IndexT>(it, i, off);
        int64_t j = idx[off[1]];
        if (j < 0 || j >= size) {
            pc_cuda_index_fail(check, j, (int64_t)i, size);
            continue;
        }
        pc_atomic_add(dst + (int64_t)off[2] + j * stride, src[off[0]]);
    }
}

/* dst (n, row) = src[idx] with rows of `row` units of type U. */
template <typename U>
__global__ void pc_index_select_kernel(U *dst, const U *src, const int64_t *idx, int64_t n,
                                       int64_t row, int64_t nsrc, int64_t *check) {
    int64_t total = n * row;
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (int64_t)gridDim.x * blockDim.x) {
        int64_t i = e / row, k = e - i * row;
        int64_t j = idx[i];
        if (j < 0 || j >= nsrc) {
            if (k == 0) pc_cuda_index_fail(check, j, i, nsrc);
            dst[e] = U{};
            continue;
        }
        dst[e] = src[j * row + k];
    }
}

template <typename T>
__global__ void pc_index_add_kernel(T *dst, const T *src, const int64_t *idx, int64_t n,
                                    int64_t row, int64_t ndst, int64_t *check) {
    int64_t total = n * row;
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (int64_t)gridDim.x * blockDim.x) {
        int64_t i = e / row, k = e - i * row;
        int64_t j = idx[i];
        if (j < 0 || j >= ndst) {
            if (k == 0) pc_cuda_index_fail(check, j, i, ndst);
            continue;
        }
        pc_atomic_add(dst + j * row + k, src[e]);
    }
}

/* ---- launchers ---- */

static PcStatus pc_index_tensor_check(const char *op, const PcTensor *idx, int dev) {
    PC_TRY(pc_cuda_check_device(op, "index", idx, dev));
    if (idx->dtype != PC_INT64)
        return pc_set_error(PC_ERR_TYPE, "%s: index must be int64, got %s", op,
                            pc_dtype_name(idx->dtype));
    return PC_OK;
}

/* Shapes for gather/scatter: `big` is indexed along dim, `small` and idx share one shape. */
static PcStatus pc_dim_index_check(const char *op, const PcTensor *big, const PcTensor *small,
                                   const PcTensor *idx, int dim) {
    char b1[128], b2[128], b3[128];
    if (dim < 0 || dim >= (big->ndim ? big->ndim : 1))
        return pc_set_error(PC_ERR_INDEX, "%s: dim %d out of range for %d dims", op, dim,
                            big->ndim);
    if (small->ndim != idx->ndim || big->ndim != idx->ndim ||
        memcmp(small->shape, idx->shape, sizeof(int64_t) * (size_t)idx->ndim) != 0)
        goto bad;
    for (int d = 0; d < idx->ndim; d++)
        if (d != dim && idx->shape[d] > big->shape[d]) goto bad;
    if (small->dtype != big->dtype)
        return pc_set_error(PC_ERR_TYPE, "%s: dtypes differ: %s and %s", op,
                            pc_dtype_name(big->dtype), pc_dtype_name(small->dtype));
    return PC_OK;
bad:
    return pc_set_error(PC_ERR_INVALID, "%s: index shape %s must equal %s and fit in %s "
                                        "outside dim %d", op,
                        pc_shape_str(idx->ndim, idx->shape, b1, sizeof b1),
                        pc_shape_str(small->ndim, small->shape, b2, sizeof b2),
                        pc_shape_str(big->ndim, big->shape, b3, sizeof b3), dim);
}

/* gather (scatter = false): out = dst, indexed = src. scatter: out = src, indexed = dst. */
static PcStatus pc_dim_index_run(const char *op, bool scatter, PcTensor *indexed,
                                 PcTensor *other, const PcTensor *idx, int dim) {
    int64_t n = pc_tensor_numel(idx);
    if (n == 0) return PC_OK;
    PcCudaExec ex;
    PC_TRY(ex.begin(indexed->device));
    int64_t zstr[PC_MAX_DIMS];
    for (int d = 0; d < indexed->ndim; d++) zstr[d] = d == dim ? 0 : indexed->strides[d];
    PcCudaIter<3> it;
    const int64_t *strides[3] = {other->strides, idx->strides, zstr};
    pc_cuda_iter_init<3>(&it, idx->ndim, idx->shape, strides);
    int64_t size = indexed->ndim ? indexed->shape[dim] : 1;
    int64_t stride = indexed->ndim ? indexed->strides[dim] : 0;
    int64_t span = 0;
    for (int d = 0; d < indexed->ndim; d++) span += (indexed->shape[d] - 1) * indexed->strides[d];
    bool fits = pc_cuda_iter_fits32(it, n) && span < (int64_t(1) << 31);
    PcCudaIndexCheck chk;
    PC_TRY(pc_cuda_index_check_begin(&ex, &chk));
    unsigned blocks = pc_cuda_blocks(ex.ctx, n, PC_CUDA_THREADS);
    const int64_t *ip = static_cast<const int64_t *>(pc_tensor_data(idx));
    PcStatus st = PC_OK;
    bool ok = pc_cuda_dispatch_all(indexed->dtype, [&](auto tag) {
        using T = decltype(tag);
        T *ind = static_cast<T *>(pc_tensor_data(indexed));
        T *oth = static_cast<T *>(pc_tensor_data(other));
        if (!scatter) {
            if (fits)
                pc_gather_kernel<T, uint32_t><<<blocks, PC_CUDA_THREADS, 0, ex.stream>>>(
                    it, oth, ip, ind, (uint32_t)n, size, stride, chk.dev_ptr);
            else
                pc_gather_kernel<T, int64_t><<<blocks, PC_CUDA_THREADS, 0, ex.stream>>>(
                    it, oth, ip, ind, n, size, stride, chk.dev_ptr);
        } else if constexpr (std::is_same_v<T, bool>) {
            st = pc_set_error(PC_ERR_TYPE, "%s: not defined for bool tensors", op);
        } else {
            if (fits)
                pc_scatter_add_kernel<T, uint32_t><<<blocks, PC_CUDA_THREADS, 0, ex.stream>>>(
                    it, oth, ip, ind, (uint32_t)n, size, stride, chk.dev_ptr);
            else
                pc_scatter_add_kernel<T, int64_t><<<blocks, PC_CUDA_THREADS, 0, ex.stream>>>(
                    it, oth, ip, ind, n, size, stride, chk.dev_ptr);
        }
    });
    if (!ok) st = pc_set_error(PC_ERR_TYPE, "%s: unsupported dtype %d", op, (int)indexed->dtype);
    cudaError_t e = cudaGetLastError();
    if (st == PC_OK && e != cudaSuccess)
        st = pc_cuda_fail(e, scatter ? "launch of pc_scatter_add_kernel"
                                     : "launch of pc_gather_kernel", __FILE__, __LINE__);
    PcStatus st2 = pc_cuda_index_check_end(&ex, &chk, op);
    return st != PC_OK ? st : st2;
}

PcStatus pc_cuda_gather_dim(PcTensor *dst, const PcTensor *src, const PcTensor *idx, int dim) {
    PC_TRY(pc_cuda_check_device("gather", "input", src, dst->device.index));
    PC_TRY(pc_index_tensor_check("gather", idx, dst->device.index));
    PC_TRY(pc_dim_index_check("gather", src, dst, idx, dim));
    return pc_dim_index_run("gather", false, const_cast<PcTensor *>(src), dst, idx, dim);
}

PcStatus pc_cuda_scatter_add_dim(PcTensor *dst, const PcTensor *idx, const PcTensor *src,
                                 int dim) {
    PC_TRY(pc_cuda_check_device("scatter_add", "src", src, dst->device.index));
    PC_TRY(pc_index_tensor_check("scatter_add", idx, dst->device.index));
    PC_TRY(pc_dim_index_check("scatter_add", dst, src, idx, dim));
    return pc_dim_index_run("scatter_add", true, dst, const_cast<PcTensor *>(src), idx, dim);
}

/* Checks for the dim-0 ops: big (N, ...), small (n, ...), idx (n,), all contiguous. */
static PcStatus pc_dim0_check(const char *op, const PcTensor *big, const PcTensor *small,
                              const PcTensor *idx) {
    PC_TRY(pc_cuda_check_device(op, "source", small, big->device.index));
    PC_TRY(pc_index_tensor_check(op, idx, big->device.index));
    PC_TRY(pc_cuda_check_contiguous(op, "self", big));
    PC_TRY(pc_cuda_check_contiguous(op, "source", small));
    PC_TRY(pc_cuda_check_contiguous(op, "index", idx));
    if (big->dtype != small->dtype)
        return pc_set_error(PC_ERR_TYPE, "%s: dtypes differ: %s and %s", op,
                            pc_dtype_name(big->dtype), pc_dtype_name(small->dtype));
    char b1[128], b2[128], b3[128];
    bool ok = big->ndim >= 1 && small->ndim == big->ndim && idx->ndim == 1 &&
              small->shape[0] == idx->shape[0] &&
              memcmp(big->shape + 1, small->shape + 1, sizeof(int64_t) * (size_t)(big->ndim - 1)) ==
                  0;
    if (!ok)
        return pc_set_error(PC_ERR_INVALID, "%s: shapes do not fit: %s, %s rows picked by index "
                                            "%s", op,
                            pc_shape_str(big->ndim, big->shape, b1, sizeof b1),
                            pc_shape_str(small->ndim, small->shape, b2, sizeof b2),
                            pc_shape_str(idx->ndim, idx->shape, b3, sizeof b3));
    return PC_OK;
}

PcStatus pc_cuda_index_select0(PcTensor *dst, const PcTensor *src, const PcTensor *idx) {
    const char *op = "index_select";
    PC_TRY(pc_dim0_check(op, src, dst, idx));
    int64_t n = idx->shape[0];
    int64_t nsrc = src->shape[0];
    int64_t row_bytes = n ? (int64_t)pc_tensor_nbytes(dst) / n : 0;
    if (n == 0 || row_bytes == 0) return PC_OK;
    PcCudaExec ex;
    PC_TRY(ex.begin(dst->device));
    PcCudaIndexCheck chk;
    PC_TRY(pc_cuda_index_check_begin(&ex, &chk));
    void *d = pc_tensor_data(dst);
    const void *s = pc_tensor_data(src);
    const int64_t *ip = static_cast<const int64_t *>(pc_tensor_data(idx));
    size_t isz = pc_dtype_size(dst->dtype);
    auto launch = [&](auto unit) {
        using U = decltype(unit);
        int64_t row = row_bytes / (int64_t)sizeof(U);
        unsigned blocks = pc_cuda_blocks(ex.ctx, n * row, PC_CUDA_THREADS);
        pc_index_select_kernel<U><<<blocks, PC_CUDA_THREADS, 0, ex.stream>>>(
            static_cast<U *>(d), static_cast<const U *>(s), ip, n, row, nsrc, chk.dev_ptr);
    };
    if (row_bytes % 16 == 0 && pc_cuda_aligned(d, 16) && pc_cuda_aligned(s, 16)) launch(uint4{});
    else if (isz == 8) launch(uint64_t{});
    else if (isz == 4) launch(uint32_t{});
    else if (isz == 2) launch(uint16_t{});
    else launch(uint8_t{});
    cudaError_t e = cudaGetLastError();
    PcStatus st = e == cudaSuccess ? PC_OK
                                   : pc_cuda_fail(e, "launch of pc_index_select_kernel", __FILE__,
                                                  __LINE__);
    PcStatus st2 = pc_cuda_index_check_end(&ex, &chk, op);
    return st != PC_OK ? st : st2;
}

PcStatus pc_cuda_index_add0(PcTensor *dst, const PcTensor *idx, const PcTensor *src) {
    const char *op = "index_add";
    PC_TRY(pc_dim0_check(op, dst, src, idx));
    if (dst->dtype == PC_BOOL)
        return pc_set_error(PC_ERR_TYPE, "%s: not defined for bool tensors", op);
    int64_t n = idx->shape[0];
    int64_t numel = pc_tensor_numel(src);
    if (n == 0 || numel == 0) return PC_OK;
    int64_t row = numel / n;
    PcCudaExec ex;
    PC_TRY(ex.begin(dst->device));
    PcCudaIndexCheck chk;
    PC_TRY(pc_cuda_index_check_begin(&ex, &chk));
    const int64_t *ip = static_cast<const int64_t *>(pc_tensor_data(idx));
    unsigned blocks = pc_cuda_blocks(ex.ctx, numel, PC_CUDA_THREADS);
    pc_cuda_dispatch_all(dst->dtype, [&](auto tag) {
        using T = decltype(tag);
        if constexpr (!std::is_same_v<T, bool>)
            pc_index_add_kernel<T><<<blocks, PC_CUDA_THREADS, 0, ex.stream>>>(
                static_cast<T *>(pc_tensor_data(dst)), static_cast<const T *>(pc_tensor_data(src)),
                ip, n, row, dst->shape[0], chk.dev_ptr);
    });
    cudaError_t e = cudaGetLastError();
    PcStatus st = e == cudaSuccess ? PC_OK
                                   : pc_cuda_fail(e, "launch of pc_index_add_kernel", __FILE__,
                                                  __LINE__);
    PcStatus st2 = pc_cuda_index_check_end(&ex, &chk, op);
    return st != PC_OK ? st : st2;
}
