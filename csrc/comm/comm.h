/* comm.h — the communicator interface: point-to-point transfers and the few collectives
 * pipelining needs, between the ranks of one process group.
 *
 * A PcComm is a table of operations plus rank/world/timeout. Backends: TCP (CPU processes,
 * csrc/comm/tcp.c), NCCL (GPUs, csrc/comm/nccl.c), and the runtime's own in-process
 * mailboxes (LocalPipeline). Every blocking operation honours `timeout_s` and fails with
 * PC_ERR_TIMEOUT naming the peer; a dead or silent peer is PC_ERR_COMM, never a hang.
 *
 * Matching: a message is identified by (source rank, tag). recv(peer, tag) returns the
 * message that peer sent with that tag, whatever order the two sides post their operations
 * in (backends buffer early arrivals), so schedules never deadlock on ordering. Sizes are
 * checked: a receive whose buffer size differs from the message is PC_ERR_COMM naming both.
 *
 * Tensors passed to send/recv are contiguous and live on the backend's device type (host
 * memory for a host_memory backend: callers stage CUDA tensors through the host).
 */
#ifndef PC_COMM_COMM_H
#define PC_COMM_COMM_H

#include <stddef.h>
#include <stdint.h>

#include "../core/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct PcComm PcComm;

typedef struct PcCommOps {
    const char *name; /* "tcp", "nccl" */
    /* true when transfers move host memory only (TCP): callers stage device tensors
     * through the host */
    bool host_memory;
    PcStatus (*send)(PcComm *c, int peer, uint64_t tag, const PcTensor *t);
    PcStatus (*recv)(PcComm *c, int peer, uint64_t tag, PcTensor *t);
    /* Split receive: recv_post starts receiving (peer, tag) into t and hands back a request;
     * recv_wait completes it (data is then usable on the caller's current stream) and
     * recv_drop abandons it; either frees the request. Asynchronous backends (NCCL) enqueue
     * the transfer, in posting order, at post time or at the next flush (below); the TCP
     * backend, which buffers early arrivals, receives at wait time, which gives the same
     * result. t stays referenced by the request until it is freed. recv_drop must not use
     * `c` (it may be NULL: a request can outlive its communicator). */
    PcStatus (*recv_post)(PcComm *c, int peer, uint64_t tag, PcTensor *t, void **req);
    PcStatus (*recv_wait)(PcComm *c, void *req);
    void (*recv_drop)(PcComm *c, void *req);
    /* send may hold its transfer back until the next operation or flush (NCCL: a send is
     * held so that a receive from the same peer right after it goes in one
     * ncclGroupStart/End group, the two progressing together instead of one waiting for
     * the other); every other operation, recv_wait included, flushes first. Callers flush
     * before they block on anything else (the runtime: before each compute action). NULL
     * when nothing is held (TCP). */
    PcStatus (*flush)(PcComm *c);
    /* Wait (within timeout_s) until every transfer this rank queued has finished; NULL when
     * operations complete before they return (TCP). */
    PcStatus (*wait_idle)(PcComm *c);
    PcStatus (*send_bytes)(PcComm *c, int peer, uint64_t tag, const void *buf, size_t n);
    /* Receives a whole message of any size into a malloc'd buffer (*buf, caller frees). */
    PcStatus (*recv_bytes)(PcComm *c, int peer, uint64_t tag, void **buf, size_t *n);
    PcStatus (*barrier)(PcComm *c);
    PcStatus (*all_reduce_sum)(PcComm *c, PcTensor *t);
    /* root's n bytes to everyone (others' buf must hold n bytes). */
    PcStatus (*broadcast_bytes)(PcComm *c, int root, void *buf, size_t n);
    /* Make every later operation fail fast (another rank died); idempotent, thread-safe. */
    void (*abort)(PcComm *c);
    void (*destroy)(PcComm *c); /* idempotent; never fails */
} PcCommOps;

struct PcComm {
    const PcCommOps *ops;
    int rank, world;
    double timeout_s;
    int device; /* the GPU whose memory the transfers move (NCCL); -1: host memory (TCP) */
};

/* ---- bootstrap store (TCP key-value server hosted by rank 0) ---- */

typedef struct PcStore PcStore;

/* Rank 0 (is_server) listens on host:port and also acts as a client; others connect,
 * retrying until timeout_s. Port taken / master unreachable -> clear PC_ERR_COMM message. */
PcStatus pc_store_open(const char *host, int port, bool is_server, int world, double timeout_s,
                       PcStore **out);
PcStatus pc_store_set(PcStore *s, const char *key, const void *val, size_t n);
/* Wait for key (until the store's timeout); *val malloc'd (caller frees). */
PcStatus pc_store_get(PcStore *s, const char *key, void **val, size_t *n);
/* Barrier over the world through the store; on timeout the error names the missing ranks. */
PcStatus pc_store_barrier(PcStore *s, const char *name, int rank);
void pc_store_close(PcStore *s);

/* ---- backends ---- */

/* TCP transport for CPU processes: every rank listens on an ephemeral port, publishes
 * "addr/<rank>" in the store, and connects to every peer. Framed messages carry a magic,
 * the tag, the size and a header checksum; a corrupted header is PC_ERR_COMM. */
PcStatus pc_comm_tcp_create(PcStore *store, int rank, int world, double timeout_s,
                            PcComm **out);
/* Fault injection for tests: write raw bytes (e.g. a corrupted header) to peer's socket. */
PcStatus pc_comm_tcp_send_raw(PcComm *c, int peer, const void *buf, size_t n);

#ifdef PC_WITH_NCCL
/* NCCL communicator for GPU `device` (unique id exchanged through the store); connections
 * are warmed up at creation. */
PcStatus pc_comm_nccl_create(PcStore *store, int rank, int world, int device, double timeout_s,
                             PcComm **out);
#endif

#ifdef __cplusplus
}
#endif
#endif /* PC_COMM_COMM_H */
