/* pyapi.h — what the binding files of csrc/py/ share: the Tensor wrapper type, the status ->
 * exception mapping, dtype/device conversions. Implemented in csrc/py/tensor_type.c and
 * csrc/py/errors.c. Only csrc/py/ includes this (it includes Python.h).
 */
#ifndef PC_PY_PYAPI_H
#define PC_PY_PYAPI_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "../core/tensor.h"

/* The Python object behind pipec.Tensor (and its subclasses, e.g. nn.Parameter). */
typedef struct PcPyTensor {
    PyObject_HEAD
    PcTensor *t;         /* owned reference; never NULL after construction */
    PyObject *dict;      /* owned: instance __dict__ (user attributes), may be NULL */
    PyObject *weakrefs;
} PcPyTensor;

extern PyTypeObject *PcPyTensor_Type; /* set at module init (heap type) */

/* Raise the Python exception for a failing status with the thread's pc_last_error() message.
 * Returns NULL (so `return pc_py_raise(st);` works in functions returning PyObject*).
 * PC_ERR_PYTHON leaves the already-set Python error in place. */
PyObject *pc_py_raise(PcStatus st);

/* Python wrapper for t. Steals the reference to t. Returns the existing wrapper (new
 * reference) when t already has a live one, else a new pipec.Tensor. NULL + exception on
 * failure (t is released). */
PyObject *pc_py_wrap(PcTensor *t);

/* Borrowed PcTensor* of a pipec.Tensor (or subclass) object, or NULL + TypeError naming
 * `what` when obj is not a Tensor. */
PcTensor *pc_py_unwrap(PyObject *obj, const char *what);
static inline int pc_py_is_tensor(PyObject *obj) {
    return PyObject_TypeCheck(obj, PcPyTensor_Type);
}

/* dtype / device objects (pipec.float32, pipec.device("cuda:0")). Parse returns 0 on
 * success, -1 with TypeError/ValueError naming `what`. The getters return new references. */
int pc_py_parse_dtype(PyObject *obj, const char *what, PcDType *out);
int pc_py_parse_device(PyObject *obj, const char *what, PcDevice *out);
PyObject *pc_py_dtype_obj(PcDType dt);
PyObject *pc_py_device_obj(PcDevice dev);

/* Optional parts (each returns 0 or -1 with an exception set). */
int pc_py_add_cuda(PyObject *module);     /* csrc/py/cuda_py.c */
int pc_py_add_dlpack(PyObject *module);   /* csrc/py/dlpack.c */
int pc_py_add_sched(PyObject *module);    /* csrc/py/sched_py.c */

#endif /* PC_PY_PYAPI_H */
