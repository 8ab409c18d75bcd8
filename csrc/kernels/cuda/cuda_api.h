/* cuda_api.h — the CUDA backend's C API beyond the kernel table: devices, streams, events,
 * the caching allocator's statistics and the TF32 switch.
 *
 * For csrc/py/ (pipec.cuda), the runtime and the communicators. Plain C: no CUDA headers,
 * so C files compiled by gcc can include it. Streams and events are opaque handles: a
 * `void *` that is the cudaStream_t / cudaEvent_t itself (so it can be handed to other
 * libraries, e.g. torch.cuda.ExternalStream(int(handle))).
 *
 * Threads: the current device is the CUDA runtime's (per thread); the current stream is
 * per thread and per device and starts as that device's compute stream. Everything here is
 * thread-safe. Only available when built with PC_WITH_CUDA (implemented in
 * csrc/kernels/cuda/context.cu and allocator.cu).
 */
#ifndef PC_KERNELS_CUDA_CUDA_API_H
#define PC_KERNELS_CUDA_CUDA_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../../core/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Communication streams per device context (in addition to the compute stream). */
#define PC_CUDA_NUM_COMM_STREAMS 2
/* Device ordinals above this are refused. */
#define PC_CUDA_MAX_DEVICES 64

/* ---- devices ---- */

/* pc_cuda_device_count() is declared in core/backend.h. */
PcStatus pc_cuda_get_device(int *dev);
PcStatus pc_cuda_set_device(int dev);
/* Wait for all work on `dev` (-1: the current device). */
PcStatus pc_cuda_device_synchronize(int dev);

typedef struct PcCudaDeviceInfo {
    char name[256];
    int major, minor;            /* compute capability */
    size_t total_memory;         /* bytes */
    int multi_processor_count;
    size_t l2_cache_size;        /* bytes */
} PcCudaDeviceInfo;
PcStatus pc_cuda_device_info(int dev, PcCudaDeviceInfo *out);
/* Free and total device memory as cudaMemGetInfo reports them. */
PcStatus pc_cuda_mem_get_info(int dev, size_t *free_bytes, size_t *total_bytes);

/* ---- streams ---- */

/* The device context's own streams (created on first use of the device). */
PcStatus pc_cuda_compute_stream(int dev, void **out);
PcStatus pc_cuda_comm_stream(int dev, int i, void **out); /* 0 <= i < PC_CUDA_NUM_COMM_STREAMS */
/* dst's stream for copies from src (one per ordered pair of devices, so copies from
 * different sources never queue behind each other; created on first use, high priority,
 * non-blocking, lives with the context). */
PcStatus pc_cuda_peer_stream(int dst, int src, void **out);
/* The calling thread's current stream on dev (the compute stream unless set). */
PcStatus pc_cuda_current_stream(int dev, void **out);
/* Make `stream` the calling thread's current stream on dev (NULL: back to the compute stream).
 * The stream must belong to dev. Any stream handle works, including ones created by other
 * libraries. */
PcStatus pc_cuda_set_current_stream(int dev, void *stream);
/* A new stream on dev; priority 0 is normal, lower numbers are higher priority (clamped to the
 * device's range). Blocking (synchronises with the legacy default stream) unless
 * non_blocking. */
PcStatus pc_cuda_stream_create(int dev, int priority, bool non_blocking, void **out);
/* Waits for the stream's work, drops its cuBLAS handle and workspace, destroys it.
 * Idempotent for NULL. Never destroy the context's own streams. */
PcStatus pc_cuda_stream_destroy(int dev, void *stream);
PcStatus pc_cuda_stream_query(void *stream, bool *done);
PcStatus pc_cuda_stream_synchronize(void *stream);
/* Future work on `stream` waits for `event`'s last record. */
PcStatus pc_cuda_stream_wait_event(void *stream, void *event);
/* Future work on `waiter` waits for all work queued so far on `waitee` (both on dev). */
PcStatus pc_cuda_stream_wait_stream(int dev, void *waiter, void *waitee);
/* Copy nbytes from src (on src_dev) to dst (on dst_dev) on `stream`, ordered by nothing else:
 * the caller makes `stream` wait for the producer and keeps src alive until the copy ran
 * (pc_copy_d2d instead orders both devices' current streams both ways). Enables peer access
 * between the two devices on first use. */
PcStatus pc_cuda_memcpy_peer_async(void *stream, int dst_dev, void *dst, int src_dev,
                                   const void *src, size_t nbytes);
/* Testing aid: on `stream` (of device dev), fill `poison` (nbytes, may be NULL) with 0xff bytes
 * (NaN as floats) and then keep the GPU busy for about `us` microseconds. */
PcStatus pc_cuda_test_delay(void *stream, int dev, void *poison, size_t nbytes, int us);
/* Greatest (numerically lowest) and least stream priorities on this machine. */
PcStatus pc_cuda_stream_priority_range(int *least, int *greatest);

/* Future work on an external stream handle, as the DLPack / CUDA array interface protocols
 * name them (1 = legacy default stream, 2 = per-thread default stream, otherwise the
 * cudaStream_t value), waits for the work queued so far on dev's current stream. */
PcStatus pc_cuda_sync_external_stream(int dev, uintptr_t external_stream);

/* ---- events ---- */

PcStatus pc_cuda_event_create(int dev, bool enable_timing, bool blocking, bool interprocess,
                              void **out);
void pc_cuda_event_destroy(void *event); /* NULL is a no-op */
/* Record on `stream` (NULL: dev's current stream, dev taken from the caller's device). */
PcStatus pc_cuda_event_record(void *event, void *stream);
PcStatus pc_cuda_event_query(void *event, bool *done);
PcStatus pc_cuda_event_synchronize(void *event);
/* Milliseconds between two recorded timing events. */
PcStatus pc_cuda_event_elapsed_time(void *start, void *end, float *ms);

/* ---- caching allocator ---- */

typedef struct PcCudaMemStats {
    int64_t allocated_bytes, allocated_bytes_peak;  /* blocks handed out (rounded sizes) */
    int64_t requested_bytes, requested_bytes_peak;  /* sizes as asked for */
    int64_t reserved_bytes, reserved_bytes_peak;    /* segments obtained with cudaMalloc */
    int64_t active_blocks, segments;
    int64_t inactive_split_bytes;                    /* free pieces of partly used segments */
    int64_t num_alloc_retries;                       /* cudaMalloc failed, cache freed, retried */
    int64_t num_ooms;                                /* allocations that failed for good */
    int64_t num_device_alloc, num_device_free;       /* cudaMalloc / cudaFree calls */
} PcCudaMemStats;

/* Zeroes when the device was never used. */
PcStatus pc_cuda_memory_stats(int dev, PcCudaMemStats *out);
/* Peaks restart from the current values. */
PcStatus pc_cuda_reset_peak_memory_stats(int dev);
/* Returns every unused cached segment of dev (-1: all devices) to the driver. */
PcStatus pc_cuda_empty_cache(int dev);
/* The block holding `ptr` (a pointer the allocator handed out) is also used on `stream`:
 * when freed, it is reused only after the work queued on `stream` until then has finished. */
PcStatus pc_cuda_record_stream(int dev, void *ptr, void *stream);

/* ---- settings ---- */

/* float32 GEMMs may use TF32 tensor cores (default false). Process-wide. */
void pc_cuda_set_allow_tf32(bool allow);
bool pc_cuda_get_allow_tf32(void);

#ifdef __cplusplus
}
#endif
#endif /* PC_KERNELS_CUDA_CUDA_API_H */
