/* optim.cu — SGD and AdamW steps as fused multi-tensor kernels.
 *
 * One launch updates many tensors: the tensors' pointers and sizes travel by value in a
 * PcMtBatch (< 4 KB of kernel parameters), and every block handles one chunk of
 * PC_MT_CHUNK elements of one tensor (block -> (tensor, chunk) tables in the same struct).
 * Tensors are grouped by dtype; a group larger than one batch takes several launches.
 *
 * Math follows torch's single-tensor implementations, computed in float32 for float32 and the
 * half types (double for float64), with the scalar factors (bias corrections, step size)
 * computed once on the host in double:
 *   SGD:   g = ±grad (+ wd * p); buf = g on the first step, else momentum * buf +
 *          (1 - dampening) * g; g = g + momentum * buf (nesterov) or buf; p -= lr * g.
 *   AdamW: g = ±grad; p *= 1 - lr * wd; m = lerp(m, g, 1 - beta1);
 *          v = beta2 * v + (1 - beta2) * g * g; p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps).
 *
 * Exports: pc_cuda_sgd_step, pc_cuda_adamw_step.
 */
#include "cuda_internal.h"

#include <cmath>

/* ---- multi-tensor batches ---- */

#define PC_MT_MAX_TENSORS 36
#define PC_MT_MAX_BLOCKS 320
#define PC_MT_CHUNK 65536

template <int NPTR> struct PcMtBatch {
    void *ptr[NPTR][PC_MT_MAX_TENSORS];
    int64_t numel[PC_MT_MAX_TENSORS];
    unsigned char tensor[PC_MT_MAX_BLOCKS];
    int chunk[PC_MT_MAX_BLOCKS];
};
static_assert(sizeof(PcMtBatch<4>) + 128 < 4096, "kernel parameters must stay under 4 KB");

/* Scalars of one step, already in the compute type. */
template <typename A> struct PcSgdScalars {
    A lr, momentum, dampening, weight_decay;
    bool nesterov, maximize, first_step, has_momentum;
};

template <typename A> struct PcAdamWScalars {
    A lr, beta1, beta2, eps, decay;  /* decay = 1 - lr * weight_decay */
    A step_size, bc2_sqrt;           /* lr / (1 - beta1^t), sqrt(1 - beta2^t) */
    bool maximize;
};

/* ---- kernels ---- */

__device__ __forceinline__ float pc_opt_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double pc_opt_sqrt(double x) { return sqrt(x); }

template <typename T>
__global__ void pc_sgd_kernel(PcMtBatch<3> b, PcSgdScalars<pc_acc_t<T>> s) {
    using A = pc_acc_t<T>;
    int t = b.tensor[blockIdx.x];
    int64_t begin = (int64_t)b.chunk[blockIdx.x] * PC_MT_CHUNK;
    int64_t end = begin + PC_MT_CHUNK < b.numel[t] ? begin + PC_MT_CHUNK : b.numel[t];
    T *p = static_cast<T *>(b.ptr[0][t]);
    const T *gp = static_cast<const T *>(b.ptr[1][t]);
    T *buf = static_cast<T *>(b.ptr[2][t]);
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
        A w = pc_cvt<A>(p[i]);
        A g = pc_cvt<A>(gp[i]);
        if (s.maximize) g = -g;
        if (s.weight_decay != A(0)) g += s.weight_decay * w;
        if (s.has_momentum) {
            A m = s.first_step ? g : s.momentum * pc_cvt<A>(buf[i]) + (A(1) - s.dampening) * g;
            buf[i] = pc_cvt<T>(m);
            g = s.nesterov ? g + s.momentum * m : m;
        }
        p[i] = pc_cvt<T>(w - s.lr * g);
    }
}

template <typename T>
__global__ void pc_adamw_kernel(PcMtBatch<4> b, PcAdamWScalars<pc_acc_t<T>> s) {
    using A = pc_acc_t<T>;
    int t = b.tensor[blockIdx.x];
    int64_t begin = (int64_t)b.chunk[blockIdx.x] * PC_MT_CHUNK;
    int64_t end = begin + PC_MT_CHUNK < b.numel[t] ? begin + PC_MT_CHUNK : b.numel[t];
    T *p = static_cast<T *>(b.ptr[0][t]);
    const T *gp = static_cast<const T *>(b.ptr[1][t]);
    T *mp = static_cast<T *>(b.ptr[2][t]);
    T *vp = static_cast<T *>(b.ptr[3][t]);
    A wgt = A(1) - s.beta1; /* lerp weight */
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
        A g = pc_cvt<A>(gp[i]);
        if (s.maximize) g = -g;
        A w = pc_cvt<A>(p[i]) * s.decay;
        A m = pc_cvt<A>(mp[i]);
        m = wgt < A(0.5) ? m + wgt * (g - m) : g - (g - m) * (A(1) - wgt);
        A v = pc_cvt<A>(vp[i]) * s.beta2 + (A(1) - s.beta2) * g * g;
        A denom = pc_opt_sqrt(v) / s.bc2_sqrt + s.eps;
        w = w - s.step_size * (m / denom);
        mp[i] = pc_cvt<T>(m);
        vp[i] = pc_cvt<T>(v);
        p[i] = pc_cvt<T>(w);
    }
}

/* ---- launchers ---- */

/* A parameter: present, contiguous, on the first parameter's device (sizes may differ). */
static PcStatus pc_mt_check_param(const char *op, int i, const PcTensor *t,
                                  const PcTensor *first) {
    char name[64];
    snprintf(name, sizeof name, "params[%d]", i);
    if (!t) return pc_set_error(PC_ERR_INVALID, "%s: %s is missing", op, name);
    PC_TRY(pc_cuda_check_device(op, name, t, first->device.index));
    return pc_cuda_check_contiguous(op, name, t);
}

/* Validate one tensor list entry: contiguous, on dev, of dtype, numel of the param. */
static PcStatus pc_mt_check(const char *op, const char *arg, int i, const PcTensor *t,
                            const PcTensor *param) {
    char name[64];
    snprintf(name, sizeof name, "%s[%d]", arg, i);
    if (!t) return pc_set_error(PC_ERR_INVALID, "%s: %s is missing", op, name);
    PC_TRY(pc_cuda_check_device(op, name, t, param->device.index));
    PC_TRY(pc_cuda_check_contiguous(op, name, t));
    if (t->dtype != param->dtype || pc_tensor_numel(t) != pc_tensor_numel(param))
        return pc_set_error(PC_ERR_INVALID, "%s: %s must match params[%d] (%lld elements of %s), "
                                            "got %lld elements of %s", op, name, i,
                            (long long)pc_tensor_numel(param), pc_dtype_name(param->dtype),
                            (long long)pc_tensor_numel(t), pc_dtype_name(t->dtype));
    return PC_OK;
}

/* Run `launch(batch, nblocks)` over the tensors of `lists` (NPTR lists of n tensors) whose
 * params have dtype dt, packing as many as fit per launch. */
template <int NPTR, typename F>
static PcStatus pc_mt_for_dtype(int n, PcTensor *const *const *lists, PcDType dt, F &&launch) {
    PcMtBatch<NPTR> b;
    int nt = 0, nb = 0;
    for (int i = 0; i < n; i++) {
        const PcTensor *p = lists[0][i];
        if (p->dtype != dt) continue;
        int64_t numel = pc_tensor_numel(p);
        if (numel == 0) continue;
        for (int k = 0; k < NPTR; k++) b.ptr[k][nt] = pc_tensor_data(lists[k][i]);
        b.numel[nt] = numel;
        int64_t chunks = (numel + PC_MT_CHUNK - 1) / PC_MT_CHUNK;
        for (int64_t c = 0; c < chunks; c++) {
            b.tensor[nb] = (unsigned char)nt;
            b.chunk[nb] = (int)c;
            nb++;
            bool last_chunk = c == chunks - 1;
            if (nb == PC_MT_MAX_BLOCKS || (last_chunk && nt + 1 == PC_MT_MAX_TENSORS)) {
                PC_TRY(launch(b, nb));
                /* the current tensor continues in the next batch as entry 0 */
                nb = 0;
                if (last_chunk) {
                    nt = -1;
                } else {
                    for (int k = 0; k < NPTR; k++) b.ptr[k][0] = b.ptr[k][nt];
                    b.numel[0] = b.numel[nt];
                    nt = 0;
                }
            }
        }
        nt++;
    }
    if (nb > 0) PC_TRY(launch(b, nb));
    return PC_OK;
}

PcStatus pc_cuda_sgd_step(int n, PcTensor *const *params, PcTensor *const *grads,
                          PcTensor *const *momentum_bufs, const PcSgdArgs *args) {
    const char *op = "sgd_step";
    if (n <= 0) return PC_OK;
    bool has_m = args->momentum != 0.0;
    if (has_m && !momentum_bufs)
        return pc_set_error(PC_ERR_INVALID, "%s: momentum %g needs momentum buffers", op,
                            args->momentum);
    for (int i = 0; i < n; i++) {
        PC_TRY(pc_mt_check_param(op, i, params[i], params[0]));
        if (!pc_dtype_is_float(params[i]->dtype))
            return pc_set_error(PC_ERR_TYPE, "%s: params[%d] is %s (floating dtypes only)", op, i,
                                pc_dtype_name(params[i]->dtype));
        PC_TRY(pc_mt_check(op, "grads", i, grads[i], params[i]));
        if (has_m) PC_TRY(pc_mt_check(op, "momentum_bufs", i, momentum_bufs[i], params[i]));
    }
    PcCudaExec ex;
    PC_TRY(ex.begin(params[0]->device));
    PcTensor *const *lists[3] = {params, grads, has_m ? momentum_bufs : params};
    for (PcDType dt : {PC_FLOAT32, PC_FLOAT64, PC_FLOAT16, PC_BFLOAT16}) {
        PcStatus st = PC_OK;
        pc_cuda_dispatch_float(dt, [&](auto tag) {
            using T = decltype(tag);
            using A = pc_acc_t<T>;
            PcSgdScalars<A> s;
            s.lr = (A)args->lr;
            s.momentum = (A)args->momentum;
            s.dampening = (A)args->dampening;
            s.weight_decay = (A)args->weight_decay;
            s.nesterov = args->nesterov;
            s.maximize = args->maximize;
            s.first_step = args->first_step;
            s.has_momentum = has_m;
            st = pc_mt_for_dtype<3>(n, lists, dt, [&](const PcMtBatch<3> &b, int nb) -> PcStatus {
                pc_sgd_kernel<T><<<nb, PC_CUDA_THREADS, 0, ex.stream>>>(b, s);
                PC_CUDA_CHECK_LAUNCH("pc_sgd_kernel");
                return PC_OK;
            });
        });
        PC_TRY(st);
    }
    return PC_OK;
}

PcStatus pc_cuda_adamw_step(int n, PcTensor *const *params, PcTensor *const *grads,
                            PcTensor *const *exp_avgs, PcTensor *const *exp_avg_sqs,
                            const PcAdamWArgs *args) {
    const char *op = "adamw_step";
    if (n <= 0) return PC_OK;
    if (args->step < 1)
        return pc_set_error(PC_ERR_INVALID, "%s: step must be >= 1, got %lld", op,
                            (long long)args->step);
    for (int i = 0; i < n; i++) {
        PC_TRY(pc_mt_check_param(op, i, params[i], params[0]));
        if (!pc_dtype_is_float(params[i]->dtype))
            return pc_set_error(PC_ERR_TYPE, "%s: params[%d] is %s (floating dtypes only)", op, i,
                                pc_dtype_name(params[i]->dtype));
        PC_TRY(pc_mt_check(op, "grads", i, grads[i], params[i]));
        PC_TRY(pc_mt_check(op, "exp_avgs", i, exp_avgs[i], params[i]));
        PC_TRY(pc_mt_check(op, "exp_avg_sqs", i, exp_avg_sqs[i], params[i]));
    }
    PcCudaExec ex;
    PC_TRY(ex.begin(params[0]->device));
    double bc1 = 1.0 - pow(args->beta1, (double)args->step);
    double bc2 = 1.0 - pow(args->beta2, (double)args->step);
    PcTensor *const *lists[4] = {params, grads, exp_avgs, exp_avg_sqs};
    for (PcDType dt : {PC_FLOAT32, PC_FLOAT64, PC_FLOAT16, PC_BFLOAT16}) {
        PcStatus st = PC_OK;
        pc_cuda_dispatch_float(dt, [&](auto tag) {
            using T = decltype(tag);
            using A = pc_acc_t<T>;
            PcAdamWScalars<A> s;
            s.lr = (A)args->lr;
            s.beta1 = (A)args->beta1;
            s.beta2 = (A)args->beta2;
            s.eps = (A)args->eps;
            s.decay = (A)(1.0 - args->lr * args->weight_decay);
            s.step_size = (A)(args->lr / bc1);
            s.bc2_sqrt = (A)sqrt(bc2);
            s.maximize = args->maximize;
            st = pc_mt_for_dtype<4>(n, lists, dt, [&](const PcMtBatch<4> &b, int nb) -> PcStatus {
                pc_adamw_kernel<T><<<nb, PC_CUDA_THREADS, 0, ex.stream>>>(b, s);
                PC_CUDA_CHECK_LAUNCH("pc_adamw_kernel");
                return PC_OK;
            });
        });
        PC_TRY(st);
    }
    return PC_OK;
}
