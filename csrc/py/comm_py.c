/* comm_py.c — Python face of the communicator layer (csrc/comm/comm.h):
 *
 *   _C.Store(host, port, is_server, world, timeout)   the bootstrap key-value store
 *       .set(key, value) .get(key) -> bytes .barrier(name, rank) .close()
 *   _C.Comm(store, rank, world, timeout, backend="tcp", device=-1)
 *       .send(tensor, peer, tag=0) .recv(tensor, peer, tag=0)
 *       .send_bytes(data, peer, tag=0) .recv_bytes(peer, tag=0) -> bytes
 *       .barrier() .all_reduce_sum(tensor) .broadcast_bytes(data, root) -> bytes
 *       .abort() .destroy() ._send_raw(peer, data) (fault injection, tcp only)
 *       .rank .world .timeout .backend
 *
 * Every blocking call releases the GIL. A Comm may be used from several Python threads at
 * once (the backends are thread-safe for point-to-point; collectives must be issued from
 * one thread, in the same order on every rank). `busy` counts calls in flight with the GIL
 * released: destroy() detaches the handle first, aborts it when calls are in flight, waits
 * for them to return, then frees it, so no call ever runs on a freed communicator.
 * Failures raise through pc_py_raise (timeouts and dead peers: pipec.PipelineError).
 * All functions return new references.
 *
 * For other binding files (declare them where needed; e.g. the runtime):
 *   PcComm *pc_py_comm_acquire(PyObject *obj)  borrowed PcComm* of a _C.Comm, counted as a
 *       call in flight (destroy() aborts it and waits), or NULL + exception (TypeError: not
 *       a Comm; RuntimeError: destroyed). Call with the GIL held.
 *   void pc_py_comm_release(PyObject *obj)      ends it (any thread, GIL not needed).
 */
#include "bindings.h"

#include <stdatomic.h>
#include <time.h>

#include "../comm/comm.h"

typedef struct {
    PyObject_HEAD
    PcStore *store;      /* owned; NULL once closed */
    atomic_int busy;     /* calls in flight with the GIL released */
} PcPyStore;

typedef struct {
    PyObject_HEAD
    PcComm *comm;        /* owned; NULL once destroyed */
    PyObject *store;     /* owned: the Store it was created over (kept open as long) */
    atomic_int busy;     /* calls in flight with the GIL released */
    int rank, world;
    double timeout;
    char backend[16];
} PcPyComm;

static PyTypeObject *store_type;
static PyTypeObject *comm_type;

/* Wait (GIL released) until no call is in flight on `busy`. */
static void wait_idle(atomic_int *busy) {
    Py_BEGIN_ALLOW_THREADS
    while (atomic_load(busy) > 0) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    Py_END_ALLOW_THREADS
}

/* ---- Store ---- */

static PcStore *store_enter(PcPyStore *self) {
    if (!self->store) {
        PyErr_SetString(PyExc_RuntimeError, "the store is closed");
        return NULL;
    }
    atomic_fetch_add(&self->busy, 1);
    return self->store;
}

static void store_leave(PcPyStore *self) { atomic_fetch_sub(&self->busy, 1); }

static void store_close_now(PcPyStore *self) {
    PcStore *s = self->store;
    if (!s) return;
    self->store = NULL;
    wait_idle(&self->busy);
    Py_BEGIN_ALLOW_THREADS
    pc_store_close(s);
    Py_END_ALLOW_THREADS
}

static void store_dealloc(PcPyStore *self) {
    PyTypeObject *tp = Py_TYPE(self);
    store_close_now(self);
    PyObject_Free(self);
    Py_DECREF(tp);
}

static PyObject *store_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"host", "port", "is_server", "world", "timeout", NULL};
    const char *host;
    int port, is_server, world;
    double timeout;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "sipid:Store", kwlist, &host, &port, &is_server,
                                     &world, &timeout))
        return NULL;
    PcStore *s = NULL;
    PcStatus st;
    Py_BEGIN_ALLOW_THREADS
    st = pc_store_open(host, port, is_server != 0, world, timeout, &s);
    Py_END_ALLOW_THREADS
    if (st != PC_OK) return pc_py_raise(st);
    PcPyStore *self = (PcPyStore *)type->tp_alloc(type, 0);
    if (!self) {
        pc_store_close(s);
        return NULL;
    }
    self->store = s;
    atomic_init(&self->busy, 0);
    return (PyObject *)self;
}

static PyObject *store_set(PcPyStore *self, PyObject *args) {
    const char *key;
    Py_buffer val;
    if (!PyArg_ParseTuple(args, "sy*:set", &key, &val)) return NULL;
    PcStore *s = store_enter(self);
    if (!s) {
        PyBuffer_Release(&val);
        return NULL;
    }
    PcStatus st;
    Py_BEGIN_ALLOW_THREADS
    st = pc_store_set(s, key, val.buf, (size_t)val.len);
    Py_END_ALLOW_THREADS
    store_leave(self);
    PyBuffer_Release(&val);
    if (st != PC_OK) return pc_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *store_get(PcPyStore *self, PyObject *args) {
    const char *key;
    if (!PyArg_ParseTuple(args, "s:get", &key)) return NULL;
    PcStore *s = store_enter(self);
    if (!s) return NULL;
    void *v = NULL;
    size_t n = 0;
    PcStatus st;
    Py_BEGIN_ALLOW_THREADS
    st = pc_store_get(s, key, &v, &n);
    Py_END_ALLOW_THREADS
    store_leave(self);
    if (st != PC_OK) return pc_py_raise(st);
    PyObject *res = PyBytes_FromStringAndSize(v ? (const char *)v : "", (Py_ssize_t)n);
    free(v);
    return res;
}

static PyObject *store_barrier(PcPyStore *self, PyObject *args) {
    const char *name;
    int rank;
    if (!PyArg_ParseTuple(args, "si:barrier", &name, &rank)) return NULL;
    PcStore *s = store_enter(self);
    if (!s) return NULL;
    PcStatus st;
    Py_BEGIN_ALLOW_THREADS
    st = pc_store_barrier(s, name, rank);
    Py_END_ALLOW_THREADS
    store_leave(self);
    if (st != PC_OK) return pc_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *store_close(PcPyStore *self, PyObject *unused) {
    (void)unused;
    store_close_now(self);
    Py_RETURN_NONE;
}

static PyMethodDef store_methods[] = {
    {"set", (PyCFunction)store_set, METH_VARARGS, "set(key, value: bytes): store a value."},
    {"get", (PyCFunction)store_get, METH_VARARGS,
     "get(key) -> bytes: wait (up to the timeout) until key is set and return its value."},
    {"barrier", (PyCFunction)store_barrier, METH_VARARGS,
     "barrier(name, rank): wait for every rank; a timeout names the ranks that never came."},
    {"close", (PyCFunction)store_close, METH_NOARGS,
     "close(): disconnect (rank 0: stop the server). Idempotent."},
    {NULL, NULL, 0, NULL},
};

/* ---- Comm ---- */

static PcComm *comm_enter(PcPyComm *self) {
    if (!self->comm) {
        PyErr_SetString(PyExc_RuntimeError, "the communicator is destroyed "
                        "(destroy_process_group was called)");
        return NULL;
    }
    atomic_fetch_add(&self->busy, 1);
    return self->comm;
}

static void comm_leave(PcPyComm *self) { atomic_fetch_sub(&self->busy, 1); }

static void comm_destroy_now(PcPyComm *self) {
    PcComm *c = self->comm;
    if (!c) return;
    self->comm = NULL;
    if (atomic_load(&self->busy) > 0) {
        c->ops->abort(c); /* calls in flight on other threads fail fast */
        wait_idle(&self->busy);
    }
    Py_BEGIN_ALLOW_THREADS
    c->ops->destroy(c);
    Py_END_ALLOW_THREADS
}

static void comm_dealloc(PcPyComm *self) {
    PyTypeObject *tp = Py_TYPE(self);
    comm_destroy_now(self);
    Py_XDECREF(self->store);
    PyObject_Free(self);
    Py_DECREF(tp);
}

static PyObject *comm_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"store", "rank", "world", "timeout", "backend", "device", NULL};
    PyObject *store_obj;
    int rank, world, device = -1;
    double timeout;
    const char *backend = "tcp";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!iid|si:Comm", kwlist, store_type, &store_obj,
                                     &rank, &world, &timeout, &backend, &device))
        return NULL;
    PcPyStore *ps = (PcPyStore *)store_obj;
    PcStore *s = store_enter(ps);
    if (!s) return NULL;
    PcComm *c = NULL;
    PcStatus st = PC_OK;
    if (strcmp(backend, "tcp") == 0) {
        Py_BEGIN_ALLOW_THREADS
        st = pc_comm_tcp_create(s, rank, world, timeout, &c);
        Py_END_ALLOW_THREADS
#ifdef PC_WITH_NCCL
    } else if (strcmp(backend, "nccl") == 0) {
        Py_BEGIN_ALLOW_THREADS
        st = pc_comm_nccl_create(s, rank, world, device, timeout, &c);
        Py_END_ALLOW_THREADS
#endif
    } else {
        store_leave(ps);
        PyErr_Format(PyExc_ValueError, "Comm: unknown or unavailable backend '%s' (this build "
                     "has: tcp%s)", backend,
#ifdef PC_WITH_NCCL
                     ", nccl"
#else
                     ""
#endif
        );
        return NULL;
    }
    (void)device;
    store_leave(ps);
    if (st != PC_OK) return pc_py_raise(st);
    PcPyComm *self = (PcPyComm *)type->tp_alloc(type, 0);
    if (!self) {
        c->ops->destroy(c);
        return NULL;
    }
    self->comm = c;
    self->store = Py_NewRef(store_obj);
    atomic_init(&self->busy, 0);
    self->rank = c->rank;
    self->world = c->world;
    self->timeout = c->timeout_s;
    snprintf(self->backend, sizeof self->backend, "%s", c->ops->name);
    return (PyObject *)self;
}

/* Borrowed PcTensor* of a tensor argument with a new C reference (caller decrefs). */
static PcTensor *tensor_arg(PyObject *obj) {
    PcTensor *t = pc_py_unwrap(obj, "tensor");
    if (t) pc_tensor_incref(t);
    return t;
}

static PyObject *comm_send(PcPyComm *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"tensor", "peer", "tag", NULL};
    PyObject *to;
    int peer;
    unsigned long long tag = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Oi|K:send", kwlist, &to, &peer, &tag))
        return NULL;
    PcTensor *t = tensor_arg(to);
    if (!t) return NULL;
    PcComm *c = comm_enter(self);
    if (!c) {
        pc_tensor_decref(t);
        return NULL;
    }
    PcStatus st;
    Py_BEGIN_ALLOW_THREADS
    st = c->ops->send(c, peer, (uint64_t)tag, t);
    if (st == PC_OK && c->ops->flush) st = c->ops->flush(c); /* issued when send returns */
    Py_END_ALLOW_THREADS
    comm_leave(self);
    pc_tensor_decref(t);
    if (st != PC_OK) return pc_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *comm_recv(PcPyComm *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"tensor", "peer", "tag", NULL};
    PyObject *to;
    int peer;
    unsigned long long tag = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Oi|K:recv", kwlist, &to, &peer, &tag))
        return NULL;
    PcTensor *t = tensor_arg(to);
    if (!t) return NULL;
    PcComm *c = comm_enter(self);
    if (!c) {
        pc_tensor_decref(t);
        return NULL;
    }
    PcStatus st;
    Py_BEGIN_ALLOW_THREADS
    st = c->ops->recv(c, peer, (uint64_t)tag, t);
    Py_END_ALLOW_THREADS
    comm_leave(self);
    pc_tensor_decref(t);
    if (st != PC_OK) return pc_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *comm_send_bytes(PcPyComm *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"data", "peer", "tag", NULL};
    Py_buffer data;
    int peer;
    unsigned long long tag = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*i|K:send_bytes", kwlist, &data, &peer, &tag))
        return NULL;
    PcComm *c = comm_enter(self);
    if (!c) {
        PyBuffer_Release(&data);
        return NULL;
    }
    PcStatus st;
    Py_BEGIN_ALLOW_THREADS
    st = c->ops->send_bytes(c, peer, (uint64_t)tag, data.buf, (size_t)data.len);
    Py_END_ALLOW_THREADS
    comm_leave(self);
    PyBuffer_Release(&data);
    if (st != PC_OK) return pc_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *comm_recv_bytes(PcPyComm *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"peer", "tag", NULL};
    int peer;
    unsigned long long tag = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "i|K:recv_bytes", kwlist, &peer, &tag))
        return NULL;
    PcComm *c = comm_enter(self);
    if (!c) return NULL;
    void *buf = NULL;
    size_t n = 0;
    PcStatus st;
    Py_BEGIN_ALLOW_THREADS
    st = c->ops->recv_bytes(c, peer, (uint64_t)tag, &buf, &n);
    Py_END_ALLOW_THREADS
    comm_leave(self);
    if (st != PC_OK) return pc_py_raise(st);
    PyObject *res = PyBytes_FromStringAndSize(buf ? (const char *)buf : "", (Py_ssize_t)n);
    free(buf);
    return res;
}

static PyObject *comm_barrier(PcPyComm *self, PyObject *unused) {
    (void)unused;
    PcComm *c = comm_enter(self);
    if (!c) return NULL;
    PcStatus st;
    Py_BEGIN_ALLOW_THREADS
    st = c->ops->barrier(c);
    Py_END_ALLOW_THREADS
    comm_leave(self);
    if (st != PC_OK) return pc_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *comm_wait_idle(PcPyComm *self, PyObject *unused) {
    (void)unused;
    PcComm *c = comm_enter(self);
    if (!c) return NULL;
    PcStatus st = PC_OK;
    Py_BEGIN_ALLOW_THREADS
    if (c->ops->wait_idle) st = c->ops->wait_idle(c);
    Py_END_ALLOW_THREADS
    comm_leave(self);
    if (st != PC_OK) return pc_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *comm_all_reduce_sum(PcPyComm *self, PyObject *to) {
    PcTensor *t = tensor_arg(to);
    if (!t) return NULL;
    PcComm *c = comm_enter(self);
    if (!c) {
        pc_tensor_decref(t);
        return NULL;
    }
    PcStatus st;
    Py_BEGIN_ALLOW_THREADS
    st = c->ops->all_reduce_sum(c, t);
    Py_END_ALLOW_THREADS
    comm_leave(self);
    pc_tensor_decref(t);
    if (st != PC_OK) return pc_py_raise(st);
    Py_RETURN_NONE;
}

/* broadcast_bytes(data, root): the root's bytes to every rank (others pass None). Two
 * broadcasts: the 8-byte length, then the payload. */
static PyObject *comm_broadcast_bytes(PcPyComm *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"data", "root", NULL};
    PyObject *data_obj;
    int root;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Oi:broadcast_bytes", kwlist, &data_obj, &root))
        return NULL;
    if (root < 0 || root >= self->world) {
        PyErr_Format(PyExc_ValueError, "broadcast_bytes: root %d is out of range for world "
                     "size %d", root, self->world);
        return NULL;
    }
    bool is_root = root == self->rank;
    PyObject *res = NULL;
    if (is_root) {
        res = PyBytes_FromObject(data_obj); /* new reference; the root's copy to return */
        if (!res) return NULL;
    }
    PcComm *c = comm_enter(self);
    if (!c) {
        Py_XDECREF(res);
        return NULL;
    }
    unsigned char len[8] = {0};
    if (is_root) {
        uint64_t n = (uint64_t)PyBytes_GET_SIZE(res);
        for (int i = 0; i < 8; i++) len[i] = (unsigned char)(n >> (8 * i));
    }
    PcStatus st;
    Py_BEGIN_ALLOW_THREADS
    st = c->ops->broadcast_bytes(c, root, len, sizeof len);
    Py_END_ALLOW_THREADS
    if (st == PC_OK && !is_root) {
        uint64_t n = 0;
        for (int i = 0; i < 8; i++) n |= (uint64_t)len[i] << (8 * i);
        if (n > (uint64_t)PY_SSIZE_T_MAX) {
            comm_leave(self);
            PyErr_SetString(PyExc_OverflowError, "broadcast_bytes: payload too large");
            return NULL;
        }
        res = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
        if (!res) {
            comm_leave(self);
            return NULL;
        }
    }
    if (st == PC_OK) {
        char *p = PyBytes_AS_STRING(res);
        size_t n = (size_t)PyBytes_GET_SIZE(res);
        Py_BEGIN_ALLOW_THREADS
        st = c->ops->broadcast_bytes(c, root, p, n);
        Py_END_ALLOW_THREADS
    }
    comm_leave(self);
    if (st != PC_OK) {
        Py_XDECREF(res);
        return pc_py_raise(st);
    }
    return res;
}

static PyObject *comm_abort(PcPyComm *self, PyObject *unused) {
    (void)unused;
    PcComm *c = comm_enter(self); /* busy: a destroy on another thread waits for us */
    if (!c) {
        PyErr_Clear(); /* already destroyed: nothing to abort */
        Py_RETURN_NONE;
    }
    Py_BEGIN_ALLOW_THREADS /* ncclCommAbort can take a while */
    c->ops->abort(c);
    Py_END_ALLOW_THREADS
    comm_leave(self);
    Py_RETURN_NONE;
}

static PyObject *comm_destroy(PcPyComm *self, PyObject *unused) {
    (void)unused;
    comm_destroy_now(self);
    Py_RETURN_NONE;
}

static PyObject *comm_send_raw(PcPyComm *self, PyObject *args) {
    int peer;
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "iy*:_send_raw", &peer, &data)) return NULL;
    PcComm *c = comm_enter(self);
    if (!c) {
        PyBuffer_Release(&data);
        return NULL;
    }
    PcStatus st;
    Py_BEGIN_ALLOW_THREADS
    st = pc_comm_tcp_send_raw(c, peer, data.buf, (size_t)data.len);
    Py_END_ALLOW_THREADS
    comm_leave(self);
    PyBuffer_Release(&data);
    if (st != PC_OK) return pc_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *comm_get_rank(PcPyComm *self, void *closure) {
    (void)closure;
    return PyLong_FromLong(self->rank);
}

static PyObject *comm_get_world(PcPyComm *self, void *closure) {
    (void)closure;
    return PyLong_FromLong(self->world);
}

static PyObject *comm_get_timeout(PcPyComm *self, void *closure) {
    (void)closure;
    return PyFloat_FromDouble(self->timeout);
}

static PyObject *comm_get_backend(PcPyComm *self, void *closure) {
    (void)closure;
    return PyUnicode_FromString(self->backend);
}

static PyObject *comm_get_destroyed(PcPyComm *self, void *closure) {
    (void)closure;
    return PyBool_FromLong(self->comm == NULL);
}

static PyGetSetDef comm_getset[] = {
    {"rank", (getter)comm_get_rank, NULL, "This process's rank.", NULL},
    {"world", (getter)comm_get_world, NULL, "Number of ranks.", NULL},
    {"timeout", (getter)comm_get_timeout, NULL, "Deadline of every wait, in seconds.", NULL},
    {"backend", (getter)comm_get_backend, NULL, "'tcp' or 'nccl'.", NULL},
    {"destroyed", (getter)comm_get_destroyed, NULL, "Whether destroy() was called.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef comm_methods[] = {
    {"send", (PyCFunction)(void (*)(void))comm_send, METH_VARARGS | METH_KEYWORDS,
     "send(tensor, peer, tag=0): send a contiguous tensor's bytes to peer."},
    {"recv", (PyCFunction)(void (*)(void))comm_recv, METH_VARARGS | METH_KEYWORDS,
     "recv(tensor, peer, tag=0): receive peer's message with this tag into tensor (sizes "
     "must match)."},
    {"send_bytes", (PyCFunction)(void (*)(void))comm_send_bytes, METH_VARARGS | METH_KEYWORDS,
     "send_bytes(data, peer, tag=0)."},
    {"recv_bytes", (PyCFunction)(void (*)(void))comm_recv_bytes, METH_VARARGS | METH_KEYWORDS,
     "recv_bytes(peer, tag=0) -> bytes: a whole message of any size."},
    {"barrier", (PyCFunction)comm_barrier, METH_NOARGS, "barrier(): wait for every rank."},
    {"wait_idle", (PyCFunction)comm_wait_idle, METH_NOARGS,
     "wait_idle(): wait until this rank's queued transfers have finished (NCCL: within the "
     "timeout, raising if the communicator was aborted; TCP sends are already on their way)."},
    {"all_reduce_sum", (PyCFunction)comm_all_reduce_sum, METH_O,
     "all_reduce_sum(tensor): in-place sum over every rank (identical result everywhere)."},
    {"broadcast_bytes", (PyCFunction)(void (*)(void))comm_broadcast_bytes,
     METH_VARARGS | METH_KEYWORDS,
     "broadcast_bytes(data, root) -> bytes: root's data on every rank (others pass None)."},
    {"abort", (PyCFunction)comm_abort, METH_NOARGS,
     "abort(): make every pending and later operation fail fast. Thread-safe."},
    {"destroy", (PyCFunction)comm_destroy, METH_NOARGS,
     "destroy(): say goodbye to the peers and free the communicator. Idempotent."},
    {"_send_raw", (PyCFunction)comm_send_raw, METH_VARARGS,
     "_send_raw(peer, data): write raw bytes on the socket to peer (fault tests; tcp only)."},
    {NULL, NULL, 0, NULL},
};

/* ---- access from other binding files ---- */

PcComm *pc_py_comm_acquire(PyObject *obj) {
    if (!comm_type || !PyObject_TypeCheck(obj, comm_type)) {
        PyErr_Format(PyExc_TypeError, "expected a pipec._C.Comm, got %.100s",
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    return comm_enter((PcPyComm *)obj);
}

void pc_py_comm_release(PyObject *obj) { comm_leave((PcPyComm *)obj); }

/* ---- module init ---- */

int pc_py_comm_init(PyObject *module) {
    static PyType_Slot store_slots[] = {
        {Py_tp_new, (void *)store_new},
        {Py_tp_dealloc, (void *)store_dealloc},
        {Py_tp_methods, store_methods},
        {Py_tp_doc, (void *)"Store(host, port, is_server, world, timeout): the key-value store "
                            "hosted by rank 0 that bootstraps a process group."},
        {0, NULL},
    };
    static PyType_Spec store_spec = {
        .name = "pipec._C.Store",
        .basicsize = sizeof(PcPyStore),
        .flags = Py_TPFLAGS_DEFAULT,
        .slots = store_slots,
    };
    static PyType_Slot comm_slots[] = {
        {Py_tp_new, (void *)comm_new},
        {Py_tp_dealloc, (void *)comm_dealloc},
        {Py_tp_methods, comm_methods},
        {Py_tp_getset, comm_getset},
        {Py_tp_doc, (void *)"Comm(store, rank, world, timeout, backend='tcp', device=-1): a "
                            "communicator between the ranks of a process group."},
        {0, NULL},
    };
    static PyType_Spec comm_spec = {
        .name = "pipec._C.Comm",
        .basicsize = sizeof(PcPyComm),
        .flags = Py_TPFLAGS_DEFAULT,
        .slots = comm_slots,
    };
    store_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &store_spec, NULL);
    if (!store_type) return -1;
    if (PyModule_AddObjectRef(module, "Store", (PyObject *)store_type) < 0) return -1;
    comm_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &comm_spec, NULL);
    if (!comm_type) return -1;
    if (PyModule_AddObjectRef(module, "Comm", (PyObject *)comm_type) < 0) return -1;
#ifdef PC_WITH_NCCL
    if (PyModule_AddIntConstant(module, "_comm_has_nccl", 1) < 0) return -1;
#else
    if (PyModule_AddIntConstant(module, "_comm_has_nccl", 0) < 0) return -1;
#endif
    return 0;
}
