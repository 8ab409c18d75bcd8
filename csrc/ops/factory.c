/* factory.c — tensor factories and in-place fills: empty, full, arange, rand, randn, fill_,
 * zero_, uniform_, normal_.
 *
 * Random numbers come from the backend's counter-based `random` kernel; every call reserves
 * numel numbers from the process-wide generator (random_state.c), so results depend only on
 * the seed and the order of calls, not on the device.
 *
 * Invariants: factories return fresh contiguous tensors with no history. In-place fills bump
 * the storage version; on a non-leaf that requires grad (grad mode on) they rebase its history
 * onto a node whose gradient for the old value is zero (torch's FillBackward0 and friends).
 * Exports: pc_op_empty, pc_op_full, pc_op_arange, pc_op_rand, pc_op_randn, pc_op_fill_,
 * pc_op_zero_, pc_op_uniform_, pc_op_normal_ (ops.h).
 */
#include "internal.h"

#include <math.h>
#include <stdlib.h>

/* ---- helpers ---- */

static PcStatus pc_check_shape(const char *op, int ndim, const int64_t *shape) {
    char buf[160];
    if (ndim < 0 || ndim > PC_MAX_DIMS)
        return pc_set_error(PC_ERR_INVALID, "%s: tensors have at most %d dimensions, got %d",
                            op, PC_MAX_DIMS, ndim);
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0)
            return pc_set_error(PC_ERR_INVALID,
                                "%s: trying to create a tensor with negative dimension %lld: "
                                "size %s", op, (long long)shape[i],
                                pc_shape_str(ndim, shape, buf, sizeof buf));
    return PC_OK;
}

/* A node standing for "self was overwritten": its gradient for the old value is zero. */
typedef struct PcOverwriteNode {
    PcNode base;
} PcOverwriteNode;

static PcStatus pc_overwrite_apply(PcNode *self, PcTensor *const *grad_outputs,
                                   const bool *needs, PcTensor **grad_inputs) {
    (void)self;
    (void)grad_outputs;
    if (needs[0]) grad_inputs[0] = NULL; /* zero */
    return PC_OK;
}

static const PcNodeVTable pc_fill_vt = {"FillBackward0", pc_overwrite_apply, NULL};
static const PcNodeVTable pc_zero_vt = {"ZeroBackward0", pc_overwrite_apply, NULL};
static const PcNodeVTable pc_uniform_vt = {"UniformBackward0", pc_overwrite_apply, NULL};
static const PcNodeVTable pc_normal_vt = {"NormalBackward0", pc_overwrite_apply, NULL};

/* After an in-place overwrite: bump the version and, when self carries history, replace it by
 * a node that sends zero to the old history. */
static PcStatus pc_finish_overwrite(PcTensor *self, const PcNodeVTable *vt) {
    pc_tensor_bump_version(self);
    if (!pc_grad_enabled() || !self->requires_grad || self->grad_fn == NULL) return PC_OK;
    PcNode *node;
    PC_TRY(pc_node_create(sizeof(PcOverwriteNode), vt, 1, 1, &self, &node));
    PcNode *old = self->grad_fn;
    self->grad_fn = NULL;
    pc_autograd_set_history(self, node, 0);
    pc_node_decref(old);
    pc_node_decref(node);
    return PC_OK;
}

/* ---- factories ---- */

PcStatus pc_op_empty(int ndim, const int64_t *shape, PcDType dtype, PcDevice dev,
                     PcTensor **out) {
    *out = NULL;
    PC_TRY(pc_check_shape("empty", ndim, shape));
    return pc_tensor_empty(ndim, shape, dtype, dev, out);
}

PcStatus pc_op_full(int ndim, const int64_t *shape, double value, PcDType dtype, PcDevice dev,
                    PcTensor **out) {
    *out = NULL;
    PC_TRY(pc_check_shape("full", ndim, shape));
    const PcBackend *be = pc_backend_for(dev);
    if (!be) return PC_ERR_DEVICE;
    PcTensor *t;
    PC_TRY(pc_tensor_empty(ndim, shape, dtype, dev, &t));
    if (pc_tensor_numel(t) > 0) {
        PcStatus st = be->fill(t, value);
        if (st != PC_OK) {
            pc_tensor_decref(t);
            return st;
        }
    }
    *out = t;
    return PC_OK;
}

PcStatus pc_op_arange(double start, double end, double step, PcDType dtype, PcDevice dev,
                      PcTensor **out) {
    *out = NULL;
    if (dtype == PC_BOOL || pc_dtype_size(dtype) == 0)
        return pc_set_error(PC_ERR_TYPE, "arange: dtype %s is not supported (int64 or a "
                                         "floating dtype expected)", pc_dtype_name(dtype));
    if (!isfinite(start) || !isfinite(end))
        return pc_set_error(PC_ERR_INVALID, "arange: unsupported range: %g -> %g", start, end);
    if (step == 0 || !isfinite(step))
        return pc_set_error(PC_ERR_INVALID, "arange: step must be nonzero and finite, got %g",
                            step);
    if ((step > 0 && end < start) || (step < 0 && end > start))
        return pc_set_error(PC_ERR_INVALID, "arange: upper bound and larger bound inconsistent "
                                            "with step sign (start=%g, end=%g, step=%g)",
                            start, end, step);
    double len = ceil((end - start) / step);
    if (len > 9.0e15)
        return pc_set_error(PC_ERR_INVALID, "arange: too many elements (%g)", len);
    int64_t n = (int64_t)len;
    if (n < 0) n = 0;
    const PcBackend *be = pc_backend_for(dev);
    if (!be) return PC_ERR_DEVICE;
    PcTensor *t;
    PC_TRY(pc_tensor_empty(1, &n, dtype, dev, &t));
    if (n == 0) {
        *out = t;
        return PC_OK;
    }
    size_t item = pc_dtype_size(dtype);
    void *host = malloc((size_t)n * item);
    if (!host) {
        pc_tensor_decref(t);
        return pc_set_error(PC_ERR_OOM, "arange: out of host memory (%lld elements)",
                            (long long)n);
    }
    for (int64_t i = 0; i < n; i++) {
        double v = start + (double)i * step;
        switch (dtype) {
        case PC_FLOAT32: ((float *)host)[i] = (float)v; break;
        case PC_FLOAT64: ((double *)host)[i] = v; break;
        case PC_FLOAT16: ((uint16_t *)host)[i] = pc_f32_to_f16((float)v); break;
        case PC_BFLOAT16: ((uint16_t *)host)[i] = pc_f32_to_bf16((float)v); break;
        default: ((int64_t *)host)[i] = (int64_t)v; break;
        }
    }
    PcStatus st = be->copy_h2d(dev, pc_tensor_data(t), host, (size_t)n * item);
    free(host);
    if (st != PC_OK) {
        pc_tensor_decref(t);
        return st;
    }
    *out = t;
    return PC_OK;
}

/* Fill a tensor of any layout with random numbers: directly when contiguous, else through a
 * contiguous temporary. */
static PcStatus pc_random_into(PcTensor *dst, PcRandomDist dist, double a, double b) {
    int64_t n = pc_tensor_numel(dst);
    if (n == 0) return PC_OK;
    const PcBackend *be = pc_be(dst);
    if (!be) return PC_ERR_DEVICE;
    uint64_t seed, offset;
    if (pc_tensor_is_contiguous(dst)) {
        pc_rng_reserve((uint64_t)n, &seed, &offset);
        return be->random(dst, dist, a, b, seed, offset);
    }
    PcTensor *tmp;
    PC_TRY(pc_empty_like(dst, &tmp));
    pc_rng_reserve((uint64_t)n, &seed, &offset);
    PcStatus st = be->random(tmp, dist, a, b, seed, offset);
    if (st == PC_OK) st = be->copy(dst, tmp);
    pc_tensor_decref(tmp);
    return st;
}

static PcStatus pc_random_new(const char *op, int ndim, const int64_t *shape, PcDType dtype,
                              PcDevice dev, PcRandomDist dist, PcTensor **out) {
    *out = NULL;
    PC_TRY(pc_check_shape(op, ndim, shape));
    if (!pc_dtype_is_float(dtype))
        return pc_set_error(PC_ERR_TYPE, "%s: expected a floating point dtype, got %s", op,
                            pc_dtype_name(dtype));
    PcTensor *t;
    PC_TRY(pc_tensor_empty(ndim, shape, dtype, dev, &t));
    PcStatus st = pc_random_into(t, dist, 0.0, 1.0);
    if (st != PC_OK) {
        pc_tensor_decref(t);
        return st;
    }
    *out = t;
    return PC_OK;
}

PcStatus pc_op_rand(int ndim, const int64_t *shape, PcDType dtype, PcDevice dev,
                    PcTensor **out) {
    return pc_random_new("rand", ndim, shape, dtype, dev, PC_RAND_UNIFORM, out);
}

PcStatus pc_op_randn(int ndim, const int64_t *shape, PcDType dtype, PcDevice dev,
                     PcTensor **out) {
    return pc_random_new("randn", ndim, shape, dtype, dev, PC_RAND_NORMAL, out);
}

/* ---- in-place fills ---- */

static PcStatus pc_fill_impl(const char *op, const PcNodeVTable *vt, PcTensor *self,
                             double value) {
    PC_TRY(pc_check_inplace(op, self));
    const PcBackend *be = pc_be(self);
    if (!be) return PC_ERR_DEVICE;
    if (pc_tensor_numel(self) > 0) PC_TRY(be->fill(self, value));
    return pc_finish_overwrite(self, vt);
}

PcStatus pc_op_fill_(PcTensor *self, double value) {
    return pc_fill_impl("fill_", &pc_fill_vt, self, value);
}

PcStatus pc_op_zero_(PcTensor *self) { return pc_fill_impl("zero_", &pc_zero_vt, self, 0.0); }

PcStatus pc_op_uniform_(PcTensor *self, double a, double b) {
    PC_TRY(pc_check_inplace("uniform_", self));
    PC_TRY(pc_check_float("uniform_", "self", self));
    if (!(a <= b))
        return pc_set_error(PC_ERR_INVALID, "uniform_: expects to return a [from, to) range, "
                                            "but found from=%g > to=%g", a, b);
    PC_TRY(pc_random_into(self, PC_RAND_UNIFORM, a, b));
    return pc_finish_overwrite(self, &pc_uniform_vt);
}

PcStatus pc_op_normal_(PcTensor *self, double mean, double std) {
    PC_TRY(pc_check_inplace("normal_", self));
    PC_TRY(pc_check_float("normal_", "self", self));
    if (!(std >= 0.0))
        return pc_set_error(PC_ERR_INVALID, "normal_: expects std >= 0.0, but found std %g",
                            std);
    PC_TRY(pc_random_into(self, PC_RAND_NORMAL, mean, std));
    return pc_finish_overwrite(self, &pc_normal_vt);
}
