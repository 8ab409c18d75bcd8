/* backend.c — device -> kernel table lookup and op names (see backend.h). */
#include "backend.h"

const char *pc_unary_op_name(PcUnaryOp op) {
    static const char *const names[PC_NUM_UNARY] = {
        [PC_U_NEG] = "neg", [PC_U_ABS] = "abs", [PC_U_EXP] = "exp", [PC_U_LOG] = "log",
        [PC_U_SQRT] = "sqrt", [PC_U_TANH] = "tanh", [PC_U_SIGMOID] = "sigmoid",
        [PC_U_RELU] = "relu", [PC_U_GELU] = "gelu", [PC_U_POW] = "pow", [PC_U_SIGN] = "sign",
        [PC_U_ADD_S] = "add_scalar", [PC_U_MUL_S] = "mul_scalar", [PC_U_RSUB_S] = "rsub_scalar",
        [PC_U_RDIV_S] = "rdiv_scalar", [PC_U_GE_S] = "ge_scalar", [PC_U_GT_S] = "gt_scalar",
    };
    return (int)op >= 0 && op < PC_NUM_UNARY ? names[op] : "?";
}

const char *pc_binary_op_name(PcBinaryOp op) {
    static const char *const names[PC_NUM_BINARY] = {
        [PC_B_ADD] = "add", [PC_B_SUB] = "sub", [PC_B_MUL] = "mul", [PC_B_DIV] = "div",
        [PC_B_MAXIMUM] = "maximum", [PC_B_EQ] = "eq", [PC_B_NE] = "ne", [PC_B_LT] = "lt",
        [PC_B_LE] = "le", [PC_B_GT] = "gt", [PC_B_GE] = "ge", [PC_B_RELU_BWD] = "relu_backward",
        [PC_B_GELU_BWD] = "gelu_backward", [PC_B_TANH_BWD] = "tanh_backward",
        [PC_B_SIGMOID_BWD] = "sigmoid_backward", [PC_B_POW_BWD] = "pow_backward",
    };
    return (int)op >= 0 && op < PC_NUM_BINARY ? names[op] : "?";
}

const PcBackend *pc_backend_for(PcDevice dev) {
    if (dev.type == PC_CPU) return &pc_cpu_backend;
#ifdef PC_WITH_CUDA
    if (dev.type == PC_CUDA) {
        int n = pc_cuda_device_count();
        if (n == 0) {
            pc_set_error(PC_ERR_DEVICE, "CUDA device cuda:%d requested but no CUDA device is "
                                        "available (pipec.cuda.is_available() is False)",
                         dev.index);
            return NULL;
        }
        if (dev.index < 0 || dev.index >= n) {
            pc_set_error(PC_ERR_DEVICE, "invalid CUDA device cuda:%d: %d device(s) visible",
                         dev.index, n);
            return NULL;
        }
        return &pc_cuda_backend;
    }
#endif
    pc_set_error(PC_ERR_DEVICE, "device type %s is not available in this build of pipec "
                                "(built without CUDA)",
                 dev.type == PC_CUDA ? "cuda" : "?");
    return NULL;
}
