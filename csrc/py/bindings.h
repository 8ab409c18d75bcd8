/* bindings.h — declarations shared between the lead's binding files in csrc/py/
 * (tensor_type.c, methods.c, autograd_py.c, module.c). Includes Python.h via pyapi.h.
 */
#ifndef PC_PY_BINDINGS_H
#define PC_PY_BINDINGS_H

#include "pyapi.h"
#include "../autograd/autograd.h"
#include "../graph/call.h"

/* tensor_type.c */
int pc_py_tensor_type_init(PyObject *module);
PyObject *pc_py_register_types(PyObject *mod, PyObject *args);
PyObject *pc_py_tensor_numpy(PyObject *self);               /* new reference */
PyObject *pc_py_from_numpy(PyObject *mod, PyObject *arr);   /* new reference */
PcStatus pc_py_item(PcTensor *t, double *out);

/* errors.c: pipec.PipelineError (set at module init) */
extern PyObject *pc_py_pipeline_error;

/* methods.c: run a call (GIL released for large work) and record it when tracing;
 * outputs are new references. */
PcStatus pc_py_call_run(PcCall *c, PcTensor **in, PcTensor **outs);

/* methods.c: self (a Tensor) op other for a comparison op (PC_B_EQ ... PC_B_GE), other a
 * Tensor or a Python number: a new reference to the bool result; Py_NotImplemented (new
 * reference, no error) when other is neither; NULL with an exception on failure. */
PyObject *pc_py_compare(PyObject *self, PyObject *other, PcBinaryOp op);

/* methods.c: the Tensor method table and the module's op functions */
extern PyMethodDef pc_py_tensor_methods[];
extern PyMethodDef pc_py_op_functions[];

/* autograd_py.c */
int pc_py_autograd_init(PyObject *module);
extern PyMethodDef pc_py_autograd_functions[];
PyObject *pc_py_node_wrap(PcNode *node);                  /* new reference; node borrowed */

/* trace_py.c */
int pc_py_trace_init(PyObject *module);
/* Record a custom Function call while tracing (no-op otherwise); 0 or -1 + exception. */
int pc_py_trace_function(PyObject *cls, PyObject *fargs, PyObject *outseq);

/* The PcProgram of a pipec._C.Program object (borrowed), or NULL + TypeError. */
struct PcProgram;
struct PcProgram *pc_py_program_ptr(PyObject *obj);

/* comm_py.c: the communicator and store objects */
int pc_py_comm_init(PyObject *module);
/* The PcComm of a _C.Comm (borrowed), counted as a call in flight so that destroy() waits
 * for it; NULL + exception when obj is not a Comm or was destroyed. GIL held. */
struct PcComm;
struct PcComm *pc_py_comm_acquire(PyObject *obj);
/* Ends what pc_py_comm_acquire began (any thread; the GIL is not needed). */
void pc_py_comm_release(PyObject *obj);

/* runtime_py.c */
int pc_py_runtime_init(PyObject *module);

#endif /* PC_PY_BINDINGS_H */
