/* allocator.cu — the CUDA caching allocator (one per device, created on first use).
 *
 * Device memory comes from cudaMalloc in segments and is handed out in blocks carved from
 * them. A freed block goes back to its pool and is reused without any synchronisation by
 * later allocations on the same stream (work on one stream runs in order, so the new owner's
 * kernels start after the old owner's finished). Blocks never migrate between streams: a
 * block is tied to the stream that was current when its segment was allocated.
 *
 * Size classes: requests round up to 512 bytes. Requests up to 1 MiB come from the small
 * pool, whose segments are 2 MiB; larger ones from the large pool, whose segments are 20 MiB
 * for requests under 10 MiB and the request rounded up to 2 MiB otherwise. The best fitting
 * free block (smallest size >= request, same stream) is split when the rest is still useful
 * (>= 512 bytes in the small pool, > 1 MiB in the large pool); a freed block merges with free
 * neighbours of its segment.
 *
 * Cross-stream use: pc_cuda_record_stream marks a block as used on another stream; freeing it
 * then records an event on each such stream and the block waits (state PENDING) until they
 * have all completed, checked on later allocations.
 *
 * Out of memory: when cudaMalloc fails, every cached whole segment of the device is released
 * (after a device synchronisation) and the allocation is retried once; if that fails too the
 * call returns PC_ERR_OOM with the requested size and the pool's numbers. Nothing is left
 * half-done, so the process stays usable.
 *
 * Invariants: allocated_bytes = sum of ACTIVE block sizes; reserved_bytes = sum of segment
 * sizes; every FREE block is in exactly one pool set; blocks of a segment are linked by
 * prev/next in address order. All state of a device is guarded by its allocator's mutex.
 *
 * Exports: pc_cuda_alloc, pc_cuda_free (the backend's alloc/free), pc_cuda_memory_stats,
 * pc_cuda_reset_peak_memory_stats, pc_cuda_empty_cache, pc_cuda_record_stream.
 */
#include "cuda_internal.h"

#include <atomic>
#include <cstdio>
#include <cstring>
#include <set>
#include <unordered_map>

/* ---- size classes ---- */

static const size_t kPcMinBlock = 512;
static const size_t kPcSmallSize = (size_t)1 << 20;      /* largest small-pool request */
static const size_t kPcSmallSegment = (size_t)2 << 20;
static const size_t kPcLargeSegment = (size_t)20 << 20;
static const size_t kPcMinLargeAlloc = (size_t)10 << 20; /* from here, segment = request */
static const size_t kPcRoundLarge = (size_t)2 << 20;

static size_t pc_round_up(size_t n, size_t m) { return (n + m - 1) / m * m; }

static size_t pc_block_size(size_t nbytes) {
    return nbytes < kPcMinBlock ? kPcMinBlock : pc_round_up(nbytes, kPcMinBlock);
}

static size_t pc_segment_size(size_t size) {
    if (size <= kPcSmallSize) return kPcSmallSegment;
    if (size < kPcMinLargeAlloc) return kPcLargeSegment;
    return pc_round_up(size, kPcRoundLarge);
}

/* ---- blocks and pools ---- */

enum PcBlockState { PC_BLOCK_FREE, PC_BLOCK_ACTIVE, PC_BLOCK_PENDING };

struct PcBlock {
    char *ptr;                 /* device memory (owned by the segment) */
    size_t size;               /* bytes of this block */
    size_t requested;          /* bytes asked for (ACTIVE only) */
    cudaStream_t stream;       /* allocation stream (not owned) */
    bool small;                /* which pool */
    PcBlockState state;
    int pending_events;        /* PENDING: events still to complete */
    PcBlock *prev, *next;      /* neighbours in the segment (owned by the allocator) */
    std::vector<cudaStream_t> uses; /* other streams that used it (record_stream) */
};

struct PcBlockLess {
    bool operator()(const PcBlock *a, const PcBlock *b) const {
        if (a->stream != b->stream)
            return reinterpret_cast<uintptr_t>(a->stream) < reinterpret_cast<uintptr_t>(b->stream);
        if (a->size != b->size) return a->size < b->size;
        return reinterpret_cast<uintptr_t>(a->ptr) < reinterpret_cast<uintptr_t>(b->ptr);
    }
};

typedef std::set<PcBlock *, PcBlockLess> PcPool;

struct PcCudaAllocator {
    int device;
    std::mutex lock;
    PcPool small_pool, large_pool;                     /* FREE blocks */
    std::unordered_map<void *, PcBlock *> active;      /* ACTIVE and PENDING, by ptr */
    std::vector<std::pair<cudaEvent_t, PcBlock *>> pending;
    PcCudaMemStats stats;
};

static std::atomic<PcCudaAllocator *> pc_allocators[PC_CUDA_MAX_DEVICES];
static std::mutex pc_allocators_lock;

static PcCudaAllocator *pc_allocator_peek(int dev) {
    if (dev < 0 || dev >= PC_CUDA_MAX_DEVICES) return nullptr;
    return pc_allocators[dev].load(std::memory_order_acquire);
}

static PcStatus pc_allocator_get(int dev, PcCudaAllocator **out) {
    PcCudaAllocator *a = pc_allocator_peek(dev);
    if (!a) {
        std::lock_guard<std::mutex> lk(pc_allocators_lock);
        a = pc_allocators[dev].load(std::memory_order_acquire);
        if (!a) {
            a = new (std::nothrow) PcCudaAllocator();
            if (!a) return pc_set_error(PC_ERR_OOM, "out of host memory creating the cuda:%d "
                                                    "allocator", dev);
            a->device = dev;
            pc_allocators[dev].store(a, std::memory_order_release);
        }
    }
    *out = a;
    return PC_OK;
}

static PcPool &pc_pool_of(PcCudaAllocator *a, const PcBlock *b) {
    return b->small ? a->small_pool : a->large_pool;
}

static void pc_stat_add(int64_t *cur, int64_t *peak, int64_t delta) {
    *cur += delta;
    if (*cur > *peak) *peak = *cur;
}

/* Return a block to its pool, merging with FREE neighbours. Lock held. */
static void pc_block_release(PcCudaAllocator *a, PcBlock *b) {
    PcPool &pool = pc_pool_of(a, b);
    b->state = PC_BLOCK_FREE;
    b->uses.clear();
    PcBlock *p = b->prev;
    if (p && p->state == PC_BLOCK_FREE) {
        pool.erase(p);
        p->size += b->size;
        p->next = b->next;
        if (b->next) b->next->prev = p;
        delete b;
        b = p;
    }
    PcBlock *n = b->next;
    if (n && n->state == PC_BLOCK_FREE) {
        pool.erase(n);
        b->size += n->size;
        b->next = n->next;
        if (n->next) n->next->prev = b;
        delete n;
    }
    pool.insert(b);
}

/* Move PENDING blocks whose events have completed back to their pools. Lock held. */
static void pc_process_pending(PcCudaAllocator *a, PcCudaContext *ctx, bool wait) {
    size_t keep = 0;
    for (size_t i = 0; i < a->pending.size(); i++) {
        cudaEvent_t ev = a->pending[i].first;
        PcBlock *b = a->pending[i].second;
        cudaError_t e = wait ? cudaEventSynchronize(ev) : cudaEventQuery(ev);
        if (e == cudaErrorNotReady) {
            a->pending[keep++] = a->pending[i];
            continue;
        }
        if (e != cudaSuccess) (void)cudaGetLastError(); /* treat as done: nothing to wait on */
        if (ctx) pc_cuda_ctx_event_put(ctx, ev);
        else cudaEventDestroy(ev);
        if (--b->pending_events == 0) {
            a->active.erase(b->ptr);
            pc_block_release(a, b);
        }
    }
    a->pending.resize(keep);
}

/* Give every cached whole segment back to the driver. Lock held, device current. */
static void pc_release_cached(PcCudaAllocator *a, PcCudaContext *ctx) {
    if (cudaDeviceSynchronize() != cudaSuccess) (void)cudaGetLastError();
    pc_process_pending(a, ctx, true);
    PcPool *pools[2] = {&a->small_pool, &a->large_pool};
    for (PcPool *pool : pools) {
        for (auto it = pool->begin(); it != pool->end();) {
            PcBlock *b = *it;
            if (b->prev || b->next) {
                ++it;
                continue;
            }
            if (cudaFree(b->ptr) != cudaSuccess) {
                (void)cudaGetLastError();
                ++it;
                continue;
            }
            a->stats.reserved_bytes -= (int64_t)b->size;
            a->stats.segments--;
            a->stats.num_device_free++;
            it = pool->erase(it);
            delete b;
        }
    }
}

static const char *pc_fmt_bytes(int64_t n, char *buf, size_t len) {
    double v = (double)n;
    if (v >= 1024.0 * 1024 * 1024) snprintf(buf, len, "%.2f GiB", v / (1024.0 * 1024 * 1024));
    else if (v >= 1024.0 * 1024) snprintf(buf, len, "%.2f MiB", v / (1024.0 * 1024));
    else if (v >= 1024.0) snprintf(buf, len, "%.2f KiB", v / 1024.0);
    else snprintf(buf, len, "%lld bytes", (long long)n);
    return buf;
}

static PcStatus pc_oom_error(PcCudaAllocator *a, size_t nbytes, cudaError_t err) {
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) (void)cudaGetLastError();
    char req[32], tot[32], fre[32], alc[32], res[32], cache[32];
    a->stats.num_ooms++;
    return pc_set_error(
        PC_ERR_OOM,
        "CUDA out of memory on cuda:%d: tried to allocate %s (%zu bytes). The device has %s in "
        "total, %s free; pipec has %s allocated by tensors and %s reserved by its caching "
        "allocator (%s reserved but unallocated). (%s)",
        a->device, pc_fmt_bytes((int64_t)nbytes, req, sizeof req), nbytes,
        pc_fmt_bytes((int64_t)total_b, tot, sizeof tot),
        pc_fmt_bytes((int64_t)free_b, fre, sizeof fre),
        pc_fmt_bytes(a->stats.allocated_bytes, alc, sizeof alc),
        pc_fmt_bytes(a->stats.reserved_bytes, res, sizeof res),
        pc_fmt_bytes(a->stats.reserved_bytes - a->stats.allocated_bytes, cache, sizeof cache),
        cudaGetErrorString(err));
}

/* ---- backend alloc / free ---- */

PcStatus pc_cuda_alloc(PcDevice dev, size_t nbytes, void **out) {
    *out = nullptr;
    PcCudaExec ex;
    PC_TRY(ex.begin(dev)); /* device current, the thread's stream */
    PcCudaAllocator *a = nullptr;
    PC_TRY(pc_allocator_get(dev.index, &a));
    if (nbytes > ((size_t)1 << 62)) {
        std::lock_guard<std::mutex> lk(a->lock);
        return pc_oom_error(a, nbytes, cudaErrorMemoryAllocation);
    }
    size_t size = pc_block_size(nbytes);
    bool small = size <= kPcSmallSize;

    std::lock_guard<std::mutex> lk(a->lock);
    if (!a->pending.empty()) pc_process_pending(a, ex.ctx, false);
    PcPool &pool = small ? a->small_pool : a->large_pool;
    PcBlock key{};
    key.stream = ex.stream;
    key.size = size;
    key.ptr = nullptr;
    PcBlock *b = nullptr;
    auto it = pool.lower_bound(&key);
    if (it != pool.end() && (*it)->stream == ex.stream) {
        b = *it;
        pool.erase(it);
    } else {
        size_t seg = pc_segment_size(size);
        void *ptr = nullptr;
        cudaError_t err = cudaMalloc(&ptr, seg);
        if (err == cudaErrorMemoryAllocation) {
            (void)cudaGetLastError();
            a->stats.num_alloc_retries++;
            pc_release_cached(a, ex.ctx);
            err = cudaMalloc(&ptr, seg);
        }
        if (err != cudaSuccess) {
            (void)cudaGetLastError();
            if (err == cudaErrorMemoryAllocation) return pc_oom_error(a, nbytes, err);
            return pc_cuda_fail(err, "cudaMalloc(&ptr, segment)", __FILE__, __LINE__);
        }
        b = new (std::nothrow) PcBlock();
        if (!b) {
            cudaFree(ptr);
            return pc_set_error(PC_ERR_OOM, "out of host memory for a block header");
        }
        b->ptr = static_cast<char *>(ptr);
        b->size = seg;
        b->stream = ex.stream;
        b->small = small;
        b->prev = b->next = nullptr;
        pc_stat_add(&a->stats.reserved_bytes, &a->stats.reserved_bytes_peak, (int64_t)seg);
        a->stats.segments++;
        a->stats.num_device_alloc++;
    }
    size_t rest = b->size - size;
    if (small ? rest >= kPcMinBlock : rest > kPcSmallSize) {
        PcBlock *r = new (std::nothrow) PcBlock();
        if (r) {
            r->ptr = b->ptr + size;
            r->size = rest;
            r->stream = b->stream;
            r->small = b->small;
            r->state = PC_BLOCK_FREE;
            r->prev = b;
            r->next = b->next;
            if (b->next) b->next->prev = r;
            b->next = r;
            b->size = size;
            pool.insert(r);
        }
    }
    b->state = PC_BLOCK_ACTIVE;
    b->requested = nbytes;
    b->pending_events = 0;
    a->active[b->ptr] = b;
    pc_stat_add(&a->stats.allocated_bytes, &a->stats.allocated_bytes_peak, (int64_t)b->size);
    pc_stat_add(&a->stats.requested_bytes, &a->stats.requested_bytes_peak, (int64_t)nbytes);
    a->stats.active_blocks++;
    *out = b->ptr;
    return PC_OK;
}

void pc_cuda_free(PcDevice dev, void *ptr, size_t nbytes) {
    (void)nbytes;
    PcCudaAllocator *a = pc_allocator_peek(dev.index);
    if (!a || !ptr) return;
    std::lock_guard<std::mutex> lk(a->lock);
    auto it = a->active.find(ptr);
    if (it == a->active.end() || it->second->state != PC_BLOCK_ACTIVE) return; /* not ours */
    PcBlock *b = it->second;
    a->stats.allocated_bytes -= (int64_t)b->size;
    a->stats.requested_bytes -= (int64_t)b->requested;
    a->stats.active_blocks--;
    if (b->uses.empty()) {
        a->active.erase(it);
        pc_block_release(a, b);
        return;
    }
    /* Used on other streams: reusable once the work queued there so far has finished. */
    PcCudaContext *ctx = nullptr;
    PcCudaDeviceGuard guard;
    if (pc_cuda_ctx_get(dev.index, &ctx) != PC_OK || guard.enter(dev.index) != PC_OK) {
        pc_clear_error();
        if (cudaDeviceSynchronize() != cudaSuccess) (void)cudaGetLastError();
        a->active.erase(it);
        pc_block_release(a, b);
        return;
    }
    b->state = PC_BLOCK_PENDING;
    b->pending_events = 1; /* held while the events are recorded */
    for (cudaStream_t s : b->uses) {
        cudaEvent_t ev;
        if (pc_cuda_ctx_event_get(ctx, &ev) != PC_OK) {
            pc_clear_error();
            if (cudaStreamSynchronize(s) != cudaSuccess) (void)cudaGetLastError();
            continue;
        }
        if (cudaEventRecord(ev, s) != cudaSuccess) { /* e.g. the stream is gone */
            (void)cudaGetLastError();
            pc_cuda_ctx_event_put(ctx, ev);
            continue;
        }
        b->pending_events++;
        a->pending.emplace_back(ev, b);
    }
    b->uses.clear();
    if (--b->pending_events == 0) {
        a->active.erase(b->ptr);
        pc_block_release(a, b);
    }
}

/* ---- C API ---- */

extern "C" PcStatus pc_cuda_record_stream(int dev, void *ptr, void *stream) {
    PcCudaAllocator *a = pc_allocator_peek(dev);
    if (!a) return pc_set_error(PC_ERR_INVALID, "record_stream: cuda:%d has no allocations", dev);
    std::lock_guard<std::mutex> lk(a->lock);
    auto it = a->active.find(ptr);
    if (it == a->active.end() || it->second->state != PC_BLOCK_ACTIVE)
        return pc_set_error(PC_ERR_INVALID, "record_stream: the tensor's memory was not "
                                            "allocated by pipec's caching allocator on cuda:%d",
                            dev);
    PcBlock *b = it->second;
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    if (s == b->stream) return PC_OK;
    for (cudaStream_t u : b->uses)
        if (u == s) return PC_OK;
    b->uses.push_back(s);
    return PC_OK;
}

extern "C" PcStatus pc_cuda_memory_stats(int dev, PcCudaMemStats *out) {
    memset(out, 0, sizeof *out);
    if (dev < 0 || dev >= PC_CUDA_MAX_DEVICES || dev >= pc_cuda_device_count())
        return pc_set_error(PC_ERR_DEVICE, "memory_stats: invalid CUDA device cuda:%d (%d "
                                           "visible)", dev, pc_cuda_device_count());
    PcCudaAllocator *a = pc_allocator_peek(dev);
    if (!a) return PC_OK;
    std::lock_guard<std::mutex> lk(a->lock);
    *out = a->stats;
    int64_t split = 0;
    for (const PcPool *pool : {&a->small_pool, &a->large_pool})
        for (const PcBlock *b : *pool)
            if (b->prev || b->next) split += (int64_t)b->size;
    out->inactive_split_bytes = split;
    return PC_OK;
}

extern "C" PcStatus pc_cuda_reset_peak_memory_stats(int dev) {
    if (dev < 0 || dev >= PC_CUDA_MAX_DEVICES || dev >= pc_cuda_device_count())
        return pc_set_error(PC_ERR_DEVICE, "reset_peak_memory_stats: invalid CUDA device "
                                           "cuda:%d (%d visible)", dev, pc_cuda_device_count());
    PcCudaAllocator *a = pc_allocator_peek(dev);
    if (!a) return PC_OK;
    std::lock_guard<std::mutex> lk(a->lock);
    a->stats.allocated_bytes_peak = a->stats.allocated_bytes;
    a->stats.requested_bytes_peak = a->stats.requested_bytes;
    a->stats.reserved_bytes_peak = a->stats.reserved_bytes;
    return PC_OK;
}

extern "C" PcStatus pc_cuda_empty_cache(int dev) {
    int n = pc_cuda_device_count();
    for (int d = 0; d < n; d++) {
        if (dev >= 0 && d != dev) continue;
        PcCudaAllocator *a = pc_allocator_peek(d);
        if (!a) continue;
        PcCudaContext *ctx;
        PC_TRY(pc_cuda_ctx_get(d, &ctx));
        PcCudaDeviceGuard guard;
        PC_TRY(guard.enter(d));
        std::lock_guard<std::mutex> lk(a->lock);
        pc_release_cached(a, ctx);
    }
    return PC_OK;
}
