/* faultproxy.h -- a TCP proxy between a client under test and PostgreSQL
 * that injects network faults on demand.
 *
 * The proxy listens on 127.0.0.1 (a port the kernel picks) and forwards
 * every connection it accepts to one upstream address (TCP or a Unix
 * socket), byte for byte, so TLS and SCRAM pass through it untouched. It
 * runs on a thread of its own with its own libev loop: it keeps forwarding
 * while the test's loop is busy or blocked, and the loop under test sees
 * only what a real network peer would show it.
 *
 * Faults:
 *   delay     every chunk is held N ms before it is forwarded (both ways);
 *   stall     new connections are accepted and then never forwarded nor
 *             answered; or the connections open now stop forwarding in one
 *             or both directions (stalling only the server's direction lets
 *             a query reach the server and holds back its answer);
 *   cut       each connection open now is closed after N more bytes from
 *             the server (the N bytes are delivered first: a cut mid-message);
 *   reset     each connection open now is reset (RST, through SO_LINGER 0);
 *   half-close  each connection open now gets a FIN towards the client while
 *             the rest stays as it is (with the client direction stalled, the
 *             client sees the end of the stream while its writes block);
 *   refuse    the listener is closed (connects get ECONNREFUSED) or every new
 *             connection is accepted and closed at once.
 * Counters: connections accepted and open, bytes each way, faults applied.
 *
 * Every control call is applied by the proxy thread before it returns, so a
 * fault is in effect when the call returns. The calls are thread-safe and
 * may be made from inside callbacks of the test's loop (they wait for the
 * proxy thread only, which never blocks). Nothing here uses Criterion: the
 * soak program links it too. Errors are reported through return values,
 * never printed. */
#ifndef AORM_TEST_FAULTPROXY_H
#define AORM_TEST_FAULTPROXY_H

#include <stdbool.h>
#include <stddef.h>

typedef struct fproxy fproxy;

enum { FP_UP = 1, FP_DOWN = 2, FP_BOTH = 3 }; /* client->server, server->client */

typedef enum fp_listen_mode {
    FP_ACCEPT = 0,       /* forward (the default) */
    FP_REFUSE_CLOSED,    /* the listener is closed: connects are refused */
    FP_REFUSE_ACCEPT     /* accept, then close at once */
} fp_listen_mode;

typedef struct fp_counters {
    long accepted;    /* connections accepted (refused ones included) */
    long live;        /* connections open now */
    long bytes_up;    /* client -> server bytes forwarded */
    long bytes_down;  /* server -> client bytes forwarded */
    long cuts;        /* connections closed by fp_cut_after() */
    long resets;      /* connections reset by fp_reset_live() */
    long refused;     /* connections closed at accept (FP_REFUSE_ACCEPT) */
    long stalled;     /* connections accepted while fp_stall_new() was on */
    long upstream_failures; /* upstream connects that failed */
} fp_counters;

/* Starts a proxy to host:port (a numeric address or a name, resolved once
 * here; a host starting with '/' is a Unix socket directory, as in libpq).
 * Returns NULL with errno set on failure. */
fproxy *fp_start(const char *host, int port);
/* The same, with the upstream taken from a libpq conninfo (hostaddr, else
 * host, and port; the first entry of multi-host lists). */
fproxy *fp_start_dsn(const char *conninfo);
/* Stops the thread, closes every connection and frees the proxy. Accepts NULL. */
void fp_stop(fproxy *p);

/* The proxy's port on 127.0.0.1. */
int fp_port(const fproxy *p);

/* `conninfo` rewritten to go through the proxy: every option kept except
 * host, hostaddr and port; a host name is kept (TLS verifies it) with
 * hostaddr=127.0.0.1, an address becomes 127.0.0.1; port is the proxy's.
 * libpq matches password-file lines on the port, so when the conninfo (or
 * PGPASSFILE) names a password file, the proxy writes a private copy
 * (mode 0600, removed by fp_stop) whose lines for the upstream port name
 * the proxy's, and the result names that copy: no password ever appears in
 * the string. `extra` (may be NULL) is appended last, so that its settings
 * win. Returns a malloc'd string, or NULL when conninfo does not parse or
 * the password file cannot be copied. */
char *fp_conninfo(fproxy *p, const char *conninfo, const char *extra);

/* Fault controls (see the top of this file). */
void fp_delay(fproxy *p, int ms);              /* 0: none */
void fp_stall_new(fproxy *p, bool on);         /* connections accepted from now on */
void fp_stall_live(fproxy *p, int dirs);       /* FP_UP | FP_DOWN for the open connections; 0 resumes */
void fp_cut_after(fproxy *p, long nbytes);     /* the open connections, after nbytes more from the server */
void fp_reset_live(fproxy *p);                 /* the open connections, now */
void fp_half_close_live(fproxy *p);            /* the open connections: FIN to the client, now */
int fp_listen(fproxy *p, fp_listen_mode mode); /* 0, or -errno when the port cannot be bound again */

void fp_counters_get(fproxy *p, fp_counters *out);

#endif
