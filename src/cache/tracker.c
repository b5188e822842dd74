/* tracker.c -- keeps a near cache coherent with Redis through client-side
 * caching in RESP2 redirect mode (hiredis 0.14 speaks no RESP3).
 *
 * Two connections. The tracker's own (a subscriber) asks its CLIENT ID
 * and SUBSCRIBEs to __redis__:invalidate. The data connection (the
 * cache's, which reads the values) is told, as the first commands of
 * each of its connections and again whenever the tracker's id changes,
 * `CLIENT TRACKING OFF` then `CLIENT TRACKING ON REDIRECT <id> BCAST
 * PREFIX p ...`: from then on the server sends every change of a key under
 * a prefix to the tracker's connection, as a message of that channel
 * holding an array of keys (nil for FLUSHALL / FLUSHDB).
 *
 * Ready, exactly: the tracker's connection is subscribed, its id is
 * known, and the data connection's current connection confirmed TRACKING
 * ON with that id. Everything the data connection reads after that
 * confirmation is covered: commands on one connection run in order, so a
 * read queued behind the TRACKING command runs after it, and a read that
 * ran before it has its reply handled before the confirmation (while not
 * ready). Any event that can lose an invalidation -- either connection
 * lost, a new id, TRACKING refused, a flush of the server -- drops
 * everything (callback with key NULL) and bumps the epoch; the near cache
 * is trusted again only after the next confirmation. A lost redirect
 * target is not reported in RESP2 (RESP3 has tracking-redir-broken): the
 * tracker learns it from its own connection's loss, which is why it
 * drops everything then.
 *
 * Owns: its subscriber connection, the prefix copies, and the tickets of
 * its commands in flight. The data connection is the caller's; the
 * tracker only adds a pair of hooks to it (removed when freed). Tickets
 * outlive a freed tracker (their callbacks run later, on the caller's
 * connection) and then do nothing. */
#include <hiredis/hiredis.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aorm/error.h"
#include "cache/near.h"
#include "cache/redis_int.h"
#include "util/util.h"

#define INVALIDATE_CHANNEL "__redis__:invalidate"

/* One command in flight: CLIENT ID on the tracker's connection, or
 * CLIENT TRACKING ON on the data connection. */
typedef struct ticket ticket;
struct ticket {
    ticket *prev, *next; /* in t->tickets while t is alive */
    aorm__tracker *t;    /* NULL once the tracker is freed */
    long long id;        /* CLIENT TRACKING: the id it redirects to */
    uint64_t gen;        /* generation of the connection it was sent on */
};

struct aorm__tracker {
    aorm_redis *sub;  /* ours */
    aorm_redis *data; /* the caller's */
    char **prefixes;
    int nprefixes;
    aorm__tracker_cb cb;
    void *user;
    aorm_log_fn log;
    void *log_user;
    aorm_log_level log_level;

    long long id;          /* CLIENT ID of the subscriber's current connection; 0 unknown */
    bool subscribed;       /* the subscriber's current connection is subscribed */
    long long tracking_for; /* id confirmed by TRACKING ON on the data connection; 0 none */
    uint64_t tracking_gen; /* the data connection's generation that confirmed it */
    bool ready;
    uint64_t epoch;
    aorm__tracker_stats st;

    ticket *tickets;
    bool *gone; /* set to true when freed inside a callback */
};

static void tlog(aorm__tracker *t, aorm_log_level lvl, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void tlog(aorm__tracker *t, aorm_log_level lvl, const char *fmt, ...) {
    if (!t->log || lvl > t->log_level) return;
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (n >= 0) t->log(lvl, buf, t->log_user);
}

/* ---- tickets ---------------------------------------------------------------------- */

static ticket *ticket_new(aorm__tracker *t, long long id, uint64_t gen) {
    ticket *k = calloc(1, sizeof(*k));
    if (!k) return NULL;
    k->t = t;
    k->id = id;
    k->gen = gen;
    k->next = t->tickets;
    if (t->tickets) t->tickets->prev = k;
    t->tickets = k;
    return k;
}

/* Takes k off its tracker's list and frees it; returns the tracker (NULL
 * when it was freed). */
static aorm__tracker *ticket_done(ticket *k) {
    aorm__tracker *t = k->t;
    if (t) {
        if (k->prev) k->prev->next = k->next;
        else t->tickets = k->next;
        if (k->next) k->next->prev = k->prev;
    }
    free(k);
    return t;
}

/* ---- readiness -------------------------------------------------------------------- */

static bool data_connected(const aorm__tracker *t) { return aorm__redis_connected(t->data); }

/* Calls cb(NULL). Returns false when the callback freed the tracker. */
static bool drop_everything(aorm__tracker *t) {
    bool gone = false;
    t->epoch++;
    t->st.flushes++;
    t->gone = &gone;
    t->cb(t->user, NULL, 0);
    if (gone) return false;
    t->gone = NULL;
    return true;
}

/* Recomputes readiness. Leaving the ready state drops everything.
 * Returns false when the callback freed the tracker. */
static bool update_ready(aorm__tracker *t) {
    bool now = t->subscribed && t->id != 0 && t->tracking_for == t->id &&
               t->tracking_gen == aorm__redis_conn_gen(t->data) && data_connected(t);
    if (now == t->ready) return true;
    t->ready = now;
    t->epoch++;
    if (now) tlog(t, AORM_LOG_INFO, "redis tracking: ready (invalidations to client id %lld)", t->id);
    else tlog(t, AORM_LOG_INFO, "redis tracking: not ready; the near cache is dropped");
    if (!now) return drop_everything(t);
    return true;
}

/* ---- CLIENT TRACKING on the data connection ------------------------------------------ */

static void on_tracking(aorm_redis *r, redisReply *reply, const aorm_error *err, void *user) {
    ticket *k = user;
    long long id = k->id;
    uint64_t gen = k->gen;
    aorm__tracker *t = ticket_done(k);
    if (!t) return;
    bool current = id == t->id && gen == aorm__redis_conn_gen(t->data) && t->subscribed;
    if (err) {
        if (err->code == AORM_ESERVER || err->code == AORM_EAUTH) {
            t->st.tracking_fail++;
            tlog(t, AORM_LOG_ERROR, "redis tracking: CLIENT TRACKING refused: %s", err->message);
        }
        if (current && t->tracking_for) { /* cannot happen after OFF; be exact anyway */
            t->tracking_for = 0;
            update_ready(t);
        }
        return;
    }
    if (!current) return; /* an older id or connection: a newer request is on its way */
    t->st.tracking_ok++;
    t->tracking_for = id;
    t->tracking_gen = gen;
    update_ready(t);
}

/* Sends OFF and ON REDIRECT id on the data connection (inside its on_ready
 * hook these go before every waiting command). OFF first: the server
 * refuses a second ON whose prefixes overlap the ones in force. */
static void request_tracking(aorm__tracker *t) {
    if (!t->subscribed || !t->id || !data_connected(t)) return;
    t->tracking_for = 0;
    int argc = 6 + 2 * t->nprefixes;
    const char **argv = malloc((size_t)argc * sizeof(*argv));
    ticket *k = ticket_new(t, t->id, aorm__redis_conn_gen(t->data));
    if (!argv || !k) {
        free(argv);
        if (k) ticket_done(k);
        tlog(t, AORM_LOG_ERROR, "redis tracking: out of memory");
        return;
    }
    char idtxt[32];
    snprintf(idtxt, sizeof(idtxt), "%lld", t->id);
    int n = 0;
    argv[n++] = "CLIENT";
    argv[n++] = "TRACKING";
    argv[n++] = "ON";
    argv[n++] = "REDIRECT";
    argv[n++] = idtxt;
    argv[n++] = "BCAST";
    for (int i = 0; i < t->nprefixes; i++) {
        argv[n++] = "PREFIX";
        argv[n++] = t->prefixes[i];
    }
    static const char *const off[] = {"CLIENT", "TRACKING", "OFF"};
    int rc = aorm_redis_command_argv(t->data, 3, off, NULL, NULL, NULL, NULL);
    if (rc == 0) rc = aorm_redis_command_argv(t->data, n, argv, NULL, NULL, on_tracking, k);
    free(argv);
    if (rc < 0) {
        ticket_done(k);
        tlog(t, AORM_LOG_WARN, "redis tracking: could not queue CLIENT TRACKING: %s", aorm_strerror(rc));
    }
}

static void data_on_ready(aorm_redis *r, void *user) {
    aorm__tracker *t = user;
    t->tracking_for = 0; /* a new connection tracks nothing yet */
    if (!update_ready(t)) return;
    request_tracking(t);
}

static void data_on_lost(aorm_redis *r, void *user) {
    aorm__tracker *t = user;
    t->tracking_for = 0;
    update_ready(t);
}

/* ---- the tracker's own connection ------------------------------------------------------ */

static void on_client_id(aorm_redis *r, redisReply *reply, const aorm_error *err, void *user) {
    ticket *k = user;
    uint64_t gen = k->gen;
    aorm__tracker *t = ticket_done(k);
    if (!t || gen != aorm__redis_conn_gen(t->sub)) return;
    if (err || reply->type != REDIS_REPLY_INTEGER || reply->integer <= 0) {
        if (err && (err->code == AORM_ESERVER || err->code == AORM_EAUTH))
            tlog(t, AORM_LOG_ERROR, "redis tracking: CLIENT ID refused: %s", err->message);
        return; /* not ready; a lost connection starts over on the next one */
    }
    t->id = reply->integer;
    t->st.client_id = t->id;
    if (t->subscribed) request_tracking(t); /* (the confirmation comes after this reply) */
}

static void sub_on_ready(aorm_redis *r, void *user) {
    aorm__tracker *t = user;
    t->id = 0;
    t->subscribed = false;
    ticket *k = ticket_new(t, 0, aorm__redis_conn_gen(r));
    if (!k) {
        tlog(t, AORM_LOG_ERROR, "redis tracking: out of memory");
        return;
    }
    int rc = aorm_redis_command(r, NULL, on_client_id, k, "CLIENT ID");
    if (rc < 0) {
        ticket_done(k);
        tlog(t, AORM_LOG_WARN, "redis tracking: could not queue CLIENT ID: %s", aorm_strerror(rc));
    }
}

static void sub_on_lost(aorm_redis *r, void *user) {
    aorm__tracker *t = user;
    t->id = 0;
    t->st.client_id = 0;
    t->subscribed = false;
    t->tracking_for = 0; /* the data connection now redirects to nobody */
    update_ready(t);
}

static void sub_on_subscribed(aorm_redis *r, void *user) {
    aorm__tracker *t = user;
    t->subscribed = true;
    request_tracking(t);
}

static void sub_on_message(aorm_redis *r, const char *channel, size_t channel_len, const redisReply *msg,
                           void *user) {
    aorm__tracker *t = user;
    if (channel_len != sizeof(INVALIDATE_CHANNEL) - 1 || memcmp(channel, INVALIDATE_CHANNEL, channel_len) != 0)
        return;
    t->st.messages++;
    if (msg->type != REDIS_REPLY_ARRAY) { /* nil: the server was flushed */
        drop_everything(t);
        return;
    }
    bool gone = false;
    t->gone = &gone;
    for (size_t i = 0; i < msg->elements; i++) {
        const redisReply *key = msg->element[i];
        if (key->type != REDIS_REPLY_STRING) continue;
        t->st.keys++;
        t->cb(t->user, key->str, key->len);
        if (gone) return;
    }
    t->gone = NULL;
}

/* ---- public (internal) API ----------------------------------------------------------- */

aorm__tracker *aorm__tracker_new(aorm_loop *loop, const aorm_redis_options *o, aorm_redis *data_conn,
                                 const char *const *prefixes, int n, aorm__tracker_cb cb, void *user) {
    if (!loop || !o || !data_conn || !prefixes || n <= 0 || !cb) return NULL;
    for (int i = 0; i < n; i++)
        if (!prefixes[i] || !*prefixes[i]) return NULL;
    /* the server refuses prefixes of one client that overlap */
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++)
            if (i != j && strncmp(prefixes[i], prefixes[j], strlen(prefixes[i])) == 0) return NULL;
    aorm__tracker *t = calloc(1, sizeof(*t));
    if (!t) return NULL;
    t->data = data_conn;
    t->cb = cb;
    t->user = user;
    t->log = o->log;
    t->log_user = o->log_user;
    t->log_level = o->log_level;
    t->prefixes = calloc((size_t)n, sizeof(*t->prefixes));
    if (!t->prefixes) goto fail;
    for (; t->nprefixes < n; t->nprefixes++) {
        t->prefixes[t->nprefixes] = aorm__strdup(prefixes[t->nprefixes]);
        if (!t->prefixes[t->nprefixes]) goto fail;
    }
    if (aorm__redis_hook_add(data_conn, data_on_ready, data_on_lost, t) < 0) goto fail;
    aorm_redis_options so = *o;
    so.on_ready = sub_on_ready;
    so.on_lost = sub_on_lost;
    so.hook_user = t;
    static const char *const channels[] = {INVALIDATE_CHANNEL};
    t->sub = aorm_redis_subscriber_new(loop, &so, channels, 1, sub_on_message, sub_on_subscribed, t);
    if (!t->sub) {
        aorm__redis_hook_remove(data_conn, data_on_ready, data_on_lost, t);
        goto fail;
    }
    return t;
fail:
    for (int i = 0; i < t->nprefixes; i++) free(t->prefixes[i]);
    free(t->prefixes);
    free(t);
    return NULL;
}

bool aorm__tracker_ready(const aorm__tracker *t) {
    /* re-checked, not only cached: the data connection may be gone this
     * very moment (its on_lost hook runs after its failed callbacks) */
    return t && t->ready && t->tracking_gen == aorm__redis_conn_gen(t->data) && data_connected(t) &&
           aorm_redis_subscribed(t->sub);
}

uint64_t aorm__tracker_epoch(const aorm__tracker *t) { return t ? t->epoch : 0; }

void aorm__tracker_stats_get(const aorm__tracker *t, aorm__tracker_stats *out) {
    if (!out) return;
    memset(out, 0, sizeof(*out));
    if (t) *out = t->st;
}

aorm_redis *aorm__tracker_conn(const aorm__tracker *t) { return t ? t->sub : NULL; }

void aorm__tracker_free(aorm__tracker *t) {
    if (!t) return;
    if (t->gone) *t->gone = true;
    for (ticket *k = t->tickets; k; k = k->next) k->t = NULL;
    t->tickets = NULL;
    aorm__redis_hook_remove(t->data, data_on_ready, data_on_lost, t);
    /* the server would keep tracking for a redirect target that is gone */
    if (t->tracking_for && aorm__redis_connected(t->data)) {
        static const char *const off[] = {"CLIENT", "TRACKING", "OFF"};
        (void)aorm_redis_command_argv(t->data, 3, off, NULL, NULL, NULL, NULL);
    }
    aorm_redis_free(t->sub); /* (deferred by the client when inside its callback; it calls nothing of ours then) */
    for (int i = 0; i < t->nprefixes; i++) free(t->prefixes[i]);
    free(t->prefixes);
    free(t);
}
