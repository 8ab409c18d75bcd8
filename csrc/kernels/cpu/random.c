/* random.c — CPU random fill with the counter-based Philox4x32-10 generator.
 *
 * Element i of dst takes the words (x0, x1) of Philox at counter offset + i under key seed
 * (mapping in backend.h, implemented in ../philox.h and shared with the CUDA kernel), turns
 * them into a float64 uniform or Box-Muller normal, scales it, and rounds once to dst's
 * dtype. The result depends only on (seed, offset + i), never on threads or chunking.
 *
 * Note: rounding to a narrower dtype can carry a uniform value close to 1 up to exactly b
 * (for float32 when u > 1 - 2^-25); this follows the specification in backend.h.
 *
 * Exports: pc_cpu_random.
 */
#include "../philox.h"
#include "kernels_cpu.h"

PcStatus pc_cpu_random(PcTensor *dst, PcRandomDist dist, double a, double b, uint64_t seed,
                       uint64_t offset) {
    const char *op = dist == PC_RAND_NORMAL ? "random normal" : "random uniform";
    if (dist != PC_RAND_UNIFORM && dist != PC_RAND_NORMAL)
        return pc_set_error(PC_ERR_INVALID, "random: unknown distribution %d", (int)dist);
    if (!pc_dtype_is_float(dst->dtype)) return pc_cpu_dtype_error(op, dst->dtype);
    PC_TRY(pc_cpu_check_contiguous(op, "dst", dst));
    const int64_t n = pc_tensor_numel(dst);
    char *p = pc_tensor_data(dst);
    const size_t item = pc_dtype_size(dst->dtype);
    const PcDType dt = dst->dtype;
    const double scale = dist == PC_RAND_UNIFORM ? b - a : b;
    for (int64_t i = 0; i < n; i++) {
        uint32_t x0, x1;
        pc_philox_pair(seed, offset + (uint64_t)i, &x0, &x1);
        const double u = dist == PC_RAND_UNIFORM ? pc_philox_uniform01(x0, x1)
                                                 : pc_philox_normal01(x0, x1);
        const double v = a + scale * u;
        if (dt == PC_FLOAT32)
            ((float *)p)[i] = (float)v;
        else if (dt == PC_FLOAT64)
            ((double *)p)[i] = v;
        else
            pc_cpu_store_f(p + (size_t)i * item, dt, v);
    }
    return PC_OK;
}
