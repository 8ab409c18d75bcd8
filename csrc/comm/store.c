/* store.c — the bootstrap key-value store of comm.h: a TCP server hosted by rank 0 and the
 * client every rank (rank 0 included, over its own connection) uses to set, wait for and
 * count keys. It carries the transport's addresses and NCCL's unique id, and its barrier
 * names the ranks that never arrived.
 *
 * Protocol (little-endian). Request: a 32-byte header {magic "PCS1", op, key length,
 * reserved, value length (u64), wait in ms (u64)}, the key, the value. Response: a 16-byte
 * header {magic, status, value length (u64)} and the value. Ops: SET (store a value,
 * waking waiters), GET (the value once the key exists; NOTFOUND when `wait` ms pass first),
 * ADD (add a little-endian int64 to a counter key; returns the new value).
 *
 * Invariants:
 *   - the server is one thread polling its listener, its clients and a wake pipe; it
 *     answers each client's requests in order and parks a GET until the key is set or its
 *     wait expires, so it never blocks on one client;
 *   - a client has at most one request in flight (its mutex); a reply that does not come
 *     within the request's deadline breaks the client (the stream may be out of step), and
 *     every later call fails naming the store's address;
 *   - values live until the store closes (bootstrap data is small).
 * Exports (comm.h): pc_store_open, pc_store_set, pc_store_get, pc_store_barrier,
 * pc_store_close; (net.h) pc_store_get_until, pc_store_check, pc_store_local_host.
 */
#define _GNU_SOURCE
#include "net.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <unistd.h>

#define STORE_MAGIC 0x31534350u /* "PCS1" */
#define REQ_HDR 32
#define RESP_HDR 16
#define MAX_KEY 4096
#define MAX_VAL ((uint64_t)1 << 30)
#define REPLY_GRACE_S 2.0 /* how long after a GET's wait a client still expects the reply */

enum { OP_SET = 1, OP_GET = 2, OP_ADD = 3 };
enum { ST_OK = 0, ST_NOTFOUND = 1 };

/* ---- server ---- */

typedef struct StoreEntry {
    struct StoreEntry *next;
    char *key;    /* owned, NUL-terminated */
    void *val;    /* owned (malloc), may be NULL when n == 0 */
    size_t n;
} StoreEntry;

typedef struct StoreConn {
    int fd;                 /* owned */
    unsigned char *in;      /* owned: bytes received and not yet handled */
    size_t in_len, in_cap;
    char *wait_key;         /* owned: a parked GET's key, or NULL */
    double wait_deadline;
} StoreConn;

typedef struct StoreServer {
    int lfd;                /* owned: listener */
    int wake[2];            /* owned: writing wake[1] stops the thread */
    pthread_t thread;
    StoreConn *conns;       /* owned array of n_conns */
    int n_conns, cap_conns;
    StoreEntry *entries;    /* owned list (touched by the server thread only) */
} StoreServer;

static StoreEntry *entry_find(StoreServer *sv, const char *key) {
    for (StoreEntry *e = sv->entries; e; e = e->next)
        if (strcmp(e->key, key) == 0) return e;
    return NULL;
}

/* Store a copy of val under key. 0, or -1 when out of memory. */
static int entry_put(StoreServer *sv, const char *key, const void *val, size_t n) {
    void *copy = NULL;
    if (n > 0) {
        copy = malloc(n);
        if (!copy) return -1;
        memcpy(copy, val, n);
    }
    StoreEntry *e = entry_find(sv, key);
    if (!e) {
        e = calloc(1, sizeof *e);
        char *k = strdup(key);
        if (!e || !k) {
            free(e);
            free(k);
            free(copy);
            return -1;
        }
        e->key = k;
        e->next = sv->entries;
        sv->entries = e;
    } else {
        free(e->val);
    }
    e->val = copy;
    e->n = n;
    return 0;
}

/* Send one reply; false when the client is gone or stuck (the caller drops it). */
static bool conn_reply(StoreConn *c, uint32_t status, const void *val, size_t n) {
    unsigned char h[RESP_HDR];
    pc_put_u32(h, STORE_MAGIC);
    pc_put_u32(h + 4, status);
    pc_put_u64(h + 8, (uint64_t)n);
    double deadline = pc_net_now() + REPLY_GRACE_S;
    if (pc_net_send_all(c->fd, h, sizeof h, deadline, -1) != PC_OK) return false;
    if (n > 0 && pc_net_send_all(c->fd, val, n, deadline, -1) != PC_OK) return false;
    return true;
}

static void conn_free(StoreConn *c) {
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    free(c->in);
    c->in = NULL;
    free(c->wait_key);
    c->wait_key = NULL;
}

/* Handle every complete request buffered on c (stops at a parked GET). false: drop c. */
static bool conn_handle(StoreServer *sv, StoreConn *c) {
    size_t off = 0;
    bool ok = true;
    while (ok && !c->wait_key && c->in_len - off >= REQ_HDR) {
        const unsigned char *h = c->in + off;
        uint32_t magic = pc_get_u32(h), op = pc_get_u32(h + 4), klen = pc_get_u32(h + 8);
        uint64_t vlen = pc_get_u64(h + 16), wait_ms = pc_get_u64(h + 24);
        if (magic != STORE_MAGIC || klen == 0 || klen > MAX_KEY || vlen > MAX_VAL) {
            ok = false; /* not a pipec store client, or a corrupted stream */
            break;
        }
        if (c->in_len - off < REQ_HDR + klen + vlen) break; /* wait for the rest */
        char key[MAX_KEY + 1];
        memcpy(key, h + REQ_HDR, klen);
        key[klen] = '\0';
        const unsigned char *val = h + REQ_HDR + klen;
        off += REQ_HDR + klen + (size_t)vlen;
        if (op == OP_SET) {
            ok = entry_put(sv, key, val, (size_t)vlen) == 0 && conn_reply(c, ST_OK, NULL, 0);
            /* wake the GETs parked on this key (c itself is not parked) */
            StoreEntry *e = entry_find(sv, key);
            for (int i = 0; ok && e && i < sv->n_conns; i++) {
                StoreConn *w = &sv->conns[i];
                if (w->wait_key && strcmp(w->wait_key, key) == 0) {
                    free(w->wait_key);
                    w->wait_key = NULL;
                    if (!conn_reply(w, ST_OK, e->val, e->n)) {
                        shutdown(w->fd, SHUT_RDWR); /* the poll loop drops it */
                    }
                }
            }
        } else if (op == OP_GET) {
            StoreEntry *e = entry_find(sv, key);
            if (e) {
                ok = conn_reply(c, ST_OK, e->val, e->n);
            } else if (wait_ms == 0) {
                ok = conn_reply(c, ST_NOTFOUND, NULL, 0);
            } else {
                c->wait_key = strdup(key);
                c->wait_deadline = pc_net_now() + (double)wait_ms / 1000.0;
                ok = c->wait_key != NULL;
            }
        } else if (op == OP_ADD && vlen == 8) {
            StoreEntry *e = entry_find(sv, key);
            int64_t cur = 0;
            if (e && e->n == 8) cur = (int64_t)pc_get_u64(e->val);
            cur += (int64_t)pc_get_u64(val);
            unsigned char out[8];
            pc_put_u64(out, (uint64_t)cur);
            ok = entry_put(sv, key, out, 8) == 0 && conn_reply(c, ST_OK, out, 8);
        } else {
            ok = false;
        }
    }
    if (off > 0) {
        memmove(c->in, c->in + off, c->in_len - off);
        c->in_len -= off;
    }
    return ok;
}

/* Read what is available on c. false: the client left (or broke the protocol). */
static bool conn_read(StoreServer *sv, StoreConn *c) {
    for (;;) {
        if (c->in_cap - c->in_len < 65536) {
            size_t cap = c->in_cap ? c->in_cap * 2 : 65536 * 2;
            unsigned char *p = realloc(c->in, cap);
            if (!p) return false;
            c->in = p;
            c->in_cap = cap;
        }
        ssize_t r = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
        if (r > 0) {
            c->in_len += (size_t)r;
            if (!conn_handle(sv, c)) return false;
            continue;
        }
        if (r == 0) return false;
        if (errno == EINTR) continue;
        return errno == EAGAIN || errno == EWOULDBLOCK;
    }
}

static void server_drop(StoreServer *sv, int i) {
    conn_free(&sv->conns[i]);
    sv->conns[i] = sv->conns[sv->n_conns - 1];
    sv->n_conns--;
}

static void *server_main(void *arg) {
    StoreServer *sv = arg;
    struct pollfd *pf = NULL;
    int pf_cap = 0;
    for (;;) {
        int np = 2 + sv->n_conns;
        if (np > pf_cap) {
            struct pollfd *q = realloc(pf, sizeof *pf * (size_t)(np + 16));
            if (!q) break; /* out of memory: stop serving; clients see the store vanish */
            pf = q;
            pf_cap = np + 16;
        }
        pf[0] = (struct pollfd){sv->wake[0], POLLIN, 0};
        pf[1] = (struct pollfd){sv->lfd, POLLIN, 0};
        double now = pc_net_now(), next = -1;
        for (int i = 0; i < sv->n_conns; i++) {
            pf[2 + i] = (struct pollfd){sv->conns[i].fd, POLLIN, 0};
            if (sv->conns[i].wait_key && (next < 0 || sv->conns[i].wait_deadline < next))
                next = sv->conns[i].wait_deadline;
        }
        int ms = next < 0 ? -1 : (next <= now ? 0 : (int)((next - now) * 1000.0) + 1);
        int r = poll(pf, (nfds_t)np, ms);
        if (r < 0 && errno != EINTR) break;
        if (r > 0 && (pf[0].revents & POLLIN)) break;
        int n_polled = np - 2;
        /* clients first (accepting appends to conns, which would shift nothing we index) */
        for (int i = n_polled - 1; i >= 0; i--) {
            if (!pf[2 + i].revents) continue;
            if (!conn_read(sv, &sv->conns[i])) server_drop(sv, i);
        }
        if (r > 0 && (pf[1].revents & POLLIN)) {
            for (;;) {
                int fd = -1;
                if (pc_net_accept(sv->lfd, 0.0, &fd) != PC_OK) break;
                if (sv->n_conns == sv->cap_conns) {
                    int cap = sv->cap_conns ? sv->cap_conns * 2 : 16;
                    StoreConn *q = realloc(sv->conns, sizeof *q * (size_t)cap);
                    if (!q) {
                        close(fd);
                        break;
                    }
                    sv->conns = q;
                    sv->cap_conns = cap;
                }
                sv->conns[sv->n_conns++] = (StoreConn){.fd = fd};
            }
        }
        /* expire parked GETs, then handle what their clients sent meanwhile */
        now = pc_net_now();
        for (int i = sv->n_conns - 1; i >= 0; i--) {
            StoreConn *c = &sv->conns[i];
            if (!c->wait_key || c->wait_deadline > now) continue;
            free(c->wait_key);
            c->wait_key = NULL;
            if (!conn_reply(c, ST_NOTFOUND, NULL, 0) || !conn_handle(sv, c)) server_drop(sv, i);
        }
    }
    free(pf);
    return NULL;
}

static void server_free(StoreServer *sv) {
    if (!sv) return;
    for (int i = 0; i < sv->n_conns; i++) conn_free(&sv->conns[i]);
    free(sv->conns);
    while (sv->entries) {
        StoreEntry *e = sv->entries;
        sv->entries = e->next;
        free(e->key);
        free(e->val);
        free(e);
    }
    if (sv->lfd >= 0) close(sv->lfd);
    if (sv->wake[0] >= 0) close(sv->wake[0]);
    if (sv->wake[1] >= 0) close(sv->wake[1]);
    free(sv);
}

static PcStatus server_start(int port, StoreServer **out) {
    StoreServer *sv = calloc(1, sizeof *sv);
    if (!sv) return pc_set_error(PC_ERR_OOM, "pc_store_open: out of memory");
    sv->lfd = sv->wake[0] = sv->wake[1] = -1;
    int bound = 0;
    PcStatus st = pc_net_listen(port, "MASTER_PORT", &sv->lfd, &bound);
    if (st != PC_OK) {
        server_free(sv);
        return st;
    }
    if (pipe2(sv->wake, O_CLOEXEC) < 0) {
        st = pc_set_error(PC_ERR_COMM, "pc_store_open: pipe: %s", strerror(errno));
        server_free(sv);
        return st;
    }
    int e = pthread_create(&sv->thread, NULL, server_main, sv);
    if (e != 0) {
        server_free(sv);
        return pc_set_error(PC_ERR_COMM, "pc_store_open: cannot start the server thread: %s",
                            strerror(e));
    }
    *out = sv;
    return PC_OK;
}

static void server_stop(StoreServer *sv) {
    if (!sv) return;
    char b = 1;
    ssize_t w;
    do {
        w = write(sv->wake[1], &b, 1);
    } while (w < 0 && errno == EINTR);
    pthread_join(sv->thread, NULL);
    server_free(sv);
}

/* ---- client ---- */

struct PcStore {
    int fd;                 /* owned: connection to the server */
    pthread_mutex_t mu;     /* one request at a time */
    bool broken;            /* under mu: the connection is out of step or gone */
    int world;
    double timeout_s;
    char host[256];
    int port;
    StoreServer *server;    /* owned: rank 0's server, else NULL */
};

/* One request/response. *status gets the server's status; the value (if any) is malloc'd
 * into *out (or discarded when out is NULL). Takes s->mu. */
static PcStatus store_request(PcStore *s, uint32_t op, const char *key, const void *val,
                              size_t n, uint64_t wait_ms, double deadline, uint32_t *status,
                              void **out, size_t *out_n) {
    size_t klen = strlen(key);
    if (klen == 0 || klen > MAX_KEY)
        return pc_set_error(PC_ERR_INVALID, "store key must have 1 to %d bytes, got %zu",
                            MAX_KEY, klen);
    if ((uint64_t)n > MAX_VAL)
        return pc_set_error(PC_ERR_INVALID, "store value for '%s' is %zu bytes (at most %llu)",
                            key, n, (unsigned long long)MAX_VAL);
    unsigned char h[REQ_HDR] = {0};
    pc_put_u32(h, STORE_MAGIC);
    pc_put_u32(h + 4, op);
    pc_put_u32(h + 8, (uint32_t)klen);
    pc_put_u64(h + 16, (uint64_t)n);
    pc_put_u64(h + 24, wait_ms);
    void *v = NULL;
    PcStatus st = PC_OK;
    pthread_mutex_lock(&s->mu);
    if (s->broken) {
        pthread_mutex_unlock(&s->mu);
        return pc_set_error(PC_ERR_COMM, "the connection to the store at %s:%d was lost "
                            "earlier (rank 0 exited or stopped answering)", s->host, s->port);
    }
    PC_TRY_GOTO(st, pc_net_send_all(s->fd, h, sizeof h, deadline, -1));
    PC_TRY_GOTO(st, pc_net_send_all(s->fd, key, klen, deadline, -1));
    if (n > 0) PC_TRY_GOTO(st, pc_net_send_all(s->fd, val, n, deadline, -1));
    unsigned char r[RESP_HDR];
    PC_TRY_GOTO(st, pc_net_recv_all(s->fd, r, sizeof r, deadline, -1));
    uint64_t rn = pc_get_u64(r + 8);
    if (pc_get_u32(r) != STORE_MAGIC || rn > MAX_VAL) {
        st = pc_set_error(PC_ERR_COMM, "malformed reply (is MASTER_PORT a pipec store?)");
        goto fail;
    }
    if (rn > 0) {
        v = malloc((size_t)rn);
        if (!v) {
            st = pc_set_error(PC_ERR_OOM, "out of memory for a %llu-byte value",
                              (unsigned long long)rn);
            goto fail;
        }
        PC_TRY_GOTO(st, pc_net_recv_all(s->fd, v, (size_t)rn, deadline, -1));
    }
    pthread_mutex_unlock(&s->mu);
    *status = pc_get_u32(r + 4);
    if (out) {
        *out = v;
        *out_n = (size_t)rn;
    } else {
        free(v);
    }
    return PC_OK;
fail:
    s->broken = true;
    pthread_mutex_unlock(&s->mu);
    free(v);
    if (st == PC_ERR_OOM) return st;
    return pc_net_error(st, "lost the store at %s:%d during a request for '%s' (rank 0 hosts "
                        "it: it exited, died or stopped answering)", s->host, s->port, key);
}

PcStatus pc_store_open(const char *host, int port, bool is_server, int world, double timeout_s,
                       PcStore **out) {
    *out = NULL;
    PC_CHECK(host && host[0], PC_ERR_INVALID, "pc_store_open: MASTER_ADDR is empty");
    PC_CHECK(strlen(host) < 256, PC_ERR_INVALID, "pc_store_open: MASTER_ADDR is too long");
    PC_CHECK(port > 0 && port <= 65535, PC_ERR_INVALID,
             "pc_store_open: MASTER_PORT must be in [1, 65535], got %d", port);
    PC_CHECK(world >= 1, PC_ERR_INVALID, "pc_store_open: world size must be >= 1, got %d",
             world);
    PC_CHECK(timeout_s > 0, PC_ERR_INVALID, "pc_store_open: timeout must be > 0, got %g s",
             timeout_s);
    double deadline = pc_net_now() + timeout_s;
    PcStore *s = calloc(1, sizeof *s);
    if (!s) return pc_set_error(PC_ERR_OOM, "pc_store_open: out of memory");
    s->fd = -1;
    s->world = world;
    s->timeout_s = timeout_s;
    s->port = port;
    snprintf(s->host, sizeof s->host, "%s", host);
    pthread_mutex_init(&s->mu, NULL);
    PcStatus st = PC_OK;
    if (is_server) {
        st = server_start(port, &s->server);
        if (st != PC_OK) {
            st = pc_net_error(st, "rank 0 cannot host the store");
            goto fail;
        }
    }
    st = pc_net_connect(host, port, deadline, is_server ? "its own store" : "the master (rank 0)",
                        &s->fd);
    if (st != PC_OK) {
        char why[1024];
        snprintf(why, sizeof why, "%s", pc_last_error());
        if (is_server)
            st = pc_set_error(st, "rank 0 hosts the store on port %d but cannot reach it "
                              "through MASTER_ADDR=%s: %s", port, host, why);
        else
            st = pc_set_error(st, "%s; is rank 0 running, and are MASTER_ADDR=%s and "
                              "MASTER_PORT=%d right?", why, host, port);
        goto fail;
    }
    *out = s;
    return PC_OK;
fail:
    pc_store_close(s);
    return st;
}

PcStatus pc_store_set(PcStore *s, const char *key, const void *val, size_t n) {
    uint32_t status = 0;
    PC_TRY(store_request(s, OP_SET, key, val, n, 0, pc_net_now() + s->timeout_s, &status,
                         NULL, NULL));
    return PC_OK;
}

PcStatus pc_store_get_until(PcStore *s, const char *key, double deadline, void **val,
                            size_t *n) {
    *val = NULL;
    *n = 0;
    double left = deadline - pc_net_now();
    uint64_t wait_ms = left > 0 ? (uint64_t)(left * 1000.0) + 1 : 1;
    uint32_t status = 0;
    PC_TRY(store_request(s, OP_GET, key, NULL, 0, wait_ms, deadline + REPLY_GRACE_S, &status,
                         val, n));
    if (status != ST_OK)
        return pc_set_error(PC_ERR_TIMEOUT, "timed out after %gs waiting for key '%s' in the "
                            "store at %s:%d", s->timeout_s, key, s->host, s->port);
    return PC_OK;
}

PcStatus pc_store_get(PcStore *s, const char *key, void **val, size_t *n) {
    return pc_store_get_until(s, key, pc_net_now() + s->timeout_s, val, n);
}

PcStatus pc_store_check(PcStore *s, const char *key, bool *present) {
    uint32_t status = 0;
    PC_TRY(store_request(s, OP_GET, key, NULL, 0, 0, pc_net_now() + s->timeout_s, &status,
                         NULL, NULL));
    *present = status == ST_OK;
    return PC_OK;
}

PcStatus pc_store_local_host(PcStore *s, char *host, size_t hostlen) {
    return pc_net_local_host(s->fd, host, hostlen);
}

static PcStatus store_add(PcStore *s, const char *key, int64_t delta, int64_t *out) {
    unsigned char d[8];
    pc_put_u64(d, (uint64_t)delta);
    void *v = NULL;
    size_t n = 0;
    uint32_t status = 0;
    PC_TRY(store_request(s, OP_ADD, key, d, 8, 0, pc_net_now() + s->timeout_s, &status, &v,
                         &n));
    if (status != ST_OK || n != 8) {
        free(v);
        return pc_set_error(PC_ERR_COMM, "store at %s:%d: malformed reply to add('%s')",
                            s->host, s->port, key);
    }
    *out = (int64_t)pc_get_u64(v);
    free(v);
    return PC_OK;
}

/* Barrier: each rank marks "<name>/<rank>" and adds one to "<name>/count"; the last one in
 * sets "<name>/done" to "1", which everyone waits for. The first rank to time out reads the
 * marks to name who is missing and publishes that message as "<name>/done", so the other
 * ranks fail at once with the same diagnosis (rank 0 may exit and take the store with it). */
PcStatus pc_store_barrier(PcStore *s, const char *name, int rank) {
    PC_CHECK(rank >= 0 && rank < s->world, PC_ERR_INVALID,
             "pc_store_barrier: rank %d is out of range for world size %d", rank, s->world);
    double deadline = pc_net_now() + s->timeout_s;
    char key[512];
    snprintf(key, sizeof key, "barrier/%s/%d", name, rank);
    PC_TRY(pc_store_set(s, key, "1", 1));
    snprintf(key, sizeof key, "barrier/%s/count", name);
    int64_t arrived = 0;
    PC_TRY(store_add(s, key, 1, &arrived));
    snprintf(key, sizeof key, "barrier/%s/done", name);
    if (arrived == s->world) PC_TRY(pc_store_set(s, key, "1", 1));
    void *v = NULL;
    size_t n = 0;
    PcStatus st = pc_store_get_until(s, key, deadline, &v, &n);
    if (st == PC_OK && !(n == 1 && ((char *)v)[0] == '1')) {
        st = pc_set_error(PC_ERR_TIMEOUT, "%.*s", (int)n, (char *)v); /* another rank's verdict */
        free(v);
        return st;
    }
    free(v);
    if (st != PC_ERR_TIMEOUT) return st;

    int *missing = malloc(sizeof *missing * (size_t)s->world);
    if (!missing) return pc_set_error(PC_ERR_OOM, "pc_store_barrier: out of memory");
    int n_missing = 0;
    for (int r = 0; r < s->world; r++) {
        bool present = false;
        snprintf(key, sizeof key, "barrier/%s/%d", name, r);
        if (pc_store_check(s, key, &present) != PC_OK) {
            free(missing);
            return pc_net_error(PC_ERR_TIMEOUT, "barrier '%s' timed out after %gs on rank "
                                "%d", name, s->timeout_s, rank);
        }
        if (!present) missing[n_missing++] = r;
    }
    char list[256], msg[1024];
    pc_net_rank_list(missing, n_missing, list, sizeof list);
    free(missing);
    snprintf(msg, sizeof msg, "barrier '%s' timed out after %gs on rank %d: %s of world size "
             "%d never arrived", name, s->timeout_s, rank, list, s->world);
    snprintf(key, sizeof key, "barrier/%s/done", name);
    (void)pc_store_set(s, key, msg, strlen(msg)); /* best effort: tell the others */
    if (s->server) {
        /* the host's process usually exits on this error, taking the store with it: keep
         * serving a moment so ranks that timed out at the same time can read the verdict */
        struct timespec ts = {(time_t)REPLY_GRACE_S, 0};
        nanosleep(&ts, NULL);
    }
    return pc_set_error(PC_ERR_TIMEOUT, "%s", msg);
}

void pc_store_close(PcStore *s) {
    if (!s) return;
    if (s->fd >= 0) close(s->fd);
    s->fd = -1;
    server_stop(s->server);
    s->server = NULL;
    pthread_mutex_destroy(&s->mu);
    free(s);
}
