/* elementwise_tmpl.h — unary/binary inner loops for one floating dtype (template).
 *
 * Included several times by elementwise.c (no include guard), each time with:
 *   PC_T      storage type            (float, double, uint16_t)
 *   PC_C      compute type            (float or double)
 *   PC_LD(v)  storage -> compute      PC_ST(v)  compute -> storage
 *   PC_SFX    name suffix             (f32, f64, f16, bf16)
 * and PC_UN_LOOP / PC_BIN_LOOP from elementwise.c in scope. Defines
 * pc_ew_unary_<sfx> and pc_ew_binary_<sfx> (PcInnerLoop; ctx is PcEwCtx). Math functions
 * are type-generic (tgmath.h), so float32 and the half types compute in float, float64 in
 * double. Undefines its parameters at the end.
 */

#define PC_EW_CAT2(a, b) a##b
#define PC_EW_CAT(a, b) PC_EW_CAT2(a, b)
#define PC_EW_NAME(base) PC_EW_CAT(base, PC_SFX)

static void PC_EW_NAME(pc_ew_unary_)(int64_t n, char *const *p, const int64_t *st,
                                     void *vctx) {
    const PcEwCtx *ctx = (const PcEwCtx *)vctx;
    char *pd = p[0];
    const char *ps = p[1];
    const int64_t sd = st[0], ss = st[1];
    const PC_C s = (PC_C)ctx->s;
    const PC_C zero = (PC_C)0, one = (PC_C)1;
    switch ((PcUnaryOp)ctx->op) {
    case PC_U_NEG: PC_UN_LOOP(PC_T, PC_C, PC_LD, PC_ST, -x); break;
    case PC_U_ABS: PC_UN_LOOP(PC_T, PC_C, PC_LD, PC_ST, fabs(x)); break;
    case PC_U_EXP: PC_UN_LOOP(PC_T, PC_C, PC_LD, PC_ST, exp(x)); break;
    case PC_U_LOG: PC_UN_LOOP(PC_T, PC_C, PC_LD, PC_ST, log(x)); break;
    case PC_U_SQRT: PC_UN_LOOP(PC_T, PC_C, PC_LD, PC_ST, sqrt(x)); break;
    case PC_U_TANH: PC_UN_LOOP(PC_T, PC_C, PC_LD, PC_ST, tanh(x)); break;
    case PC_U_SIGMOID: PC_UN_LOOP(PC_T, PC_C, PC_LD, PC_ST, one / (one + exp(-x))); break;
    case PC_U_RELU: PC_UN_LOOP(PC_T, PC_C, PC_LD, PC_ST, x < zero ? zero : x); break;
    case PC_U_GELU:
        PC_UN_LOOP(PC_T, PC_C, PC_LD, PC_ST,
                   (PC_C)0.5 * x * (one + erf(x * (PC_C)0.70710678118654752440)));
        break;
    case PC_U_POW:
        if (s == (PC_C)2)
            PC_UN_LOOP(PC_T, PC_C, PC_LD, PC_ST, x * x);
        else if (s == one)
            PC_UN_LOOP(PC_T, PC_C, PC_LD, PC_ST, x);
        else
            PC_UN_LOOP(PC_T, PC_C, PC_LD, PC_ST, pow(x, s));
        break;
    case PC_U_SIGN: PC_UN_LOOP(PC_T, PC_C, PC_LD, PC_ST, (PC_C)((x > zero) - (x < zero))); break;
    case PC_U_ADD_S: PC_UN_LOOP(PC_T, PC_C, PC_LD, PC_ST, x + s); break;
    case PC_U_MUL_S: PC_UN_LOOP(PC_T, PC_C, PC_LD, PC_ST, x * s); break;
    case PC_U_RSUB_S: PC_UN_LOOP(PC_T, PC_C, PC_LD, PC_ST, s - x); break;
    case PC_U_RDIV_S: PC_UN_LOOP(PC_T, PC_C, PC_LD, PC_ST, s / x); break;
    case PC_U_GE_S: PC_UN_LOOP(PC_T, PC_C, PC_LD, PC_ST, x >= s ? one : zero); break;
    case PC_U_GT_S: PC_UN_LOOP(PC_T, PC_C, PC_LD, PC_ST, x > s ? one : zero); break;
    default: break;
    }
}

static void PC_EW_NAME(pc_ew_binary_)(int64_t n, char *const *p, const int64_t *st,
                                      void *vctx) {
    const PcEwCtx *ctx = (const PcEwCtx *)vctx;
    char *pd = p[0];
    const char *pa = p[1], *pb = p[2];
    const int64_t sd = st[0], sa = st[1], sb = st[2];
    const PC_C alpha = (PC_C)ctx->s;
    const PC_C zero = (PC_C)0, one = (PC_C)1, half = (PC_C)0.5;
    const PC_C rsqrt2 = (PC_C)0.70710678118654752440;
    const PC_C rsqrt2pi = (PC_C)0.39894228040143267794;
    switch ((PcBinaryOp)ctx->op) {
    case PC_B_ADD:
        if (alpha == one)
            PC_BIN_LOOP(PC_T, PC_C, PC_LD, PC_ST, a + b);
        else
            PC_BIN_LOOP(PC_T, PC_C, PC_LD, PC_ST, a + alpha * b);
        break;
    case PC_B_SUB:
        if (alpha == one)
            PC_BIN_LOOP(PC_T, PC_C, PC_LD, PC_ST, a - b);
        else
            PC_BIN_LOOP(PC_T, PC_C, PC_LD, PC_ST, a - alpha * b);
        break;
    case PC_B_MUL: PC_BIN_LOOP(PC_T, PC_C, PC_LD, PC_ST, a * b); break;
    case PC_B_DIV: PC_BIN_LOOP(PC_T, PC_C, PC_LD, PC_ST, a / b); break;
    case PC_B_MAXIMUM:
        /* NaN in either input propagates. */
        PC_BIN_LOOP(PC_T, PC_C, PC_LD, PC_ST, a != a ? a : (a > b ? a : b));
        break;
    case PC_B_EQ: PC_BIN_LOOP(PC_T, PC_C, PC_LD, PC_ST, a == b ? one : zero); break;
    case PC_B_NE: PC_BIN_LOOP(PC_T, PC_C, PC_LD, PC_ST, a != b ? one : zero); break;
    case PC_B_LT: PC_BIN_LOOP(PC_T, PC_C, PC_LD, PC_ST, a < b ? one : zero); break;
    case PC_B_LE: PC_BIN_LOOP(PC_T, PC_C, PC_LD, PC_ST, a <= b ? one : zero); break;
    case PC_B_GT: PC_BIN_LOOP(PC_T, PC_C, PC_LD, PC_ST, a > b ? one : zero); break;
    case PC_B_GE: PC_BIN_LOOP(PC_T, PC_C, PC_LD, PC_ST, a >= b ? one : zero); break;
    case PC_B_RELU_BWD: PC_BIN_LOOP(PC_T, PC_C, PC_LD, PC_ST, b > zero ? a : zero); break;
    case PC_B_GELU_BWD:
        /* gelu'(x) = Phi(x) + x * phi(x) */
        PC_BIN_LOOP(PC_T, PC_C, PC_LD, PC_ST,
                    a * (half * (one + erf(b * rsqrt2)) + b * rsqrt2pi * exp(-half * b * b)));
        break;
    case PC_B_TANH_BWD: PC_BIN_LOOP(PC_T, PC_C, PC_LD, PC_ST, a * (one - b * b)); break;
    case PC_B_SIGMOID_BWD: PC_BIN_LOOP(PC_T, PC_C, PC_LD, PC_ST, a * b * (one - b)); break;
    case PC_B_POW_BWD:
        if (alpha == zero)
            PC_BIN_LOOP(PC_T, PC_C, PC_LD, PC_ST, (void)a, (void)b, zero);
        else if (alpha == one)
            PC_BIN_LOOP(PC_T, PC_C, PC_LD, PC_ST, (void)b, a);
        else if (alpha == (PC_C)2)
            PC_BIN_LOOP(PC_T, PC_C, PC_LD, PC_ST, a * (PC_C)2 * b);
        else
            PC_BIN_LOOP(PC_T, PC_C, PC_LD, PC_ST, a * alpha * pow(b, alpha - one));
        break;
    default: break;
    }
}

#undef PC_EW_NAME
#undef PC_EW_CAT
#undef PC_EW_CAT2
#undef PC_T
#undef PC_C
#undef PC_LD
#undef PC_ST
#undef PC_SFX
