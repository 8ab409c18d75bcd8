/* elementwise.c — CPU copy (with dtype conversion), fill, unary and binary kernels.
 *
 * Every kernel builds a PcIter (strided.h) over dst and its inputs, then runs an inner loop
 * picked by dtype (and, for copy, by the source dtype). Inner loops have a contiguous fast
 * path with restrict pointers, processed in blocks of PC_EW_BLOCK so that GCC vectorises it
 * at -O2, and a generic strided path (stride 0 = broadcast).
 *
 * dtypes: copy and fill take all six. unary/binary compute float32 in float, float64 in
 * double, float16/bfloat16 in float (rounded back on store). int64 is accepted for
 * NEG, ABS, SIGN, ADD_S, MUL_S, RSUB_S, GE_S, GT_S and ADD, SUB, MUL, MAXIMUM and the
 * comparisons EQ ... GE (backend.h requires ABS, ADD_S, MUL_S, ADD, SUB, MUL and the
 * comparisons; the rest are exact and cheap). Everything else is PC_ERR_TYPE.
 *
 * Exports: pc_cpu_copy, pc_cpu_fill, pc_cpu_unary, pc_cpu_binary.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <tgmath.h>

#include "kernels_cpu.h"
#include "strided.h"

#define PC_EW_BLOCK 8

typedef struct PcEwCtx {
    int op;
    double s; /* unary scalar or binary alpha */
} PcEwCtx;

/* ---- loop skeletons (used by elementwise_tmpl.h) ----
 * In scope: n, pd/sd (dst), ps/ss (unary source) or pa/sa, pb/sb (binary inputs). EXPR sees
 * the loaded compute-type values x (unary) or a, b (binary). The contiguous path loads a
 * block into a local array before computing and storing it: with every load ahead of every
 * store, GCC's -O2 SLP vectoriser needs no alias analysis (it does not trust block-scope
 * restrict pointers), and in-place use (dst == src) stays correct. */

#define PC_UN_LOOP(T, C, LD, ST, ...)                                                 \
    do {                                                                              \
        if (sd == (int64_t)sizeof(T) && ss == (int64_t)sizeof(T)) {                   \
            T *restrict dp_ = (T *)pd;                                                \
            const T *restrict sp_ = (const T *)ps;                                    \
            int64_t i_ = 0;                                                           \
            for (; i_ + PC_EW_BLOCK <= n; i_ += PC_EW_BLOCK) {                        \
                C xs_[PC_EW_BLOCK];                                                   \
                for (int j_ = 0; j_ < PC_EW_BLOCK; j_++) xs_[j_] = LD(sp_[i_ + j_]);  \
                for (int j_ = 0; j_ < PC_EW_BLOCK; j_++) {                            \
                    const C x = xs_[j_];                                              \
                    dp_[i_ + j_] = ST((__VA_ARGS__));                                 \
                }                                                                     \
            }                                                                         \
            for (; i_ < n; i_++) {                                                    \
                const C x = LD(sp_[i_]);                                              \
                dp_[i_] = ST((__VA_ARGS__));                                          \
            }                                                                         \
        } else {                                                                      \
            for (int64_t i_ = 0; i_ < n; i_++) {                                      \
                const C x = LD(*(const T *)(ps + i_ * ss));                           \
                *(T *)(pd + i_ * sd) = ST((__VA_ARGS__));                             \
            }                                                                         \
        }                                                                             \
    } while (0)

#define PC_BIN_LOOP(T, C, LD, ST, ...)                                                \
    do {                                                                              \
        if (sd == (int64_t)sizeof(T) && sa == (int64_t)sizeof(T) &&                   \
            sb == (int64_t)sizeof(T)) {                                               \
            T *restrict dp_ = (T *)pd;                                                \
            const T *restrict ap_ = (const T *)pa;                                    \
            const T *restrict bp_ = (const T *)pb;                                    \
            int64_t i_ = 0;                                                           \
            for (; i_ + PC_EW_BLOCK <= n; i_ += PC_EW_BLOCK) {                        \
                C as_[PC_EW_BLOCK], bs_[PC_EW_BLOCK];                                 \
                for (int j_ = 0; j_ < PC_EW_BLOCK; j_++) {                            \
                    as_[j_] = LD(ap_[i_ + j_]);                                       \
                    bs_[j_] = LD(bp_[i_ + j_]);                                       \
                }                                                                     \
                for (int j_ = 0; j_ < PC_EW_BLOCK; j_++) {                            \
                    const C a = as_[j_];                                              \
                    const C b = bs_[j_];                                              \
                    dp_[i_ + j_] = ST((__VA_ARGS__));                                 \
                }                                                                     \
            }                                                                         \
            for (; i_ < n; i_++) {                                                    \
                const C a = LD(ap_[i_]);                                              \
                const C b = LD(bp_[i_]);                                              \
                dp_[i_] = ST((__VA_ARGS__));                                          \
            }                                                                         \
        } else if (sd == (int64_t)sizeof(T) && sa == (int64_t)sizeof(T) && sb == 0) { \
            T *restrict dp_ = (T *)pd;                                                \
            const T *restrict ap_ = (const T *)pa;                                    \
            const C b = LD(*(const T *)pb);                                           \
            for (int64_t i_ = 0; i_ < n; i_++) {                                      \
                const C a = LD(ap_[i_]);                                              \
                dp_[i_] = ST((__VA_ARGS__));                                          \
            }                                                                         \
        } else {                                                                      \
            for (int64_t i_ = 0; i_ < n; i_++) {                                      \
                const C a = LD(*(const T *)(pa + i_ * sa));                           \
                const C b = LD(*(const T *)(pb + i_ * sb));                           \
                *(T *)(pd + i_ * sd) = ST((__VA_ARGS__));                             \
            }                                                                         \
        }                                                                             \
    } while (0)

#define PC_ID(v) (v)

/* ---- floating inner loops (one instance per dtype) ---- */

#define PC_T float
#define PC_C float
#define PC_LD PC_ID
#define PC_ST PC_ID
#define PC_SFX f32
#include "elementwise_tmpl.h"

#define PC_T double
#define PC_C double
#define PC_LD PC_ID
#define PC_ST PC_ID
#define PC_SFX f64
#include "elementwise_tmpl.h"

#define PC_T uint16_t
#define PC_C float
#define PC_LD pc_f16_to_f32
#define PC_ST pc_f32_to_f16
#define PC_SFX f16
#include "elementwise_tmpl.h"

#define PC_T uint16_t
#define PC_C float
#define PC_LD pc_bf16_to_f32
#define PC_ST pc_f32_to_bf16
#define PC_SFX bf16
#include "elementwise_tmpl.h"

/* ---- int64 inner loops ---- */

static void pc_ew_unary_i64(int64_t n, char *const *p, const int64_t *st, void *vctx) {
    const PcEwCtx *ctx = (const PcEwCtx *)vctx;
    char *pd = p[0];
    const char *ps = p[1];
    const int64_t sd = st[0], ss = st[1];
    const int64_t s = (int64_t)ctx->s;
    const double sf = ctx->s;
    switch ((PcUnaryOp)ctx->op) {
    case PC_U_NEG: PC_UN_LOOP(int64_t, int64_t, PC_ID, PC_ID, (int64_t)(0u - (uint64_t)x)); break;
    case PC_U_ABS:
        PC_UN_LOOP(int64_t, int64_t, PC_ID, PC_ID, x < 0 ? (int64_t)(0u - (uint64_t)x) : x);
        break;
    case PC_U_SIGN: PC_UN_LOOP(int64_t, int64_t, PC_ID, PC_ID, (int64_t)((x > 0) - (x < 0))); break;
    case PC_U_ADD_S:
        PC_UN_LOOP(int64_t, int64_t, PC_ID, PC_ID, (int64_t)((uint64_t)x + (uint64_t)s));
        break;
    case PC_U_MUL_S:
        PC_UN_LOOP(int64_t, int64_t, PC_ID, PC_ID, (int64_t)((uint64_t)x * (uint64_t)s));
        break;
    case PC_U_RSUB_S:
        PC_UN_LOOP(int64_t, int64_t, PC_ID, PC_ID, (int64_t)((uint64_t)s - (uint64_t)x));
        break;
    case PC_U_GE_S: PC_UN_LOOP(int64_t, int64_t, PC_ID, PC_ID, (int64_t)((double)x >= sf)); break;
    case PC_U_GT_S: PC_UN_LOOP(int64_t, int64_t, PC_ID, PC_ID, (int64_t)((double)x > sf)); break;
    default: break;
    }
}

static void pc_ew_binary_i64(int64_t n, char *const *p, const int64_t *st, void *vctx) {
    const PcEwCtx *ctx = (const PcEwCtx *)vctx;
    char *pd = p[0];
    const char *pa = p[1], *pb = p[2];
    const int64_t sd = st[0], sa = st[1], sb = st[2];
    const uint64_t alpha = (uint64_t)(int64_t)ctx->s;
    /* Wrapping arithmetic through uint64 (two's complement), as torch's int64 does. */
    switch ((PcBinaryOp)ctx->op) {
    case PC_B_ADD:
        PC_BIN_LOOP(int64_t, int64_t, PC_ID, PC_ID,
                    (int64_t)((uint64_t)a + alpha * (uint64_t)b));
        break;
    case PC_B_SUB:
        PC_BIN_LOOP(int64_t, int64_t, PC_ID, PC_ID,
                    (int64_t)((uint64_t)a - alpha * (uint64_t)b));
        break;
    case PC_B_MUL:
        PC_BIN_LOOP(int64_t, int64_t, PC_ID, PC_ID, (int64_t)((uint64_t)a * (uint64_t)b));
        break;
    case PC_B_MAXIMUM: PC_BIN_LOOP(int64_t, int64_t, PC_ID, PC_ID, a > b ? a : b); break;
    case PC_B_EQ: PC_BIN_LOOP(int64_t, int64_t, PC_ID, PC_ID, (int64_t)(a == b)); break;
    case PC_B_NE: PC_BIN_LOOP(int64_t, int64_t, PC_ID, PC_ID, (int64_t)(a != b)); break;
    case PC_B_LT: PC_BIN_LOOP(int64_t, int64_t, PC_ID, PC_ID, (int64_t)(a < b)); break;
    case PC_B_LE: PC_BIN_LOOP(int64_t, int64_t, PC_ID, PC_ID, (int64_t)(a <= b)); break;
    case PC_B_GT: PC_BIN_LOOP(int64_t, int64_t, PC_ID, PC_ID, (int64_t)(a > b)); break;
    case PC_B_GE: PC_BIN_LOOP(int64_t, int64_t, PC_ID, PC_ID, (int64_t)(a >= b)); break;
    default: break;
    }
}

static bool pc_ew_unary_i64_ok(PcUnaryOp op) {
    switch (op) {
    case PC_U_NEG: case PC_U_ABS: case PC_U_SIGN: case PC_U_ADD_S: case PC_U_MUL_S:
    case PC_U_RSUB_S: case PC_U_GE_S: case PC_U_GT_S: return true;
    default: return false;
    }
}

static bool pc_ew_binary_i64_ok(PcBinaryOp op) {
    switch (op) {
    case PC_B_ADD: case PC_B_SUB: case PC_B_MUL: case PC_B_MAXIMUM: case PC_B_EQ: case PC_B_NE:
    case PC_B_LT: case PC_B_LE: case PC_B_GT: case PC_B_GE: return true;
    default: return false;
    }
}

/* ---- unary / binary ---- */

PcStatus pc_cpu_unary(PcUnaryOp op, PcTensor *dst, const PcTensor *src, double s) {
    if ((int)op < 0 || op >= PC_NUM_UNARY)
        return pc_set_error(PC_ERR_INVALID, "unary: unknown op %d", (int)op);
    char name[48];
    snprintf(name, sizeof name, "unary %s", pc_unary_op_name(op));
    PC_TRY(pc_cpu_check_same_shape(name, "dst", dst, "src", src));
    PC_TRY(pc_cpu_check_dtype(name, "src", src, dst->dtype));
    PcInnerLoop fn;
    switch (dst->dtype) {
    case PC_FLOAT32: fn = pc_ew_unary_f32; break;
    case PC_FLOAT64: fn = pc_ew_unary_f64; break;
    case PC_FLOAT16: fn = pc_ew_unary_f16; break;
    case PC_BFLOAT16: fn = pc_ew_unary_bf16; break;
    case PC_INT64:
        if (!pc_ew_unary_i64_ok(op)) return pc_cpu_dtype_error(name, dst->dtype);
        fn = pc_ew_unary_i64;
        break;
    default: return pc_cpu_dtype_error(name, dst->dtype);
    }
    const PcTensor *ts[2] = {dst, src};
    PcIter it;
    pc_iter_init_tensors(&it, 2, ts);
    PcEwCtx ctx = {(int)op, s};
    pc_iter_run(&it, fn, &ctx);
    return PC_OK;
}

PcStatus pc_cpu_binary(PcBinaryOp op, PcTensor *dst, const PcTensor *a, const PcTensor *b,
                       double alpha) {
    if ((int)op < 0 || op >= PC_NUM_BINARY)
        return pc_set_error(PC_ERR_INVALID, "binary: unknown op %d", (int)op);
    char name[48];
    snprintf(name, sizeof name, "binary %s", pc_binary_op_name(op));
    PC_TRY(pc_cpu_check_same_shape(name, "dst", dst, "a", a));
    PC_TRY(pc_cpu_check_same_shape(name, "dst", dst, "b", b));
    PC_TRY(pc_cpu_check_dtype(name, "a", a, dst->dtype));
    PC_TRY(pc_cpu_check_dtype(name, "b", b, dst->dtype));
    PcInnerLoop fn;
    switch (dst->dtype) {
    case PC_FLOAT32: fn = pc_ew_binary_f32; break;
    case PC_FLOAT64: fn = pc_ew_binary_f64; break;
    case PC_FLOAT16: fn = pc_ew_binary_f16; break;
    case PC_BFLOAT16: fn = pc_ew_binary_bf16; break;
    case PC_INT64:
        if (!pc_ew_binary_i64_ok(op)) return pc_cpu_dtype_error(name, dst->dtype);
        fn = pc_ew_binary_i64;
        break;
    default: return pc_cpu_dtype_error(name, dst->dtype);
    }
    const PcTensor *ts[3] = {dst, a, b};
    PcIter it;
    pc_iter_init_tensors(&it, 3, ts);
    PcEwCtx ctx = {(int)op, alpha};
    pc_iter_run(&it, fn, &ctx);
    return PC_OK;
}

/* ---- copy with conversion ----
 * Each source dtype loads to double (exact for every dtype but int64 beyond 2^53), each
 * destination stores from double; same-dtype copies move raw bytes. float -> int64
 * truncates toward zero and saturates (NaN -> INT64_MIN); -> bool is `!= 0`. */

#define PC_TOD_f32(x) ((double)(x))
#define PC_TOD_f64(x) (x)
#define PC_TOD_f16(x) ((double)pc_f16_to_f32(x))
#define PC_TOD_bf16(x) ((double)pc_bf16_to_f32(x))
#define PC_TOD_i64(x) ((double)(x))
#define PC_TOD_b8(x) ((x) != 0 ? 1.0 : 0.0)

#define PC_FROMD_f32(v) ((float)(v))
#define PC_FROMD_f64(v) (v)
#define PC_FROMD_f16(v) pc_f32_to_f16((float)(v))
#define PC_FROMD_bf16(v) pc_f32_to_bf16((float)(v))
#define PC_FROMD_i64(v) pc_cpu_d2i64(v)
#define PC_FROMD_b8(v) ((uint8_t)((v) != 0))

#define PC_CONV_FN(SN, ST, DN, DT)                                                    \
    static void pc_conv_##SN##_##DN(int64_t n, char *const *p, const int64_t *st,     \
                                    void *ctx) {                                      \
        (void)ctx;                                                                    \
        char *pd = p[0];                                                              \
        const char *ps = p[1];                                                        \
        const int64_t sd = st[0], ss = st[1];                                         \
        if (sd == (int64_t)sizeof(DT) && ss == (int64_t)sizeof(ST)) {                 \
            DT *restrict dp_ = (DT *)pd;                                              \
            const ST *restrict sp_ = (const ST *)ps;                                  \
            int64_t i_ = 0;                                                           \
            for (; i_ + PC_EW_BLOCK <= n; i_ += PC_EW_BLOCK) {                        \
                ST xs_[PC_EW_BLOCK];                                                  \
                for (int j_ = 0; j_ < PC_EW_BLOCK; j_++) xs_[j_] = sp_[i_ + j_];      \
                for (int j_ = 0; j_ < PC_EW_BLOCK; j_++)                              \
                    dp_[i_ + j_] = PC_FROMD_##DN(PC_TOD_##SN(xs_[j_]));               \
            }                                                                         \
            for (; i_ < n; i_++) dp_[i_] = PC_FROMD_##DN(PC_TOD_##SN(sp_[i_]));       \
        } else {                                                                      \
            for (int64_t i_ = 0; i_ < n; i_++)                                        \
                *(DT *)(pd + i_ * sd) =                                               \
                    PC_FROMD_##DN(PC_TOD_##SN(*(const ST *)(ps + i_ * ss)));          \
        }                                                                             \
    }

/* One row of conversions from source SN to every other destination. */
#define PC_CONV_ROW(SN, ST)                                                           \
    PC_CONV_FN(SN, ST, f32, float)                                                    \
    PC_CONV_FN(SN, ST, f64, double)                                                   \
    PC_CONV_FN(SN, ST, f16, uint16_t)                                                 \
    PC_CONV_FN(SN, ST, bf16, uint16_t)                                                \
    PC_CONV_FN(SN, ST, i64, int64_t)                                                  \
    PC_CONV_FN(SN, ST, b8, uint8_t)

PC_CONV_ROW(f32, float)
PC_CONV_ROW(f64, double)
PC_CONV_ROW(f16, uint16_t)
PC_CONV_ROW(bf16, uint16_t)
PC_CONV_ROW(i64, int64_t)
PC_CONV_ROW(b8, uint8_t)

#define PC_CONV_TABLE_ROW(SN)                                                         \
    {pc_conv_##SN##_f32, pc_conv_##SN##_f64, pc_conv_##SN##_f16, pc_conv_##SN##_bf16, \
     pc_conv_##SN##_i64, pc_conv_##SN##_b8}

/* [src dtype][dst dtype], in PcDType order. The diagonal is replaced by raw moves. */
static const PcInnerLoop pc_conv_table[PC_NUM_DTYPES][PC_NUM_DTYPES] = {
    PC_CONV_TABLE_ROW(f32), PC_CONV_TABLE_ROW(f64), PC_CONV_TABLE_ROW(f16),
    PC_CONV_TABLE_ROW(bf16), PC_CONV_TABLE_ROW(i64), PC_CONV_TABLE_ROW(b8)};

/* Raw same-size moves (ctx unused). Contiguous runs use memmove (dst may equal src). */
#define PC_MOVE_FN(NAME, T)                                                           \
    static void NAME(int64_t n, char *const *p, const int64_t *st, void *ctx) {       \
        (void)ctx;                                                                    \
        if (st[0] == (int64_t)sizeof(T) && st[1] == (int64_t)sizeof(T)) {             \
            if (p[0] != p[1]) memmove(p[0], p[1], (size_t)n * sizeof(T));             \
            return;                                                                   \
        }                                                                             \
        for (int64_t i = 0; i < n; i++)                                               \
            *(T *)(p[0] + i * st[0]) = *(const T *)(p[1] + i * st[1]);                \
    }

PC_MOVE_FN(pc_move_1, uint8_t)
PC_MOVE_FN(pc_move_2, uint16_t)
PC_MOVE_FN(pc_move_4, uint32_t)
PC_MOVE_FN(pc_move_8, uint64_t)

static PcInnerLoop pc_move_for_size(size_t item) {
    switch (item) {
    case 1: return pc_move_1;
    case 2: return pc_move_2;
    case 4: return pc_move_4;
    default: return pc_move_8;
    }
}

static bool pc_dtype_valid(PcDType dt) { return (int)dt >= 0 && dt < PC_NUM_DTYPES; }

PcStatus pc_cpu_copy(PcTensor *dst, const PcTensor *src) {
    PC_TRY(pc_cpu_check_same_shape("copy", "dst", dst, "src", src));
    if (!pc_dtype_valid(dst->dtype)) return pc_cpu_dtype_error("copy", dst->dtype);
    if (!pc_dtype_valid(src->dtype)) return pc_cpu_dtype_error("copy", src->dtype);
    PcInnerLoop fn = dst->dtype == src->dtype ? pc_move_for_size(pc_dtype_size(dst->dtype))
                                              : pc_conv_table[src->dtype][dst->dtype];
    const PcTensor *ts[2] = {dst, src};
    PcIter it;
    pc_iter_init_tensors(&it, 2, ts);
    pc_iter_run(&it, fn, NULL);
    return PC_OK;
}

/* ---- fill ---- */

#define PC_FILL_FN(NAME, T)                                                           \
    static void NAME(int64_t n, char *const *p, const int64_t *st, void *ctx) {       \
        const T v = *(const T *)ctx;                                                  \
        if (st[0] == (int64_t)sizeof(T)) {                                            \
            T *restrict dp = (T *)p[0];                                               \
            for (int64_t i = 0; i < n; i++) dp[i] = v;                                \
            return;                                                                   \
        }                                                                             \
        for (int64_t i = 0; i < n; i++) *(T *)(p[0] + i * st[0]) = v;                 \
    }

PC_FILL_FN(pc_fill_1, uint8_t)
PC_FILL_FN(pc_fill_2, uint16_t)
PC_FILL_FN(pc_fill_4, uint32_t)
PC_FILL_FN(pc_fill_8, uint64_t)

PcStatus pc_cpu_fill(PcTensor *dst, double value) {
    union {
        uint64_t u64;
        uint32_t u32;
        uint16_t u16;
        uint8_t u8;
        float f32;
        double f64;
        int64_t i64;
    } v;
    v.u64 = 0;
    PcInnerLoop fn;
    switch (dst->dtype) {
    case PC_FLOAT32: v.f32 = (float)value; fn = pc_fill_4; break;
    case PC_FLOAT64: v.f64 = value; fn = pc_fill_8; break;
    case PC_FLOAT16: v.u16 = pc_f32_to_f16((float)value); fn = pc_fill_2; break;
    case PC_BFLOAT16: v.u16 = pc_f32_to_bf16((float)value); fn = pc_fill_2; break;
    case PC_INT64: v.i64 = pc_cpu_d2i64(value); fn = pc_fill_8; break;
    case PC_BOOL: v.u8 = (uint8_t)(value != 0); fn = pc_fill_1; break;
    default: return pc_cpu_dtype_error("fill", dst->dtype);
    }
    const PcTensor *ts[1] = {dst};
    PcIter it;
    pc_iter_init_tensors(&it, 1, ts);
    pc_iter_run(&it, fn, &v);
    return PC_OK;
}
