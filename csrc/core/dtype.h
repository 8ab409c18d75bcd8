/* dtype.h — element types, devices and half-precision conversions.
 *
 * PcDType values are stable (the Python layer and the CSV/trace formats use them).
 * float16/bfloat16 are stored as uint16_t; CPU kernels compute them in float32 through the
 * inline conversions below (round-to-nearest-even, NaN preserved).
 */
#ifndef PC_CORE_DTYPE_H
#define PC_CORE_DTYPE_H

#include <stdint.h>
#include <string.h>
#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum PcDType {
    PC_FLOAT32 = 0,
    PC_FLOAT64 = 1,
    PC_FLOAT16 = 2,
    PC_BFLOAT16 = 3,
    PC_INT64 = 4,
    PC_BOOL = 5,
    PC_NUM_DTYPES
} PcDType;

static inline size_t pc_dtype_size(PcDType dt) {
    switch (dt) {
    case PC_FLOAT32: return 4;
    case PC_FLOAT64: return 8;
    case PC_FLOAT16: return 2;
    case PC_BFLOAT16: return 2;
    case PC_INT64: return 8;
    case PC_BOOL: return 1;
    default: return 0;
    }
}

static inline const char *pc_dtype_name(PcDType dt) {
    switch (dt) {
    case PC_FLOAT32: return "float32";
    case PC_FLOAT64: return "float64";
    case PC_FLOAT16: return "float16";
    case PC_BFLOAT16: return "bfloat16";
    case PC_INT64: return "int64";
    case PC_BOOL: return "bool";
    default: return "?";
    }
}

static inline bool pc_dtype_is_float(PcDType dt) {
    return dt == PC_FLOAT32 || dt == PC_FLOAT64 || dt == PC_FLOAT16 || dt == PC_BFLOAT16;
}

/* Type promotion for binary ops between two tensors (NumPy/torch-like, restricted set). */
static inline PcDType pc_dtype_promote(PcDType a, PcDType b) {
    if (a == b) return a;
    if (a == PC_FLOAT64 || b == PC_FLOAT64) return PC_FLOAT64;
    if (a == PC_FLOAT32 || b == PC_FLOAT32) return PC_FLOAT32;
    if ((a == PC_FLOAT16 && b == PC_BFLOAT16) || (a == PC_BFLOAT16 && b == PC_FLOAT16))
        return PC_FLOAT32;
    if (a == PC_FLOAT16 || b == PC_FLOAT16) return PC_FLOAT16;
    if (a == PC_BFLOAT16 || b == PC_BFLOAT16) return PC_BFLOAT16;
    if (a == PC_INT64 || b == PC_INT64) return PC_INT64;
    return PC_BOOL;
}

/* ---- half-precision conversions ---- */

static inline float pc_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t pc_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float pc_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while ((man & 0x400u) == 0) { man <<= 1; exp--; }
            man &= 0x3ffu;
            u = sign | (exp << 23) | (man << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t pc_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t absu = u & 0x7fffffffu;
    if (absu > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);        /* NaN */
    if (absu >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);       /* overflow -> inf */
    if (absu < 0x38800000u) {                                          /* subnormal or 0 */
        if (absu < 0x33000000u) return (uint16_t)sign;
        uint32_t e = absu >> 23;
        uint32_t m = (absu & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - e;                                      /* 14..24 */
        uint32_t half = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1u);
        uint32_t mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1u))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t r = absu + 0xfffu + ((absu >> 13) & 1u) - (112u << 23);
    return (uint16_t)(sign | (r >> 13));
}

/* ---- devices ---- */

typedef enum PcDeviceType { PC_CPU = 0, PC_CUDA = 1 } PcDeviceType;

typedef struct PcDevice {
    PcDeviceType type;
    int index; /* 0 for CPU; the CUDA ordinal otherwise */
} PcDevice;

static inline bool pc_device_eq(PcDevice a, PcDevice b) {
    return a.type == b.type && (a.type == PC_CPU || a.index == b.index);
}

/* Device string "cpu" / "cuda:0" into buf; returns buf (defined in ops/common.c). */
const char *pc_device_str(PcDevice d, char *buf, size_t n);

#ifdef __cplusplus
}
#endif
#endif /* PC_CORE_DTYPE_H */
