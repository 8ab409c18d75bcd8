/* net.c — non-blocking socket helpers with deadlines, shared by store.c and tcp.c (net.h).
 *
 * Invariants: every descriptor these helpers return is non-blocking and close-on-exec;
 * no call blocks past its deadline; SIGPIPE is never raised (MSG_NOSIGNAL). Errors carry
 * the system's reason (strerror / gai_strerror) and never print.
 */
#define _GNU_SOURCE
#include "net.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

double pc_net_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

PcStatus pc_net_error(PcStatus code, const char *fmt, ...) {
    char prev[1024], head[1024];
    snprintf(prev, sizeof prev, "%s", pc_last_error()); /* copy: pc_set_error reuses it */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(head, sizeof head, fmt, ap);
    va_end(ap);
    if (prev[0]) return pc_set_error(code, "%s: %s", head, prev);
    return pc_set_error(code, "%s", head);
}

/* Milliseconds left until the deadline, for poll() (0 when past). */
static int ms_left(double deadline) {
    double left = deadline - pc_net_now();
    if (left <= 0) return 0;
    if (left > 3600.0) return 3600 * 1000;
    return (int)(left * 1000.0) + 1;
}

static void set_socket_options(int fd) {
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    (void)setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
}

PcStatus pc_net_wait(int fd, short events, double deadline, int abort_fd) {
    for (;;) {
        struct pollfd pf[2] = {{fd, events, 0}, {abort_fd, POLLIN, 0}};
        int np = abort_fd >= 0 ? 2 : 1;
        int ms = ms_left(deadline);
        int r = poll(pf, (nfds_t)np, ms);
        if (r < 0) {
            if (errno == EINTR) continue;
            return pc_set_error(PC_ERR_COMM, "poll failed: %s", strerror(errno));
        }
        if (np == 2 && (pf[1].revents & POLLIN))
            return pc_set_error(PC_ERR_COMM, "the communicator was aborted");
        if (pf[0].revents) return PC_OK; /* ready, or an error the next call will report */
        if (r == 0 && pc_net_now() >= deadline) return PC_ERR_TIMEOUT;
    }
}

/* ---- listening and connecting ---- */

static PcStatus listen_family(int family, int port, const char *what, int *fd_out) {
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return pc_set_error(PC_ERR_COMM, "socket: %s", strerror(errno));
    int one = 1, zero = 0;
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_storage ss;
    socklen_t len;
    memset(&ss, 0, sizeof ss);
    if (family == AF_INET6) {
        (void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        a->sin6_addr = in6addr_any;
        a->sin6_port = htons((uint16_t)port);
        len = sizeof *a;
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        a->sin_addr.s_addr = htonl(INADDR_ANY);
        a->sin_port = htons((uint16_t)port);
        len = sizeof *a;
    }
    if (bind(fd, (struct sockaddr *)&ss, len) < 0) {
        int e = errno;
        close(fd);
        if (e == EADDRINUSE)
            return pc_set_error(PC_ERR_COMM,
                                "%s %d is already in use on this host (another job or a "
                                "previous run still holds it); choose a free port",
                                what, port);
        if (e == EACCES)
            return pc_set_error(PC_ERR_COMM, "%s %d: permission denied (ports below 1024 "
                                "need privileges)", what, port);
        return pc_set_error(PC_ERR_COMM, "cannot bind %s %d: %s", what, port, strerror(e));
    }
    if (listen(fd, SOMAXCONN) < 0) {
        int e = errno;
        close(fd);
        return pc_set_error(PC_ERR_COMM, "cannot listen on %s %d: %s", what, port,
                            strerror(e));
    }
    *fd_out = fd;
    return PC_OK;
}

PcStatus pc_net_listen(int port, const char *what, int *fd_out, int *port_out) {
    if (port < 0 || port > 65535)
        return pc_set_error(PC_ERR_INVALID, "%s must be in [0, 65535], got %d", what, port);
    int fd = -1;
    PcStatus st = listen_family(AF_INET6, port, what, &fd);
    if (st != PC_OK) {
        /* No IPv6 on this host: plain IPv4. A port in use fails the same way there. */
        char v6err[512];
        snprintf(v6err, sizeof v6err, "%s", pc_last_error());
        st = listen_family(AF_INET, port, what, &fd);
        if (st != PC_OK && strstr(v6err, "already in use"))
            return pc_set_error(PC_ERR_COMM, "%s", v6err);
        if (st != PC_OK) return st;
    }
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0) {
        int e = errno;
        close(fd);
        return pc_set_error(PC_ERR_COMM, "getsockname: %s", strerror(e));
    }
    *port_out = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                         : ntohs(((struct sockaddr_in *)&ss)->sin_port);
    *fd_out = fd;
    return PC_OK;
}

/* One non-blocking connect attempt to one resolved address, bounded by the deadline.
 * Returns 0 on success (fd in *fd_out) or the errno of the failure. */
static int connect_once(const struct addrinfo *ai, double deadline, int *fd_out) {
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return errno;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
        if (errno != EINPROGRESS) {
            int e = errno;
            close(fd);
            return e;
        }
        struct pollfd pf = {fd, POLLOUT, 0};
        int r;
        do {
            r = poll(&pf, 1, ms_left(deadline));
        } while (r < 0 && errno == EINTR);
        if (r <= 0) {
            close(fd);
            return ETIMEDOUT;
        }
        int err = 0;
        socklen_t el = sizeof err;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0) err = errno;
        if (err != 0) {
            close(fd);
            return err;
        }
    }
    set_socket_options(fd);
    *fd_out = fd;
    return 0;
}

PcStatus pc_net_connect(const char *host, int port, double deadline, const char *what,
                        int *fd_out) {
    char portstr[16];
    snprintf(portstr, sizeof portstr, "%d", port);
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int g = getaddrinfo(host, portstr, &hints, &res);
    if (g != 0)
        return pc_set_error(PC_ERR_COMM, "cannot resolve the address of %s '%s': %s", what,
                            host, gai_strerror(g));
    double start = pc_net_now(), backoff = 0.01;
    int last = 0;
    for (;;) {
        for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
            last = connect_once(ai, deadline, fd_out);
            if (last == 0) {
                freeaddrinfo(res);
                return PC_OK;
            }
        }
        /* Refused / unreachable / reset: the listener may not be up yet. Retry. */
        double now = pc_net_now();
        if (now >= deadline) break;
        double nap = backoff < deadline - now ? backoff : deadline - now;
        struct timespec ts = {(time_t)nap, (long)((nap - (double)(time_t)nap) * 1e9)};
        nanosleep(&ts, NULL);
        if (backoff < 0.2) backoff *= 2;
    }
    freeaddrinfo(res);
    return pc_set_error(PC_ERR_TIMEOUT, "could not connect to %s at %s:%d within %.1fs (%s)",
                        what, host, port, pc_net_now() - start, strerror(last));
}

PcStatus pc_net_accept(int lfd, double deadline, int *fd_out) {
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            set_socket_options(fd);
            *fd_out = fd;
            return PC_OK;
        }
        if (errno == EINTR || errno == ECONNABORTED) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return pc_set_error(PC_ERR_COMM, "accept: %s", strerror(errno));
        PcStatus st = pc_net_wait(lfd, POLLIN, deadline, -1);
        if (st != PC_OK) return st;
    }
}

/* ---- exact reads and writes ---- */

PcStatus pc_net_send_all(int fd, const void *buf, size_t n, double deadline, int abort_fd) {
    const unsigned char *p = buf;
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
            return pc_set_error(PC_ERR_COMM, "send failed: %s", strerror(errno));
        PcStatus st = pc_net_wait(fd, POLLOUT, deadline, abort_fd);
        if (st == PC_ERR_TIMEOUT)
            return pc_set_error(PC_ERR_TIMEOUT, "the peer stopped reading (send timed out)");
        if (st != PC_OK) return st;
    }
    return PC_OK;
}

PcStatus pc_net_recv_all(int fd, void *buf, size_t n, double deadline, int abort_fd) {
    unsigned char *p = buf;
    while (n > 0) {
        ssize_t r = recv(fd, p, n, 0);
        if (r > 0) {
            p += r;
            n -= (size_t)r;
            continue;
        }
        if (r == 0) return pc_set_error(PC_ERR_COMM, "connection closed by the peer");
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return pc_set_error(PC_ERR_COMM, "receive failed: %s", strerror(errno));
        PcStatus st = pc_net_wait(fd, POLLIN, deadline, abort_fd);
        if (st == PC_ERR_TIMEOUT)
            return pc_set_error(PC_ERR_TIMEOUT, "no answer (receive timed out)");
        if (st != PC_OK) return st;
    }
    return PC_OK;
}

/* ---- addresses ---- */

PcStatus pc_net_local_host(int fd, char *host, size_t hostlen) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
        return pc_set_error(PC_ERR_COMM, "getsockname: %s", strerror(errno));
    int g = getnameinfo((struct sockaddr *)&ss, len, host, (socklen_t)hostlen, NULL, 0,
                        NI_NUMERICHOST);
    if (g != 0) return pc_set_error(PC_ERR_COMM, "getnameinfo: %s", gai_strerror(g));
    /* An IPv4 peer seen through a dual-stack socket: publish the plain IPv4 form. */
    if (strncmp(host, "::ffff:", 7) == 0 && strchr(host + 7, '.'))
        memmove(host, host + 7, strlen(host + 7) + 1);
    return PC_OK;
}

const char *pc_net_rank_list(const int *ranks, int n, char *buf, size_t buflen) {
    size_t used = 0;
    buf[0] = '\0';
    int shown = n < 16 ? n : 16;
    used += (size_t)snprintf(buf, buflen, "%s", n == 1 ? "rank " : "ranks ");
    for (int i = 0; i < shown && used < buflen; i++) {
        const char *sep = i == 0 ? "" : (i == n - 1 ? " and " : ", ");
        used += (size_t)snprintf(buf + used, buflen - used, "%s%d", sep, ranks[i]);
    }
    if (shown < n && used < buflen)
        snprintf(buf + used, buflen - used, " and %d more", n - shown);
    return buf;
}
