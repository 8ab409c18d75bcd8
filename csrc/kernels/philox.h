/* philox.h — Philox4x32-10 counter-based RNG, shared by the CPU and CUDA backends.
 *
 * Salmon et al. (SC'11) Philox4x32 with 10 rounds: a 128-bit counter and a 64-bit key map to
 * four 32-bit words. Round i uses key + i * (W0, W1). The mapping from (seed, offset + i) to
 * element i of a random tensor is fixed by backend.h; the helpers below implement it, so that
 * C and CUDA produce the same bits. Checked against Random123's known-answer vectors in
 * tests/c/test_cpu_kernels.c.
 *
 * Exports (all static inline, host and device under nvcc):
 *   pc_philox4x32_10(ctr, key, out)    the raw generator
 *   pc_philox_pair(seed, index, &x0, &x1)  words x0, x1 for element `index` (backend.h)
 *   pc_philox_uniform01(x0, x1)        53-bit uniform double in [0, 1)
 *   pc_philox_normal01(x0, x1)         Box-Muller standard normal (double)
 */
#ifndef PC_KERNELS_PHILOX_H
#define PC_KERNELS_PHILOX_H

#include <stdint.h>
#include <math.h>

#ifdef __CUDACC__
#define PC_PHILOX_QUAL __host__ __device__
#else
#define PC_PHILOX_QUAL
#endif

#define PC_PHILOX_M0 0xD2511F53u
#define PC_PHILOX_M1 0xCD9E8D57u
#define PC_PHILOX_W0 0x9E3779B9u
#define PC_PHILOX_W1 0xBB67AE85u

/* One round: two 32x32->64 multiplies, then the Feistel-like mix. c is updated in place. */
static inline PC_PHILOX_QUAL void pc_philox_round(uint32_t c[4], uint32_t k0, uint32_t k1) {
    uint64_t p0 = (uint64_t)PC_PHILOX_M0 * c[0];
    uint64_t p1 = (uint64_t)PC_PHILOX_M1 * c[2];
    uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
    uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
    uint32_t n0 = hi1 ^ c[1] ^ k0;
    uint32_t n2 = hi0 ^ c[3] ^ k1;
    c[0] = n0;
    c[1] = lo1;
    c[2] = n2;
    c[3] = lo0;
}

/* out = Philox4x32-10(ctr, key). */
static inline PC_PHILOX_QUAL void pc_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2],
                                                   uint32_t out[4]) {
    uint32_t c[4] = {ctr[0], ctr[1], ctr[2], ctr[3]};
    uint32_t k0 = key[0], k1 = key[1];
    for (int r = 0; r < 10; r++) {
        pc_philox_round(c, k0, k1);
        k0 += PC_PHILOX_W0;
        k1 += PC_PHILOX_W1;
    }
    out[0] = c[0];
    out[1] = c[1];
    out[2] = c[2];
    out[3] = c[3];
}

/* Words x0, x1 for the element with absolute counter `index` (= offset + i) under `seed`:
 * key (lo32(seed), hi32(seed)), counter (lo32(index), hi32(index), 0, 0). */
static inline PC_PHILOX_QUAL void pc_philox_pair(uint64_t seed, uint64_t index, uint32_t *x0,
                                                 uint32_t *x1) {
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    uint32_t ctr[4] = {(uint32_t)index, (uint32_t)(index >> 32), 0u, 0u};
    uint32_t out[4];
    pc_philox4x32_10(ctr, key, out);
    *x0 = out[0];
    *x1 = out[1];
}

/* (((uint64)x0 << 32 | x1) >> 11) * 2^-53: exact in double, in [0, 1). */
static inline PC_PHILOX_QUAL double pc_philox_uniform01(uint32_t x0, uint32_t x1) {
    uint64_t bits = ((uint64_t)x0 << 32 | (uint64_t)x1) >> 11;
    return (double)bits * (1.0 / 9007199254740992.0);
}

/* Box-Muller with u1 = (x0 + 1) * 2^-32 in (0, 1], u2 = x1 * 2^-32 in [0, 1). */
static inline PC_PHILOX_QUAL double pc_philox_normal01(uint32_t x0, uint32_t x1) {
    const double two_pi = 6.283185307179586476925286766559;
    double u1 = ((double)x0 + 1.0) * (1.0 / 4294967296.0);
    double u2 = (double)x1 * (1.0 / 4294967296.0);
    return sqrt(-2.0 * log(u1)) * cos(two_pi * u2);
}

#endif /* PC_KERNELS_PHILOX_H */
