/* httpd.h -- aorm-httpd's shared types: the configuration, a worker (one
 * thread: one libev loop, one aorm loop, one engine), a request and the
 * handlers' entry points.
 *
 * Lifecycle of a request. The HTTP layer (server.c) parses it, creates
 * its owner (an engine cancel group) and hands it to a handler
 * (handlers.c), which queues engine or session work with the request as
 * the callback's user pointer. Exactly one req_reply*() call ends the
 * handler's part: it queues the response in the connection's order, and
 * before the loop polls again the request's session and owner are freed
 * (the callbacks still pending run then with AORM_ECANCELED and must only
 * return, which every handler checks with req_gone()). A client that goes
 * away frees its requests the same way: nothing of a request's work calls
 * back after that. */
#ifndef HTTPD_H
#define HTTPD_H

#include <aorm/aorm.h>
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "template.h"

typedef struct config {
    const char *host;
    int port;
    int workers;
    const char *dsn;
    int pool, overflow;
    bool engine_only;
    const char *redis;          /* host:port, or NULL */
    const char *redis_user, *redis_password;
    int near_cache;             /* near-cache entries of the world region (0: Redis only) */
    FILE *access_log;           /* NULL: off */
    size_t max_header_bytes;    /* request line + headers */
    int max_headers;
    size_t max_body;
    int max_pipeline;           /* requests in flight per connection */
    double idle_timeout;        /* keep-alive connection with nothing to do */
    double request_timeout;     /* a request (or a response write) that takes longer from its first byte */
    double deadline;            /* per statement */
    double pool_timeout;
    double shutdown_grace;      /* in-flight requests get this long after SIGTERM */
} config;

typedef struct conn conn;
typedef struct worker worker;

typedef struct http_counters {
    uint64_t accepted, closed, requests, responses, status_2xx, status_4xx, status_5xx;
    uint64_t parse_errors, timeouts, cancelled; /* cancelled: requests freed unanswered (client gone) */
} http_counters;

typedef struct req {
    conn *c;
    worker *w;
    struct req *next;
    int method;                 /* http_parser's enum http_method */
    char *url;                  /* path?query, NUL-terminated, malloc'd */
    size_t url_len;
    char *path, *query;         /* into a copy of url; query may be NULL */
    char *body;
    size_t body_len;
    bool keep_alive;
    double started;
    aorm_owner *owner;          /* engine work of this request */
    aorm_session *s;            /* created by handlers that need one; freed on reply */
    void *ctx;                  /* handler state, freed with the request */
    void (*ctx_free)(void *);
    bool replied;               /* the handler has answered */
    bool gone;                  /* being freed (client gone): callbacks only return */
    int status;
    char *resp;                 /* the whole response, head and body */
    size_t resp_len;
} req;

struct worker {
    int index;
    const config *cfg;
    struct ev_loop *evl;
    aorm_loop *loop;
    aorm_engine *e;
    int lfd;
    uint64_t rng;
    tmpl *fortunes;
    aorm_stmt *world_proto;     /* SELECT of world: column positions for aorm_stmt_load */
    aorm_cache *cache;          /* /cached-queries: world rows in Redis; NULL without --redis */
    http_counters http;
    void *impl;                 /* server.c's part */
};

/* ---- server.c: replies -------------------------------------------------------- */

/** True when the request has been answered or is being freed: a callback
 * that sees it must return at once without touching anything else. */
static inline bool req_gone(const req *r) { return r->replied || r->gone; }

/** Answers r (status, content type, body copied). r's session and owner
 * are freed before the next poll (their callbacks then see req_gone()).
 * Callable from any callback; the caller returns right after. */
void req_reply(req *r, int status, const char *content_type, const char *body, size_t len);
/** Answers with a JSON value (taken over). */
void req_reply_json(req *r, int status, json_t *j);
/** {"error": message} (+ sqlstate, constraint from err when set). */
void req_reply_error(req *r, int status, const char *message, const aorm_error *err);
/** Maps an aorm error to a status: 409 unique violation, 422 foreign-key
 * and other data errors, 503 pool timeout or database unreachable, 504
 * deadline, 500 otherwise; then req_reply_error. */
void req_reply_aorm(req *r, const char *what, const aorm_error *err);
void req_reply_code(req *r, const char *what, int code);

/** Random integer in 1..n (per-worker xorshift). */
int32_t worker_random(worker *w, int32_t n);

/* ---- handlers.c -------------------------------------------------------------- */

/** Routes and starts the request. */
void handle_request(req *r);
/** Per-worker set-up of the handlers (templates, prototype statements);
 * 0 or -1. */
int handlers_init(worker *w);
void handlers_free(worker *w);
/** The /stats document of this worker (engine and HTTP counters). */
json_t *worker_stats_json(worker *w);

#endif
