/* tensor_type.c — the pipec.Tensor heap type: wrapper identity, dtype/device objects,
 * attributes, NumPy interop, indexing, the number protocol and comparisons.
 *
 * Invariants:
 *   - a PcPyTensor owns one reference to its PcTensor; PcTensor.pyobj points back (borrowed)
 *     while the wrapper lives, so wrapping the same PcTensor twice gives the same object;
 *   - the GIL is held whenever pyobj is read or written.
 * Exports (pyapi.h): PcPyTensor_Type, pc_py_wrap, pc_py_unwrap, pc_py_parse_dtype,
 * pc_py_parse_device, pc_py_dtype_obj, pc_py_device_obj; and, for module.c,
 * pc_py_tensor_type_init() and the registration hook pc_py_register_types().
 */
#include "pyapi.h"

#include <structmember.h>

#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL pc_numpy_api
#include <numpy/arrayobject.h>

#include <math.h>

#include "../autograd/autograd.h"
#include "../ops/ops.h"
#include "bindings.h"
#include "dlpack.h"
#include "../graph/program.h"
#ifdef PC_WITH_CUDA
#include "../kernels/cuda/cuda_api.h"
#endif

PyTypeObject *PcPyTensor_Type = NULL;

/* ---- dtype and device objects ---- */

static PyObject *dtype_objs[PC_NUM_DTYPES]; /* owned; registered by pipec/__init__.py */
static PyObject *device_cls;                /* owned */
#define PC_DEVICE_CACHE 17
static PyObject *device_cache[PC_DEVICE_CACHE]; /* owned: [0] cpu, [1 + i] cuda:i */

/* _C._register_types(dtypes: tuple of 6, device_class) -> None */
PyObject *pc_py_register_types(PyObject *mod, PyObject *args) {
    (void)mod;
    PyObject *dts, *dcls;
    if (!PyArg_ParseTuple(args, "O!O", &PyTuple_Type, &dts, &dcls)) return NULL;
    if (PyTuple_GET_SIZE(dts) != PC_NUM_DTYPES) {
        PyErr_SetString(PyExc_ValueError, "_register_types: expected 6 dtypes");
        return NULL;
    }
    for (int i = 0; i < PC_NUM_DTYPES; i++) {
        Py_XSETREF(dtype_objs[i], Py_NewRef(PyTuple_GET_ITEM(dts, i)));
    }
    Py_XSETREF(device_cls, Py_NewRef(dcls));
    for (int i = 0; i < PC_DEVICE_CACHE; i++) Py_CLEAR(device_cache[i]);
    Py_RETURN_NONE;
}

PyObject *pc_py_dtype_obj(PcDType dt) {
    if ((int)dt < 0 || dt >= PC_NUM_DTYPES || !dtype_objs[dt]) {
        PyErr_SetString(PyExc_RuntimeError, "pipec dtypes are not registered");
        return NULL;
    }
    return Py_NewRef(dtype_objs[dt]);
}

int pc_py_parse_dtype(PyObject *obj, const char *what, PcDType *out) {
    for (int i = 0; i < PC_NUM_DTYPES; i++) {
        if (obj == dtype_objs[i]) {
            *out = (PcDType)i;
            return 0;
        }
    }
    PyErr_Format(PyExc_TypeError, "%s must be a pipec dtype (e.g. pipec.float32), got %R", what,
                 obj);
    return -1;
}

PyObject *pc_py_device_obj(PcDevice dev) {
    int slot = dev.type == PC_CPU ? 0 : 1 + dev.index;
    if (slot >= 0 && slot < PC_DEVICE_CACHE && device_cache[slot])
        return Py_NewRef(device_cache[slot]);
    if (!device_cls) {
        PyErr_SetString(PyExc_RuntimeError, "pipec.device is not registered");
        return NULL;
    }
    PyObject *d = dev.type == PC_CPU ? PyObject_CallFunction(device_cls, "s", "cpu")
                                     : PyObject_CallFunction(device_cls, "si", "cuda", dev.index);
    if (d && slot >= 0 && slot < PC_DEVICE_CACHE) device_cache[slot] = Py_NewRef(d);
    return d;
}

static int parse_device_str(const char *s, const char *what, PcDevice *out) {
    if (strcmp(s, "cpu") == 0) {
        out->type = PC_CPU;
        out->index = 0;
        return 0;
    }
    if (strncmp(s, "cuda", 4) == 0) {
        out->type = PC_CUDA;
        out->index = 0;
        if (s[4] == '\0') { /* "cuda" = the current device, as torch */
#ifdef PC_WITH_CUDA
            int cur = 0;
            if (pc_cuda_get_device(&cur) == PC_OK) out->index = cur;
#endif
            return 0;
        }
        if (s[4] == ':') {
            char *end;
            long v = strtol(s + 5, &end, 10);
            if (*end == '\0' && end != s + 5 && v >= 0 && v < 1 << 16) {
                out->index = (int)v;
                return 0;
            }
        }
    }
    PyErr_Format(PyExc_ValueError,
                 "%s: invalid device string '%s' (expected 'cpu', 'cuda' or 'cuda:N')", what, s);
    return -1;
}

int pc_py_parse_device(PyObject *obj, const char *what, PcDevice *out) {
    if (PyUnicode_Check(obj)) {
        const char *s = PyUnicode_AsUTF8(obj);
        return s ? parse_device_str(s, what, out) : -1;
    }
    if (PyLong_Check(obj)) {
        long v = PyLong_AsLong(obj);
        if (v < 0) {
            PyErr_Format(PyExc_ValueError, "%s: device ordinal must be >= 0, got %ld", what, v);
            return -1;
        }
        out->type = PC_CUDA;
        out->index = (int)v;
        return 0;
    }
    if (device_cls && PyObject_TypeCheck(obj, (PyTypeObject *)device_cls)) {
        PyObject *s = PyObject_Str(obj);
        if (!s) return -1;
        int r = parse_device_str(PyUnicode_AsUTF8(s), what, out);
        Py_DECREF(s);
        return r;
    }
    PyErr_Format(PyExc_TypeError, "%s must be a device (pipec.device, 'cpu', 'cuda:N'), got %R",
                 what, obj);
    return -1;
}

/* ---- wrapping ---- */

PyObject *pc_py_wrap(PcTensor *t) {
    if (!t) {
        PyErr_SetString(PyExc_SystemError, "pc_py_wrap: NULL tensor");
        return NULL;
    }
    if (t->pyobj) {
        PyObject *o = Py_NewRef((PyObject *)t->pyobj);
        pc_tensor_decref(t);
        return o;
    }
    PcPyTensor *self = (PcPyTensor *)PcPyTensor_Type->tp_alloc(PcPyTensor_Type, 0);
    if (!self) {
        pc_tensor_decref(t);
        return NULL;
    }
    self->t = t;
    t->pyobj = self;
    return (PyObject *)self;
}

PcTensor *pc_py_unwrap(PyObject *obj, const char *what) {
    if (!PyObject_TypeCheck(obj, PcPyTensor_Type)) {
        PyErr_Format(PyExc_TypeError, "%s must be a pipec.Tensor, got %.100s", what,
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    return ((PcPyTensor *)obj)->t;
}

/* ---- type slots ---- */

static int tensor_traverse(PcPyTensor *self, visitproc visit, void *arg) {
    Py_VISIT(self->dict);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static int tensor_clear(PcPyTensor *self) {
    Py_CLEAR(self->dict);
    return 0;
}

static void tensor_dealloc(PcPyTensor *self) {
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakrefs) PyObject_ClearWeakRefs((PyObject *)self);
    tensor_clear(self);
    if (self->t) {
        if (self->t->pyobj == self) self->t->pyobj = NULL;
        pc_tensor_decref(self->t);
        self->t = NULL;
    }
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *tensor_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    (void)type; (void)args; (void)kw;
    PyErr_SetString(PyExc_TypeError,
                    "pipec.Tensor cannot be constructed directly: use pipec.tensor(data), "
                    "pipec.empty(...) or another factory");
    return NULL;
}

/* ---- attributes ---- */

#define T(o) (((PcPyTensor *)(o))->t)

static PyObject *shape_tuple(int ndim, const int64_t *shape) {
    PyObject *tup = PyTuple_New(ndim);
    if (!tup) return NULL;
    for (int i = 0; i < ndim; i++) {
        PyObject *v = PyLong_FromLongLong(shape[i]);
        if (!v) {
            Py_DECREF(tup);
            return NULL;
        }
        PyTuple_SET_ITEM(tup, i, v);
    }
    return tup;
}

static PyObject *get_shape(PyObject *self, void *c) {
    (void)c;
    pc_trace_note_shape_read(pc_trace_active(), T(self));
    return shape_tuple(T(self)->ndim, T(self)->shape);
}
static PyObject *get_dtype(PyObject *self, void *c) { (void)c; return pc_py_dtype_obj(T(self)->dtype); }
static PyObject *get_device(PyObject *self, void *c) { (void)c; return pc_py_device_obj(T(self)->device); }
static PyObject *get_ndim(PyObject *self, void *c) { (void)c; return PyLong_FromLong(T(self)->ndim); }
static PyObject *get_requires_grad(PyObject *self, void *c) {
    (void)c;
    return PyBool_FromLong(T(self)->requires_grad);
}
static int set_requires_grad(PyObject *self, PyObject *v, void *c) {
    (void)c;
    if (!v) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete requires_grad");
        return -1;
    }
    int on = PyObject_IsTrue(v);
    if (on < 0) return -1;
    PcTensor *t = T(self);
    if (t->grad_fn && !on) {
        PyErr_SetString(PyExc_RuntimeError,
                        "you can only change requires_grad flags of leaf variables. If you want "
                        "to use a computed variable in a subgraph that doesn't require "
                        "differentiation use var_no_grad = var.detach().");
        return -1;
    }
    if (on && !pc_dtype_is_float(t->dtype)) {
        PyErr_Format(PyExc_RuntimeError,
                     "only Tensors of floating point dtype can require gradients (got %s)",
                     pc_dtype_name(t->dtype));
        return -1;
    }
    t->requires_grad = on != 0;
    return 0;
}
static PyObject *get_grad(PyObject *self, void *c) {
    (void)c;
    PcTensor *g = T(self)->grad;
    if (!g) Py_RETURN_NONE;
    pc_tensor_incref(g);
    return pc_py_wrap(g);
}
static int set_grad(PyObject *self, PyObject *v, void *c) {
    (void)c;
    PcTensor *t = T(self);
    if (!v || v == Py_None) {
        PcTensor *old = t->grad;
        t->grad = NULL;
        pc_tensor_decref(old);
        return 0;
    }
    PcTensor *g = pc_py_unwrap(v, "grad");
    if (!g) return -1;
    if (g->ndim != t->ndim || memcmp(g->shape, t->shape, sizeof(int64_t) * (size_t)t->ndim)) {
        char a[128], b[128];
        PyErr_Format(PyExc_RuntimeError, "assigned grad has data of a different size: %s vs %s",
                     pc_shape_str(g->ndim, g->shape, a, sizeof a),
                     pc_shape_str(t->ndim, t->shape, b, sizeof b));
        return -1;
    }
    if (g->dtype != t->dtype || !pc_device_eq(g->device, t->device)) {
        PyErr_Format(PyExc_TypeError, "assigned grad has dtype %s on %s, expected %s on %s",
                     pc_dtype_name(g->dtype), g->device.type == PC_CPU ? "cpu" : "cuda",
                     pc_dtype_name(t->dtype), t->device.type == PC_CPU ? "cpu" : "cuda");
        return -1;
    }
    pc_tensor_incref(g);
    PcTensor *old = t->grad;
    t->grad = g;
    pc_tensor_decref(old);
    return 0;
}
static PyObject *get_grad_fn(PyObject *self, void *c) {
    (void)c;
    PcNode *n = T(self)->grad_fn;
    if (!n) Py_RETURN_NONE;
    return pc_py_node_wrap(n);
}
static PyObject *get_is_leaf(PyObject *self, void *c) {
    (void)c;
    return PyBool_FromLong(T(self)->grad_fn == NULL);
}
static PyObject *get_data(PyObject *self, void *c) {
    (void)c;
    PcTensor *out = NULL;
    PcStatus st = pc_op_detach(T(self), &out);
    if (st != PC_OK) return pc_py_raise(st);
    return pc_py_wrap(out);
}
static int set_data(PyObject *self, PyObject *v, void *c) {
    (void)c;
    PcTensor *src = v ? pc_py_unwrap(v, "data") : NULL;
    if (!src) {
        if (!v) PyErr_SetString(PyExc_AttributeError, "cannot delete data");
        return -1;
    }
    PcTensor *t = T(self);
    pc_storage_incref(src->storage);
    pc_storage_decref(t->storage);
    t->storage = src->storage;
    t->offset = src->offset;
    t->ndim = src->ndim;
    memcpy(t->shape, src->shape, sizeof t->shape);
    memcpy(t->strides, src->strides, sizeof t->strides);
    t->dtype = src->dtype;
    t->device = src->device;
    return 0;
}
static PyObject *get_version(PyObject *self, void *c) {
    (void)c;
    return PyLong_FromUnsignedLong(atomic_load(&T(self)->storage->version));
}
static PyObject *get_is_param(PyObject *self, void *c) {
    (void)c;
    return PyBool_FromLong(T(self)->is_param_hint);
}
static int set_is_param(PyObject *self, PyObject *v, void *c) {
    (void)c;
    int on = v ? PyObject_IsTrue(v) : 0;
    if (on < 0) return -1;
    T(self)->is_param_hint = on != 0;
    return 0;
}
static PyObject *get_is_cuda(PyObject *self, void *c) {
    (void)c;
    return PyBool_FromLong(T(self)->device.type == PC_CUDA);
}
static PyObject *get_dict(PyObject *self, void *c) {
    (void)c;
    PcPyTensor *p = (PcPyTensor *)self;
    if (!p->dict && !(p->dict = PyDict_New())) return NULL;
    return Py_NewRef(p->dict);
}

static PyObject *get_cuda_array_interface(PyObject *self, void *c) {
    (void)c;
    return pc_py_cuda_array_interface(T(self));
}

static PyGetSetDef tensor_getset[] = {
    {"__cuda_array_interface__", get_cuda_array_interface, NULL,
     "CUDA array interface (v3) of a CUDA tensor; absent on CPU tensors.", NULL},
    {"shape", get_shape, NULL, "The size of each dimension, as a tuple.", NULL},
    {"dtype", get_dtype, NULL, "The element type.", NULL},
    {"device", get_device, NULL, "The device holding the data.", NULL},
    {"ndim", get_ndim, NULL, "Number of dimensions.", NULL},
    {"requires_grad", get_requires_grad, set_requires_grad,
     "Whether autograd records operations on this tensor.", NULL},
    {"grad", get_grad, set_grad, "Accumulated gradient (leaves) or None.", NULL},
    {"grad_fn", get_grad_fn, NULL, "The autograd node that produced this tensor, or None.", NULL},
    {"is_leaf", get_is_leaf, NULL, "True when the tensor has no grad_fn.", NULL},
    {"data", get_data, set_data, "A view of the values without autograd history.", NULL},
    {"_version", get_version, NULL, "In-place modification counter of the storage.", NULL},
    {"_is_param", get_is_param, set_is_param, "Marks nn.Parameter tensors.", NULL},
    {"is_cuda", get_is_cuda, NULL, "True when the tensor lives on a CUDA device.", NULL},
    {"__dict__", get_dict, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

/* ---- NumPy interop ---- */

/* Reading values out of a tensor while a trace records would freeze data-dependent values
 * into the Program silently; refuse instead (torch's export refuses too). */
static PcStatus check_not_tracing(const char *what) {
    if (pc_trace_active())
        return pc_set_error(PC_ERR_RUNTIME,
                            "%s() on a tensor while pipeline() traces the model: a value read "
                            "into Python would be frozen into the traced program. Keep the "
                            "computation in tensor ops (data-dependent Python values and "
                            "control flow cannot be traced)",
                            what);
    return PC_OK;
}


static int pc_to_npy_type(PcDType dt) {
    switch (dt) {
    case PC_FLOAT32: return NPY_FLOAT32;
    case PC_FLOAT64: return NPY_FLOAT64;
    case PC_FLOAT16: return NPY_FLOAT16;
    case PC_INT64: return NPY_INT64;
    case PC_BOOL: return NPY_BOOL;
    default: return -1;
    }
}

/* A NumPy array viewing a CPU tensor (shares memory; keeps `owner` alive) or, for CUDA and
 * bfloat16 tensors, a copy. New reference. */
PyObject *pc_py_tensor_numpy(PyObject *self) {
    PcTensor *t = T(self);
    PcStatus tst = check_not_tracing("numpy");
    if (tst != PC_OK) return pc_py_raise(tst);
    if (t->requires_grad) {
        PyErr_SetString(PyExc_RuntimeError, "Can't call numpy() on Tensor that requires grad. "
                                            "Use tensor.detach().numpy() instead.");
        return NULL;
    }
    PcTensor *host = NULL;
    PyObject *owner = self;
    PcStatus st;
    Py_INCREF(owner);
    if (t->device.type != PC_CPU || t->dtype == PC_BFLOAT16) {
        PcDevice cpu = {PC_CPU, 0};
        PcDType dt = t->dtype == PC_BFLOAT16 ? PC_FLOAT32 : t->dtype;
        bool was = pc_grad_enabled();
        pc_set_grad_enabled(false);
        Py_BEGIN_ALLOW_THREADS
        st = pc_op_to(t, dt, cpu, &host);
        Py_END_ALLOW_THREADS
        pc_set_grad_enabled(was);
        Py_DECREF(owner);
        if (st != PC_OK) return pc_py_raise(st);
        if (host == t) { /* cannot happen, but keep ownership right */
            pc_tensor_decref(host);
            host = NULL;
            owner = Py_NewRef(self);
        } else {
            owner = pc_py_wrap(host);
            if (!owner) return NULL;
        }
        t = T(owner);
    }
    npy_intp dims[PC_MAX_DIMS], strides[PC_MAX_DIMS];
    size_t item = pc_dtype_size(t->dtype);
    for (int i = 0; i < t->ndim; i++) {
        dims[i] = (npy_intp)t->shape[i];
        strides[i] = (npy_intp)(t->strides[i] * (int64_t)item);
    }
    PyObject *arr = PyArray_New(&PyArray_Type, t->ndim, dims, pc_to_npy_type(t->dtype), strides,
                                pc_tensor_data(t), (int)item, NPY_ARRAY_WRITEABLE, NULL);
    if (!arr) {
        Py_DECREF(owner);
        return NULL;
    }
    if (PyArray_SetBaseObject((PyArrayObject *)arr, owner) < 0) { /* steals owner */
        Py_DECREF(arr);
        return NULL;
    }
    return arr;
}

static void release_numpy(void *data, void *ctx) {
    (void)data;
    PyGILState_STATE g = PyGILState_Ensure();
    Py_DECREF((PyObject *)ctx);
    PyGILState_Release(g);
}

/* _C.from_numpy(ndarray) -> Tensor sharing the array's memory. New reference. */
PyObject *pc_py_from_numpy(PyObject *mod, PyObject *obj) {
    (void)mod;
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "from_numpy: expected a numpy.ndarray, got %.100s",
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *arr = (PyArrayObject *)obj;
    PcDType dt;
    switch (PyArray_TYPE(arr)) {
    case NPY_FLOAT32: dt = PC_FLOAT32; break;
    case NPY_FLOAT64: dt = PC_FLOAT64; break;
    case NPY_FLOAT16: dt = PC_FLOAT16; break;
    case NPY_INT64: dt = PC_INT64; break;
    case NPY_BOOL: dt = PC_BOOL; break;
    default:
        PyErr_Format(PyExc_TypeError,
                     "from_numpy: can't convert np.ndarray of type %R; the supported types "
                     "are float64, float32, float16, int64 and bool",
                     (PyObject *)PyArray_DESCR(arr));
        return NULL;
    }
    int ndim = PyArray_NDIM(arr);
    if (ndim > PC_MAX_DIMS) {
        PyErr_Format(PyExc_ValueError, "from_numpy: at most %d dimensions, got %d", PC_MAX_DIMS,
                     ndim);
        return NULL;
    }
    if (!PyArray_ISALIGNED(arr) || PyArray_ISBYTESWAPPED(arr)) {
        PyErr_SetString(PyExc_ValueError,
                        "from_numpy: the array must be aligned and in native byte order");
        return NULL;
    }
    int64_t shape[PC_MAX_DIMS], strides[PC_MAX_DIMS];
    int64_t item = (int64_t)pc_dtype_size(dt);
    int64_t lo = 0, hi = 0; /* byte extent relative to data */
    for (int i = 0; i < ndim; i++) {
        shape[i] = PyArray_DIM(arr, i);
        npy_intp sb = PyArray_STRIDE(arr, i);
        if (sb < 0) {
            PyErr_SetString(PyExc_ValueError,
                            "from_numpy: at least one stride in the given numpy array is "
                            "negative; copy the array first (np.ascontiguousarray)");
            return NULL;
        }
        if (sb % item) {
            PyErr_SetString(PyExc_ValueError,
                            "from_numpy: strides must be multiples of the element size");
            return NULL;
        }
        strides[i] = sb / item;
        if (shape[i] > 0) hi += (shape[i] - 1) * sb;
    }
    size_t nbytes = (size_t)(hi - lo + item);
    PcDevice cpu = {PC_CPU, 0};
    PcStorage *s;
    PcStatus st = pc_storage_wrap(cpu, PyArray_DATA(arr), nbytes, release_numpy, obj, &s);
    if (st != PC_OK) return pc_py_raise(st);
    Py_INCREF(obj); /* owned by the storage's release hook */
    PcTensor *t;
    st = pc_tensor_view_of(s, 0, ndim, shape, strides, dt, &t);
    pc_storage_decref(s);
    if (st != PC_OK) return pc_py_raise(st);
    return pc_py_wrap(t);
}

int pc_py_tensor_numpy_init(void) {
    import_array1(-1);
    return 0;
}

/* ---- indexing ---- */

/* Apply one index element (int, slice, None, Ellipsis handled by caller) at dim *d. */
static PcStatus index_one(PcTensor **cur, PyObject *idx, int *d) {
    PcTensor *t = *cur, *out = NULL;
    PcStatus st;
    PcCall c;
    memset(&c, 0, sizeof c);
    c.n_in = 1;
    c.n_out = 1;
    if (idx == Py_None) {
        c.opc = PC_OPC_UNSQUEEZE;
        c.ints[0] = *d;
        st = pc_py_call_run(&c, &t, &out);
        (*d)++;
    } else if (PySlice_Check(idx)) {
        if (*d >= t->ndim)
            return pc_set_error(PC_ERR_INDEX, "too many indices for tensor of dimension %d",
                                t->ndim);
        Py_ssize_t start, stop, step;
        if (PySlice_Unpack(idx, &start, &stop, &step) < 0) return PC_ERR_PYTHON;
        if (step <= 0)
            return pc_set_error(PC_ERR_INVALID, "step must be greater than zero");
        if (start < 0 || stop < 0) {
            /* counted from the end: resolved with this size, which a trace then bakes in */
            pc_trace_note_shape_read(pc_trace_active(), t);
            PySlice_AdjustIndices((Py_ssize_t)t->shape[*d], &start, &stop, step);
            if (stop < start) stop = start;
        } /* else the op clamps (an open stop stays PY_SSIZE_T_MAX): replays on any size */
        c.opc = PC_OPC_SLICE;
        c.ints[0] = *d;
        c.sizes[0] = start;
        c.sizes[1] = stop;
        c.sizes[2] = step;
        st = pc_py_call_run(&c, &t, &out);
        (*d)++;
    } else if (PyLong_Check(idx) || PyIndex_Check(idx)) {
        if (*d >= t->ndim)
            return pc_set_error(PC_ERR_INDEX, "too many indices for tensor of dimension %d",
                                t->ndim);
        Py_ssize_t i = PyNumber_AsSsize_t(idx, PyExc_IndexError);
        if (i == -1 && PyErr_Occurred()) return PC_ERR_PYTHON;
        c.opc = PC_OPC_SELECT;
        c.ints[0] = *d;
        c.sizes[0] = i;
        st = pc_py_call_run(&c, &t, &out);
    } else {
        return pc_set_error(PC_ERR_TYPE,
                            "only integers, slices (`:`), ellipsis (`...`) and None are valid "
                            "tensor indices (got %s)",
                            Py_TYPE(idx)->tp_name);
    }
    if (st != PC_OK) return st;
    pc_tensor_decref(t);
    *cur = out;
    return PC_OK;
}

/* The view selected by `key`. New reference in *out. */
static PcStatus index_view(PcTensor *t, PyObject *key, PcTensor **out) {
    PyObject *items = PyTuple_Check(key) ? Py_NewRef(key) : PyTuple_Pack(1, key);
    if (!items) return PC_ERR_PYTHON;
    Py_ssize_t n = PyTuple_GET_SIZE(items);
    int consumed = 0, ell = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *it = PyTuple_GET_ITEM(items, i);
        if (it == Py_Ellipsis) {
            if (ell >= 0) {
                Py_DECREF(items);
                return pc_set_error(PC_ERR_INDEX, "an index can only have a single ellipsis");
            }
            ell = (int)i;
        } else if (it != Py_None) {
            consumed++;
        }
    }
    pc_tensor_incref(t);
    PcTensor *cur = t;
    int d = 0;
    PcStatus st = PC_OK;
    for (Py_ssize_t i = 0; i < n && st == PC_OK; i++) {
        PyObject *it = PyTuple_GET_ITEM(items, i);
        if (it == Py_Ellipsis) {
            int skip = t->ndim - consumed;
            d += skip > 0 ? skip : 0;
            continue;
        }
        st = index_one(&cur, it, &d);
    }
    Py_DECREF(items);
    if (st != PC_OK) {
        pc_tensor_decref(cur);
        return st;
    }
    *out = cur;
    return PC_OK;
}

static PyObject *tensor_getitem(PyObject *self, PyObject *key) {
    PcTensor *out = NULL;
    PcStatus st = index_view(T(self), key, &out);
    if (st != PC_OK) return pc_py_raise(st);
    return pc_py_wrap(out);
}

static int tensor_setitem(PyObject *self, PyObject *key, PyObject *value) {
    if (!value) {
        PyErr_SetString(PyExc_TypeError, "tensor items cannot be deleted");
        return -1;
    }
    PcTensor *view;
    PcStatus st = index_view(T(self), key, &view);
    if (st != PC_OK) {
        pc_py_raise(st);
        return -1;
    }
    PcCall c;
    memset(&c, 0, sizeof c);
    c.n_out = 1;
    PcTensor *res = NULL;
    if (pc_py_is_tensor(value)) {
        PcTensor *in[2] = {view, T(value)};
        c.opc = PC_OPC_COPY_;
        c.n_in = 2;
        st = pc_py_call_run(&c, in, &res);
    } else {
        double v = PyFloat_AsDouble(value);
        if (v == -1.0 && PyErr_Occurred()) {
            pc_tensor_decref(view);
            PyErr_Format(PyExc_TypeError, "can only assign a tensor or a number, got %.100s",
                         Py_TYPE(value)->tp_name);
            return -1;
        }
        c.opc = PC_OPC_FILL_;
        c.n_in = 1;
        c.d[0] = v;
        st = pc_py_call_run(&c, &view, &res);
    }
    pc_tensor_decref(res);
    pc_tensor_decref(view);
    if (st != PC_OK) {
        pc_py_raise(st);
        return -1;
    }
    return 0;
}

static Py_ssize_t tensor_len(PyObject *self) {
    PcTensor *t = T(self);
    pc_trace_note_shape_read(pc_trace_active(), t);
    if (t->ndim == 0) {
        PyErr_SetString(PyExc_TypeError, "len() of a 0-d tensor");
        return -1;
    }
    return (Py_ssize_t)t->shape[0];
}

/* ---- number protocol ---- */

/* Scalar value of a Python number, or -1 with no error set when obj is not a number. */
static int as_scalar(PyObject *obj, double *out) {
    if (PyFloat_Check(obj)) {
        *out = PyFloat_AS_DOUBLE(obj);
        return 0;
    }
    if (PyLong_Check(obj)) {
        *out = PyLong_AsDouble(obj);
        return (*out == -1.0 && PyErr_Occurred()) ? -2 : 0;
    }
    if (!pc_py_is_tensor(obj) && PyNumber_Check(obj) && !PySequence_Check(obj)) {
        *out = PyFloat_AsDouble(obj);
        if (*out == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            return -1;
        }
        return 0;
    }
    return -1;
}

/* A 0-d tensor of dtype holding v, on dev. New reference. */
static PcStatus scalar_tensor(double v, PcDType dt, PcDevice dev, PcTensor **out) {
    return pc_op_full(0, NULL, v, dt, dev, out);
}

/* Run one elementwise/matmul call through the recording path. New reference in *out. */
static PcStatus run1(PcOpcode opc, int n_in, PcTensor **in, int op, double d0, PcTensor **out) {
    PcCall c;
    memset(&c, 0, sizeof c);
    c.opc = opc;
    c.n_in = n_in;
    c.n_out = 1;
    c.ints[0] = op;
    c.d[0] = d0;
    return pc_py_call_run(&c, in, out);
}

/* a OP b where at least one is a tensor. */
static PyObject *binary_number(PyObject *a, PyObject *b, PcBinaryOp op) {
    PcTensor *out = NULL;
    PcStatus st;
    int ta = pc_py_is_tensor(a), tb = pc_py_is_tensor(b);
    if (ta && tb) {
        PcTensor *in[2] = {T(a), T(b)};
        st = run1(PC_OPC_BINARY, 2, in, op, 1.0, &out);
        if (st != PC_OK) return pc_py_raise(st);
        return pc_py_wrap(out);
    }
    PyObject *tobj = ta ? a : b, *other = ta ? b : a;
    double s;
    int r = as_scalar(other, &s);
    if (r == -2) return NULL;
    if (r < 0) Py_RETURN_NOTIMPLEMENTED;
    PcTensor *t = T(tobj);
    PcTensor *cast = NULL;
    if (!pc_dtype_is_float(t->dtype) && PyFloat_Check(other)) { /* int tensor (op) float */
        PcCall c;
        memset(&c, 0, sizeof c);
        c.opc = PC_OPC_TO;
        c.n_in = 1;
        c.n_out = 1;
        c.ints[0] = PC_FLOAT32;
        c.ints[1] = (int)t->device.type;
        c.ints[2] = t->device.index;
        st = pc_py_call_run(&c, &t, &cast);
        if (st != PC_OK) return pc_py_raise(st);
        t = cast;
    }
    if (op == PC_B_ADD) {
        st = run1(PC_OPC_UNARY, 1, &t, PC_U_ADD_S, s, &out);
    } else if (op == PC_B_MUL) {
        st = run1(PC_OPC_UNARY, 1, &t, PC_U_MUL_S, s, &out);
    } else if (op == PC_B_SUB) {
        st = ta ? run1(PC_OPC_UNARY, 1, &t, PC_U_ADD_S, -s, &out)
                : run1(PC_OPC_UNARY, 1, &t, PC_U_RSUB_S, s, &out);
    } else if (op == PC_B_DIV && !ta) {
        st = run1(PC_OPC_UNARY, 1, &t, PC_U_RDIV_S, s, &out);
    } else { /* tensor / scalar: true division through a 0-d tensor */
        PcTensor *sc;
        st = scalar_tensor(s, t->dtype, t->device, &sc);
        if (st == PC_OK) {
            PcTensor *in[2] = {t, sc};
            st = run1(PC_OPC_BINARY, 2, in, op, 1.0, &out);
            pc_tensor_decref(sc);
        }
    }
    pc_tensor_decref(cast);
    if (st != PC_OK) return pc_py_raise(st);
    return pc_py_wrap(out);
}

static PyObject *nb_add(PyObject *a, PyObject *b) { return binary_number(a, b, PC_B_ADD); }
static PyObject *nb_sub(PyObject *a, PyObject *b) { return binary_number(a, b, PC_B_SUB); }
static PyObject *nb_mul(PyObject *a, PyObject *b) { return binary_number(a, b, PC_B_MUL); }
static PyObject *nb_div(PyObject *a, PyObject *b) { return binary_number(a, b, PC_B_DIV); }

static PyObject *inplace_number(PyObject *a, PyObject *b, PcBinaryOp op) {
    PcStatus st;
    PcTensor *res = NULL;
    PcTensor *self = T(a);
    if (pc_py_is_tensor(b)) {
        PcTensor *in[2] = {self, T(b)};
        st = run1(PC_OPC_BINARY_, 2, in, op, 1.0, &res);
    } else {
        double s;
        int r = as_scalar(b, &s);
        if (r == -2) return NULL;
        if (r < 0) Py_RETURN_NOTIMPLEMENTED;
        if (op == PC_B_ADD) {
            st = run1(PC_OPC_UNARY_, 1, &self, PC_U_ADD_S, s, &res);
        } else if (op == PC_B_SUB) {
            st = run1(PC_OPC_UNARY_, 1, &self, PC_U_ADD_S, -s, &res);
        } else if (op == PC_B_MUL) {
            st = run1(PC_OPC_UNARY_, 1, &self, PC_U_MUL_S, s, &res);
        } else {
            PcTensor *sc;
            st = scalar_tensor(s, self->dtype, self->device, &sc);
            if (st == PC_OK) {
                PcTensor *in[2] = {self, sc};
                st = run1(PC_OPC_BINARY_, 2, in, op, 1.0, &res);
                pc_tensor_decref(sc);
            }
        }
    }
    pc_tensor_decref(res);
    if (st != PC_OK) return pc_py_raise(st);
    return Py_NewRef(a);
}

static PyObject *nb_iadd(PyObject *a, PyObject *b) { return inplace_number(a, b, PC_B_ADD); }
static PyObject *nb_isub(PyObject *a, PyObject *b) { return inplace_number(a, b, PC_B_SUB); }
static PyObject *nb_imul(PyObject *a, PyObject *b) { return inplace_number(a, b, PC_B_MUL); }
static PyObject *nb_idiv(PyObject *a, PyObject *b) { return inplace_number(a, b, PC_B_DIV); }

static PyObject *nb_matmul(PyObject *a, PyObject *b) {
    if (!pc_py_is_tensor(a) || !pc_py_is_tensor(b)) Py_RETURN_NOTIMPLEMENTED;
    PcTensor *out = NULL;
    PcTensor *in[2] = {T(a), T(b)};
    PcStatus st = run1(PC_OPC_MATMUL, 2, in, 0, 0.0, &out);
    if (st != PC_OK) return pc_py_raise(st);
    return pc_py_wrap(out);
}

static PyObject *unary_number(PyObject *a, PcUnaryOp op, double s) {
    PcTensor *out = NULL;
    PcTensor *t = T(a);
    PcStatus st = run1(PC_OPC_UNARY, 1, &t, op, s, &out);
    if (st != PC_OK) return pc_py_raise(st);
    return pc_py_wrap(out);
}

static PyObject *nb_neg(PyObject *a) { return unary_number(a, PC_U_NEG, 0); }
static PyObject *nb_abs(PyObject *a) { return unary_number(a, PC_U_ABS, 0); }
static PyObject *nb_pos(PyObject *a) { return Py_NewRef(a); }

static PyObject *nb_pow(PyObject *a, PyObject *b, PyObject *mod) {
    if (mod != Py_None) Py_RETURN_NOTIMPLEMENTED;
    if (!pc_py_is_tensor(a)) Py_RETURN_NOTIMPLEMENTED;
    double s;
    int r = as_scalar(b, &s);
    if (r == -2) return NULL;
    if (r < 0) {
        PyErr_SetString(PyExc_TypeError, "pow: the exponent must be a Python number");
        return NULL;
    }
    return unary_number(a, PC_U_POW, s);
}

/* Read the single element of t as a double. */
PcStatus pc_py_item(PcTensor *t, double *out) {
    PC_TRY(check_not_tracing("item"));
    if (pc_tensor_numel(t) != 1)
        return pc_set_error(PC_ERR_RUNTIME,
                            "a Tensor with %lld elements cannot be converted to a Python scalar",
                            (long long)pc_tensor_numel(t));
    PcTensor *host = NULL;
    PcDevice cpu = {PC_CPU, 0};
    PcDType want = t->dtype == PC_INT64 ? PC_INT64 : PC_FLOAT64;
    bool was = pc_grad_enabled();
    pc_set_grad_enabled(false);
    PcStatus st = pc_op_to(t, want, cpu, &host);
    pc_set_grad_enabled(was);
    PC_TRY(st);
    if (want == PC_INT64)
        *out = (double)*(int64_t *)pc_tensor_data(host);
    else
        *out = *(double *)pc_tensor_data(host);
    pc_tensor_decref(host);
    return PC_OK;
}

static int nb_bool(PyObject *a) {
    double v;
    if (pc_tensor_numel(T(a)) != 1) {
        PyErr_SetString(PyExc_RuntimeError,
                        "Boolean value of Tensor with more than one value is ambiguous");
        return -1;
    }
    PcStatus st = pc_py_item(T(a), &v);
    if (st != PC_OK) {
        pc_py_raise(st);
        return -1;
    }
    return v != 0.0;
}

static PyObject *nb_float(PyObject *a) {
    double v;
    PcStatus st = pc_py_item(T(a), &v);
    if (st != PC_OK) return pc_py_raise(st);
    return PyFloat_FromDouble(v);
}

static PyObject *nb_int(PyObject *a) {
    double v;
    PcStatus st = pc_py_item(T(a), &v);
    if (st != PC_OK) return pc_py_raise(st);
    return PyLong_FromDouble(v);
}

/* ---- comparisons and hashing ----
 * ==, !=, <, <=, >, >= are elementwise (bool tensors), as in torch, so `t == u` does not tell
 * whether t and u are one object: code that means identity says `is`, id() or uses tensors
 * as dict keys / set members (hashed by identity, found without calling ==). A Python number
 * on the left arrives here swapped (0 < t is t > 0); any other operand gives NotImplemented
 * (== and != then fall back to identity, the ordering operators raise TypeError). */

/* New reference (the bool result or NotImplemented); NULL with an exception. */
static PyObject *tensor_richcompare(PyObject *self, PyObject *other, int op) {
    static const PcBinaryOp ops[] = {[Py_LT] = PC_B_LT, [Py_LE] = PC_B_LE, [Py_EQ] = PC_B_EQ,
                                     [Py_NE] = PC_B_NE, [Py_GT] = PC_B_GT, [Py_GE] = PC_B_GE};
    return pc_py_compare(self, other, ops[op]);
}

/* object's identity hash: defining tp_richcompare would otherwise make the type unhashable. */
static Py_hash_t tensor_hash(PyObject *self) { return PyBaseObject_Type.tp_hash(self); }

/* ---- type spec ---- */

static PyMemberDef tensor_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(PcPyTensor, weakrefs), READONLY, NULL},
    {"__dictoffset__", T_PYSSIZET, offsetof(PcPyTensor, dict), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

int pc_py_tensor_type_init(PyObject *module) {
    static PyType_Slot slots[] = {
        {Py_tp_doc, (void *)"pipec.Tensor: an n-dimensional array on a CPU or CUDA device, "
                            "with reverse-mode autograd."},
        {Py_tp_new, (void *)tensor_new},
        {Py_tp_dealloc, (void *)tensor_dealloc},
        {Py_tp_traverse, (void *)tensor_traverse},
        {Py_tp_clear, (void *)tensor_clear},
        {Py_tp_getset, tensor_getset},
        {Py_tp_members, tensor_members},
        {Py_tp_methods, NULL}, /* filled below */
        {Py_mp_subscript, (void *)tensor_getitem},
        {Py_mp_ass_subscript, (void *)tensor_setitem},
        {Py_mp_length, (void *)tensor_len},
        {Py_tp_richcompare, (void *)tensor_richcompare},
        {Py_tp_hash, (void *)tensor_hash},
        {Py_nb_add, (void *)nb_add},
        {Py_nb_subtract, (void *)nb_sub},
        {Py_nb_multiply, (void *)nb_mul},
        {Py_nb_true_divide, (void *)nb_div},
        {Py_nb_inplace_add, (void *)nb_iadd},
        {Py_nb_inplace_subtract, (void *)nb_isub},
        {Py_nb_inplace_multiply, (void *)nb_imul},
        {Py_nb_inplace_true_divide, (void *)nb_idiv},
        {Py_nb_matrix_multiply, (void *)nb_matmul},
        {Py_nb_negative, (void *)nb_neg},
        {Py_nb_absolute, (void *)nb_abs},
        {Py_nb_positive, (void *)nb_pos},
        {Py_nb_power, (void *)nb_pow},
        {Py_nb_bool, (void *)nb_bool},
        {Py_nb_float, (void *)nb_float},
        {Py_nb_int, (void *)nb_int},
        {0, NULL},
    };
    for (PyType_Slot *s = slots; s->slot; s++)
        if (s->slot == Py_tp_methods) s->pfunc = pc_py_tensor_methods;
    static PyType_Spec spec = {
        .name = "pipec.Tensor",
        .basicsize = sizeof(PcPyTensor),
        .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
        .slots = slots,
    };
    PyObject *tp = PyType_FromModuleAndSpec(module, &spec, NULL);
    if (!tp) return -1;
    PcPyTensor_Type = (PyTypeObject *)tp;
    if (PyModule_AddObjectRef(module, "Tensor", tp) < 0) return -1;
    return pc_py_tensor_numpy_init();
}
