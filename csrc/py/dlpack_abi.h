/* dlpack_abi.h — the DLPack exchange ABI (data structures of the public DLPack specification,
 * versions 0.x "dltensor" capsules and 1.x "dltensor_versioned" capsules).
 *
 * Written from the specification (dmlc/dlpack, data-apis.org array API standard); the
 * layouts, enum values and flag bits must match it exactly. Names carry a Pc prefix so that
 * this header never clashes with a real dlpack.h included by another library.
 * Plain C, no Python: used by csrc/py/dlpack.c.
 */
#ifndef PC_PY_DLPACK_ABI_H
#define PC_PY_DLPACK_ABI_H

#include <stdint.h>

/* The versioned ABI this file describes (DLPACK_MAJOR_VERSION / DLPACK_MINOR_VERSION). */
#define PC_DLPACK_MAJOR_VERSION 1
#define PC_DLPACK_MINOR_VERSION 0

/* DLDeviceType */
typedef enum {
    PC_DL_CPU = 1,           /* kDLCPU */
    PC_DL_CUDA = 2,          /* kDLCUDA */
    PC_DL_CUDA_HOST = 3,     /* kDLCUDAHost: pinned host memory */
    PC_DL_OPENCL = 4,        /* kDLOpenCL */
    PC_DL_VULKAN = 7,        /* kDLVulkan */
    PC_DL_METAL = 8,         /* kDLMetal */
    PC_DL_VPI = 9,           /* kDLVPI */
    PC_DL_ROCM = 10,         /* kDLROCM */
    PC_DL_ROCM_HOST = 11,    /* kDLROCMHost */
    PC_DL_EXT_DEV = 12,      /* kDLExtDev */
    PC_DL_CUDA_MANAGED = 13, /* kDLCUDAManaged: unified memory */
    PC_DL_ONEAPI = 14,       /* kDLOneAPI */
    PC_DL_WEBGPU = 15,       /* kDLWebGPU */
    PC_DL_HEXAGON = 16       /* kDLHexagon */
} PcDLDeviceType;

/* DLDevice */
typedef struct {
    PcDLDeviceType device_type;
    int32_t device_id;
} PcDLDevice;

/* DLDataTypeCode */
typedef enum {
    PC_DL_INT = 0,           /* kDLInt */
    PC_DL_UINT = 1,          /* kDLUInt */
    PC_DL_FLOAT = 2,         /* kDLFloat */
    PC_DL_OPAQUE_HANDLE = 3, /* kDLOpaqueHandle */
    PC_DL_BFLOAT = 4,        /* kDLBfloat */
    PC_DL_COMPLEX = 5,       /* kDLComplex */
    PC_DL_BOOL = 6           /* kDLBool */
} PcDLDataTypeCode;

/* DLDataType: `code` is a PcDLDataTypeCode, `bits` per lane, `lanes` per element. */
typedef struct {
    uint8_t code;
    uint8_t bits;
    uint16_t lanes;
} PcDLDataType;

/* DLTensor: shape/strides in elements; strides NULL = compact row-major; the first element is
 * at (char *)data + byte_offset. */
typedef struct {
    void *data;
    PcDLDevice device;
    int32_t ndim;
    PcDLDataType dtype;
    int64_t *shape;
    int64_t *strides;
    uint64_t byte_offset;
} PcDLTensor;

/* DLManagedTensor (legacy, capsule name "dltensor"). */
typedef struct PcDLManagedTensor {
    PcDLTensor dl_tensor;
    void *manager_ctx;
    void (*deleter)(struct PcDLManagedTensor *self);
} PcDLManagedTensor;

/* DLPackVersion */
typedef struct {
    uint32_t major;
    uint32_t minor;
} PcDLPackVersion;

/* DLManagedTensorVersioned (capsule name "dltensor_versioned"). */
typedef struct PcDLManagedTensorVersioned {
    PcDLPackVersion version;
    void *manager_ctx;
    void (*deleter)(struct PcDLManagedTensorVersioned *self);
    uint64_t flags;
    PcDLTensor dl_tensor;
} PcDLManagedTensorVersioned;

/* flags of PcDLManagedTensorVersioned */
#define PC_DLPACK_FLAG_READ_ONLY (UINT64_C(1) << 0) /* DLPACK_FLAG_BITMASK_READ_ONLY */
#define PC_DLPACK_FLAG_IS_COPIED (UINT64_C(1) << 1) /* DLPACK_FLAG_BITMASK_IS_COPIED */

#endif /* PC_PY_DLPACK_ABI_H */
