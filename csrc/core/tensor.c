/* tensor.c — storages and tensor views (see tensor.h for the invariants).
 *
 * Storage memory comes from the device backend's allocator (pc_backend_for) unless it wraps
 * external memory. Freeing a tensor drops its grad, grad_fn and storage references.
 */
#include "tensor.h"

#include <stdio.h>
#include <stdlib.h>

#include "backend.h"
#include "../autograd/autograd.h"

/* ---- storages ---- */

PcStatus pc_storage_new(PcDevice device, size_t nbytes, PcStorage **out) {
    *out = NULL;
    const PcBackend *be = pc_backend_for(device);
    if (!be) return PC_ERR_DEVICE;
    PcStorage *s = calloc(1, sizeof *s);
    if (!s) return pc_set_error(PC_ERR_OOM, "out of host memory allocating a storage header");
    void *data = NULL;
    if (nbytes > 0) {
        PcStatus st = be->alloc(device, nbytes, &data);
        if (st != PC_OK) {
            free(s);
            return st;
        }
    }
    atomic_init(&s->refcount, 1);
    atomic_init(&s->version, 0u);
    s->data = data;
    s->nbytes = nbytes;
    s->device = device;
    *out = s;
    return PC_OK;
}

PcStatus pc_storage_wrap(PcDevice device, void *data, size_t nbytes,
                         void (*release)(void *, void *), void *release_ctx, PcStorage **out) {
    PcStorage *s = calloc(1, sizeof *s);
    *out = NULL;
    if (!s) return pc_set_error(PC_ERR_OOM, "out of host memory allocating a storage header");
    atomic_init(&s->refcount, 1);
    atomic_init(&s->version, 0u);
    s->data = data;
    s->nbytes = nbytes;
    s->device = device;
    s->release = release;
    s->release_ctx = release_ctx;
    *out = s;
    return PC_OK;
}

void pc_storage_incref(PcStorage *s) {
    if (s) atomic_fetch_add(&s->refcount, 1);
}

void pc_storage_decref(PcStorage *s) {
    if (!s || atomic_fetch_sub(&s->refcount, 1) != 1) return;
    if (s->release) {
        s->release(s->data, s->release_ctx);
    } else if (s->data) {
        const PcBackend *be = pc_backend_for(s->device);
        if (be) be->free(s->device, s->data, s->nbytes);
    }
    free(s);
}

/* ---- shapes ---- */

PcStatus pc_shape_numel(int ndim, const int64_t *shape, int64_t *numel) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return pc_set_error(PC_ERR_INVALID, "negative dimension %lld at position %d",
                                (long long)shape[i], i);
        if (shape[i] != 0 && n > INT64_MAX / shape[i])
            return pc_set_error(PC_ERR_INVALID, "shape is too large: the element count "
                                                "overflows int64");
        n *= shape[i];
    }
    *numel = n;
    return PC_OK;
}

void pc_contiguous_strides(int ndim, const int64_t *shape, int64_t *strides) {
    int64_t s = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        strides[i] = s;
        s *= shape[i] > 1 ? shape[i] : 1;
    }
}

const char *pc_shape_str(int ndim, const int64_t *shape, char *buf, size_t buflen) {
    size_t pos = 0;
    pos += (size_t)snprintf(buf + pos, buflen - pos, "(");
    for (int i = 0; i < ndim && pos < buflen; i++)
        pos += (size_t)snprintf(buf + pos, buflen - pos, "%s%lld", i ? ", " : "",
                                (long long)shape[i]);
    if (pos < buflen) snprintf(buf + pos, buflen - pos, ndim == 1 ? ",)" : ")");
    return buf;
}

/* ---- tensors ---- */

PcStatus pc_tensor_view_of(PcStorage *storage, int64_t offset, int ndim, const int64_t *shape,
                           const int64_t *strides, PcDType dtype, PcTensor **out) {
    *out = NULL;
    if (ndim < 0 || ndim > PC_MAX_DIMS)
        return pc_set_error(PC_ERR_INVALID, "tensors have at most %d dimensions, got %d",
                            PC_MAX_DIMS, ndim);
    PcTensor *t = calloc(1, sizeof *t);
    if (!t) return pc_set_error(PC_ERR_OOM, "out of host memory allocating a tensor header");
    atomic_init(&t->refcount, 1);
    pc_storage_incref(storage);
    t->storage = storage;
    t->offset = offset;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    if (strides)
        for (int i = 0; i < ndim; i++) t->strides[i] = strides[i];
    else
        pc_contiguous_strides(ndim, shape, t->strides);
    t->dtype = dtype;
    t->device = storage->device;
    *out = t;
    return PC_OK;
}

PcStatus pc_tensor_empty(int ndim, const int64_t *shape, PcDType dtype, PcDevice device,
                         PcTensor **out) {
    *out = NULL;
    if (ndim < 0 || ndim > PC_MAX_DIMS)
        return pc_set_error(PC_ERR_INVALID, "tensors have at most %d dimensions, got %d",
                            PC_MAX_DIMS, ndim);
    int64_t numel = 0;
    PC_TRY(pc_shape_numel(ndim, shape, &numel));
    size_t item = pc_dtype_size(dtype);
    if (item == 0) return pc_set_error(PC_ERR_TYPE, "unknown dtype %d", (int)dtype);
    if ((uint64_t)numel > (uint64_t)(SIZE_MAX / 2) / item)
        return pc_set_error(PC_ERR_INVALID, "shape is too large: %lld elements",
                            (long long)numel);
    PcStorage *s;
    PC_TRY(pc_storage_new(device, (size_t)numel * item, &s));
    PcStatus st = pc_tensor_view_of(s, 0, ndim, shape, NULL, dtype, out);
    pc_storage_decref(s);
    return st;
}

void pc_tensor_incref(PcTensor *t) {
    if (t) atomic_fetch_add(&t->refcount, 1);
}

void pc_tensor_decref(PcTensor *t) {
    if (!t || atomic_fetch_sub(&t->refcount, 1) != 1) return;
    PcTensor *grad = t->grad;
    PcNode *fn = t->grad_fn;
    t->grad = NULL;
    t->grad_fn = NULL;
    pc_tensor_decref(grad);
    pc_node_decref(fn);
    pc_storage_decref(t->storage);
    free(t);
}

int64_t pc_tensor_numel(const PcTensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

bool pc_tensor_is_contiguous(const PcTensor *t) {
    int64_t expected = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (t->shape[i] == 0) return true;
        if (t->shape[i] != 1 && t->strides[i] != expected) return false;
        expected *= t->shape[i];
    }
    return true;
}

void *pc_tensor_data(const PcTensor *t) {
    return (char *)t->storage->data + t->offset * (int64_t)pc_dtype_size(t->dtype);
}

size_t pc_tensor_nbytes(const PcTensor *t) {
    return (size_t)pc_tensor_numel(t) * pc_dtype_size(t->dtype);
}
