/* context.cu — per-device CUDA contexts, streams, events, host<->device copies, and the
 * pc_cuda_backend kernel table.
 *
 * A PcCudaContext is created on first use of a device and lives until the process exits:
 * a compute stream (blocking, so it orders with the legacy default stream that torch and
 * most libraries use), PC_CUDA_NUM_COMM_STREAMS communication streams (non-blocking, highest
 * priority), the cuBLASLt handle, a cuBLAS handle + 32 MiB workspace per stream that runs a
 * GEMM, a pool of timing-disabled events, slots of mapped pinned memory for index checks, and
 * two pinned staging buffers for large pageable host copies.
 *
 * The current stream is per thread and per device (thread_local), starting as the compute
 * stream; the current device is the CUDA runtime's own per-thread device. Every backend call
 * sets the device of its tensors for its duration (PcCudaDeviceGuard) and restores it.
 *
 * Exports: pc_cuda_backend, pc_cuda_device_count (backend.h); the C API of cuda_api.h except
 * the allocator's; the context helpers of cuda_internal.h.
 */
#include "cuda_internal.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>

/* ---- errors ---- */

PcStatus pc_cuda_fail(cudaError_t err, const char *call, const char *file, int line) {
    (void)cudaGetLastError(); /* clear a non-sticky error so the process stays usable */
    return pc_set_error(PC_ERR_CUDA, "CUDA error %s (%s) from %s at %s:%d",
                        cudaGetErrorName(err), cudaGetErrorString(err), call, file, line);
}

PcStatus pc_cublas_fail(cublasStatus_t err, const char *call, const char *file, int line) {
    return pc_set_error(PC_ERR_CUDA, "cuBLAS error %s (%s) from %s at %s:%d",
                        cublasGetStatusName(err), cublasGetStatusString(err), call, file,
                        line);
}

PcStatus pc_cuda_check_device(const char *op, const char *arg, const PcTensor *t, int dev) {
    if (t->device.type != PC_CUDA || t->device.index != dev)
        return pc_set_error(PC_ERR_DEVICE, "%s: %s is on %s:%d but the operation runs on cuda:%d",
                            op, arg, t->device.type == PC_CUDA ? "cuda" : "cpu",
                            t->device.index, dev);
    return PC_OK;
}

PcStatus pc_cuda_check_contiguous(const char *op, const char *arg, const PcTensor *t) {
    if (!pc_tensor_is_contiguous(t))
        return pc_set_error(PC_ERR_INVALID, "%s: %s must be contiguous on CUDA", op, arg);
    return PC_OK;
}

/* ---- devices ---- */

extern "C" int pc_cuda_device_count(void) {
    static std::atomic<int> cached{-1};
    int n = cached.load(std::memory_order_acquire);
    if (n >= 0) return n;
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) { /* no driver, no GPU: not an error */
        (void)cudaGetLastError();
        count = 0;
    }
    if (count > PC_CUDA_MAX_DEVICES) count = PC_CUDA_MAX_DEVICES;
    cached.store(count, std::memory_order_release);
    return count;
}

static PcStatus pc_cuda_check_ordinal(int dev) {
    int n = pc_cuda_device_count();
    if (n == 0)
        return pc_set_error(PC_ERR_DEVICE, "cuda:%d requested but no CUDA device is available "
                                           "(pipec.cuda.is_available() is False)", dev);
    if (dev < 0 || dev >= n)
        return pc_set_error(PC_ERR_DEVICE, "invalid CUDA device cuda:%d: %d device(s) visible",
                            dev, n);
    return PC_OK;
}

PcStatus PcCudaDeviceGuard::enter(int dev) {
    int cur = 0;
    PC_CUDA_TRY(cudaGetDevice(&cur));
    if (cur != dev) {
        PC_CUDA_TRY(cudaSetDevice(dev));
        prev_ = cur;
        changed_ = true;
    }
    return PC_OK;
}

PcCudaDeviceGuard::~PcCudaDeviceGuard() {
    if (changed_ && cudaSetDevice(prev_) != cudaSuccess) (void)cudaGetLastError();
}

/* ---- contexts ---- */

static std::atomic<PcCudaContext *> pc_cuda_contexts[PC_CUDA_MAX_DEVICES];
static std::mutex pc_cuda_contexts_lock;

/* Per thread: the current stream of each device (unset = the compute stream). */
struct PcCudaThreadStreams {
    cudaStream_t stream[PC_CUDA_MAX_DEVICES];
    bool set[PC_CUDA_MAX_DEVICES];
};
static thread_local PcCudaThreadStreams pc_cuda_tls_streams;

/* Frees what a half-built context holds (device already current). Never fails. */
static void pc_cuda_ctx_destroy_partial(PcCudaContext *c) {
    if (c->index_host) cudaFreeHost(c->index_host);
    if (c->lt) cublasLtDestroy(c->lt);
    for (int i = 0; i < PC_CUDA_NUM_COMM_STREAMS; i++)
        if (c->comm[i]) cudaStreamDestroy(c->comm[i]);
    if (c->compute) cudaStreamDestroy(c->compute);
    (void)cudaGetLastError();
    delete c;
}

static PcStatus pc_cuda_ctx_create(int dev, PcCudaContext **out) {
    PcCudaDeviceGuard guard;
    PC_TRY(guard.enter(dev));
    PcCudaContext *c = new (std::nothrow) PcCudaContext();
    if (!c) return pc_set_error(PC_ERR_OOM, "out of host memory creating the cuda:%d context", dev);
    c->device = dev;
    c->lt = nullptr;
    c->compute = nullptr;
    for (int i = 0; i < PC_CUDA_NUM_COMM_STREAMS; i++) c->comm[i] = nullptr;
    for (int i = 0; i < PC_CUDA_MAX_DEVICES; i++) c->peer_in[i] = nullptr;
    c->index_host = c->index_dev = nullptr;
    c->staging[0] = c->staging[1] = nullptr;
    c->staging_ev[0] = c->staging_ev[1] = nullptr;
    c->gemm_cache = nullptr;

    PcStatus st = PC_OK;
    cudaDeviceProp prop;
    int least = 0, greatest = 0;
    cublasStatus_t bst;
    const char *env;
    PC_CUDA_TRY_GOTO(st, cudaGetDeviceProperties(&prop, dev));
    c->sm_count = prop.multiProcessorCount;
    c->cc_major = prop.major;
    c->cc_minor = prop.minor;
    c->total_memory = prop.totalGlobalMem;

    PC_CUDA_TRY_GOTO(st, cudaDeviceGetStreamPriorityRange(&least, &greatest));
    PC_CUDA_TRY_GOTO(st, cudaStreamCreateWithFlags(&c->compute, cudaStreamDefault));
    for (int i = 0; i < PC_CUDA_NUM_COMM_STREAMS; i++)
        PC_CUDA_TRY_GOTO(st, cudaStreamCreateWithPriority(&c->comm[i], cudaStreamNonBlocking,
                                                          greatest));
    bst = cublasLtCreate(&c->lt);
    if (bst != CUBLAS_STATUS_SUCCESS) {
        st = pc_cublas_fail(bst, "cublasLtCreate(&lt)", __FILE__, __LINE__);
        goto fail;
    }
    PC_CUDA_TRY_GOTO(st, cudaHostAlloc(reinterpret_cast<void **>(&c->index_host),
                                       PC_CUDA_INDEX_SLOTS * 4 * sizeof(int64_t),
                                       cudaHostAllocMapped | cudaHostAllocPortable));
    memset(c->index_host, 0, PC_CUDA_INDEX_SLOTS * 4 * sizeof(int64_t));
    PC_CUDA_TRY_GOTO(st, cudaHostGetDevicePointer(reinterpret_cast<void **>(&c->index_dev),
                                                  c->index_host, 0));
    for (int i = PC_CUDA_INDEX_SLOTS - 1; i >= 0; i--) c->index_free.push_back(i);
    env = getenv("PIPEC_CUDA_INDEX_CHECK");
    c->index_checks = !(env && env[0] == '0' && env[1] == '\0');
    *out = c;
    return PC_OK;
fail:
    pc_cuda_ctx_destroy_partial(c);
    return st;
}

PcStatus pc_cuda_ctx_get(int dev, PcCudaContext **out) {
    *out = nullptr;
    PC_TRY(pc_cuda_check_ordinal(dev));
    PcCudaContext *c = pc_cuda_contexts[dev].load(std::memory_order_acquire);
    if (c) {
        *out = c;
        return PC_OK;
    }
    std::lock_guard<std::mutex> lk(pc_cuda_contexts_lock);
    c = pc_cuda_contexts[dev].load(std::memory_order_acquire);
    if (!c) {
        PC_TRY(pc_cuda_ctx_create(dev, &c));
        pc_cuda_contexts[dev].store(c, std::memory_order_release);
    }
    *out = c;
    return PC_OK;
}

cudaStream_t pc_cuda_ctx_stream(PcCudaContext *ctx) {
    int d = ctx->device;
    return pc_cuda_tls_streams.set[d] ? pc_cuda_tls_streams.stream[d] : ctx->compute;
}

PcStatus PcCudaExec::begin(int dev) {
    PC_TRY(pc_cuda_ctx_get(dev, &ctx));
    PC_TRY(guard.enter(dev));
    stream = pc_cuda_ctx_stream(ctx);
    return PC_OK;
}

PcStatus pc_cuda_ctx_blas(PcCudaContext *ctx, cudaStream_t stream, cublasHandle_t *handle,
                          void **workspace) {
    std::lock_guard<std::mutex> lk(ctx->lock);
    for (const PcCudaBlasEntry &e : ctx->blas) {
        if (e.stream == stream) {
            *handle = e.handle;
            *workspace = e.workspace;
            return PC_OK;
        }
    }
    PcCudaBlasEntry e{stream, nullptr, nullptr};
    PC_CUBLAS_TRY(cublasCreate(&e.handle));
    cudaError_t err = cudaMalloc(&e.workspace, PC_CUDA_BLAS_WORKSPACE);
    if (err != cudaSuccess) {
        cublasDestroy(e.handle);
        (void)cudaGetLastError();
        return pc_set_error(PC_ERR_OOM, "CUDA out of memory: cannot allocate the %zu MiB cuBLAS "
                                        "workspace on cuda:%d (%s)",
                            PC_CUDA_BLAS_WORKSPACE >> 20, ctx->device, cudaGetErrorString(err));
    }
    cublasStatus_t s1 = cublasSetStream(e.handle, stream);
    cublasStatus_t s2 = s1 == CUBLAS_STATUS_SUCCESS
                            ? cublasSetWorkspace(e.handle, e.workspace, PC_CUDA_BLAS_WORKSPACE)
                            : s1;
    if (s2 != CUBLAS_STATUS_SUCCESS) {
        cublasDestroy(e.handle);
        cudaFree(e.workspace);
        return pc_cublas_fail(s2, "cublasSetStream/cublasSetWorkspace", __FILE__, __LINE__);
    }
    ctx->blas.push_back(e);
    *handle = e.handle;
    *workspace = e.workspace;
    return PC_OK;
}

PcStatus pc_cuda_ctx_event_get(PcCudaContext *ctx, cudaEvent_t *out) {
    {
        std::lock_guard<std::mutex> lk(ctx->lock);
        if (!ctx->events.empty()) {
            *out = ctx->events.back();
            ctx->events.pop_back();
            return PC_OK;
        }
    }
    PcCudaDeviceGuard guard;
    PC_TRY(guard.enter(ctx->device));
    PC_CUDA_TRY(cudaEventCreateWithFlags(out, cudaEventDisableTiming));
    return PC_OK;
}

void pc_cuda_ctx_event_put(PcCudaContext *ctx, cudaEvent_t ev) {
    std::lock_guard<std::mutex> lk(ctx->lock);
    ctx->events.push_back(ev);
}

/* ---- index checks ---- */

PcStatus pc_cuda_index_check_begin(PcCudaExec *ex, PcCudaIndexCheck *chk) {
    chk->ctx = ex->ctx;
    chk->slot = -1;
    chk->dev_ptr = nullptr;
    if (!ex->ctx->index_checks) return PC_OK;
    std::lock_guard<std::mutex> lk(ex->ctx->lock);
    if (ex->ctx->index_free.empty())
        return pc_set_error(PC_ERR_RUNTIME, "more than %d index checks in flight on cuda:%d",
                            PC_CUDA_INDEX_SLOTS, ex->ctx->device);
    chk->slot = ex->ctx->index_free.back();
    ex->ctx->index_free.pop_back();
    volatile int64_t *h = ex->ctx->index_host + 4 * chk->slot;
    h[0] = h[1] = h[2] = h[3] = 0;
    chk->dev_ptr = ex->ctx->index_dev + 4 * chk->slot;
    return PC_OK;
}

PcStatus pc_cuda_index_check_end(PcCudaExec *ex, PcCudaIndexCheck *chk, const char *op) {
    if (chk->slot < 0) return PC_OK;
    cudaError_t err = cudaStreamSynchronize(ex->stream);
    volatile int64_t *h = chk->ctx->index_host + 4 * chk->slot;
    int64_t bad = h[0], value = h[1], pos = h[2], bound = h[3];
    {
        std::lock_guard<std::mutex> lk(chk->ctx->lock);
        chk->ctx->index_free.push_back(chk->slot);
    }
    chk->slot = -1;
    if (err != cudaSuccess)
        return pc_cuda_fail(err, "cudaStreamSynchronize(stream) after an index kernel", __FILE__,
                            __LINE__);
    if (bad)
        return pc_set_error(PC_ERR_INDEX, "%s: index %lld is out of bounds for dimension with "
                                          "size %lld (at element %lld of the index tensor)",
                            op, (long long)value, (long long)bound, (long long)pos);
    return PC_OK;
}

/* ---- host <-> device copies ---- */

static bool pc_cuda_host_is_pinned(const void *p) {
    cudaPointerAttributes attr;
    if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
        (void)cudaGetLastError();
        return false;
    }
    return attr.type == cudaMemoryTypeHost;
}

/* Pinned staging buffers of the context, allocated on first large copy. Caller holds
 * staging_lock and has the device current. */
static PcStatus pc_cuda_staging_ready(PcCudaContext *ctx) {
    if (ctx->staging[0]) return PC_OK;
    for (int i = 0; i < 2; i++) {
        PC_CUDA_TRY(cudaHostAlloc(&ctx->staging[i], PC_CUDA_STAGING_CHUNK, cudaHostAllocPortable));
        PC_CUDA_TRY(cudaEventCreateWithFlags(&ctx->staging_ev[i], cudaEventDisableTiming));
    }
    return PC_OK;
}

PcStatus pc_cuda_copy_h2d(PcDevice dev, void *dst, const void *src, size_t nbytes) {
    if (nbytes == 0) return PC_OK;
    PcCudaExec ex;
    PC_TRY(ex.begin(dev));
    bool pinned = pc_cuda_host_is_pinned(src);
    if (pinned || nbytes < PC_CUDA_STAGING_MIN) {
        PC_CUDA_TRY(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyHostToDevice, ex.stream));
        /* pageable: the runtime has taken the bytes when the call returns; pinned: wait */
        if (pinned) PC_CUDA_TRY(cudaStreamSynchronize(ex.stream));
        return PC_OK;
    }
    std::lock_guard<std::mutex> lk(ex.ctx->staging_lock);
    PC_TRY(pc_cuda_staging_ready(ex.ctx));
    size_t off = 0;
    for (int i = 0; off < nbytes; i++) {
        int b = i & 1;
        size_t len = nbytes - off < PC_CUDA_STAGING_CHUNK ? nbytes - off : PC_CUDA_STAGING_CHUNK;
        PC_CUDA_TRY(cudaEventSynchronize(ex.ctx->staging_ev[b])); /* buffer b is free again */
        memcpy(ex.ctx->staging[b], static_cast<const char *>(src) + off, len);
        PC_CUDA_TRY(cudaMemcpyAsync(static_cast<char *>(dst) + off, ex.ctx->staging[b], len,
                                    cudaMemcpyHostToDevice, ex.stream));
        PC_CUDA_TRY(cudaEventRecord(ex.ctx->staging_ev[b], ex.stream));
        off += len;
    }
    return PC_OK;
}

PcStatus pc_cuda_copy_d2h(PcDevice dev, void *dst, const void *src, size_t nbytes) {
    if (nbytes == 0) return PC_OK;
    PcCudaExec ex;
    PC_TRY(ex.begin(dev));
    if (nbytes < PC_CUDA_STAGING_MIN || pc_cuda_host_is_pinned(dst)) {
        PC_CUDA_TRY(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToHost, ex.stream));
        PC_CUDA_TRY(cudaStreamSynchronize(ex.stream));
        return PC_OK;
    }
    std::lock_guard<std::mutex> lk(ex.ctx->staging_lock);
    PC_TRY(pc_cuda_staging_ready(ex.ctx));
    /* Chunk i lands in buffer i & 1; while the device fills one buffer, the host drains the
     * other into dst. */
    size_t pend_off[2] = {0, 0}, pend_len[2] = {0, 0};
    size_t off = 0;
    for (int i = 0; off < nbytes; i++) {
        int b = i & 1;
        size_t len = nbytes - off < PC_CUDA_STAGING_CHUNK ? nbytes - off : PC_CUDA_STAGING_CHUNK;
        if (pend_len[b]) {
            PC_CUDA_TRY(cudaEventSynchronize(ex.ctx->staging_ev[b]));
            memcpy(static_cast<char *>(dst) + pend_off[b], ex.ctx->staging[b], pend_len[b]);
            pend_len[b] = 0;
        }
        PC_CUDA_TRY(cudaMemcpyAsync(ex.ctx->staging[b], static_cast<const char *>(src) + off,
                                    len, cudaMemcpyDeviceToHost, ex.stream));
        PC_CUDA_TRY(cudaEventRecord(ex.ctx->staging_ev[b], ex.stream));
        pend_off[b] = off;
        pend_len[b] = len;
        off += len;
    }
    for (int k = 0; k < 2; k++) { /* the older chunk first is not required: disjoint ranges */
        if (!pend_len[k]) continue;
        PC_CUDA_TRY(cudaEventSynchronize(ex.ctx->staging_ev[k]));
        memcpy(static_cast<char *>(dst) + pend_off[k], ex.ctx->staging[k], pend_len[k]);
    }
    return PC_OK;
}

static void pc_cuda_enable_peer(int dev, int peer) {
    int can = 0;
    if (cudaDeviceCanAccessPeer(&can, dev, peer) == cudaSuccess && can) {
        cudaError_t e = cudaDeviceEnablePeerAccess(peer, 0); /* on the current device (dev) */
        (void)e; /* already enabled, or not possible: cudaMemcpyPeerAsync copes either way */
    }
    (void)cudaGetLastError();
}

/* Peer access from dev (the current device) to peer, tried once per pair and process. */
static void pc_cuda_enable_peer_once(int dev, int peer) {
    static std::atomic<uint64_t> peer_tried[PC_CUDA_MAX_DEVICES];
    uint64_t bit = uint64_t(1) << peer;
    if (!(peer_tried[dev].fetch_or(bit) & bit)) pc_cuda_enable_peer(dev, peer);
}

extern "C" PcStatus pc_cuda_memcpy_peer_async(void *stream, int dst_dev, void *dst, int src_dev,
                                              const void *src, size_t nbytes) {
    if (nbytes == 0) return PC_OK;
    PC_TRY(pc_cuda_check_ordinal(dst_dev));
    PC_TRY(pc_cuda_check_ordinal(src_dev));
    PcCudaDeviceGuard g; /* the stream is dst's: its device is current for the copy */
    PC_TRY(g.enter(dst_dev));
    pc_cuda_enable_peer_once(dst_dev, src_dev);
    PC_CUDA_TRY(cudaMemcpyPeerAsync(dst, dst_dev, src, src_dev, nbytes,
                                    static_cast<cudaStream_t>(stream)));
    return PC_OK;
}

/* Spins the GPU for about `us` microseconds (PIPEC_TEST_PEER_COPY: makes a copy late). */
__global__ void pc_cuda_spin_kernel(unsigned long long ns) {
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do {
        __nanosleep(1000);
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    } while (t - t0 < ns);
}

extern "C" PcStatus pc_cuda_test_delay(void *stream, int dev, void *poison, size_t nbytes,
                                       int us) {
    PcCudaDeviceGuard g;
    PC_TRY(g.enter(dev));
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    if (poison && nbytes) PC_CUDA_TRY(cudaMemsetAsync(poison, 0xff, nbytes, s));
    pc_cuda_spin_kernel<<<1, 1, 0, s>>>(1000ull * (unsigned long long)us);
    PC_CUDA_TRY(cudaGetLastError());
    return PC_OK;
}

/* The peer copy proper, ordered both ways between the two current streams. */
static PcStatus pc_cuda_copy_peer(PcCudaExec *ex, void *dst, int dst_dev, const void *src,
                                  int src_dev, cudaStream_t sstream, size_t nbytes,
                                  cudaEvent_t produced, cudaEvent_t copied) {
    {
        PcCudaDeviceGuard g;
        PC_TRY(g.enter(src_dev));
        PC_CUDA_TRY(cudaEventRecord(produced, sstream));
    }
    PC_CUDA_TRY(cudaStreamWaitEvent(ex->stream, produced, 0));
    PC_CUDA_TRY(cudaMemcpyPeerAsync(dst, dst_dev, src, src_dev, nbytes, ex->stream));
    PC_CUDA_TRY(cudaEventRecord(copied, ex->stream));
    PC_CUDA_TRY(cudaStreamWaitEvent(sstream, copied, 0));
    return PC_OK;
}

PcStatus pc_cuda_copy_d2d(PcDevice dst_dev, void *dst, PcDevice src_dev, const void *src,
                          size_t nbytes) {
    if (nbytes == 0) return PC_OK;
    if (src_dev.index == dst_dev.index) {
        PcCudaExec ex;
        PC_TRY(ex.begin(dst_dev));
        PC_CUDA_TRY(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToDevice, ex.stream));
        return PC_OK;
    }
    /* Across devices: the copy runs on dst's current stream after src's current stream has
     * produced the data; src's stream then waits for the copy, so src memory freed afterwards
     * (stream-ordered on src's stream) is not reused while the copy still reads it. */
    PcCudaContext *sctx;
    PC_TRY(pc_cuda_ctx_get(src_dev.index, &sctx));
    PcCudaExec ex;
    PC_TRY(ex.begin(dst_dev));
    pc_cuda_enable_peer_once(dst_dev.index, src_dev.index);
    cudaEvent_t produced = nullptr, copied = nullptr;
    PC_TRY(pc_cuda_ctx_event_get(sctx, &produced));
    PcStatus st = pc_cuda_ctx_event_get(ex.ctx, &copied);
    if (st == PC_OK)
        st = pc_cuda_copy_peer(&ex, dst, dst_dev.index, src, src_dev.index,
                               pc_cuda_ctx_stream(sctx), nbytes, produced, copied);
    if (copied) pc_cuda_ctx_event_put(ex.ctx, copied);
    pc_cuda_ctx_event_put(sctx, produced);
    return st;
}

PcStatus pc_cuda_synchronize(PcDevice dev) {
    PcCudaDeviceGuard guard;
    PC_TRY(pc_cuda_check_ordinal(dev.index));
    PC_TRY(guard.enter(dev.index));
    PC_CUDA_TRY(cudaDeviceSynchronize());
    return PC_OK;
}

/* ---- C API: devices ---- */

extern "C" PcStatus pc_cuda_get_device(int *dev) {
    *dev = 0;
    if (pc_cuda_device_count() == 0) return pc_cuda_check_ordinal(0);
    PC_CUDA_TRY(cudaGetDevice(dev));
    return PC_OK;
}

extern "C" PcStatus pc_cuda_set_device(int dev) {
    PC_TRY(pc_cuda_check_ordinal(dev));
    PC_CUDA_TRY(cudaSetDevice(dev));
    return PC_OK;
}

extern "C" PcStatus pc_cuda_device_synchronize(int dev) {
    if (dev < 0) PC_TRY(pc_cuda_get_device(&dev));
    return pc_cuda_synchronize(PcDevice{PC_CUDA, dev});
}

extern "C" PcStatus pc_cuda_device_info(int dev, PcCudaDeviceInfo *out) {
    PC_TRY(pc_cuda_check_ordinal(dev));
    cudaDeviceProp prop;
    PC_CUDA_TRY(cudaGetDeviceProperties(&prop, dev));
    snprintf(out->name, sizeof out->name, "%s", prop.name);
    out->major = prop.major;
    out->minor = prop.minor;
    out->total_memory = prop.totalGlobalMem;
    out->multi_processor_count = prop.multiProcessorCount;
    out->l2_cache_size = (size_t)prop.l2CacheSize;
    return PC_OK;
}

extern "C" PcStatus pc_cuda_mem_get_info(int dev, size_t *free_bytes, size_t *total_bytes) {
    PC_TRY(pc_cuda_check_ordinal(dev));
    PcCudaDeviceGuard guard;
    PC_TRY(guard.enter(dev));
    PC_CUDA_TRY(cudaMemGetInfo(free_bytes, total_bytes));
    return PC_OK;
}

/* ---- C API: streams ---- */

extern "C" PcStatus pc_cuda_compute_stream(int dev, void **out) {
    PcCudaContext *ctx;
    PC_TRY(pc_cuda_ctx_get(dev, &ctx));
    *out = ctx->compute;
    return PC_OK;
}

extern "C" PcStatus pc_cuda_comm_stream(int dev, int i, void **out) {
    if (i < 0 || i >= PC_CUDA_NUM_COMM_STREAMS)
        return pc_set_error(PC_ERR_INDEX, "communication stream %d out of range [0, %d)", i,
                            PC_CUDA_NUM_COMM_STREAMS);
    PcCudaContext *ctx;
    PC_TRY(pc_cuda_ctx_get(dev, &ctx));
    *out = ctx->comm[i];
    return PC_OK;
}

extern "C" PcStatus pc_cuda_peer_stream(int dst, int src, void **out) {
    *out = nullptr;
    PC_TRY(pc_cuda_check_ordinal(src));
    PcCudaContext *ctx;
    PC_TRY(pc_cuda_ctx_get(dst, &ctx));
    std::lock_guard<std::mutex> lk(ctx->lock);
    if (!ctx->peer_in[src]) {
        PcCudaDeviceGuard guard;
        PC_TRY(guard.enter(dst));
        int least, greatest;
        PC_CUDA_TRY(cudaDeviceGetStreamPriorityRange(&least, &greatest));
        PC_CUDA_TRY(cudaStreamCreateWithPriority(&ctx->peer_in[src], cudaStreamNonBlocking,
                                                 greatest));
    }
    *out = ctx->peer_in[src];
    return PC_OK;
}

extern "C" PcStatus pc_cuda_current_stream(int dev, void **out) {
    PcCudaContext *ctx;
    PC_TRY(pc_cuda_ctx_get(dev, &ctx));
    *out = pc_cuda_ctx_stream(ctx);
    return PC_OK;
}

extern "C" PcStatus pc_cuda_set_current_stream(int dev, void *stream) {
    PcCudaContext *ctx;
    PC_TRY(pc_cuda_ctx_get(dev, &ctx));
    if (!stream || stream == static_cast<void *>(ctx->compute)) {
        pc_cuda_tls_streams.set[dev] = false;
        pc_cuda_tls_streams.stream[dev] = nullptr;
    } else {
#if CUDART_VERSION >= 12080
        cudaStream_t s = static_cast<cudaStream_t>(stream);
        if (s != cudaStreamLegacy && s != cudaStreamPerThread) {
            int sdev = -1;
            PC_CUDA_TRY(cudaStreamGetDevice(s, &sdev));
            if (sdev != dev)
                return pc_set_error(PC_ERR_INVALID, "set_stream: the stream belongs to cuda:%d, "
                                                    "not cuda:%d", sdev, dev);
        }
#endif
        pc_cuda_tls_streams.set[dev] = true;
        pc_cuda_tls_streams.stream[dev] = static_cast<cudaStream_t>(stream);
    }
    return PC_OK;
}

extern "C" PcStatus pc_cuda_stream_priority_range(int *least, int *greatest) {
    PC_CUDA_TRY(cudaDeviceGetStreamPriorityRange(least, greatest));
    return PC_OK;
}

extern "C" PcStatus pc_cuda_stream_create(int dev, int priority, bool non_blocking, void **out) {
    *out = nullptr;
    PcCudaExec ex;
    PC_TRY(ex.begin(dev));
    int least = 0, greatest = 0;
    PC_CUDA_TRY(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    if (priority > least) priority = least;
    if (priority < greatest) priority = greatest;
    cudaStream_t s;
    PC_CUDA_TRY(cudaStreamCreateWithPriority(
        &s, non_blocking ? cudaStreamNonBlocking : cudaStreamDefault, priority));
    *out = s;
    return PC_OK;
}

extern "C" PcStatus pc_cuda_stream_destroy(int dev, void *stream) {
    if (!stream) return PC_OK;
    PcCudaExec ex;
    PC_TRY(ex.begin(dev));
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    if (s == ex.ctx->compute) return pc_set_error(PC_ERR_INVALID, "cannot destroy the compute "
                                                                  "stream of cuda:%d", dev);
    for (int i = 0; i < PC_CUDA_NUM_COMM_STREAMS; i++)
        if (s == ex.ctx->comm[i])
            return pc_set_error(PC_ERR_INVALID, "cannot destroy a communication stream of "
                                                "cuda:%d", dev);
    PC_CUDA_TRY(cudaStreamSynchronize(s));
    {
        std::lock_guard<std::mutex> lk(ex.ctx->lock);
        for (size_t i = 0; i < ex.ctx->blas.size(); i++) {
            if (ex.ctx->blas[i].stream != s) continue;
            cublasDestroy(ex.ctx->blas[i].handle);
            cudaFree(ex.ctx->blas[i].workspace);
            ex.ctx->blas.erase(ex.ctx->blas.begin() + (long)i);
            break;
        }
    }
    if (pc_cuda_tls_streams.set[dev] && pc_cuda_tls_streams.stream[dev] == s)
        pc_cuda_tls_streams.set[dev] = false;
    PC_CUDA_TRY(cudaStreamDestroy(s));
    return PC_OK;
}

extern "C" PcStatus pc_cuda_stream_query(void *stream, bool *done) {
    cudaError_t e = cudaStreamQuery(static_cast<cudaStream_t>(stream));
    if (e == cudaErrorNotReady) {
        *done = false;
        return PC_OK;
    }
    PC_CUDA_TRY(e);
    *done = true;
    return PC_OK;
}

extern "C" PcStatus pc_cuda_stream_synchronize(void *stream) {
    PC_CUDA_TRY(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)));
    return PC_OK;
}

/* Makes the device of `stream` current for the guard's scope: the runtime's rank threads
 * drive several GPUs from one thread and never change the current device themselves
 * (cudaStreamGetDevice since CUDA 12.8; before it, the call relies on the stream alone). */
static PcStatus enter_stream_device(PcCudaDeviceGuard &g, cudaStream_t stream) {
#if CUDART_VERSION >= 12080
    int dev;
    PC_CUDA_TRY(cudaStreamGetDevice(stream, &dev));
    return g.enter(dev);
#else
    (void)g;
    (void)stream;
    return PC_OK;
#endif
}

extern "C" PcStatus pc_cuda_stream_wait_event(void *stream, void *event) {
    PcCudaDeviceGuard g;
    PC_TRY(enter_stream_device(g, static_cast<cudaStream_t>(stream)));
    PC_CUDA_TRY(cudaStreamWaitEvent(static_cast<cudaStream_t>(stream),
                                    static_cast<cudaEvent_t>(event), 0));
    return PC_OK;
}

extern "C" PcStatus pc_cuda_stream_wait_stream(int dev, void *waiter, void *waitee) {
    if (waiter == waitee) return PC_OK;
    PcCudaExec ex;
    PC_TRY(ex.begin(dev));
    cudaEvent_t ev;
    PC_TRY(pc_cuda_ctx_event_get(ex.ctx, &ev));
    cudaError_t e = cudaEventRecord(ev, static_cast<cudaStream_t>(waitee));
    if (e == cudaSuccess) e = cudaStreamWaitEvent(static_cast<cudaStream_t>(waiter), ev, 0);
    pc_cuda_ctx_event_put(ex.ctx, ev);
    PC_CUDA_TRY(e);
    return PC_OK;
}

extern "C" PcStatus pc_cuda_sync_external_stream(int dev, uintptr_t external_stream) {
    PcCudaExec ex;
    PC_TRY(ex.begin(dev));
    cudaStream_t ext = external_stream == 2 ? cudaStreamPerThread
                       : (external_stream == 1 || external_stream == 0)
                           ? cudaStreamLegacy
                           : reinterpret_cast<cudaStream_t>(external_stream);
    if (ext == ex.stream) return PC_OK;
    cudaEvent_t ev;
    PC_TRY(pc_cuda_ctx_event_get(ex.ctx, &ev));
    cudaError_t e = cudaEventRecord(ev, ex.stream);
    if (e == cudaSuccess) e = cudaStreamWaitEvent(ext, ev, 0);
    pc_cuda_ctx_event_put(ex.ctx, ev);
    PC_CUDA_TRY(e);
    return PC_OK;
}

/* ---- C API: events ---- */

extern "C" PcStatus pc_cuda_event_create(int dev, bool enable_timing, bool blocking,
                                         bool interprocess, void **out) {
    *out = nullptr;
    if (interprocess && enable_timing)
        return pc_set_error(PC_ERR_INVALID, "Event: interprocess events cannot record timing "
                                            "(enable_timing must be False)");
    PC_TRY(pc_cuda_check_ordinal(dev));
    PcCudaDeviceGuard guard;
    PC_TRY(guard.enter(dev));
    unsigned int flags = enable_timing ? cudaEventDefault : cudaEventDisableTiming;
    if (blocking) flags |= cudaEventBlockingSync;
    if (interprocess) flags |= cudaEventInterprocess;
    cudaEvent_t ev;
    PC_CUDA_TRY(cudaEventCreateWithFlags(&ev, flags));
    *out = ev;
    return PC_OK;
}

extern "C" void pc_cuda_event_destroy(void *event) {
    if (event && cudaEventDestroy(static_cast<cudaEvent_t>(event)) != cudaSuccess)
        (void)cudaGetLastError();
}

extern "C" PcStatus pc_cuda_event_record(void *event, void *stream) {
    if (!stream) {
        int dev;
        PC_TRY(pc_cuda_get_device(&dev));
        PC_TRY(pc_cuda_current_stream(dev, &stream));
    }
    PcCudaDeviceGuard g;
    PC_TRY(enter_stream_device(g, static_cast<cudaStream_t>(stream)));
    PC_CUDA_TRY(cudaEventRecord(static_cast<cudaEvent_t>(event),
                                static_cast<cudaStream_t>(stream)));
    return PC_OK;
}

extern "C" PcStatus pc_cuda_event_query(void *event, bool *done) {
    cudaError_t e = cudaEventQuery(static_cast<cudaEvent_t>(event));
    if (e == cudaErrorNotReady) {
        *done = false;
        return PC_OK;
    }
    PC_CUDA_TRY(e);
    *done = true;
    return PC_OK;
}

extern "C" PcStatus pc_cuda_event_synchronize(void *event) {
    PC_CUDA_TRY(cudaEventSynchronize(static_cast<cudaEvent_t>(event)));
    return PC_OK;
}

extern "C" PcStatus pc_cuda_event_elapsed_time(void *start, void *end, float *ms) {
    PC_CUDA_TRY(cudaEventElapsedTime(ms, static_cast<cudaEvent_t>(start),
                                     static_cast<cudaEvent_t>(end)));
    return PC_OK;
}

/* ---- the kernel table ---- */

extern "C" const PcBackend pc_cuda_backend = {
    "cuda",
    /* memory */
    pc_cuda_alloc,
    pc_cuda_free,
    pc_cuda_copy_h2d,
    pc_cuda_copy_d2h,
    pc_cuda_copy_d2d,
    pc_cuda_synchronize,
    /* elementwise */
    pc_cuda_copy,
    pc_cuda_fill,
    pc_cuda_unary,
    pc_cuda_binary,
    /* reductions and indexing along a dim */
    pc_cuda_reduce,
    pc_cuda_max_dim,
    pc_cuda_gather_dim,
    pc_cuda_scatter_add_dim,
    /* matrix products */
    pc_cuda_gemm,
    /* row-wise */
    pc_cuda_softmax,
    pc_cuda_softmax_backward,
    pc_cuda_layer_norm,
    pc_cuda_layer_norm_backward,
    /* random */
    pc_cuda_random,
    /* indexing along dim 0 */
    pc_cuda_index_select0,
    pc_cuda_index_add0,
    /* optimisers */
    pc_cuda_sgd_step,
    pc_cuda_adamw_step,
};
