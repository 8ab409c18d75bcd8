/* net.h — internals shared by the store (store.c) and the TCP transport (tcp.c): deadlines,
 * non-blocking socket helpers, little-endian packing, and two store extras the transport
 * needs. Not part of the communicator contract (comm.h); nothing outside csrc/comm/ uses it.
 *
 * Conventions: every helper takes an absolute deadline on the monotonic clock
 * (pc_net_now() + seconds); sockets are non-blocking and every wait is a poll() bounded by
 * the deadline. `abort_fd` (or -1) is a descriptor that becomes readable when the caller's
 * communicator is aborted; waits return PC_ERR_COMM as soon as it is. Failures return
 * PC_ERR_TIMEOUT or PC_ERR_COMM with a message giving the system's reason; callers prepend
 * what they were doing with pc_net_error().
 */
#ifndef PC_COMM_NET_H
#define PC_COMM_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "comm.h"

/* Seconds on the monotonic clock. */
double pc_net_now(void);

/* Prepend context to the calling thread's last error: the new message is
 * "<fmt ...>: <previous message>". Returns code. */
PcStatus pc_net_error(PcStatus code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Listen on every interface (IPv6 dual-stack when available, else IPv4) at `port` (0: an
 * ephemeral one). *fd_out is non-blocking; *port_out is the bound port. `what` names the
 * port in messages ("MASTER_PORT"); a port in use is a PC_ERR_COMM saying so. */
PcStatus pc_net_listen(int port, const char *what, int *fd_out, int *port_out);

/* Connect to host:port, retrying refused/unreachable attempts until the deadline (the peer
 * may not be listening yet). *fd_out is non-blocking with TCP_NODELAY. Messages name
 * `what` ("the master", "rank 3"). */
PcStatus pc_net_connect(const char *host, int port, double deadline, const char *what,
                        int *fd_out);

/* Accept one connection (non-blocking, TCP_NODELAY) before the deadline; PC_ERR_TIMEOUT
 * without a message when none came (the caller names who is missing). */
PcStatus pc_net_accept(int lfd, double deadline, int *fd_out);

/* Write / read exactly n bytes before the deadline. recv_all: PC_ERR_COMM "connection
 * closed by the peer" on EOF. */
PcStatus pc_net_send_all(int fd, const void *buf, size_t n, double deadline, int abort_fd);
PcStatus pc_net_recv_all(int fd, void *buf, size_t n, double deadline, int abort_fd);

/* Wait until fd is readable (POLLIN) or writable (POLLOUT) before the deadline.
 * PC_OK, PC_ERR_TIMEOUT (no message) or PC_ERR_COMM (aborted / poll error). */
PcStatus pc_net_wait(int fd, short events, double deadline, int abort_fd);

/* Numeric address of the local end of a connected socket ("10.0.0.5", "::1"). */
PcStatus pc_net_local_host(int fd, char *host, size_t hostlen);

/* "ranks 2, 5 and 7" style list of up to 16 entries into buf ("rank 3" for one). */
const char *pc_net_rank_list(const int *ranks, int n, char *buf, size_t buflen);

/* ---- little-endian packing ---- */

static inline void pc_put_u32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static inline void pc_put_u64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static inline uint32_t pc_get_u32(const unsigned char *p) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)p[i] << (8 * i);
    return v;
}
static inline uint64_t pc_get_u64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* FNV-1a over n bytes (header checksums). */
static inline uint32_t pc_fnv1a(const unsigned char *p, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 16777619u;
    return h;
}

/* ---- store extras for the transport (store.c) ---- */

/* pc_store_get with an explicit absolute deadline; PC_ERR_TIMEOUT names the key. */
PcStatus pc_store_get_until(PcStore *s, const char *key, double deadline, void **val,
                            size_t *n);
/* Whether key is present now (no waiting). */
PcStatus pc_store_check(PcStore *s, const char *key, bool *present);
/* Numeric address of this process's end of the store connection: the interface that
 * routes to the master, which peers on other hosts can reach. */
PcStatus pc_store_local_host(PcStore *s, char *host, size_t hostlen);

#endif /* PC_COMM_NET_H */
