/* reduce.c — reductions: sum and mean over a list of dims, max over everything, max along
 * one dim (values and indices), with autograd.
 *
 * Forward: the backend `reduce` / `max_dim` kernels write a contiguous result with the input's
 * ndim (size 1 on reduced dims); without keepdim the result is a view of it with those dims
 * dropped. Dtypes: sum keeps floating dtypes and int64, and sums bool as int64; mean needs a
 * floating dtype; max works on floating dtypes directly and on int64/bool through float64
 * (exact below 2^53), converting back.
 *
 * Backward: SumBackward0/1 and MeanBackward0/1 view the gradient with stride 0 along the
 * reduced dims (re-inserting them when !keepdim) and materialise it with the backend `copy`
 * (sum) or `unary` x*(1/n) (mean). MaxBackward1 (max over everything) sends the gradient to
 * the first maximal element; MaxBackward0 (max along dim) scatters it into zeros at the saved
 * indices with the backend `scatter_add_dim`.
 *
 * Exports: pc_op_sum, pc_op_mean, pc_op_max_all, pc_op_max_dim (ops.h).
 */
#include "internal.h"

#include <string.h>

/* ---- helpers ---- */

/* A view of g (the gradient of a reduction over `mask` of a tensor of shape (nd, full)) with
 * nd dims: reduced dims get stride 0 and size `full[i]` when expand, else 1. g's dims are the
 * unreduced ones (all of them when keepdim). */
static PcStatus pc_unreduce_view(PcTensor *g, int nd, const int64_t *full, const bool *mask,
                                 bool keepdim, bool expand, PcTensor **out) {
    *out = NULL;
    int64_t shape[PC_MAX_DIMS], strides[PC_MAX_DIMS];
    int kept = 0;
    for (int i = 0; i < nd; i++) kept += !mask[i];
    int want = keepdim ? nd : kept;
    if (g->ndim != want) {
        char bg[128];
        return pc_set_error(PC_ERR_RUNTIME, "reduction backward: gradient of shape %s does not "
                                            "match the reduction's output (%d dims expected)",
                            pc_shape_str(g->ndim, g->shape, bg, sizeof bg), want);
    }
    for (int i = 0, j = 0; i < nd; i++) {
        if (mask[i]) {
            shape[i] = expand ? full[i] : 1;
            strides[i] = 0;
            if (keepdim) j++;
        } else {
            shape[i] = full[i];
            strides[i] = g->strides[j++];
        }
    }
    return pc_tensor_view_of(g->storage, g->offset, nd, shape, strides, g->dtype, out);
}

/* Parse a dims list into a mask over ndim dims (all when ndims == 0 or dims == NULL). */
static PcStatus pc_dims_mask(const char *op, int ndim, int ndims, const int *dims, bool *mask) {
    for (int i = 0; i < PC_MAX_DIMS; i++) mask[i] = false;
    if (ndims <= 0 || !dims) {
        for (int i = 0; i < ndim; i++) mask[i] = true;
        return PC_OK;
    }
    bool seen[PC_MAX_DIMS + 1] = {false};
    for (int k = 0; k < ndims; k++) {
        int d;
        PC_TRY(pc_wrap_dim(op, dims[k], ndim, &d));
        if (seen[d])
            return pc_set_error(PC_ERR_INVALID, "%s: dim %d appears multiple times in the list "
                                                "of dims", op, d);
        seen[d] = true;
        if (ndim > 0) mask[d] = true;
    }
    return PC_OK;
}

/* ---- sum / mean ---- */

typedef struct PcReduceNode {
    PcNode base;
    bool mean;
    bool keepdim;
    bool mask[PC_MAX_DIMS];
    double scale;            /* 1 / (number of reduced elements) for mean */
    PcTensorMeta in;
} PcReduceNode;

static PcStatus pc_reduce_node_apply(PcNode *self, PcTensor *const *grad_outputs,
                                     const bool *needs, PcTensor **grad_inputs) {
    PcReduceNode *n = (PcReduceNode *)self;
    PcTensor *g = grad_outputs[0];
    if (!needs[0] || !g) return PC_OK;
    const PcBackend *be = pc_be(g);
    if (!be) return PC_ERR_DEVICE;
    PcTensor *v = NULL, *r = NULL;
    PcStatus st;
    PC_TRY(pc_unreduce_view(g, n->in.ndim, n->in.shape, n->mask, n->keepdim, true, &v));
    PC_TRY_GOTO(st, pc_tensor_empty(n->in.ndim, n->in.shape, n->in.dtype, g->device, &r));
    if (pc_tensor_numel(r) > 0) {
        if (n->mean) {
            PcTensor *vc = NULL;
            PC_TRY_GOTO(st, pc_cast(v, n->in.dtype, &vc));
            st = be->unary(PC_U_MUL_S, r, vc, n->scale);
            pc_tensor_decref(vc);
            if (st != PC_OK) goto fail;
        } else {
            PC_TRY_GOTO(st, be->copy(r, v));
        }
    }
    pc_tensor_decref(v);
    grad_inputs[0] = r;
    return PC_OK;
fail:
    pc_tensor_decref(v);
    pc_tensor_decref(r);
    return st;
}

static const PcNodeVTable pc_sum_all_vt = {"SumBackward0", pc_reduce_node_apply, NULL};
static const PcNodeVTable pc_sum_dims_vt = {"SumBackward1", pc_reduce_node_apply, NULL};
static const PcNodeVTable pc_mean_all_vt = {"MeanBackward0", pc_reduce_node_apply, NULL};
static const PcNodeVTable pc_mean_dims_vt = {"MeanBackward1", pc_reduce_node_apply, NULL};

static PcStatus pc_sum_mean(const char *op, bool mean, PcTensor *self, int ndims,
                            const int *dims, bool keepdim, PcTensor **out) {
    *out = NULL;
    bool mask[PC_MAX_DIMS];
    PC_TRY(pc_dims_mask(op, self->ndim, ndims, dims, mask));
    PcDType dt = self->dtype;
    if (mean && !pc_dtype_is_float(dt))
        return pc_set_error(PC_ERR_TYPE, "%s: could not infer output dtype: input dtype must be "
                                         "a floating point dtype, got %s", op,
                            pc_dtype_name(dt));
    if (dt == PC_BOOL) dt = PC_INT64;
    const PcBackend *be = pc_be(self);
    if (!be) return PC_ERR_DEVICE;

    int64_t kshape[PC_MAX_DIMS], oshape[PC_MAX_DIMS];
    int ond = 0;
    int64_t count = 1;
    for (int i = 0; i < self->ndim; i++) {
        kshape[i] = mask[i] ? 1 : self->shape[i];
        if (mask[i]) count *= self->shape[i];
        if (!mask[i] || keepdim) oshape[ond++] = kshape[i];
    }
    PcTensor *src = NULL, *r = NULL, *res = NULL;
    PcStatus st;
    PC_TRY(pc_cast(self, dt, &src));
    PC_TRY_GOTO(st, pc_tensor_empty(self->ndim, kshape, dt, self->device, &r));
    PC_TRY_GOTO(st, be->reduce(mean ? PC_R_MEAN : PC_R_SUM, r, src));
    PC_TRY_GOTO(st, pc_tensor_view_of(r->storage, r->offset, ond, oshape, NULL, dt, &res));

    if (pc_dtype_is_float(dt) && pc_autograd_any_requires_grad(1, &self)) {
        bool all = ndims <= 0 || !dims;
        const PcNodeVTable *vt = mean ? (all ? &pc_mean_all_vt : &pc_mean_dims_vt)
                                      : (all ? &pc_sum_all_vt : &pc_sum_dims_vt);
        PcNode *node;
        PC_TRY_GOTO(st, pc_node_create(sizeof(PcReduceNode), vt, 1, 1, &self, &node));
        PcReduceNode *n = (PcReduceNode *)node;
        n->mean = mean;
        n->keepdim = keepdim;
        memcpy(n->mask, mask, sizeof mask);
        n->scale = 1.0 / (double)count;
        pc_meta_of(self, &n->in);
        pc_autograd_set_history(res, node, 0);
        pc_node_decref(node);
    }
    *out = res;
    res = NULL;
fail:
    pc_tensor_decref(src);
    pc_tensor_decref(r);
    pc_tensor_decref(res);
    return st;
}

PcStatus pc_op_sum(PcTensor *self, int ndims, const int *dims, bool keepdim, PcTensor **out) {
    return pc_sum_mean("sum", false, self, ndims, dims, keepdim, out);
}

PcStatus pc_op_mean(PcTensor *self, int ndims, const int *dims, bool keepdim, PcTensor **out) {
    return pc_sum_mean("mean", true, self, ndims, dims, keepdim, out);
}

/* ---- max ---- */

static PcDType pc_max_compute_dtype(PcDType dt) {
    return pc_dtype_is_float(dt) ? dt : PC_FLOAT64;
}

/* Max over everything: the gradient goes to the first maximal element of the saved input. */
typedef struct PcMaxAllNode {
    PcNode base;
    PcSaved x;
} PcMaxAllNode;

static void pc_max_all_release(PcNode *self) { pc_saved_clear(&((PcMaxAllNode *)self)->x); }

static PcStatus pc_max_all_apply(PcNode *self, PcTensor *const *grad_outputs,
                                 const bool *needs, PcTensor **grad_inputs) {
    PcMaxAllNode *n = (PcMaxAllNode *)self;
    PcTensor *g = grad_outputs[0];
    if (!needs[0] || !g) return PC_OK;
    PcTensor *x = NULL, *xc = NULL, *flat = NULL, *vals = NULL, *idx = NULL, *z = NULL;
    PcTensor *g1 = NULL, *gc = NULL, *res = NULL;
    PcStatus st;
    PC_TRY(pc_saved_get(&n->x, self, &x));
    const PcBackend *be = pc_be(x);
    if (!be) {
        st = PC_ERR_DEVICE;
        goto fail;
    }
    int64_t numel = pc_tensor_numel(x), one = 1;
    PC_TRY_GOTO(st, pc_make_contiguous(x, &xc));
    PC_TRY_GOTO(st, pc_tensor_view_of(xc->storage, xc->offset, 1, &numel, NULL, xc->dtype, &flat));
    PC_TRY_GOTO(st, pc_tensor_empty(1, &one, x->dtype, x->device, &vals));
    PC_TRY_GOTO(st, pc_tensor_empty(1, &one, PC_INT64, x->device, &idx));
    PC_TRY_GOTO(st, be->max_dim(vals, idx, flat, 0));
    PC_TRY_GOTO(st, pc_op_full(1, &numel, 0.0, x->dtype, x->device, &z));
    PC_TRY_GOTO(st, pc_cast(g, x->dtype, &gc));
    PC_TRY_GOTO(st, pc_tensor_view_of(gc->storage, gc->offset, 1, &one, NULL, gc->dtype, &g1));
    PC_TRY_GOTO(st, be->scatter_add_dim(z, idx, g1, 0));
    PC_TRY_GOTO(st, pc_tensor_view_of(z->storage, 0, x->ndim, x->shape, NULL, x->dtype, &res));
    grad_inputs[0] = res;
fail:
    pc_tensor_decref(x);
    pc_tensor_decref(xc);
    pc_tensor_decref(flat);
    pc_tensor_decref(vals);
    pc_tensor_decref(idx);
    pc_tensor_decref(z);
    pc_tensor_decref(g1);
    pc_tensor_decref(gc);
    return st;
}

static const PcNodeVTable pc_max_all_vt = {"MaxBackward1", pc_max_all_apply, pc_max_all_release};

PcStatus pc_op_max_all(PcTensor *self, PcTensor **out) {
    *out = NULL;
    if (pc_tensor_numel(self) == 0)
        return pc_set_error(PC_ERR_INVALID, "max(): expected reduction dim to be specified for "
                                            "input.numel() == 0; specify the reduction dim "
                                            "with the 'dim' argument");
    const PcBackend *be = pc_be(self);
    if (!be) return PC_ERR_DEVICE;
    PcDType cdt = pc_max_compute_dtype(self->dtype);
    int64_t ones[PC_MAX_DIMS];
    for (int i = 0; i < self->ndim; i++) ones[i] = 1;
    PcTensor *src = NULL, *r = NULL, *rc = NULL, *res = NULL;
    PcStatus st;
    PC_TRY(pc_cast(self, cdt, &src));
    PC_TRY_GOTO(st, pc_tensor_empty(self->ndim, ones, cdt, self->device, &r));
    PC_TRY_GOTO(st, be->reduce(PC_R_MAX, r, src));
    PC_TRY_GOTO(st, pc_cast(r, self->dtype, &rc));
    PC_TRY_GOTO(st, pc_tensor_view_of(rc->storage, rc->offset, 0, NULL, NULL, rc->dtype, &res));
    if (pc_dtype_is_float(self->dtype) && pc_autograd_any_requires_grad(1, &self)) {
        PcNode *node;
        PC_TRY_GOTO(st, pc_node_create(sizeof(PcMaxAllNode), &pc_max_all_vt, 1, 1, &self,
                                       &node));
        st = pc_saved_set(&((PcMaxAllNode *)node)->x, self);
        if (st == PC_OK) pc_autograd_set_history(res, node, 0);
        pc_node_decref(node);
        if (st != PC_OK) goto fail;
    }
    *out = res;
    res = NULL;
fail:
    pc_tensor_decref(src);
    pc_tensor_decref(r);
    pc_tensor_decref(rc);
    pc_tensor_decref(res);
    return st;
}

/* Max along one dim: scatter the gradient into zeros at the saved indices. The work shape is
 * the input's, or (1,) for a 0-d input. */
typedef struct PcMaxDimNode {
    PcNode base;
    int dim;
    bool keepdim;
    int wnd;                       /* work ndim (1 for a 0-d input) */
    int64_t wshape[PC_MAX_DIMS];   /* work shape */
    PcTensorMeta in;
    PcSaved idx;                   /* int64, work shape with 1 at dim */
} PcMaxDimNode;

static void pc_max_dim_release(PcNode *self) { pc_saved_clear(&((PcMaxDimNode *)self)->idx); }

static PcStatus pc_max_dim_apply(PcNode *self, PcTensor *const *grad_outputs,
                                 const bool *needs, PcTensor **grad_inputs) {
    PcMaxDimNode *n = (PcMaxDimNode *)self;
    PcTensor *g = grad_outputs[0];
    if (!needs[0] || !g) return PC_OK;
    PcTensor *idx = NULL, *gc = NULL, *gk = NULL, *z = NULL, *res = NULL;
    PcStatus st;
    const PcBackend *be = pc_be(g);
    if (!be) return PC_ERR_DEVICE;
    PC_TRY(pc_saved_get(&n->idx, self, &idx));
    PC_TRY_GOTO(st, pc_cast(g, n->in.dtype, &gc));
    bool mask[PC_MAX_DIMS] = {false};
    mask[n->dim] = true;
    if (n->in.ndim == 0) {
        int64_t one = 1;
        PC_TRY_GOTO(st, pc_tensor_view_of(gc->storage, gc->offset, 1, &one, NULL, gc->dtype, &gk));
    } else {
        PC_TRY_GOTO(st, pc_unreduce_view(gc, n->wnd, n->wshape, mask, n->keepdim, false, &gk));
    }
    PC_TRY_GOTO(st, pc_op_full(n->wnd, n->wshape, 0.0, n->in.dtype, g->device, &z));
    PC_TRY_GOTO(st, be->scatter_add_dim(z, idx, gk, n->dim));
    PC_TRY_GOTO(st, pc_tensor_view_of(z->storage, 0, n->in.ndim, n->in.shape, NULL, z->dtype,
                                      &res));
    grad_inputs[0] = res;
fail:
    pc_tensor_decref(idx);
    pc_tensor_decref(gc);
    pc_tensor_decref(gk);
    pc_tensor_decref(z);
    return st;
}

static const PcNodeVTable pc_max_dim_vt = {"MaxBackward0", pc_max_dim_apply, pc_max_dim_release};

PcStatus pc_op_max_dim(PcTensor *self, int dim, bool keepdim, PcTensor **values,
                       PcTensor **indices) {
    *values = NULL;
    *indices = NULL;
    int d;
    PC_TRY(pc_wrap_dim("max", dim, self->ndim, &d));
    int wnd = self->ndim > 0 ? self->ndim : 1;
    int64_t wshape[PC_MAX_DIMS], kshape[PC_MAX_DIMS], oshape[PC_MAX_DIMS];
    if (self->ndim == 0) wshape[0] = 1;
    for (int i = 0; i < self->ndim; i++) wshape[i] = self->shape[i];
    if (wshape[d] == 0)
        return pc_set_error(PC_ERR_INDEX, "max(): expected reduction dim %d to have non-zero "
                                          "size", d);
    int ond = 0;
    for (int i = 0; i < wnd; i++) {
        kshape[i] = i == d ? 1 : wshape[i];
        if (self->ndim > 0 && (i != d || keepdim)) oshape[ond++] = kshape[i];
    }
    const PcBackend *be = pc_be(self);
    if (!be) return PC_ERR_DEVICE;
    PcDType cdt = pc_max_compute_dtype(self->dtype);
    PcTensor *src = NULL, *srcw = NULL, *vals = NULL, *valc = NULL, *idx = NULL;
    PcTensor *vout = NULL, *iout = NULL;
    PcStatus st;
    PC_TRY(pc_cast(self, cdt, &src));
    if (self->ndim == 0) {
        int64_t one_stride = 1;
        PC_TRY_GOTO(st, pc_tensor_view_of(src->storage, src->offset, 1, wshape, &one_stride,
                                          src->dtype, &srcw));
    } else {
        pc_tensor_incref(src);
        srcw = src;
    }
    PC_TRY_GOTO(st, pc_tensor_empty(wnd, kshape, cdt, self->device, &vals));
    PC_TRY_GOTO(st, pc_tensor_empty(wnd, kshape, PC_INT64, self->device, &idx));
    PC_TRY_GOTO(st, be->max_dim(vals, idx, srcw, d));
    PC_TRY_GOTO(st, pc_cast(vals, self->dtype, &valc));
    PC_TRY_GOTO(st, pc_tensor_view_of(valc->storage, valc->offset, ond, oshape, NULL,
                                      valc->dtype, &vout));
    PC_TRY_GOTO(st, pc_tensor_view_of(idx->storage, idx->offset, ond, oshape, NULL, PC_INT64,
                                      &iout));
    if (pc_dtype_is_float(self->dtype) && pc_autograd_any_requires_grad(1, &self)) {
        PcNode *node;
        PC_TRY_GOTO(st, pc_node_create(sizeof(PcMaxDimNode), &pc_max_dim_vt, 1, 1, &self,
                                       &node));
        PcMaxDimNode *n = (PcMaxDimNode *)node;
        n->dim = d;
        n->keepdim = keepdim;
        n->wnd = wnd;
        memcpy(n->wshape, wshape, sizeof wshape);
        pc_meta_of(self, &n->in);
        st = pc_saved_set(&n->idx, idx);
        if (st == PC_OK) pc_autograd_set_history(vout, node, 0);
        pc_node_decref(node);
        if (st != PC_OK) goto fail;
    }
    *values = vout;
    *indices = iout;
    vout = iout = NULL;
fail:
    pc_tensor_decref(src);
    pc_tensor_decref(srcw);
    pc_tensor_decref(vals);
    pc_tensor_decref(valc);
    pc_tensor_decref(idx);
    pc_tensor_decref(vout);
    pc_tensor_decref(iout);
    return st;
}
