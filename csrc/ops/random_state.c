/* random_state.c — the process-wide random generator state (seed + offset).
 *
 * Random kernels are counter-based (Philox, see backend.h `random`): a call needs only a seed
 * and the offset of its first number. This file hands out disjoint offset ranges: every
 * pc_rng_reserve(n) returns the current offset and advances it by n, so successive calls never
 * reuse numbers and a given seed gives one sequence on every device.
 *
 * Invariants: seed and offset change together under one mutex; manual_seed resets the offset
 * to 0. Default seed: 67280421310721 (torch's default initial seed).
 * Exports: pc_rng_manual_seed, pc_rng_initial_seed, pc_rng_reserve (ops.h).
 */
#include "internal.h"

#include <pthread.h>

#define PC_RNG_DEFAULT_SEED UINT64_C(67280421310721)

static pthread_mutex_t pc_rng_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t pc_rng_seed = PC_RNG_DEFAULT_SEED;
static uint64_t pc_rng_offset = 0;

void pc_rng_manual_seed(uint64_t seed) {
    pthread_mutex_lock(&pc_rng_lock);
    pc_rng_seed = seed;
    pc_rng_offset = 0;
    pthread_mutex_unlock(&pc_rng_lock);
}

uint64_t pc_rng_initial_seed(void) {
    pthread_mutex_lock(&pc_rng_lock);
    uint64_t s = pc_rng_seed;
    pthread_mutex_unlock(&pc_rng_lock);
    return s;
}

void pc_rng_reserve(uint64_t n, uint64_t *seed, uint64_t *offset) {
    pthread_mutex_lock(&pc_rng_lock);
    *seed = pc_rng_seed;
    *offset = pc_rng_offset;
    pc_rng_offset += n;
    pthread_mutex_unlock(&pc_rng_lock);
}
