/* cuda_py.c — the `_cuda_*` functions of pipec._C behind pipec.cuda and pipec.backends.cuda.
 *
 * Thin wrappers over csrc/kernels/cuda/cuda_api.h: devices, streams and events as integer
 * handles (the cudaStream_t / cudaEvent_t values, as torch's `cuda_stream` attribute), the
 * caching allocator's statistics, and the TF32 switch. Blocking waits release the GIL.
 * Always present: `_cuda_built` (bool), `_cuda_is_available()`, `_cuda_device_count()`; the
 * rest only when built with PC_WITH_CUDA. Stream and event lifetimes are managed by the
 * Python classes in pipec/cuda/__init__.py; handles passed back in must come from them.
 *
 * Exports: pc_py_add_cuda (pyapi.h).
 */
#include "pyapi.h"

#include <limits.h>

#include "../core/backend.h"
#ifdef PC_WITH_CUDA
#include "../kernels/cuda/cuda_api.h"
#endif

#ifdef PC_WITH_CUDA

/* ---- argument helpers ---- */

/* A stream/event handle from a Python int (0 allowed). 0 on success, -1 + exception. */
static int parse_handle(PyObject *o, const char *what, void **out) {
    if (!PyLong_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int handle, got %.100s", what,
                     Py_TYPE(o)->tp_name);
        return -1;
    }
    *out = PyLong_AsVoidPtr(o);
    return (*out == NULL && PyErr_Occurred()) ? -1 : 0;
}

/* New reference: a Python int for a handle. */
static PyObject *handle_obj(void *h) { return PyLong_FromVoidPtr(h); }

static int device_or_current(int dev, int *out) {
    if (dev >= 0) {
        *out = dev;
        return 0;
    }
    PcStatus st = pc_cuda_get_device(out);
    if (st != PC_OK) {
        pc_py_raise(st);
        return -1;
    }
    return 0;
}

/* ---- devices ---- */

static PyObject *cu_is_available(PyObject *m, PyObject *unused) {
    (void)m; (void)unused;
    return PyBool_FromLong(pc_cuda_device_count() > 0);
}

static PyObject *cu_device_count(PyObject *m, PyObject *unused) {
    (void)m; (void)unused;
    return PyLong_FromLong(pc_cuda_device_count());
}

static PyObject *cu_current_device(PyObject *m, PyObject *unused) {
    (void)m; (void)unused;
    int dev;
    PcStatus st = pc_cuda_get_device(&dev);
    if (st != PC_OK) return pc_py_raise(st);
    return PyLong_FromLong(dev);
}

static PyObject *cu_set_device(PyObject *m, PyObject *arg) {
    (void)m;
    long dev = PyLong_AsLong(arg);
    if (dev == -1 && PyErr_Occurred()) return NULL;
    if (dev < INT_MIN || dev > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "set_device: invalid device index %ld", dev);
        return NULL;
    }
    PcStatus st = pc_cuda_set_device((int)dev);
    if (st != PC_OK) return pc_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *cu_synchronize(PyObject *m, PyObject *args) {
    (void)m;
    int dev = -1;
    if (!PyArg_ParseTuple(args, "|i:_cuda_synchronize", &dev)) return NULL;
    PcStatus st;
    Py_BEGIN_ALLOW_THREADS
    st = pc_cuda_device_synchronize(dev);
    Py_END_ALLOW_THREADS
    if (st != PC_OK) return pc_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *cu_device_properties(PyObject *m, PyObject *args) {
    (void)m;
    int dev;
    if (!PyArg_ParseTuple(args, "i:_cuda_get_device_properties", &dev)) return NULL;
    PcCudaDeviceInfo info;
    PcStatus st = pc_cuda_device_info(dev, &info);
    if (st != PC_OK) return pc_py_raise(st);
    return Py_BuildValue("{s:s,s:i,s:i,s:K,s:i,s:K}", "name", info.name, "major", info.major,
                         "minor", info.minor, "total_memory",
                         (unsigned long long)info.total_memory, "multi_processor_count",
                         info.multi_processor_count, "l2_cache_size",
                         (unsigned long long)info.l2_cache_size);
}

static PyObject *cu_mem_get_info(PyObject *m, PyObject *args) {
    (void)m;
    int dev = -1;
    if (!PyArg_ParseTuple(args, "|i:_cuda_mem_get_info", &dev)) return NULL;
    if (device_or_current(dev, &dev) < 0) return NULL;
    size_t free_b = 0, total_b = 0;
    PcStatus st = pc_cuda_mem_get_info(dev, &free_b, &total_b);
    if (st != PC_OK) return pc_py_raise(st);
    return Py_BuildValue("(KK)", (unsigned long long)free_b, (unsigned long long)total_b);
}

/* ---- streams ---- */

static PyObject *cu_compute_stream(PyObject *m, PyObject *args) {
    (void)m;
    int dev = -1;
    if (!PyArg_ParseTuple(args, "|i:_cuda_compute_stream", &dev)) return NULL;
    if (device_or_current(dev, &dev) < 0) return NULL;
    void *s;
    PcStatus st = pc_cuda_compute_stream(dev, &s);
    if (st != PC_OK) return pc_py_raise(st);
    return handle_obj(s);
}

static PyObject *cu_comm_stream(PyObject *m, PyObject *args) {
    (void)m;
    int dev, i = 0;
    if (!PyArg_ParseTuple(args, "i|i:_cuda_comm_stream", &dev, &i)) return NULL;
    if (device_or_current(dev, &dev) < 0) return NULL;
    void *s;
    PcStatus st = pc_cuda_comm_stream(dev, i, &s);
    if (st != PC_OK) return pc_py_raise(st);
    return handle_obj(s);
}

static PyObject *cu_current_stream(PyObject *m, PyObject *args) {
    (void)m;
    int dev = -1;
    if (!PyArg_ParseTuple(args, "|i:_cuda_current_stream", &dev)) return NULL;
    if (device_or_current(dev, &dev) < 0) return NULL;
    void *s;
    PcStatus st = pc_cuda_current_stream(dev, &s);
    if (st != PC_OK) return pc_py_raise(st);
    return handle_obj(s);
}

static PyObject *cu_set_stream(PyObject *m, PyObject *args) {
    (void)m;
    int dev;
    PyObject *h;
    void *s;
    if (!PyArg_ParseTuple(args, "iO:_cuda_set_stream", &dev, &h)) return NULL;
    if (parse_handle(h, "stream", &s) < 0) return NULL;
    PcStatus st = pc_cuda_set_current_stream(dev, s);
    if (st != PC_OK) return pc_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *cu_stream_create(PyObject *m, PyObject *args) {
    (void)m;
    int dev, priority = 0, non_blocking = 0;
    if (!PyArg_ParseTuple(args, "i|ip:_cuda_stream_create", &dev, &priority, &non_blocking))
        return NULL;
    void *s;
    PcStatus st = pc_cuda_stream_create(dev, priority, non_blocking != 0, &s);
    if (st != PC_OK) return pc_py_raise(st);
    return handle_obj(s);
}

static PyObject *cu_stream_destroy(PyObject *m, PyObject *args) {
    (void)m;
    int dev;
    PyObject *h;
    void *s;
    if (!PyArg_ParseTuple(args, "iO:_cuda_stream_destroy", &dev, &h)) return NULL;
    if (parse_handle(h, "stream", &s) < 0) return NULL;
    PcStatus st;
    Py_BEGIN_ALLOW_THREADS
    st = pc_cuda_stream_destroy(dev, s);
    Py_END_ALLOW_THREADS
    if (st != PC_OK) return pc_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *cu_stream_query(PyObject *m, PyObject *h) {
    (void)m;
    void *s;
    if (parse_handle(h, "stream", &s) < 0) return NULL;
    bool done;
    PcStatus st = pc_cuda_stream_query(s, &done);
    if (st != PC_OK) return pc_py_raise(st);
    return PyBool_FromLong(done);
}

static PyObject *cu_stream_synchronize(PyObject *m, PyObject *h) {
    (void)m;
    void *s;
    if (parse_handle(h, "stream", &s) < 0) return NULL;
    PcStatus st;
    Py_BEGIN_ALLOW_THREADS
    st = pc_cuda_stream_synchronize(s);
    Py_END_ALLOW_THREADS
    if (st != PC_OK) return pc_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *cu_stream_wait_event(PyObject *m, PyObject *args) {
    (void)m;
    PyObject *hs, *he;
    void *s, *e;
    if (!PyArg_ParseTuple(args, "OO:_cuda_stream_wait_event", &hs, &he)) return NULL;
    if (parse_handle(hs, "stream", &s) < 0 || parse_handle(he, "event", &e) < 0) return NULL;
    PcStatus st = pc_cuda_stream_wait_event(s, e);
    if (st != PC_OK) return pc_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *cu_stream_wait_stream(PyObject *m, PyObject *args) {
    (void)m;
    int dev;
    PyObject *hw, *he;
    void *w, *e;
    if (!PyArg_ParseTuple(args, "iOO:_cuda_stream_wait_stream", &dev, &hw, &he)) return NULL;
    if (parse_handle(hw, "stream", &w) < 0 || parse_handle(he, "stream", &e) < 0) return NULL;
    PcStatus st = pc_cuda_stream_wait_stream(dev, w, e);
    if (st != PC_OK) return pc_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *cu_stream_priority_range(PyObject *m, PyObject *unused) {
    (void)m; (void)unused;
    int least, greatest;
    PcStatus st = pc_cuda_stream_priority_range(&least, &greatest);
    if (st != PC_OK) return pc_py_raise(st);
    return Py_BuildValue("(ii)", least, greatest);
}

/* ---- events ---- */

static PyObject *cu_event_create(PyObject *m, PyObject *args) {
    (void)m;
    int dev, timing = 0, blocking = 0, interprocess = 0;
    if (!PyArg_ParseTuple(args, "i|ppp:_cuda_event_create", &dev, &timing, &blocking,
                          &interprocess))
        return NULL;
    void *e;
    PcStatus st = pc_cuda_event_create(dev, timing != 0, blocking != 0, interprocess != 0, &e);
    if (st != PC_OK) return pc_py_raise(st);
    return handle_obj(e);
}

static PyObject *cu_event_destroy(PyObject *m, PyObject *h) {
    (void)m;
    void *e;
    if (parse_handle(h, "event", &e) < 0) return NULL;
    pc_cuda_event_destroy(e);
    Py_RETURN_NONE;
}

static PyObject *cu_event_record(PyObject *m, PyObject *args) {
    (void)m;
    PyObject *he, *hs;
    void *e, *s;
    if (!PyArg_ParseTuple(args, "OO:_cuda_event_record", &he, &hs)) return NULL;
    if (parse_handle(he, "event", &e) < 0 || parse_handle(hs, "stream", &s) < 0) return NULL;
    PcStatus st = pc_cuda_event_record(e, s);
    if (st != PC_OK) return pc_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *cu_event_query(PyObject *m, PyObject *h) {
    (void)m;
    void *e;
    if (parse_handle(h, "event", &e) < 0) return NULL;
    bool done;
    PcStatus st = pc_cuda_event_query(e, &done);
    if (st != PC_OK) return pc_py_raise(st);
    return PyBool_FromLong(done);
}

static PyObject *cu_event_synchronize(PyObject *m, PyObject *h) {
    (void)m;
    void *e;
    if (parse_handle(h, "event", &e) < 0) return NULL;
    PcStatus st;
    Py_BEGIN_ALLOW_THREADS
    st = pc_cuda_event_synchronize(e);
    Py_END_ALLOW_THREADS
    if (st != PC_OK) return pc_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *cu_event_elapsed_time(PyObject *m, PyObject *args) {
    (void)m;
    PyObject *ha, *hb;
    void *a, *b;
    if (!PyArg_ParseTuple(args, "OO:_cuda_event_elapsed_time", &ha, &hb)) return NULL;
    if (parse_handle(ha, "start", &a) < 0 || parse_handle(hb, "end", &b) < 0) return NULL;
    float ms = 0.0f;
    PcStatus st = pc_cuda_event_elapsed_time(a, b, &ms);
    if (st != PC_OK) return pc_py_raise(st);
    return PyFloat_FromDouble((double)ms);
}

/* ---- allocator ---- */

static PyObject *cu_memory_stats(PyObject *m, PyObject *args) {
    (void)m;
    int dev = -1;
    if (!PyArg_ParseTuple(args, "|i:_cuda_memory_stats", &dev)) return NULL;
    if (device_or_current(dev, &dev) < 0) return NULL;
    PcCudaMemStats s;
    PcStatus st = pc_cuda_memory_stats(dev, &s);
    if (st != PC_OK) return pc_py_raise(st);
    return Py_BuildValue(
        "{s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L}",
        "allocated_bytes.all.current", (long long)s.allocated_bytes,
        "allocated_bytes.all.peak", (long long)s.allocated_bytes_peak,
        "requested_bytes.all.current", (long long)s.requested_bytes,
        "requested_bytes.all.peak", (long long)s.requested_bytes_peak,
        "reserved_bytes.all.current", (long long)s.reserved_bytes,
        "reserved_bytes.all.peak", (long long)s.reserved_bytes_peak,
        "active.all.current", (long long)s.active_blocks,
        "segment.all.current", (long long)s.segments,
        "inactive_split_bytes.all.current", (long long)s.inactive_split_bytes,
        "num_alloc_retries", (long long)s.num_alloc_retries,
        "num_ooms", (long long)s.num_ooms,
        "num_device_alloc", (long long)s.num_device_alloc,
        "num_device_free", (long long)s.num_device_free);
}

static PyObject *cu_reset_peak(PyObject *m, PyObject *args) {
    (void)m;
    int dev = -1;
    if (!PyArg_ParseTuple(args, "|i:_cuda_reset_peak_memory_stats", &dev)) return NULL;
    if (device_or_current(dev, &dev) < 0) return NULL;
    PcStatus st = pc_cuda_reset_peak_memory_stats(dev);
    if (st != PC_OK) return pc_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *cu_empty_cache(PyObject *m, PyObject *args) {
    (void)m;
    int dev = -1;
    if (!PyArg_ParseTuple(args, "|i:_cuda_empty_cache", &dev)) return NULL;
    PcStatus st;
    Py_BEGIN_ALLOW_THREADS
    st = pc_cuda_empty_cache(dev);
    Py_END_ALLOW_THREADS
    if (st != PC_OK) return pc_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *cu_record_stream(PyObject *m, PyObject *args) {
    (void)m;
    PyObject *to, *hs;
    void *s;
    if (!PyArg_ParseTuple(args, "OO:_cuda_record_stream", &to, &hs)) return NULL;
    PcTensor *t = pc_py_unwrap(to, "tensor");
    if (!t || parse_handle(hs, "stream", &s) < 0) return NULL;
    if (t->device.type != PC_CUDA) {
        PyErr_SetString(PyExc_ValueError, "record_stream: the tensor is not on a CUDA device");
        return NULL;
    }
    if (!t->storage->data || t->storage->release) Py_RETURN_NONE; /* empty, or not ours */
    PcStatus st = pc_cuda_record_stream(t->device.index, t->storage->data, s);
    if (st != PC_OK) return pc_py_raise(st);
    Py_RETURN_NONE;
}

/* ---- settings ---- */

static PyObject *cu_set_allow_tf32(PyObject *m, PyObject *arg) {
    (void)m;
    int v = PyObject_IsTrue(arg);
    if (v < 0) return NULL;
    pc_cuda_set_allow_tf32(v != 0);
    Py_RETURN_NONE;
}

static PyObject *cu_get_allow_tf32(PyObject *m, PyObject *unused) {
    (void)m; (void)unused;
    return PyBool_FromLong(pc_cuda_get_allow_tf32());
}

static PyMethodDef cuda_functions[] = {
    {"_cuda_is_available", cu_is_available, METH_NOARGS, "True when a CUDA device is usable."},
    {"_cuda_device_count", cu_device_count, METH_NOARGS, "Number of visible CUDA devices."},
    {"_cuda_current_device", cu_current_device, METH_NOARGS, "The calling thread's device."},
    {"_cuda_set_device", cu_set_device, METH_O, "_cuda_set_device(index)"},
    {"_cuda_synchronize", cu_synchronize, METH_VARARGS, "_cuda_synchronize(device=-1)"},
    {"_cuda_get_device_properties", cu_device_properties, METH_VARARGS,
     "_cuda_get_device_properties(device) -> dict"},
    {"_cuda_mem_get_info", cu_mem_get_info, METH_VARARGS, "_cuda_mem_get_info(device=-1) -> "
                                                          "(free, total)"},
    {"_cuda_compute_stream", cu_compute_stream, METH_VARARGS,
     "_cuda_compute_stream(device=-1) -> handle of the device's compute stream"},
    {"_cuda_comm_stream", cu_comm_stream, METH_VARARGS,
     "_cuda_comm_stream(device, i=0) -> handle of a communication stream"},
    {"_cuda_current_stream", cu_current_stream, METH_VARARGS,
     "_cuda_current_stream(device=-1) -> handle"},
    {"_cuda_set_stream", cu_set_stream, METH_VARARGS, "_cuda_set_stream(device, handle)"},
    {"_cuda_stream_create", cu_stream_create, METH_VARARGS,
     "_cuda_stream_create(device, priority=0, non_blocking=False) -> handle"},
    {"_cuda_stream_destroy", cu_stream_destroy, METH_VARARGS,
     "_cuda_stream_destroy(device, handle)"},
    {"_cuda_stream_query", cu_stream_query, METH_O, "_cuda_stream_query(handle) -> bool"},
    {"_cuda_stream_synchronize", cu_stream_synchronize, METH_O,
     "_cuda_stream_synchronize(handle)"},
    {"_cuda_stream_wait_event", cu_stream_wait_event, METH_VARARGS,
     "_cuda_stream_wait_event(stream, event)"},
    {"_cuda_stream_wait_stream", cu_stream_wait_stream, METH_VARARGS,
     "_cuda_stream_wait_stream(device, waiter, waitee)"},
    {"_cuda_stream_priority_range", cu_stream_priority_range, METH_NOARGS,
     "_cuda_stream_priority_range() -> (least, greatest)"},
    {"_cuda_event_create", cu_event_create, METH_VARARGS,
     "_cuda_event_create(device, enable_timing=False, blocking=False, interprocess=False)"},
    {"_cuda_event_destroy", cu_event_destroy, METH_O, "_cuda_event_destroy(handle)"},
    {"_cuda_event_record", cu_event_record, METH_VARARGS, "_cuda_event_record(event, stream)"},
    {"_cuda_event_query", cu_event_query, METH_O, "_cuda_event_query(handle) -> bool"},
    {"_cuda_event_synchronize", cu_event_synchronize, METH_O, "_cuda_event_synchronize(handle)"},
    {"_cuda_event_elapsed_time", cu_event_elapsed_time, METH_VARARGS,
     "_cuda_event_elapsed_time(start, end) -> milliseconds"},
    {"_cuda_memory_stats", cu_memory_stats, METH_VARARGS, "_cuda_memory_stats(device=-1)"},
    {"_cuda_reset_peak_memory_stats", cu_reset_peak, METH_VARARGS,
     "_cuda_reset_peak_memory_stats(device=-1)"},
    {"_cuda_empty_cache", cu_empty_cache, METH_VARARGS, "_cuda_empty_cache(device=-1)"},
    {"_cuda_record_stream", cu_record_stream, METH_VARARGS,
     "_cuda_record_stream(tensor, stream): the tensor's memory is also used on `stream`"},
    {"_cuda_set_allow_tf32", cu_set_allow_tf32, METH_O, "_cuda_set_allow_tf32(bool)"},
    {"_cuda_get_allow_tf32", cu_get_allow_tf32, METH_NOARGS, "_cuda_get_allow_tf32() -> bool"},
    {NULL, NULL, 0, NULL},
};

int pc_py_add_cuda(PyObject *module) {
    if (PyModule_AddObjectRef(module, "_cuda_built", Py_True) < 0) return -1;
    return PyModule_AddFunctions(module, cuda_functions);
}

#else /* !PC_WITH_CUDA */

static PyObject *cu_false(PyObject *m, PyObject *unused) {
    (void)m; (void)unused;
    Py_RETURN_FALSE;
}

static PyObject *cu_zero(PyObject *m, PyObject *unused) {
    (void)m; (void)unused;
    return PyLong_FromLong(0);
}

static PyMethodDef cuda_functions[] = {
    {"_cuda_is_available", cu_false, METH_NOARGS, "False: pipec was built without CUDA."},
    {"_cuda_device_count", cu_zero, METH_NOARGS, "0: pipec was built without CUDA."},
    {NULL, NULL, 0, NULL},
};

int pc_py_add_cuda(PyObject *module) {
    if (PyModule_AddObjectRef(module, "_cuda_built", Py_False) < 0) return -1;
    return PyModule_AddFunctions(module, cuda_functions);
}

#endif /* PC_WITH_CUDA */
