/* dlpack.h — zero-copy exchange of tensors with other libraries (torch, CuPy, NumPy, JAX):
 * DLPack both ways and the CUDA array interface (version 3). Implemented in csrc/py/dlpack.c.
 * Includes Python.h (through pyapi.h): only csrc/py/ includes this.
 */
#ifndef PC_PY_DLPACK_H
#define PC_PY_DLPACK_H

#include "pyapi.h"

/* A "dltensor" capsule (legacy DLManagedTensor) viewing t's memory; it keeps t's storage
 * alive until the consumer calls the deleter (or the unconsumed capsule dies). Does not
 * synchronise streams (see pc_py_tensor_dlpack). New reference; NULL + exception on error. */
PyObject *pc_py_to_dlpack(PcTensor *t);

/* A Tensor sharing the memory of `obj`: an object with __dlpack__ (and __dlpack_device__),
 * or a "dltensor" / "dltensor_versioned" capsule that has not been consumed. For CUDA
 * producers the consumer stream passed to __dlpack__ is pipec's current stream of that
 * device. The producer's deleter runs when the last view of the memory goes away.
 * New reference; NULL + exception on error. */
PyObject *pc_py_from_dlpack(PyObject *obj);

/* __cuda_array_interface__ (version 3) of a CUDA tensor: a new dict. AttributeError for a CPU
 * tensor (so hasattr() is False), TypeError for bfloat16, RuntimeError when t requires grad.
 * "stream" is pipec's current stream on t's device. */
PyObject *pc_py_cuda_array_interface(PcTensor *t);

/* Ready-made method bodies for pipec.Tensor (METH_VARARGS | METH_KEYWORDS / METH_NOARGS):
 *   __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None)
 *     makes `stream` (CUDA: None = the legacy default stream, -1 = no synchronisation) wait
 *     for pipec's current stream, returns a "dltensor_versioned" capsule when max_version
 *     allows (1, x), else a legacy one; copy=True exports a copy.
 *   __dlpack_device__(self) -> (device_type, device_id)
 * Both return new references. */
PyObject *pc_py_tensor_dlpack(PyObject *self, PyObject *args, PyObject *kwargs);
PyObject *pc_py_tensor_dlpack_device(PyObject *self, PyObject *unused);

#endif /* PC_PY_DLPACK_H */
