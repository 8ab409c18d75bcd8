/* runtime_py.c — Python face of the pipeline runtime (csrc/runtime/runtime.h).
 *
 * _C.Runtime(stages, n_microbatches, loss_fn, dw_fns, timeout) where stages is a list of
 * (rank, device, Program, [param tensors], [(src_stage, src_idx), ...], n_out
 *  [, in_meta, out_meta]); Program is None for a stage of another process, and a meta list
 * holds (dtype, shape, requires_grad) per input/output (multi-process mode, see
 * set_comm). The object keeps the Programs, parameter lists and communicator alive (the C
 * runtime borrows them).
 * loss_fn(outputs, mb) -> loss tensor (outputs: a tuple); dw_fns: {stage: fn(mb)}.
 * run_rank(rank, actions) releases the GIL for the whole action list; callbacks take it
 * back. All functions return new references.
 */
#include "bindings.h"

#include "../comm/comm.h"
#include "../graph/program.h"
#include "../runtime/runtime.h"

#define T(o) (((PcPyTensor *)(o))->t)

typedef struct {
    PyObject_HEAD
    PcRuntime *rt;        /* owned */
    PyObject *keep;       /* owned: list of objects the runtime borrows from */
    PyObject *params;     /* owned: per stage, the list of its parameters (owned references
                             that keep the tensors in ext[s] alive) */
    PcTensor ***ext;      /* owned [n_stages] arrays of len(params[s]) borrowed tensors; the
                             C runtime borrows the arrays, so they are freed after it */
    PyObject *loss_fn;    /* owned or NULL */
    PyObject *dw_fns;     /* owned dict stage -> callable, or NULL */
    PyObject *custom_fn;  /* owned callable(rank, action_text), or NULL */
    PyObject *comm;       /* owned _C.Comm in multi-process mode, or NULL */
    PcComm *comm_ptr;     /* the PcComm given to the C runtime (checked at each step) */
    bool *has_dw;         /* owned [n_stages]: stage has a dW function (keys of dw_fns) */
    bool custom_types[PC_ACT_COUNT];
    int n_stages;
} PcPyRuntime;

static PyTypeObject *runtime_type;

/* ---- callbacks (called from runtime threads without the GIL) ---- */

static PcStatus cb_loss(void *ctx, int stage, int mb, int n_out, PcTensor *const *outs,
                        PcTensor **loss) {
    (void)stage;
    PcPyRuntime *self = ctx;
    PcStatus st = PC_OK;
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *tup = PyTuple_New(n_out), *res = NULL;
    for (int i = 0; tup && i < n_out; i++) {
        pc_tensor_incref(outs[i]);
        PyObject *w = pc_py_wrap(outs[i]);
        if (!w) {
            Py_CLEAR(tup);
            break;
        }
        PyTuple_SET_ITEM(tup, i, w);
    }
    if (tup) res = PyObject_CallFunction(self->loss_fn, "Oi", tup, mb);
    if (!res) {
        st = pc_set_error(PC_ERR_PYTHON, "loss_fn raised");
    } else if (!pc_py_is_tensor(res)) {
        PyErr_Format(PyExc_TypeError, "loss_fn must return a Tensor, got %.100s",
                     Py_TYPE(res)->tp_name);
        st = pc_set_error(PC_ERR_PYTHON, "loss_fn returned a non-tensor");
    } else {
        pc_tensor_incref(T(res));
        *loss = T(res);
    }
    Py_XDECREF(res);
    Py_XDECREF(tup);
    PyGILState_Release(g);
    return st;
}

/* Called for every backward action: answered from a table built at construction, so the
 * runtime's loop does not take the GIL for it. */
static bool cb_has_dw(void *ctx, int stage) {
    PcPyRuntime *self = ctx;
    return self->has_dw && stage >= 0 && stage < self->n_stages && self->has_dw[stage];
}

static PcStatus cb_dw(void *ctx, int stage, int mb) {
    PcPyRuntime *self = ctx;
    PcStatus st = PC_OK;
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *k = PyLong_FromLong(stage);
    PyObject *fn = k ? PyDict_GetItemWithError(self->dw_fns, k) : NULL;
    Py_XDECREF(k);
    PyObject *res = fn ? PyObject_CallFunction(fn, "i", mb) : NULL;
    if (!res) st = pc_set_error(PC_ERR_PYTHON, "dw_builder's function raised");
    Py_XDECREF(res);
    PyGILState_Release(g);
    return st;
}

static bool cb_has_custom(void *ctx, PcActType type) {
    PcPyRuntime *self = ctx;
    return self->custom_fn && (int)type >= 0 && type < PC_ACT_COUNT && self->custom_types[type];
}

static PcStatus cb_custom(void *ctx, int rank, const char *action) {
    PcPyRuntime *self = ctx;
    PcStatus st = PC_OK;
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *res = PyObject_CallFunction(self->custom_fn, "is", rank, action);
    if (!res) st = pc_set_error(PC_ERR_PYTHON, "a custom schedule function raised");
    Py_XDECREF(res);
    PyGILState_Release(g);
    return st;
}

/* ---- object ---- */

/* The runtime's Python references (loss_fn is usually a bound method of the object that
 * owns this runtime) form cycles, so the type takes part in garbage collection. */
static int runtime_traverse(PcPyRuntime *self, visitproc visit, void *arg) {
    Py_VISIT(self->keep);
    Py_VISIT(self->params);
    Py_VISIT(self->loss_fn);
    Py_VISIT(self->dw_fns);
    Py_VISIT(self->custom_fn);
    Py_VISIT(self->comm);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static int runtime_clear(PcPyRuntime *self) {
    if (self->rt) { /* the C runtime borrows from `keep`: free it first */
        PcRuntime *rt = self->rt;
        self->rt = NULL;
        Py_BEGIN_ALLOW_THREADS /* freeing graphs may run Python-node releases */
        pc_runtime_free(rt);
        Py_END_ALLOW_THREADS
    }
    Py_CLEAR(self->keep);
    Py_CLEAR(self->params);
    for (int s = 0; self->ext && s < self->n_stages; s++) PyMem_Free(self->ext[s]);
    PyMem_Free(self->ext);
    self->ext = NULL;
    Py_CLEAR(self->loss_fn);
    Py_CLEAR(self->dw_fns);
    Py_CLEAR(self->custom_fn);
    Py_CLEAR(self->comm);
    PyMem_Free(self->has_dw);
    self->has_dw = NULL;
    return 0;
}

static void runtime_dealloc(PcPyRuntime *self) {
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    runtime_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

/* Methods need a live C runtime (tp_clear may have freed it during a collection). */
#define RT_REQUIRE(self)                                                                  \
    do {                                                                                  \
        if (!(self)->rt) {                                                                \
            PyErr_SetString(PyExc_RuntimeError, "this pipeline runtime was released");   \
            return NULL;                                                                  \
        }                                                                                 \
    } while (0)

/* A list of (dtype, shape, requires_grad), n long, into metas[n]; None gives NULL. */
static int parse_metas(PyObject *obj, int n, const char *what, PcValueMeta **out) {
    *out = NULL;
    if (obj == Py_None) return 0;
    if (!PyList_Check(obj) || PyList_GET_SIZE(obj) != n) {
        PyErr_Format(PyExc_ValueError, "Runtime: %s must be a list of %d (dtype, shape, "
                                       "requires_grad)", what, n);
        return -1;
    }
    PcValueMeta *m = PyMem_Calloc((size_t)(n ? n : 1), sizeof *m);
    if (!m) {
        PyErr_NoMemory();
        return -1;
    }
    for (int i = 0; i < n; i++) {
        PyObject *dt, *shape;
        int rg;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(obj, i), "OO!p", &dt, &PyTuple_Type, &shape, &rg) ||
            pc_py_parse_dtype(dt, what, &m[i].dtype) < 0)
            goto fail;
        Py_ssize_t nd = PyTuple_GET_SIZE(shape);
        if (nd > PC_MAX_DIMS) {
            PyErr_Format(PyExc_ValueError, "Runtime: %s has %zd dims (at most %d)", what, nd,
                         PC_MAX_DIMS);
            goto fail;
        }
        m[i].ndim = (int)nd;
        for (Py_ssize_t d = 0; d < nd; d++) {
            m[i].shape[d] = PyLong_AsLongLong(PyTuple_GET_ITEM(shape, d));
            if (m[i].shape[d] < 0) {
                if (!PyErr_Occurred())
                    PyErr_Format(PyExc_ValueError, "Runtime: %s has a negative size", what);
                goto fail;
            }
        }
        m[i].requires_grad = rg != 0;
    }
    *out = m;
    return 0;
fail:
    PyMem_Free(m);
    return -1;
}

static PyObject *runtime_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"stages", "n_microbatches", "loss_fn", "dw_fns", "timeout",
                             "custom_fn", "custom_types", NULL};
    PyObject *stages, *loss_fn = Py_None, *dw_fns = Py_None, *custom_fn = Py_None;
    PyObject *custom_types = Py_None;
    int n_mb;
    double timeout = 300.0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!i|OOdOO:Runtime", kwlist, &PyList_Type,
                                     &stages, &n_mb, &loss_fn, &dw_fns, &timeout, &custom_fn,
                                     &custom_types))
        return NULL;
    Py_ssize_t ns = PyList_GET_SIZE(stages);
    PcPyRuntime *self = (PcPyRuntime *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    self->keep = PyList_New(0);
    self->params = PyList_New(ns);
    self->ext = PyMem_Calloc((size_t)(ns ? ns : 1), sizeof *self->ext);
    self->n_stages = (int)ns;
    if (!self->keep || !self->params || !self->ext) {
        Py_DECREF(self);
        return PyErr_Occurred() ? NULL : PyErr_NoMemory();
    }
    if (loss_fn != Py_None) self->loss_fn = Py_NewRef(loss_fn);
    if (custom_fn != Py_None && custom_types != Py_None) {
        PyObject *seq = PySequence_Fast(custom_types, "custom_types");
        if (!seq) {
            Py_DECREF(self);
            return NULL;
        }
        for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
            const char *name = PyUnicode_AsUTF8(PySequence_Fast_GET_ITEM(seq, i));
            PcActType t;
            if (!name || pc_act_type_from_name(name, strlen(name), &t) < 0) {
                if (!PyErr_Occurred())
                    PyErr_Format(PyExc_ValueError, "unknown action type %s", name);
                Py_DECREF(seq);
                Py_DECREF(self);
                return NULL;
            }
            self->custom_types[t] = true;
        }
        Py_DECREF(seq);
        self->custom_fn = Py_NewRef(custom_fn);
    }
    if (dw_fns != Py_None) {
        if (!PyDict_Check(dw_fns)) {
            PyErr_SetString(PyExc_TypeError, "Runtime: dw_fns must be a dict {stage: callable}");
            Py_DECREF(self);
            return NULL;
        }
        self->dw_fns = Py_NewRef(dw_fns);
        self->has_dw = PyMem_Calloc((size_t)(ns ? ns : 1), sizeof(bool));
        if (!self->has_dw) {
            Py_DECREF(self);
            return PyErr_NoMemory();
        }
        for (Py_ssize_t st_i = 0; st_i < ns; st_i++) {
            PyObject *k = PyLong_FromSsize_t(st_i);
            int r = k ? PyDict_Contains(dw_fns, k) : -1;
            Py_XDECREF(k);
            if (r < 0) {
                Py_DECREF(self);
                return NULL;
            }
            self->has_dw[st_i] = r == 1;
        }
    }
    PcRuntimeStageDesc *desc = PyMem_Calloc((size_t)(ns ? ns : 1), sizeof *desc);
    PcStageInput **ins = PyMem_Calloc((size_t)(ns ? ns : 1), sizeof *ins);
    PcValueMeta **metas = PyMem_Calloc((size_t)(2 * ns + 1), sizeof *metas);
    PcTensor ***exts = self->ext; /* owned by self */
    PyObject *ret = NULL;
    if (!desc || !ins || !metas) {
        PyErr_NoMemory();
        goto out;
    }
    for (Py_ssize_t s = 0; s < ns; s++) {
        PyObject *item = PyList_GET_ITEM(stages, s);
        int rank, n_out;
        PyObject *devo, *prog, *params, *srcs, *in_meta = Py_None, *out_meta = Py_None;
        if (!PyArg_ParseTuple(item, "iOOO!O!i|OO", &rank, &devo, &prog, &PyList_Type, &params,
                              &PyList_Type, &srcs, &n_out, &in_meta, &out_meta))
            goto out;
        PcDevice dev;
        if (pc_py_parse_device(devo, "stage device", &dev) < 0) goto out;
        PcProgram *p = prog == Py_None ? NULL : pc_py_program_ptr(prog);
        if (!p && prog != Py_None) goto out;
        if (PyList_Append(self->keep, prog) < 0) goto out;
        PyList_SET_ITEM(self->params, s, Py_NewRef(params));
        Py_ssize_t ne = PyList_GET_SIZE(params), ni = PyList_GET_SIZE(srcs);
        exts[s] = PyMem_Calloc((size_t)(ne ? ne : 1), sizeof(PcTensor *));
        ins[s] = PyMem_Calloc((size_t)(ni ? ni : 1), sizeof(PcStageInput));
        if (!exts[s] || !ins[s]) {
            PyErr_NoMemory();
            goto out;
        }
        for (Py_ssize_t i = 0; i < ne; i++)
            if (!(exts[s][i] = pc_py_unwrap(PyList_GET_ITEM(params, i), "stage parameter")))
                goto out;
        for (Py_ssize_t i = 0; i < ni; i++)
            if (!PyArg_ParseTuple(PyList_GET_ITEM(srcs, i), "ii", &ins[s][i].src_stage,
                                  &ins[s][i].src_idx))
                goto out;
        if (parse_metas(in_meta, (int)ni, "in_meta", &metas[2 * s]) < 0 ||
            parse_metas(out_meta, n_out, "out_meta", &metas[2 * s + 1]) < 0)
            goto out;
        if (p && (ne != p->n_externals || ni != p->n_inputs || n_out != p->n_outputs)) {
            PyErr_Format(PyExc_ValueError,
                         "Runtime: stage %zd wiring does not match its Program (%zd/%d params, "
                         "%zd/%d inputs, %d/%d outputs)",
                         s, ne, p->n_externals, ni, p->n_inputs, n_out, p->n_outputs);
            goto out;
        }
        desc[s] = (PcRuntimeStageDesc){rank,      dev,   p,          (int)ne,
                                       exts[s],   (int)ni, ins[s],   n_out,
                                       metas[2 * s], metas[2 * s + 1]};
    }
    PcRuntimeCallbacks cb = {self, self->loss_fn ? cb_loss : NULL, cb_dw, cb_has_dw,
                             cb_has_custom, cb_custom};
    PcStatus st = pc_runtime_create((int)ns, desc, n_mb, &cb, timeout, &self->rt);
    if (st != PC_OK) {
        pc_py_raise(st);
        goto out;
    }
    ret = (PyObject *)self;
    self = NULL;
out:
    for (Py_ssize_t s = 0; metas && s < 2 * ns; s++) PyMem_Free(metas[s]); /* copied */
    PyMem_Free(metas);
    for (Py_ssize_t s = 0; ins && s < ns; s++) PyMem_Free(ins[s]); /* copied */
    PyMem_Free(ins);
    PyMem_Free(desc);
    Py_XDECREF(self); /* on failure; frees its ext arrays */
    return ret;
}

/* set_externals(stage, params): the stage's Program reads these parameters and buffers from
 * the next step on (a module's parameter was replaced). Between steps only. */
static PyObject *rt_set_externals(PcPyRuntime *self, PyObject *args) {
    RT_REQUIRE(self);
    int s;
    PyObject *params;
    if (!PyArg_ParseTuple(args, "iO!:set_externals", &s, &PyList_Type, &params)) return NULL;
    if (s < 0 || s >= self->n_stages || !self->ext[s]) {
        PyErr_Format(PyExc_ValueError, "set_externals: no stage %d with parameters here", s);
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(PyList_GET_ITEM(self->params, s));
    if (PyList_GET_SIZE(params) != n) {
        PyErr_Format(PyExc_ValueError, "set_externals: stage %d takes %zd parameters, got %zd",
                     s, n, PyList_GET_SIZE(params));
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) /* check all before changing any */
        if (!pc_py_unwrap(PyList_GET_ITEM(params, i), "stage parameter")) return NULL;
    PyObject *copy = PyList_GetSlice(params, 0, n); /* new reference, kept in self->params */
    if (!copy) return NULL;
    for (Py_ssize_t i = 0; i < n; i++)
        self->ext[s][i] = pc_py_unwrap(PyList_GET_ITEM(copy, i), "stage parameter");
    PyList_SetItem(self->params, s, copy); /* steals; drops the old list */
    Py_RETURN_NONE;
}

static PyObject *rt_begin_step(PcPyRuntime *self, PyObject *args) {
    RT_REQUIRE(self);
    PyObject *inputs;
    int n_in, training, record;
    if (!PyArg_ParseTuple(args, "O!ipp:begin_step", &PyList_Type, &inputs, &n_in, &training,
                          &record))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(inputs);
    PcTensor **ts = PyMem_Calloc((size_t)(n ? n : 1), sizeof(PcTensor *));
    if (!ts) return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!(ts[i] = pc_py_unwrap(PyList_GET_ITEM(inputs, i), "microbatch input"))) {
            PyMem_Free(ts);
            return NULL;
        }
    }
    PcStatus st = pc_runtime_begin_step(self->rt, n_in, ts, training != 0, record != 0);
    PyMem_Free(ts);
    if (st != PC_OK) return pc_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *rt_run_rank(PcPyRuntime *self, PyObject *args) {
    RT_REQUIRE(self);
    int rank;
    PyObject *actions;
    if (!PyArg_ParseTuple(args, "iO:run_rank", &rank, &actions)) return NULL;
    PyObject *seq = PySequence_Fast(actions, "actions");
    if (!seq) return NULL;
    PcActionList list;
    pc_action_list_init(&list);
    PcStatus st = PC_OK;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq) && st == PC_OK; i++) {
        PyObject *o = PySequence_Fast_GET_ITEM(seq, i);
        PcAction a;
        if (o == Py_None) {
            a = pc_action_idle();
        } else {
            PyObject *s = PyObject_Str(o);
            const char *txt = s ? PyUnicode_AsUTF8(s) : NULL;
            if (!txt) {
                Py_XDECREF(s);
                pc_action_list_free(&list);
                Py_DECREF(seq);
                return NULL;
            }
            st = pc_action_parse(txt, &a);
            Py_DECREF(s);
        }
        if (st == PC_OK) st = pc_action_list_push(&list, a);
    }
    Py_DECREF(seq);
    bool acquired = false;
    if (st == PC_OK && self->comm) {
        /* the communicator must stay alive while the rank runs (destroy() waits for us) */
        PcComm *c = pc_py_comm_acquire(self->comm);
        if (c && c != self->comm_ptr) pc_py_comm_release(self->comm);
        if (!c || c != self->comm_ptr) {
            PyErr_Clear();
            pc_action_list_free(&list);
            PyErr_SetString(pc_py_pipeline_error, "the process group of this pipeline was "
                                                  "destroyed");
            return NULL;
        }
        acquired = true;
    }
    if (st == PC_OK) {
        Py_BEGIN_ALLOW_THREADS
        st = pc_runtime_run_rank(self->rt, rank, &list);
        Py_END_ALLOW_THREADS
    }
    if (acquired) pc_py_comm_release(self->comm);
    pc_action_list_free(&list);
    if (st != PC_OK) return pc_py_raise(st);
    Py_RETURN_NONE;
}

/* set_comm(comm, rank): multi-process mode over a _C.Comm (kept alive by the runtime). */
static PyObject *rt_set_comm(PcPyRuntime *self, PyObject *args) {
    RT_REQUIRE(self);
    PyObject *comm;
    int rank;
    if (!PyArg_ParseTuple(args, "Oi:set_comm", &comm, &rank)) return NULL;
    PcComm *c = pc_py_comm_acquire(comm);
    if (!c) return NULL;
    PcStatus st = pc_runtime_set_comm(self->rt, c, rank);
    pc_py_comm_release(comm);
    if (st != PC_OK) return pc_py_raise(st);
    Py_XSETREF(self->comm, Py_NewRef(comm));
    self->comm_ptr = c;
    Py_RETURN_NONE;
}

/* run_builtin(rank, action): the built-in handler, from inside a custom function. */
static PyObject *rt_run_builtin(PcPyRuntime *self, PyObject *args) {
    RT_REQUIRE(self);
    int rank;
    const char *txt;
    if (!PyArg_ParseTuple(args, "is:run_builtin", &rank, &txt)) return NULL;
    PcAction a;
    PcStatus st = pc_action_parse(txt, &a);
    if (st == PC_OK) {
        Py_BEGIN_ALLOW_THREADS
        st = pc_runtime_run_builtin(self->rt, rank, &a);
        Py_END_ALLOW_THREADS
    }
    if (st != PC_OK) return pc_py_raise(st);
    Py_RETURN_NONE;
}

/* input_grads(mb) -> [(model input index, gradient)] of a training step's microbatch */
static PyObject *rt_input_grads(PcPyRuntime *self, PyObject *arg) {
    RT_REQUIRE(self);
    long mb = PyLong_AsLong(arg);
    if (mb == -1 && PyErr_Occurred()) return NULL;
    int n = pc_runtime_input_grads(self->rt, (int)mb, 0, NULL, NULL);
    int *idx = PyMem_Calloc((size_t)(n ? n : 1), sizeof(int));
    PcTensor **g = PyMem_Calloc((size_t)(n ? n : 1), sizeof(PcTensor *));
    PyObject *out = idx && g ? PyList_New(0) : PyErr_NoMemory();
    if (out) pc_runtime_input_grads(self->rt, (int)mb, n, idx, g);
    for (int i = 0; out && i < n; i++) {
        PcTensor *d;
        PcStatus st = pc_op_detach(g[i], &d);
        PyObject *w = st == PC_OK ? pc_py_wrap(d) : pc_py_raise(st);
        PyObject *item = w ? Py_BuildValue("(iN)", idx[i], w) : NULL; /* N: steals w */
        if (!item || PyList_Append(out, item) < 0) Py_CLEAR(out);
        Py_XDECREF(item);
    }
    PyMem_Free(idx);
    PyMem_Free(g);
    return out;
}

static PyObject *rt_outputs(PcPyRuntime *self, PyObject *arg) {
    RT_REQUIRE(self);
    long mb = PyLong_AsLong(arg);
    if (mb == -1 && PyErr_Occurred()) return NULL;
    int n;
    PcTensor **outs;
    PcStatus st = pc_runtime_outputs(self->rt, (int)mb, &n, &outs);
    if (st != PC_OK) return pc_py_raise(st);
    PyObject *tup = PyTuple_New(n);
    for (int i = 0; tup && i < n; i++) {
        if (!outs[i]) {
            PyTuple_SET_ITEM(tup, i, Py_NewRef(Py_None));
            continue;
        }
        PcTensor *d;
        st = pc_op_detach(outs[i], &d);
        PyObject *w = st == PC_OK ? pc_py_wrap(d) : pc_py_raise(st);
        if (!w) {
            Py_CLEAR(tup);
            break;
        }
        PyTuple_SET_ITEM(tup, i, w);
    }
    return tup;
}

static PyObject *rt_loss(PcPyRuntime *self, PyObject *arg) {
    RT_REQUIRE(self);
    long mb = PyLong_AsLong(arg);
    if (mb == -1 && PyErr_Occurred()) return NULL;
    PcTensor *l = pc_runtime_loss(self->rt, (int)mb);
    if (!l) Py_RETURN_NONE;
    PcTensor *d;
    PcStatus st = pc_op_detach(l, &d);
    if (st != PC_OK) return pc_py_raise(st);
    return pc_py_wrap(d);
}

static PyObject *rt_end_step(PcPyRuntime *self, PyObject *unused) {
    RT_REQUIRE(self);
    (void)unused;
    PcRuntime *rt = self->rt;
    Py_BEGIN_ALLOW_THREADS
    pc_runtime_end_step(rt);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *rt_interrupt(PcPyRuntime *self, PyObject *unused) {
    RT_REQUIRE(self);
    (void)unused;
    PcRuntime *rt = self->rt;
    Py_BEGIN_ALLOW_THREADS /* a rank may hold the runtime's lock while it waits for the GIL */
    pc_runtime_interrupt(rt);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *rt_timeline(PcPyRuntime *self, PyObject *unused) {
    RT_REQUIRE(self);
    (void)unused;
    const PcTimelineEvent *ev;
    int n = pc_runtime_timeline(self->rt, &ev);
    PyObject *list = PyList_New(n);
    for (int i = 0; list && i < n; i++) {
        PyObject *t = Py_BuildValue("(isdd)", ev[i].rank, ev[i].action, ev[i].start_us,
                                    ev[i].end_us);
        if (!t) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, i, t);
    }
    return list;
}

static PyMethodDef runtime_methods[] = {
    {"set_externals", (PyCFunction)rt_set_externals, METH_VARARGS,
     "set_externals(stage, params): the stage's parameters and buffers from the next step on"},
    {"begin_step", (PyCFunction)rt_begin_step, METH_VARARGS,
     "begin_step(inputs, n_model_inputs, training, record_timeline)"},
    {"run_rank", (PyCFunction)rt_run_rank, METH_VARARGS,
     "run_rank(rank, actions): execute one rank's lowered actions (GIL released)."},
    {"set_comm", (PyCFunction)rt_set_comm, METH_VARARGS,
     "set_comm(comm, rank): run only `rank` here, reaching the others through comm."},
    {"run_builtin", (PyCFunction)rt_run_builtin, METH_VARARGS,
     "run_builtin(rank, action): run an action's built-in handler (from a custom function)."},
    {"outputs", (PyCFunction)rt_outputs, METH_O, "Last-stage outputs of a microbatch."},
    {"input_grads", (PyCFunction)rt_input_grads, METH_O,
     "[(model input index, gradient)] of a microbatch after a training step."},
    {"loss", (PyCFunction)rt_loss, METH_O, "Loss of a microbatch (or None)."},
    {"end_step", (PyCFunction)rt_end_step, METH_NOARGS, "Free the step's activations."},
    {"interrupt", (PyCFunction)rt_interrupt, METH_NOARGS,
     "Make every rank's run_rank stop at its next action or wait (any thread)."},
    {"timeline", (PyCFunction)rt_timeline, METH_NOARGS,
     "[(rank, action, start_us, end_us)] of the last step (when recorded)."},
    {NULL, NULL, 0, NULL},
};

int pc_py_runtime_init(PyObject *module) {
    static PyType_Slot slots[] = {
        {Py_tp_new, (void *)runtime_new},
        {Py_tp_dealloc, (void *)runtime_dealloc},
        {Py_tp_traverse, (void *)runtime_traverse},
        {Py_tp_clear, (void *)runtime_clear},
        {Py_tp_methods, runtime_methods},
        {Py_tp_doc, (void *)"The C pipeline runtime over stage Programs."},
        {0, NULL},
    };
    static PyType_Spec spec = {
        .name = "pipec._C.Runtime",
        .basicsize = sizeof(PcPyRuntime),
        .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
        .slots = slots,
    };
    runtime_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &spec, NULL);
    if (!runtime_type) return -1;
    return PyModule_AddObjectRef(module, "Runtime", (PyObject *)runtime_type);
}
