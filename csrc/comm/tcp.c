/* tcp.c — the TCP communicator for CPU processes (comm.h): a full mesh of non-blocking
 * sockets, framed messages matched by (source, tag), and the collectives pipelining needs
 * (barrier, ring all-reduce, broadcast) built on the same frames.
 *
 * Wire format. Each connection starts with a 16-byte hello {magic "PCTH", rank, world, 0}
 * from the higher rank. Then every frame is a 40-byte header and a payload:
 *   0 magic "PCT1" | 4 kind u16 | 6 version u16 | 8 source rank u32 | 12 sequence u32 |
 *   16 tag u64 | 24 payload size u64 | 32 FNV-1a of bytes 0..31 | 36 zero
 * Kinds: P2P (send/recv), COLL (collectives, their own tag space), BYE (a close; its payload
 * is empty, or the reason the sender's communicator had failed, so that a root cause such as
 * "rank 2 died" travels on to ranks that never talked to rank 2). A header with a wrong
 * magic, checksum, version, kind, source or sequence number is "corrupted": the stream
 * cannot be trusted after it, so the peer is marked failed.
 *
 * Threads. One progress thread per communicator polls every peer socket and always drains
 * it: a payload goes straight into the buffer of a matching posted receive when one waits,
 * else into a malloc'd early-arrival message. Because every rank drains, blocking sends
 * (done in the caller's thread, one frame at a time per socket) can never deadlock, in
 * whatever order the two sides post their operations. Receivers wait on one condition
 * variable (monotonic clock) with the operation's deadline.
 *
 * Invariants (all under `mu` unless said otherwise):
 *   - per peer and (kind, tag), messages and posts are FIFO, and a complete unreceived
 *     message and an unmatched post never coexist: whichever comes second takes the first;
 *   - at most one message per peer is partly received (a socket is a single stream);
 *   - a post being filled in place is only abandoned (timeout, abort, failure) after the
 *     progress thread's current recv() into it has returned (`body_busy`), and its remaining
 *     payload is then read and discarded, so the stream stays in step;
 *   - the first peer that dies, breaks the protocol or stops a send mid-frame puts the whole
 *     communicator in the failed state: every pending and later operation fails at once
 *     with a message naming that rank (a pipeline cannot go on without one of its ranks).
 *     So does a BYE that carries a failure reason, and a receive that a closed peer can no
 *     longer satisfy. A peer that says a plain BYE is closed, not failed: its delivered
 *     messages stay receivable, and only operations that need it fail.
 * Exports (comm.h): pc_comm_tcp_create, pc_comm_tcp_send_raw.
 */
#define _GNU_SOURCE
#include "net.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define TCP_MAGIC 0x31544350u   /* "PCT1" */
#define HELLO_MAGIC 0x48544350u /* "PCTH" */
#define TCP_VERSION 1
#define HDR_SIZE 40
#define HELLO_SIZE 16
#define MAX_MSG ((uint64_t)1 << 40)
#define SEND_SLICE_S 0.1 /* a blocked send re-checks the failed flag this often */
#define BYE_WAIT_S 1.0   /* how long destroy tries to say goodbye to a peer */
#define MAX_BYE 512      /* longest failure reason a BYE carries */

enum { KIND_P2P = 1, KIND_COLL = 2, KIND_BYE = 3 };
enum { PEER_OPEN = 0, PEER_CLOSED, PEER_FAILED };

/* ---- state ---- */

typedef struct TcpMsg {  /* a message that arrived before its receive was posted */
    struct TcpMsg *next;
    int kind;
    uint64_t tag;
    size_t n;
    unsigned char *data; /* owned (malloc); NULL when n == 0 */
    bool complete;       /* false while its payload is still arriving */
} TcpMsg;

typedef struct TcpPost { /* a posted receive; lives on the waiting thread's stack */
    struct TcpPost *next; /* in the peer's post list while unmatched */
    int kind;
    uint64_t tag;
    void *buf;            /* fixed size: the caller's buffer (borrowed). any_size: the
                             payload, malloc'd here and handed to the caller when done */
    size_t cap;
    bool any_size;
    size_t n;             /* bytes delivered */
    bool matched;         /* a message is assigned (its payload may still be arriving) */
    bool done;
    PcStatus st;
    char err[512];
} TcpPost;

typedef struct TcpPeer {
    int fd;                    /* owned; -1 for this rank itself (and until connected) */
    pthread_mutex_t send_mu;   /* one frame at a time on this socket */
    uint32_t send_seq;         /* under send_mu */
    /* receive side: the progress thread's own, except the fields marked "mu" */
    unsigned char hdr[HDR_SIZE];
    size_t hdr_got;
    uint32_t recv_seq;
    bool in_body;
    uint64_t body_size, body_got;
    unsigned char *body_dst;   /* mu: where the payload goes; NULL: read and discard */
    TcpPost *body_post;        /* mu: the post being filled in place, or NULL */
    TcpMsg *body_msg;          /* mu: the early-arrival message being filled, or NULL */
    bool body_busy;            /* mu: a recv() into body_dst is running */
    bool body_bye;             /* the payload being read is a BYE's reason (into bye_buf) */
    char bye_buf[MAX_BYE + 1];
    int cancel_waiting;        /* mu: waiters blocked until body_busy clears */
    bool polling;              /* mu: the progress thread still reads this socket */
    TcpMsg *msgs;              /* mu: FIFO of arrived, unreceived messages (owned) */
    TcpPost *posts;            /* mu: FIFO of unmatched posted receives (borrowed) */
    int state;                 /* mu: PEER_OPEN / CLOSED / FAILED */
    char why[384];             /* mu: why the peer is closed or failed */
} TcpPeer;

typedef struct PcTcpComm {
    PcComm base;               /* first member: a PcComm* of this backend is a PcTcpComm* */
    TcpPeer *peers;            /* owned array of `world`; peers[rank] is this rank */
    pthread_mutex_t mu;
    pthread_cond_t cv;         /* CLOCK_MONOTONIC; broadcast on every mailbox change */
    pthread_t thread;
    bool thread_started;
    int stop_pipe[2];          /* owned; readable once aborted or destroying, never drained */
    atomic_bool aborted;
    atomic_bool failed;        /* a peer died or broke the protocol (fail_why says which) */
    char fail_why[640];        /* mu */
    uint64_t coll_seq;         /* collectives issued; callers issue them from one thread, in
                                  the same order on every rank */
} PcTcpComm;

static const PcCommOps tcp_ops;

/* ---- helpers ---- */

static void deadline_ts(double deadline, struct timespec *ts) {
    if (deadline > 1e12) deadline = 1e12;
    ts->tv_sec = (time_t)deadline;
    ts->tv_nsec = (long)((deadline - (double)ts->tv_sec) * 1e9);
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* A message's tag for error messages; the pipeline runtime's tags ([2^61, 2^62), see
 * csrc/runtime/runtime.c xfer_tag) are spelled out. */
static void tag_str(int kind, uint64_t tag, char *buf, size_t n) {
    if (kind != KIND_P2P) {
        buf[0] = '\0';
    } else if ((tag >> 61) == 1) {
        snprintf(buf, n, " (pipeline %s for stage %u input %u, microbatch %u, step %u mod 65536)",
                 (tag >> 60) & 1 ? "gradient" : "activation", (unsigned)((tag >> 32) & 0xfff),
                 (unsigned)((tag >> 20) & 0xfff), (unsigned)(tag & 0xfffff),
                 (unsigned)((tag >> 44) & 0xffff));
    } else {
        snprintf(buf, n, " (tag %llu)", (unsigned long long)tag);
    }
}

static void header_pack(unsigned char *h, int kind, int src, uint32_t seq, uint64_t tag,
                        uint64_t size) {
    memset(h, 0, HDR_SIZE);
    pc_put_u32(h, TCP_MAGIC);
    h[4] = (unsigned char)kind;
    h[5] = 0;
    h[6] = (unsigned char)TCP_VERSION;
    h[7] = 0;
    pc_put_u32(h + 8, (uint32_t)src);
    pc_put_u32(h + 12, seq);
    pc_put_u64(h + 16, tag);
    pc_put_u64(h + 24, size);
    pc_put_u32(h + 32, pc_fnv1a(h, 32));
}

/* Hand a complete message to a post (msg->data moves to an any_size post). Under mu. */
static void deliver_locked(PcTcpComm *c, int p, TcpPost *post, TcpMsg *m) {
    post->matched = true;
    post->done = true;
    if (post->any_size) {
        post->buf = m->data;
        post->n = m->n;
        m->data = NULL;
        post->st = PC_OK;
    } else if (m->n != post->cap) {
        char ts[112];
        tag_str(post->kind, post->tag, ts, sizeof ts);
        post->st = PC_ERR_COMM;
        snprintf(post->err, sizeof post->err,
                 "rank %d: message size mismatch from rank %d%s: the receive expects %zu bytes "
                 "but rank %d sent %zu bytes", c->base.rank, p, ts, post->cap, p, m->n);
    } else {
        if (m->n) memcpy(post->buf, m->data, m->n);
        post->n = m->n;
        post->st = PC_OK;
    }
}

static void msg_free(TcpMsg *m) {
    if (!m) return;
    free(m->data);
    free(m);
}

static void msg_unlink(TcpPeer *pe, TcpMsg *m) {
    for (TcpMsg **pp = &pe->msgs; *pp; pp = &(*pp)->next)
        if (*pp == m) {
            *pp = m->next;
            return;
        }
}

static void post_unlink(TcpPeer *pe, TcpPost *post) {
    for (TcpPost **pp = &pe->posts; *pp; pp = &(*pp)->next)
        if (*pp == post) {
            *pp = post->next;
            return;
        }
}

static TcpPost *post_find(TcpPeer *pe, int kind, uint64_t tag) {
    for (TcpPost *q = pe->posts; q; q = q->next)
        if (q->kind == kind && q->tag == tag) return q;
    return NULL;
}

static TcpMsg *msg_find(TcpPeer *pe, int kind, uint64_t tag) {
    for (TcpMsg *m = pe->msgs; m; m = m->next)
        if (m->kind == kind && m->tag == tag) return m;
    return NULL;
}

static void msg_append(TcpPeer *pe, TcpMsg *m) {
    TcpMsg **pp = &pe->msgs;
    while (*pp) pp = &(*pp)->next;
    *pp = m;
}

/* Put the communicator in the failed state (the first reason wins). Under mu. */
static void comm_set_failed_locked(PcTcpComm *c, const char *why) {
    if (!atomic_load(&c->failed)) {
        snprintf(c->fail_why, sizeof c->fail_why, "%s", why);
        atomic_store(&c->failed, true);
    }
    pthread_cond_broadcast(&c->cv);
}

/* Put the communicator in the failed state because of peer p (the first reason wins).
 * Safe from any thread: touches no receive state. Under mu. */
static void comm_fail_locked(PcTcpComm *c, int p, const char *why) {
    TcpPeer *pe = &c->peers[p];
    if (pe->state != PEER_FAILED) {
        pe->state = PEER_FAILED;
        snprintf(pe->why, sizeof pe->why, "%s", why);
    }
    pe->polling = false;
    comm_set_failed_locked(c, why);
}

/* Can an operation with peer p start? PC_OK or the error (message set). Under mu. */
static PcStatus usable_locked(PcTcpComm *c, int p, const char *op, int kind, uint64_t tag,
                              bool sending) {
    char ts[112];
    tag_str(kind, tag, ts, sizeof ts);
    const char *dir = sending ? "to" : "from";
    if (atomic_load(&c->aborted))
        return pc_set_error(PC_ERR_COMM, "rank %d: %s %s rank %d%s failed: the communicator "
                            "was aborted", c->base.rank, op, dir, p, ts);
    if (atomic_load(&c->failed))
        return pc_set_error(PC_ERR_COMM, "rank %d: %s %s rank %d%s failed: %s", c->base.rank,
                            op, dir, p, ts, c->fail_why);
    TcpPeer *pe = &c->peers[p];
    if (pe->state == PEER_CLOSED && (sending || !msg_find(pe, kind, tag)))
        return pc_set_error(PC_ERR_COMM, "rank %d: %s %s rank %d%s failed: %s%s", c->base.rank,
                            op, dir, p, ts, pe->why,
                            sending ? "" : " without sending this message");
    return PC_OK;
}

/* ---- progress thread ---- */

/* Stop reading peer p for good: the stream died (EOF without BYE, reset, corruption, OOM).
 * Fails the in-place post or drops the half-received message. Progress thread only. */
static void peer_lost(PcTcpComm *c, int p, const char *why) {
    TcpPeer *pe = &c->peers[p];
    pthread_mutex_lock(&c->mu);
    if (pe->body_post) {
        TcpPost *post = pe->body_post;
        post->st = PC_ERR_COMM;
        snprintf(post->err, sizeof post->err, "rank %d: receive from rank %d failed part-way "
                 "(%llu of %llu bytes): %s", c->base.rank, p,
                 (unsigned long long)pe->body_got, (unsigned long long)pe->body_size, why);
        if (post->any_size) {
            free(post->buf);
            post->buf = NULL;
        }
        post->done = true;
        pe->body_post = NULL;
    }
    if (pe->body_msg) {
        msg_unlink(pe, pe->body_msg);
        msg_free(pe->body_msg);
        pe->body_msg = NULL;
    }
    pe->body_dst = NULL;
    pe->in_body = false;
    comm_fail_locked(c, p, why);
    pthread_mutex_unlock(&c->mu);
}

static void peer_eof(PcTcpComm *c, int p) {
    TcpPeer *pe = &c->peers[p];
    pthread_mutex_lock(&c->mu);
    bool clean = pe->state == PEER_CLOSED && !pe->in_body && pe->hdr_got == 0;
    if (clean) {
        pe->polling = false;
        pthread_cond_broadcast(&c->cv);
    }
    pthread_mutex_unlock(&c->mu);
    if (clean) return;
    char why[256];
    snprintf(why, sizeof why, "rank %d died: its connection closed without a goodbye (the "
             "process exited, crashed or was killed)", p);
    peer_lost(c, p, why);
}

static void peer_io_error(PcTcpComm *c, int p, int err) {
    char why[256];
    snprintf(why, sizeof why, "rank %d died: connection lost (%s; the process crashed, was "
             "killed, or its host went away)", p, strerror(err));
    peer_lost(c, p, why);
}

/* Peer p said goodbye; `reason` is "" for a clean close, else why its communicator had
 * failed, which becomes this communicator's failure too. Under mu. */
static void peer_bye_locked(PcTcpComm *c, int p, const char *reason) {
    TcpPeer *pe = &c->peers[p];
    if (pe->state == PEER_OPEN) {
        pe->state = PEER_CLOSED;
        if (reason[0])
            snprintf(pe->why, sizeof pe->why, "rank %d left after a failure", p);
        else
            snprintf(pe->why, sizeof pe->why, "rank %d closed its communicator "
                     "(destroy_process_group or exit)", p);
    }
    if (reason[0]) {
        char why[MAX_BYE + 64];
        snprintf(why, sizeof why, "%s (reported by rank %d)", reason, p);
        comm_set_failed_locked(c, why);
    }
    pthread_cond_broadcast(&c->cv);
}

/* The payload of the current frame is complete. Under mu. */
static void frame_end_locked(PcTcpComm *c, int p) {
    TcpPeer *pe = &c->peers[p];
    if (pe->body_bye) {
        pe->bye_buf[pe->body_size] = '\0';
        pe->body_bye = false;
        peer_bye_locked(c, p, pe->bye_buf);
    } else if (pe->body_post) {
        pe->body_post->st = PC_OK;
        pe->body_post->done = true;
        pe->body_post = NULL;
    } else if (pe->body_msg) {
        TcpMsg *m = pe->body_msg;
        pe->body_msg = NULL;
        m->complete = true;
        /* a receive posted while the payload was arriving takes it now */
        TcpPost *post = post_find(pe, m->kind, m->tag);
        if (post) {
            post_unlink(pe, post);
            deliver_locked(c, p, post, m);
            msg_unlink(pe, m);
            msg_free(m);
        }
    }
    pe->body_dst = NULL;
    pe->in_body = false;
    pthread_cond_broadcast(&c->cv);
}

/* A full header is in pe->hdr: check it and route the payload. false: the peer is lost. */
static bool frame_begin(PcTcpComm *c, int p) {
    TcpPeer *pe = &c->peers[p];
    const unsigned char *h = pe->hdr;
    char why[384];
    uint32_t magic = pc_get_u32(h), sum = pc_get_u32(h + 32), want = pc_fnv1a(h, 32);
    int kind = h[4] | (h[5] << 8), version = h[6] | (h[7] << 8);
    uint32_t src = pc_get_u32(h + 8), seq = pc_get_u32(h + 12);
    uint64_t tag = pc_get_u64(h + 16), size = pc_get_u64(h + 24);
    why[0] = '\0';
    if (magic != TCP_MAGIC)
        snprintf(why, sizeof why, "bad magic 0x%08x", magic);
    else if (sum != want)
        snprintf(why, sizeof why, "bad header checksum 0x%08x, expected 0x%08x", sum, want);
    else if (version != TCP_VERSION)
        snprintf(why, sizeof why, "protocol version %d, expected %d (mixed pipec builds?)",
                 version, TCP_VERSION);
    else if (kind < KIND_P2P || kind > KIND_BYE)
        snprintf(why, sizeof why, "unknown message kind %d", kind);
    else if (src != (uint32_t)p)
        snprintf(why, sizeof why, "header names source rank %u", src);
    else if (seq != pe->recv_seq)
        snprintf(why, sizeof why, "sequence number %u, expected %u (a message was lost or "
                 "duplicated)", seq, pe->recv_seq);
    else if (size > MAX_MSG || pc_get_u32(h + 36) != 0 || (kind == KIND_BYE && size > MAX_BYE))
        snprintf(why, sizeof why, "impossible payload size %llu", (unsigned long long)size);
    if (why[0]) {
        char full[512];
        snprintf(full, sizeof full, "corrupted message header from rank %d: %s", p, why);
        peer_lost(c, p, full);
        return false;
    }
    pe->recv_seq++;

    pthread_mutex_lock(&c->mu);
    pe->body_size = size;
    pe->body_got = 0;
    pe->body_dst = NULL;
    TcpPost *post = kind == KIND_BYE ? NULL : post_find(pe, kind, tag);
    if (kind == KIND_BYE) {
        pe->body_bye = true;
        pe->body_dst = (unsigned char *)pe->bye_buf;
    } else if (post && (post->any_size || post->cap == size)) {
        post_unlink(pe, post);
        post->matched = true;
        post->n = (size_t)size;
        if (post->any_size) {
            post->buf = size ? malloc((size_t)size) : NULL;
            if (size && !post->buf) {
                post->st = PC_ERR_OOM;
                snprintf(post->err, sizeof post->err, "rank %d: out of memory receiving "
                         "%llu bytes from rank %d", c->base.rank, (unsigned long long)size, p);
                post->done = true;
                post = NULL; /* payload discarded */
            }
        }
        if (post) {
            pe->body_post = post;
            pe->body_dst = post->buf;
        }
    } else {
        TcpMsg *m = calloc(1, sizeof *m);
        unsigned char *data = size ? malloc((size_t)size) : NULL;
        if (!m || (size && !data)) {
            free(m);
            free(data);
            pthread_mutex_unlock(&c->mu);
            snprintf(why, sizeof why, "out of memory buffering a %llu-byte message from rank %d",
                     (unsigned long long)size, p);
            peer_lost(c, p, why);
            return false;
        }
        m->kind = kind;
        m->tag = tag;
        m->n = (size_t)size;
        m->data = data;
        msg_append(pe, m);
        pe->body_msg = m;
        pe->body_dst = data;
    }
    if (size == 0)
        frame_end_locked(c, p);
    else
        pe->in_body = true;
    pthread_mutex_unlock(&c->mu);
    return true;
}

/* Read whatever peer p has sent, until the socket would block. */
static void peer_read(PcTcpComm *c, int p, unsigned char *scratch, size_t scratch_n) {
    TcpPeer *pe = &c->peers[p];
    for (;;) {
        ssize_t r;
        if (!pe->in_body) {
            r = recv(pe->fd, pe->hdr + pe->hdr_got, HDR_SIZE - pe->hdr_got, 0);
            if (r > 0) {
                pe->hdr_got += (size_t)r;
                if (pe->hdr_got < HDR_SIZE) continue;
                pe->hdr_got = 0;
                if (!frame_begin(c, p)) return;
                continue;
            }
        } else {
            pthread_mutex_lock(&c->mu);
            uint64_t left = pe->body_size - pe->body_got;
            unsigned char *dst = pe->body_dst ? pe->body_dst + pe->body_got : scratch;
            size_t want = pe->body_dst ? (size_t)left : (left < scratch_n ? (size_t)left
                                                                          : scratch_n);
            pe->body_busy = true;
            pthread_mutex_unlock(&c->mu);
            r = recv(pe->fd, dst, want, 0);
            pthread_mutex_lock(&c->mu);
            pe->body_busy = false;
            if (pe->cancel_waiting) pthread_cond_broadcast(&c->cv);
            if (r > 0) {
                pe->body_got += (uint64_t)r;
                if (pe->body_got == pe->body_size) frame_end_locked(c, p);
                pthread_mutex_unlock(&c->mu);
                continue;
            }
            pthread_mutex_unlock(&c->mu);
        }
        if (r == 0) {
            peer_eof(c, p);
            return;
        }
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        peer_io_error(c, p, errno);
        return;
    }
}

static void *progress_main(void *arg) {
    PcTcpComm *c = arg;
    int world = c->base.world;
    struct pollfd *pf = malloc(sizeof *pf * (size_t)(world + 1));
    int *who = malloc(sizeof *who * (size_t)(world + 1));
    size_t scratch_n = 1 << 16;
    unsigned char *scratch = malloc(scratch_n);
    if (!pf || !who || !scratch) {
        pthread_mutex_lock(&c->mu);
        for (int p = 0; p < world; p++)
            if (p != c->base.rank) {
                comm_fail_locked(c, p, "out of memory starting the receive thread");
                break;
            }
        pthread_mutex_unlock(&c->mu);
        goto out;
    }
    for (;;) {
        int np = 0;
        pf[np++] = (struct pollfd){c->stop_pipe[0], POLLIN, 0};
        pthread_mutex_lock(&c->mu);
        for (int p = 0; p < world; p++) {
            if (c->peers[p].fd < 0 || !c->peers[p].polling) continue;
            who[np] = p;
            pf[np++] = (struct pollfd){c->peers[p].fd, POLLIN, 0};
        }
        pthread_mutex_unlock(&c->mu);
        int r = poll(pf, (nfds_t)np, -1);
        if (r < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (pf[0].revents) break; /* aborted or destroying */
        for (int i = 1; i < np; i++)
            if (pf[i].revents) peer_read(c, who[i], scratch, scratch_n);
    }
out:
    free(pf);
    free(who);
    free(scratch);
    return NULL;
}

/* ---- sending ---- */

/* A message to this rank itself: straight into the mailbox. */
static PcStatus self_deliver(PcTcpComm *c, int kind, uint64_t tag, const void *buf, size_t n) {
    int me = c->base.rank;
    TcpPeer *pe = &c->peers[me];
    TcpMsg *m = calloc(1, sizeof *m);
    unsigned char *data = n ? malloc(n) : NULL;
    if (!m || (n && !data)) {
        free(m);
        free(data);
        return pc_set_error(PC_ERR_OOM, "rank %d: out of memory sending %zu bytes to itself",
                            me, n);
    }
    if (n) memcpy(data, buf, n);
    *m = (TcpMsg){.kind = kind, .tag = tag, .n = n, .data = data, .complete = true};
    pthread_mutex_lock(&c->mu);
    TcpPost *post = post_find(pe, kind, tag);
    if (post) {
        post_unlink(pe, post);
        deliver_locked(c, me, post, m);
        msg_free(m);
    } else {
        msg_append(pe, m);
    }
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    return PC_OK;
}

/* Write one frame to peer p before the deadline. `op` names the operation in errors. */
static PcStatus frame_send(PcTcpComm *c, int p, int kind, uint64_t tag, const void *buf,
                           size_t n, double deadline, const char *op) {
    int me = c->base.rank;
    if (p == me && kind != KIND_BYE) return self_deliver(c, kind, tag, buf, n);
    TcpPeer *pe = &c->peers[p];
    char ts[112];
    tag_str(kind, tag, ts, sizeof ts);
    pthread_mutex_lock(&c->mu);
    PcStatus st = kind == KIND_BYE ? PC_OK : usable_locked(c, p, op, kind, tag, true);
    pthread_mutex_unlock(&c->mu);
    if (st != PC_OK) return st;

    unsigned char h[HDR_SIZE];
    pthread_mutex_lock(&pe->send_mu);
    header_pack(h, kind, me, pe->send_seq++, tag, (uint64_t)n);
    size_t total = HDR_SIZE + n, sent = 0;
    while (sent < total) {
        struct iovec iov[2];
        int niov = 0;
        if (sent < HDR_SIZE) {
            iov[niov++] = (struct iovec){h + sent, HDR_SIZE - sent};
            if (n) iov[niov++] = (struct iovec){(void *)buf, n};
        } else {
            iov[niov++] = (struct iovec){(unsigned char *)buf + (sent - HDR_SIZE),
                                         total - sent};
        }
        struct msghdr mh;
        memset(&mh, 0, sizeof mh);
        mh.msg_iov = iov;
        mh.msg_iovlen = (size_t)niov;
        ssize_t w = sendmsg(pe->fd, &mh, MSG_NOSIGNAL);
        if (w > 0) {
            sent += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
            int e = errno;
            pthread_mutex_unlock(&pe->send_mu);
            char why[384];
            snprintf(why, sizeof why, "rank %d died: connection lost (%s; the process crashed, "
                     "was killed, or its host went away)", p, strerror(e));
            pthread_mutex_lock(&c->mu);
            if (c->peers[p].state == PEER_CLOSED) /* it said goodbye while we were sending */
                snprintf(why, sizeof why, "%s", c->peers[p].why);
            else if (kind != KIND_BYE)
                comm_fail_locked(c, p, why);
            pthread_mutex_unlock(&c->mu);
            return pc_set_error(PC_ERR_COMM, "rank %d: %s to rank %d%s failed: %s", me, op, p,
                                ts, why);
        }
        double now = pc_net_now();
        if (now >= deadline) {
            pthread_mutex_unlock(&pe->send_mu);
            char why[384];
            snprintf(why, sizeof why, "rank %d stopped receiving: a %zu-byte send to it timed "
                     "out after %gs (the process is hung or stopped)", p, n,
                     c->base.timeout_s);
            pthread_mutex_lock(&c->mu);
            if (sent > 0 && kind != KIND_BYE) comm_fail_locked(c, p, why); /* torn frame */
            pthread_mutex_unlock(&c->mu);
            return pc_set_error(PC_ERR_TIMEOUT, "rank %d: %s to rank %d%s timed out: %s", me,
                                op, p, ts, why);
        }
        double slice = now + SEND_SLICE_S < deadline ? now + SEND_SLICE_S : deadline;
        st = pc_net_wait(pe->fd, POLLOUT, slice, c->stop_pipe[0]);
        bool failed = atomic_load(&c->failed) && kind != KIND_BYE;
        if ((st != PC_OK && st != PC_ERR_TIMEOUT) || failed) {
            pthread_mutex_unlock(&pe->send_mu);
            pthread_mutex_lock(&c->mu);
            if (sent > 0 && !failed && kind != KIND_BYE)
                comm_fail_locked(c, p, "a send was aborted part-way");
            st = usable_locked(c, p, op, kind, tag, true);
            pthread_mutex_unlock(&c->mu);
            return st != PC_OK ? st : pc_set_error(PC_ERR_COMM, "rank %d: %s to rank %d%s "
                                                   "failed: the communicator was aborted",
                                                   me, op, p, ts);
        }
    }
    pthread_mutex_unlock(&pe->send_mu);
    return PC_OK;
}

/* ---- receiving ---- */

/* Abandon a post (timeout, abort, failure). Under mu. */
static void post_cancel_locked(PcTcpComm *c, TcpPeer *pe, TcpPost *post) {
    if (post->done) return;
    if (!post->matched) {
        post_unlink(pe, post);
        return;
    }
    if (pe->body_post == post) {
        pe->cancel_waiting++;
        while (pe->body_busy) pthread_cond_wait(&c->cv, &c->mu);
        pe->cancel_waiting--;
        pe->body_post = NULL;
        pe->body_dst = NULL; /* the rest of the payload is read and dropped */
        if (post->any_size) {
            free(post->buf);
            post->buf = NULL;
        }
    }
}

/* A receive that closed peer p can no longer satisfy: the job cannot go on, and the reason
 * travels on in this rank's own goodbye. Under mu. */
static void closed_peer_fails_locked(PcTcpComm *c, int p) {
    if (c->peers[p].state != PEER_CLOSED || atomic_load(&c->failed)) return;
    char why[512];
    snprintf(why, sizeof why, "rank %d closed its communicator without sending a message rank "
             "%d was waiting for", p, c->base.rank);
    comm_set_failed_locked(c, why);
}

/* Receive the message (p, kind, tag): into buf (exactly cap bytes) or, with any_size, into
 * a malloc'd *out of *out_n bytes. */
static PcStatus mailbox_recv(PcTcpComm *c, int p, int kind, uint64_t tag, void *buf,
                             size_t cap, bool any_size, void **out, size_t *out_n,
                             double deadline, const char *op) {
    int me = c->base.rank;
    TcpPeer *pe = &c->peers[p];
    TcpPost post;
    memset(&post, 0, sizeof post);
    post.kind = kind;
    post.tag = tag;
    post.buf = buf;
    post.cap = cap;
    post.any_size = any_size;
    char ts[112];
    tag_str(kind, tag, ts, sizeof ts);
    struct timespec dl;
    deadline_ts(deadline, &dl);

    pthread_mutex_lock(&c->mu);
    PcStatus st = usable_locked(c, p, op, kind, tag, false);
    if (st != PC_OK) {
        closed_peer_fails_locked(c, p);
        pthread_mutex_unlock(&c->mu);
        return st;
    }
    TcpMsg *m = msg_find(pe, kind, tag);
    if (m && m->complete) {
        msg_unlink(pe, m);
        deliver_locked(c, p, &post, m);
        msg_free(m);
    } else {
        TcpPost **pp = &pe->posts;
        while (*pp) pp = &(*pp)->next;
        *pp = &post;
        bool timed_out = false;
        while (!post.done) {
            if (atomic_load(&c->aborted) || atomic_load(&c->failed) ||
                (pe->state != PEER_OPEN && !post.matched && !msg_find(pe, kind, tag)) ||
                timed_out) {
                post_cancel_locked(c, pe, &post);
                if (post.done) break; /* it completed while we waited to cancel */
                if (timed_out)
                    st = pc_set_error(PC_ERR_TIMEOUT, "rank %d: %s from rank %d%s timed out "
                                      "after %gs: rank %d did not send it (it is hung, slower "
                                      "than the timeout, or waiting on another rank)", me, op,
                                      p, ts, c->base.timeout_s, p);
                else
                    st = usable_locked(c, p, op, kind, tag, false);
                if (st == PC_OK)
                    st = pc_set_error(PC_ERR_COMM, "rank %d: %s from rank %d%s failed: %s", me,
                                      op, p, ts, pe->why);
                if (!timed_out) closed_peer_fails_locked(c, p);
                pthread_mutex_unlock(&c->mu);
                return st;
            }
            int rc = pthread_cond_timedwait(&c->cv, &c->mu, &dl);
            if (rc == ETIMEDOUT) timed_out = true;
        }
    }
    pthread_mutex_unlock(&c->mu);
    if (post.st != PC_OK) {
        if (post.any_size) free(post.buf);
        return pc_set_error(post.st, "%s", post.err);
    }
    if (any_size) {
        *out = post.buf;
        *out_n = post.n;
    }
    return PC_OK;
}

/* ---- point to point ---- */

static PcTcpComm *as_tcp(PcComm *c) { return (PcTcpComm *)c; }

static PcStatus check_peer(PcComm *c, int peer, const char *op) {
    PC_CHECK(peer >= 0 && peer < c->world, PC_ERR_INVALID,
             "%s: peer rank %d is out of range for world size %d", op, peer, c->world);
    return PC_OK;
}

static PcStatus check_tensor(const PcTensor *t, const char *op) {
    PC_CHECK(t != NULL, PC_ERR_INVALID, "%s: tensor is NULL", op);
    PC_CHECK(t->device.type == PC_CPU, PC_ERR_DEVICE,
             "%s: the tcp backend moves CPU tensors; this one is on cuda:%d (use the nccl "
             "backend, or .cpu())", op, t->device.index);
    PC_CHECK(pc_tensor_is_contiguous(t), PC_ERR_INVALID, "%s: tensor must be contiguous", op);
    return PC_OK;
}

static PcStatus tcp_send_bytes(PcComm *base, int peer, uint64_t tag, const void *buf,
                               size_t n) {
    PC_TRY(check_peer(base, peer, "send"));
    PC_CHECK(buf || n == 0, PC_ERR_INVALID, "send: NULL buffer of %zu bytes", n);
    return frame_send(as_tcp(base), peer, KIND_P2P, tag, buf, n,
                      pc_net_now() + base->timeout_s, "send");
}

static PcStatus tcp_recv_bytes(PcComm *base, int peer, uint64_t tag, void **buf, size_t *n) {
    *buf = NULL;
    *n = 0;
    PC_TRY(check_peer(base, peer, "recv"));
    return mailbox_recv(as_tcp(base), peer, KIND_P2P, tag, NULL, 0, true, buf, n,
                        pc_net_now() + base->timeout_s, "recv");
}

static PcStatus tcp_send(PcComm *base, int peer, uint64_t tag, const PcTensor *t) {
    PC_TRY(check_peer(base, peer, "send"));
    PC_TRY(check_tensor(t, "send"));
    return frame_send(as_tcp(base), peer, KIND_P2P, tag, pc_tensor_data(t), pc_tensor_nbytes(t),
                      pc_net_now() + base->timeout_s, "send");
}

static PcStatus tcp_recv(PcComm *base, int peer, uint64_t tag, PcTensor *t) {
    PC_TRY(check_peer(base, peer, "recv"));
    PC_TRY(check_tensor(t, "recv"));
    PC_TRY(mailbox_recv(as_tcp(base), peer, KIND_P2P, tag, pc_tensor_data(t),
                        pc_tensor_nbytes(t), false, NULL, NULL, pc_net_now() + base->timeout_s,
                        "recv"));
    pc_tensor_bump_version(t);
    return PC_OK;
}

/* Split receive: the progress thread already buffers messages that arrive before their
 * receive, so posting only records what to receive and the wait does the receive. */
typedef struct TcpRecvReq {
    int peer;
    uint64_t tag;
    PcTensor *t; /* owned reference */
} TcpRecvReq;

static PcStatus tcp_recv_post(PcComm *base, int peer, uint64_t tag, PcTensor *t, void **req) {
    *req = NULL;
    PC_TRY(check_peer(base, peer, "recv"));
    PC_TRY(check_tensor(t, "recv"));
    TcpRecvReq *r = malloc(sizeof *r);
    if (!r) return pc_set_error(PC_ERR_OOM, "recv: out of host memory posting a receive");
    pc_tensor_incref(t);
    *r = (TcpRecvReq){peer, tag, t};
    *req = r;
    return PC_OK;
}

static void tcp_recv_drop(PcComm *base, void *req) {
    (void)base;
    TcpRecvReq *r = req;
    if (!r) return;
    pc_tensor_decref(r->t);
    free(r);
}

static PcStatus tcp_recv_wait(PcComm *base, void *req) {
    TcpRecvReq *r = req;
    PcStatus st = tcp_recv(base, r->peer, r->tag, r->t);
    tcp_recv_drop(base, req);
    return st;
}

/* ---- collectives ---- */

/* Tags of one collective: its sequence number and a step (ring all-reduce has 2(p-1)). */
static uint64_t coll_tag(uint64_t seq, int step) { return (seq << 24) | (uint64_t)step; }

static PcStatus tcp_barrier(PcComm *base) {
    PcTcpComm *c = as_tcp(base);
    int me = base->rank, world = base->world;
    uint64_t tag = coll_tag(c->coll_seq++, 0);
    double deadline = pc_net_now() + base->timeout_s;
    if (world == 1) return PC_OK;
    if (me != 0) {
        PC_TRY(frame_send(c, 0, KIND_COLL, tag, NULL, 0, deadline, "barrier"));
        PcStatus st = mailbox_recv(c, 0, KIND_COLL, tag, NULL, 0, false, NULL, NULL, deadline,
                                   "barrier");
        if (st == PC_ERR_TIMEOUT)
            return pc_set_error(st, "rank %d: barrier timed out after %gs waiting for rank "
                                "0 to release it (some rank has not reached the barrier)", me,
                                base->timeout_s);
        return st;
    }
    for (int p = 1; p < world; p++) {
        PcStatus st = mailbox_recv(c, p, KIND_COLL, tag, NULL, 0, false, NULL, NULL, deadline,
                                   "barrier");
        if (st == PC_ERR_TIMEOUT) {
            /* p is late; so is every later rank whose arrival is not already queued */
            int *late = malloc(sizeof *late * (size_t)world), n_late = 0;
            if (!late) return st;
            pthread_mutex_lock(&c->mu);
            for (int q = p; q < world; q++) {
                TcpMsg *m = q == p ? NULL : msg_find(&c->peers[q], KIND_COLL, tag);
                if (!m || !m->complete) late[n_late++] = q;
            }
            pthread_mutex_unlock(&c->mu);
            char list[256];
            pc_net_rank_list(late, n_late, list, sizeof list);
            free(late);
            return pc_set_error(st, "rank 0: barrier timed out after %gs: %s never arrived",
                                base->timeout_s, list);
        }
        PC_TRY(st);
    }
    for (int p = 1; p < world; p++)
        PC_TRY(frame_send(c, p, KIND_COLL, tag, NULL, 0, deadline, "barrier"));
    return PC_OK;
}

/* dst[i] += src[i] for n elements of dt (bool: logical or). */
static void add_into(PcDType dt, void *dst, const void *src, size_t n) {
    switch (dt) {
    case PC_FLOAT32: {
        float *d = dst;
        const float *s = src;
        for (size_t i = 0; i < n; i++) d[i] += s[i];
        break;
    }
    case PC_FLOAT64: {
        double *d = dst;
        const double *s = src;
        for (size_t i = 0; i < n; i++) d[i] += s[i];
        break;
    }
    case PC_INT64: {
        int64_t *d = dst;
        const int64_t *s = src;
        for (size_t i = 0; i < n; i++) d[i] = (int64_t)((uint64_t)d[i] + (uint64_t)s[i]);
        break;
    }
    case PC_FLOAT16: {
        uint16_t *d = dst;
        const uint16_t *s = src;
        for (size_t i = 0; i < n; i++)
            d[i] = pc_f32_to_f16(pc_f16_to_f32(d[i]) + pc_f16_to_f32(s[i]));
        break;
    }
    case PC_BFLOAT16: {
        uint16_t *d = dst;
        const uint16_t *s = src;
        for (size_t i = 0; i < n; i++)
            d[i] = pc_f32_to_bf16(pc_bf16_to_f32(d[i]) + pc_bf16_to_f32(s[i]));
        break;
    }
    case PC_BOOL: {
        unsigned char *d = dst;
        const unsigned char *s = src;
        for (size_t i = 0; i < n; i++) d[i] = (unsigned char)(d[i] || s[i]);
        break;
    }
    default:
        break;
    }
}

/* Ring all-reduce: p-1 reduce-scatter steps, then p-1 all-gather steps, each sending one
 * chunk to the right neighbour and receiving one from the left. Every chunk's sum is
 * formed on one rank and copied to the others, so all ranks end with identical bits. */
static PcStatus tcp_all_reduce_sum(PcComm *base, PcTensor *t) {
    PcTcpComm *c = as_tcp(base);
    PC_TRY(check_tensor(t, "all_reduce_sum"));
    PC_CHECK(pc_dtype_size(t->dtype) > 0, PC_ERR_TYPE, "all_reduce_sum: unsupported dtype %d",
             (int)t->dtype);
    int me = base->rank, p = base->world;
    uint64_t seq = c->coll_seq++;
    if (p == 1) return PC_OK;
    double deadline = pc_net_now() + base->timeout_s;
    size_t es = pc_dtype_size(t->dtype);
    int64_t n = pc_tensor_numel(t);
    unsigned char *data = pc_tensor_data(t);
#define CHUNK_OFF(i) ((size_t)((n * (int64_t)(i)) / p))
    size_t max_chunk = (size_t)(n / p) + 1;
    unsigned char *tmp = malloc(max_chunk * es);
    if (!tmp) return pc_set_error(PC_ERR_OOM, "all_reduce_sum: out of memory");
    int right = (me + 1) % p, left = (me - 1 + p) % p;
    PcStatus st = PC_OK;
    for (int s = 0; s < p - 1; s++) {
        int sc = ((me - s) % p + p) % p, rc = ((me - s - 1) % p + p) % p;
        size_t s0 = CHUNK_OFF(sc), s1 = CHUNK_OFF(sc + 1);
        size_t r0 = CHUNK_OFF(rc), r1 = CHUNK_OFF(rc + 1);
        PC_TRY_GOTO(st, frame_send(c, right, KIND_COLL, coll_tag(seq, s), data + s0 * es,
                                   (s1 - s0) * es, deadline, "all_reduce_sum"));
        PC_TRY_GOTO(st, mailbox_recv(c, left, KIND_COLL, coll_tag(seq, s), tmp, (r1 - r0) * es,
                                     false, NULL, NULL, deadline, "all_reduce_sum"));
        add_into(t->dtype, data + r0 * es, tmp, r1 - r0);
    }
    for (int s = 0; s < p - 1; s++) {
        int sc = ((me + 1 - s) % p + p) % p, rc = ((me - s) % p + p) % p;
        size_t s0 = CHUNK_OFF(sc), s1 = CHUNK_OFF(sc + 1);
        size_t r0 = CHUNK_OFF(rc), r1 = CHUNK_OFF(rc + 1);
        PC_TRY_GOTO(st, frame_send(c, right, KIND_COLL, coll_tag(seq, p - 1 + s),
                                   data + s0 * es, (s1 - s0) * es, deadline, "all_reduce_sum"));
        PC_TRY_GOTO(st, mailbox_recv(c, left, KIND_COLL, coll_tag(seq, p - 1 + s),
                                     data + r0 * es, (r1 - r0) * es, false, NULL, NULL,
                                     deadline, "all_reduce_sum"));
    }
#undef CHUNK_OFF
    free(tmp);
    pc_tensor_bump_version(t);
    return PC_OK;
fail:
    free(tmp);
    if (st == PC_ERR_TIMEOUT)
        return pc_net_error(st, "rank %d: all_reduce_sum of %lld elements timed out", me,
                            (long long)n);
    return st;
}

static PcStatus tcp_broadcast_bytes(PcComm *base, int root, void *buf, size_t n) {
    PcTcpComm *c = as_tcp(base);
    PC_TRY(check_peer(base, root, "broadcast_bytes"));
    PC_CHECK(buf || n == 0, PC_ERR_INVALID, "broadcast_bytes: NULL buffer of %zu bytes", n);
    uint64_t tag = coll_tag(c->coll_seq++, 0);
    double deadline = pc_net_now() + base->timeout_s;
    if (base->rank == root) {
        for (int p = 0; p < base->world; p++)
            if (p != root)
                PC_TRY(frame_send(c, p, KIND_COLL, tag, buf, n, deadline, "broadcast_bytes"));
        return PC_OK;
    }
    return mailbox_recv(c, root, KIND_COLL, tag, buf, n, false, NULL, NULL, deadline,
                        "broadcast_bytes");
}

/* ---- lifetime ---- */

static void tcp_abort(PcComm *base) {
    PcTcpComm *c = as_tcp(base);
    if (atomic_exchange(&c->aborted, true)) return;
    char b = 1;
    ssize_t w;
    do {
        w = write(c->stop_pipe[1], &b, 1);
    } while (w < 0 && errno == EINTR);
    pthread_mutex_lock(&c->mu);
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

static void tcp_destroy(PcComm *base) {
    if (!base) return;
    PcTcpComm *c = as_tcp(base);
    int world = base->world;
    if (c->thread_started && !atomic_load(&c->aborted)) {
        /* goodbye first, so peers tell a clean exit from a crash */
        double deadline = pc_net_now() + (base->timeout_s < BYE_WAIT_S ? base->timeout_s
                                                                       : BYE_WAIT_S);
        char reason[MAX_BYE + 1] = "";
        pthread_mutex_lock(&c->mu);
        if (atomic_load(&c->failed)) {
            size_t n = strnlen(c->fail_why, MAX_BYE);
            memcpy(reason, c->fail_why, n);
            reason[n] = '\0';
        }
        pthread_mutex_unlock(&c->mu);
        for (int p = 0; p < world; p++) {
            if (p == base->rank || c->peers[p].fd < 0) continue;
            pthread_mutex_lock(&c->mu);
            bool open = c->peers[p].state == PEER_OPEN;
            pthread_mutex_unlock(&c->mu);
            if (open && frame_send(c, p, KIND_BYE, 0, reason, strlen(reason), deadline,
                                   "goodbye") == PC_OK)
                shutdown(c->peers[p].fd, SHUT_WR);
        }
    }
    if (c->stop_pipe[1] >= 0) tcp_abort(base);
    if (c->thread_started) pthread_join(c->thread, NULL);
    c->thread_started = false;
    if (c->peers) {
        for (int p = 0; p < world; p++) {
            TcpPeer *pe = &c->peers[p];
            if (pe->fd >= 0) close(pe->fd);
            pe->fd = -1;
            while (pe->msgs) {
                TcpMsg *m = pe->msgs;
                pe->msgs = m->next;
                msg_free(m);
            }
            pthread_mutex_destroy(&pe->send_mu);
        }
        free(c->peers);
        c->peers = NULL;
    }
    if (c->stop_pipe[0] >= 0) close(c->stop_pipe[0]);
    if (c->stop_pipe[1] >= 0) close(c->stop_pipe[1]);
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

static const PcCommOps tcp_ops = {
    .name = "tcp",
    .host_memory = true,
    .send = tcp_send,
    .recv = tcp_recv,
    .recv_post = tcp_recv_post,
    .recv_wait = tcp_recv_wait,
    .recv_drop = tcp_recv_drop,
    .send_bytes = tcp_send_bytes,
    .recv_bytes = tcp_recv_bytes,
    .barrier = tcp_barrier,
    .all_reduce_sum = tcp_all_reduce_sum,
    .broadcast_bytes = tcp_broadcast_bytes,
    .abort = tcp_abort,
    .destroy = tcp_destroy,
};

/* ---- creation ---- */

/* Connect to lower rank p (address from the store) and say hello. */
static PcStatus connect_lower(PcTcpComm *c, PcStore *store, int p, double deadline) {
    int me = c->base.rank;
    char key[32];
    snprintf(key, sizeof key, "addr/%d", p);
    void *v = NULL;
    size_t n = 0;
    PcStatus st = pc_store_get_until(store, key, deadline, &v, &n);
    if (st == PC_ERR_TIMEOUT)
        return pc_set_error(st, "rank %d timed out after %gs waiting for rank %d to publish "
                            "its TCP address (rank %d never arrived)", me, c->base.timeout_s,
                            p, p);
    PC_TRY(st);
    char addr[300], host[280];
    int port = 0;
    size_t len = n < sizeof addr - 1 ? n : sizeof addr - 1;
    memcpy(addr, v, len);
    addr[len] = '\0';
    free(v);
    if (sscanf(addr, "%279s %d", host, &port) != 2)
        return pc_set_error(PC_ERR_COMM, "rank %d: malformed address '%s' for rank %d in the "
                            "store", me, addr, p);
    char what[32];
    snprintf(what, sizeof what, "rank %d", p);
    int fd = -1;
    st = pc_net_connect(host, port, deadline, what, &fd);
    if (st != PC_OK) return pc_net_error(st, "rank %d cannot reach rank %d's TCP transport", me, p);
    unsigned char hello[HELLO_SIZE] = {0};
    pc_put_u32(hello, HELLO_MAGIC);
    pc_put_u32(hello + 4, (uint32_t)me);
    pc_put_u32(hello + 8, (uint32_t)c->base.world);
    st = pc_net_send_all(fd, hello, sizeof hello, deadline, -1);
    if (st != PC_OK) {
        close(fd);
        return pc_net_error(st, "rank %d: handshake with rank %d failed", me, p);
    }
    c->peers[p].fd = fd;
    return PC_OK;
}

/* Accept the connections of every higher rank. */
static PcStatus accept_higher(PcTcpComm *c, int lfd, const char *myaddr, double deadline) {
    int me = c->base.rank, world = c->base.world;
    int need = world - 1 - me;
    while (need > 0) {
        int fd = -1;
        PcStatus st = pc_net_accept(lfd, deadline, &fd);
        if (st == PC_ERR_TIMEOUT) {
            int *missing = malloc(sizeof *missing * (size_t)world), nm = 0;
            if (!missing) return pc_set_error(PC_ERR_OOM, "out of memory");
            for (int q = me + 1; q < world; q++)
                if (c->peers[q].fd < 0) missing[nm++] = q;
            char list[256];
            pc_net_rank_list(missing, nm, list, sizeof list);
            free(missing);
            return pc_set_error(PC_ERR_TIMEOUT, "rank %d timed out after %gs waiting for %s "
                                "to connect to its TCP transport at %s (never arrived, or "
                                "cannot reach this host)", me, c->base.timeout_s, list, myaddr);
        }
        PC_TRY(st);
        unsigned char hello[HELLO_SIZE];
        if (pc_net_recv_all(fd, hello, sizeof hello, deadline, -1) != PC_OK ||
            pc_get_u32(hello) != HELLO_MAGIC) {
            close(fd); /* not one of ours (a port scanner, a stale client) */
            continue;
        }
        int q = (int)pc_get_u32(hello + 4), qworld = (int)pc_get_u32(hello + 8);
        if (qworld != world) {
            close(fd);
            return pc_set_error(PC_ERR_COMM, "rank %d: rank %d joined with world size %d, but "
                                "this rank has world size %d (WORLD_SIZE differs between "
                                "ranks)", me, q, qworld, world);
        }
        if (q <= me || q >= world || c->peers[q].fd >= 0) {
            close(fd);
            return pc_set_error(PC_ERR_COMM, "rank %d: a second process claims to be rank %d "
                                "(RANK is duplicated or out of range)", me, q);
        }
        c->peers[q].fd = fd;
        need--;
    }
    return PC_OK;
}

PcStatus pc_comm_tcp_create(PcStore *store, int rank, int world, double timeout_s,
                            PcComm **out) {
    *out = NULL;
    PC_CHECK(store != NULL, PC_ERR_INVALID, "pc_comm_tcp_create: store is NULL");
    PC_CHECK(world >= 1, PC_ERR_INVALID, "pc_comm_tcp_create: world size must be >= 1, got %d",
             world);
    PC_CHECK(rank >= 0 && rank < world, PC_ERR_INVALID,
             "pc_comm_tcp_create: rank %d is out of range for world size %d", rank, world);
    PC_CHECK(timeout_s > 0, PC_ERR_INVALID, "pc_comm_tcp_create: timeout must be > 0, got %g",
             timeout_s);
    double deadline = pc_net_now() + timeout_s;
    PcTcpComm *c = calloc(1, sizeof *c);
    if (!c) return pc_set_error(PC_ERR_OOM, "pc_comm_tcp_create: out of memory");
    c->base.ops = &tcp_ops;
    c->base.rank = rank;
    c->base.world = world;
    c->base.timeout_s = timeout_s;
    c->base.device = -1;
    c->stop_pipe[0] = c->stop_pipe[1] = -1;
    atomic_init(&c->aborted, false);
    atomic_init(&c->failed, false);
    pthread_mutex_init(&c->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&c->cv, &ca);
    pthread_condattr_destroy(&ca);
    int lfd = -1;
    PcStatus st = PC_OK;
    c->peers = calloc((size_t)world, sizeof *c->peers);
    if (!c->peers) {
        st = pc_set_error(PC_ERR_OOM, "pc_comm_tcp_create: out of memory");
        goto fail;
    }
    for (int p = 0; p < world; p++) {
        c->peers[p].fd = -1;
        c->peers[p].polling = p != rank;
        pthread_mutex_init(&c->peers[p].send_mu, NULL);
    }
    if (pipe2(c->stop_pipe, O_CLOEXEC | O_NONBLOCK) < 0) {
        st = pc_set_error(PC_ERR_COMM, "pc_comm_tcp_create: pipe: %s", strerror(errno));
        goto fail;
    }

    int port = 0;
    char host[256], addr[300];
    PC_TRY_GOTO(st, pc_net_listen(0, "transport port", &lfd, &port));
    PC_TRY_GOTO(st, pc_store_local_host(store, host, sizeof host));
    snprintf(addr, sizeof addr, "%s %d", host, port);
    char key[32];
    snprintf(key, sizeof key, "addr/%d", rank);
    PC_TRY_GOTO(st, pc_store_set(store, key, addr, strlen(addr)));
    for (int p = 0; p < rank; p++) PC_TRY_GOTO(st, connect_lower(c, store, p, deadline));
    snprintf(addr, sizeof addr, "%s:%d", host, port);
    PC_TRY_GOTO(st, accept_higher(c, lfd, addr, deadline));
    close(lfd);
    lfd = -1;

    int e = pthread_create(&c->thread, NULL, progress_main, c);
    if (e != 0) {
        st = pc_set_error(PC_ERR_COMM, "pc_comm_tcp_create: cannot start the receive thread: "
                          "%s", strerror(e));
        goto fail;
    }
    c->thread_started = true;
    *out = &c->base;
    return PC_OK;
fail:
    if (lfd >= 0) close(lfd);
    tcp_destroy(&c->base);
    return st;
}

/* ---- fault injection ---- */

PcStatus pc_comm_tcp_send_raw(PcComm *base, int peer, const void *buf, size_t n) {
    PC_CHECK(base && base->ops == &tcp_ops, PC_ERR_INVALID,
             "pc_comm_tcp_send_raw: not a tcp communicator");
    PC_TRY(check_peer(base, peer, "send_raw"));
    PC_CHECK(peer != base->rank, PC_ERR_INVALID, "send_raw: peer is this rank");
    PcTcpComm *c = as_tcp(base);
    TcpPeer *pe = &c->peers[peer];
    pthread_mutex_lock(&pe->send_mu);
    PcStatus st = pc_net_send_all(pe->fd, buf, n, pc_net_now() + base->timeout_s,
                                  c->stop_pipe[0]);
    pthread_mutex_unlock(&pe->send_mu);
    return st;
}
