/* keyset.h — a small open-addressing set of leaf-action keys (stage, type, microbatch), used
 * by the lowering pass and the simulators to ask "has this rank already run X?".
 *
 * Invariants: capacity is a power of two and at most half full; key 0 marks an empty slot
 * (pc_keyset_key never returns 0). Internal to csrc/sched/ (static inline, no exports).
 */
#ifndef PC_SCHED_KEYSET_H
#define PC_SCHED_KEYSET_H

#include <stdint.h>
#include <stdlib.h>

#include "action.h"

typedef struct PcKeySet {
    uint64_t *slots;  /* owned; 0 = empty */
    size_t cap;       /* power of two */
    size_t len;
} PcKeySet;

static inline uint64_t pc_keyset_key(int32_t stage, PcActType type, int32_t mb) {
    /* +2 keeps stage -1 / mb -1 representable and the key non-zero */
    return ((uint64_t)(uint32_t)(stage + 2) << 34) | ((uint64_t)((unsigned)type & 0x3f) << 28) |
           (uint64_t)((uint32_t)(mb + 2) & 0x0fffffffu) | (1ull << 63);
}

static inline void pc_keyset_init(PcKeySet *s) {
    s->slots = NULL;
    s->cap = 0;
    s->len = 0;
}

static inline void pc_keyset_free(PcKeySet *s) {
    free(s->slots);
    pc_keyset_init(s);
}

static inline size_t pc_keyset_hash(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return (size_t)k;
}

static inline int pc_keyset_has(const PcKeySet *s, uint64_t k) {
    if (s->cap == 0) return 0;
    size_t m = s->cap - 1;
    for (size_t i = pc_keyset_hash(k) & m;; i = (i + 1) & m) {
        if (s->slots[i] == k) return 1;
        if (s->slots[i] == 0) return 0;
    }
}

/* Returns 0, or -1 when out of memory. */
static inline int pc_keyset_add(PcKeySet *s, uint64_t k) {
    if ((s->len + 1) * 2 > s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        uint64_t *slots = calloc(cap, sizeof *slots);
        if (!slots) return -1;
        for (size_t j = 0; j < s->cap; j++) {
            uint64_t key = s->slots[j];
            if (!key) continue;
            size_t i = pc_keyset_hash(key) & (cap - 1);
            while (slots[i]) i = (i + 1) & (cap - 1);
            slots[i] = key;
        }
        free(s->slots);
        s->slots = slots;
        s->cap = cap;
    }
    size_t m = s->cap - 1;
    size_t i = pc_keyset_hash(k) & m;
    while (s->slots[i] && s->slots[i] != k) i = (i + 1) & m;
    if (s->slots[i] == 0) {
        s->slots[i] = k;
        s->len++;
    }
    return 0;
}

#endif /* PC_SCHED_KEYSET_H */
