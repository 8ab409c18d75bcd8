/* errors.c — the one place where a PcStatus becomes a Python exception (STYLE.md).
 *
 * Mapping: INVALID -> ValueError, TYPE -> TypeError, INDEX -> IndexError, OOM -> MemoryError,
 * RUNTIME/DEVICE -> RuntimeError, NOTIMPL -> NotImplementedError, CUDA/NCCL/TIMEOUT/COMM ->
 * pipec.PipelineError (a RuntimeError subclass created at module init), PYTHON -> the
 * Python error already set by the callback.
 */
#include "pyapi.h"

PyObject *pc_py_pipeline_error = NULL; /* owned by the module (set at init) */

PyObject *pc_py_raise(PcStatus st) {
    PyObject *exc;
    switch (st) {
    case PC_OK:
        PyErr_SetString(PyExc_SystemError, "pipec: error raised with status PC_OK");
        return NULL;
    case PC_ERR_PYTHON:
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_RuntimeError, pc_last_error());
        return NULL;
    case PC_ERR_INVALID: exc = PyExc_ValueError; break;
    case PC_ERR_TYPE: exc = PyExc_TypeError; break;
    case PC_ERR_INDEX: exc = PyExc_IndexError; break;
    case PC_ERR_OOM: exc = PyExc_MemoryError; break;
    case PC_ERR_NOTIMPL: exc = PyExc_NotImplementedError; break;
    case PC_ERR_RUNTIME:
    case PC_ERR_DEVICE: exc = PyExc_RuntimeError; break;
    default: exc = pc_py_pipeline_error ? pc_py_pipeline_error : PyExc_RuntimeError; break;
    }
    PyErr_SetString(exc, pc_last_error());
    return NULL;
}
