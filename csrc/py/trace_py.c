/* trace_py.c — Python face of tracing and Programs (csrc/graph/program.h).
 *
 * pipec/pipelining/_trace.py drives a trace: _trace_begin(), _trace_input(t) per tensor
 * argument, the model's forward (every op the binding runs is recorded; pipe_split() calls
 * _trace_mark()), then _trace_end(outputs) returns a Program object. Custom Functions are
 * recorded as PYFUNC calls whose context is a Python tuple (cls, template, positions): at
 * replay the callback takes the GIL, puts the replayed tensors into the template and calls
 * cls.apply again, so autograd sees a fresh node each time.
 *
 * Program objects own their PcProgram. Every function here returns new references.
 */
#include "bindings.h"

#include "../graph/program.h"

#define T(o) (((PcPyTensor *)(o))->t)

/* ---- PYFUNC contexts ---- */

static void py_ctx_release(void *py) {
    PyGILState_STATE g = PyGILState_Ensure();
    Py_DECREF((PyObject *)py);
    PyGILState_Release(g);
}

static void py_ctx_retain(void *py) {
    PyGILState_STATE g = PyGILState_Ensure();
    Py_INCREF((PyObject *)py);
    PyGILState_Release(g);
}

/* Replay a custom Function: py = (cls, template tuple, positions tuple). */
static PcStatus py_ctx_call(void *py, int n_in, PcTensor *const *in, int n_out, PcTensor **out) {
    PcStatus st = PC_OK;
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *ctx = py, *args = NULL, *res = NULL, *seq = NULL, *apply = NULL;
    PyObject *cls = PyTuple_GET_ITEM(ctx, 0), *tmpl = PyTuple_GET_ITEM(ctx, 1);
    PyObject *pos = PyTuple_GET_ITEM(ctx, 2);
    if (PyTuple_GET_SIZE(pos) != n_in) {
        st = pc_set_error(PC_ERR_RUNTIME, "custom Function replay: %d inputs for %zd slots", n_in,
                          PyTuple_GET_SIZE(pos));
        goto out;
    }
    args = PyList_GetSlice(tmpl, 0, PyList_GET_SIZE(tmpl));
    if (!args) goto pyfail;
    for (int i = 0; i < n_in; i++) {
        Py_ssize_t at = PyLong_AsSsize_t(PyTuple_GET_ITEM(pos, i));
        PyObject *w;
        if (in[i]) {
            pc_tensor_incref(in[i]);
            w = pc_py_wrap(in[i]);
            if (!w) goto pyfail;
        } else {
            w = Py_NewRef(Py_None);
        }
        if (PyList_SetItem(args, at, w) < 0) goto pyfail; /* steals w */
    }
    {
        PyObject *tup = PyList_AsTuple(args);
        if (!tup) goto pyfail;
        apply = PyObject_GetAttrString(cls, "apply");
        res = apply ? PyObject_Call(apply, tup, NULL) : NULL;
        Py_DECREF(tup);
    }
    if (!res) goto pyfail;
    seq = pc_py_is_tensor(res) ? PyTuple_Pack(1, res) : PySequence_Tuple(res);
    if (!seq) goto pyfail;
    int k = 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(seq) && k < n_out; i++) {
        PyObject *o = PyTuple_GET_ITEM(seq, i);
        if (!pc_py_is_tensor(o)) continue;
        pc_tensor_incref(T(o));
        out[k++] = T(o);
    }
    if (k != n_out) {
        for (int j = 0; j < k; j++) {
            pc_tensor_decref(out[j]);
            out[j] = NULL;
        }
        st = pc_set_error(PC_ERR_RUNTIME, "custom Function replay returned %d tensors, traced %d",
                          k, n_out);
    }
    goto out;
pyfail:
    st = pc_set_error(PC_ERR_PYTHON, "a custom Function raised during replay");
out:
    Py_XDECREF(apply);
    Py_XDECREF(seq);
    Py_XDECREF(res);
    Py_XDECREF(args);
    PyGILState_Release(g);
    return st;
}

/* Called by _function_record (autograd_py.c) while tracing: record cls.apply(*args) with its
 * tensor outputs. Returns 0 or -1 with an exception. */
int pc_py_trace_function(PyObject *cls, PyObject *fargs, PyObject *outseq) {
    PcTracer *tr = pc_trace_active();
    if (!tr) return 0;
    Py_ssize_t na = PyTuple_GET_SIZE(fargs);
    PcTensor *ins[PC_CALL_MAX_IN], *outs[PC_INSTR_MAX_OUT];
    int n_in = 0, n_out = 0;
    PyObject *tmpl = PyList_New(na), *pos = NULL, *ctx = NULL;
    if (!tmpl) return -1;
    PyObject *posl = PyList_New(0);
    if (!posl) {
        Py_DECREF(tmpl);
        return -1;
    }
    for (Py_ssize_t i = 0; i < na; i++) {
        PyObject *a = PyTuple_GET_ITEM(fargs, i);
        if (pc_py_is_tensor(a)) {
            if (n_in == PC_CALL_MAX_IN) goto toolarge;
            ins[n_in++] = T(a);
            PyObject *ix = PyLong_FromSsize_t(i);
            if (!ix || PyList_Append(posl, ix) < 0) {
                Py_XDECREF(ix);
                goto fail;
            }
            Py_DECREF(ix);
            PyList_SET_ITEM(tmpl, i, Py_NewRef(Py_None));
        } else {
            PyList_SET_ITEM(tmpl, i, Py_NewRef(a));
        }
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(outseq); i++) {
        PyObject *o = PyTuple_GET_ITEM(outseq, i);
        if (!pc_py_is_tensor(o)) continue;
        if (n_out == PC_INSTR_MAX_OUT) goto toolarge;
        outs[n_out++] = T(o);
    }
    pos = PyList_AsTuple(posl);
    ctx = pos ? PyTuple_Pack(3, cls, tmpl, pos) : NULL;
    if (!ctx) goto fail;
    PcCall c;
    memset(&c, 0, sizeof c);
    c.opc = PC_OPC_PYFUNC;
    c.n_in = n_in;
    c.n_out = n_out;
    c.pyfn = py_ctx_call;
    c.py = ctx; /* the Program takes this reference */
    PcStatus st = pc_trace_record(tr, &c, ins, outs);
    if (st != PC_OK) {
        Py_DECREF(ctx);
        pc_py_raise(st);
        goto fail;
    }
    Py_DECREF(tmpl);
    Py_DECREF(posl);
    Py_DECREF(pos);
    return 0;
toolarge:
    PyErr_SetString(PyExc_NotImplementedError,
                    "tracing a custom Function with that many tensor inputs/outputs");
fail:
    Py_XDECREF(tmpl);
    Py_XDECREF(posl);
    Py_XDECREF(pos);
    return -1;
}

/* ---- Program objects ---- */

typedef struct {
    PyObject_HEAD
    PcProgram *p; /* owned */
} PcPyProgram;

static PyTypeObject *program_type;

static PyObject *program_wrap(PcProgram *p) {
    PcPyProgram *o = PyObject_New(PcPyProgram, program_type);
    if (!o) {
        pc_program_free(p);
        return NULL;
    }
    p->py_release = py_ctx_release;
    p->py_retain = py_ctx_retain;
    o->p = p;
    return (PyObject *)o;
}

PcProgram *pc_py_program_ptr(PyObject *obj) {
    if (!PyObject_TypeCheck(obj, program_type)) {
        PyErr_Format(PyExc_TypeError, "expected a pipec._C.Program, got %.100s",
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    return ((PcPyProgram *)obj)->p;
}

static void program_dealloc(PcPyProgram *self) {
    PyTypeObject *tp = Py_TYPE(self);
    pc_program_free(self->p);
    PyObject_Free(self);
    Py_DECREF(tp);
}

static PyObject *int_tuple(int n, const int *v) {
    PyObject *t = PyTuple_New(n);
    for (int i = 0; t && i < n; i++) PyTuple_SET_ITEM(t, i, PyLong_FromLong(v[i]));
    return t;
}

static PyObject *program_get(PcPyProgram *self, void *which) {
    PcProgram *p = self->p;
    switch ((int)(intptr_t)which) {
    case 0: return int_tuple(p->n_inputs, p->inputs);
    case 1: return int_tuple(p->n_externals, p->externals);
    case 2: return int_tuple(p->n_outputs, p->outputs);
    case 3: return PyLong_FromLong(p->n_instrs);
    case 7:
        if (!p->alias) Py_RETURN_NONE;
        return int_tuple(p->n_slots, p->alias);
    case 4: return int_tuple(p->n_marks, p->marks);
    case 6: return PyBool_FromLong(p->reads_shapes);
    default: {
        int n = 0;
        for (int k = 0; k < p->n_instrs; k++) n += p->instrs[k].call.opc == PC_OPC_PYFUNC;
        return PyLong_FromLong(n);
    }
    }
}

static int tensors_of(PyObject *seq_obj, const char *what, int want, PyObject **keep,
                      PcTensor **ts) {
    PyObject *seq = PySequence_Fast(seq_obj, what);
    if (!seq) return -1;
    if (PySequence_Fast_GET_SIZE(seq) != want) {
        PyErr_Format(PyExc_ValueError, "%s: expected %d tensors, got %zd", what, want,
                     PySequence_Fast_GET_SIZE(seq));
        Py_DECREF(seq);
        return -1;
    }
    for (int i = 0; i < want; i++) {
        PyObject *o = PySequence_Fast_GET_ITEM(seq, i);
        if (!(ts[i] = pc_py_unwrap(o, what))) {
            Py_DECREF(seq);
            return -1;
        }
    }
    *keep = seq;
    return 0;
}

/* run(inputs, externals) -> tuple of outputs */
static PyObject *program_run(PcPyProgram *self, PyObject *args) {
    PyObject *oi, *oe;
    if (!PyArg_ParseTuple(args, "OO:run", &oi, &oe)) return NULL;
    PcProgram *p = self->p;
    PcTensor **buf = PyMem_Calloc((size_t)(p->n_inputs + p->n_externals + p->n_outputs + 1),
                                  sizeof(PcTensor *));
    if (!buf) return PyErr_NoMemory();
    PcTensor **ins = buf, **exts = buf + p->n_inputs, **outs = exts + p->n_externals;
    PyObject *k1 = NULL, *k2 = NULL, *ret = NULL;
    if (tensors_of(oi, "Program.run inputs", p->n_inputs, &k1, ins) < 0) goto out;
    if (tensors_of(oe, "Program.run params", p->n_externals, &k2, exts) < 0) goto out;
    PcStatus st;
    Py_BEGIN_ALLOW_THREADS
    st = pc_program_run(p, ins, exts, outs);
    Py_END_ALLOW_THREADS
    if (st != PC_OK) {
        pc_py_raise(st);
        goto out;
    }
    ret = PyTuple_New(p->n_outputs);
    for (int i = 0; i < p->n_outputs; i++) {
        PyObject *w = pc_py_wrap(outs[i]);
        if (!ret || !w) {
            Py_XDECREF(w);
            continue;
        }
        PyTuple_SET_ITEM(ret, i, w);
    }
out:
    Py_XDECREF(k1);
    Py_XDECREF(k2);
    PyMem_Free(buf);
    return ret;
}

static PyObject *program_external_tensor(PcPyProgram *self, PyObject *arg) {
    long i = PyLong_AsLong(arg);
    if (i == -1 && PyErr_Occurred()) return NULL;
    PcTensor *t = pc_program_external_tensor(self->p, (int)i);
    if (!t) Py_RETURN_NONE;
    pc_tensor_incref(t);
    return pc_py_wrap(t);
}

static PyObject *program_make_const(PcPyProgram *self, PyObject *arg) {
    long i = PyLong_AsLong(arg);
    if (i == -1 && PyErr_Occurred()) return NULL;
    PcStatus st = pc_program_make_const(self->p, (int)i);
    if (st != PC_OK) return pc_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *program_consts_to(PcPyProgram *self, PyObject *arg) {
    PcDevice dev;
    if (pc_py_parse_device(arg, "device", &dev) < 0) return NULL;
    PcStatus st = pc_program_consts_to(self->p, dev);
    if (st != PC_OK) return pc_py_raise(st);
    Py_RETURN_NONE;
}

/* split() -> list of (Program, in_slots, ext_slots, out_slots) in original slot numbers */
static PyObject *program_split(PcPyProgram *self, PyObject *unused) {
    (void)unused;
    int n;
    PcProgram **stages;
    PcStageIO *io;
    PcStatus st = pc_program_split(self->p, &n, &stages, &io);
    if (st != PC_OK) return pc_py_raise(st);
    PyObject *list = PyList_New(n);
    for (int i = 0; i < n; i++) {
        PyObject *prog = program_wrap(stages[i]);
        stages[i] = NULL;
        PyObject *item = (list && prog)
                             ? Py_BuildValue("(NNNN)", prog, int_tuple(io[i].n_in, io[i].in),
                                             int_tuple(io[i].n_ext, io[i].ext),
                                             int_tuple(io[i].n_out, io[i].out))
                             : NULL;
        if (!item) {
            if (!list) Py_XDECREF(prog);
            Py_CLEAR(list);
            continue;
        }
        PyList_SET_ITEM(list, i, item);
    }
    for (int i = 0; i < n; i++) pc_program_free(stages[i]);
    free(stages);
    pc_stage_io_free(n, io);
    return list;
}

/* instructions() -> [(op name, input slots (-1: absent), output slots, output elements,
 * flops, in place)] as tracing saw them (new reference) */
static PyObject *program_instructions(PcPyProgram *self, PyObject *unused) {
    (void)unused;
    const PcProgram *p = self->p;
    PyObject *list = PyList_New(p->n_instrs);
    for (int k = 0; list && k < p->n_instrs; k++) {
        const PcInstr *in = &p->instrs[k];
        PyObject *numel = PyTuple_New(in->call.n_out);
        for (int o = 0; numel && o < in->call.n_out; o++) {
            PyObject *v = PyLong_FromLongLong((long long)in->out_numel[o]);
            if (!v) {
                Py_CLEAR(numel);
                break;
            }
            PyTuple_SET_ITEM(numel, o, v);
        }
        PyObject *item = numel ? Py_BuildValue("(sNNNdN)", pc_call_name(&in->call),
                                               int_tuple(in->call.n_in, in->in),
                                               int_tuple(in->call.n_out, in->out), numel,
                                               in->flops,
                                               PyBool_FromLong(pc_call_is_inplace(&in->call)))
                               : NULL;
        if (!item) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, k, item);
    }
    return list;
}

/* set_marks(indices): replace the pipe_split marks (a split policy's boundaries); returns None
 * (new reference), borrows arg */
static PyObject *program_set_marks(PcPyProgram *self, PyObject *arg) {
    PyObject *seq = PySequence_Fast(arg, "set_marks: expected a sequence of ints");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    int *v = PyMem_Malloc(sizeof(int) * (size_t)(n > 0 ? n : 1));
    if (!v) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        long x = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        if (x == -1 && PyErr_Occurred()) {
            PyMem_Free(v);
            Py_DECREF(seq);
            return NULL;
        }
        v[i] = x < INT_MIN ? INT_MIN : x > INT_MAX ? INT_MAX : (int)x;
    }
    Py_DECREF(seq);
    PcStatus st = pc_program_set_marks(self->p, (int)n, v);
    PyMem_Free(v);
    if (st != PC_OK) return pc_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *program_format(PcPyProgram *self, PyObject *unused) {
    (void)unused;
    char *s = pc_program_format(self->p);
    if (!s) return PyErr_NoMemory();
    PyObject *r = PyUnicode_FromString(s);
    free(s);
    return r;
}

static PyObject *program_same_code(PcPyProgram *self, PyObject *other) {
    if (!PyObject_TypeCheck(other, Py_TYPE(self))) {
        PyErr_SetString(PyExc_TypeError, "same_code: expected a Program");
        return NULL;
    }
    return PyBool_FromLong(pc_program_same_code(self->p, ((PcPyProgram *)other)->p));
}

static PyMethodDef program_methods[] = {
    {"same_code", (PyCFunction)program_same_code, METH_O,
     "same_code(other): the same calls, arguments, wiring and constants."},
    {"run", (PyCFunction)program_run, METH_VARARGS,
     "run(inputs, params) -> outputs: replay the Program (autograd records as usual)."},
    {"external_tensor", (PyCFunction)program_external_tensor, METH_O,
     "The tensor that external number i had at trace time (or None)."},
    {"make_const", (PyCFunction)program_make_const, METH_O,
     "Bind external number i to its traced tensor as a constant."},
    {"consts_to", (PyCFunction)program_consts_to, METH_O, "Move constants to a device."},
    {"split", (PyCFunction)program_split, METH_NOARGS,
     "Cut at the pipe_split marks: [(Program, in_slots, param_slots, out_slots)]."},
    {"format", (PyCFunction)program_format, METH_NOARGS, "A readable listing."},
    {"instructions", (PyCFunction)program_instructions, METH_NOARGS,
     "[(op, input slots, output slots, output elements, flops, in place)]: what tracing "
     "saw."},
    {"set_marks", (PyCFunction)program_set_marks, METH_O,
     "set_marks(indices): replace the pipe_split marks (strictly increasing)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef program_getset[] = {
    {"input_slots", (getter)program_get, NULL, "INPUT slots in order.", (void *)0},
    {"external_slots", (getter)program_get, NULL, "EXTERNAL (param) slots in order.", (void *)1},
    {"output_slots", (getter)program_get, NULL, "Output slots in order.", (void *)2},
    {"num_instructions", (getter)program_get, NULL, "Number of recorded calls.", (void *)3},
    {"marks", (getter)program_get, NULL, "Instruction index of each pipe_split.", (void *)4},
    {"num_python_calls", (getter)program_get, NULL, "Custom Function calls (run Python).",
     (void *)5},
    {"alias_roots", (getter)program_get, NULL,
     "Per slot, the lowest slot sharing its traced storage (views), or None when not traced.",
     (void *)7},
    {"reads_shapes", (getter)program_get, NULL,
     "Whether the traced code read the shape of an input-derived value (sizes may be baked "
     "in).", (void *)6},
    {NULL, NULL, NULL, NULL, NULL},
};

/* ---- tracing functions ---- */

static PcTracer *current_tracer(void) {
    PcTracer *tr = pc_trace_active();
    if (!tr) PyErr_SetString(PyExc_RuntimeError, "no trace is active on this thread");
    return tr;
}

static PyObject *f_trace_begin(PyObject *m, PyObject *unused) {
    (void)m; (void)unused;
    PcTracer *tr;
    PcStatus st = pc_trace_begin(&tr);
    if (st != PC_OK) return pc_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *f_trace_input(PyObject *m, PyObject *arg) {
    (void)m;
    PcTracer *tr = current_tracer();
    PcTensor *t = tr ? pc_py_unwrap(arg, "traced input") : NULL;
    if (!t) return NULL;
    PcStatus st = pc_trace_input(tr, t);
    if (st != PC_OK) return pc_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *f_trace_mark(PyObject *m, PyObject *unused) {
    (void)m; (void)unused;
    PcTracer *tr = current_tracer();
    if (!tr) return NULL;
    PcStatus st = pc_trace_mark(tr);
    if (st != PC_OK) return pc_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *f_trace_active(PyObject *m, PyObject *unused) {
    (void)m; (void)unused;
    return PyBool_FromLong(pc_trace_active() != NULL);
}

static PyObject *f_trace_pause(PyObject *m, PyObject *arg) {
    (void)m;
    int on = PyObject_IsTrue(arg);
    if (on < 0) return NULL;
    return PyBool_FromLong(pc_trace_set_paused(on != 0));
}

static PyObject *f_trace_end(PyObject *m, PyObject *arg) {
    (void)m;
    PcTracer *tr = current_tracer();
    if (!tr) return NULL;
    PyObject *seq = PySequence_Fast(arg, "trace outputs");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PcTensor **outs = PyMem_Calloc((size_t)(n ? n : 1), sizeof(PcTensor *));
    if (!outs) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!(outs[i] = pc_py_unwrap(PySequence_Fast_GET_ITEM(seq, i), "trace output"))) {
            PyMem_Free(outs);
            Py_DECREF(seq);
            return NULL;
        }
    }
    PcProgram *p;
    PcStatus st = pc_trace_end(tr, (int)n, outs, &p);
    PyMem_Free(outs);
    Py_DECREF(seq);
    if (st != PC_OK) return pc_py_raise(st);
    return program_wrap(p);
}

static PyObject *f_trace_abort(PyObject *m, PyObject *unused) {
    (void)m; (void)unused;
    bool paused = pc_trace_set_paused(false);
    PcTracer *tr = pc_trace_active();
    if (tr) pc_trace_abort(tr);
    (void)paused;
    Py_RETURN_NONE;
}

static PyMethodDef trace_functions[] = {
    {"_trace_begin", (PyCFunction)f_trace_begin, METH_NOARGS, NULL},
    {"_trace_input", (PyCFunction)f_trace_input, METH_O, NULL},
    {"_trace_mark", (PyCFunction)f_trace_mark, METH_NOARGS, NULL},
    {"_trace_active", (PyCFunction)f_trace_active, METH_NOARGS, NULL},
    {"_trace_pause", (PyCFunction)f_trace_pause, METH_O, NULL},
    {"_trace_end", (PyCFunction)f_trace_end, METH_O, NULL},
    {"_trace_abort", (PyCFunction)f_trace_abort, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

int pc_py_trace_init(PyObject *module) {
    static PyType_Slot slots[] = {
        {Py_tp_dealloc, (void *)program_dealloc},
        {Py_tp_methods, program_methods},
        {Py_tp_getset, program_getset},
        {Py_tp_doc, (void *)"A traced Program (C): op list over value slots, replayable."},
        {0, NULL},
    };
    static PyType_Spec spec = {
        .name = "pipec._C.Program",
        .basicsize = sizeof(PcPyProgram),
        .flags = Py_TPFLAGS_DEFAULT,
        .slots = slots,
    };
    program_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &spec, NULL);
    if (!program_type) return -1;
    if (PyModule_AddObjectRef(module, "Program", (PyObject *)program_type) < 0) return -1;
    return PyModule_AddFunctions(module, trace_functions);
}
