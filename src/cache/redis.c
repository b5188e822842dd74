/* redis.c -- the Redis connection under the second-level cache: hiredis's
 * async protocol core (command formatting, the reply parser, the callback
 * list) driven by aorm's loop binding, plus what hiredis 0.14 does not
 * have: command deadlines, reconnects with backoff, a circuit breaker and
 * one write per loop turn.
 *
 * Owns: the aorm_redis, its one redisAsyncContext at a time (hiredis frees
 * a context by itself when it fails; its cleanup hook is where the client
 * learns that), the watcher and timers, the pending commands (rreq) and
 * the copies of the options' strings. Must not: include <ev.h> (the
 * watchers come from aorm_loop), call a user callback from inside the
 * call that queued the command, let hiredis write (it would write() to a
 * socket the peer may have closed, raising SIGPIPE, and would leave the
 * AUTH password in freed memory), or log the password.
 *
 * How hiredis is driven. Its context holds a table of hooks (add/del read,
 * add/del write, cleanup) that this file implements over one aorm_io:
 *   - reading is left to hiredis (redisAsyncHandleRead parses replies and
 *     runs their callbacks in order);
 *   - writing is ours: hiredis appends each formatted command to its output
 *     buffer (c.obuf, an sds string) and asks for write readiness; we
 *     ignore that request once connected and send the whole buffer from
 *     the before-poll stage, once per turn, with send(MSG_NOSIGNAL). Only
 *     when the socket is full is the write watcher armed to send the rest;
 *   - connection setup: before the socket is connected the write watcher
 *     is armed and hiredis's own write handler (with an empty buffer)
 *     detects the connect and its failure.
 *
 * Life of a command (rreq): formatted when queued. While a connection is
 * ready it is handed to hiredis at once (its bytes join the output buffer,
 * its callback hiredis's list): it is *in flight*. Otherwise it *waits* in
 * our list, and is handed over when a connection becomes ready. The list
 * holds the in-flight commands first, then the waiting ones, in order.
 * hiredis calls every callback it was given exactly once: with the reply,
 * or with NULL when the context goes away. A command that timed out in
 * flight is marked `done` and taken off the list; hiredis's later NULL
 * call only frees it.
 *
 * Re-entrancy: every entry from the loop (watcher, timers, before-poll)
 * is bracketed by enter()/leave(). aorm_redis_free() inside that bracket
 * only sets a flag; leave() frees when the outermost entry unwinds, after
 * hiredis has returned. Closing a context (conn_drop) from inside one of
 * hiredis's callbacks is deferred by hiredis itself (its in-callback
 * flag). */
#include <arpa/inet.h>
#include <errno.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <hiredis/sds.h>
#include <netdb.h>
#include <stdarg.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>

#include "aorm/redis.h"
#include "cache/redis_int.h"
#include "util/util.h"

/* ---- types ---------------------------------------------------------------- */

/* Output buffers up to this size are kept between turns; larger ones are
 * freed once written. */
#define OBUF_KEEP (256u * 1024u)

typedef enum rconn_state {
    RS_IDLE,       /* no connection: the reconnect timer runs, or the client closes */
    RS_CONNECTING, /* socket connect in progress: the write watcher waits for it */
    RS_HANDSHAKE,  /* connected; AUTH / SELECT / CLIENT SETNAME sent, replies awaited */
    RS_READY       /* commands go straight to the connection */
} rconn_state;

typedef struct rreq rreq;
struct rreq {
    rreq *prev, *next;   /* in r->head..r->tail: in flight first, then waiting */
    aorm_redis *r;
    aorm_redis_cb cb;    /* NULL: nobody wants the outcome */
    void *user;
    double deadline;     /* monotonic seconds; 0 none */
    char *buf;           /* the formatted command until it is handed to hiredis */
    size_t len;
    bool sent;           /* handed to hiredis: hiredis will call on_reply once */
    bool done;           /* outcome delivered while hiredis still holds it */
};

/* One pair of connection hooks: the options' (first) and internal ones. */
typedef struct rhook {
    aorm_redis_conn_cb on_ready, on_lost;
    void *user;
    bool removed; /* removed while the hooks ran: compacted afterwards */
} rhook;

struct aorm_redis {
    aorm_loop *loop;
    aorm_redis_options o; /* strings point at the copies below */
    char *host, *unix_path, *username, *password, *client_name;
    char where[128];      /* "127.0.0.1:6379" or "unix:/path", for messages */
    void *data;

    /* the connection */
    rconn_state state;
    redisAsyncContext *ac; /* NULL in RS_IDLE */
    aorm_io *io;
    bool reading;          /* hiredis asked for read readiness */
    bool write_armed;      /* write watcher on: connect pending or socket full */
    bool dying;            /* ac is being freed: hand it nothing more */
    bool wake_armed;       /* aorm_loop_wake() done since the last before-poll */
    int handshake_left;    /* replies of the handshake still awaited */
    size_t secret_left;    /* bytes at the head of obuf that hold the password */
    redisReplyObjectFunctions fns; /* hiredis's reply builders, checked (reader_*) */
    redisReplyObjectFunctions *orig_fns;

    /* why the current context is being closed, when we close it */
    int drop_code;
    char drop_msg[400];
    char errbuf[512];      /* message handed to callbacks of one failure */
    char reasonbuf[400];   /* conn_reason()'s message for hiredis's own errors */

    /* commands */
    rreq *head, *tail;
    int in_flight, waiting;

    /* timers */
    aorm_timer *deadline_timer; /* earliest command deadline */
    double deadline_at;         /* what deadline_timer is armed for */
    aorm_timer *connect_timer;
    aorm_timer *retry_timer;    /* reconnect backoff and breaker cooldown */

    /* failures and the breaker */
    int failures;          /* consecutive */
    bool first_attempt_done;
    uint64_t rng;

    aorm_redis_stats st;

    /* connection hooks */
    rhook *hooks;
    int nhooks, caphooks;
    int hooks_running;     /* run_hooks() nesting */
    bool in_ready_hook;    /* commands queued now go before the waiting ones */

    /* a subscriber: channels subscribed on every connection */
    bool subscriber;
    char **channels;
    int nchannels;
    aorm_redis_message_cb on_message;
    aorm_redis_conn_cb on_subscribed;
    void *sub_user;
    int sub_pending;       /* confirmations still awaited on this connection */
    bool subscribed;       /* every channel confirmed on this connection */
    aorm_timer *sub_timer; /* deadline of the confirmations, then the heartbeat */
    double last_rx;        /* monotonic time data last arrived on this connection */
    double ping_at;        /* a heartbeat PING unanswered since then; 0 none */

    /* teardown */
    int depth;             /* enter() nesting */
    bool free_requested;   /* aorm_redis_free() called inside a callback */
    bool closing;          /* real_free() under way */
};

/* ---- small helpers ---------------------------------------------------------- */

static double mono_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void rlog(aorm_redis *r, aorm_log_level lvl, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void rlog(aorm_redis *r, aorm_log_level lvl, const char *fmt, ...) {
    if (!r->o.log || lvl > r->o.log_level) return;
    char buf[768];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (n < 0) return;
    r->o.log(lvl, buf, r->o.log_user); /* truncated beats nothing */
}

static void wipe_free(char *s) {
    if (!s) return;
    explicit_bzero(s, strlen(s));
    free(s);
}

static void enter(aorm_redis *r) { r->depth++; }
static void real_free(aorm_redis *r);
/* Returns false when the client was freed: touch nothing of it then. */
static bool leave(aorm_redis *r) {
    aorm__assert(r->depth > 0);
    if (--r->depth == 0 && r->free_requested && !r->closing) {
        real_free(r);
        return false;
    }
    return true;
}

/* ---- commands: list and delivery -------------------------------------------- */

static void list_unlink(aorm_redis *r, rreq *c) {
    if (c->prev) c->prev->next = c->next;
    else r->head = c->next;
    if (c->next) c->next->prev = c->prev;
    else r->tail = c->prev;
    c->prev = c->next = NULL;
    if (c->sent) r->in_flight--;
    else r->waiting--;
    /* an idle client keeps no timer: ev_run() may return */
    if (!r->head) aorm_timer_stop(r->deadline_timer);
}

static void list_append(aorm_redis *r, rreq *c) {
    c->prev = r->tail;
    c->next = NULL;
    if (r->tail) r->tail->next = c;
    else r->head = c;
    r->tail = c;
    if (c->sent) r->in_flight++;
    else r->waiting++;
}

/* Puts a command just handed to hiredis after the last one in flight,
 * ahead of the waiting ones (on_ready's commands go out first). */
static void list_insert_sent(aorm_redis *r, rreq *c) {
    rreq *w = r->head;
    while (w && w->sent) w = w->next;
    if (!w) {
        list_append(r, c);
        return;
    }
    c->next = w;
    c->prev = w->prev;
    if (w->prev) w->prev->next = c;
    else r->head = c;
    w->prev = c;
    r->in_flight++;
}

static void cmd_free(rreq *c) {
    free(c->buf);
    free(c);
}

/* Calls c's callback once with a reply or an error. Once the client is
 * being freed every outcome becomes AORM_ECANCELED. c is off the list. */
static void deliver(aorm_redis *r, rreq *c, redisReply *reply, int code, const char *msg) {
    if (r->free_requested || r->closing) {
        reply = NULL;
        code = AORM_ECANCELED;
        msg = "the Redis client was freed";
    }
    aorm_error err = {0};
    if (!reply) {
        err.code = code;
        err.message = msg ? msg : aorm_strerror(code);
        err.detail = err.hint = err.constraint = err.table = err.column = "";
        r->st.errors++;
        if (code == AORM_ETIMEOUT) r->st.timeouts++;
    }
    if (c->cb) c->cb(r, reply, reply ? NULL : &err, c->user);
}

/* Fails every command that is not in flight (waiting for a connection).
 * Commands the callbacks queue meanwhile are appended behind `last` and
 * left alone, so a callback that retries cannot keep this loop going. */
static void fail_waiting(aorm_redis *r, int code, const char *msg) {
    rreq *c = r->head, *last = r->tail;
    while (c && c->sent && c != last) c = c->next;
    if (!c || c->sent) return;
    for (;;) {
        rreq *next = c->next; /* callbacks only append: next stays valid */
        bool end = c == last;
        list_unlink(r, c);
        deliver(r, c, NULL, code, msg);
        cmd_free(c);
        if (end) break;
        c = next;
    }
}

/* ---- the breaker and the backoff -------------------------------------------- */

static double jitter(aorm_redis *r) {
    /* xorshift64*: up to 20% off each delay, so a fleet does not reconnect in step */
    r->rng ^= r->rng >> 12;
    r->rng ^= r->rng << 25;
    r->rng ^= r->rng >> 27;
    uint64_t x = r->rng * 2685821657736338717ull;
    return 1.0 - 0.2 * (double)(x >> 11) / 9007199254740992.0;
}

static void schedule_retry(aorm_redis *r, int code) {
    double delay;
    if (r->st.breaker == AORM_REDIS_BREAKER_OPEN) {
        delay = r->o.breaker_cooldown;
    } else if (code == AORM_EAUTH) {
        delay = r->o.reconnect_max; /* refused credentials: no retry storm */
    } else {
        delay = r->o.reconnect_min;
        for (int i = 1; i < r->failures && delay < r->o.reconnect_max; i++) delay *= 2;
        if (delay > r->o.reconnect_max) delay = r->o.reconnect_max;
        delay *= jitter(r);
    }
    aorm_timer_start(r->retry_timer, delay);
}

/* One failure of the connection (attempt failed, connection lost or
 * closed by us). Opens the breaker at the threshold. */
static void note_failure(aorm_redis *r) {
    r->failures++;
    r->st.consecutive_failures = r->failures;
    bool open = r->st.breaker == AORM_REDIS_BREAKER_HALF_OPEN ||
                (r->o.breaker_threshold > 0 && r->failures >= r->o.breaker_threshold &&
                 r->st.breaker == AORM_REDIS_BREAKER_CLOSED);
    if (open) {
        r->st.breaker = AORM_REDIS_BREAKER_OPEN;
        r->st.breaker_opens++;
        rlog(r, AORM_LOG_WARN,
             "redis %s: circuit breaker open after %d consecutive failures; commands are refused for %g s", r->where,
             r->failures, r->o.breaker_cooldown);
    }
}

/* The server answered: the run of failures ends. */
static void note_success(aorm_redis *r) {
    if (r->failures == 0 && r->st.breaker == AORM_REDIS_BREAKER_CLOSED) return;
    r->failures = 0;
    r->st.consecutive_failures = 0;
    if (r->st.breaker != AORM_REDIS_BREAKER_CLOSED) {
        r->st.breaker = AORM_REDIS_BREAKER_CLOSED;
        rlog(r, AORM_LOG_INFO, "redis %s: circuit breaker closed", r->where);
    }
}

/* ---- connection hooks (on_ready / on_lost) ---------------------------------- */

/* Runs every on_ready (ready) or on_lost hook in order. Hooks added
 * meanwhile run too; removed ones no longer. The caller re-checks the
 * client's state afterwards: a hook may have freed it (deferred by the
 * caller's enter()) or dropped the connection. */
static void run_hooks(aorm_redis *r, bool ready) {
    r->hooks_running++;
    for (int i = 0; i < r->nhooks && !r->free_requested; i++) {
        rhook h = r->hooks[i]; /* the array may move when a hook adds one */
        if (h.removed) continue;
        aorm_redis_conn_cb fn = ready ? h.on_ready : h.on_lost;
        if (fn) fn(r, h.user);
    }
    if (--r->hooks_running == 0) {
        int k = 0;
        for (int i = 0; i < r->nhooks; i++)
            if (!r->hooks[i].removed) r->hooks[k++] = r->hooks[i];
        r->nhooks = k;
    }
}

int aorm__redis_hook_add(aorm_redis *r, aorm_redis_conn_cb on_ready, aorm_redis_conn_cb on_lost, void *user) {
    if (!r || r->closing || (!on_ready && !on_lost)) return AORM_EMISUSE;
    if (r->nhooks == r->caphooks) {
        int cap = r->caphooks ? r->caphooks * 2 : 4;
        rhook *h = realloc(r->hooks, (size_t)cap * sizeof(*h));
        if (!h) return AORM_ENOMEM;
        r->hooks = h;
        r->caphooks = cap;
    }
    r->hooks[r->nhooks++] = (rhook){on_ready, on_lost, user, false};
    return 0;
}

void aorm__redis_hook_remove(aorm_redis *r, aorm_redis_conn_cb on_ready, aorm_redis_conn_cb on_lost, void *user) {
    if (!r) return;
    for (int i = 0; i < r->nhooks; i++) {
        rhook *h = &r->hooks[i];
        if (h->removed || h->on_ready != on_ready || h->on_lost != on_lost || h->user != user) continue;
        if (r->hooks_running) {
            h->removed = true;
        } else {
            memmove(h, h + 1, (size_t)(r->nhooks - i - 1) * sizeof(*h));
            r->nhooks--;
        }
        return;
    }
}

uint64_t aorm__redis_conn_gen(const aorm_redis *r) { return r ? r->st.connects : 0; }

bool aorm__redis_connected(const aorm_redis *r) { return r && r->state == RS_READY && r->ac && !r->dying; }

/* ---- the connection: hooks hiredis calls ------------------------------------ */

static void io_update(aorm_redis *r) {
    if (!r->io) return;
    aorm_io_set(r->io, (r->reading ? AORM_READ : 0) | (r->write_armed ? AORM_WRITE : 0));
}

static bool ctx_connected(const redisAsyncContext *ac) { return (ac->c.flags & REDIS_CONNECTED) != 0; }

static void hook_add_read(void *p) {
    aorm_redis *r = p;
    r->reading = true;
    io_update(r);
}

static void hook_del_read(void *p) {
    aorm_redis *r = p;
    r->reading = false;
    io_update(r);
}

/* hiredis asks for write readiness after queueing a command. Once
 * connected we write from the before-poll stage instead; before that the
 * write event is how the connect completes. */
static void hook_add_write(void *p) {
    aorm_redis *r = p;
    if (r->ac && !ctx_connected(r->ac)) {
        r->write_armed = true;
        io_update(r);
    }
}

static void hook_del_write(void *p) {
    aorm_redis *r = p;
    r->write_armed = false;
    io_update(r);
}

static void conn_gone(aorm_redis *r, rconn_state was, int code, const char *msg);

/* Why the current context is going away, for the callbacks it fails. */
static void conn_reason(aorm_redis *r, const redisAsyncContext *ac, int *code, const char **msg) {
    if (r->drop_code) {
        *code = r->drop_code;
        *msg = r->drop_msg;
        return;
    }
    switch (ac->err) {
    case REDIS_ERR_PROTOCOL: *code = AORM_EPROTOCOL; break;
    case REDIS_ERR_OOM: *code = AORM_ENOMEM; break;
    default: *code = r->state == RS_READY ? AORM_ECONNLOST : AORM_ECONNECT; break;
    }
    snprintf(r->reasonbuf, sizeof(r->reasonbuf), "%s redis %s: %s",
             r->state == RS_READY ? "connection lost to" : "could not connect to", r->where,
             ac->errstr && *ac->errstr ? ac->errstr : aorm_strerror(*code));
    *msg = r->reasonbuf;
}

/* hiredis is freeing the context (its last step before redisFree): the
 * connection is gone. Every callback hiredis held has already run. */
static void hook_cleanup(void *p) {
    aorm_redis *r = p;
    redisAsyncContext *ac = r->ac;
    if (!ac) return;
    int code;
    const char *msg;
    conn_reason(r, ac, &code, &msg);
    snprintf(r->errbuf, sizeof(r->errbuf), "%s", msg);
    rconn_state was = r->state;
    aorm_io_free(r->io);
    r->io = NULL;
    r->ac = NULL;
    r->reading = r->write_armed = r->dying = false;
    r->state = RS_IDLE;
    r->drop_code = 0;
    r->secret_left = 0;
    r->sub_pending = 0;
    r->subscribed = false;
    r->ping_at = 0;
    aorm_timer_stop(r->connect_timer);
    if (r->sub_timer) aorm_timer_stop(r->sub_timer);
    if (r->closing) return;
    conn_gone(r, was, code, r->errbuf);
}

/* ---- reply builders: a reply nobody asked for ------------------------------- */

/* hiredis 0.14 aborts the process (an assert) on a non-error reply that
 * arrives when no callback is waiting, which a faulty server or anything
 * else on the port can send. A top-level reply object is built only after
 * the callbacks of every earlier reply were taken off the list, so an
 * empty list here means the reply is unsolicited: refuse to build it,
 * which makes the parser fail and hiredis close the connection. */
/* A subscribed context with no regular reply pending takes pub/sub
 * replies: arrays of two or more elements whose first two are strings,
 * and for "unsubscribe" a third one, an integer. hiredis asserts on (or
 * reads past) anything else there, so it is refused here. Elements are
 * built in order, so the kind (element 0) is known when the later ones
 * are checked. */
static bool in_pubsub(const aorm_redis *r) {
    return r->ac && (r->ac->c.flags & REDIS_SUBSCRIBED) && !r->ac->replies.head;
}

static bool pubsub_unsubscribe(const redisReadTask *parent) {
    const redisReply *a = parent->obj;
    const redisReply *kind = a && a->type == REDIS_REPLY_ARRAY && a->elements > 0 ? a->element[0] : NULL;
    return kind && kind->type == REDIS_REPLY_STRING && kind->len >= 11 &&
           strcasecmp(kind->str + kind->len - 11, "unsubscribe") == 0;
}

static bool reader_pubsub_ok(aorm_redis *r, const redisReadTask *t, int n) {
    bool ok;
    if (!t->parent) ok = t->type == REDIS_REPLY_ARRAY && n >= 2;
    else if (t->parent->parent) return true;
    else if (t->idx == 0) ok = t->type == REDIS_REPLY_STRING;
    else if (t->idx == 1) ok = t->type == REDIS_REPLY_STRING && (!pubsub_unsubscribe(t->parent) || t->parent->elements >= 3);
    else if (t->idx == 2) ok = !pubsub_unsubscribe(t->parent) || t->type == REDIS_REPLY_INTEGER;
    else return true;
    if (!ok && !r->drop_code) {
        r->drop_code = AORM_EPROTOCOL;
        snprintf(r->drop_msg, sizeof(r->drop_msg), "the server sent a malformed pub/sub message");
    }
    return ok;
}

static bool reader_expected_n(const redisReadTask *t, int n) {
    aorm_redis *r = t->privdata;
    if (in_pubsub(r) && !(t->type == REDIS_REPLY_ERROR && !t->parent)) return reader_pubsub_ok(r, t, n);
    if (t->parent) return true;
    if (r->ac && r->ac->replies.head) return true;
    if (t->type == REDIS_REPLY_ERROR) return true; /* hiredis closes on these itself */
    if (!r->drop_code) {
        r->drop_code = AORM_EPROTOCOL;
        snprintf(r->drop_msg, sizeof(r->drop_msg), "the server sent a reply nothing asked for");
    }
    return false;
}

static bool reader_expected(const redisReadTask *t) { return reader_expected_n(t, 0); }

static void *reader_string(const redisReadTask *t, char *s, size_t n) {
    aorm_redis *r = t->privdata;
    return reader_expected(t) ? r->orig_fns->createString(t, s, n) : NULL;
}

static void *reader_array(const redisReadTask *t, int n) {
    aorm_redis *r = t->privdata;
    return reader_expected_n(t, n) ? r->orig_fns->createArray(t, n) : NULL;
}

static void *reader_integer(const redisReadTask *t, long long v) {
    aorm_redis *r = t->privdata;
    return reader_expected(t) ? r->orig_fns->createInteger(t, v) : NULL;
}

static void *reader_nil(const redisReadTask *t) {
    aorm_redis *r = t->privdata;
    return reader_expected(t) ? r->orig_fns->createNil(t) : NULL;
}

/* ---- writing ---------------------------------------------------------------- */

/* Closes the current context, failing what it holds with (code, msg).
 * Safe inside hiredis's callbacks (hiredis then frees after the callback
 * returns). */
static void conn_drop(aorm_redis *r, int code, const char *msg) {
    if (!r->ac || r->dying) return;
    r->drop_code = code;
    snprintf(r->drop_msg, sizeof(r->drop_msg), "%s", msg);
    r->dying = true;
    redisAsyncFree(r->ac);
}

/* Sends the output buffer: one send() for everything queued. Wipes the
 * password's bytes once they are out. May close the connection. */
static void conn_write(aorm_redis *r) {
    redisAsyncContext *ac = r->ac;
    sds ob = ac->c.obuf;
    size_t len = sdslen(ob);
    if (len == 0) {
        r->write_armed = false;
        io_update(r);
        return;
    }
    ssize_t n = send(ac->c.fd, ob, len, MSG_NOSIGNAL);
    r->st.writes++;
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            r->write_armed = true;
            io_update(r);
            return;
        }
        char msg[400];
        snprintf(msg, sizeof(msg), "write to redis %s failed: %s", r->where, strerror(errno));
        conn_drop(r, r->state == RS_READY ? AORM_ECONNLOST : AORM_ECONNECT, msg);
        return;
    }
    rlog(r, AORM_LOG_DEBUG, "redis %s: wrote %zd of %zu bytes", r->where, n, len);
    size_t secret = r->secret_left;
    if ((size_t)n == len) {
        if (secret) explicit_bzero(ob, len);
        if (sdsAllocSize(ob) > OBUF_KEEP) { /* a huge pipeline's buffer is not kept */
            sdsfree(ob);
            ac->c.obuf = sdsempty();
        } else {
            sdsclear(ob); /* keeps the allocation for the next turn */
        }
        r->write_armed = false;
    } else {
        sdsrange(ob, n, -1);
        /* the tail was moved to the front; its old copy stays behind */
        if (secret) explicit_bzero(ob + sdslen(ob), (size_t)n);
        r->write_armed = true;
    }
    r->secret_left = secret > (size_t)n ? secret - (size_t)n : 0;
    r->reading = true; /* replies follow every write */
    io_update(r);
}

/* ---- connecting ------------------------------------------------------------- */

static void on_reply(redisAsyncContext *ac, void *reply, void *priv);

/* Hands every waiting command to the ready connection, in order. */
static void send_waiting(aorm_redis *r) {
    rreq *c = r->head;
    while (c && c->sent) c = c->next;
    while (c && r->ac && !r->dying) {
        if (redisAsyncFormattedCommand(r->ac, on_reply, c, c->buf, c->len) != REDIS_OK) return;
        free(c->buf);
        c->buf = NULL;
        c->sent = true;
        r->waiting--;
        r->in_flight++;
        c = c->next;
    }
}

static void sub_send(aorm_redis *r);

/* The connection is ready: the hooks' commands first, then a
 * subscriber's SUBSCRIBE, then the commands that waited. Runs inside an
 * enter()/leave() bracket (from on_io). */
static void conn_ready(aorm_redis *r, bool answered) {
    r->state = RS_READY;
    aorm_timer_stop(r->connect_timer);
    r->st.connects++;
    if (answered) note_success(r);
    rlog(r, AORM_LOG_INFO, "redis %s: connected%s", r->where, r->password ? " and authenticated" : "");
    redisAsyncContext *ac = r->ac;
    if (r->nhooks) {
        r->in_ready_hook = true;
        run_hooks(r, true);
        r->in_ready_hook = false;
        if (r->free_requested || r->ac != ac || r->dying) return;
    }
    if (r->subscriber) sub_send(r);
    send_waiting(r);
}

static bool is_auth_error(const char *s) {
    return strncmp(s, "WRONGPASS", 9) == 0 || strncmp(s, "NOAUTH", 6) == 0 ||
           strncmp(s, "ERR invalid password", 20) == 0 || strncmp(s, "ERR invalid username", 20) == 0 ||
           strncmp(s, "ERR AUTH", 8) == 0 || strncmp(s, "ERR Client sent AUTH", 20) == 0;
}

/* Replies to the handshake commands: privdata is the client. */
static void handshake_step(aorm_redis *r, redisReply *rep, const char *what) {
    if (!rep || r->dying) return; /* the context is going away: hook_cleanup reports it */
    if (rep->type == REDIS_REPLY_ERROR) {
        char msg[400];
        snprintf(msg, sizeof(msg), "redis %s refused %s: %.200s", r->where, what, rep->str);
        conn_drop(r, is_auth_error(rep->str) ? AORM_EAUTH : AORM_ECONNECT, msg);
        return;
    }
    if (--r->handshake_left == 0) conn_ready(r, true);
}

static void on_auth(redisAsyncContext *ac, void *reply, void *priv) { handshake_step(priv, reply, "AUTH"); }
static void on_select(redisAsyncContext *ac, void *reply, void *priv) { handshake_step(priv, reply, "SELECT"); }
static void on_setname(redisAsyncContext *ac, void *reply, void *priv) {
    handshake_step(priv, reply, "CLIENT SETNAME");
}

/* Formats argv and appends it to the context with fn. Returns the length,
 * or 0 on failure. The formatted copy is wiped (it may hold the password). */
static size_t queue_internal(aorm_redis *r, int argc, const char **argv, redisCallbackFn *fn) {
    char *cmd = NULL;
    int len = redisFormatCommandArgv(&cmd, argc, argv, NULL);
    if (len <= 0 || !cmd) return 0;
    int rc = redisAsyncFormattedCommand(r->ac, fn, r, cmd, (size_t)len);
    explicit_bzero(cmd, (size_t)len);
    redisFreeCommand(cmd);
    return rc == REDIS_OK ? (size_t)len : 0;
}

/* The socket connected: send the handshake, or be ready. */
static void conn_connected(aorm_redis *r) {
    r->handshake_left = 0;
    const char *auth[3] = {"AUTH", r->username ? r->username : r->password, r->password};
    int auth_argc = r->username ? 3 : 2;
    char dbtxt[16];
    snprintf(dbtxt, sizeof(dbtxt), "%d", r->o.db);
    const char *sel[2] = {"SELECT", dbtxt};
    const char *name[3] = {"CLIENT", "SETNAME", r->client_name};
    if (!r->password && r->o.db == 0 && !r->client_name) {
        conn_ready(r, false);
        return;
    }
    /* The output buffer is empty here (commands wait until ready). Make
     * room for the whole handshake first: a buffer that grew by realloc
     * would leave a copy of the password in freed memory. */
    size_t room = 128 + (r->username ? strlen(r->username) : 0) + (r->password ? strlen(r->password) : 0) +
                  (r->client_name ? strlen(r->client_name) : 0);
    sds ob = sdsMakeRoomFor(r->ac->c.obuf, room);
    if (!ob) {
        conn_drop(r, AORM_ENOMEM, "out of memory");
        return;
    }
    r->ac->c.obuf = ob;
    r->state = RS_HANDSHAKE;
    bool ok = true;
    if (r->password) {
        size_t n = queue_internal(r, auth_argc, auth, on_auth);
        ok = n > 0;
        r->secret_left = n;
        r->handshake_left++;
    }
    if (ok && r->o.db != 0) {
        ok = queue_internal(r, 2, sel, on_select) > 0;
        r->handshake_left++;
    }
    if (ok && r->client_name) {
        ok = queue_internal(r, 3, name, on_setname) > 0;
        r->handshake_left++;
    }
    if (!ok) conn_drop(r, AORM_ENOMEM, "out of memory formatting the handshake");
}

static void on_io(aorm_io *io, int revents, void *user);

/* Starts one connection attempt. Failures are reported through
 * conn_gone() and never call back synchronously from a user call: this
 * runs from aorm_redis_new() (nothing queued yet) or a timer. */
static void conn_start(aorm_redis *r) {
    aorm__assert(!r->ac && r->state == RS_IDLE);
    if (r->first_attempt_done) r->st.reconnects++;
    r->first_attempt_done = true;
    redisAsyncContext *ac = r->unix_path ? redisAsyncConnectUnix(r->unix_path) : redisAsyncConnect(r->host, r->o.port);
    if (!ac) {
        conn_gone(r, RS_CONNECTING, AORM_ENOMEM, "out of memory");
        return;
    }
    if (ac->err) {
        snprintf(r->errbuf, sizeof(r->errbuf), "could not connect to redis %s: %s", r->where, ac->errstr);
        redisAsyncFree(ac);
        conn_gone(r, RS_CONNECTING, AORM_ECONNECT, r->errbuf);
        return;
    }
    r->io = aorm_io_new(r->loop, ac->c.fd, on_io, r);
    if (!r->io) {
        redisAsyncFree(ac);
        conn_gone(r, RS_CONNECTING, AORM_ENOMEM, "out of memory");
        return;
    }
    if (!r->unix_path) redisEnableKeepAlive(&ac->c);
    /* check every top-level reply against the callback list */
    r->orig_fns = ac->c.reader->fn;
    r->fns = *r->orig_fns;
    r->fns.createString = reader_string;
    r->fns.createArray = reader_array;
    r->fns.createInteger = reader_integer;
    r->fns.createNil = reader_nil;
    ac->c.reader->fn = &r->fns;
    ac->c.reader->privdata = r;
    ac->data = r;
    ac->ev.data = r;
    ac->ev.addRead = hook_add_read;
    ac->ev.delRead = hook_del_read;
    ac->ev.addWrite = hook_add_write;
    ac->ev.delWrite = hook_del_write;
    ac->ev.cleanup = hook_cleanup;
    r->ac = ac;
    r->state = RS_CONNECTING;
    r->write_armed = true; /* the connect completes with the first write event */
    io_update(r);
    if (r->o.connect_timeout > 0) aorm_timer_start(r->connect_timer, r->o.connect_timeout);
    rlog(r, AORM_LOG_DEBUG, "redis %s: connecting", r->where);
}

/* A connection attempt failed (was != RS_READY) or a ready connection
 * ended. Counts the failure, fails waiting commands of a failed attempt
 * and schedules the next attempt. */
static void conn_gone(aorm_redis *r, rconn_state was, int code, const char *msg) {
    if (code == AORM_EPROTOCOL) r->st.protocol_errors++;
    if (was == RS_READY) {
        r->st.connections_lost++;
        rlog(r, AORM_LOG_WARN, "redis %s: connection closed: %s", r->where, msg);
    } else {
        r->st.connect_failures++;
        rlog(r, code == AORM_EAUTH ? AORM_LOG_ERROR : AORM_LOG_WARN, "redis %s: connection attempt failed: %s",
             r->where, msg);
    }
    note_failure(r);
    schedule_retry(r, code);
    char m[sizeof(r->errbuf)];
    snprintf(m, sizeof(m), "%s", msg); /* callbacks below may reuse errbuf */
    if (was != RS_READY || r->st.breaker == AORM_REDIS_BREAKER_OPEN)
        fail_waiting(r, code == AORM_EAUTH ? AORM_EAUTH : AORM_ECONNECT, m);
    if (was == RS_READY && r->nhooks && !r->free_requested) run_hooks(r, false);
}

/* ---- subscribers -------------------------------------------------------------- */

/* hiredis's callback for SUBSCRIBE: it runs for each confirmation and each
 * message of the channels, and with NULL when the context goes away. */
static void on_sub(redisAsyncContext *ac, void *reply, void *priv) {
    aorm_redis *r = priv;
    redisReply *rep = reply;
    if (!rep || r->dying || r->ac != ac || r->free_requested) return;
    /* reader_pubsub_ok() let only arrays of >= 2 elements, two strings first, through */
    aorm__assert(rep->type == REDIS_REPLY_ARRAY && rep->elements >= 2);
    const redisReply *kind = rep->element[0], *ch = rep->element[1];
    note_success(r);
    if (kind->len == 9 && strncasecmp(kind->str, "subscribe", 9) == 0) {
        if (r->sub_pending > 0 && --r->sub_pending == 0) {
            aorm_timer_stop(r->sub_timer);
            r->ping_at = 0;
            if (r->o.subscriber_ping > 0) aorm_timer_start(r->sub_timer, r->o.subscriber_ping);
            r->subscribed = true;
            rlog(r, AORM_LOG_INFO, "redis %s: subscribed to %d channel(s)", r->where, r->nchannels);
            if (r->on_subscribed) r->on_subscribed(r, r->sub_user);
        }
    } else if (kind->len == 7 && strncasecmp(kind->str, "message", 7) == 0 && rep->elements >= 3) {
        r->st.messages++;
        if (r->on_message) r->on_message(r, ch->str, ch->len, rep->element[2], r->sub_user);
    } else if (kind->len == 11 && strncasecmp(kind->str, "unsubscribe", 11) == 0) {
        /* nobody here unsubscribes: the server dropped the channel; a new
         * connection subscribes again */
        rlog(r, AORM_LOG_WARN, "redis %s: the server unsubscribed this client from %.*s; reconnecting", r->where,
             (int)ch->len, ch->str);
        conn_drop(r, AORM_ECONNLOST, "connection closed: the server ended a subscription");
    }
}

/* Sends SUBSCRIBE for every channel on the ready connection. */
static void sub_send(aorm_redis *r) {
    const char **argv = malloc(((size_t)r->nchannels + 1) * sizeof(*argv));
    char *cmd = NULL;
    int len = -1;
    if (argv) {
        argv[0] = "SUBSCRIBE";
        for (int i = 0; i < r->nchannels; i++) argv[i + 1] = r->channels[i];
        len = redisFormatCommandArgv(&cmd, r->nchannels + 1, argv, NULL);
        free(argv);
    }
    if (len <= 0 || !cmd || redisAsyncFormattedCommand(r->ac, on_sub, r, cmd, (size_t)len) != REDIS_OK) {
        if (cmd) redisFreeCommand(cmd);
        conn_drop(r, AORM_ENOMEM, "out of memory sending SUBSCRIBE");
        return;
    }
    redisFreeCommand(cmd);
    r->sub_pending = r->nchannels;
    if (r->o.command_timeout > 0) aorm_timer_start(r->sub_timer, r->o.command_timeout);
}

/* The heartbeat of a subscribed connection: PING written straight into
 * the output buffer with no callback of hiredis (in subscribed mode it
 * would file one where no reply ever reaches it); the answer, an array
 * ["pong", ""], matches no channel and is dropped by hiredis. Any data
 * that arrives counts as the answer. */
static void sub_heartbeat(aorm_redis *r) {
    double now = mono_now();
    if (r->ping_at > 0) {
        if (r->last_rx >= r->ping_at) {
            r->ping_at = 0; /* answered */
        } else if (now - r->ping_at >= r->o.command_timeout && r->o.command_timeout > 0) {
            r->st.timeouts++;
            rlog(r, AORM_LOG_WARN, "redis %s: no answer to PING within %g s; closing the subscriber connection",
                 r->where, r->o.command_timeout);
            conn_drop(r, AORM_ECONNLOST, "connection closed: no answer to PING within the command deadline");
            return;
        } else {
            aorm_timer_start(r->sub_timer, r->ping_at + r->o.command_timeout - now);
            return;
        }
    }
    double idle = now - r->last_rx;
    if (idle < r->o.subscriber_ping) {
        aorm_timer_start(r->sub_timer, r->o.subscriber_ping - idle);
        return;
    }
    static const char ping[] = "*1\r\n$4\r\nPING\r\n";
    sds ob = sdscatlen(r->ac->c.obuf, ping, sizeof(ping) - 1);
    if (!ob) {
        conn_drop(r, AORM_ENOMEM, "out of memory");
        return;
    }
    r->ac->c.obuf = ob;
    r->ping_at = now;
    aorm_timer_start(r->sub_timer, r->o.command_timeout > 0 ? r->o.command_timeout : r->o.subscriber_ping);
}

static void on_sub_timeout(aorm_timer *t, void *user) {
    aorm_redis *r = user;
    enter(r);
    if (r->ac && !r->dying && r->sub_pending > 0) {
        r->st.timeouts++;
        rlog(r, AORM_LOG_WARN, "redis %s: SUBSCRIBE was not confirmed within %g s; closing the connection", r->where,
             r->o.command_timeout);
        conn_drop(r, AORM_ECONNLOST, "connection closed: SUBSCRIBE was not confirmed within the command deadline");
    } else if (r->ac && !r->dying && r->subscribed) {
        sub_heartbeat(r);
    }
    leave(r);
}

bool aorm_redis_subscribed(const aorm_redis *r) {
    return r && r->subscriber && r->subscribed && r->state == RS_READY && r->ac && !r->dying;
}

/* ---- replies ---------------------------------------------------------------- */

static void on_reply(redisAsyncContext *ac, void *reply, void *priv) {
    rreq *c = priv;
    aorm_redis *r = c->r;
    if (c->done) { /* timed out earlier: its outcome was delivered */
        cmd_free(c);
        return;
    }
    list_unlink(r, c);
    redisReply *rep = reply;
    if (!rep) {
        r->dying = true; /* hiredis is failing every callback: the context goes */
        int code;
        const char *msg;
        conn_reason(r, ac, &code, &msg);
        deliver(r, c, NULL, code, msg);
    } else {
        r->st.replies++;
        note_success(r);
        if (rep->type == REDIS_REPLY_ERROR) {
            r->st.server_errors++;
            deliver(r, c, NULL, is_auth_error(rep->str) ? AORM_EAUTH : AORM_ESERVER, rep->str);
        } else {
            deliver(r, c, rep, 0, NULL);
        }
    }
    cmd_free(c);
}

/* ---- loop entries --------------------------------------------------------------- */

static void on_io(aorm_io *io, int revents, void *user) {
    aorm_redis *r = user;
    redisAsyncContext *ac = r->ac;
    enter(r);
    if (revents & AORM_READ) r->last_rx = mono_now();
    /* hiredis reads 16 KB per call. While a reply is incomplete and the
     * last read brought data, read again at once instead of waiting a
     * loop turn per 16 KB; bounded, so one huge reply cannot hog the loop. */
    for (int i = 0; (revents & AORM_READ) && i < 16 && r->ac == ac && !r->dying; i++) {
        size_t before = ac->c.reader->len - ac->c.reader->pos;
        redisAsyncHandleRead(ac);
        if (r->ac != ac || r->dying) break;
        size_t left = ac->c.reader->len - ac->c.reader->pos;
        if (left == 0 || left == before) break;
    }
    if ((revents & AORM_WRITE) && r->ac == ac && !r->dying) {
        if (!ctx_connected(ac)) {
            /* hiredis checks the connect (SO_ERROR); its buffer is empty, so
             * it writes nothing */
            redisAsyncHandleWrite(ac);
            if (r->ac == ac && !r->dying && ctx_connected(ac)) conn_connected(r);
        } else {
            conn_write(r);
        }
    }
    leave(r);
}

static void on_before_poll(aorm_loop *loop, void *user) {
    aorm_redis *r = user;
    r->wake_armed = false;
    redisAsyncContext *ac = r->ac;
    if (!ac || r->dying || r->write_armed || !ctx_connected(ac) || sdslen(ac->c.obuf) == 0) return;
    enter(r);
    conn_write(r);
    leave(r);
}

static void arm_deadline(aorm_redis *r, double at) {
    if (aorm_timer_active(r->deadline_timer) && r->deadline_at <= at) return;
    r->deadline_at = at;
    aorm_timer_start(r->deadline_timer, at - mono_now());
}

static void on_deadline(aorm_timer *t, void *user) {
    aorm_redis *r = user;
    enter(r);
    double now = mono_now();
    bool drop = false;
    for (rreq *c = r->head; c;) {
        rreq *next = c->next;
        if (c->deadline > 0 && c->deadline <= now) {
            bool in_flight = c->sent;
            list_unlink(r, c);
            c->done = in_flight; /* hiredis still holds it: on_reply frees it */
            deliver(r, c, NULL, AORM_ETIMEOUT, "Redis command deadline expired");
            if (in_flight) drop = true;
            else cmd_free(c);
        }
        c = next;
    }
    if (drop && !r->free_requested) {
        rlog(r, AORM_LOG_WARN, "redis %s: a command deadline expired; closing the connection", r->where);
        conn_drop(r, AORM_ECONNLOST, "connection closed: an earlier command on it exceeded its deadline");
    }
    double next_at = 0;
    for (rreq *c = r->head; c; c = c->next)
        if (c->deadline > 0 && (next_at == 0 || c->deadline < next_at)) next_at = c->deadline;
    if (next_at > 0) arm_deadline(r, next_at);
    leave(r);
}

static void on_connect_timeout(aorm_timer *t, void *user) {
    aorm_redis *r = user;
    enter(r);
    switch (r->state) {
    case RS_IDLE:  /* the attempt already failed */
    case RS_READY: /* it completed: the timer should have been stopped */
        break;
    case RS_CONNECTING:
    case RS_HANDSHAKE: {
        char msg[256];
        snprintf(msg, sizeof(msg), "timed out after %g s connecting to redis %s%s", r->o.connect_timeout, r->where,
                 r->state == RS_HANDSHAKE ? " (no answer to AUTH/SELECT/CLIENT SETNAME)" : "");
        conn_drop(r, AORM_ECONNECT, msg);
        break;
    }
    }
    leave(r);
}

static void on_retry(aorm_timer *t, void *user) {
    aorm_redis *r = user;
    enter(r);
    if (!r->ac && !r->free_requested) {
        if (r->st.breaker == AORM_REDIS_BREAKER_OPEN) {
            r->st.breaker = AORM_REDIS_BREAKER_HALF_OPEN;
            rlog(r, AORM_LOG_INFO, "redis %s: circuit breaker half-open: trying a connection", r->where);
        }
        conn_start(r);
    }
    leave(r);
}

/* ---- public API ------------------------------------------------------------- */

void aorm_redis_cmd_options_init(aorm_redis_cmd_options *o) {
    if (o) memset(o, 0, sizeof(*o));
}

void aorm_redis_options_init(aorm_redis_options *o) {
    if (!o) return;
    memset(o, 0, sizeof(*o));
    o->host = "127.0.0.1";
    o->port = 6379;
    o->connect_timeout = 1.0;
    o->command_timeout = 1.0;
    o->reconnect_min = 0.05;
    o->reconnect_max = 2.0;
    o->breaker_threshold = 5;
    o->breaker_cooldown = 1.0;
    o->subscriber_ping = 2.0;
    o->log_level = AORM_LOG_WARN;
}

static void opt_log(const aorm_redis_options *o, const char *msg) {
    if (o->log && o->log_level >= AORM_LOG_ERROR) o->log(AORM_LOG_ERROR, msg, o->log_user);
}

/* Resolves host to a numeric address (blocking for names). */
static char *resolve_host(const aorm_redis_options *o) {
    unsigned char tmp[sizeof(struct in6_addr)];
    if (inet_pton(AF_INET, o->host, tmp) == 1 || inet_pton(AF_INET6, o->host, tmp) == 1) return aorm__strdup(o->host);
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(o->host, NULL, &hints, &res);
    char addr[NI_MAXHOST];
    if (rc == 0 && res)
        rc = getnameinfo(res->ai_addr, res->ai_addrlen, addr, sizeof(addr), NULL, 0, NI_NUMERICHOST);
    if (res) freeaddrinfo(res);
    if (rc != 0) {
        char msg[400];
        snprintf(msg, sizeof(msg), "redis: could not resolve host \"%.200s\": %s", o->host, gai_strerror(rc));
        opt_log(o, msg);
        return NULL;
    }
    return aorm__strdup(addr);
}

static bool options_valid(const aorm_redis_options *o) {
    const char *why = NULL;
    if (!o->unix_path && (!o->host || !*o->host)) why = "no host and no unix_path";
    else if (!o->unix_path && (o->port <= 0 || o->port > 65535)) why = "port out of range";
    else if (o->unix_path && strlen(o->unix_path) >= sizeof(((struct sockaddr_un *)0)->sun_path))
        why = "unix_path too long";
    else if (o->db < 0) why = "negative db";
    else if (o->username && !o->password) why = "username without password";
    else if (o->client_name && (!*o->client_name || strpbrk(o->client_name, " \t\r\n")))
        why = "client_name must be a non-empty word without spaces";
    else if (o->connect_timeout < 0 || o->command_timeout < 0 || o->reconnect_min <= 0 ||
             o->reconnect_max < o->reconnect_min || o->breaker_threshold < 0 || o->breaker_cooldown < 0 ||
             o->subscriber_ping < 0)
        why = "negative timeout, or reconnect_min not in (0, reconnect_max]";
    if (!why) return true;
    char msg[200];
    snprintf(msg, sizeof(msg), "redis: invalid options: %s", why);
    opt_log(o, msg);
    return false;
}

static void free_channels(aorm_redis *r) {
    for (int i = 0; i < r->nchannels; i++) free(r->channels[i]);
    free(r->channels);
    r->channels = NULL;
    r->nchannels = 0;
}

typedef struct sub_args {
    const char *const *channels;
    int nchannels;
    aorm_redis_message_cb on_message;
    aorm_redis_conn_cb on_subscribed;
    void *user;
} sub_args;

/* A client, or with sub a subscriber. */
static aorm_redis *client_new(aorm_loop *loop, const aorm_redis_options *o, const sub_args *sub) {
    if (!loop || !o || !options_valid(o)) return NULL;
    aorm_redis *r = calloc(1, sizeof(*r));
    if (!r) return NULL;
    r->loop = loop;
    r->o = *o;
    bool oom = false;
#define COPY(field)                                       \
    if (o->field) {                                       \
        r->field = aorm__strdup(o->field);                \
        if (!r->field) oom = true;                        \
    }
    COPY(unix_path)
    COPY(username)
    COPY(password)
    COPY(client_name)
#undef COPY
    if (!o->unix_path) {
        r->host = resolve_host(o);
        if (!r->host) goto fail;
    }
    if (oom) goto fail;
    r->o.host = r->host;
    r->o.unix_path = r->unix_path;
    r->o.username = r->username;
    r->o.password = r->password;
    r->o.client_name = r->client_name;
    if (r->unix_path) snprintf(r->where, sizeof(r->where), "unix:%s", r->unix_path);
    else if (strchr(r->host, ':')) snprintf(r->where, sizeof(r->where), "[%s]:%d", r->host, o->port);
    else snprintf(r->where, sizeof(r->where), "%s:%d", r->host, o->port);
    r->rng = (uint64_t)(uintptr_t)r ^ (uint64_t)(mono_now() * 1e9) ^ 0x9e3779b97f4a7c15ull;
    if (!r->rng) r->rng = 1;
    r->deadline_timer = aorm_timer_new(loop, on_deadline, r);
    r->connect_timer = aorm_timer_new(loop, on_connect_timeout, r);
    r->retry_timer = aorm_timer_new(loop, on_retry, r);
    if (!r->deadline_timer || !r->connect_timer || !r->retry_timer) goto fail;
    if ((o->on_ready || o->on_lost) && aorm__redis_hook_add(r, o->on_ready, o->on_lost, o->hook_user) < 0) goto fail;
    if (sub) {
        r->subscriber = true;
        r->on_message = sub->on_message;
        r->on_subscribed = sub->on_subscribed;
        r->sub_user = sub->user;
        r->sub_timer = aorm_timer_new(loop, on_sub_timeout, r);
        r->channels = calloc((size_t)sub->nchannels, sizeof(*r->channels));
        if (!r->sub_timer || !r->channels) goto fail;
        for (; r->nchannels < sub->nchannels; r->nchannels++) {
            r->channels[r->nchannels] = aorm__strdup(sub->channels[r->nchannels]);
            if (!r->channels[r->nchannels]) goto fail;
        }
    }
    if (aorm_loop_before_poll_add(loop, on_before_poll, r) < 0) goto fail;
    conn_start(r);
    return r;
fail:
    aorm_timer_free(r->deadline_timer);
    aorm_timer_free(r->connect_timer);
    aorm_timer_free(r->retry_timer);
    aorm_timer_free(r->sub_timer);
    free(r->hooks);
    if (r->channels) free_channels(r);
    free(r->host);
    free(r->unix_path);
    free(r->username);
    wipe_free(r->password);
    free(r->client_name);
    free(r);
    return NULL;
}

aorm_redis *aorm_redis_new(aorm_loop *loop, const aorm_redis_options *o) { return client_new(loop, o, NULL); }

aorm_redis *aorm_redis_subscriber_new(aorm_loop *loop, const aorm_redis_options *o, const char *const *channels,
                                      int nchannels, aorm_redis_message_cb on_message, aorm_redis_conn_cb on_subscribed,
                                      void *user) {
    if (!channels || nchannels <= 0 || !on_message) return NULL;
    for (int i = 0; i < nchannels; i++)
        if (!channels[i] || !*channels[i]) return NULL;
    sub_args sub = {channels, nchannels, on_message, on_subscribed, user};
    return client_new(loop, o, &sub);
}

static void real_free(aorm_redis *r) {
    r->closing = true;
    r->depth++; /* frees requested by the callbacks below are no-ops */
    if (r->ac) { /* in-flight callbacks run with NULL: ECANCELED (deliver) */
        r->dying = true;
        redisAsyncFree(r->ac);
    }
    fail_waiting(r, AORM_ECANCELED, "the Redis client was freed");
    aorm__assert(!r->head && !r->ac && !r->io);
    aorm_loop_before_poll_remove(r->loop, on_before_poll, r);
    aorm_timer_free(r->deadline_timer);
    aorm_timer_free(r->connect_timer);
    aorm_timer_free(r->retry_timer);
    aorm_timer_free(r->sub_timer);
    free(r->hooks);
    free_channels(r);
    free(r->host);
    free(r->unix_path);
    free(r->username);
    wipe_free(r->password);
    free(r->client_name);
    explicit_bzero(r, sizeof(*r));
    free(r);
}

void aorm_redis_free(aorm_redis *r) {
    if (!r || r->closing) return;
    if (r->depth > 0) {
        r->free_requested = true;
        return;
    }
    real_free(r);
}

aorm_loop *aorm_redis_loop(const aorm_redis *r) { return r ? r->loop : NULL; }
void aorm_redis_set_data(aorm_redis *r, void *data) {
    if (r) r->data = data;
}
void *aorm_redis_data(const aorm_redis *r) { return r ? r->data : NULL; }

/* The command name and first argument of a formatted command
 * ("*N\r\n$len\r\nname\r\n$len\r\narg\r\n..."). */
static bool resp_arg(const char **p, const char *end, const char **s, size_t *n) {
    const char *q = *p;
    if (q >= end || *q != '$') return false;
    char *e;
    long len = strtol(q + 1, &e, 10);
    if (len < 0 || e + 2 > end || e[0] != '\r' || e[1] != '\n' || e + 2 + len > end) return false;
    *s = e + 2;
    *n = (size_t)len;
    *p = e + 2 + len + 2;
    return true;
}

static bool word_is(const char *s, size_t n, const char *w) { return strlen(w) == n && strncasecmp(s, w, n) == 0; }

static int check_command(const char *buf, size_t len) {
    const char *end = buf + len, *p = buf, *name, *arg = NULL;
    size_t nlen, alen = 0;
    if (len < 4 || *p != '*') return AORM_EMISUSE;
    p = memchr(p, '\n', len);
    if (!p) return AORM_EMISUSE;
    p++;
    if (!resp_arg(&p, end, &name, &nlen) || nlen == 0) return AORM_EMISUSE;
    resp_arg(&p, end, &arg, &alen);
    static const char *const refused[] = {"auth", "select", "hello", "quit", "reset", "monitor", "sync",
                                          "psync", "subscribe", "psubscribe", "ssubscribe", "unsubscribe",
                                          "punsubscribe", "sunsubscribe"};
    for (size_t i = 0; i < AORM__ARRAY_LEN(refused); i++)
        if (word_is(name, nlen, refused[i])) return AORM_EMISUSE;
    if (word_is(name, nlen, "client") && arg && word_is(arg, alen, "reply")) return AORM_EMISUSE;
    return 0;
}

/* Takes ownership of buf (hiredis-formatted, malloc'd) in every case. */
static int submit(aorm_redis *r, char *buf, size_t len, const aorm_redis_cmd_options *opts, aorm_redis_cb cb,
                  void *user) {
    int rc = check_command(buf, len);
    if (rc == 0 && r->subscriber && !r->in_ready_hook) rc = AORM_EMISUSE; /* see "Subscriber clients" */
    if (rc < 0) {
        free(buf);
        return rc;
    }
    rreq *c = calloc(1, sizeof(*c));
    if (!c) {
        free(buf);
        return AORM_ENOMEM;
    }
    c->r = r;
    c->cb = cb;
    c->user = user;
    c->buf = buf;
    c->len = len;
    double d = opts && opts->deadline != 0 ? opts->deadline : r->o.command_timeout;
    if (d > 0) c->deadline = mono_now() + d;
    if (r->state == RS_READY && r->ac && !r->dying &&
        redisAsyncFormattedCommand(r->ac, on_reply, c, buf, len) == REDIS_OK) {
        free(c->buf);
        c->buf = NULL;
        c->sent = true;
        if (!r->wake_armed) { /* queued after this turn's before-poll stage: keep the loop turning */
            r->wake_armed = true;
            aorm_loop_wake(r->loop);
        }
    }
    if (c->sent && r->in_ready_hook) list_insert_sent(r, c); /* ahead of the commands that waited */
    else list_append(r, c);
    r->st.commands++;
    if (c->deadline > 0) arm_deadline(r, c->deadline);
    return 0;
}

static int refuse(aorm_redis *r) {
    if (!r) return AORM_EMISUSE;
    if (r->closing || r->free_requested) return AORM_ECLOSED;
    if (r->st.breaker == AORM_REDIS_BREAKER_OPEN) {
        r->st.rejected++;
        return AORM_ECONNECT;
    }
    return 0;
}

static size_t dec_digits(size_t v) {
    size_t n = 1;
    while (v >= 10) {
        v /= 10;
        n++;
    }
    return n;
}

static char *put_dec(char *p, size_t v, size_t digits) {
    char *e = p + digits;
    do {
        *--e = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return p + digits;
}

/* The RESP array of bulk strings redisFormatCommandArgv writes, without
 * its printf per argument (an MGET of a thousand keys is mostly that).
 * Returns the length and *out (malloc'd, NUL-terminated), -1 out of
 * memory, -2 too long. */
static long format_argv(char **out, int argc, const char *const *argv, const size_t *argvlen) {
    size_t total = 1 + dec_digits((size_t)argc) + 2;
    for (int i = 0; i < argc; i++) {
        size_t len = argvlen ? argvlen[i] : strlen(argv[i]);
        total += 1 + dec_digits(len) + 2 + len + 2;
    }
    if (total > (size_t)INT_MAX) return -2;
    char *buf = malloc(total + 1);
    if (!buf) return -1;
    char *p = buf;
    *p++ = '*';
    p = put_dec(p, (size_t)argc, dec_digits((size_t)argc));
    *p++ = '\r';
    *p++ = '\n';
    for (int i = 0; i < argc; i++) {
        size_t len = argvlen ? argvlen[i] : strlen(argv[i]);
        *p++ = '$';
        p = put_dec(p, len, dec_digits(len));
        *p++ = '\r';
        *p++ = '\n';
        memcpy(p, argv[i], len);
        p += len;
        *p++ = '\r';
        *p++ = '\n';
    }
    *p = '\0';
    *out = buf;
    return (long)total;
}

int aorm_redis_command_argv(aorm_redis *r, int argc, const char *const *argv, const size_t *argvlen,
                            const aorm_redis_cmd_options *opts, aorm_redis_cb cb, void *user) {
    if (!r || argc <= 0 || !argv) return AORM_EMISUSE;
    for (int i = 0; i < argc; i++)
        if (!argv[i]) return AORM_EMISUSE;
    int rc = refuse(r);
    if (rc < 0) return rc;
    char *buf = NULL;
    long len = format_argv(&buf, argc, argv, argvlen);
    if (len < 0 || !buf) return len == -1 ? AORM_ENOMEM : AORM_EMISUSE;
    return submit(r, buf, (size_t)len, opts, cb, user);
}

int aorm_redis_command(aorm_redis *r, const aorm_redis_cmd_options *opts, aorm_redis_cb cb, void *user,
                       const char *fmt, ...) {
    if (!r || !fmt) return AORM_EMISUSE;
    int rc = refuse(r);
    if (rc < 0) return rc;
    char *buf = NULL;
    va_list ap;
    va_start(ap, fmt);
    int len = redisvFormatCommand(&buf, fmt, ap);
    va_end(ap);
    if (len == -1) return AORM_ENOMEM;
    if (len < 0 || !buf) return AORM_EMISUSE;
    return submit(r, buf, (size_t)len, opts, cb, user);
}

void aorm_redis_stats_get(const aorm_redis *r, aorm_redis_stats *out) {
    if (!out) return;
    memset(out, 0, sizeof(*out));
    if (!r) return;
    *out = r->st;
    out->connected = aorm__redis_connected(r);
    out->in_flight = r->in_flight;
    out->waiting = r->waiting;
    out->subscribed = aorm_redis_subscribed(r);
}
