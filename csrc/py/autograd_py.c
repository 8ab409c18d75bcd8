/* autograd_py.c — Python face of the C autograd engine: grad mode, backward, grad, the
 * split backward (backward_input + weight work), grad_fn objects, and custom Functions
 * whose backward is Python.
 *
 * Custom Functions: pipec/autograd.py runs forward under no_grad, then calls
 * _C._function_record(ctx, backward, args, outputs). When grad mode is on and a tensor
 * argument requires grad, this creates a PcPyFunctionNode (a PcNode whose apply takes the
 * GIL and calls backward(ctx, *grads)) and returns fresh output tensors attached to it.
 * The node owns references to ctx and backward; release() drops them (with the GIL).
 */
#include "bindings.h"

#include "../ops/ops.h"
#include "../ops/wgrad_batch.h"

#define T(o) (((PcPyTensor *)(o))->t)

/* ---- grad mode ---- */

static PyObject *f_is_grad_enabled(PyObject *m, PyObject *unused) {
    (void)m; (void)unused;
    return PyBool_FromLong(pc_grad_enabled());
}

static PyObject *f_set_grad_enabled(PyObject *m, PyObject *arg) {
    (void)m;
    int on = PyObject_IsTrue(arg);
    if (on < 0) return NULL;
    bool prev = pc_grad_enabled();
    pc_set_grad_enabled(on != 0);
    return PyBool_FromLong(prev);
}

/* ---- helpers ---- */

/* Borrowed PcTensor* array of a sequence of tensors (None allowed when allow_none). */
static int seq_tensors(PyObject *obj, const char *what, bool allow_none, PyObject **keep,
                       PcTensor ***ts, Py_ssize_t *n) {
    PyObject *seq;
    if (pc_py_is_tensor(obj) || obj == Py_None)
        seq = PyTuple_Pack(1, obj);
    else
        seq = PySequence_Fast(obj, what);
    if (!seq) return -1;
    *n = PySequence_Fast_GET_SIZE(seq);
    *ts = PyMem_Calloc((size_t)(*n ? *n : 1), sizeof(PcTensor *));
    if (!*ts) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < *n; i++) {
        PyObject *it = PySequence_Fast_GET_ITEM(seq, i);
        if (it == Py_None && allow_none) continue;
        if (!pc_py_is_tensor(it)) {
            PyErr_Format(PyExc_TypeError, "%s: element %zd must be a Tensor, got %.100s", what, i,
                         Py_TYPE(it)->tp_name);
            PyMem_Free(*ts);
            *ts = NULL;
            Py_DECREF(seq);
            return -1;
        }
        (*ts)[i] = T(it);
    }
    *keep = seq;
    return 0;
}

/* Tuple of wrapped results (NULL entries -> None); steals each result reference. */
static PyObject *results_tuple(PcTensor **res, Py_ssize_t n) {
    PyObject *tup = PyTuple_New(n);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *o;
        if (!tup) {
            pc_tensor_decref(res[i]);
            continue;
        }
        o = res[i] ? pc_py_wrap(res[i]) : Py_NewRef(Py_None);
        if (!o) {
            Py_CLEAR(tup);
            continue;
        }
        PyTuple_SET_ITEM(tup, i, o);
    }
    return tup;
}

/* ---- backward / grad ---- */

/* _backward(tensors, grad_tensors_or_None, retain_graph) */
static PyObject *f_backward(PyObject *m, PyObject *args) {
    (void)m;
    PyObject *ot, *og;
    int retain = 0;
    if (!PyArg_ParseTuple(args, "OOp:_backward", &ot, &og, &retain)) return NULL;
    PyObject *k1 = NULL, *k2 = NULL;
    PcTensor **roots = NULL, **grads = NULL;
    Py_ssize_t n, ng;
    PyObject *ret = NULL;
    if (seq_tensors(ot, "backward tensors", false, &k1, &roots, &n) < 0) return NULL;
    if (og != Py_None) {
        if (seq_tensors(og, "backward grad_tensors", true, &k2, &grads, &ng) < 0) goto out;
        if (ng != n) {
            PyErr_Format(PyExc_RuntimeError,
                         "grad_tensors has %zd elements but there are %zd tensors", ng, n);
            goto out;
        }
    }
    PcStatus st;
    Py_BEGIN_ALLOW_THREADS
    st = pc_autograd_backward((int)n, roots, grads, retain != 0);
    Py_END_ALLOW_THREADS
    if (st != PC_OK) {
        pc_py_raise(st);
        goto out;
    }
    ret = Py_NewRef(Py_None);
out:
    PyMem_Free(roots);
    PyMem_Free(grads);
    Py_XDECREF(k1);
    Py_XDECREF(k2);
    return ret;
}

/* _grad(outputs, inputs, grad_outputs_or_None, retain_graph, allow_unused) -> tuple */
static PyObject *f_grad(PyObject *m, PyObject *args) {
    (void)m;
    PyObject *oo, *oi, *og;
    int retain = 0, allow_unused = 0;
    if (!PyArg_ParseTuple(args, "OOOpp:_grad", &oo, &oi, &og, &retain, &allow_unused))
        return NULL;
    PyObject *k1 = NULL, *k2 = NULL, *k3 = NULL, *ret = NULL;
    PcTensor **outs = NULL, **ins = NULL, **grads = NULL, **res = NULL;
    Py_ssize_t no, ni, ng;
    if (seq_tensors(oo, "grad outputs", false, &k1, &outs, &no) < 0) return NULL;
    if (seq_tensors(oi, "grad inputs", false, &k2, &ins, &ni) < 0) goto out;
    if (og != Py_None) {
        if (seq_tensors(og, "grad grad_outputs", true, &k3, &grads, &ng) < 0) goto out;
        if (ng != no) {
            PyErr_Format(PyExc_RuntimeError,
                         "grad_outputs has %zd elements but there are %zd outputs", ng, no);
            goto out;
        }
    }
    res = PyMem_Calloc((size_t)(ni ? ni : 1), sizeof(PcTensor *));
    if (!res) {
        PyErr_NoMemory();
        goto out;
    }
    PcStatus st;
    Py_BEGIN_ALLOW_THREADS
    st = pc_autograd_grad((int)no, outs, grads, (int)ni, ins, retain != 0, allow_unused != 0, res);
    Py_END_ALLOW_THREADS
    if (st != PC_OK) {
        pc_py_raise(st);
        goto out;
    }
    ret = results_tuple(res, ni);
out:
    PyMem_Free(outs);
    PyMem_Free(ins);
    PyMem_Free(grads);
    PyMem_Free(res);
    Py_XDECREF(k1);
    Py_XDECREF(k2);
    Py_XDECREF(k3);
    return ret;
}

/* ---- split backward ---- */

static void weight_work_capsule_free(PyObject *cap) {
    PcWeightWork *w = PyCapsule_GetPointer(cap, "pipec.WeightWork");
    if (w) pc_weight_work_free(w);
}

/* _backward_input(outputs, grad_outputs_or_None, inputs) -> (grads tuple, capsule) */
static PyObject *f_backward_input(PyObject *m, PyObject *args) {
    (void)m;
    PyObject *oo, *og, *oi;
    if (!PyArg_ParseTuple(args, "OOO:_backward_input", &oo, &og, &oi)) return NULL;
    PyObject *k1 = NULL, *k2 = NULL, *k3 = NULL, *ret = NULL;
    PcTensor **outs = NULL, **ins = NULL, **grads = NULL, **res = NULL;
    Py_ssize_t no, ni, ng;
    PcWeightWork *work = NULL;
    if (seq_tensors(oo, "backward_input outputs", false, &k1, &outs, &no) < 0) return NULL;
    if (seq_tensors(oi, "backward_input inputs", false, &k2, &ins, &ni) < 0) goto out;
    if (og != Py_None) {
        if (seq_tensors(og, "backward_input grad_outputs", true, &k3, &grads, &ng) < 0) goto out;
        if (ng != no) {
            PyErr_Format(PyExc_RuntimeError,
                         "grad_outputs has %zd elements but there are %zd outputs", ng, no);
            goto out;
        }
    }
    res = PyMem_Calloc((size_t)(ni ? ni : 1), sizeof(PcTensor *));
    if (!res) {
        PyErr_NoMemory();
        goto out;
    }
    PcStatus st;
    Py_BEGIN_ALLOW_THREADS
    st = pc_autograd_backward_input((int)no, outs, grads, (int)ni, ins, res, &work);
    Py_END_ALLOW_THREADS
    if (st != PC_OK) {
        pc_py_raise(st);
        goto out;
    }
    PyObject *grads_tup = results_tuple(res, ni);
    if (!grads_tup) {
        pc_weight_work_free(work);
        goto out;
    }
    PyObject *cap = PyCapsule_New(work, "pipec.WeightWork", weight_work_capsule_free);
    if (!cap) {
        pc_weight_work_free(work);
        Py_DECREF(grads_tup);
        goto out;
    }
    ret = PyTuple_Pack(2, grads_tup, cap);
    Py_DECREF(grads_tup);
    Py_DECREF(cap);
out:
    PyMem_Free(outs);
    PyMem_Free(ins);
    PyMem_Free(grads);
    PyMem_Free(res);
    Py_XDECREF(k1);
    Py_XDECREF(k2);
    Py_XDECREF(k3);
    return ret;
}

/* _weight_work_run(capsule, retain_graph) */
static PyObject *f_weight_work_run(PyObject *m, PyObject *args) {
    (void)m;
    PyObject *cap;
    int retain = 0;
    if (!PyArg_ParseTuple(args, "O|p:_weight_work_run", &cap, &retain)) return NULL;
    PcWeightWork *w = PyCapsule_GetPointer(cap, "pipec.WeightWork");
    if (!w) return NULL;
    PcStatus st;
    Py_BEGIN_ALLOW_THREADS
    st = pc_weight_work_run(w, retain != 0);
    Py_END_ALLOW_THREADS
    if (st != PC_OK) return pc_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *f_weight_work_size(PyObject *m, PyObject *cap) {
    (void)m;
    PcWeightWork *w = PyCapsule_GetPointer(cap, "pipec.WeightWork");
    if (!w) return NULL;
    return PyLong_FromLong(pc_weight_work_size(w));
}

/* ---- grad_fn objects ---- */

typedef struct {
    PyObject_HEAD
    PcNode *node; /* owned reference */
} PcPyNode;

static PyTypeObject *node_type;

PyObject *pc_py_node_wrap(PcNode *node) {
    PcPyNode *o = PyObject_New(PcPyNode, node_type);
    if (!o) return NULL;
    pc_node_incref(node);
    o->node = node;
    return (PyObject *)o;
}

static void node_dealloc(PcPyNode *self) {
    PyTypeObject *tp = Py_TYPE(self);
    pc_node_decref(self->node);
    PyObject_Free(self);
    Py_DECREF(tp);
}

static PyObject *node_name(PcPyNode *self, PyObject *unused) {
    (void)unused;
    return PyUnicode_FromString(self->node->vt->name);
}

static PyObject *node_repr(PcPyNode *self) {
    return PyUnicode_FromFormat("<%s object at %p>", self->node->vt->name, (void *)self->node);
}

static PyObject *node_next_functions(PcPyNode *self, void *c) {
    (void)c;
    PcNode *n = self->node;
    PyObject *tup = PyTuple_New(n->n_edges);
    if (!tup) return NULL;
    for (int i = 0; i < n->n_edges; i++) {
        PyObject *fn = n->edges[i].fn ? pc_py_node_wrap(n->edges[i].fn) : Py_NewRef(Py_None);
        PyObject *pair = fn ? Py_BuildValue("(Ni)", fn, n->edges[i].input_nr) : NULL;
        if (!pair) {
            Py_DECREF(tup);
            return NULL;
        }
        PyTuple_SET_ITEM(tup, i, pair);
    }
    return tup;
}

static PyObject *node_richcompare(PyObject *a, PyObject *b, int op) {
    if (Py_TYPE(b) != node_type || (op != Py_EQ && op != Py_NE)) Py_RETURN_NOTIMPLEMENTED;
    int eq = ((PcPyNode *)a)->node == ((PcPyNode *)b)->node;
    return PyBool_FromLong(op == Py_EQ ? eq : !eq);
}

static Py_hash_t node_hash(PcPyNode *self) { return _Py_HashPointer(self->node); }

static PyMethodDef node_methods[] = {
    {"name", (PyCFunction)node_name, METH_NOARGS, "The node's name, e.g. 'MmBackward0'."},
    {NULL, NULL, 0, NULL},
};
static PyGetSetDef node_getset[] = {
    {"next_functions", (getter)node_next_functions, NULL, "(node, input_nr) per input.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

/* ---- custom Function nodes ---- */

typedef struct {
    PcNode base;
    PyObject *ctx;      /* owned (released with the GIL) */
    PyObject *backward; /* owned: the Function's backward staticmethod */
    int n_args;         /* forward arguments (edges) */
} PcPyFunctionNode;

static void fn_release(PcNode *self) {
    PcPyFunctionNode *n = (PcPyFunctionNode *)self;
    if (!n->ctx && !n->backward) return;
    PyGILState_STATE g = PyGILState_Ensure();
    Py_CLEAR(n->ctx);
    Py_CLEAR(n->backward);
    PyGILState_Release(g);
}

static PcStatus fn_apply(PcNode *self, PcTensor *const *grad_outputs, const bool *needs,
                         PcTensor **grad_inputs) {
    PcPyFunctionNode *n = (PcPyFunctionNode *)self;
    PcStatus st = PC_OK;
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *argtup = NULL, *res = NULL, *seq = NULL;
    if (!n->ctx) {
        st = pc_set_error(PC_ERR_RUNTIME,
                          "Trying to backward through the graph a second time (or directly "
                          "access saved tensors after they have already been freed). Specify "
                          "retain_graph=True if you need to backward through the graph a second "
                          "time.");
        goto out;
    }
    argtup = PyTuple_New(1 + self->n_outputs);
    if (!argtup) goto pyfail;
    PyTuple_SET_ITEM(argtup, 0, Py_NewRef(n->ctx));
    for (int i = 0; i < self->n_outputs; i++) {
        PcTensor *gt = grad_outputs[i];
        if (gt) {
            pc_tensor_incref(gt);
        } else {
            PcTensorMeta *mt = &self->out_meta[i];
            st = pc_op_full(mt->ndim, mt->shape, 0.0, mt->dtype, mt->device, &gt);
            if (st != PC_OK) goto out;
        }
        PyObject *o = pc_py_wrap(gt);
        if (!o) goto pyfail;
        PyTuple_SET_ITEM(argtup, 1 + i, o);
    }
    {
        /* the user's backward runs with grad mode off (no create_graph) and without
         * weight-gradient batching: a backward it runs itself (recomputation) must find
         * its leaves' .grad complete when it returns */
        bool was = pc_grad_enabled();
        pc_set_grad_enabled(false);
        bool paused = pc_wgrad_batch_pause(pc_wgrad_batch_current());
        res = PyObject_Call(n->backward, argtup, NULL);
        if (paused) pc_wgrad_batch_resume(pc_wgrad_batch_current());
        pc_set_grad_enabled(was);
    }
    if (!res) goto pyfail;
    if (PyTuple_Check(res) || PyList_Check(res)) {
        seq = PySequence_Fast(res, "backward result");
    } else {
        seq = PyTuple_Pack(1, res);
    }
    if (!seq) goto pyfail;
    Py_ssize_t got = PySequence_Fast_GET_SIZE(seq);
    if (got != n->n_args) {
        PyErr_Format(PyExc_RuntimeError,
                     "function backward returned an incorrect number of gradients (expected "
                     "%d, got %zd)",
                     n->n_args, got);
        goto pyfail;
    }
    for (int j = 0; j < n->n_args; j++) {
        PyObject *o = PySequence_Fast_GET_ITEM(seq, j);
        if (!needs[j]) continue;
        if (o == Py_None) {
            grad_inputs[j] = NULL;
            continue;
        }
        if (!pc_py_is_tensor(o)) {
            PyErr_Format(PyExc_TypeError,
                         "function backward must return Tensors or None, got %.100s at "
                         "position %d",
                         Py_TYPE(o)->tp_name, j);
            goto pyfail;
        }
        pc_tensor_incref(T(o));
        grad_inputs[j] = T(o);
    }
    goto out;
pyfail:
    st = PC_ERR_PYTHON;
    pc_set_error(PC_ERR_PYTHON, "error in a custom Function's backward");
    /* keep the Python error: it is re-raised when the engine's status reaches Python. Save
     * it in the error indicator of this thread; the caller that re-acquires the GIL on this
     * same thread sees it. */
out:
    for (int j = 0; st != PC_OK && j < n->n_args; j++) {
        pc_tensor_decref(grad_inputs[j]);
        grad_inputs[j] = NULL;
    }
    Py_XDECREF(seq);
    Py_XDECREF(res);
    Py_XDECREF(argtup);
    PyGILState_Release(g);
    return st;
}

static const PcNodeVTable fn_vtable_template = {"FunctionBackward", fn_apply, fn_release};

static PyObject *vtable_cache; /* owned dict: Function class name -> capsule(PcNodeVTable) */

static void vtable_capsule_free(PyObject *cap) {
    PcNodeVTable *vt = PyCapsule_GetPointer(cap, "pipec.vtable");
    if (vt) {
        PyMem_RawFree((void *)vt->name);
        PyMem_RawFree(vt);
    }
}

/* The vtable for a custom Function named `name` (one per name, cached for the module's
 * lifetime so that nodes never outlive it). Borrowed; NULL + exception on failure. */
static const PcNodeVTable *function_vtable(PyObject *name) {
    if (!vtable_cache && !(vtable_cache = PyDict_New())) return NULL;
    PyObject *cap = PyDict_GetItemWithError(vtable_cache, name);
    if (cap) return PyCapsule_GetPointer(cap, "pipec.vtable");
    if (PyErr_Occurred()) return NULL;
    const char *cname = PyUnicode_AsUTF8(name);
    if (!cname) return NULL;
    PcNodeVTable *vt = PyMem_RawMalloc(sizeof *vt);
    char *nm = PyMem_RawMalloc(strlen(cname) + 1);
    if (!vt || !nm) {
        PyMem_RawFree(vt);
        PyMem_RawFree(nm);
        PyErr_NoMemory();
        return NULL;
    }
    strcpy(nm, cname);
    *vt = fn_vtable_template;
    vt->name = nm;
    cap = PyCapsule_New(vt, "pipec.vtable", vtable_capsule_free);
    if (!cap) {
        PyMem_RawFree(nm);
        PyMem_RawFree(vt);
        return NULL;
    }
    int r = PyDict_SetItem(vtable_cache, name, cap);
    Py_DECREF(cap);
    return r < 0 ? NULL : vt;
}

/* _function_record(ctx, backward, name, args, outputs) -> outputs attached to a new node
 * (tuple when outputs was a tuple). outputs: a Tensor or a tuple of Tensors/others. */
static PyObject *f_function_record(PyObject *m, PyObject *args) {
    (void)m;
    PyObject *ctx, *bwd, *name, *fargs, *outs, *cls;
    if (!PyArg_ParseTuple(args, "OOUO!OO:_function_record", &ctx, &bwd, &name, &PyTuple_Type,
                          &fargs, &outs, &cls))
        return NULL;
    int single = pc_py_is_tensor(outs);
    PyObject *outseq = single ? PyTuple_Pack(1, outs) : PySequence_Tuple(outs);
    if (!outseq) return NULL;
    Py_ssize_t na = PyTuple_GET_SIZE(fargs), no = PyTuple_GET_SIZE(outseq);
    PcTensor **ins = PyMem_Calloc((size_t)(na ? na : 1), sizeof(PcTensor *));
    PyObject *ret = NULL;
    if (!ins) {
        Py_DECREF(outseq);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < na; i++) {
        PyObject *a = PyTuple_GET_ITEM(fargs, i);
        if (pc_py_is_tensor(a)) ins[i] = T(a);
    }
    int n_tensor_outs = 0;
    for (Py_ssize_t i = 0; i < no; i++) n_tensor_outs += pc_py_is_tensor(PyTuple_GET_ITEM(outseq, i));
    if (!pc_autograd_any_requires_grad((int)na, ins) || n_tensor_outs == 0) {
        ret = single ? Py_NewRef(outs) : Py_NewRef(outseq);
        goto done;
    }
    const PcNodeVTable *vt = function_vtable(name);
    if (!vt) goto done;
    PcNode *node;
    PcStatus st = pc_node_create(sizeof(PcPyFunctionNode), vt, n_tensor_outs, (int)na, ins, &node);
    if (st != PC_OK) {
        pc_py_raise(st);
        goto done;
    }
    PcPyFunctionNode *fn = (PcPyFunctionNode *)node;
    fn->ctx = Py_NewRef(ctx);
    fn->backward = Py_NewRef(bwd);
    fn->n_args = (int)na;
    PyObject *res = PyTuple_New(no);
    if (!res) {
        pc_node_decref(node);
        goto done;
    }
    int k = 0;
    for (Py_ssize_t i = 0; i < no; i++) {
        PyObject *o = PyTuple_GET_ITEM(outseq, i);
        if (!pc_py_is_tensor(o)) {
            PyTuple_SET_ITEM(res, i, Py_NewRef(o));
            continue;
        }
        PcTensor *alias;
        st = pc_op_detach(T(o), &alias);
        if (st != PC_OK) {
            pc_py_raise(st);
            Py_DECREF(res);
            pc_node_decref(node);
            goto done;
        }
        pc_autograd_set_history(alias, node, k++);
        PyObject *w = pc_py_wrap(alias);
        if (!w) {
            Py_DECREF(res);
            pc_node_decref(node);
            goto done;
        }
        PyTuple_SET_ITEM(res, i, w);
    }
    pc_node_decref(node); /* the outputs own it now */
    if (single) {
        ret = Py_NewRef(PyTuple_GET_ITEM(res, 0));
        Py_DECREF(res);
    } else {
        ret = res;
    }
done:
    if (ret && pc_py_trace_function(cls, fargs, single ? outseq : ret) < 0) Py_CLEAR(ret);
    PyMem_Free(ins);
    Py_DECREF(outseq);
    return ret;
}

/* ---- tables and init ---- */

static PyObject *f_fused_grad_count(PyObject *m, PyObject *unused) {
    (void)m;
    (void)unused;
    return PyLong_FromLongLong(pc_autograd_fused_count());
}

/* _wgrad_batch_rows([rows]): the setting before, rows or None for auto (new reference);
 * sets it when given (None: auto). */
static PyObject *f_wgrad_batch_rows(PyObject *m, PyObject *args) {
    (void)m;
    PyObject *arg = NULL;
    if (!PyArg_ParseTuple(args, "|O", &arg)) return NULL;
    long long rows = PC_WGRAD_AUTO;
    if (arg && arg != Py_None) {
        rows = PyLong_AsLongLong(arg);
        if (rows == -1 && PyErr_Occurred()) return NULL;
        if (rows < 0) {
            PyErr_SetString(PyExc_ValueError, "_wgrad_batch_rows: rows must be >= 0 or None");
            return NULL;
        }
    }
    long long before = pc_wgrad_batch_rows();
    if (arg) pc_wgrad_batch_set_rows(rows);
    if (before == PC_WGRAD_AUTO) Py_RETURN_NONE;
    return PyLong_FromLongLong(before);
}

/* The two batching counters for tests (new references). */
static PyObject *f_wgrad_batched_count(PyObject *m, PyObject *unused) {
    (void)m;
    (void)unused;
    return PyLong_FromLongLong(pc_wgrad_batched_count());
}

static PyObject *f_wgrad_deferred_count(PyObject *m, PyObject *unused) {
    (void)m;
    (void)unused;
    return PyLong_FromLongLong(pc_wgrad_deferred_count());
}

PyMethodDef pc_py_autograd_functions[] = {
    {"_wgrad_batch_rows", (PyCFunction)f_wgrad_batch_rows, METH_VARARGS,
     "_wgrad_batch_rows([rows]) -> the setting before: the rows a parameter's deferred "
     "weight-gradient products reach before they run as one GEMM (0: off, None: auto); "
     "sets it when given."},
    {"_wgrad_batched_count", (PyCFunction)f_wgrad_batched_count, METH_NOARGS,
     "Weight-gradient products that ran in a batch of two or more since the process "
     "started."},
    {"_wgrad_deferred_count", (PyCFunction)f_wgrad_deferred_count, METH_NOARGS,
     "Weight-gradient products deferred to a batch since the process started."},
    {"_fused_grad_count", (PyCFunction)f_fused_grad_count, METH_NOARGS,
     "Gradients added straight into .grad by their node (e.g. linear's dW GEMM with beta=1) "
     "since the process started."},
    {"is_grad_enabled", (PyCFunction)f_is_grad_enabled, METH_NOARGS,
     "True when autograd records operations on this thread."},
    {"_set_grad_enabled", (PyCFunction)f_set_grad_enabled, METH_O,
     "Set grad mode; returns the previous mode."},
    {"_backward", (PyCFunction)f_backward, METH_VARARGS, NULL},
    {"_grad", (PyCFunction)f_grad, METH_VARARGS, NULL},
    {"_backward_input", (PyCFunction)f_backward_input, METH_VARARGS, NULL},
    {"_weight_work_run", (PyCFunction)f_weight_work_run, METH_VARARGS, NULL},
    {"_weight_work_size", (PyCFunction)f_weight_work_size, METH_O, NULL},
    {"_function_record", (PyCFunction)f_function_record, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

int pc_py_autograd_init(PyObject *module) {
    static PyType_Slot slots[] = {
        {Py_tp_dealloc, (void *)node_dealloc},
        {Py_tp_methods, node_methods},
        {Py_tp_getset, node_getset},
        {Py_tp_repr, (void *)node_repr},
        {Py_tp_richcompare, (void *)node_richcompare},
        {Py_tp_hash, (void *)node_hash},
        {Py_tp_doc, (void *)"An autograd graph node (a tensor's grad_fn)."},
        {0, NULL},
    };
    static PyType_Spec spec = {
        .name = "pipec.autograd.Node",
        .basicsize = sizeof(PcPyNode),
        .flags = Py_TPFLAGS_DEFAULT,
        .slots = slots,
    };
    node_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &spec, NULL);
    if (!node_type) return -1;
    return PyModule_AddObjectRef(module, "Node", (PyObject *)node_type);
}
