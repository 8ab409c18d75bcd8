/* optim.c — CPU optimiser steps: SGD (momentum, dampening, nesterov, weight decay, maximize)
 * and AdamW (decoupled weight decay, bias-corrected moments), following torch.optim's
 * single-tensor update rules:
 *
 *   SGD:   g = ±grad + wd * p;  with momentum: b = g on the first step, else
 *          b = momentum * b + (1 - dampening) * g;  g = nesterov ? g + momentum * b : b;
 *          p -= lr * g
 *   AdamW: g = ±grad;  p *= 1 - lr * wd;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
 *          p -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
 *
 * All tensors of one index are contiguous, of one float dtype and numel. float32 and the
 * half types compute in float32 (state rounded back on store for half), float64 in double;
 * hyper-parameter products are formed in double then narrowed, as torch does.
 *
 * Exports: pc_cpu_sgd_step, pc_cpu_adamw_step.
 */
#include <math.h>
#include <tgmath.h> /* sqrt on float stays in float */

#include "kernels_cpu.h"

#define PC_OPT_ID(v) (v)

/* ---- checks ---- */

static PcStatus pc_opt_check(const char *op, int i, const char *arg, const PcTensor *t,
                             const PcTensor *p) {
    if (!t)
        return pc_set_error(PC_ERR_INVALID, "%s: %s[%d] is NULL", op, arg, i);
    if (!pc_dtype_is_float(t->dtype)) return pc_cpu_dtype_error(op, t->dtype);
    if (t->dtype != p->dtype)
        return pc_set_error(PC_ERR_TYPE, "%s: %s[%d] has dtype %s but param[%d] has %s", op,
                            arg, i, pc_dtype_name(t->dtype), i, pc_dtype_name(p->dtype));
    if (pc_tensor_numel(t) != pc_tensor_numel(p))
        return pc_set_error(PC_ERR_INVALID, "%s: %s[%d] has %lld elements but param[%d] has "
                                            "%lld",
                            op, arg, i, (long long)pc_tensor_numel(t), i,
                            (long long)pc_tensor_numel(p));
    if (!pc_tensor_is_contiguous(t))
        return pc_set_error(PC_ERR_INVALID, "%s: %s[%d] must be contiguous", op, arg, i);
    return PC_OK;
}

/* ---- SGD ---- */

#define PC_SGD_FN(NAME, T, C, LD, ST)                                                 \
    static void NAME(int64_t n, T *p, const T *grad, T *buf, const PcSgdArgs *a) {    \
        const C lr = (C)a->lr, wd = (C)a->weight_decay, mom = (C)a->momentum;         \
        const C damp1 = (C)(1.0 - a->dampening);                                      \
        const bool has_wd = a->weight_decay != 0, has_mom = a->momentum != 0;         \
        for (int64_t i = 0; i < n; i++) {                                             \
            const C pv = LD(p[i]);                                                    \
            C g = LD(grad[i]);                                                        \
            if (a->maximize) g = -g;                                                  \
            if (has_wd) g += wd * pv;                                                 \
            if (has_mom) {                                                            \
                C b = a->first_step ? g : mom * LD(buf[i]) + damp1 * g;               \
                buf[i] = ST(b);                                                       \
                b = LD(buf[i]); /* use the stored (rounded) buffer, as torch does */  \
                g = a->nesterov ? g + mom * b : b;                                    \
            }                                                                         \
            p[i] = ST(pv - lr * g);                                                   \
        }                                                                             \
    }

PC_SGD_FN(pc_sgd_f32, float, float, PC_OPT_ID, PC_OPT_ID)
PC_SGD_FN(pc_sgd_f64, double, double, PC_OPT_ID, PC_OPT_ID)
PC_SGD_FN(pc_sgd_f16, uint16_t, float, pc_f16_to_f32, pc_f32_to_f16)
PC_SGD_FN(pc_sgd_bf16, uint16_t, float, pc_bf16_to_f32, pc_f32_to_bf16)

PcStatus pc_cpu_sgd_step(int n, PcTensor *const *params, PcTensor *const *grads,
                         PcTensor *const *momentum_bufs, const PcSgdArgs *args) {
    const char *op = "sgd_step";
    const bool has_mom = args->momentum != 0;
    if (has_mom && !momentum_bufs)
        return pc_set_error(PC_ERR_INVALID, "%s: momentum %g needs momentum buffers", op,
                            args->momentum);
    for (int i = 0; i < n; i++) {
        PC_TRY(pc_opt_check(op, i, "param", params[i], params[i]));
        PC_TRY(pc_opt_check(op, i, "grad", grads[i], params[i]));
        if (has_mom) PC_TRY(pc_opt_check(op, i, "momentum_buf", momentum_bufs[i], params[i]));
    }
    for (int i = 0; i < n; i++) {
        const int64_t cnt = pc_tensor_numel(params[i]);
        void *p = pc_tensor_data(params[i]);
        const void *g = pc_tensor_data(grads[i]);
        void *b = has_mom ? pc_tensor_data(momentum_bufs[i]) : NULL;
        switch (params[i]->dtype) {
        case PC_FLOAT32: pc_sgd_f32(cnt, p, g, b, args); break;
        case PC_FLOAT64: pc_sgd_f64(cnt, p, g, b, args); break;
        case PC_FLOAT16: pc_sgd_f16(cnt, p, g, b, args); break;
        default: pc_sgd_bf16(cnt, p, g, b, args); break;
        }
    }
    return PC_OK;
}

/* ---- AdamW ---- */

typedef struct PcAdamConst {
    double decay;     /* 1 - lr * wd */
    double step_size; /* lr / (1 - b1^t) */
    double bc2_sqrt;  /* sqrt(1 - b2^t) */
    double b1, b2, eps;
    bool maximize;
} PcAdamConst;

#define PC_ADAMW_FN(NAME, T, C, LD, ST)                                               \
    static void NAME(int64_t n, T *p, const T *grad, T *m, T *v, const PcAdamConst *k) { \
        const C decay = (C)k->decay, step_size = (C)k->step_size;                     \
        const C bc2_sqrt = (C)k->bc2_sqrt, eps = (C)k->eps;                           \
        const C b1 = (C)k->b1, b2 = (C)k->b2;                                         \
        const C omb1 = (C)(1.0 - k->b1), omb2 = (C)(1.0 - k->b2);                     \
        for (int64_t i = 0; i < n; i++) {                                             \
            C g = LD(grad[i]);                                                        \
            if (k->maximize) g = -g;                                                  \
            const C pv = LD(p[i]) * decay;                                            \
            const C mv = b1 * LD(m[i]) + omb1 * g;                                    \
            const C vv = b2 * LD(v[i]) + omb2 * g * g;                                \
            m[i] = ST(mv);                                                            \
            v[i] = ST(vv);                                                            \
            const C denom = sqrt(vv) / bc2_sqrt + eps;                                \
            p[i] = ST(pv - step_size * (mv / denom));                                 \
        }                                                                             \
    }

PC_ADAMW_FN(pc_adamw_f32, float, float, PC_OPT_ID, PC_OPT_ID)
PC_ADAMW_FN(pc_adamw_f64, double, double, PC_OPT_ID, PC_OPT_ID)
PC_ADAMW_FN(pc_adamw_f16, uint16_t, float, pc_f16_to_f32, pc_f32_to_f16)
PC_ADAMW_FN(pc_adamw_bf16, uint16_t, float, pc_bf16_to_f32, pc_f32_to_bf16)

PcStatus pc_cpu_adamw_step(int n, PcTensor *const *params, PcTensor *const *grads,
                           PcTensor *const *exp_avgs, PcTensor *const *exp_avg_sqs,
                           const PcAdamWArgs *args) {
    const char *op = "adamw_step";
    if (args->step < 1)
        return pc_set_error(PC_ERR_INVALID, "%s: step must be >= 1, got %lld", op,
                            (long long)args->step);
    for (int i = 0; i < n; i++) {
        PC_TRY(pc_opt_check(op, i, "param", params[i], params[i]));
        PC_TRY(pc_opt_check(op, i, "grad", grads[i], params[i]));
        PC_TRY(pc_opt_check(op, i, "exp_avg", exp_avgs[i], params[i]));
        PC_TRY(pc_opt_check(op, i, "exp_avg_sq", exp_avg_sqs[i], params[i]));
    }
    const double t = (double)args->step;
    PcAdamConst k = {
        .decay = 1.0 - args->lr * args->weight_decay,
        .step_size = args->lr / (1.0 - pow(args->beta1, t)),
        .bc2_sqrt = sqrt(1.0 - pow(args->beta2, t)),
        .b1 = args->beta1,
        .b2 = args->beta2,
        .eps = args->eps,
        .maximize = args->maximize,
    };
    for (int i = 0; i < n; i++) {
        const int64_t cnt = pc_tensor_numel(params[i]);
        void *p = pc_tensor_data(params[i]);
        const void *g = pc_tensor_data(grads[i]);
        void *m = pc_tensor_data(exp_avgs[i]);
        void *v = pc_tensor_data(exp_avg_sqs[i]);
        switch (params[i]->dtype) {
        case PC_FLOAT32: pc_adamw_f32(cnt, p, g, m, v, &k); break;
        case PC_FLOAT64: pc_adamw_f64(cnt, p, g, m, v, &k); break;
        case PC_FLOAT16: pc_adamw_f16(cnt, p, g, m, v, &k); break;
        default: pc_adamw_bf16(cnt, p, g, m, v, &k); break;
        }
    }
    return PC_OK;
}
