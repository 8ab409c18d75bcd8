/* tensor.h — storages and tensors (views over storages), plain C.
 *
 * A PcStorage is a refcounted block of memory on one device. Memory comes from the device's
 * backend allocator, or from outside (a NumPy array, a DLPack capsule) with a release hook.
 * A PcTensor is a refcounted view: storage + element offset + shape + strides (in elements)
 * + dtype, plus autograd metadata. Views share the storage and its version counter.
 *
 * Invariants:
 *   - ndim <= PC_MAX_DIMS; shape[i] >= 0; strides may be 0 (expanded dims) but never negative.
 *   - t->device == t->storage->device.
 *   - a tensor with grad_fn != NULL is a non-leaf; requires_grad is then true.
 *   - refcounts are atomic: tensors may be shared between runtime threads.
 *
 * Ownership: pc_tensor_* constructors return a new reference (refcount 1) in *out.
 * pc_tensor_incref/decref manage it; decref of NULL is a no-op.
 */
#ifndef PC_CORE_TENSOR_H
#define PC_CORE_TENSOR_H

#ifdef __cplusplus
/* C++ translation units (the CUDA backend, built by nvcc) see the same layout through
 * std::atomic, which matches C11 _Atomic for these lock-free integer types. */
#include <atomic>
typedef std::atomic<long> atomic_long;
typedef std::atomic<unsigned int> atomic_uint;
using std::atomic_fetch_add;
#else
#include <stdatomic.h>
#endif
#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#include "dtype.h"
#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PC_MAX_DIMS 8

struct PcNode;

typedef struct PcStorage {
    atomic_long refcount;
    void *data;              /* owned via the allocator, or by `release_ctx` when external */
    size_t nbytes;
    PcDevice device;
    atomic_uint version;     /* bumped by every in-place write; shared by all views */
    void (*release)(void *data, void *release_ctx); /* external memory: called on free */
    void *release_ctx;       /* owned by the release hook (e.g. a PyObject*, see csrc/py) */
} PcStorage;

typedef struct PcTensor {
    atomic_long refcount;
    PcStorage *storage;      /* owned reference */
    int64_t offset;          /* in elements */
    int ndim;
    int64_t shape[PC_MAX_DIMS];
    int64_t strides[PC_MAX_DIMS]; /* in elements */
    PcDType dtype;
    PcDevice device;

    /* ---- autograd ---- */
    bool requires_grad;
    bool retains_grad;       /* non-leaf keeps .grad (retain_grad()) */
    struct PcTensor *grad;   /* owned reference or NULL */
    struct PcNode *grad_fn;  /* owned reference or NULL (leaf) */
    int output_nr;           /* which output of grad_fn this tensor is */
    struct PcNode *grad_acc; /* borrowed: the leaf's AccumulateGrad node while one is alive */
    bool is_param_hint;      /* set by nn.Parameter; split backward treats it as a weight */

    void *pyobj;             /* borrowed: the Python wrapper while one is alive (csrc/py) */
} PcTensor;

/* ---- storages ---- */

/* New storage of nbytes on device (uninitialised). */
PcStatus pc_storage_new(PcDevice device, size_t nbytes, PcStorage **out);
/* Storage over external memory; release(data, ctx) runs when the last reference goes. */
PcStatus pc_storage_wrap(PcDevice device, void *data, size_t nbytes,
                         void (*release)(void *, void *), void *release_ctx, PcStorage **out);
void pc_storage_incref(PcStorage *s);
void pc_storage_decref(PcStorage *s);

/* ---- tensors ---- */

/* New contiguous tensor of the given shape (uninitialised memory). */
PcStatus pc_tensor_empty(int ndim, const int64_t *shape, PcDType dtype, PcDevice device,
                         PcTensor **out);
/* New tensor viewing `storage` (takes a new reference to it). strides NULL = contiguous. */
PcStatus pc_tensor_view_of(PcStorage *storage, int64_t offset, int ndim, const int64_t *shape,
                           const int64_t *strides, PcDType dtype, PcTensor **out);
void pc_tensor_incref(PcTensor *t);
void pc_tensor_decref(PcTensor *t);

int64_t pc_tensor_numel(const PcTensor *t);
bool pc_tensor_is_contiguous(const PcTensor *t);
/* Pointer to element 0 of the view (storage data + offset * itemsize). */
void *pc_tensor_data(const PcTensor *t);
size_t pc_tensor_nbytes(const PcTensor *t); /* numel * itemsize */

/* Checked product of sizes; PC_ERR_INVALID on negative sizes or int64 overflow. */
PcStatus pc_shape_numel(int ndim, const int64_t *shape, int64_t *numel);
void pc_contiguous_strides(int ndim, const int64_t *shape, int64_t *strides);
/* "(2, 3)" into buf. Returns buf. */
const char *pc_shape_str(int ndim, const int64_t *shape, char *buf, size_t buflen);

/* Bump the storage's version counter (after any in-place write). */
static inline void pc_tensor_bump_version(PcTensor *t) {
    atomic_fetch_add(&t->storage->version, 1u);
}

#ifdef __cplusplus
}
#endif
#endif /* PC_CORE_TENSOR_H */
