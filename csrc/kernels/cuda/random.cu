/* random.cu — uniform and normal fills with the counter-based Philox4x32-10 generator.
 *
 * Element i uses the words (x0, x1) of Philox at counter offset + i under key seed, exactly as
 * backend.h specifies and ../philox.h implements for both backends, so a seed gives the same
 * numbers on the CPU and on every GPU. The affine step a + scale * u is written with explicit
 * round-to-nearest double operations so that nvcc cannot contract it into an FMA (the CPU
 * build does not fuse it either); uniform values are then bit-identical to the CPU's. Normal
 * values go through the device's double log/cos, which may differ from the host libm in the
 * last bit of the double before rounding to the destination dtype.
 *
 * Exports: pc_cuda_random.
 */
#include "../philox.h"
#include "cuda_internal.h"

/* ---- kernel ---- */

template <typename T>
__global__ void pc_random_kernel(T *dst, int64_t n, bool normal, double a, double scale,
                                 uint64_t seed, uint64_t offset) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        uint32_t x0, x1;
        pc_philox_pair(seed, offset + (uint64_t)i, &x0, &x1);
        double u = normal ? pc_philox_normal01(x0, x1) : pc_philox_uniform01(x0, x1);
        double v = __dadd_rn(a, __dmul_rn(scale, u));
        dst[i] = pc_cvt<T>(v);
    }
}

/* ---- launcher ---- */

PcStatus pc_cuda_random(PcTensor *dst, PcRandomDist dist, double a, double b, uint64_t seed,
                        uint64_t offset) {
    const char *op = dist == PC_RAND_NORMAL ? "random normal" : "random uniform";
    if (dist != PC_RAND_UNIFORM && dist != PC_RAND_NORMAL)
        return pc_set_error(PC_ERR_INVALID, "random: unknown distribution %d", (int)dist);
    if (!pc_dtype_is_float(dst->dtype))
        return pc_set_error(PC_ERR_TYPE, "%s: needs a floating dtype, got %s", op,
                            pc_dtype_name(dst->dtype));
    PC_TRY(pc_cuda_check_contiguous(op, "dst", dst));
    int64_t n = pc_tensor_numel(dst);
    if (n == 0) return PC_OK;
    PcCudaExec ex;
    PC_TRY(ex.begin(dst->device));
    double scale = dist == PC_RAND_UNIFORM ? b - a : b;
    bool normal = dist == PC_RAND_NORMAL;
    unsigned blocks = pc_cuda_blocks(ex.ctx, n, PC_CUDA_THREADS);
    pc_cuda_dispatch_float(dst->dtype, [&](auto tag) {
        using T = decltype(tag);
        pc_random_kernel<T><<<blocks, PC_CUDA_THREADS, 0, ex.stream>>>(
            static_cast<T *>(pc_tensor_data(dst)), n, normal, a, scale, seed, offset);
    });
    PC_CUDA_CHECK_LAUNCH("pc_random_kernel");
    return PC_OK;
}
