/* hosts.c -- host groups: a router engine over one engine (pool) per
 * server, deciding on the loop what each server is (see hosts.h).
 *
 * A router is a struct aorm_engine with `hosts` set and no connections:
 * engine.c and owner.c hand it the public calls (aorm_engine_execute,
 * _acquire, _copy, _warm, _stats_get, _free, aorm_owner_*). Each call is
 * routed to one server's engine with a small record (route) whose
 * callback passes the answer on with the router as `e`.
 *
 * Checks: one statement per server every check_interval (and at once after
 * a routed statement lost its connection), with check_timeout as its
 * deadline. Calls made before every server has answered its first check
 * are parked and routed when the answers are in, in order.
 *
 * Read-your-writes state lives in the router owner (owner.c,
 * aorm__owner_rw); positions are LSNs as uint64.
 *
 * Lifetime: `refs` counts the router itself plus every record whose
 * callback will still come (routes, checks, position fetches), so a
 * callback may free the router and the memory stays until the last of
 * them has returned.
 *
 * Owns: the servers' engines, the parked calls, the records. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "aorm/hosts.h"
#include "aorm/redis.h"
#include "async_engine/engine_int.h"

/* route_exec: a read sent to the primary (its consistency key could not
 * be read), still a read: no position fetched after it */
#define ROUTE_PRIMARY_READ (1u << 29)

#define LSN_SAMPLES 256 /* primary positions remembered, for the lag of standbys */

typedef struct host {
    aorm_engine *e;
    char label[128];        /* host:port, for messages */
    aorm_host_role role;
    bool read_only;
    bool checking;
    bool recheck;           /* check again when the running check ends */
    uint64_t lsn;
    double lag;
    double checked_at;
    uint64_t routed, checks;
    char last_error[256];
} host;

typedef struct lsn_sample {
    double t;
    uint64_t lsn;
} lsn_sample;

typedef enum park_kind { P_EXEC, P_ACQUIRE, P_COPY, P_FAIL_RESULT, P_FAIL_CONN } park_kind;

/* A call waiting for the first checks, or a failure waiting for its turn
 * to be delivered (never from inside the call that made it). */
typedef struct park {
    struct park *next;
    park_kind kind;
    char *sql;
    aorm_params params;
    bool has_params;
    unsigned flags;
    double deadline;
    double submitted;
    aorm_owner *owner;      /* router owner, or NULL */
    aorm_result_cb cb;
    aorm_conn_cb ccb;
    void *user;
    aorm_copy_fill_fn fill;
    void *fill_user;
    int code;
    char msg[512];
} park;

struct aorm__hosts {
    aorm_engine *router;
    aorm_hosts_options o;
    host *h;
    int n;
    int primary;            /* index, -1: none known */
    aorm_timer *timer;
    int refs;
    bool closing;
    bool started;
    bool answered;          /* every server has answered (or failed) a check once */
    bool soon_armed;
    uint64_t own;           /* statements of the router's own (checks, positions): not in stats.statements */
    uint64_t rng;
    lsn_sample samples[LSN_SAMPLES];
    int nsamples, sample_next;
    park *park_head, *park_tail;
    park *fail_head, *fail_tail;
    park *fleet_head, *fleet_tail; /* reads waiting for their owner's consistency key */
    char *redis_prefix;
};

typedef struct route {
    aorm__hosts *hs;
    int host;
    bool write;
    aorm_owner *owner;      /* router owner, or NULL */
    aorm_result_cb cb;
    aorm_conn_cb ccb;
    void *user;
} route;

typedef struct fetch {
    aorm__hosts *hs;
    aorm_owner *owner;      /* router owner */
    int host;
    bool retry;             /* the COMMIT's own fetch failed: ask the primary once more */
} fetch;

typedef struct check {
    aorm__hosts *hs;
    int host;
} check;

static const char LSN_SQL[] = "SELECT (pg_current_wal_insert_lsn() - '0/0')::int8";
static const char CHECK_SQL[] =
    "SELECT pg_is_in_recovery(), current_setting('transaction_read_only') = 'on', "
    "(coalesce(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_insert_lsn() END, "
    "'0/0') - '0/0')::int8";

static void start_checks(aorm__hosts *hs);
static void start_check(aorm__hosts *hs, int i);
static void flush_parked(aorm__hosts *hs);

/* ---- small things ------------------------------------------------------------- */

/* Out of line on purpose: inlined twice into one caller (a callback that
 * holds a reference around a helper that takes and drops its own), gcc 12
 * cannot see that the outer reference keeps the struct alive and reports
 * a use after free (-Wuse-after-free) that cannot happen. */
__attribute__((noinline)) static void unref(aorm__hosts *hs) {
    if (--hs->refs > 0) return;
    free(hs->h);
    free(hs->redis_prefix);
    aorm_engine *r = hs->router;
    free(hs);
    free(r);
}

static uint64_t rnd(aorm__hosts *hs) {
    uint64_t x = hs->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    hs->rng = x;
    return x;
}

static double now(aorm__hosts *hs) { return aorm_loop_now(hs->router->loop); }

static void park_free(park *p) {
    free(p->sql);
    if (p->has_params) {
        free(p->params.slots);
        free(p->params.data);
    }
    free(p);
}

/* The primary-side label of every server, for "no primary" messages. */
static void describe(const aorm__hosts *hs, char *out, size_t cap) {
    size_t n = 0;
    out[0] = '\0';
    for (int i = 0; i < hs->n && n < cap; i++) {
        const host *h = &hs->h[i];
        const char *what = h->role == AORM_HOST_DOWN      ? (h->last_error[0] ? h->last_error : "down")
                           : h->role == AORM_HOST_STANDBY ? "standby"
                           : h->role == AORM_HOST_PRIMARY ? (h->read_only ? "primary, read-only" : "primary")
                                                          : "not checked yet";
        int w = snprintf(out + n, cap - n, "%s%s: %s", i ? "; " : "", h->label, what);
        if (w < 0) break;
        n += (size_t)w;
    }
}

/* ---- failures delivered on a later turn ------------------------------------------ */

static void deliver_fails(void *arg) {
    aorm__hosts *hs = arg;
    hs->soon_armed = false;
    hs->refs++;
    while (hs->fail_head) {
        park *p = hs->fail_head;
        hs->fail_head = p->next;
        if (!hs->fail_head) hs->fail_tail = NULL;
        aorm_error err;
        memset(&err, 0, sizeof(err));
        err.code = p->code;
        err.message = p->msg;
        if (p->kind == P_FAIL_CONN) p->ccb(hs->router, NULL, &err, p->user);
        else p->cb(hs->router, NULL, &err, p->user);
        park_free(p);
    }
    unref(hs);
}

static int fail_later(aorm__hosts *hs, aorm_owner *owner, bool conn, aorm_result_cb cb, aorm_conn_cb ccb,
                      void *user, int code, const char *msg) {
    park *p = calloc(1, sizeof(*p));
    if (!p) return AORM_ENOMEM;
    p->owner = owner;
    p->kind = conn ? P_FAIL_CONN : P_FAIL_RESULT;
    p->cb = cb;
    p->ccb = ccb;
    p->user = user;
    p->code = code;
    snprintf(p->msg, sizeof(p->msg), "%s", msg);
    if (!hs->soon_armed) {
        if (aorm_loop_soon(hs->router->loop, deliver_fails, hs) < 0) {
            free(p);
            return AORM_ENOMEM;
        }
        hs->soon_armed = true;
    }
    if (hs->fail_tail) hs->fail_tail->next = p;
    else hs->fail_head = p;
    hs->fail_tail = p;
    return 0;
}

/* ---- choosing a server ----------------------------------------------------------- */

/* A standby at `replay` has everything up to `target` (a primary's
 * pg_current_wal_insert_lsn). When the last record ends on a WAL page
 * boundary, the insert position is past the next page's header (24 bytes,
 * 40 at a segment start) while replay stops at the boundary: the same place. */
static bool reached(uint64_t replay, uint64_t target) {
    return replay >= target || (replay % 8192 == 0 && target - replay <= 40);
}

static bool up(const host *h) { return h->role == AORM_HOST_PRIMARY || h->role == AORM_HOST_STANDBY; }

static bool in_rotation(const aorm__hosts *hs, const host *h) {
    if (!up(h)) return false;
    if (h->role == AORM_HOST_STANDBY && hs->o.max_lag > 0 && h->lag > hs->o.max_lag) return false;
    return true;
}

static bool qualifies(const host *h, aorm_target_attrs t) {
    switch (t) {
    case AORM_TARGET_ANY: return true;
    case AORM_TARGET_READ_WRITE: return h->role == AORM_HOST_PRIMARY && !h->read_only;
    case AORM_TARGET_READ_ONLY: return h->read_only || h->role == AORM_HOST_STANDBY;
    case AORM_TARGET_PRIMARY: return h->role == AORM_HOST_PRIMARY;
    case AORM_TARGET_STANDBY:
    case AORM_TARGET_PREFER_STANDBY: return h->role == AORM_HOST_STANDBY;
    }
    return false;
}

static int busy(const host *h) {
    const aorm_engine *e = h->e;
    int b = e->q_len + e->acq_len;
    for (const aorm_conn *c = e->conns; c; c = c->next) b += c->inflight_ops + (c->held ? 1 : 0);
    return b;
}

/* Among the servers that qualify (and, for a standby, have replayed
 * min_lsn), one by the balance rule; -1 when none. */
static bool eligible(const aorm__hosts *hs, const host *h, aorm_target_attrs t, uint64_t min_lsn) {
    if (!in_rotation(hs, h) || !qualifies(h, t)) return false;
    return h->role != AORM_HOST_STANDBY || reached(h->lsn, min_lsn);
}

static int choose(aorm__hosts *hs, aorm_target_attrs t, uint64_t min_lsn) {
    int best = -1, nbest = 0, best_busy = 0, count = 0, only = -1;
    for (int i = 0; i < hs->n && count < 2; i++)
        if (eligible(hs, &hs->h[i], t, min_lsn)) {
            count++;
            only = i;
        }
    if (count < 2) return only; /* the common case: one primary, one standby */
    for (int i = 0; i < hs->n; i++) {
        host *h = &hs->h[i];
        if (!eligible(hs, h, t, min_lsn)) continue;
        if (hs->o.balance == AORM_BALANCE_LEAST_BUSY) {
            int b = busy(h);
            if (best < 0 || b < best_busy) {
                best = i;
                best_busy = b;
                nbest = 1;
            } else if (b == best_busy && rnd(hs) % (uint64_t)++nbest == 0) {
                best = i; /* ties: uniformly at random */
            }
        } else if (rnd(hs) % (uint64_t)++nbest == 0) {
            best = i; /* reservoir: uniformly at random */
        }
    }
    return best;
}

static int pick_write(aorm__hosts *hs) {
    int i = choose(hs, hs->o.writes, 0);
    return i;
}

static int pick_read(aorm__hosts *hs, aorm_owner *owner) {
    aorm__owner_rw *rw = owner ? aorm__owner_rw_of(owner) : NULL;
    uint64_t min_lsn = 0;
    if (rw && hs->o.read_your_writes) {
        if (rw->primary || rw->pending > 0 || rw->primary_until > now(hs)) return pick_write(hs);
        min_lsn = rw->lsn;
    } else if (rw && rw->primary) {
        return pick_write(hs);
    }
    aorm_target_attrs t = hs->o.reads;
    int i = choose(hs, t, min_lsn);
    if (i >= 0 || t == AORM_TARGET_STANDBY) return i;
    if (t == AORM_TARGET_PREFER_STANDBY || t == AORM_TARGET_READ_ONLY || t == AORM_TARGET_ANY) {
        /* no standby has replayed the owner's writes (or none is up): the primary */
        i = choose(hs, AORM_TARGET_PRIMARY, 0);
    }
    return i;
}

static void no_server_msg(aorm__hosts *hs, bool write, char *msg, size_t cap) {
    char state[384];
    describe(hs, state, sizeof(state));
    snprintf(msg, cap, "%s (%s)", write ? "no primary server to write to" : "no server to read from", state);
}

/* ---- routed calls ------------------------------------------------------------------ */

/* A routed statement lost its server: look again at once. */
static void suspect(aorm__hosts *hs, int i) {
    if (hs->closing) return;
    if (hs->h[i].checking) hs->h[i].recheck = true;
    else start_check(hs, i);
}

static bool lost(const aorm_error *err) {
    return err && (err->code == AORM_ECONNLOST || err->code == AORM_ECONNECT || err->code == AORM_EUNKNOWN_OUTCOME ||
                   err->code == AORM_EPOOLTIMEOUT);
}

static void on_lsn(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user);
static void fleet_store(aorm__hosts *hs, const char *key, uint64_t lsn);
static int fleet_wait(aorm__hosts *hs, const char *sql, const aorm_params *params, unsigned flags, double deadline,
                      aorm_owner *owner, aorm_result_cb cb, void *user);

/* Asks server i (the primary) for its position on behalf of owner; the
 * owner's reads go to the primary until it has come. */
static void fetch_lsn(aorm__hosts *hs, aorm_owner *owner, int i, aorm_conn *on, bool retry) {
    aorm__owner_rw *rw = aorm__owner_rw_of(owner);
    if (!rw) return;
    fetch *f = malloc(sizeof(*f));
    aorm_owner *sub = aorm__owner_sub(owner, i);
    if (!f || !sub) {
        free(f);
        rw->primary_until = now(hs) + fmax(2.0, 4 * hs->o.check_interval);
        return;
    }
    f->hs = hs;
    f->owner = owner;
    f->host = i;
    f->retry = retry;
    aorm_exec_options xo = {.flags = AORM_EXEC_READONLY, .deadline = -1, .owner = on ? NULL : sub};
    int rc = on ? aorm_conn_execute(on, LSN_SQL, NULL, &xo, on_lsn, f)
                : aorm_engine_execute(hs->h[i].e, LSN_SQL, NULL, &xo, on_lsn, f);
    if (rc < 0) {
        free(f);
        rw->primary_until = now(hs) + fmax(2.0, 4 * hs->o.check_interval);
        return;
    }
    hs->refs++;
    hs->own++;
    rw->pending++;
}

static void on_lsn(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    (void)e;
    fetch *f = user;
    aorm__hosts *hs = f->hs;
    aorm__owner_rw *rw = aorm__owner_rw_of(f->owner);
    int64_t v = 0;
    if (!err && aorm_result_nrows(res) == 1 && aorm_result_int64(res, 0, 0, &v) == 0) {
        if ((uint64_t)v > rw->lsn) rw->lsn = (uint64_t)v;
        if (rw->fleet_key && hs->o.redis && !hs->closing) fleet_store(hs, rw->fleet_key, (uint64_t)v);
    } else if (!hs->closing && (!err || err->code != AORM_ECANCELED)) {
        /* the position is unknown: ask the primary again (a later position
         * is as good), or keep the owner on the primary for a while */
        int p = hs->primary;
        if (!f->retry && p >= 0) fetch_lsn(hs, f->owner, p, NULL, true);
        else rw->primary_until = now(hs) + fmax(2.0, 4 * hs->o.check_interval);
    }
    rw->pending--;
    free(f);
    unref(hs);
}

void aorm__hosts_commit_queued(aorm_conn *c) {
    aorm__hosts *hs = c->e->router->group;
    if (hs->closing || !hs->o.read_your_writes) return;
    aorm_owner *owner = aorm__owner_parent(c->owner);
    if (!owner) return; /* held without a router owner: nobody to remember it for */
    fetch_lsn(hs, owner, c->e->group_index, c, false);
}

static void on_routed(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    (void)e;
    route *r = user;
    aorm__hosts *hs = r->hs;
    if (!hs->closing) {
        if (lost(err)) suspect(hs, r->host);
        if (!err && r->write && r->owner && hs->o.read_your_writes) fetch_lsn(hs, r->owner, r->host, NULL, false);
    }
    r->cb(hs->router, res, err, r->user);
    free(r);
    unref(hs);
}

static void on_routed_conn(aorm_engine *e, aorm_conn *c, const aorm_error *err, void *user) {
    (void)e;
    route *r = user;
    aorm__hosts *hs = r->hs;
    if (!hs->closing && lost(err)) suspect(hs, r->host);
    r->ccb(hs->router, c, err, r->user);
    free(r);
    unref(hs);
}

static route *route_new(aorm__hosts *hs, int i, bool write, aorm_owner *owner, aorm_result_cb cb, aorm_conn_cb ccb,
                        void *user) {
    route *r = malloc(sizeof(*r));
    if (!r) return NULL;
    r->hs = hs;
    r->host = i;
    r->write = write;
    r->owner = owner;
    r->cb = cb;
    r->ccb = ccb;
    r->user = user;
    return r;
}

/* Routes one call now (the servers' roles are known). Returns 0 or a
 * negative code (nothing will call back). */
static int route_exec(aorm__hosts *hs, const char *sql, const aorm_params *params, unsigned flags, double deadline,
                      aorm_owner *owner, aorm_result_cb cb, void *user) {
    bool read = (flags & AORM_EXEC_READONLY) && !(flags & AORM_EXEC_PRIMARY);
    if (read && owner && hs->o.redis && !(flags & ROUTE_PRIMARY_READ)) {
        aorm__owner_rw *rw = aorm__owner_rw_of(owner);
        if (rw && rw->fleet_key && rw->fleet_state != AORM__FLEET_KNOWN)
            return fleet_wait(hs, sql, params, flags, deadline, owner, cb, user);
    }
    int i = read && !(flags & ROUTE_PRIMARY_READ) ? pick_read(hs, owner) : pick_write(hs);
    if (i < 0) {
        char msg[512];
        no_server_msg(hs, !read, msg, sizeof(msg));
        return fail_later(hs, owner, false, cb, NULL, user, AORM_ECONNECT, msg);
    }
    aorm_owner *sub = NULL;
    if (owner && !(sub = aorm__owner_sub(owner, i))) return AORM_ENOMEM;
    route *r = route_new(hs, i, !read, owner, cb, NULL, user);
    if (!r) return AORM_ENOMEM;
    aorm_exec_options xo = {.flags = flags & ~(AORM_EXEC_PRIMARY | ROUTE_PRIMARY_READ), .deadline = deadline, .owner = sub};
    int rc = aorm_engine_execute(hs->h[i].e, sql, params, &xo, on_routed, r);
    if (rc < 0) {
        free(r);
        return rc;
    }
    hs->refs++;
    hs->h[i].routed++;
    return 0;
}

static int route_acquire(aorm__hosts *hs, aorm_owner *owner, aorm_conn_cb cb, void *user) {
    int i = pick_write(hs);
    if (i < 0) {
        char msg[512];
        no_server_msg(hs, true, msg, sizeof(msg));
        return fail_later(hs, owner, true, NULL, cb, user, AORM_ECONNECT, msg);
    }
    aorm_owner *sub = NULL;
    if (owner && !(sub = aorm__owner_sub(owner, i))) return AORM_ENOMEM;
    route *r = route_new(hs, i, true, owner, NULL, cb, user);
    if (!r) return AORM_ENOMEM;
    int rc = sub ? aorm_owner_acquire(sub, on_routed_conn, r) : aorm_engine_acquire(hs->h[i].e, on_routed_conn, r);
    if (rc < 0) {
        free(r);
        return rc;
    }
    hs->refs++;
    hs->h[i].routed++;
    return 0;
}

static int route_copy(aorm__hosts *hs, const char *sql, aorm_copy_fill_fn fill, void *fill_user, aorm_result_cb cb,
                      void *user) {
    int i = pick_write(hs);
    if (i < 0) {
        char msg[512];
        no_server_msg(hs, true, msg, sizeof(msg));
        return fail_later(hs, NULL, false, cb, NULL, user, AORM_ECONNECT, msg);
    }
    route *r = route_new(hs, i, true, NULL, cb, NULL, user);
    if (!r) return AORM_ENOMEM;
    int rc = aorm_engine_copy(hs->h[i].e, sql, fill, fill_user, on_routed, r);
    if (rc < 0) {
        free(r);
        return rc;
    }
    hs->refs++;
    hs->h[i].routed++;
    return 0;
}

/* ---- parking until the first checks have answered ---------------------------------- */

static park *park_new(aorm__hosts *hs, park_kind kind) {
    park *p = calloc(1, sizeof(*p));
    if (!p) return NULL;
    p->kind = kind;
    p->submitted = now(hs);
    return p;
}

static void park_push(aorm__hosts *hs, park *p) {
    if (hs->park_tail) hs->park_tail->next = p;
    else hs->park_head = p;
    hs->park_tail = p;
}

static void park_fail(aorm__hosts *hs, park *p, int code, const char *msg) {
    aorm_error err;
    memset(&err, 0, sizeof(err));
    err.code = code;
    err.message = msg;
    if (p->kind == P_ACQUIRE) p->ccb(hs->router, NULL, &err, p->user);
    else p->cb(hs->router, NULL, &err, p->user);
}

/* Routes what waited, in order (from a check's callback: calling back
 * at once is allowed here). */
static void flush_parked(aorm__hosts *hs) {
    hs->refs++;
    while (hs->park_head && !hs->closing) {
        park *p = hs->park_head;
        hs->park_head = p->next;
        if (!hs->park_head) hs->park_tail = NULL;
        int rc;
        double deadline = p->deadline;
        if (deadline > 0) {
            deadline -= now(hs) - p->submitted;
            if (deadline <= 0) deadline = 1e-6; /* expired while parked: the engine reports it */
        }
        if (p->kind == P_EXEC)
            rc = route_exec(hs, p->sql, p->has_params ? &p->params : NULL, p->flags, deadline, p->owner, p->cb, p->user);
        else if (p->kind == P_ACQUIRE)
            rc = route_acquire(hs, p->owner, p->ccb, p->user);
        else
            rc = route_copy(hs, p->sql, p->fill, p->fill_user, p->cb, p->user);
        if (rc < 0) park_fail(hs, p, rc, "could not route the statement");
        park_free(p);
    }
    unref(hs);
}

/* Takes owner's entries out of a list, in order. */
static park *take_owned(park **head, park **tail, aorm_owner *owner) {
    park *keep = NULL, *last = NULL, *gone = NULL, *gone_last = NULL;
    for (park *p = *head, *next; p; p = next) {
        next = p->next;
        p->next = NULL;
        if (p->owner == owner) {
            if (gone_last) gone_last->next = p;
            else gone = p;
            gone_last = p;
        } else {
            if (last) last->next = p;
            else keep = p;
            last = p;
        }
    }
    *head = keep;
    *tail = last;
    return gone;
}

void aorm__hosts_unpark(aorm_engine *router, aorm_owner *owner) {
    aorm__hosts *hs = router->group;
    park *gone = take_owned(&hs->park_head, &hs->park_tail, owner);
    park *failed = take_owned(&hs->fail_head, &hs->fail_tail, owner);
    park *waiting = take_owned(&hs->fleet_head, &hs->fleet_tail, owner);
    hs->refs++;
    for (park *p = waiting, *next; p; p = next) {
        next = p->next;
        park_fail(hs, p, AORM_ECANCELED, "cancelled by its owner");
        park_free(p);
    }
    for (park *p = gone, *next; p; p = next) {
        next = p->next;
        park_fail(hs, p, AORM_ECANCELED, "cancelled by its owner");
        park_free(p);
    }
    for (park *p = failed, *next; p; p = next) {
        next = p->next;
        p->kind = p->kind == P_FAIL_CONN ? P_ACQUIRE : P_EXEC;
        park_fail(hs, p, AORM_ECANCELED, "cancelled by its owner");
        park_free(p);
    }
    unref(hs);
}

static bool copy_params(aorm_params *dst, const aorm_params *src) {
    memset(dst, 0, sizeof(*dst));
    dst->count = dst->cap = src->count;
    dst->len = dst->data_cap = src->len;
    dst->slots = malloc(sizeof(*dst->slots) * (size_t)(src->count ? src->count : 1));
    dst->data = malloc(src->len ? src->len : 1);
    if (!dst->slots || !dst->data) {
        free(dst->slots);
        free(dst->data);
        return false;
    }
    if (src->count) memcpy(dst->slots, src->slots, sizeof(*dst->slots) * (size_t)src->count);
    if (src->len) memcpy(dst->data, src->data, src->len);
    return true;
}

/* ---- checks ------------------------------------------------------------------------ */

/* A statement copied to wait (parked until the checks, or for a consistency key). */
static park *park_exec_new(aorm__hosts *hs, const char *sql, const aorm_params *params, unsigned flags,
                           double deadline, aorm_owner *owner, aorm_result_cb cb, void *user) {
    park *p = park_new(hs, P_EXEC);
    if (!p || !(p->sql = aorm__strdup(sql))) {
        free(p);
        return NULL;
    }
    if (params) {
        if (!copy_params(&p->params, params)) {
            park_free(p);
            return NULL;
        }
        p->has_params = true;
    }
    p->flags = flags;
    p->deadline = deadline;
    p->owner = owner;
    p->cb = cb;
    p->user = user;
    return p;
}

/* ---- positions shared through Redis (consistency keys) ------------------------------ */

/* KEYS[1] the key, ARGV[1] the position (16 hex digits: comparing the
 * strings compares the positions), ARGV[2] the expiry in milliseconds. */
static const char FLEET_STORE_LUA[] =
    "local c = redis.call('GET', KEYS[1]) "
    "if (not c) or string.len(c) ~= 16 or ARGV[1] > c then "
    "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end "
    "redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 0";

static void on_fleet_store(aorm_redis *r, redisReply *reply, const aorm_error *err, void *user) {
    (void)r;
    (void)reply;
    aorm__hosts *hs = user;
    if (err && !hs->closing)
        aorm__engine_log(hs->router, AORM_LOG_WARN, "could not store a write position in Redis: %s",
                         err->message ? err->message : "");
    unref(hs);
}

static void fleet_store(aorm__hosts *hs, const char *key, uint64_t lsn) {
    char pos[24], ttl[32];
    snprintf(pos, sizeof(pos), "%016" PRIx64, lsn);
    long long ms = (long long)(hs->o.redis_ttl * 1000);
    snprintf(ttl, sizeof(ttl), "%lld", ms > 0 ? ms : 1);
    const char *argv[] = {"EVAL", FLEET_STORE_LUA, "1", key, pos, ttl};
    int rc = aorm_redis_command_argv(hs->o.redis, 6, argv, NULL, NULL, on_fleet_store, hs);
    if (rc < 0) {
        aorm__engine_log(hs->router, AORM_LOG_WARN, "could not store a write position in Redis: %s",
                         aorm_strerror(rc));
        return;
    }
    hs->refs++;
}

/* A stored position: 1 to 16 hex digits. */
static bool parse_pos(const char *s, size_t len, uint64_t *out) {
    if (len < 1 || len > 16) return false;
    uint64_t v = 0;
    for (size_t k = 0; k < len; k++) {
        char c = s[k];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return false;
        v = v << 4 | (uint64_t)d;
    }
    *out = v;
    return true;
}

static void route_waited(aorm__hosts *hs, park *p, unsigned extra) {
    double deadline = p->deadline;
    if (deadline > 0) {
        deadline -= now(hs) - p->submitted;
        if (deadline <= 0) deadline = 1e-6; /* expired while waiting: the engine reports it */
    }
    int rc = route_exec(hs, p->sql, p->has_params ? &p->params : NULL, p->flags | extra, deadline, p->owner, p->cb,
                        p->user);
    if (rc < 0) park_fail(hs, p, rc, "could not route the statement");
    park_free(p);
}

static void on_fleet_get(aorm_redis *r, redisReply *reply, const aorm_error *err, void *user) {
    (void)r;
    aorm__fleet_get *g = user;
    aorm__hosts *hs = g->hs;
    aorm_owner *owner = g->owner;
    unsigned gen = g->gen;
    free(g);
    uint64_t lsn = 0;
    bool ok = !err && reply &&
              (reply->type == REDIS_REPLY_NIL ||
               (reply->type == REDIS_REPLY_STRING && parse_pos(reply->str, reply->len, &lsn)));
    if (owner) {
        aorm__owner_rw *rw = aorm__owner_rw_of(owner);
        rw->fleet_get = NULL;
        if (ok && lsn > rw->lsn) rw->lsn = lsn;
        rw->fleet_state = ok && gen == rw->fleet_gen ? AORM__FLEET_KNOWN : AORM__FLEET_ASK;
        if (!hs->closing) {
            if (!ok)
                aorm__engine_log(hs->router, AORM_LOG_WARN,
                                 "could not read a consistency key from Redis (%s): the read goes to the primary",
                                 err && err->message ? err->message : "not a position");
            park *list = take_owned(&hs->fleet_head, &hs->fleet_tail, owner);
            hs->refs++;
            for (park *p = list, *next; p; p = next) {
                next = p->next;
                route_waited(hs, p, ok ? 0 : ROUTE_PRIMARY_READ);
            }
            unref(hs);
        }
    }
    unref(hs);
}

/* A read of an owner whose consistency key has not been read yet: waits
 * for the GET (started here when none is in flight). */
static int fleet_wait(aorm__hosts *hs, const char *sql, const aorm_params *params, unsigned flags, double deadline,
                      aorm_owner *owner, aorm_result_cb cb, void *user) {
    aorm__owner_rw *rw = aorm__owner_rw_of(owner);
    park *p = park_exec_new(hs, sql, params, flags, deadline, owner, cb, user);
    if (!p) return AORM_ENOMEM;
    if (rw->fleet_state == AORM__FLEET_ASK) {
        aorm__fleet_get *g = calloc(1, sizeof(*g));
        if (!g) {
            park_free(p);
            return AORM_ENOMEM;
        }
        g->owner = owner;
        g->hs = hs;
        g->gen = rw->fleet_gen;
        aorm_redis_cmd_options co;
        aorm_redis_cmd_options_init(&co);
        co.deadline = hs->o.redis_deadline;
        const char *argv[] = {"GET", rw->fleet_key};
        int rc = aorm_redis_command_argv(hs->o.redis, 2, argv, NULL, &co, on_fleet_get, g);
        if (rc < 0) { /* refused at once (breaker open, ...): this read goes to the primary */
            free(g);
            park_free(p);
            aorm__engine_log(hs->router, AORM_LOG_WARN,
                             "could not read a consistency key from Redis (%s): the read goes to the primary",
                             aorm_strerror(rc));
            return route_exec(hs, sql, params, flags | ROUTE_PRIMARY_READ, deadline, owner, cb, user);
        }
        hs->refs++;
        rw->fleet_get = g;
        rw->fleet_state = AORM__FLEET_ASKING;
    }
    if (hs->fleet_tail) hs->fleet_tail->next = p;
    else hs->fleet_head = p;
    hs->fleet_tail = p;
    return 0;
}

int aorm_owner_set_consistency_key(aorm_owner *o, const char *key) {
    aorm__owner_rw *rw = aorm__owner_rw_of(o);
    aorm_engine *r = aorm_owner_engine(o);
    if (!rw || !r || !r->group || !r->group->o.redis || (key && !*key)) return AORM_EMISUSE;
    char *k = NULL;
    if (key) {
        const char *prefix = r->group->redis_prefix;
        size_t a = strlen(prefix), b = strlen(key);
        if (!(k = malloc(a + b + 1))) return AORM_ENOMEM;
        memcpy(k, prefix, a);
        memcpy(k + a, key, b + 1);
    }
    free(rw->fleet_key);
    rw->fleet_key = k;
    rw->fleet_gen++;
    if (rw->fleet_state != AORM__FLEET_ASKING) rw->fleet_state = AORM__FLEET_ASK;
    return 0;
}

static void add_sample(aorm__hosts *hs, uint64_t lsn) {
    double t = now(hs);
    if (hs->nsamples > 0) {
        lsn_sample *last = &hs->samples[(hs->sample_next + LSN_SAMPLES - 1) % LSN_SAMPLES];
        if (last->lsn == lsn) return; /* idle: the first time it was there counts */
    }
    hs->samples[hs->sample_next] = (lsn_sample){t, lsn};
    hs->sample_next = (hs->sample_next + 1) % LSN_SAMPLES;
    if (hs->nsamples < LSN_SAMPLES) hs->nsamples++;
}

/* Seconds the standby at `replay` is behind: since the primary first
 * reached a position past it (0 when it has everything seen). */
static double lag_of(aorm__hosts *hs, uint64_t replay) {
    double t = now(hs);
    for (int k = 0; k < hs->nsamples; k++) { /* oldest first */
        int idx = (hs->sample_next - hs->nsamples + k + LSN_SAMPLES) % LSN_SAMPLES;
        if (!reached(replay, hs->samples[idx].lsn)) {
            if (k == 0 && hs->nsamples == LSN_SAMPLES) return t - hs->samples[idx].t; /* at least */
            return t - hs->samples[idx].t;
        }
    }
    return 0;
}

static void recompute(aorm__hosts *hs) {
    int p = -1;
    for (int i = 0; i < hs->n; i++) {
        host *h = &hs->h[i];
        if (h->role != AORM_HOST_PRIMARY) continue;
        /* two primaries (an old one back after a promotion): the one ahead */
        if (p < 0 || h->lsn > hs->h[p].lsn) p = i;
    }
    hs->primary = p;
    bool all = true;
    for (int i = 0; i < hs->n; i++) {
        host *h = &hs->h[i];
        if (h->role == AORM_HOST_UNKNOWN) all = false;
        if (h->role == AORM_HOST_STANDBY) h->lag = lag_of(hs, h->lsn);
        else h->lag = 0;
    }
    if (all) hs->answered = true;
}

static void on_check(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    (void)e;
    check *k = user;
    aorm__hosts *hs = k->hs;
    int i = k->host;
    free(k);
    if (hs->closing) {
        unref(hs);
        return;
    }
    host *h = &hs->h[i];
    h->checking = false;
    h->checked_at = now(hs);
    bool rec = false, ro = false;
    int64_t lsn = 0;
    if (!err && aorm_result_nrows(res) == 1 && aorm_result_bool(res, 0, 0, &rec) == 0 &&
        aorm_result_bool(res, 0, 1, &ro) == 0 && aorm_result_int64(res, 0, 2, &lsn) == 0) {
        aorm_host_role was = h->role;
        h->role = rec ? AORM_HOST_STANDBY : AORM_HOST_PRIMARY;
        h->read_only = ro;
        h->lsn = (uint64_t)lsn;
        h->checks++;
        h->last_error[0] = '\0';
        if (h->role == AORM_HOST_PRIMARY) add_sample(hs, h->lsn);
        if (was != h->role && was != AORM_HOST_UNKNOWN)
            aorm__engine_log(hs->router, AORM_LOG_WARN, "server %s is now %s", h->label,
                             rec ? "a standby" : "the primary");
    } else {
        if (h->role != AORM_HOST_DOWN && h->role != AORM_HOST_UNKNOWN)
            aorm__engine_log(hs->router, AORM_LOG_WARN, "server %s is down: %s", h->label,
                             err ? err->message : "unexpected answer to the check");
        h->role = AORM_HOST_DOWN;
        snprintf(h->last_error, sizeof(h->last_error), "%s", err && err->message ? err->message : "unexpected answer");
    }
    bool was_answered = hs->answered;
    recompute(hs);
    if (h->recheck) {
        h->recheck = false;
        start_check(hs, i);
    }
    if (hs->answered && (!was_answered || hs->park_head)) flush_parked(hs);
    unref(hs);
}

static void start_check(aorm__hosts *hs, int i) {
    host *h = &hs->h[i];
    if (h->checking || hs->closing) return;
    check *k = malloc(sizeof(*k));
    if (!k) return;
    k->hs = hs;
    k->host = i;
    aorm_exec_options xo = {.flags = AORM_EXEC_READONLY, .deadline = hs->o.check_timeout};
    if (aorm_engine_execute(h->e, CHECK_SQL, NULL, &xo, on_check, k) < 0) {
        free(k);
        return;
    }
    h->checking = true;
    hs->refs++;
    hs->own++;
}

static void on_timer(aorm_timer *t, void *arg) {
    aorm__hosts *hs = arg;
    for (int i = 0; i < hs->n; i++) start_check(hs, i);
    aorm_timer_start(t, hs->o.check_interval);
}

static void start_checks(aorm__hosts *hs) {
    if (hs->started) return;
    hs->started = true;
    for (int i = 0; i < hs->n; i++) start_check(hs, i);
    aorm_timer_start(hs->timer, hs->o.check_interval);
}

/* ---- the router's side of the public calls ----------------------------------------- */

int aorm__hosts_execute(aorm_engine *r, const char *sql, const aorm_params *params, const aorm_exec_options *opts,
                        aorm_result_cb cb, void *user) {
    aorm__hosts *hs = r->group;
    if (hs->closing) return AORM_ECLOSED;
    if (params && params->error) return params->error;
    aorm_owner *owner = opts ? opts->owner : NULL;
    if (owner && (aorm_owner_engine(owner) != r || !aorm__owner_rw_of(owner))) return AORM_EMISUSE;
    unsigned flags = opts ? opts->flags : 0;
    double deadline = opts ? opts->deadline : 0;
    start_checks(hs);
    if (hs->answered) return route_exec(hs, sql, params, flags, deadline, owner, cb, user);
    park *p = park_exec_new(hs, sql, params, flags, deadline, owner, cb, user);
    if (!p) return AORM_ENOMEM;
    park_push(hs, p);
    return 0;
}

int aorm__hosts_acquire(aorm_engine *r, aorm_owner *owner, aorm_conn_cb cb, void *user) {
    aorm__hosts *hs = r->group;
    if (hs->closing) return AORM_ECLOSED;
    start_checks(hs);
    if (hs->answered) return route_acquire(hs, owner, cb, user);
    park *p = park_new(hs, P_ACQUIRE);
    if (!p) return AORM_ENOMEM;
    p->owner = owner;
    p->ccb = cb;
    p->user = user;
    park_push(hs, p);
    return 0;
}

int aorm__hosts_copy(aorm_engine *r, const char *sql, aorm_copy_fill_fn fill, void *fill_user, aorm_result_cb cb,
                     void *user) {
    aorm__hosts *hs = r->group;
    if (hs->closing) return AORM_ECLOSED;
    start_checks(hs);
    if (hs->answered) return route_copy(hs, sql, fill, fill_user, cb, user);
    park *p = park_new(hs, P_COPY);
    if (!p || !(p->sql = aorm__strdup(sql))) {
        free(p);
        return AORM_ENOMEM;
    }
    p->fill = fill;
    p->fill_user = fill_user;
    p->cb = cb;
    p->user = user;
    park_push(hs, p);
    return 0;
}

int aorm__hosts_warm(aorm_engine *r) {
    aorm__hosts *hs = r->group;
    if (hs->closing) return AORM_ECLOSED;
    start_checks(hs);
    for (int i = 0; i < hs->n; i++) aorm_engine_warm(hs->h[i].e);
    return 0;
}

void aorm__hosts_stats(const aorm_engine *r, aorm_engine_stats *out) {
    const aorm__hosts *hs = r->group;
    memset(out, 0, sizeof(*out));
    for (int i = 0; i < hs->n; i++) {
        aorm_engine_stats s;
        aorm_engine_stats_get(hs->h[i].e, &s);
        out->statements += s.statements;
        out->round_trips += s.round_trips;
        out->syncs += s.syncs;
        out->prepares += s.prepares;
        out->prepared_hits += s.prepared_hits;
        out->resent += s.resent;
        out->connects += s.connects;
        out->connect_failures += s.connect_failures;
        out->connections_lost += s.connections_lost;
        out->cancels += s.cancels;
        out->discarded += s.discarded;
        out->overflow_opened += s.overflow_opened;
        out->overflow_closed += s.overflow_closed;
        out->pool_waits += s.pool_waits;
        out->open += s.open;
        out->idle += s.idle;
        out->held += s.held;
        out->waiting += s.waiting;
    }
    /* statements: the callers' (the checks and position fetches are the router's own) */
    out->statements = out->statements > hs->own ? out->statements - hs->own : 0;
}

void aorm__hosts_free(aorm_engine *r) {
    aorm__hosts *hs = r->group;
    if (hs->closing) return;
    hs->closing = true;
    r->closing = true;
    hs->refs++;
    if (hs->soon_armed) {
        aorm_loop_soon_cancel(r->loop, deliver_fails, hs);
        hs->soon_armed = false;
    }
    aorm_timer_free(hs->timer);
    hs->timer = NULL;
    /* every callback due, once, from inside this call */
    while (hs->park_head) {
        park *p = hs->park_head;
        hs->park_head = p->next;
        park_fail(hs, p, AORM_ECANCELED, "the engine was freed");
        park_free(p);
    }
    hs->park_tail = NULL;
    while (hs->fail_head) {
        park *p = hs->fail_head;
        hs->fail_head = p->next;
        p->kind = p->kind == P_FAIL_CONN ? P_ACQUIRE : P_EXEC;
        park_fail(hs, p, AORM_ECANCELED, "the engine was freed");
        park_free(p);
    }
    hs->fail_tail = NULL;
    while (hs->fleet_head) {
        park *p = hs->fleet_head;
        hs->fleet_head = p->next;
        park_fail(hs, p, AORM_ECANCELED, "the engine was freed");
        park_free(p);
    }
    hs->fleet_tail = NULL;
    for (int i = 0; i < hs->n; i++) aorm_engine_free(hs->h[i].e);
    aorm__owners_orphan(r);
    unref(hs);
    unref(hs); /* the router's own reference */
}

/* ---- making a router --------------------------------------------------------------- */

void aorm_hosts_options_init(aorm_hosts_options *o) {
    memset(o, 0, sizeof(*o));
    aorm_engine_options_init(&o->engine);
    o->reads = AORM_TARGET_PREFER_STANDBY;
    o->writes = AORM_TARGET_READ_WRITE;
    o->balance = AORM_BALANCE_LEAST_BUSY;
    o->check_interval = 0.5;
    o->check_timeout = 2;
    o->max_lag = 10;
    o->read_your_writes = true;
    o->redis_prefix = "aorm:ryw:";
    o->redis_ttl = 60;
    o->redis_deadline = 0.2;
}

/* Splits a conninfo with host (and port / hostaddr) lists into one
 * conninfo per host; target_session_attrs and load_balance_hosts dropped. */
static char **split_conninfo(const char *conninfo, int *n) {
    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &err);
    if (!opts) {
        PQfreemem(err);
        return NULL;
    }
    const char *hostv = NULL, *portv = NULL, *addrv = NULL;
    for (PQconninfoOption *p = opts; p->keyword; p++) {
        if (!p->val) continue;
        if (strcmp(p->keyword, "host") == 0) hostv = p->val;
        else if (strcmp(p->keyword, "port") == 0) portv = p->val;
        else if (strcmp(p->keyword, "hostaddr") == 0) addrv = p->val;
    }
    int count = 1;
    for (const char *s = hostv ? hostv : addrv ? addrv : ""; *s; s++) count += *s == ',';
    char **out = calloc((size_t)count, sizeof(*out));
    if (!out) goto fail;
    for (int i = 0; i < count; i++) {
        size_t cap = strlen(conninfo) * 2 + 64, len = 0;
        char *s = malloc(cap);
        if (!s) goto fail;
        s[0] = '\0';
        for (PQconninfoOption *p = opts; p->keyword; p++) {
            if (!p->val || !*p->val) continue;
            if (strcmp(p->keyword, "target_session_attrs") == 0) continue;
            const char *v = p->val;
            char item[512];
            bool list = strcmp(p->keyword, "host") == 0 || strcmp(p->keyword, "port") == 0 ||
                        strcmp(p->keyword, "hostaddr") == 0;
            if (list) { /* the i-th element (a single port applies to all) */
                const char *c = v;
                int k = 0;
                bool single = strchr(v, ',') == NULL;
                if (!single)
                    while (k < i && (c = strchr(c, ','))) {
                        c++;
                        k++;
                    }
                if (!c) c = "";
                size_t l = strcspn(c, ",");
                if (l >= sizeof(item)) l = sizeof(item) - 1;
                memcpy(item, c, l);
                item[l] = '\0';
                v = item;
                if (!*v) continue;
            }
            len += (size_t)snprintf(s + len, cap - len, "%s%s='", len ? " " : "", p->keyword);
            for (const char *c = v; *c && len + 4 < cap; c++) {
                if (*c == '\'' || *c == '\\') s[len++] = '\\';
                s[len++] = *c;
            }
            if (len + 2 < cap) s[len++] = '\'';
            s[len] = '\0';
        }
        out[i] = s;
    }
    (void)portv;
    PQconninfoFree(opts);
    *n = count;
    return out;
fail:
    if (out)
        for (int i = 0; i < count; i++) free(out[i]);
    free(out);
    PQconninfoFree(opts);
    return NULL;
}

static void label_of(const char *conninfo, char *out, size_t cap) {
    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &err);
    const char *h = NULL, *p = NULL, *a = NULL;
    if (opts)
        for (PQconninfoOption *o = opts; o->keyword; o++) {
            if (!o->val) continue;
            if (strcmp(o->keyword, "host") == 0) h = o->val;
            else if (strcmp(o->keyword, "port") == 0) p = o->val;
            else if (strcmp(o->keyword, "hostaddr") == 0) a = o->val;
        }
    snprintf(out, cap, "%s:%s", h && *h ? h : a && *a ? a : "localhost", p && *p ? p : "5432");
    PQconninfoFree(opts);
    PQfreemem(err);
}

aorm_engine *aorm_engine_new_hosts(aorm_loop *loop, const aorm_hosts_options *o) {
    if (!loop || !o) return NULL;
    char **split = NULL;
    int n = o->nservers;
    const char *const *servers = o->servers;
    if (!servers) {
        if (!o->conninfo || !(split = split_conninfo(o->conninfo, &n))) return NULL;
        servers = (const char *const *)split;
    }
    aorm_engine *r = NULL;
    aorm__hosts *hs = NULL;
    if (n < 1) goto fail;
    r = calloc(1, sizeof(*r));
    hs = calloc(1, sizeof(*hs));
    if (!r || !hs) goto fail;
    hs->h = calloc((size_t)n, sizeof(*hs->h));
    if (!hs->h) goto fail;
    r->loop = loop;
    r->o = o->engine;
    r->o.conninfo = NULL;
    r->group = hs;
    hs->router = r;
    hs->o = *o;
    hs->o.servers = NULL;
    hs->o.conninfo = NULL;
    if (hs->o.check_interval <= 0) hs->o.check_interval = 0.5;
    if (hs->o.check_timeout <= 0) hs->o.check_timeout = 2;
    if (hs->o.writes != AORM_TARGET_PRIMARY) hs->o.writes = AORM_TARGET_READ_WRITE;
    if ((unsigned)hs->o.reads > AORM_TARGET_PREFER_STANDBY) hs->o.reads = AORM_TARGET_PREFER_STANDBY;
    if (hs->o.redis_ttl <= 0) hs->o.redis_ttl = 60;
    if (!(hs->redis_prefix = aorm__strdup(o->redis_prefix ? o->redis_prefix : "aorm:ryw:"))) goto fail;
    hs->o.redis_prefix = hs->redis_prefix;
    hs->n = n;
    hs->primary = -1;
    hs->refs = 1;
    hs->rng = 0x9e3779b97f4a7c15ull ^ (uint64_t)(uintptr_t)hs ^ (uint64_t)(aorm_loop_now(loop) * 1e6);
    if (!hs->rng) hs->rng = 1;
    for (int i = 0; i < n; i++) {
        aorm_engine_options eo = o->engine;
        eo.conninfo = servers[i];
        hs->h[i].e = aorm_engine_new(loop, &eo);
        if (!hs->h[i].e) goto fail;
        hs->h[i].e->router = r;
        hs->h[i].e->group_index = i;
        label_of(servers[i], hs->h[i].label, sizeof(hs->h[i].label));
    }
    hs->timer = aorm_timer_new(loop, on_timer, hs);
    if (!hs->timer) goto fail;
    if (split) {
        for (int i = 0; i < n; i++) {
            memset(split[i], 0, strlen(split[i])); /* may hold a password */
            free(split[i]);
        }
        free(split);
    }
    return r;
fail:
    if (hs && hs->h)
        for (int i = 0; i < n; i++) aorm_engine_free(hs->h[i].e);
    if (hs) {
        free(hs->h);
        free(hs->redis_prefix);
    }
    free(hs);
    free(r);
    if (split) {
        for (int i = 0; i < n; i++) {
            memset(split[i], 0, strlen(split[i]));
            free(split[i]);
        }
        free(split);
    }
    return NULL;
}

/* ---- looking at a router ----------------------------------------------------------- */

bool aorm_engine_is_router(const aorm_engine *e) { return e && e->group; }

int aorm_hosts_count(const aorm_engine *r) { return r && r->group ? r->group->n : 0; }

int aorm_hosts_status(const aorm_engine *r, int i, aorm_host_status *out) {
    if (!r || !r->group || !out || i < 0 || i >= r->group->n) return AORM_EMISUSE;
    const aorm__hosts *hs = r->group;
    const host *h = &hs->h[i];
    out->role = h->role;
    out->read_only = h->read_only;
    out->in_rotation = in_rotation(hs, h);
    out->lsn = h->lsn;
    out->lag = h->lag;
    out->checked_at = h->checked_at;
    out->routed = h->routed;
    out->checks = h->checks;
    out->last_error = h->last_error;
    return 0;
}

aorm_engine *aorm_hosts_engine(const aorm_engine *r, int i) {
    if (!r || !r->group || i < 0 || i >= r->group->n) return NULL;
    return r->group->h[i].e;
}

int aorm_hosts_primary(const aorm_engine *r) { return r && r->group ? r->group->primary : -1; }

int aorm_hosts_check(aorm_engine *r) {
    if (!r || !r->group) return AORM_EMISUSE;
    aorm__hosts *hs = r->group;
    if (hs->closing) return AORM_ECLOSED;
    if (!hs->started) {
        start_checks(hs);
        return 0;
    }
    for (int i = 0; i < hs->n; i++) {
        if (hs->h[i].checking) hs->h[i].recheck = true;
        else start_check(hs, i);
    }
    return 0;
}
