/* module.c — pipec._C: module definition and multi-phase initialisation (PEP 489).
 *
 * Exec slot order: Tensor type (and NumPy C API), autograd types, op functions, tracing,
 * the runtime, pipec.PipelineError, then CUDA, DLPack, schedules and communicators.
 */
#include "bindings.h"

int pc_py_methods_init(PyObject *module);  /* methods.c */

static int add_functions(PyObject *module, PyMethodDef *defs) {
    return PyModule_AddFunctions(module, defs);
}

static int pc_module_exec(PyObject *module) {
    if (pc_py_tensor_type_init(module) < 0) return -1;
    if (pc_py_autograd_init(module) < 0) return -1;
    if (pc_py_methods_init(module) < 0) return -1;
    if (pc_py_trace_init(module) < 0) return -1;
    if (pc_py_runtime_init(module) < 0) return -1;
    if (add_functions(module, pc_py_op_functions) < 0) return -1;
    if (add_functions(module, pc_py_autograd_functions) < 0) return -1;
    if (!pc_py_pipeline_error) {
        pc_py_pipeline_error = PyErr_NewExceptionWithDoc(
            "pipec.PipelineError",
            "A runtime or communication failure in pipec (CUDA, NCCL, a peer timing out).",
            PyExc_RuntimeError, NULL);
        if (!pc_py_pipeline_error) return -1;
    }
    if (PyModule_AddObjectRef(module, "PipelineError", pc_py_pipeline_error) < 0) return -1;
    if (pc_py_add_cuda(module) < 0) return -1;
    if (pc_py_add_dlpack(module) < 0) return -1;
    if (pc_py_add_sched(module) < 0) return -1;
    if (pc_py_comm_init(module) < 0) return -1;
#ifdef PC_WITH_CUDA
    if (PyModule_AddIntConstant(module, "_built_with_cuda", 1) < 0) return -1;
#else
    if (PyModule_AddIntConstant(module, "_built_with_cuda", 0) < 0) return -1;
#endif
    return 0;
}

static PyModuleDef_Slot pc_module_slots[] = {
    {Py_mod_exec, (void *)pc_module_exec},
    {0, NULL},
};

static struct PyModuleDef pc_module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "pipec._C",
    .m_doc = "pipec's C engine: tensors, kernels, autograd, schedules and runtime.",
    .m_size = 0,
    .m_slots = pc_module_slots,
};

PyMODINIT_FUNC PyInit__C(void) { return PyModuleDef_Init(&pc_module_def); }
