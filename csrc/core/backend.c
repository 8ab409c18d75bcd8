/* backend.c — device -> kernel table lookup (see backend.h). */
#include "backend.h"

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
