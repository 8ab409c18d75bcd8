/* dlpack.c — DLPack export/import and __cuda_array_interface__ (zero-copy interop).
 *
 * Export: the capsule's manager context (PcDLExport) owns a fresh view of the tensor (a
 * counted reference to its storage) plus the shape/strides arrays the DLTensor points to;
 * the DLPack deleter drops both and may run on any thread, without the GIL. An unconsumed
 * capsule runs the deleter from its destructor; a consumer renames the capsule to
 * "used_dltensor[_versioned]" and takes over the deleter.
 *
 * Import: the producer's DLManagedTensor is wrapped with pc_storage_wrap; the storage's
 * release hook (PcDLImport) calls the producer's deleter with the GIL held (producers such as
 * NumPy drop Python references there). Nothing is copied. For CUDA producers pipec passes its
 * current stream of the device as the consumer stream, so the producer orders its pending
 * work before pipec's.
 *
 * Stream rule on export (__dlpack__(stream=S)): S waits, through an event, for the work queued
 * so far on pipec's current stream of the tensor's device; S = None means the legacy default
 * stream, S = -1 means no synchronisation.
 *
 * Exports: pc_py_to_dlpack, pc_py_from_dlpack, pc_py_cuda_array_interface,
 * pc_py_tensor_dlpack, pc_py_tensor_dlpack_device (dlpack.h); pc_py_add_dlpack (pyapi.h),
 * which adds _C._from_dlpack, _C._to_dlpack and _C._cuda_array_interface.
 */
#include "dlpack.h"

#include <stdlib.h>
#include <string.h>

#include "../ops/ops.h"
#include "dlpack_abi.h"
#ifdef PC_WITH_CUDA
#include "../kernels/cuda/cuda_api.h"
#endif

static const char kPcCapsule[] = "dltensor";
static const char kPcCapsuleUsed[] = "used_dltensor";
static const char kPcCapsuleV[] = "dltensor_versioned";
static const char kPcCapsuleVUsed[] = "used_dltensor_versioned";

/* ---- dtype and device mapping ---- */

static PcDLDataType pc_dl_dtype(PcDType dt) {
    PcDLDataType r = {PC_DL_FLOAT, 32, 1};
    switch (dt) {
    case PC_FLOAT32: break;
    case PC_FLOAT64: r.bits = 64; break;
    case PC_FLOAT16: r.bits = 16; break;
    case PC_BFLOAT16: r.code = PC_DL_BFLOAT; r.bits = 16; break;
    case PC_INT64: r.code = PC_DL_INT; r.bits = 64; break;
    case PC_BOOL: r.code = PC_DL_BOOL; r.bits = 8; break;
    default: break;
    }
    return r;
}

/* 0 and *out set, or -1 with TypeError. */
static int pc_dl_to_dtype(PcDLDataType d, PcDType *out) {
    if (d.lanes == 1) {
        if (d.code == PC_DL_FLOAT && d.bits == 32) { *out = PC_FLOAT32; return 0; }
        if (d.code == PC_DL_FLOAT && d.bits == 64) { *out = PC_FLOAT64; return 0; }
        if (d.code == PC_DL_FLOAT && d.bits == 16) { *out = PC_FLOAT16; return 0; }
        if (d.code == PC_DL_BFLOAT && d.bits == 16) { *out = PC_BFLOAT16; return 0; }
        if (d.code == PC_DL_INT && d.bits == 64) { *out = PC_INT64; return 0; }
        if (d.code == PC_DL_BOOL && d.bits == 8) { *out = PC_BOOL; return 0; }
    }
    PyErr_Format(PyExc_TypeError,
                 "from_dlpack: unsupported DLPack dtype (code=%d, bits=%d, lanes=%d); pipec "
                 "supports float32, float64, float16, bfloat16, int64 and bool",
                 (int)d.code, (int)d.bits, (int)d.lanes);
    return -1;
}

static PcDLDevice pc_dl_device(PcDevice dev) {
    PcDLDevice d;
    d.device_type = dev.type == PC_CUDA ? PC_DL_CUDA : PC_DL_CPU;
    d.device_id = dev.type == PC_CUDA ? dev.index : 0;
    return d;
}

/* ---- export ---- */

typedef struct PcDLExport {
    PcTensor *view;                   /* owned: shares the exported tensor's storage */
    int64_t shape[PC_MAX_DIMS];
    int64_t strides[PC_MAX_DIMS];
    PcDLManagedTensor legacy;         /* used when !versioned */
    PcDLManagedTensorVersioned versioned;
} PcDLExport;

static void pc_dl_export_free(PcDLExport *e) {
    if (!e) return;
    pc_tensor_decref(e->view); /* thread-safe; storage release hooks take the GIL themselves */
    free(e);
}

static void pc_dl_deleter(PcDLManagedTensor *self) {
    pc_dl_export_free((PcDLExport *)self->manager_ctx);
}

static void pc_dl_deleter_versioned(PcDLManagedTensorVersioned *self) {
    pc_dl_export_free((PcDLExport *)self->manager_ctx);
}

/* Capsule destructors: run the deleter unless a consumer took the tensor. */
static void pc_dl_capsule_destructor(PyObject *cap) {
    if (PyCapsule_IsValid(cap, kPcCapsuleUsed)) return;
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    PcDLManagedTensor *m = (PcDLManagedTensor *)PyCapsule_GetPointer(cap, kPcCapsule);
    if (m) {
        if (m->deleter) m->deleter(m);
    } else {
        PyErr_WriteUnraisable(cap);
    }
    PyErr_Restore(et, ev, tb);
}

static void pc_dl_capsule_destructor_versioned(PyObject *cap) {
    if (PyCapsule_IsValid(cap, kPcCapsuleVUsed)) return;
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    PcDLManagedTensorVersioned *m =
        (PcDLManagedTensorVersioned *)PyCapsule_GetPointer(cap, kPcCapsuleV);
    if (m) {
        if (m->deleter) m->deleter(m);
    } else {
        PyErr_WriteUnraisable(cap);
    }
    PyErr_Restore(et, ev, tb);
}

/* New reference: a capsule viewing t. */
static PyObject *pc_dl_make_capsule(PcTensor *t, bool versioned, uint64_t flags) {
    PcDLExport *e = calloc(1, sizeof *e);
    if (!e) return PyErr_NoMemory();
    PcStatus st = pc_tensor_view_of(t->storage, t->offset, t->ndim, t->shape, t->strides,
                                    t->dtype, &e->view);
    if (st != PC_OK) {
        free(e);
        return pc_py_raise(st);
    }
    for (int i = 0; i < t->ndim; i++) {
        e->shape[i] = t->shape[i];
        e->strides[i] = t->strides[i];
    }
    PcDLTensor *dl = versioned ? &e->versioned.dl_tensor : &e->legacy.dl_tensor;
    dl->data = t->storage->data ? pc_tensor_data(t) : NULL;
    dl->device = pc_dl_device(t->device);
    dl->ndim = t->ndim;
    dl->dtype = pc_dl_dtype(t->dtype);
    dl->shape = e->shape;
    dl->strides = e->strides;
    dl->byte_offset = 0;
    PyObject *cap;
    if (versioned) {
        e->versioned.version.major = PC_DLPACK_MAJOR_VERSION;
        e->versioned.version.minor = PC_DLPACK_MINOR_VERSION;
        e->versioned.manager_ctx = e;
        e->versioned.deleter = pc_dl_deleter_versioned;
        e->versioned.flags = flags;
        cap = PyCapsule_New(&e->versioned, kPcCapsuleV, pc_dl_capsule_destructor_versioned);
    } else {
        e->legacy.manager_ctx = e;
        e->legacy.deleter = pc_dl_deleter;
        cap = PyCapsule_New(&e->legacy, kPcCapsule, pc_dl_capsule_destructor);
    }
    if (!cap) pc_dl_export_free(e);
    return cap;
}

PyObject *pc_py_to_dlpack(PcTensor *t) { return pc_dl_make_capsule(t, false, 0); }

/* Makes the consumer's `stream` wait for pipec's work on t's device (CUDA tensors only).
 * 0 or -1 + exception. */
static int pc_dl_sync_consumer(PcTensor *t, PyObject *stream) {
    if (t->device.type != PC_CUDA) return 0; /* CPU: nothing is asynchronous */
#ifdef PC_WITH_CUDA
    uintptr_t ext = 1; /* None: the legacy default stream */
    if (stream && stream != Py_None) {
        if (!PyLong_Check(stream)) {
            PyErr_Format(PyExc_TypeError, "__dlpack__: stream must be an int or None, got %.100s",
                         Py_TYPE(stream)->tp_name);
            return -1;
        }
        long long v = PyLong_AsLongLong(stream);
        if (v == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            ext = (uintptr_t)PyLong_AsUnsignedLongLong(stream);
            if (PyErr_Occurred()) return -1;
        } else if (v == -1) {
            return 0; /* the consumer asked for no synchronisation */
        } else if (v == 0) {
            PyErr_SetString(PyExc_ValueError, "__dlpack__: stream=0 is ambiguous for CUDA and "
                                              "not allowed (use 1 for the legacy default stream "
                                              "or 2 for the per-thread default stream)");
            return -1;
        } else {
            ext = (uintptr_t)v;
        }
    }
    PcStatus st = pc_cuda_sync_external_stream(t->device.index, ext);
    if (st != PC_OK) {
        pc_py_raise(st);
        return -1;
    }
    return 0;
#else
    (void)stream;
    PyErr_SetString(PyExc_RuntimeError, "__dlpack__: pipec was built without CUDA");
    return -1;
#endif
}

PyObject *pc_py_tensor_dlpack(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"stream", "max_version", "dl_device", "copy", NULL};
    PyObject *stream = Py_None, *max_version = Py_None, *dl_device = Py_None, *copy = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|$OOOO:__dlpack__", kwlist, &stream,
                                     &max_version, &dl_device, &copy))
        return NULL;
    PcTensor *t = pc_py_unwrap(self, "self");
    if (!t) return NULL;
    if (t->requires_grad) {
        PyErr_SetString(PyExc_RuntimeError, "Can't export tensors that require gradient, use "
                                            "tensor.detach()");
        return NULL;
    }
    if (dl_device != Py_None) {
        int dt = 0, di = 0;
        if (!PyArg_ParseTuple(dl_device, "ii:dl_device", &dt, &di)) return NULL;
        PcDLDevice mine = pc_dl_device(t->device);
        if (dt != (int)mine.device_type || di != mine.device_id) {
            PyErr_Format(PyExc_BufferError, "__dlpack__: cannot export to device (%d, %d); the "
                                            "tensor is on (%d, %d)", dt, di,
                         (int)mine.device_type, mine.device_id);
            return NULL;
        }
    }
    bool versioned = false;
    if (max_version != Py_None) {
        int major = 0, minor = 0;
        if (!PyArg_ParseTuple(max_version, "ii:max_version", &major, &minor)) return NULL;
        versioned = major >= 1;
    }
    int want_copy = copy == Py_None ? 0 : PyObject_IsTrue(copy);
    if (want_copy < 0) return NULL;
    if (pc_dl_sync_consumer(t, stream) < 0) return NULL;
    if (!want_copy) return pc_dl_make_capsule(t, versioned, 0);
    PcTensor *c;
    PcStatus st;
    Py_BEGIN_ALLOW_THREADS
    st = pc_op_clone(t, &c);
    Py_END_ALLOW_THREADS
    if (st != PC_OK) return pc_py_raise(st);
    if (pc_dl_sync_consumer(c, stream) < 0) {
        pc_tensor_decref(c);
        return NULL;
    }
    PyObject *cap = pc_dl_make_capsule(c, versioned, versioned ? PC_DLPACK_FLAG_IS_COPIED : 0);
    pc_tensor_decref(c);
    return cap;
}

PyObject *pc_py_tensor_dlpack_device(PyObject *self, PyObject *unused) {
    (void)unused;
    PcTensor *t = pc_py_unwrap(self, "self");
    if (!t) return NULL;
    PcDLDevice d = pc_dl_device(t->device);
    return Py_BuildValue("(ii)", (int)d.device_type, (int)d.device_id);
}

/* ---- import ---- */

typedef struct PcDLImport {
    bool versioned;
    void *managed; /* PcDLManagedTensor[Versioned]*: its deleter runs on release */
} PcDLImport;

static int pc_dl_interpreter_alive(void) {
#if PY_VERSION_HEX >= 0x030D0000
    return Py_IsInitialized() && !Py_IsFinalizing();
#else
    return Py_IsInitialized() && !_Py_IsFinalizing();
#endif
}

static void pc_dl_import_release(void *data, void *ctx) {
    (void)data;
    PcDLImport *imp = (PcDLImport *)ctx;
    if (!imp) return;
    if (pc_dl_interpreter_alive()) { /* at shutdown the producer's memory is left to the OS */
        PyGILState_STATE g = PyGILState_Ensure();
        if (imp->versioned) {
            PcDLManagedTensorVersioned *m = (PcDLManagedTensorVersioned *)imp->managed;
            if (m->deleter) m->deleter(m);
        } else {
            PcDLManagedTensor *m = (PcDLManagedTensor *)imp->managed;
            if (m->deleter) m->deleter(m);
        }
        PyGILState_Release(g);
    }
    free(imp);
}

/* obj.__dlpack__(...) with pipec's consumer stream. New reference (a capsule) or NULL. */
static PyObject *pc_dl_call_producer(PyObject *obj) {
    PyObject *fn = PyObject_GetAttrString(obj, "__dlpack__");
    if (!fn) {
        PyErr_Format(PyExc_TypeError, "from_dlpack: expected an object with __dlpack__ or a "
                                      "DLPack capsule, got %.100s", Py_TYPE(obj)->tp_name);
        return NULL;
    }
    long dev_type = PC_DL_CPU, dev_id = 0;
    PyObject *devf = PyObject_GetAttrString(obj, "__dlpack_device__");
    if (devf) {
        PyObject *d = PyObject_CallNoArgs(devf);
        Py_DECREF(devf);
        if (!d || !PyArg_ParseTuple(d, "ll:__dlpack_device__", &dev_type, &dev_id)) {
            Py_XDECREF(d);
            Py_DECREF(fn);
            return NULL;
        }
        Py_DECREF(d);
    } else {
        PyErr_Clear();
    }
    PyObject *stream = NULL; /* new reference or NULL: CPU producers get stream=None */
    if (dev_type == PC_DL_CUDA || dev_type == PC_DL_CUDA_MANAGED) {
#ifdef PC_WITH_CUDA
        void *s = NULL;
        PcStatus st = pc_cuda_current_stream((int)dev_id, &s);
        if (st != PC_OK) {
            Py_DECREF(fn);
            return pc_py_raise(st);
        }
        stream = PyLong_FromVoidPtr(s);
        if (!stream) {
            Py_DECREF(fn);
            return NULL;
        }
#else
        Py_DECREF(fn);
        PyErr_SetString(PyExc_RuntimeError, "from_dlpack: the producer's memory is on a CUDA "
                                            "device but pipec was built without CUDA");
        return NULL;
#endif
    }
    PyObject *empty = PyTuple_New(0);
    PyObject *kw = PyDict_New();
    PyObject *cap = NULL;
    PyObject *maxv = Py_BuildValue("(ii)", PC_DLPACK_MAJOR_VERSION, PC_DLPACK_MINOR_VERSION);
    if (!empty || !kw || !maxv) goto done;
    if (stream && PyDict_SetItemString(kw, "stream", stream) < 0) goto done;
    if (PyDict_SetItemString(kw, "max_version", maxv) < 0) goto done;
    cap = PyObject_Call(fn, empty, kw);
    if (!cap && PyErr_ExceptionMatches(PyExc_TypeError)) { /* a pre-1.0 producer */
        PyErr_Clear();
        if (PyDict_DelItemString(kw, "max_version") < 0) goto done;
        cap = PyObject_Call(fn, empty, kw);
    }
done:
    Py_XDECREF(maxv);
    Py_XDECREF(kw);
    Py_XDECREF(empty);
    Py_XDECREF(stream);
    Py_DECREF(fn);
    return cap;
}

PyObject *pc_py_from_dlpack(PyObject *obj) {
    PyObject *cap = PyCapsule_CheckExact(obj) ? Py_NewRef(obj) : pc_dl_call_producer(obj);
    if (!cap) return NULL;
    bool versioned;
    void *managed;
    PcDLTensor *dl;
    if (PyCapsule_IsValid(cap, kPcCapsuleV)) {
        PcDLManagedTensorVersioned *m =
            (PcDLManagedTensorVersioned *)PyCapsule_GetPointer(cap, kPcCapsuleV);
        if (m->version.major != PC_DLPACK_MAJOR_VERSION) {
            PyErr_Format(PyExc_BufferError, "from_dlpack: DLPack version %u.%u is not supported "
                                            "(pipec reads %d.x)", m->version.major,
                         m->version.minor, PC_DLPACK_MAJOR_VERSION);
            Py_DECREF(cap);
            return NULL;
        }
        versioned = true;
        managed = m;
        dl = &m->dl_tensor;
    } else if (PyCapsule_IsValid(cap, kPcCapsule)) {
        PcDLManagedTensor *m = (PcDLManagedTensor *)PyCapsule_GetPointer(cap, kPcCapsule);
        versioned = false;
        managed = m;
        dl = &m->dl_tensor;
    } else {
        Py_DECREF(cap);
        PyErr_SetString(PyExc_ValueError, "from_dlpack: not a DLPack capsule, or one that was "
                                          "already consumed");
        return NULL;
    }

    PcDevice dev = {PC_CPU, 0};
    switch ((int)dl->device.device_type) {
    case PC_DL_CPU:
    case PC_DL_CUDA_HOST:
        break;
    case PC_DL_CUDA:
    case PC_DL_CUDA_MANAGED:
#ifdef PC_WITH_CUDA
        if (dl->device.device_id < 0 || dl->device.device_id >= pc_cuda_device_count()) {
            PyErr_Format(PyExc_RuntimeError, "from_dlpack: CUDA device %d is not visible to "
                                             "pipec (%d device(s))", (int)dl->device.device_id,
                         pc_cuda_device_count());
            Py_DECREF(cap);
            return NULL;
        }
        dev.type = PC_CUDA;
        dev.index = dl->device.device_id;
        break;
#endif
    default:
        PyErr_Format(PyExc_RuntimeError, "from_dlpack: unsupported device type %d (pipec reads "
                                         "CPU%s memory)", (int)dl->device.device_type,
#ifdef PC_WITH_CUDA
                     " and CUDA"
#else
                     ""
#endif
        );
        Py_DECREF(cap);
        return NULL;
    }
    PcDType dt;
    if (pc_dl_to_dtype(dl->dtype, &dt) < 0) {
        Py_DECREF(cap);
        return NULL;
    }
    if (dl->ndim < 0 || dl->ndim > PC_MAX_DIMS) {
        PyErr_Format(PyExc_ValueError, "from_dlpack: at most %d dimensions, got %d", PC_MAX_DIMS,
                     (int)dl->ndim);
        Py_DECREF(cap);
        return NULL;
    }
    int ndim = dl->ndim;
    int64_t shape[PC_MAX_DIMS], strides[PC_MAX_DIMS];
    for (int i = 0; i < ndim; i++) shape[i] = dl->shape[i];
    if (dl->strides) {
        for (int i = 0; i < ndim; i++) strides[i] = dl->strides[i];
    } else {
        pc_contiguous_strides(ndim, shape, strides);
    }
    int64_t span = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || strides[i] < 0) {
            PyErr_SetString(PyExc_ValueError, "from_dlpack: negative sizes or strides are not "
                                              "supported (copy the array first)");
            Py_DECREF(cap);
            return NULL;
        }
        if (shape[i] == 0) span = 0;
    }
    if (span) {
        for (int i = 0; i < ndim; i++) span += (shape[i] - 1) * strides[i];
    }
    size_t nbytes = (size_t)span * pc_dtype_size(dt);
    char *data = dl->data ? (char *)dl->data + dl->byte_offset : NULL;

    PcDLImport *imp = malloc(sizeof *imp);
    if (!imp) {
        Py_DECREF(cap);
        return PyErr_NoMemory();
    }
    imp->versioned = versioned;
    imp->managed = managed;
    /* Take the producer's tensor over: from here pipec calls its deleter, not the capsule. */
    if (PyCapsule_SetName(cap, versioned ? kPcCapsuleVUsed : kPcCapsuleUsed) < 0) {
        free(imp);
        Py_DECREF(cap);
        return NULL;
    }
    Py_DECREF(cap);
    PcStorage *s;
    PcStatus st = pc_storage_wrap(dev, data, nbytes, pc_dl_import_release, imp, &s);
    if (st != PC_OK) {
        pc_dl_import_release(data, imp);
        return pc_py_raise(st);
    }
    PcTensor *t;
    st = pc_tensor_view_of(s, 0, ndim, shape, strides, dt, &t);
    pc_storage_decref(s); /* on failure this releases the producer's tensor */
    if (st != PC_OK) return pc_py_raise(st);
    return pc_py_wrap(t);
}

/* ---- CUDA array interface ---- */

PyObject *pc_py_cuda_array_interface(PcTensor *t) {
    if (t->device.type != PC_CUDA) {
        PyErr_SetString(PyExc_AttributeError, "__cuda_array_interface__: only CUDA tensors have "
                                              "it (this tensor is on the CPU)");
        return NULL;
    }
#ifdef PC_WITH_CUDA
    if (t->requires_grad) {
        PyErr_SetString(PyExc_RuntimeError, "Can't get __cuda_array_interface__ on a tensor that "
                                            "requires grad; use tensor.detach()");
        return NULL;
    }
    const char *typestr;
    switch (t->dtype) {
    case PC_FLOAT32: typestr = "<f4"; break;
    case PC_FLOAT64: typestr = "<f8"; break;
    case PC_FLOAT16: typestr = "<f2"; break;
    case PC_INT64: typestr = "<i8"; break;
    case PC_BOOL: typestr = "|b1"; break;
    default:
        PyErr_Format(PyExc_TypeError, "__cuda_array_interface__: dtype %s has no typestr in the "
                                      "CUDA array interface", pc_dtype_name(t->dtype));
        return NULL;
    }
    void *stream = NULL;
    PcStatus st = pc_cuda_current_stream(t->device.index, &stream);
    if (st != PC_OK) return pc_py_raise(st);
    size_t item = pc_dtype_size(t->dtype);
    int64_t numel = pc_tensor_numel(t);
    PyObject *shape = PyTuple_New(t->ndim);
    PyObject *strides = NULL;
    if (!shape) return NULL;
    for (int i = 0; i < t->ndim; i++)
        PyTuple_SET_ITEM(shape, i, PyLong_FromLongLong(t->shape[i]));
    if (pc_tensor_is_contiguous(t)) {
        strides = Py_NewRef(Py_None);
    } else {
        strides = PyTuple_New(t->ndim);
        if (!strides) {
            Py_DECREF(shape);
            return NULL;
        }
        for (int i = 0; i < t->ndim; i++)
            PyTuple_SET_ITEM(strides, i, PyLong_FromLongLong(t->strides[i] * (int64_t)item));
    }
    void *ptr = (numel > 0 && t->storage->data) ? pc_tensor_data(t) : NULL;
    PyObject *d = Py_BuildValue("{s:N,s:s,s:(NO),s:i,s:N,s:N}", "shape", shape, "typestr",
                                typestr, "data", PyLong_FromVoidPtr(ptr), Py_False, "version", 3,
                                "strides", strides, "stream", PyLong_FromVoidPtr(stream));
    return d;
#else
    PyErr_SetString(PyExc_AttributeError, "__cuda_array_interface__: built without CUDA");
    return NULL;
#endif
}

/* ---- module functions ---- */

static PyObject *dl_from_dlpack(PyObject *m, PyObject *obj) {
    (void)m;
    return pc_py_from_dlpack(obj);
}

static PyObject *dl_to_dlpack(PyObject *m, PyObject *obj) {
    (void)m;
    PcTensor *t = pc_py_unwrap(obj, "tensor");
    return t ? pc_py_to_dlpack(t) : NULL;
}

static PyObject *dl_cuda_array_interface(PyObject *m, PyObject *obj) {
    (void)m;
    PcTensor *t = pc_py_unwrap(obj, "tensor");
    return t ? pc_py_cuda_array_interface(t) : NULL;
}

static PyMethodDef dlpack_functions[] = {
    {"_from_dlpack", dl_from_dlpack, METH_O,
     "_from_dlpack(obj) -> Tensor sharing the memory of an object with __dlpack__ or a DLPack "
     "capsule."},
    {"_to_dlpack", dl_to_dlpack, METH_O,
     "_to_dlpack(tensor) -> a 'dltensor' capsule viewing the tensor (no stream sync)."},
    {"_cuda_array_interface", dl_cuda_array_interface, METH_O,
     "_cuda_array_interface(tensor) -> the __cuda_array_interface__ dict (version 3)."},
    {NULL, NULL, 0, NULL},
};

int pc_py_add_dlpack(PyObject *module) { return PyModule_AddFunctions(module, dlpack_functions); }
