/* methods.c — Tensor methods and the matching module-level op functions of pipec._C.
 *
 * Every op entry point has one C function usable both as a Tensor method (self = the
 * tensor) and as a module function (self = the module; the tensor is the first positional
 * argument): OP_ENTRY peels it off. Arguments are parsed, the GIL is released around the
 * kernel work, and a failing PcStatus becomes an exception through pc_py_raise.
 * All functions return new references.
 */
#include "bindings.h"

#include "../ops/ops.h"
#include "../graph/program.h"
#include "dlpack.h"

#define T(o) (((PcPyTensor *)(o))->t)

/* ---- argument helpers ---- */

/* Result of an op call: wrap or raise. */
static PyObject *done(PcStatus st, PcTensor *out) {
    if (st != PC_OK) return pc_py_raise(st);
    return pc_py_wrap(out);
}

/* A call descriptor for opcode opc with n_in tensor inputs and one output. */
static PcCall mk(PcOpcode opc, int n_in) {
    PcCall c;
    memset(&c, 0, sizeof c);
    c.opc = opc;
    c.n_in = n_in;
    c.n_out = 1;
    return c;
}

/* Work big enough to be worth releasing the GIL for. */
static bool worth_releasing_gil(const PcCall *c, PcTensor *const *in) {
    for (int i = 0; i < c->n_in; i++)
        if (in[i] && (in[i]->device.type != PC_CPU || pc_tensor_numel(in[i]) >= (1 << 14)))
            return true;
    return false;
}

/* Run c (GIL released for large work) and record it when a trace is active on this
 * thread. Outputs are new references in outs[0..c->n_out). */
PcStatus pc_py_call_run(PcCall *c, PcTensor **in, PcTensor **outs) {
    PcStatus st;
    if (worth_releasing_gil(c, in)) {
        Py_BEGIN_ALLOW_THREADS
        st = pc_call_run(c, in, outs);
        Py_END_ALLOW_THREADS
    } else {
        st = pc_call_run(c, in, outs);
    }
    if (st != PC_OK) return st;
    PcTracer *tr = pc_trace_active();
    if (tr && (st = pc_trace_record(tr, c, in, outs)) != PC_OK) {
        for (int i = 0; i < c->n_out; i++) {
            pc_tensor_decref(outs[i]);
            outs[i] = NULL;
        }
    }
    return st;
}
#define call_run pc_py_call_run

/* src converted to dtype through a recorded call. New reference in *out. */
static PcStatus cast_recorded(PcTensor *src, PcDType dt, PcTensor **out) {
    PcCall c = mk(PC_OPC_TO, 1);
    c.ints[0] = (int)dt;
    c.ints[1] = (int)src->device.type;
    c.ints[2] = src->device.index;
    return call_run(&c, &src, out);
}

/* Single-output call: run, record, wrap. New reference. */
static PyObject *call_out(PcCall *c, PcTensor **in) {
    PcTensor *out = NULL;
    PcStatus st = call_run(c, in, &out);
    return done(st, out);
}

/* Parse an int dim from obj. */
static int as_int(PyObject *obj, const char *what, int *out) {
    if (!PyLong_Check(obj) && !PyIndex_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, got %.100s", what,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    long v = PyLong_AsLong(obj);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (v < -100000 || v > 100000) {
        PyErr_Format(PyExc_IndexError, "%s out of range: %ld", what, v);
        return -1;
    }
    *out = (int)v;
    return 0;
}

/* A shape from either varargs ints `(2, 3)` or one sequence `((2, 3),)`. */
static int parse_shape(PyObject *args, Py_ssize_t first, const char *what, int *ndim,
                       int64_t *shape) {
    Py_ssize_t n = PyTuple_GET_SIZE(args) - first;
    PyObject *seq = NULL;
    if (n == 1 && (PyTuple_Check(PyTuple_GET_ITEM(args, first)) ||
                   PyList_Check(PyTuple_GET_ITEM(args, first)))) {
        seq = PySequence_Fast(PyTuple_GET_ITEM(args, first), "shape");
    } else {
        seq = PyTuple_GetSlice(args, first, first + n);
    }
    if (!seq) return -1;
    Py_ssize_t m = PySequence_Fast_GET_SIZE(seq);
    if (m > PC_MAX_DIMS) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "%s: at most %d dimensions, got %zd", what, PC_MAX_DIMS, m);
        return -1;
    }
    for (Py_ssize_t i = 0; i < m; i++) {
        PyObject *it = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyLong_Check(it) && !PyIndex_Check(it)) {
            PyErr_Format(PyExc_TypeError, "%s: sizes must be ints, got %.100s at position %zd",
                         what, Py_TYPE(it)->tp_name, i);
            Py_DECREF(seq);
            return -1;
        }
        long long v = PyLong_AsLongLong(it);
        if (v == -1 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return -1;
        }
        shape[i] = v;
    }
    *ndim = (int)m;
    Py_DECREF(seq);
    return 0;
}

/* dim argument: None (-> n = 0), int, or tuple/list of ints. */
static int parse_dims(PyObject *obj, const char *what, int *dims, int *n) {
    *n = 0;
    if (!obj || obj == Py_None) return 0;
    if (PyTuple_Check(obj) || PyList_Check(obj)) {
        PyObject *seq = PySequence_Fast(obj, what);
        if (!seq) return -1;
        Py_ssize_t m = PySequence_Fast_GET_SIZE(seq);
        if (m > PC_MAX_DIMS) {
            Py_DECREF(seq);
            PyErr_Format(PyExc_ValueError, "%s: too many dims", what);
            return -1;
        }
        for (Py_ssize_t i = 0; i < m; i++) {
            if (as_int(PySequence_Fast_GET_ITEM(seq, i), what, &dims[i]) < 0) {
                Py_DECREF(seq);
                return -1;
            }
        }
        Py_DECREF(seq);
        *n = (int)m;
        if (m == 0) {
            /* an explicit empty tuple means "all dims" as well */
        }
        return 0;
    }
    if (as_int(obj, what, &dims[0]) < 0) return -1;
    *n = 1;
    return 0;
}

static int parse_dtype_opt(PyObject *obj, PcDType dflt, PcDType *out) {
    if (!obj || obj == Py_None) {
        *out = dflt;
        return 0;
    }
    return pc_py_parse_dtype(obj, "dtype", out);
}

static int parse_device_opt(PyObject *obj, PcDevice *out) {
    if (!obj || obj == Py_None) {
        out->type = PC_CPU;
        out->index = 0;
        return 0;
    }
    return pc_py_parse_device(obj, "device", out);
}

static PcTensor *tensor_arg(PyObject *obj, const char *what) { return pc_py_unwrap(obj, what); }

/* Make `self` the tensor: for module-level calls, take it from args[0]. Defines `a` = the
 * remaining positional args (owned when sliced). */
#define OP_ENTRY(name, impl)                                                                    \
    static PyObject *name(PyObject *self, PyObject *args, PyObject *kw) {                      \
        if (pc_py_is_tensor(self)) return impl(self, args, kw);                                \
        if (PyTuple_GET_SIZE(args) < 1) {                                                      \
            PyObject *inp = kw ? PyDict_GetItemString(kw, "input") : NULL;                     \
            if (!inp) {                                                                        \
                PyErr_SetString(PyExc_TypeError, #name "() missing required argument 'input'"); \
                return NULL;                                                                   \
            }                                                                                  \
            if (!pc_py_is_tensor(inp)) {                                                       \
                PyErr_Format(PyExc_TypeError, #name "(): input must be a pipec.Tensor, got %.100s", \
                             Py_TYPE(inp)->tp_name);                                           \
                return NULL;                                                                   \
            }                                                                                  \
            PyObject *kw2 = PyDict_Copy(kw);                                                   \
            if (!kw2) return NULL;                                                             \
            PyDict_DelItemString(kw2, "input");                                                \
            PyObject *r = impl(inp, args, kw2);                                                \
            Py_DECREF(kw2);                                                                    \
            return r;                                                                          \
        }                                                                                      \
        PyObject *first = PyTuple_GET_ITEM(args, 0);                                           \
        if (!pc_py_is_tensor(first)) {                                                         \
            PyErr_Format(PyExc_TypeError, #name "(): argument 'input' must be a pipec.Tensor, " \
                         "got %.100s", Py_TYPE(first)->tp_name);                               \
            return NULL;                                                                       \
        }                                                                                      \
        PyObject *rest = PyTuple_GetSlice(args, 1, PyTuple_GET_SIZE(args));                   \
        if (!rest) return NULL;                                                                \
        PyObject *r = impl(first, rest, kw);                                                   \
        Py_DECREF(rest);                                                                       \
        return r;                                                                              \
    }

/* ---- simple queries ---- */

static PyObject *i_numel(PyObject *self, PyObject *args, PyObject *kw) {
    (void)args; (void)kw;
    pc_trace_note_shape_read(pc_trace_active(), T(self));
    return PyLong_FromLongLong(pc_tensor_numel(T(self)));
}
OP_ENTRY(f_numel, i_numel)

static PyObject *m_dim(PyObject *self, PyObject *unused) {
    (void)unused;
    return PyLong_FromLong(T(self)->ndim);
}

static PyObject *m_size(PyObject *self, PyObject *args) {
    PcTensor *t = T(self);
    pc_trace_note_shape_read(pc_trace_active(), t);
    PyObject *d = NULL;
    if (!PyArg_ParseTuple(args, "|O:size", &d)) return NULL;
    if (!d || d == Py_None) {
        PyObject *tup = PyTuple_New(t->ndim);
        if (!tup) return NULL;
        for (int i = 0; i < t->ndim; i++)
            PyTuple_SET_ITEM(tup, i, PyLong_FromLongLong(t->shape[i]));
        return tup;
    }
    int dim;
    if (as_int(d, "dim", &dim) < 0) return NULL;
    int nd = t->ndim ? t->ndim : 1;
    if (dim < -nd || dim >= nd) {
        PyErr_Format(PyExc_IndexError,
                     "Dimension out of range (expected to be in range of [%d, %d], but got %d)",
                     -nd, nd - 1, dim);
        return NULL;
    }
    if (dim < 0) dim += nd;
    return PyLong_FromLongLong(t->ndim ? t->shape[dim] : 1);
}

static PyObject *m_stride(PyObject *self, PyObject *args) {
    PcTensor *t = T(self);
    PyObject *d = NULL;
    if (!PyArg_ParseTuple(args, "|O:stride", &d)) return NULL;
    if (!d || d == Py_None) {
        PyObject *tup = PyTuple_New(t->ndim);
        if (!tup) return NULL;
        for (int i = 0; i < t->ndim; i++)
            PyTuple_SET_ITEM(tup, i, PyLong_FromLongLong(t->strides[i]));
        return tup;
    }
    int dim;
    if (as_int(d, "dim", &dim) < 0) return NULL;
    if (dim < -t->ndim || dim >= t->ndim) {
        PyErr_Format(PyExc_IndexError, "Dimension out of range (got %d for %d dims)", dim,
                     t->ndim);
        return NULL;
    }
    if (dim < 0) dim += t->ndim;
    return PyLong_FromLongLong(t->strides[dim]);
}

static PyObject *m_storage_offset(PyObject *self, PyObject *unused) {
    (void)unused;
    return PyLong_FromLongLong(T(self)->offset);
}

static PyObject *m_data_ptr(PyObject *self, PyObject *unused) {
    (void)unused;
    return PyLong_FromVoidPtr(pc_tensor_data(T(self)));
}

static PyObject *m_element_size(PyObject *self, PyObject *unused) {
    (void)unused;
    return PyLong_FromSize_t(pc_dtype_size(T(self)->dtype));
}

static PyObject *m_is_contiguous(PyObject *self, PyObject *unused) {
    (void)unused;
    return PyBool_FromLong(pc_tensor_is_contiguous(T(self)));
}

static PyObject *m_item(PyObject *self, PyObject *unused) {
    (void)unused;
    double v;
    PcStatus st = pc_py_item(T(self), &v);
    if (st != PC_OK) return pc_py_raise(st);
    if (T(self)->dtype == PC_INT64) return PyLong_FromDouble(v);
    if (T(self)->dtype == PC_BOOL) return PyBool_FromLong(v != 0.0);
    return PyFloat_FromDouble(v);
}

static PyObject *m_numpy(PyObject *self, PyObject *unused) {
    (void)unused;
    return pc_py_tensor_numpy(self);
}

static PyObject *m_requires_grad_(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"requires_grad", NULL};
    int on = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|p:requires_grad_", kwlist, &on)) return NULL;
    PyObject *v = PyBool_FromLong(on);
    int r = PyObject_SetAttrString(self, "requires_grad", v);
    Py_DECREF(v);
    if (r < 0) return NULL;
    return Py_NewRef(self);
}

/* Tensor._make_subclass(cls, data, requires_grad=False): an instance of cls sharing data's
 * storage (used by nn.Parameter). */
static PyObject *m_make_subclass(PyObject *unused, PyObject *args, PyObject *kw) {
    (void)unused;
    static char *kwlist[] = {"cls", "data", "requires_grad", NULL};
    PyObject *cls, *data;
    int rg = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|p:_make_subclass", kwlist, &cls, &data, &rg))
        return NULL;
    if (!PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls, PcPyTensor_Type)) {
        PyErr_SetString(PyExc_TypeError, "_make_subclass: cls must be a Tensor subclass");
        return NULL;
    }
    PcTensor *src = tensor_arg(data, "data");
    if (!src) return NULL;
    if (rg && !pc_dtype_is_float(src->dtype)) {
        PyErr_Format(PyExc_RuntimeError,
                     "only Tensors of floating point dtype can require gradients (got %s)",
                     pc_dtype_name(src->dtype));
        return NULL;
    }
    PcTensor *t;
    PcStatus st = pc_op_detach(src, &t);
    if (st != PC_OK) return pc_py_raise(st);
    PcPyTensor *obj = (PcPyTensor *)((PyTypeObject *)cls)->tp_alloc((PyTypeObject *)cls, 0);
    if (!obj) {
        pc_tensor_decref(t);
        return NULL;
    }
    obj->t = t;
    t->pyobj = obj;
    t->requires_grad = rg != 0;
    return (PyObject *)obj;
}

/* ---- conversions ---- */

static PyObject *i_detach(PyObject *self, PyObject *args, PyObject *kw) {
    (void)args; (void)kw;
    PcTensor *in[1] = {T(self)};
    PcCall c = mk(PC_OPC_DETACH, 1);
    return call_out(&c, in);
}
OP_ENTRY(f_detach, i_detach)

static PyObject *m_detach_(PyObject *self, PyObject *unused) {
    (void)unused;
    PcTensor *t = T(self);
    PcNode *fn = t->grad_fn;
    t->grad_fn = NULL;
    t->requires_grad = false;
    pc_node_decref(fn);
    return Py_NewRef(self);
}

static PyObject *i_clone(PyObject *self, PyObject *args, PyObject *kw) {
    (void)args; (void)kw;
    PcTensor *in[1] = {T(self)};
    PcCall c = mk(PC_OPC_CLONE, 1);
    return call_out(&c, in);
}
OP_ENTRY(f_clone, i_clone)

static PyObject *m_contiguous(PyObject *self, PyObject *unused) {
    (void)unused;
    PcTensor *in[1] = {T(self)};
    PcCall c = mk(PC_OPC_CONTIGUOUS, 1);
    return call_out(&c, in);
}

static PyObject *to_impl(PyObject *self, PcDType dt, PcDevice dev) {
    PcTensor *in[1] = {T(self)};
    PcCall c = mk(PC_OPC_TO, 1);
    c.ints[0] = (int)dt;
    c.ints[1] = (int)dev.type;
    c.ints[2] = dev.index;
    return call_out(&c, in);
}

/* to(dtype) / to(device) / to(device, dtype) / to(tensor) / to(device=, dtype=) */
static PyObject *m_to(PyObject *self, PyObject *args, PyObject *kw) {
    PcTensor *t = T(self);
    PcDType dt = t->dtype;
    PcDevice dev = t->device;
    Py_ssize_t n = PyTuple_GET_SIZE(args);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *a = PyTuple_GET_ITEM(args, i);
        if (pc_py_is_tensor(a)) {
            dt = T(a)->dtype;
            dev = T(a)->device;
        } else if (pc_py_parse_dtype(a, "dtype", &dt) == 0) {
            /* parsed a dtype */
        } else {
            PyErr_Clear();
            if (pc_py_parse_device(a, "to", &dev) < 0) {
                PyErr_Clear();
                PyErr_Format(PyExc_TypeError,
                             "to() received an invalid combination of arguments: expected a "
                             "dtype, a device or a tensor, got %.100s",
                             Py_TYPE(a)->tp_name);
                return NULL;
            }
        }
    }
    if (kw) {
        PyObject *k, *v;
        Py_ssize_t pos = 0;
        while (PyDict_Next(kw, &pos, &k, &v)) {
            const char *name = PyUnicode_AsUTF8(k);
            if (!name) return NULL;
            if (strcmp(name, "dtype") == 0) {
                if (v != Py_None && pc_py_parse_dtype(v, "dtype", &dt) < 0) return NULL;
            } else if (strcmp(name, "device") == 0) {
                if (v != Py_None && pc_py_parse_device(v, "device", &dev) < 0) return NULL;
            } else if (strcmp(name, "non_blocking") == 0 || strcmp(name, "copy") == 0) {
                /* accepted for compatibility */
            } else {
                PyErr_Format(PyExc_TypeError, "to() got an unexpected keyword argument '%s'",
                             name);
                return NULL;
            }
        }
    }
    return to_impl(self, dt, dev);
}

#define DTYPE_METHOD(fname, DT)                                      \
    static PyObject *fname(PyObject *self, PyObject *unused) {       \
        (void)unused;                                                \
        return to_impl(self, DT, T(self)->device);                   \
    }
DTYPE_METHOD(m_float, PC_FLOAT32)
DTYPE_METHOD(m_double, PC_FLOAT64)
DTYPE_METHOD(m_half, PC_FLOAT16)
DTYPE_METHOD(m_bfloat16, PC_BFLOAT16)
DTYPE_METHOD(m_long, PC_INT64)
DTYPE_METHOD(m_bool, PC_BOOL)

static PyObject *m_cpu(PyObject *self, PyObject *unused) {
    (void)unused;
    PcDevice cpu = {PC_CPU, 0};
    return to_impl(self, T(self)->dtype, cpu);
}

static PyObject *m_cuda(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"device", "non_blocking", NULL};
    PyObject *d = NULL;
    int nb = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|Op:cuda", kwlist, &d, &nb)) return NULL;
    PcDevice dev = {PC_CUDA, 0};
    if (d && d != Py_None && pc_py_parse_device(d, "device", &dev) < 0) return NULL;
    if (dev.type != PC_CUDA) {
        PyErr_SetString(PyExc_ValueError, "cuda(): device must be a CUDA device");
        return NULL;
    }
    return to_impl(self, T(self)->dtype, dev);
}

/* ---- in-place fills ---- */

static PyObject *m_zero_(PyObject *self, PyObject *unused) {
    (void)unused;
    PcTensor *in[1] = {T(self)};
    PcCall c = mk(PC_OPC_ZERO_, 1);
    return call_out(&c, in);
}

static PyObject *m_fill_(PyObject *self, PyObject *arg) {
    double v;
    if (pc_py_is_tensor(arg)) {
        PcStatus st = pc_py_item(T(arg), &v);
        if (st != PC_OK) return pc_py_raise(st);
    } else {
        v = PyFloat_AsDouble(arg);
        if (v == -1.0 && PyErr_Occurred()) {
            PyErr_Format(PyExc_TypeError, "fill_(): value must be a number, got %.100s",
                         Py_TYPE(arg)->tp_name);
            return NULL;
        }
    }
    PcTensor *in[1] = {T(self)};
    PcCall c = mk(PC_OPC_FILL_, 1);
    c.d[0] = v;
    return call_out(&c, in);
}

static PyObject *m_uniform_(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"a", "b", "generator", NULL};
    double a = 0.0, b = 1.0;
    PyObject *gen = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|ddO:uniform_", kwlist, &a, &b, &gen))
        return NULL;
    PcStatus st = pc_op_uniform_(T(self), a, b);
    if (st != PC_OK) return pc_py_raise(st);
    return Py_NewRef(self);
}

static PyObject *m_normal_(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"mean", "std", "generator", NULL};
    double m = 0.0, s = 1.0;
    PyObject *gen = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|ddO:normal_", kwlist, &m, &s, &gen))
        return NULL;
    if (s < 0) {
        char msg[96];
        snprintf(msg, sizeof msg, "normal_ expects std >= 0.0, but found std %g", s);
        PyErr_SetString(PyExc_ValueError, msg);
        return NULL;
    }
    PcStatus st = pc_op_normal_(T(self), m, s);
    if (st != PC_OK) return pc_py_raise(st);
    return Py_NewRef(self);
}

static PyObject *m_copy_(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"src", "non_blocking", NULL};
    PyObject *src;
    int nb = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|p:copy_", kwlist, &src, &nb)) return NULL;
    PcTensor *s = tensor_arg(src, "copy_(): argument 'src'");
    if (!s) return NULL;
    PcTensor *in[2] = {T(self), s};
    PcCall c = mk(PC_OPC_COPY_, 2);
    return call_out(&c, in);
}

/* ---- unary ---- */

#define UNARY_OP(fname, OP)                                                         \
    static PyObject *i_##fname(PyObject *self, PyObject *args, PyObject *kw) {      \
        if (PyTuple_GET_SIZE(args) != 0 || (kw && PyDict_GET_SIZE(kw))) {           \
            PyErr_SetString(PyExc_TypeError, #fname "() takes no extra arguments"); \
            return NULL;                                                            \
        }                                                                           \
        PcTensor *in[1] = {T(self)};                                                \
        PcCall c = mk(PC_OPC_UNARY, 1);                                             \
        c.ints[0] = OP;                                                             \
        return call_out(&c, in);                                                    \
    }                                                                               \
    OP_ENTRY(f_##fname, i_##fname)

UNARY_OP(relu, PC_U_RELU)
UNARY_OP(tanh, PC_U_TANH)
UNARY_OP(sigmoid, PC_U_SIGMOID)
UNARY_OP(exp, PC_U_EXP)
UNARY_OP(log, PC_U_LOG)
UNARY_OP(neg, PC_U_NEG)
UNARY_OP(abs, PC_U_ABS)
UNARY_OP(sqrt, PC_U_SQRT)

static PyObject *i_gelu(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"approximate", NULL};
    const char *approx = "none";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|s:gelu", kwlist, &approx)) return NULL;
    if (strcmp(approx, "none") != 0) {
        PyErr_Format(PyExc_ValueError, "gelu: approximate='%s' is not supported (only 'none')",
                     approx);
        return NULL;
    }
    PcTensor *in[1] = {T(self)};
    PcCall c = mk(PC_OPC_UNARY, 1);
    c.ints[0] = PC_U_GELU;
    return call_out(&c, in);
}
OP_ENTRY(f_gelu, i_gelu)

static PyObject *i_pow(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"exponent", NULL};
    PyObject *e;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O:pow", kwlist, &e)) return NULL;
    if (pc_py_is_tensor(e) || !PyNumber_Check(e)) {
        PyErr_Format(PyExc_TypeError, "pow: the exponent must be a Python number, got %.100s",
                     Py_TYPE(e)->tp_name);
        return NULL;
    }
    double s = PyFloat_AsDouble(e);
    if (s == -1.0 && PyErr_Occurred()) return NULL;
    PcTensor *in[1] = {T(self)};
    PcCall c = mk(PC_OPC_UNARY, 1);
    c.ints[0] = PC_U_POW;
    c.d[0] = s;
    return call_out(&c, in);
}
OP_ENTRY(f_pow, i_pow)

/* ---- binary ---- */

/* The Python number obj as a 0-d tensor on t's device, of the dtype torch gives a Python
 * scalar beside t: t's own when t is floating; else t's for a bool (so bool stays bool),
 * int64 for another integer, float32 for a float. 0 and a new reference in *out; 1 with no
 * error when obj is not a number (nor a sequence); -1 with an exception. */
static int scalar_operand(PcTensor *t, PyObject *obj, PcTensor **out) {
    *out = NULL;
    if (!(PyLong_Check(obj) || PyFloat_Check(obj) ||
          (!pc_py_is_tensor(obj) && PyNumber_Check(obj) && !PySequence_Check(obj))))
        return 1;
    double s = PyFloat_AsDouble(obj);
    if (s == -1.0 && PyErr_Occurred()) return -1;
    PcDType dt = t->dtype;
    if (!pc_dtype_is_float(dt) && !PyBool_Check(obj))
        dt = PyLong_Check(obj) || PyIndex_Check(obj) ? PC_INT64 : PC_FLOAT32;
    PcStatus st = pc_op_full(0, NULL, s, dt, t->device, out);
    if (st != PC_OK) {
        pc_py_raise(st);
        return -1;
    }
    return 0;
}

/* t op other (in place: t = t op other) for a Tensor or a Python number `other`. New
 * reference: the result (t itself in place); Py_NotImplemented, with no error, when other is
 * neither. */
static PyObject *binary_run(PcTensor *t, PyObject *other, PcBinaryOp op, double alpha,
                            bool inplace) {
    PcTensor *o, *sc = NULL, *out = NULL;
    if (pc_py_is_tensor(other)) {
        o = T(other);
    } else {
        int r = scalar_operand(t, other, &sc);
        if (r < 0) return NULL;
        if (r > 0) Py_RETURN_NOTIMPLEMENTED;
        o = sc;
    }
    PcTensor *in[2] = {t, o};
    PcCall c = mk(inplace ? PC_OPC_BINARY_ : PC_OPC_BINARY, 2);
    c.ints[0] = op;
    c.d[0] = alpha;
    PcStatus st = call_run(&c, in, &out);
    pc_tensor_decref(sc);
    return done(st, out);
}

PyObject *pc_py_compare(PyObject *self, PyObject *other, PcBinaryOp op) {
    return binary_run(T(self), other, op, 1.0, false);
}

static PyObject *binary_call(PyObject *self, PyObject *args, PyObject *kw, PcBinaryOp op,
                             const char *name, bool inplace) {
    static char *kwlist[] = {"other", "alpha", NULL};
    PyObject *other;
    double alpha = 1.0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|d", kwlist, &other, &alpha)) return NULL;
    if (alpha != 1.0 && op != PC_B_ADD && op != PC_B_SUB) {
        PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument 'alpha'", name);
        return NULL;
    }
    PyObject *r = binary_run(T(self), other, op, alpha, inplace);
    if (r == Py_NotImplemented) {
        Py_DECREF(r);
        PyErr_Format(PyExc_TypeError, "%s(): argument 'other' must be a Tensor or a number, "
                     "got %.100s", name, Py_TYPE(other)->tp_name);
        return NULL;
    }
    return r;
}

#define BINARY_OP(fname, OP)                                                          \
    static PyObject *i_##fname(PyObject *self, PyObject *args, PyObject *kw) {        \
        return binary_call(self, args, kw, OP, #fname, false);                        \
    }                                                                                 \
    OP_ENTRY(f_##fname, i_##fname)

#define BINARY_OP_AND_INPLACE(fname, OP)                                              \
    BINARY_OP(fname, OP)                                                              \
    static PyObject *m_##fname##_(PyObject *self, PyObject *args, PyObject *kw) {     \
        return binary_call(self, args, kw, OP, #fname "_", true);                     \
    }

BINARY_OP_AND_INPLACE(add, PC_B_ADD)
BINARY_OP_AND_INPLACE(sub, PC_B_SUB)
BINARY_OP_AND_INPLACE(mul, PC_B_MUL)
BINARY_OP_AND_INPLACE(div, PC_B_DIV)
BINARY_OP(maximum, PC_B_MAXIMUM)
/* Comparisons: bool results, never requiring grad (tensor_type.c maps ==, <, ... here). */
BINARY_OP(eq, PC_B_EQ)
BINARY_OP(ne, PC_B_NE)
BINARY_OP(lt, PC_B_LT)
BINARY_OP(le, PC_B_LE)
BINARY_OP(gt, PC_B_GT)
BINARY_OP(ge, PC_B_GE)

/* ---- matrix products ---- */

static PyObject *i_mm(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"mat2", NULL};
    PyObject *o;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O:mm", kwlist, &o)) return NULL;
    PcTensor *b = tensor_arg(o, "mm(): argument 'mat2'");
    if (!b) return NULL;
    PcTensor *in[2] = {T(self), b};
    PcCall c = mk(PC_OPC_MM, 2);
    return call_out(&c, in);
}
OP_ENTRY(f_mm, i_mm)

static PyObject *i_matmul(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"other", NULL};
    PyObject *o;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O:matmul", kwlist, &o)) return NULL;
    PcTensor *b = tensor_arg(o, "matmul(): argument 'other'");
    if (!b) return NULL;
    PcTensor *in[2] = {T(self), b};
    PcCall c = mk(PC_OPC_MATMUL, 2);
    return call_out(&c, in);
}
OP_ENTRY(f_matmul, i_matmul)

/* addmm(input, mat1, mat2, *, beta=1, alpha=1) */
static PyObject *i_addmm(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"mat1", "mat2", "beta", "alpha", NULL};
    PyObject *o1, *o2;
    double beta = 1.0, alpha = 1.0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|$dd:addmm", kwlist, &o1, &o2, &beta, &alpha))
        return NULL;
    PcTensor *a = tensor_arg(o1, "addmm(): argument 'mat1'");
    PcTensor *b = a ? tensor_arg(o2, "addmm(): argument 'mat2'") : NULL;
    if (!b) return NULL;
    PcTensor *in[3] = {T(self), a, b};
    PcCall c = mk(PC_OPC_ADDMM, 3);
    c.d[0] = beta;
    c.d[1] = alpha;
    return call_out(&c, in);
}
OP_ENTRY(f_addmm, i_addmm)

/* linear(input, weight, bias=None) */
static PyObject *i_linear(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"weight", "bias", NULL};
    PyObject *ow, *ob = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O:linear", kwlist, &ow, &ob)) return NULL;
    PcTensor *w = tensor_arg(ow, "linear(): argument 'weight'");
    if (!w) return NULL;
    PcTensor *b = NULL;
    if (ob != Py_None && !(b = tensor_arg(ob, "linear(): argument 'bias'"))) return NULL;
    PcTensor *in[3] = {T(self), w, b};
    PcCall c = mk(PC_OPC_LINEAR, b ? 3 : 2);
    return call_out(&c, in);
}
OP_ENTRY(f_linear, i_linear)

/* ---- reductions ---- */

static PyObject *reduce_call(PyObject *self, PyObject *args, PyObject *kw, bool mean) {
    static char *kwlist[] = {"dim", "keepdim", "dtype", NULL};
    PyObject *d = Py_None, *dto = Py_None;
    int keepdim = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, mean ? "|OpO:mean" : "|OpO:sum", kwlist, &d,
                                     &keepdim, &dto))
        return NULL;
    int dims[PC_MAX_DIMS], n;
    if (parse_dims(d, "dim", dims, &n) < 0) return NULL;
    PcTensor *src = T(self), *cast = NULL, *out;
    PcStatus st;
    if (dto != Py_None) {
        PcDType dt;
        if (pc_py_parse_dtype(dto, "dtype", &dt) < 0) return NULL;
        st = cast_recorded(src, dt, &cast);
        if (st != PC_OK) return pc_py_raise(st);
        src = cast;
    }
    PcTensor *in[1] = {src};
    PcCall c = mk(mean ? PC_OPC_MEAN : PC_OPC_SUM, 1);
    c.ints[0] = n;
    for (int i = 0; i < n; i++) c.ints[1 + i] = dims[i];
    c.flag = keepdim != 0;
    st = call_run(&c, in, &out);
    pc_tensor_decref(cast);
    return done(st, out);
}

static PyObject *i_sum(PyObject *self, PyObject *args, PyObject *kw) {
    return reduce_call(self, args, kw, false);
}
OP_ENTRY(f_sum, i_sum)
static PyObject *i_mean(PyObject *self, PyObject *args, PyObject *kw) {
    return reduce_call(self, args, kw, true);
}
OP_ENTRY(f_mean, i_mean)

static PyTypeObject *max_result_type; /* owned: structseq (values, indices) */

/* max() -> 0-d tensor; max(dim, keepdim=False) -> (values, indices); max(other) -> maximum */
static PyObject *i_max(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"dim", "keepdim", NULL};
    PyObject *d = NULL;
    int keepdim = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|Op:max", kwlist, &d, &keepdim)) return NULL;
    PcStatus st;
    if (!d || d == Py_None) {
        PcTensor *in[1] = {T(self)};
        PcCall c = mk(PC_OPC_MAX_ALL, 1);
        return call_out(&c, in);
    }
    if (pc_py_is_tensor(d)) {
        PcTensor *in[2] = {T(self), T(d)};
        PcCall c = mk(PC_OPC_BINARY, 2);
        c.ints[0] = PC_B_MAXIMUM;
        c.d[0] = 1.0;
        return call_out(&c, in);
    }
    int dim;
    if (as_int(d, "dim", &dim) < 0) return NULL;
    PcTensor *in[1] = {T(self)}, *outs[2] = {NULL, NULL};
    PcCall c = mk(PC_OPC_MAX_DIM, 1);
    c.n_out = 2;
    c.ints[0] = dim;
    c.flag = keepdim != 0;
    st = call_run(&c, in, outs);
    if (st != PC_OK) return pc_py_raise(st);
    PcTensor *vals = outs[0], *idx = outs[1];
    PyObject *v = pc_py_wrap(vals);
    PyObject *i = pc_py_wrap(idx);
    PyObject *res = (v && i) ? PyStructSequence_New(max_result_type) : NULL;
    if (!res) {
        Py_XDECREF(v);
        Py_XDECREF(i);
        return NULL;
    }
    PyStructSequence_SET_ITEM(res, 0, v);
    PyStructSequence_SET_ITEM(res, 1, i);
    return res;
}
OP_ENTRY(f_max, i_max)

/* ---- views and shapes ---- */

static PyObject *m_view(PyObject *self, PyObject *args) {
    int nd;
    int64_t shape[PC_MAX_DIMS];
    if (PyTuple_GET_SIZE(args) == 1 && !PyLong_Check(PyTuple_GET_ITEM(args, 0)) &&
        !PyTuple_Check(PyTuple_GET_ITEM(args, 0)) && !PyList_Check(PyTuple_GET_ITEM(args, 0))) {
        PcDType dt; /* view(dtype) is not supported */
        if (pc_py_parse_dtype(PyTuple_GET_ITEM(args, 0), "view", &dt) == 0) {
            PyErr_SetString(PyExc_NotImplementedError, "view(dtype) is not supported by pipec");
            return NULL;
        }
        PyErr_Clear();
    }
    if (parse_shape(args, 0, "view", &nd, shape) < 0) return NULL;
    PcTensor *in[1] = {T(self)};
    PcCall c = mk(PC_OPC_VIEW, 1);
    c.ints[0] = nd;
    memcpy(c.sizes, shape, sizeof(int64_t) * (size_t)nd);
    return call_out(&c, in);
}

static PyObject *i_reshape(PyObject *self, PyObject *args, PyObject *kw) {
    (void)kw;
    int nd;
    int64_t shape[PC_MAX_DIMS];
    if (parse_shape(args, 0, "reshape", &nd, shape) < 0) return NULL;
    PcTensor *in[1] = {T(self)};
    PcCall c = mk(PC_OPC_RESHAPE, 1);
    c.ints[0] = nd;
    memcpy(c.sizes, shape, sizeof(int64_t) * (size_t)nd);
    return call_out(&c, in);
}
OP_ENTRY(f_reshape, i_reshape)

static PyObject *m_expand(PyObject *self, PyObject *args) {
    int nd;
    int64_t shape[PC_MAX_DIMS];
    if (parse_shape(args, 0, "expand", &nd, shape) < 0) return NULL;
    PcTensor *in[1] = {T(self)};
    PcCall c = mk(PC_OPC_EXPAND, 1);
    c.ints[0] = nd;
    memcpy(c.sizes, shape, sizeof(int64_t) * (size_t)nd);
    return call_out(&c, in);
}

static PyObject *i_flatten(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"start_dim", "end_dim", NULL};
    PyObject *os_ = NULL, *oe = NULL;
    int s = 0, e = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|OO:flatten", kwlist, &os_, &oe)) return NULL;
    if ((os_ && as_int(os_, "flatten(): start_dim", &s) < 0) ||
        (oe && as_int(oe, "flatten(): end_dim", &e) < 0))
        return NULL;
    PcTensor *in[1] = {T(self)};
    PcCall c = mk(PC_OPC_FLATTEN, 1);
    c.ints[0] = s;
    c.ints[1] = e;
    return call_out(&c, in);
}
OP_ENTRY(f_flatten, i_flatten)

static PyObject *i_transpose(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"dim0", "dim1", NULL};
    PyObject *oa, *ob;
    int a, b;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO:transpose", kwlist, &oa, &ob)) return NULL;
    if (as_int(oa, "transpose(): dim0", &a) < 0 || as_int(ob, "transpose(): dim1", &b) < 0)
        return NULL;
    PcTensor *in[1] = {T(self)};
    PcCall c = mk(PC_OPC_TRANSPOSE, 1);
    c.ints[0] = a;
    c.ints[1] = b;
    return call_out(&c, in);
}
OP_ENTRY(f_transpose, i_transpose)

static PyObject *i_t(PyObject *self, PyObject *args, PyObject *kw) {
    (void)args; (void)kw;
    PcTensor *in[1] = {T(self)};
    PcCall c = mk(PC_OPC_T, 1);
    return call_out(&c, in);
}
OP_ENTRY(f_t, i_t)

static PyObject *i_permute(PyObject *self, PyObject *args, PyObject *kw) {
    (void)kw;
    int nd;
    int64_t shape[PC_MAX_DIMS];
    if (parse_shape(args, 0, "permute", &nd, shape) < 0) return NULL;
    int dims[PC_MAX_DIMS];
    for (int i = 0; i < nd; i++) dims[i] = (int)shape[i];
    PcTensor *in[1] = {T(self)};
    PcCall c = mk(PC_OPC_PERMUTE, 1);
    c.ints[0] = nd;
    for (int i = 0; i < nd; i++) c.ints[1 + i] = dims[i];
    return call_out(&c, in);
}
OP_ENTRY(f_permute, i_permute)

static PyObject *i_unsqueeze(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"dim", NULL};
    PyObject *od;
    int d;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O:unsqueeze", kwlist, &od)) return NULL;
    if (as_int(od, "unsqueeze(): dim", &d) < 0) return NULL;
    PcTensor *in[1] = {T(self)};
    PcCall c = mk(PC_OPC_UNSQUEEZE, 1);
    c.ints[0] = d;
    return call_out(&c, in);
}
OP_ENTRY(f_unsqueeze, i_unsqueeze)

static PyObject *i_squeeze(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"dim", NULL};
    PyObject *d = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|O:squeeze", kwlist, &d)) return NULL;
    int dim = PC_ALL_DIMS;
    if (d != Py_None && as_int(d, "dim", &dim) < 0) return NULL;
    PcTensor *in[1] = {T(self)};
    PcCall c = mk(PC_OPC_SQUEEZE, 1);
    c.ints[0] = dim;
    return call_out(&c, in);
}
OP_ENTRY(f_squeeze, i_squeeze)

/* _slice(dim, start, stop, step=1): start/stop clamped like Python slices. */
static PyObject *i_slice(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"dim", "start", "stop", "step", NULL};
    int dim;
    long long start, stop, step = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iLL|L:_slice", kwlist, &dim, &start, &stop,
                                     &step))
        return NULL;
    PcTensor *t = T(self);
    int d = dim < 0 ? dim + t->ndim : dim;
    if (d < 0 || d >= t->ndim) {
        PyErr_Format(PyExc_IndexError, "Dimension out of range (got %d for %d dims)", dim,
                     t->ndim);
        return NULL;
    }
    if (step <= 0) {
        PyErr_SetString(PyExc_ValueError, "slice step must be positive");
        return NULL;
    }
    long long n = t->shape[d];
    if (start < 0) start += n;
    if (stop < 0) stop += n;
    start = start < 0 ? 0 : (start > n ? n : start);
    stop = stop < start ? start : (stop > n ? n : stop);
    PcTensor *in[1] = {t};
    PcCall c = mk(PC_OPC_SLICE, 1);
    c.ints[0] = d;
    c.sizes[0] = start;
    c.sizes[1] = stop;
    c.sizes[2] = step;
    return call_out(&c, in);
}
OP_ENTRY(f_slice, i_slice)

static PyObject *i_softmax(PyObject *self, PyObject *args, PyObject *kw, bool log) {
    static char *kwlist[] = {"dim", "dtype", NULL};
    PyObject *d = Py_None, *dto = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|OO", kwlist, &d, &dto)) return NULL;
    if (d == Py_None) {
        PyErr_Format(PyExc_TypeError, "%s() missing required argument 'dim'",
                     log ? "log_softmax" : "softmax");
        return NULL;
    }
    int dim;
    if (as_int(d, "dim", &dim) < 0) return NULL;
    PcTensor *src = T(self), *cast = NULL, *out;
    PcStatus st;
    if (dto != Py_None) {
        PcDType dt;
        if (pc_py_parse_dtype(dto, "dtype", &dt) < 0) return NULL;
        if ((st = cast_recorded(src, dt, &cast)) != PC_OK) return pc_py_raise(st);
        src = cast;
    }
    PcTensor *in[1] = {src};
    PcCall c = mk(PC_OPC_SOFTMAX, 1);
    c.ints[0] = dim;
    c.flag = log;
    st = call_run(&c, in, &out);
    pc_tensor_decref(cast);
    return done(st, out);
}
static PyObject *i_softmax_(PyObject *s, PyObject *a, PyObject *k) { return i_softmax(s, a, k, false); }
static PyObject *i_log_softmax(PyObject *s, PyObject *a, PyObject *k) { return i_softmax(s, a, k, true); }
OP_ENTRY(f_softmax, i_softmax_)
OP_ENTRY(f_log_softmax, i_log_softmax)

/* ---- losses and nn ops (module functions; pipec.nn.functional wraps them) ---- */

static int parse_reduction(PyObject *obj, PcReduction *out) {
    if (PyLong_Check(obj)) {
        long v = PyLong_AsLong(obj);
        if (v < 0 || v > 2) goto bad;
        *out = (PcReduction)v;
        return 0;
    }
    if (PyUnicode_Check(obj)) {
        const char *s = PyUnicode_AsUTF8(obj);
        if (!s) return -1;
        if (!strcmp(s, "none")) *out = PC_REDUCTION_NONE;
        else if (!strcmp(s, "mean")) *out = PC_REDUCTION_MEAN;
        else if (!strcmp(s, "sum")) *out = PC_REDUCTION_SUM;
        else goto bad;
        return 0;
    }
bad:
    PyErr_Format(PyExc_ValueError, "%R is not a valid value for reduction (none, mean, sum)", obj);
    return -1;
}

static PyObject *i_mse_loss(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"target", "reduction", NULL};
    PyObject *ot, *ored = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O:mse_loss", kwlist, &ot, &ored)) return NULL;
    PcTensor *tg = tensor_arg(ot, "mse_loss(): argument 'target'");
    if (!tg) return NULL;
    PcReduction red = PC_REDUCTION_MEAN;
    if (ored && parse_reduction(ored, &red) < 0) return NULL;
    PcTensor *in[2] = {T(self), tg};
    PcCall c = mk(PC_OPC_MSE_LOSS, 2);
    c.ints[0] = (int)red;
    return call_out(&c, in);
}
OP_ENTRY(f_mse_loss, i_mse_loss)

static PyObject *i_cross_entropy(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"target", "reduction", NULL};
    PyObject *ot, *ored = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O:cross_entropy", kwlist, &ot, &ored))
        return NULL;
    PcTensor *tg = tensor_arg(ot, "cross_entropy(): argument 'target'");
    if (!tg) return NULL;
    PcReduction red = PC_REDUCTION_MEAN;
    if (ored && parse_reduction(ored, &red) < 0) return NULL;
    PcTensor *in[2] = {T(self), tg};
    PcCall c = mk(PC_OPC_CROSS_ENTROPY, 2);
    c.ints[0] = (int)red;
    return call_out(&c, in);
}
OP_ENTRY(f_cross_entropy, i_cross_entropy)

/* layer_norm(x, normalized_ndim, weight=None, bias=None, eps=1e-5) */
static PyObject *i_layer_norm(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"normalized_ndim", "weight", "bias", "eps", NULL};
    int nd;
    PyObject *ow = Py_None, *ob = Py_None;
    double eps = 1e-5;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "i|OOd:layer_norm", kwlist, &nd, &ow, &ob, &eps))
        return NULL;
    PcTensor *w = NULL, *b = NULL;
    if (ow != Py_None && !(w = tensor_arg(ow, "layer_norm(): argument 'weight'"))) return NULL;
    if (ob != Py_None && !(b = tensor_arg(ob, "layer_norm(): argument 'bias'"))) return NULL;
    PcTensor *in[3] = {T(self), w, b};
    PcCall c = mk(PC_OPC_LAYER_NORM, 3);
    c.ints[0] = nd;
    c.d[0] = eps;
    return call_out(&c, in);
}
OP_ENTRY(f_layer_norm, i_layer_norm)

static PyObject *i_dropout(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"p", "training", NULL};
    double p = 0.5;
    int training = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|dp:dropout", kwlist, &p, &training))
        return NULL;
    PcTensor *in[1] = {T(self)};
    PcCall c = mk(PC_OPC_DROPOUT, 1);
    c.d[0] = p;
    c.flag = training != 0;
    return call_out(&c, in);
}
OP_ENTRY(f_dropout, i_dropout)

/* embedding(weight, idx) — weight first, as pc_op_embedding. */
static PyObject *i_embedding(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"indices", NULL};
    PyObject *oi;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O:embedding", kwlist, &oi)) return NULL;
    PcTensor *idx = tensor_arg(oi, "embedding(): argument 'indices'");
    if (!idx) return NULL;
    PcTensor *in[2] = {T(self), idx};
    PcCall c = mk(PC_OPC_EMBEDDING, 2);
    return call_out(&c, in);
}
OP_ENTRY(f_embedding, i_embedding)

/* ---- joins (module functions) ---- */

static int tensor_list(PyObject *seq_obj, const char *what, PyObject **seq_out, PcTensor ***ts,
                       Py_ssize_t *n) {
    if (pc_py_is_tensor(seq_obj) || !PySequence_Check(seq_obj)) {
        PyErr_Format(PyExc_TypeError, "%s: expected a sequence of Tensors, got %.100s", what,
                     Py_TYPE(seq_obj)->tp_name);
        return -1;
    }
    PyObject *seq = PySequence_Fast(seq_obj, what);
    if (!seq) return -1;
    *n = PySequence_Fast_GET_SIZE(seq);
    *ts = PyMem_Malloc(sizeof(PcTensor *) * (size_t)(*n ? *n : 1));
    if (!*ts) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < *n; i++) {
        PyObject *it = PySequence_Fast_GET_ITEM(seq, i);
        if (!pc_py_is_tensor(it)) {
            PyErr_Format(PyExc_TypeError, "%s: expected Tensor as element %zd, got %.100s", what,
                         i, Py_TYPE(it)->tp_name);
            PyMem_Free(*ts);
            *ts = NULL;
            Py_DECREF(seq);
            return -1;
        }
        (*ts)[i] = T(it);
    }
    *seq_out = seq;
    return 0;
}

static PyObject *join_call(PyObject *args, PyObject *kw, bool stack) {
    static char *kwlist[] = {"tensors", "dim", NULL};
    PyObject *obj;
    int dim = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, stack ? "O|i:stack" : "O|i:cat", kwlist, &obj,
                                     &dim))
        return NULL;
    PyObject *seq;
    PcTensor **ts;
    Py_ssize_t n;
    if (tensor_list(obj, stack ? "stack" : "cat", &seq, &ts, &n) < 0) return NULL;
    PcTensor *out = NULL;
    PcStatus st;
    if (n > PC_CALL_MAX_IN) {
        Py_BEGIN_ALLOW_THREADS
        st = stack ? pc_op_stack((int)n, ts, dim, &out) : pc_op_cat((int)n, ts, dim, &out);
        Py_END_ALLOW_THREADS
        if (st == PC_OK && pc_trace_active()) {
            pc_tensor_decref(out);
            out = NULL;
            st = pc_set_error(PC_ERR_NOTIMPL, "tracing cat/stack of more than %d tensors",
                              PC_CALL_MAX_IN);
        }
    } else {
        PcCall c = mk(stack ? PC_OPC_STACK : PC_OPC_CAT, (int)n);
        c.ints[0] = dim;
        st = call_run(&c, ts, &out);
    }
    PyMem_Free(ts);
    Py_DECREF(seq);
    return done(st, out);
}

static PyObject *f_cat(PyObject *m, PyObject *a, PyObject *k) { (void)m; return join_call(a, k, false); }
static PyObject *f_stack(PyObject *m, PyObject *a, PyObject *k) { (void)m; return join_call(a, k, true); }

/* ---- factories ---- */

/* _empty(shape, dtype, device) / _full(shape, value, dtype, device) / _rand / _randn */
static PyObject *factory(PyObject *args, int kind) {
    PyObject *shape_o, *dto, *devo;
    double value = 0.0;
    int ok = kind == 1 ? PyArg_ParseTuple(args, "OdOO", &shape_o, &value, &dto, &devo)
                       : PyArg_ParseTuple(args, "OOO", &shape_o, &dto, &devo);
    if (!ok) return NULL;
    PyObject *wrap = PyTuple_Pack(1, shape_o);
    if (!wrap) return NULL;
    int nd;
    int64_t shape[PC_MAX_DIMS];
    int r = parse_shape(wrap, 0, "size", &nd, shape);
    Py_DECREF(wrap);
    if (r < 0) return NULL;
    PcDType dt;
    PcDevice dev;
    if (parse_dtype_opt(dto, PC_FLOAT32, &dt) < 0 || parse_device_opt(devo, &dev) < 0)
        return NULL;
    PcTensor *out = NULL;
    PcStatus st;
    Py_BEGIN_ALLOW_THREADS
    switch (kind) {
    case 0: st = pc_op_empty(nd, shape, dt, dev, &out); break;
    case 1: st = pc_op_full(nd, shape, value, dt, dev, &out); break;
    case 2: st = pc_op_rand(nd, shape, dt, dev, &out); break;
    default: st = pc_op_randn(nd, shape, dt, dev, &out); break;
    }
    Py_END_ALLOW_THREADS
    return done(st, out);
}
static PyObject *f_empty(PyObject *m, PyObject *a) { (void)m; return factory(a, 0); }
static PyObject *f_full(PyObject *m, PyObject *a) { (void)m; return factory(a, 1); }
static PyObject *f_rand(PyObject *m, PyObject *a) { (void)m; return factory(a, 2); }
static PyObject *f_randn(PyObject *m, PyObject *a) { (void)m; return factory(a, 3); }

/* _arange(start, end, step, dtype, device) */
static PyObject *f_arange(PyObject *m, PyObject *args) {
    (void)m;
    double a, b, s;
    PyObject *dto, *devo;
    if (!PyArg_ParseTuple(args, "dddOO", &a, &b, &s, &dto, &devo)) return NULL;
    PcDType dt;
    PcDevice dev;
    if (parse_dtype_opt(dto, PC_FLOAT32, &dt) < 0 || parse_device_opt(devo, &dev) < 0)
        return NULL;
    PcTensor *out = NULL;
    PcStatus st = pc_op_arange(a, b, s, dt, dev, &out);
    return done(st, out);
}

static PyObject *f_manual_seed(PyObject *m, PyObject *arg) {
    (void)m;
    unsigned long long s = PyLong_AsUnsignedLongLongMask(arg);
    if (PyErr_Occurred()) return NULL;
    pc_rng_manual_seed((uint64_t)s);
    Py_RETURN_NONE;
}

static PyObject *f_initial_seed(PyObject *m, PyObject *unused) {
    (void)m; (void)unused;
    return PyLong_FromUnsignedLongLong(pc_rng_initial_seed());
}

/* ---- optimiser steps ---- */

static int tensor_list_opt(PyObject *obj, const char *what, PyObject **seq, PcTensor ***ts,
                           Py_ssize_t want) {
    *seq = NULL;
    *ts = NULL;
    if (obj == Py_None) return 0;
    Py_ssize_t n;
    if (tensor_list(obj, what, seq, ts, &n) < 0) return -1;
    if (n != want) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd tensors, got %zd", what, want, n);
        Py_CLEAR(*seq);
        PyMem_Free(*ts);
        *ts = NULL;
        return -1;
    }
    return 0;
}

static PyObject *f_sgd_step(PyObject *m, PyObject *args) {
    (void)m;
    PyObject *op, *og, *ob;
    PcSgdArgs a;
    int nesterov, maximize, first;
    if (!PyArg_ParseTuple(args, "OOOddddppp:_sgd_step", &op, &og, &ob, &a.lr, &a.momentum,
                          &a.dampening, &a.weight_decay, &nesterov, &maximize, &first))
        return NULL;
    a.nesterov = nesterov;
    a.maximize = maximize;
    a.first_step = first;
    PyObject *sp = NULL, *sg = NULL, *sb = NULL;
    PcTensor **p = NULL, **g = NULL, **b = NULL;
    Py_ssize_t n;
    PyObject *ret = NULL;
    if (tensor_list(op, "_sgd_step params", &sp, &p, &n) < 0) return NULL;
    if (tensor_list_opt(og, "_sgd_step grads", &sg, &g, n) < 0 || !g) goto out;
    if (tensor_list_opt(ob, "_sgd_step momentum_buffers", &sb, &b, n) < 0) goto out;
    if (n > 0) {
        const PcBackend *be = pc_backend_for(p[0]->device);
        if (!be) {
            pc_py_raise(PC_ERR_DEVICE);
            goto out;
        }
        PcStatus st;
        Py_BEGIN_ALLOW_THREADS
        st = be->sgd_step((int)n, p, g, b, &a);
        Py_END_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n; i++) pc_tensor_bump_version(p[i]);
        if (st != PC_OK) {
            pc_py_raise(st);
            goto out;
        }
    }
    ret = Py_NewRef(Py_None);
out:
    if (!ret && !PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "_sgd_step: grads required");
    PyMem_Free(p);
    PyMem_Free(g);
    PyMem_Free(b);
    Py_XDECREF(sp);
    Py_XDECREF(sg);
    Py_XDECREF(sb);
    return ret;
}

static PyObject *f_adamw_step(PyObject *m, PyObject *args) {
    (void)m;
    PyObject *op, *og, *om, *ov;
    PcAdamWArgs a;
    long long step;
    int maximize;
    if (!PyArg_ParseTuple(args, "OOOOdddddLp:_adamw_step", &op, &og, &om, &ov, &a.lr, &a.beta1,
                          &a.beta2, &a.eps, &a.weight_decay, &step, &maximize))
        return NULL;
    a.step = step;
    a.maximize = maximize;
    PyObject *sp = NULL, *sg = NULL, *sm = NULL, *sv = NULL, *ret = NULL;
    PcTensor **p = NULL, **g = NULL, **mm = NULL, **v = NULL;
    Py_ssize_t n;
    if (tensor_list(op, "_adamw_step params", &sp, &p, &n) < 0) return NULL;
    if (tensor_list_opt(og, "_adamw_step grads", &sg, &g, n) < 0 || !g) goto out;
    if (tensor_list_opt(om, "_adamw_step exp_avgs", &sm, &mm, n) < 0 || !mm) goto out;
    if (tensor_list_opt(ov, "_adamw_step exp_avg_sqs", &sv, &v, n) < 0 || !v) goto out;
    if (n > 0) {
        const PcBackend *be = pc_backend_for(p[0]->device);
        if (!be) {
            pc_py_raise(PC_ERR_DEVICE);
            goto out;
        }
        PcStatus st;
        Py_BEGIN_ALLOW_THREADS
        st = be->adamw_step((int)n, p, g, mm, v, &a);
        Py_END_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n; i++) pc_tensor_bump_version(p[i]);
        if (st != PC_OK) {
            pc_py_raise(st);
            goto out;
        }
    }
    ret = Py_NewRef(Py_None);
out:
    if (!ret && !PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "_adamw_step: grads and state tensors required");
    PyMem_Free(p);
    PyMem_Free(g);
    PyMem_Free(mm);
    PyMem_Free(v);
    Py_XDECREF(sp);
    Py_XDECREF(sg);
    Py_XDECREF(sm);
    Py_XDECREF(sv);
    return ret;
}

/* ---- tables ---- */

#define KW (METH_VARARGS | METH_KEYWORDS)
#define FN(name, f, doc) {name, (PyCFunction)(void (*)(void))f, KW, doc}

PyMethodDef pc_py_tensor_methods[] = {
    FN("numel", f_numel, "Number of elements."),
    {"dim", (PyCFunction)m_dim, METH_NOARGS, "Number of dimensions."},
    {"size", (PyCFunction)m_size, METH_VARARGS, "size(dim=None): the shape, or one size."},
    {"stride", (PyCFunction)m_stride, METH_VARARGS, "stride(dim=None): strides in elements."},
    {"storage_offset", (PyCFunction)m_storage_offset, METH_NOARGS, "Offset into the storage."},
    {"data_ptr", (PyCFunction)m_data_ptr, METH_NOARGS, "Address of the first element."},
    {"element_size", (PyCFunction)m_element_size, METH_NOARGS, "Bytes per element."},
    {"is_contiguous", (PyCFunction)m_is_contiguous, METH_NOARGS, "Row-major contiguous?"},
    {"contiguous", (PyCFunction)m_contiguous, METH_NOARGS, "A contiguous tensor (self if already)."},
    {"item", (PyCFunction)m_item, METH_NOARGS, "The single value as a Python number."},
    {"numpy", (PyCFunction)m_numpy, METH_NOARGS,
     "A NumPy array sharing memory (CPU) or a host copy (CUDA; bfloat16 gives float32)."},
    {"requires_grad_", (PyCFunction)(void (*)(void))m_requires_grad_, KW,
     "Set requires_grad in place; returns self."},
    {"_make_subclass", (PyCFunction)(void (*)(void))m_make_subclass, KW | METH_STATIC,
     "_make_subclass(cls, data, requires_grad=False)"},
    FN("detach", f_detach, "A view without autograd history."),
    {"detach_", (PyCFunction)m_detach_, METH_NOARGS, "Drop autograd history in place."},
    FN("clone", f_clone, "A copy (differentiable)."),
    {"to", (PyCFunction)(void (*)(void))m_to, KW, "to(dtype | device | tensor, ...)."},
    {"float", (PyCFunction)m_float, METH_NOARGS, "to(float32)"},
    {"double", (PyCFunction)m_double, METH_NOARGS, "to(float64)"},
    {"half", (PyCFunction)m_half, METH_NOARGS, "to(float16)"},
    {"bfloat16", (PyCFunction)m_bfloat16, METH_NOARGS, "to(bfloat16)"},
    {"long", (PyCFunction)m_long, METH_NOARGS, "to(int64)"},
    {"bool", (PyCFunction)m_bool, METH_NOARGS, "to(bool)"},
    {"cpu", (PyCFunction)m_cpu, METH_NOARGS, "A copy on the CPU (self if already there)."},
    {"cuda", (PyCFunction)(void (*)(void))m_cuda, KW, "cuda(device=None): copy to a GPU."},
    {"zero_", (PyCFunction)m_zero_, METH_NOARGS, "Fill with zeros in place."},
    {"fill_", (PyCFunction)m_fill_, METH_O, "Fill with a value in place."},
    {"uniform_", (PyCFunction)(void (*)(void))m_uniform_, KW, "uniform_(a=0, b=1)"},
    {"normal_", (PyCFunction)(void (*)(void))m_normal_, KW, "normal_(mean=0, std=1)"},
    {"copy_", (PyCFunction)(void (*)(void))m_copy_, KW, "copy_(src): broadcasting copy."},
    FN("relu", f_relu, "max(x, 0)"),
    FN("gelu", f_gelu, "x * Phi(x)"),
    FN("tanh", f_tanh, "tanh(x)"),
    FN("sigmoid", f_sigmoid, "1 / (1 + exp(-x))"),
    FN("exp", f_exp, "exp(x)"),
    FN("log", f_log, "natural log"),
    FN("neg", f_neg, "-x"),
    FN("abs", f_abs, "|x|"),
    FN("sqrt", f_sqrt, "sqrt(x)"),
    FN("pow", f_pow, "x ** exponent (scalar exponent)"),
    FN("add", f_add, "add(other, alpha=1)"),
    FN("sub", f_sub, "sub(other, alpha=1)"),
    FN("mul", f_mul, "mul(other)"),
    FN("div", f_div, "div(other)"),
    {"add_", (PyCFunction)(void (*)(void))m_add_, KW, "In-place add."},
    {"sub_", (PyCFunction)(void (*)(void))m_sub_, KW, "In-place sub."},
    {"mul_", (PyCFunction)(void (*)(void))m_mul_, KW, "In-place mul."},
    {"div_", (PyCFunction)(void (*)(void))m_div_, KW, "In-place div."},
    FN("maximum", f_maximum, "Elementwise maximum (not differentiable)."),
    FN("eq", f_eq, "eq(other): self == other elementwise, a bool tensor (not differentiable)."),
    FN("ne", f_ne, "ne(other): self != other elementwise, a bool tensor (not differentiable)."),
    FN("lt", f_lt, "lt(other): self < other elementwise, a bool tensor (not differentiable)."),
    FN("le", f_le, "le(other): self <= other elementwise, a bool tensor (not differentiable)."),
    FN("gt", f_gt, "gt(other): self > other elementwise, a bool tensor (not differentiable)."),
    FN("ge", f_ge, "ge(other): self >= other elementwise, a bool tensor (not differentiable)."),
    FN("mm", f_mm, "2-D matrix product."),
    FN("matmul", f_matmul, "Matrix product with NumPy broadcasting rules."),
    FN("addmm", f_addmm, "beta * self + alpha * (mat1 @ mat2)"),
    FN("sum", f_sum, "sum(dim=None, keepdim=False, dtype=None)"),
    FN("mean", f_mean, "mean(dim=None, keepdim=False, dtype=None)"),
    FN("max", f_max, "max() or max(dim, keepdim=False) -> (values, indices)"),
    {"view", (PyCFunction)m_view, METH_VARARGS, "A view with a new shape (no copy)."},
    FN("reshape", f_reshape, "A tensor with a new shape (view when possible)."),
    {"expand", (PyCFunction)m_expand, METH_VARARGS, "Broadcast view to a larger shape."},
    FN("flatten", f_flatten, "flatten(start_dim=0, end_dim=-1)"),
    FN("transpose", f_transpose, "Swap two dims (view)."),
    FN("t", f_t, "Transpose a <= 2-D tensor."),
    FN("permute", f_permute, "Reorder dims (view)."),
    FN("unsqueeze", f_unsqueeze, "Insert a size-1 dim."),
    FN("squeeze", f_squeeze, "Remove size-1 dims."),
    FN("_slice", f_slice, "_slice(dim, start, stop, step=1): a view."),
    FN("softmax", f_softmax, "softmax(dim)"),
    FN("log_softmax", f_log_softmax, "log_softmax(dim)"),
    {"__dlpack__", (PyCFunction)(void (*)(void))pc_py_tensor_dlpack, KW,
     "__dlpack__(*, stream=None, max_version=None, dl_device=None, copy=None): a DLPack "
     "capsule sharing this tensor's memory."},
    {"__dlpack_device__", (PyCFunction)pc_py_tensor_dlpack_device, METH_NOARGS,
     "(device_type, device_id) in DLPack's numbering."},
    {NULL, NULL, 0, NULL},
};

PyMethodDef pc_py_op_functions[] = {
    FN("numel", f_numel, NULL),
    FN("detach", f_detach, NULL),
    FN("clone", f_clone, NULL),
    FN("relu", f_relu, NULL),
    FN("gelu", f_gelu, NULL),
    FN("tanh", f_tanh, NULL),
    FN("sigmoid", f_sigmoid, NULL),
    FN("exp", f_exp, NULL),
    FN("log", f_log, NULL),
    FN("neg", f_neg, NULL),
    FN("abs", f_abs, NULL),
    FN("sqrt", f_sqrt, NULL),
    FN("pow", f_pow, NULL),
    FN("add", f_add, NULL),
    FN("sub", f_sub, NULL),
    FN("mul", f_mul, NULL),
    FN("div", f_div, NULL),
    FN("maximum", f_maximum, NULL),
    FN("eq", f_eq, NULL),
    FN("ne", f_ne, NULL),
    FN("lt", f_lt, NULL),
    FN("le", f_le, NULL),
    FN("gt", f_gt, NULL),
    FN("ge", f_ge, NULL),
    FN("mm", f_mm, NULL),
    FN("matmul", f_matmul, NULL),
    FN("addmm", f_addmm, NULL),
    FN("linear", f_linear, NULL),
    FN("sum", f_sum, NULL),
    FN("mean", f_mean, NULL),
    FN("max", f_max, NULL),
    FN("reshape", f_reshape, NULL),
    FN("flatten", f_flatten, NULL),
    FN("transpose", f_transpose, NULL),
    FN("t", f_t, NULL),
    FN("permute", f_permute, NULL),
    FN("unsqueeze", f_unsqueeze, NULL),
    FN("squeeze", f_squeeze, NULL),
    FN("_slice", f_slice, NULL),
    FN("softmax", f_softmax, NULL),
    FN("log_softmax", f_log_softmax, NULL),
    FN("mse_loss", f_mse_loss, NULL),
    FN("cross_entropy", f_cross_entropy, NULL),
    FN("layer_norm", f_layer_norm, NULL),
    FN("dropout", f_dropout, NULL),
    FN("embedding", f_embedding, NULL),
    FN("cat", f_cat, NULL),
    FN("stack", f_stack, NULL),
    {"_empty", (PyCFunction)f_empty, METH_VARARGS, NULL},
    {"_full", (PyCFunction)f_full, METH_VARARGS, NULL},
    {"_rand", (PyCFunction)f_rand, METH_VARARGS, NULL},
    {"_randn", (PyCFunction)f_randn, METH_VARARGS, NULL},
    {"_arange", (PyCFunction)f_arange, METH_VARARGS, NULL},
    {"manual_seed", (PyCFunction)f_manual_seed, METH_O, "Seed the Philox generator."},
    {"initial_seed", (PyCFunction)f_initial_seed, METH_NOARGS, NULL},
    {"from_numpy", (PyCFunction)pc_py_from_numpy, METH_O, "A Tensor sharing an ndarray's memory."},
    {"_register_types", (PyCFunction)pc_py_register_types, METH_VARARGS, NULL},
    {"_sgd_step", (PyCFunction)f_sgd_step, METH_VARARGS, NULL},
    {"_adamw_step", (PyCFunction)f_adamw_step, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyStructSequence_Field max_fields[] = {
    {"values", "the maxima"}, {"indices", "their positions"}, {NULL, NULL}};
static PyStructSequence_Desc max_desc = {"pipec.return_types.max", NULL, max_fields, 2};

int pc_py_methods_init(PyObject *module) {
    max_result_type = PyStructSequence_NewType(&max_desc);
    if (!max_result_type) return -1;
    return PyModule_AddObjectRef(module, "_max_result", (PyObject *)max_result_type);
}
