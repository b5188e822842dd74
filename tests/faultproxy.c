/* faultproxy.c -- the fault-injecting TCP proxy of the tests (see
 * faultproxy.h).
 *
 * Owns: one thread with its own libev loop, the listening socket, and per
 * accepted connection the client socket, the upstream socket and two byte
 * queues (one per direction). Must not: touch the caller's loop, print, or
 * block its own loop (upstream connects are non-blocking, writes wait for
 * writability).
 *
 * Control calls hand one command at a time to the thread (a mutex, an
 * ev_async to wake it, a condition variable to wait for it to be applied),
 * so that a fault is in effect when the call returns. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* accept4 */
#endif
#include "faultproxy.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* A direction stops reading its source while this much waits to be written. */
#define FP_HIGH_WATER (256 * 1024)
#define FP_READ_CHUNK (64 * 1024)

typedef struct chunk {
    struct chunk *next;
    double at;       /* loop time from which it may be forwarded (delay) */
    size_t len, off; /* bytes held, bytes already written */
    char data[];
} chunk;

struct fp_conn;

/* One direction of a connection: from its source socket to its sink. */
typedef struct fp_pipe {
    struct fp_conn *c;
    int dir;         /* FP_UP (client -> server) or FP_DOWN */
    ev_io rd;        /* readable source */
    ev_io wr;        /* writable sink, while a write would block */
    ev_timer hold;   /* the head chunk's release time (delay) */
    chunk *head, *tail;
    size_t queued;
    bool eof;        /* the source closed or failed */
    bool stalled;
    long cut_left;   /* FP_DOWN: bytes still forwarded before the cut; -1 none */
} fp_pipe;

typedef struct fp_conn {
    struct fp_conn *prev, *next;
    struct fproxy *p;
    int cfd, sfd;     /* client, upstream (-1: none) */
    bool connecting;  /* the upstream connect is in progress */
    bool sink_only;   /* stalled at accept: client bytes are read and dropped */
    ev_io conn_w;     /* upstream connect completion */
    fp_pipe up, down;
} fp_conn;

enum fp_cmd {
    CMD_NONE = 0,
    CMD_DELAY,      /* arg: ms */
    CMD_STALL_NEW,  /* arg: 0 / 1 */
    CMD_STALL_LIVE, /* arg: FP_UP | FP_DOWN */
    CMD_CUT,        /* arg: bytes */
    CMD_RESET,
    CMD_HALF_CLOSE,
    CMD_LISTEN,     /* arg: fp_listen_mode */
    CMD_STOP
};

struct fproxy {
    pthread_t thread;
    struct ev_loop *loop;
    ev_async wake;
    ev_io acc;
    int lfd;
    int port;
    struct sockaddr_storage up;
    socklen_t uplen;
    fp_conn *conns;

    /* settings, read and written by the proxy thread only */
    int delay_ms;
    bool stall_new;
    fp_listen_mode mode;

    /* the command slot */
    pthread_mutex_t cmd_mu; /* one commander at a time */
    pthread_mutex_t mu;     /* guards the fields below */
    pthread_cond_t cv;
    int cmd;
    long arg;
    int cmd_rc;
    unsigned long posted, applied;

    _Atomic long accepted, live, bytes_up, bytes_down, cuts, resets, refused, stalled, upstream_failures;

    int upstream_port;
    char passfile[64]; /* the private password file of fp_conninfo(), or "" */
};

/* ---- connections ----------------------------------------------------------- */

static int pipe_source(const fp_pipe *pp) { return pp->dir == FP_UP ? pp->c->cfd : pp->c->sfd; }
static int pipe_sink(const fp_pipe *pp) { return pp->dir == FP_UP ? pp->c->sfd : pp->c->cfd; }

static void pipe_stop(fp_pipe *pp) {
    struct ev_loop *L = pp->c->p->loop;
    ev_io_stop(L, &pp->rd);
    ev_io_stop(L, &pp->wr);
    ev_timer_stop(L, &pp->hold);
}

static void pipe_clear(fp_pipe *pp) {
    for (chunk *k = pp->head, *n; k; k = n) {
        n = k->next;
        free(k);
    }
    pp->head = pp->tail = NULL;
    pp->queued = 0;
}

/* Closes both sides and frees c; `rst` resets the client side. */
static void conn_close(fp_conn *c, bool rst) {
    fproxy *p = c->p;
    pipe_stop(&c->up);
    pipe_stop(&c->down);
    ev_io_stop(p->loop, &c->conn_w);
    pipe_clear(&c->up);
    pipe_clear(&c->down);
    if (c->cfd >= 0) {
        if (rst) {
            struct linger lg = {1, 0};
            setsockopt(c->cfd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        }
        close(c->cfd);
    }
    if (c->sfd >= 0) close(c->sfd);
    if (c->prev) c->prev->next = c->next;
    else p->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    atomic_fetch_sub(&p->live, 1);
    free(c);
}

/* Writes what may be written, sets the watchers from the pipe's state, and
 * closes the connection when this direction is finished. Returns false when
 * the connection was closed (c is freed). */
static bool pipe_pump(fp_pipe *pp) {
    fp_conn *c = pp->c;
    fproxy *p = c->p;
    struct ev_loop *L = p->loop;
    int sink = pipe_sink(pp);
    bool sink_ready = sink >= 0 && !(pp->dir == FP_UP && c->connecting) && !c->sink_only;
    double now = ev_now(L);
    bool blocked = false;

    if (!pp->stalled && sink_ready) {
        while (pp->head && pp->head->at <= now) {
            chunk *k = pp->head;
            ssize_t n = send(sink, k->data + k->off, k->len - k->off, MSG_NOSIGNAL);
            if (n < 0) {
                if (errno == EINTR) continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK) {
                    blocked = true;
                    break;
                }
                conn_close(c, false);
                return false;
            }
            atomic_fetch_add(pp->dir == FP_UP ? &p->bytes_up : &p->bytes_down, (long)n);
            k->off += (size_t)n;
            pp->queued -= (size_t)n;
            if (k->off == k->len) {
                pp->head = k->next;
                if (!pp->head) pp->tail = NULL;
                free(k);
            }
        }
    }

    if (!pp->head && (pp->eof || pp->cut_left == 0)) {
        if (pp->cut_left == 0 && !pp->eof) atomic_fetch_add(&p->cuts, 1);
        conn_close(c, false);
        return false;
    }

    /* watchers */
    if (!pp->stalled && sink_ready && blocked) ev_io_start(L, &pp->wr);
    else ev_io_stop(L, &pp->wr);
    ev_timer_stop(L, &pp->hold);
    if (!pp->stalled && sink_ready && !blocked && pp->head && pp->head->at > now) {
        ev_timer_set(&pp->hold, pp->head->at - now, 0.);
        ev_timer_start(L, &pp->hold);
    }
    bool want_read = pipe_source(pp) >= 0 && !pp->eof && !pp->stalled && pp->queued < FP_HIGH_WATER &&
                     pp->cut_left != 0 && !(pp->dir == FP_DOWN && (c->connecting || c->sink_only));
    if (want_read) ev_io_start(L, &pp->rd);
    else ev_io_stop(L, &pp->rd);
    return true;
}

static void on_pipe_read(struct ev_loop *L, ev_io *w, int revents) {
    fp_pipe *pp = w->data;
    fp_conn *c = pp->c;
    fproxy *p = c->p;
    /* every chunk has the same size, so that the allocator recycles them
     * instead of fragmenting (the soak measures the process's memory) */
    chunk *k = malloc(sizeof(*k) + FP_READ_CHUNK);
    if (!k) {
        conn_close(c, false);
        return;
    }
    size_t want = FP_READ_CHUNK;
    if (pp->cut_left > 0 && (size_t)pp->cut_left < want) want = (size_t)pp->cut_left;
    ssize_t n = recv(pipe_source(pp), k->data, want, 0);
    int err = errno;
    if (n <= 0 || c->sink_only) free(k);
    if (n < 0) {
        if (err == EINTR || err == EAGAIN || err == EWOULDBLOCK) return;
        pp->eof = true;
    } else if (n == 0) {
        pp->eof = true;
    } else if (c->sink_only) {
        return; /* stalled at accept: dropped, never answered */
    } else {
        k->next = NULL;
        k->at = ev_now(L) + p->delay_ms / 1000.0;
        k->len = (size_t)n;
        k->off = 0;
        if (pp->tail) pp->tail->next = k;
        else pp->head = k;
        pp->tail = k;
        pp->queued += (size_t)n;
        if (pp->cut_left > 0) pp->cut_left -= n;
    }
    if (c->sink_only && pp->eof) {
        conn_close(c, false);
        return;
    }
    pipe_pump(pp);
}

static void on_pipe_write(struct ev_loop *L, ev_io *w, int revents) { pipe_pump(w->data); }
static void on_pipe_hold(struct ev_loop *L, ev_timer *w, int revents) { pipe_pump(w->data); }

static void pipe_init(fp_pipe *pp, fp_conn *c, int dir) {
    pp->c = c;
    pp->dir = dir;
    pp->cut_left = -1;
    int src = dir == FP_UP ? c->cfd : c->sfd;
    int sink = dir == FP_UP ? c->sfd : c->cfd;
    ev_io_init(&pp->rd, on_pipe_read, src >= 0 ? src : 0, EV_READ);
    ev_io_init(&pp->wr, on_pipe_write, sink >= 0 ? sink : 0, EV_WRITE);
    ev_timer_init(&pp->hold, on_pipe_hold, 0., 0.);
    pp->rd.data = pp->wr.data = pp->hold.data = pp;
}

/* Both directions; false when the connection was closed. */
static bool conn_pump(fp_conn *c) { return pipe_pump(&c->up) && pipe_pump(&c->down); }

static void on_upstream_connected(struct ev_loop *L, ev_io *w, int revents) {
    fp_conn *c = w->data;
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(c->sfd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
    if (err == EINPROGRESS) return;
    ev_io_stop(L, w);
    if (err) {
        atomic_fetch_add(&c->p->upstream_failures, 1);
        conn_close(c, false);
        return;
    }
    c->connecting = false;
    conn_pump(c);
}

static void accept_one(fproxy *p, int cfd) {
    atomic_fetch_add(&p->accepted, 1);
    if (p->mode == FP_REFUSE_ACCEPT) {
        atomic_fetch_add(&p->refused, 1);
        close(cfd);
        return;
    }
    fp_conn *c = calloc(1, sizeof(*c));
    if (!c) {
        close(cfd);
        return;
    }
    c->p = p;
    c->cfd = cfd;
    c->sfd = -1;
    c->next = p->conns;
    if (p->conns) p->conns->prev = c;
    p->conns = c;
    atomic_fetch_add(&p->live, 1);
    if (p->stall_new) {
        c->sink_only = true;
        atomic_fetch_add(&p->stalled, 1);
    } else {
        c->sfd = socket(p->up.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    }
    pipe_init(&c->up, c, FP_UP);
    pipe_init(&c->down, c, FP_DOWN);
    ev_io_init(&c->conn_w, on_upstream_connected, c->sfd >= 0 ? c->sfd : 0, EV_WRITE);
    c->conn_w.data = c;
    if (!c->sink_only) {
        int rc = c->sfd < 0 ? -1 : connect(c->sfd, (struct sockaddr *)&p->up, p->uplen);
        if (rc < 0 && c->sfd >= 0 && errno == EINPROGRESS) {
            c->connecting = true;
            ev_io_start(p->loop, &c->conn_w);
        } else if (rc < 0) {
            atomic_fetch_add(&p->upstream_failures, 1);
            conn_close(c, false);
            return;
        }
    }
    conn_pump(c);
}

static void on_accept(struct ev_loop *L, ev_io *w, int revents) {
    fproxy *p = w->data;
    for (;;) {
        int fd = accept4(p->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return; /* EAGAIN, or a transient failure: the next readiness retries */
        accept_one(p, fd);
    }
}

/* ---- listener -------------------------------------------------------------- */

/* Binds 127.0.0.1:port (0: any) and listens. Returns 0 or -errno. */
static int listen_open(fproxy *p, int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((uint16_t)port);
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, 1024) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    socklen_t len = sizeof(a);
    if (getsockname(fd, (struct sockaddr *)&a, &len) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    p->lfd = fd;
    p->port = ntohs(a.sin_port);
    return 0;
}

static void listen_close(fproxy *p) {
    if (p->lfd < 0) return;
    if (p->loop) ev_io_stop(p->loop, &p->acc);
    close(p->lfd);
    p->lfd = -1;
}

static void listen_watch(fproxy *p) {
    ev_io_init(&p->acc, on_accept, p->lfd, EV_READ);
    p->acc.data = p;
    ev_io_start(p->loop, &p->acc);
}

/* ---- commands -------------------------------------------------------------- */

static int apply(fproxy *p, int cmd, long arg) {
    fp_conn *c, *next;
    switch ((enum fp_cmd)cmd) {
    case CMD_NONE:
        return 0;
    case CMD_DELAY:
        p->delay_ms = (int)arg;
        return 0;
    case CMD_STALL_NEW:
        p->stall_new = arg != 0;
        return 0;
    case CMD_STALL_LIVE:
        for (c = p->conns; c; c = next) {
            next = c->next;
            if (c->sink_only) continue;
            c->up.stalled = (arg & FP_UP) != 0;
            c->down.stalled = (arg & FP_DOWN) != 0;
            conn_pump(c);
        }
        return 0;
    case CMD_CUT:
        for (c = p->conns; c; c = next) {
            next = c->next;
            if (c->sink_only) continue;
            c->down.cut_left = arg < 0 ? -1 : arg;
            conn_pump(c);
        }
        return 0;
    case CMD_RESET:
        for (c = p->conns; c; c = next) {
            next = c->next;
            atomic_fetch_add(&p->resets, 1);
            conn_close(c, true);
        }
        return 0;
    case CMD_HALF_CLOSE:
        for (c = p->conns; c; c = next) {
            next = c->next;
            shutdown(c->cfd, SHUT_WR);
            c->down.stalled = true; /* nothing more may go to the client */
            conn_pump(c);
        }
        return 0;
    case CMD_LISTEN:
        if (arg == FP_REFUSE_CLOSED) {
            listen_close(p);
        } else if (p->lfd < 0) {
            int rc = listen_open(p, p->port);
            if (rc < 0) return rc;
            listen_watch(p);
        }
        p->mode = (fp_listen_mode)arg;
        return 0;
    case CMD_STOP:
        while (p->conns) conn_close(p->conns, false);
        listen_close(p);
        ev_async_stop(p->loop, &p->wake);
        ev_break(p->loop, EVBREAK_ALL);
        return 0;
    }
    return -EINVAL;
}

static void on_wake(struct ev_loop *L, ev_async *w, int revents) {
    fproxy *p = w->data;
    pthread_mutex_lock(&p->mu);
    if (p->applied == p->posted) {
        pthread_mutex_unlock(&p->mu);
        return;
    }
    int cmd = p->cmd;
    long arg = p->arg;
    pthread_mutex_unlock(&p->mu);
    ev_now_update(L);
    int rc = apply(p, cmd, arg);
    pthread_mutex_lock(&p->mu);
    p->cmd_rc = rc;
    p->applied = p->posted;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

static int command(fproxy *p, int cmd, long arg) {
    pthread_mutex_lock(&p->cmd_mu);
    pthread_mutex_lock(&p->mu);
    p->cmd = cmd;
    p->arg = arg;
    p->posted++;
    pthread_mutex_unlock(&p->mu);
    ev_async_send(p->loop, &p->wake);
    pthread_mutex_lock(&p->mu);
    while (p->applied != p->posted) pthread_cond_wait(&p->cv, &p->mu);
    int rc = p->cmd_rc;
    pthread_mutex_unlock(&p->mu);
    pthread_mutex_unlock(&p->cmd_mu);
    return rc;
}

static void *proxy_main(void *arg) {
    fproxy *p = arg;
    ev_run(p->loop, 0);
    return NULL;
}

/* ---- public ------------------------------------------------------------------- */

static int resolve_upstream(fproxy *p, const char *host, int port) {
    memset(&p->up, 0, sizeof(p->up));
    if (host[0] == '/') {
        struct sockaddr_un *u = (struct sockaddr_un *)&p->up;
        u->sun_family = AF_UNIX;
        int n = snprintf(u->sun_path, sizeof(u->sun_path), "%s/.s.PGSQL.%d", host, port);
        if (n < 0 || (size_t)n >= sizeof(u->sun_path)) return -ENAMETOOLONG;
        p->uplen = sizeof(*u);
        return 0;
    }
    char service[16];
    snprintf(service, sizeof(service), "%d", port);
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    if (getaddrinfo(host, service, &hints, &res) != 0 || !res) return -EHOSTUNREACH;
    struct addrinfo *pick = res;
    for (struct addrinfo *a = res; a; a = a->ai_next)
        if (a->ai_family == AF_INET) {
            pick = a;
            break;
        }
    memcpy(&p->up, pick->ai_addr, pick->ai_addrlen);
    p->uplen = pick->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

fproxy *fp_start(const char *host, int port) {
    if (!host || port <= 0) {
        errno = EINVAL;
        return NULL;
    }
    fproxy *p = calloc(1, sizeof(*p));
    if (!p) return NULL;
    p->lfd = -1;
    p->upstream_port = port;
    int rc = resolve_upstream(p, host, port);
    if (rc == 0) rc = listen_open(p, 0);
    if (rc < 0) {
        free(p);
        errno = -rc;
        return NULL;
    }
    p->loop = ev_loop_new(EVFLAG_AUTO | EVFLAG_NOSIGMASK);
    if (!p->loop) {
        listen_close(p);
        free(p);
        errno = ENOMEM;
        return NULL;
    }
    pthread_mutex_init(&p->cmd_mu, NULL);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    ev_async_init(&p->wake, on_wake);
    p->wake.data = p;
    ev_async_start(p->loop, &p->wake);
    listen_watch(p);
    /* the thread takes no signals: they stay with the test's threads */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(&p->thread, NULL, proxy_main, p);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        listen_close(p);
        ev_loop_destroy(p->loop);
        free(p);
        errno = rc;
        return NULL;
    }
    return p;
}

/* The first entry of a comma-separated libpq list, in buf. */
static const char *first_of(const char *list, char *buf, size_t cap) {
    if (!list || !*list) return NULL;
    size_t n = strcspn(list, ",");
    if (n >= cap) n = cap - 1;
    memcpy(buf, list, n);
    buf[n] = '\0';
    return buf[0] ? buf : NULL;
}

fproxy *fp_start_dsn(const char *conninfo) {
    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &err);
    if (!opts) {
        PQfreemem(err);
        errno = EINVAL;
        return NULL;
    }
    char hostbuf[256], addrbuf[256], portbuf[32];
    const char *host = NULL, *addr = NULL, *port = NULL;
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (!strcmp(o->keyword, "host")) host = first_of(o->val, hostbuf, sizeof(hostbuf));
        else if (!strcmp(o->keyword, "hostaddr")) addr = first_of(o->val, addrbuf, sizeof(addrbuf));
        else if (!strcmp(o->keyword, "port")) port = first_of(o->val, portbuf, sizeof(portbuf));
    }
    const char *target = addr ? addr : host ? host : "/var/run/postgresql";
    int portno = port ? atoi(port) : 5432;
    fproxy *p = fp_start(target, portno);
    int e = errno;
    PQconninfoFree(opts);
    errno = e;
    return p;
}

void fp_stop(fproxy *p) {
    if (!p) return;
    command(p, CMD_STOP, 0);
    pthread_join(p->thread, NULL);
    ev_loop_destroy(p->loop);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    pthread_mutex_destroy(&p->cmd_mu);
    if (p->passfile[0]) unlink(p->passfile);
    free(p);
}

int fp_port(const fproxy *p) { return p->port; }

/* Appends kw='val' (quotes and backslashes escaped) to a growing string. */
static int append_kv(char **buf, size_t *len, size_t *cap, const char *kw, const char *val) {
    size_t need = strlen(kw) + 2 * strlen(val) + 5;
    if (*len + need + 1 > *cap) {
        size_t ncap = (*cap + need + 1) * 2;
        char *n = realloc(*buf, ncap);
        if (!n) return -1;
        *buf = n;
        *cap = ncap;
    }
    char *o = *buf + *len;
    o += sprintf(o, "%s%s='", *len ? " " : "", kw);
    for (const char *s = val; *s; s++) {
        if (*s == '\'' || *s == '\\') *o++ = '\\';
        *o++ = *s;
    }
    *o++ = '\'';
    *o = '\0';
    *len = (size_t)(o - *buf);
    return 0;
}

static bool is_address(const char *h) {
    unsigned char b[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, h, b) == 1 || inet_pton(AF_INET6, h, b) == 1;
}

/* The end of the next field of a password-file line (':' or the end;
 * backslash escapes a character). */
static const char *pass_field_end(const char *s) {
    while (*s && *s != ':' && *s != '\n') {
        if (*s == '\\' && s[1]) s++;
        s++;
    }
    return s;
}

/* Copies the password file `src` to a private file whose lines for the
 * upstream port (or any port) name the proxy's port instead. Returns 0 or
 * -errno. */
static int copy_passfile(fproxy *p, const char *src) {
    if (p->passfile[0]) return 0;
    FILE *in = fopen(src, "r");
    if (!in) return -errno;
    snprintf(p->passfile, sizeof(p->passfile), "/tmp/aorm-fproxy-pass.XXXXXX");
    int fd = mkstemp(p->passfile); /* mode 0600 */
    FILE *out = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (!out) {
        int e = errno;
        if (fd >= 0) {
            close(fd);
            unlink(p->passfile);
        }
        p->passfile[0] = '\0';
        fclose(in);
        return -e;
    }
    char upstream[16];
    snprintf(upstream, sizeof(upstream), "%d", p->upstream_port);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, in)) > 0) {
        const char *host_end = pass_field_end(line);
        if (*host_end != ':') continue; /* comments, blank and malformed lines */
        const char *port = host_end + 1, *port_end = pass_field_end(port);
        size_t plen = (size_t)(port_end - port);
        bool match = (plen == 1 && port[0] == '*') || (plen == strlen(upstream) && !memcmp(port, upstream, plen));
        if (!match) continue;
        fprintf(out, "%.*s%d%s", (int)(port - line), line, p->port, port_end);
        if (line[n - 1] != '\n') fputc('\n', out);
    }
    if (line) {
        explicit_bzero(line, cap);
        free(line);
    }
    fclose(in);
    int rc = fclose(out) == 0 ? 0 : -errno;
    if (rc < 0) {
        unlink(p->passfile);
        p->passfile[0] = '\0';
    }
    return rc;
}

char *fp_conninfo(fproxy *p, const char *conninfo, const char *extra) {
    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &err);
    if (!opts) {
        PQfreemem(err);
        return NULL;
    }
    char *buf = NULL;
    size_t len = 0, cap = 0;
    char hostbuf[256];
    const char *host = NULL;
    int rc = 0;
    const char *passfile = getenv("PGPASSFILE");
    bool has_password = false;
    for (PQconninfoOption *o = opts; o->keyword && rc == 0; o++) {
        if (!o->val) continue;
        if (!strcmp(o->keyword, "host")) {
            host = first_of(o->val, hostbuf, sizeof(hostbuf));
            continue;
        }
        if (!strcmp(o->keyword, "passfile")) {
            passfile = o->val;
            continue;
        }
        if (!strcmp(o->keyword, "password") && *o->val) has_password = true;
        if (!strcmp(o->keyword, "hostaddr") || !strcmp(o->keyword, "port")) continue;
        rc = append_kv(&buf, &len, &cap, o->keyword, o->val);
    }
    if (rc == 0 && passfile && *passfile && !has_password) {
        rc = copy_passfile(p, passfile);
        if (rc == 0) rc = append_kv(&buf, &len, &cap, "passfile", p->passfile);
    }
    char port[16];
    snprintf(port, sizeof(port), "%d", p->port);
    if (rc == 0 && host && host[0] != '/' && !is_address(host)) {
        rc = append_kv(&buf, &len, &cap, "host", host); /* kept for TLS host verification */
        if (rc == 0) rc = append_kv(&buf, &len, &cap, "hostaddr", "127.0.0.1");
    } else if (rc == 0) {
        rc = append_kv(&buf, &len, &cap, "host", "127.0.0.1");
    }
    if (rc == 0) rc = append_kv(&buf, &len, &cap, "port", port);
    PQconninfoFree(opts);
    if (rc == 0 && extra && *extra) {
        size_t n = strlen(extra);
        char *nb = realloc(buf, len + n + 2);
        if (!nb) rc = -1;
        else {
            buf = nb;
            buf[len++] = ' ';
            memcpy(buf + len, extra, n + 1);
            len += n;
        }
    }
    if (rc != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

void fp_delay(fproxy *p, int ms) { command(p, CMD_DELAY, ms); }
void fp_stall_new(fproxy *p, bool on) { command(p, CMD_STALL_NEW, on); }
void fp_stall_live(fproxy *p, int dirs) { command(p, CMD_STALL_LIVE, dirs); }
void fp_cut_after(fproxy *p, long nbytes) { command(p, CMD_CUT, nbytes); }
void fp_reset_live(fproxy *p) { command(p, CMD_RESET, 0); }
void fp_half_close_live(fproxy *p) { command(p, CMD_HALF_CLOSE, 0); }
int fp_listen(fproxy *p, fp_listen_mode mode) { return command(p, CMD_LISTEN, mode); }

void fp_counters_get(fproxy *p, fp_counters *out) {
    out->accepted = atomic_load(&p->accepted);
    out->live = atomic_load(&p->live);
    out->bytes_up = atomic_load(&p->bytes_up);
    out->bytes_down = atomic_load(&p->bytes_down);
    out->cuts = atomic_load(&p->cuts);
    out->resets = atomic_load(&p->resets);
    out->refused = atomic_load(&p->refused);
    out->stalled = atomic_load(&p->stalled);
    out->upstream_failures = atomic_load(&p->upstream_failures);
}
