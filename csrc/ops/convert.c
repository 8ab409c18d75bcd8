/* convert.c — dtype/device conversions and copies: to, contiguous, clone, detach, copy_.
 *
 * Cross-device moves go through one contiguous buffer: the source is made contiguous on its
 * own device, its bytes move with the backends' copy_h2d / copy_d2h / copy_d2d, and a dtype
 * change then runs on the destination through the `copy` kernel. to() returns the same
 * tensor (new reference) when neither dtype nor device changes; contiguous() returns self
 * when already contiguous; clone() always copies; detach() is a history-free view.
 *
 * copy_ writes src (broadcast to self's shape, converted to self's dtype and device) into
 * self in place, bumps the version, and — when grad mode is on and src or self requires
 * grad — rebases self's history onto a CopyBackwards node whose gradient goes to src
 * (summed back to src's shape, converted back to src's dtype and device). A source that
 * shares self's storage is copied out first, so overlapping copies read the old values.
 *
 * Backward nodes: ToCopyBackward0 (convert the gradient back), CloneBackward0 (identity),
 * CopyBackwards.
 *
 * Exports: pc_op_to, pc_op_contiguous, pc_op_clone, pc_op_detach, pc_op_copy_ (see ops.h).
 */
#include <stdio.h>
#include <string.h>

#include "internal.h"

/* ---- helpers ---- */

/* src's values as a new contiguous tensor of src's dtype on `dev` (no autograd).
 * Same device: a contiguous copy. */
static PcStatus transfer(PcTensor *src, PcDevice dev, PcTensor **out) {
    *out = NULL;
    PcTensor *c = NULL, *dst = NULL;
    PcStatus st;
    const PcBackend *sbe = pc_backend_for(src->device);
    if (!sbe) return PC_ERR_DEVICE;
    const PcBackend *dbe = pc_backend_for(dev);
    if (!dbe) return PC_ERR_DEVICE;
    PC_TRY(pc_make_contiguous(src, &c));
    PC_TRY_GOTO(st, pc_tensor_empty(c->ndim, c->shape, c->dtype, dev, &dst));
    size_t nb = pc_tensor_nbytes(c);
    if (nb > 0) {
        if (pc_device_eq(src->device, dev))
            st = dbe->copy(dst, c);
        else if (src->device.type == PC_CPU)
            st = dbe->copy_h2d(dev, pc_tensor_data(dst), pc_tensor_data(c), nb);
        else if (dev.type == PC_CPU)
            st = sbe->copy_d2h(src->device, pc_tensor_data(dst), pc_tensor_data(c), nb);
        else
            st = dbe->copy_d2d(dev, pc_tensor_data(dst), src->device, pc_tensor_data(c), nb);
        if (st != PC_OK) goto fail;
    }
    pc_tensor_decref(c);
    *out = dst;
    return PC_OK;
fail:
    pc_tensor_decref(dst);
    pc_tensor_decref(c);
    return st;
}

/* self converted to (dtype, dev), no autograd; a new reference to self when equal. */
static PcStatus convert_raw(PcTensor *self, PcDType dtype, PcDevice dev, PcTensor **out) {
    *out = NULL;
    if (pc_device_eq(self->device, dev)) return pc_cast(self, dtype, out);
    PcTensor *moved;
    /* Shrink before moving (fewer bytes cross the link); widen after. */
    if (pc_dtype_size(dtype) < pc_dtype_size(self->dtype)) {
        PcTensor *c;
        PC_TRY(pc_cast(self, dtype, &c));
        PcStatus st = transfer(c, dev, out);
        pc_tensor_decref(c);
        return st;
    }
    PC_TRY(transfer(self, dev, &moved));
    PcStatus st = pc_cast(moved, dtype, out);
    pc_tensor_decref(moved);
    return st;
}

/* ---- to ---- */

typedef struct PcToNode {
    PcNode base;
    PcTensorMeta in; /* the gradient goes back to this dtype and device */
} PcToNode;

static PcStatus to_apply(PcNode *self, PcTensor *const *go, const bool *needs, PcTensor **gi) {
    PcToNode *n = (PcToNode *)self;
    gi[0] = NULL;
    if (!needs[0]) return PC_OK;
    return convert_raw(go[0], n->in.dtype, n->in.device, &gi[0]);
}

static const PcNodeVTable to_vt = {"ToCopyBackward0", to_apply, NULL};

PcStatus pc_op_to(PcTensor *self, PcDType dtype, PcDevice dev, PcTensor **out) {
    *out = NULL;
    if (pc_dtype_size(dtype) == 0)
        return pc_set_error(PC_ERR_TYPE, "to: unknown dtype %d", (int)dtype);
    if (self->dtype == dtype && pc_device_eq(self->device, dev)) {
        pc_tensor_incref(self);
        *out = self;
        return PC_OK;
    }
    PcTensor *r;
    PC_TRY(convert_raw(self, dtype, dev, &r));
    if (pc_dtype_is_float(dtype) && pc_dtype_is_float(self->dtype)) {
        PcNode *node;
        PcStatus st = pc_attach_node(sizeof(PcToNode), &to_vt, 1, &self, r, &node);
        if (st != PC_OK) {
            pc_tensor_decref(r);
            return st;
        }
        if (node) pc_meta_of(self, &((PcToNode *)node)->in);
    }
    *out = r;
    return PC_OK;
}

/* ---- clone / contiguous / detach ---- */

static PcStatus clone_apply(PcNode *self, PcTensor *const *go, const bool *needs,
                            PcTensor **gi) {
    (void)self;
    gi[0] = NULL;
    if (!needs[0]) return PC_OK;
    pc_tensor_incref(go[0]);
    gi[0] = go[0];
    return PC_OK;
}

static const PcNodeVTable clone_vt = {"CloneBackward0", clone_apply, NULL};

/* A fresh contiguous copy of t (no autograd). */
static PcStatus copy_raw(PcTensor *t, PcTensor **out) {
    *out = NULL;
    const PcBackend *be = pc_be(t);
    if (!be) return PC_ERR_DEVICE;
    PcTensor *r;
    PC_TRY(pc_empty_like(t, &r));
    PcStatus st = pc_tensor_numel(t) > 0 ? be->copy(r, t) : PC_OK;
    if (st != PC_OK) {
        pc_tensor_decref(r);
        return st;
    }
    *out = r;
    return PC_OK;
}

PcStatus pc_op_clone(PcTensor *self, PcTensor **out) {
    *out = NULL;
    PcTensor *r;
    PC_TRY(copy_raw(self, &r));
    PcNode *node;
    PcStatus st = pc_attach_node(sizeof(PcNode), &clone_vt, 1, &self, r, &node);
    if (st != PC_OK) {
        pc_tensor_decref(r);
        return st;
    }
    *out = r;
    return PC_OK;
}

PcStatus pc_op_contiguous(PcTensor *self, PcTensor **out) {
    *out = NULL;
    if (pc_tensor_is_contiguous(self)) {
        pc_tensor_incref(self);
        *out = self;
        return PC_OK;
    }
    return pc_op_clone(self, out);
}

PcStatus pc_op_detach(PcTensor *self, PcTensor **out) {
    return pc_tensor_view_of(self->storage, self->offset, self->ndim, self->shape,
                             self->strides, self->dtype, out);
}

/* ---- copy_ ---- */

typedef struct PcCopyNode {
    PcNode base;
    PcTensorMeta src; /* the gradient is summed to src's shape, converted to its dtype */
} PcCopyNode;

static PcStatus copy_apply(PcNode *self, PcTensor *const *go, const bool *needs,
                           PcTensor **gi) {
    PcCopyNode *n = (PcCopyNode *)self;
    gi[0] = NULL;
    if (!needs[0]) return PC_OK;
    PcTensor *s;
    PC_TRY(pc_sum_to_shape(go[0], n->src.ndim, n->src.shape, &s));
    PcStatus st = convert_raw(s, n->src.dtype, n->src.device, &gi[0]);
    pc_tensor_decref(s);
    return st;
}

static const PcNodeVTable copy_vt = {"CopyBackwards", copy_apply, NULL};

PcStatus pc_op_copy_(PcTensor *self, PcTensor *src) {
    char a[160], b[160];
    PC_TRY(pc_check_inplace("copy_", self));
    bool ok = src->ndim <= self->ndim;
    for (int i = 0; ok && i < src->ndim; i++) {
        int64_t s = src->shape[src->ndim - 1 - i];
        ok = s == 1 || s == self->shape[self->ndim - 1 - i];
    }
    if (!ok)
        return pc_set_error(PC_ERR_INVALID, "copy_: src %s cannot be broadcast to self %s",
                            pc_shape_str(src->ndim, src->shape, a, sizeof a),
                            pc_shape_str(self->ndim, self->shape, b, sizeof b));
    const PcBackend *be = pc_be(self);
    if (!be) return PC_ERR_DEVICE;

    PcTensor *s = NULL, *e = NULL;
    PcStatus st;
    if (!pc_device_eq(src->device, self->device) || src->storage == self->storage) {
        PC_TRY(transfer(src, self->device, &s)); /* a fresh buffer: never overlaps self */
    } else {
        pc_tensor_incref(src);
        s = src;
    }
    PC_TRY_GOTO(st, pc_expand_view(s, self->ndim, self->shape, &e));
    if (pc_tensor_numel(self) > 0) PC_TRY_GOTO(st, be->copy(self, e));
    pc_tensor_bump_version(self);
    pc_tensor_decref(e);
    pc_tensor_decref(s);
    e = s = NULL;

    bool history = pc_grad_enabled() && (src->requires_grad || self->requires_grad) &&
                   pc_dtype_is_float(self->dtype);
    if (history) {
        PcNode *node;
        PcTensor *in = pc_dtype_is_float(src->dtype) ? src : NULL;
        PC_TRY(pc_node_create(sizeof(PcCopyNode), &copy_vt, 1, 1, &in, &node));
        pc_meta_of(src, &((PcCopyNode *)node)->src);
        pc_autograd_set_history(self, node, 0); /* drops self's previous grad_fn */
        pc_node_decref(node);
    }
    return PC_OK;
fail:
    pc_tensor_decref(e);
    pc_tensor_decref(s);
    return st;
}
