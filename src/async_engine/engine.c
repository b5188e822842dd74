/* engine.c -- the engine: options, the pool, operation queues and the
 * before-poll dispatcher.
 *
 * Dispatch is the one place where statements reach connections. It runs
 * at the loop's before-poll stage, so every statement queued during a
 * loop turn (by any number of callers) goes out together: one pipeline
 * write per connection per turn. Short autocommit statements share
 * pipelines (their recent service times say they are short); anything
 * else goes to an idle connection first, and only when every connection
 * is busy is it pipelined onto the least loaded one, while the pool grows
 * toward pool_size (see pick_shared).
 *
 * Owns: the connections (conn.c), queued operations, the helper threads (worker.c).
 * Must not: call a user callback from inside the call that queued its
 * operation; free itself while its code is on the stack (depth). */
#include <arpa/inet.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>

#include "async_engine/engine_int.h"

static void dispatch(aorm_loop *loop, void *arg);
static void on_engine_timer(aorm_timer *t, void *arg);
static void engine_destroy(aorm_engine *e);
static void fail_waiters(aorm_engine *e, int code, const char *sqlstate, const char *msg);

/* ---- logging and errors -------------------------------------------------- */

void aorm__engine_log(aorm_engine *e, aorm_log_level lvl, const char *fmt, ...) {
    if (!e->o.log || lvl > e->o.log_level) return;
    char stackbuf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(stackbuf, sizeof(stackbuf), fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof(stackbuf)) {
        e->o.log(lvl, stackbuf, e->o.log_user);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (!big) {
        e->o.log(lvl, stackbuf, e->o.log_user); /* truncated beats nothing */
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    e->o.log(lvl, big, e->o.log_user);
    free(big);
}

static const char *field(const PGresult *r, int code) {
    const char *v = PQresultErrorField(r, code);
    return v ? v : "";
}

void aorm__error_from_pg(aorm_error *err, const PGresult *r) {
    memset(err, 0, sizeof(*err));
    err->code = AORM_ESERVER;
    snprintf(err->sqlstate, sizeof(err->sqlstate), "%s", field(r, PG_DIAG_SQLSTATE));
    err->message = field(r, PG_DIAG_MESSAGE_PRIMARY);
    if (!*err->message) err->message = PQresultErrorMessage(r);
    err->detail = field(r, PG_DIAG_MESSAGE_DETAIL);
    err->hint = field(r, PG_DIAG_MESSAGE_HINT);
    err->constraint = field(r, PG_DIAG_CONSTRAINT_NAME);
    err->table = field(r, PG_DIAG_TABLE_NAME);
    err->column = field(r, PG_DIAG_COLUMN_NAME);
}

static void error_make(aorm_error *err, int code, const char *sqlstate, const char *msg, const char *detail) {
    memset(err, 0, sizeof(*err));
    err->code = code;
    snprintf(err->sqlstate, sizeof(err->sqlstate), "%s", sqlstate ? sqlstate : "");
    err->message = msg ? msg : aorm_strerror(code);
    err->detail = detail ? detail : "";
    err->hint = err->constraint = err->table = err->column = "";
}

/* ---- options --------------------------------------------------------------- */

void aorm_exec_options_init(aorm_exec_options *o) {
    if (o) memset(o, 0, sizeof(*o));
}

void aorm_tx_options_init(aorm_tx_options *o) {
    if (o) memset(o, 0, sizeof(*o));
}

void aorm_engine_options_init(aorm_engine_options *o) {
    memset(o, 0, sizeof(*o));
    /* a server's defaults: a pool of 5 hangs at the first spike */
    o->pool_size = 10;
    o->max_overflow = 10;
    o->idle_timeout = 30;
    o->pool_timeout = 30;
    o->lifo = true;
    o->connect_timeout = 10;
    o->prepared_cache_size = 256;
    o->max_pipeline = 1024;
    o->reconnect_min = 0.05;
    o->reconnect_max = 2;
    o->log_level = AORM_LOG_WARN;
    o->max_param_bytes = (size_t)64 << 20;
}

/* True when libpq would need a DNS lookup for this host entry. */
static bool host_needs_lookup(const char *h) {
    if (!h[0] || h[0] == '/' || h[0] == '@') return false;
    unsigned char addr[16];
    return inet_pton(AF_INET, h, addr) != 1 && inet_pton(AF_INET6, h, addr) != 1;
}

static void free_list(char **v, int n) {
    if (!v) return;
    for (int i = 0; i < n; i++) free(v[i]);
    free(v);
}

/* Splits a libpq list ("a,b,,c": entries as written, none trimmed). */
static char **split_list(const char *s, int *n) {
    int count = 1;
    for (const char *p = s; *p; p++)
        if (*p == ',') count++;
    char **v = calloc((size_t)count, sizeof(char *));
    if (!v) return NULL;
    const char *p = s;
    for (int i = 0; i < count; i++) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        v[i] = malloc(len + 1);
        if (!v[i]) {
            free_list(v, i);
            return NULL;
        }
        memcpy(v[i], p, len);
        v[i][len] = '\0';
        p += len + (comma ? 1 : 0);
    }
    *n = count;
    return v;
}

/* Adds keyword kw = getenv(env) when the conninfo did not set kw: libpq
 * would apply it when connecting, and a host name from PGHOST must be
 * resolved off the loop like any other. */
static int add_env_default(aorm_engine *e, const char *kw, const char *env, int *index) {
    const char *v = getenv(env);
    if (*index >= 0 || !v || !*v) return 0;
    e->kw[e->nkw] = aorm__strdup(kw);
    e->val[e->nkw] = aorm__strdup(v);
    *index = e->nkw++;
    return e->kw[*index] && e->val[*index] ? 0 : AORM_ENOMEM;
}

/* Frees libpq's parsed options, wiping every value first (libpq does not,
 * and "password" / "sslpassword" are among them). */
static void conninfo_options_free(PQconninfoOption *opts) {
    for (PQconninfoOption *o = opts; o && o->keyword; o++)
        if (o->val) explicit_bzero(o->val, strlen(o->val));
    PQconninfoFree(opts);
}

/* Masks with '*' every occurrence in msg of text that may be a password of
 * the conninfo that libpq failed to parse: the value after "password=" or
 * "sslpassword=" (to the next space, quotes stripped) and the password of
 * a URI's user info (between the first ':' and the last '@' after "://").
 * libpq quotes such text in some of its messages ("invalid percent-encoded
 * token", an unterminated IPv6 address echoing the whole URI). */
static void mask_secrets(const char *conninfo, char *msg) {
    const char *cand[8][2];
    int n = 0;
    static const char *const keys[] = {"password=", "sslpassword="};
    for (size_t k = 0; k < 2; k++) {
        for (const char *p = conninfo; (p = strstr(p, keys[k])) != NULL && n < 6; p++) {
            if (p > conninfo && p[-1] != ' ' && p[-1] != '\t' && p[-1] != '?' && p[-1] != '&') continue;
            const char *v = p + strlen(keys[k]);
            if (*v == '\'') v++;
            const char *end = v;
            while (*end && *end != ' ' && *end != '\'' && *end != '&') end++;
            if (end > v) {
                cand[n][0] = v;
                cand[n][1] = end;
                n++;
            }
        }
    }
    const char *scheme = strstr(conninfo, "://");
    if (scheme) {
        const char *user = scheme + 3;
        size_t len = strcspn(user, "/?");
        const char *at = NULL;
        for (const char *q = user; q < user + len; q++)
            if (*q == '@') at = q;
        const char *colon = at ? memchr(user, ':', (size_t)(at - user)) : NULL;
        if (colon && at > colon + 1 && n < 8) {
            cand[n][0] = colon + 1;
            cand[n][1] = at;
            n++;
        }
    }
    for (int i = 0; i < n; i++) {
        size_t len = (size_t)(cand[i][1] - cand[i][0]);
        for (char *f = msg; (f = memmem(f, strlen(f), cand[i][0], len)) != NULL; f += len) memset(f, '*', len);
    }
}

/* Parses conninfo once into keyword/value arrays for PQconnectStartParams
 * and finds the host entries whose names must be resolved off the loop
 * (libpq would look them up blocking). With a hostaddr given, libpq does
 * no lookup and nothing is resolved. A port list whose length matches
 * neither 1 nor the host list is left for libpq to refuse. */
static int parse_conninfo(aorm_engine *e) {
    char *errmsg = NULL;
    PQconninfoOption *opts = PQconninfoParse(e->conninfo, &errmsg);
    if (!opts) {
        if (errmsg) mask_secrets(e->conninfo, errmsg);
        aorm__engine_log(e, AORM_LOG_ERROR, "invalid conninfo: %s", errmsg ? errmsg : "out of memory");
        PQfreemem(errmsg);
        return AORM_EMISUSE;
    }
    int n = 0;
    for (PQconninfoOption *o = opts; o->keyword; o++)
        if (o->val && *o->val) n++;
    /* + PGHOST, PGHOSTADDR, PGPORT + terminator */
    e->kw = calloc((size_t)n + 4, sizeof(char *));
    e->val = calloc((size_t)n + 4, sizeof(char *));
    if (!e->kw || !e->val) {
        conninfo_options_free(opts);
        return AORM_ENOMEM;
    }
    e->host_index = e->port_index = -1;
    int hostaddr_index = -1;
    int k = 0;
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (!o->val || !*o->val) continue;
        e->kw[k] = aorm__strdup(o->keyword);
        e->val[k] = aorm__strdup(o->val);
        if (!e->kw[k] || !e->val[k]) {
            conninfo_options_free(opts);
            e->nkw = k + 1;
            return AORM_ENOMEM;
        }
        if (strcmp(o->keyword, "host") == 0) e->host_index = k;
        if (strcmp(o->keyword, "port") == 0) e->port_index = k;
        if (strcmp(o->keyword, "hostaddr") == 0) hostaddr_index = k;
        k++;
    }
    e->nkw = k;
    conninfo_options_free(opts);
    if (add_env_default(e, "host", "PGHOST", &e->host_index) < 0 ||
        add_env_default(e, "hostaddr", "PGHOSTADDR", &hostaddr_index) < 0 ||
        add_env_default(e, "port", "PGPORT", &e->port_index) < 0)
        return AORM_ENOMEM;
    if (e->host_index < 0 || hostaddr_index >= 0) return 0;

    e->hosts = split_list(e->val[e->host_index], &e->nhosts);
    e->lookup = e->hosts ? calloc((size_t)e->nhosts, sizeof(bool)) : NULL;
    if (!e->lookup) return AORM_ENOMEM;
    for (int i = 0; i < e->nhosts; i++) {
        e->lookup[i] = host_needs_lookup(e->hosts[i]);
        if (e->lookup[i]) e->nlookups++;
    }
    if (e->nlookups == 0 || e->port_index < 0) return 0;
    int nports = 0;
    char **ports = split_list(e->val[e->port_index], &nports);
    if (!ports) return AORM_ENOMEM;
    if (nports > 1 && nports == e->nhosts) {
        e->ports = ports; /* expanded along with the hosts */
        return 0;
    }
    free_list(ports, nports);
    if (nports != 1) e->nlookups = 0; /* libpq reports the mismatch at once, before any lookup */
    return 0;
}

/* ---- lifecycle ------------------------------------------------------------- */

aorm_engine *aorm_engine_new(aorm_loop *loop, const aorm_engine_options *o) {
    if (!loop || !o || !o->conninfo) return NULL;
    aorm_engine *e = calloc(1, sizeof(*e));
    if (!e) return NULL;
    e->loop = loop;
    e->o = *o;
    if (e->o.pool_size < 1) e->o.pool_size = 1;
    if (e->o.max_overflow < 0) e->o.max_overflow = 0;
    if (e->o.max_pipeline < 1) e->o.max_pipeline = 1;
    if (e->o.prepared_cache_size < 0 || e->o.pgbouncer) e->o.prepared_cache_size = 0;
    if (e->o.connect_timeout <= 0) e->o.connect_timeout = 10;
    if (e->o.pool_timeout <= 0) e->o.pool_timeout = 30;
    if (e->o.reconnect_min <= 0) e->o.reconnect_min = 0.05;
    if (e->o.reconnect_max < e->o.reconnect_min) e->o.reconnect_max = e->o.reconnect_min;
    if (e->o.echo && e->o.log_level < AORM_LOG_SQL) e->o.log_level = AORM_LOG_SQL; /* echo means: show the SQL */
    e->conninfo = aorm__strdup(o->conninfo);
    e->o.conninfo = e->conninfo;
    if (!e->conninfo || parse_conninfo(e) < 0) goto fail;
    e->timer = aorm_timer_new(loop, on_engine_timer, e);
    e->worker = aorm__worker_new(e);
    if (!e->timer || !e->worker) goto fail;
    if (aorm_loop_before_poll_add(loop, dispatch, e) < 0) goto fail;
    return e;
fail:
    engine_destroy(e);
    return NULL;
}

/* Frees a string that may hold a secret (a password in a conninfo),
 * wiping it first. */
static void free_wiped(char *s) {
    if (!s) return;
    explicit_bzero(s, strlen(s));
    free(s);
}

static void free_conninfo(aorm_engine *e) {
    if (e->kw) {
        for (int i = 0; i < e->nkw; i++) {
            free((char *)e->kw[i]);
            free_wiped((char *)e->val[i]);
        }
    }
    free(e->kw);
    free(e->val);
    free_list(e->hosts, e->nhosts);
    free(e->lookup);
    free_list(e->ports, e->nhosts);
    free_wiped(e->conninfo);
}

static void cancel_all(aorm_engine *e) {
    fail_waiters(e, AORM_ECANCELED, "", "engine closed");
    for (aorm_conn *c = e->conns; c; c = c->next) {
        if (c->state != CONN_BROKEN) {
            c->busy++; /* keep it allocated: it is freed below */
            aorm__conn_lost(c, AORM_ECANCELED, "engine closed");
            c->busy--;
        }
    }
}

/* Frees the connections that went away while the dispatcher held them. */
void aorm__engine_bury(aorm_engine *e) {
    e->in_dispatch = false;
    while (e->graveyard) {
        aorm_conn *c = e->graveyard;
        e->graveyard = c->grave_next;
        c->dead = false;
        aorm__conn_free(c);
    }
}

static void engine_destroy(aorm_engine *e) {
    e->closing = true;
    cancel_all(e);
    aorm__engine_bury(e);
    while (e->conns) {
        aorm_conn *c = e->conns;
        e->conns = c->next;
        c->dead = false;
        aorm__conn_free(c);
    }
    aorm_loop_before_poll_remove(e->loop, dispatch, e);
    aorm__owners_orphan(e);
    aorm__worker_free(e->worker);
    aorm_timer_free(e->timer);
    free_conninfo(e);
    free(e);
}

void aorm_engine_free(aorm_engine *e) {
    if (!e) return;
    if (e->group) {
        aorm__hosts_free(e); /* a router: its servers' engines */
        return;
    }
    if (e->depth > 0) {
        /* inside one of our callbacks: cancel now, free when it unwinds */
        if (!e->closing) {
            e->closing = true;
            e->free_pending = true;
            e->depth++;
            cancel_all(e);
            e->depth--;
        }
        return;
    }
    e->depth++;
    engine_destroy(e);
}

void aorm__engine_enter(aorm_engine *e) { e->depth++; }

void aorm__engine_leave(aorm_engine *e) {
    if (--e->depth == 0 && e->free_pending) {
        e->depth++;
        engine_destroy(e);
    }
}

aorm_loop *aorm_engine_loop(const aorm_engine *e) { return e ? e->loop : NULL; }
void aorm_engine_set_data(aorm_engine *e, void *data) { if (e) e->data = data; }
void *aorm_engine_data(const aorm_engine *e) { return e ? e->data : NULL; }

void aorm_engine_stats_get(const aorm_engine *e, aorm_engine_stats *out) {
    if (!e || !out) return;
    if (e->group) {
        aorm__hosts_stats(e, out); /* a router: the sum over its servers */
        return;
    }
    *out = e->stats;
    out->open = out->idle = out->held = 0;
    for (const aorm_conn *c = e->conns; c; c = c->next) {
        if (c->state == CONN_BROKEN) continue;
        out->open++;
        if (c->held) out->held++;
        else if (aorm__conn_idle(c)) out->idle++;
    }
    out->waiting = e->q_len + e->acq_len;
}

/* ---- operations ------------------------------------------------------------ */

static double op_wait_limit(const aorm__op *op, const aorm_engine *e) {
    return fmin(op->deadline, op->submitted + e->o.pool_timeout);
}

static void arm_engine_timer(aorm_engine *e, double at) {
    if (aorm_timer_active(e->timer) && e->timer_at <= at) return;
    e->timer_at = at;
    aorm_timer_start(e->timer, at - aorm_loop_now(e->loop));
}

static aorm__op *op_new(aorm_engine *e, const char *sql, const aorm_params *p,
                        const aorm_exec_options *xo, int *rc) {
    int n = p ? p->count : 0;
    size_t sql_len = strlen(sql);
    size_t data_len = p ? p->len : 0;
    size_t arrays = (size_t)n * (sizeof(char *) + 2 * sizeof(int) + sizeof(Oid));
    aorm__op *op = malloc(sizeof(*op) + arrays + sql_len + 1 + data_len);
    if (!op) {
        *rc = AORM_ENOMEM;
        return NULL;
    }
    memset(op, 0, sizeof(*op));
    op->e = e;
    char *cur = op->storage;
    op->values = (const char **)(void *)cur;
    cur += (size_t)n * sizeof(char *);
    op->lengths = (int *)(void *)cur;
    cur += (size_t)n * sizeof(int);
    op->formats = (int *)(void *)cur;
    cur += (size_t)n * sizeof(int);
    op->types = (Oid *)(void *)cur;
    cur += (size_t)n * sizeof(Oid);
    memcpy(cur, sql, sql_len + 1);
    op->sql = cur;
    op->sql_len = sql_len;
    cur += sql_len + 1;
    if (data_len) memcpy(cur, p->data, data_len);
    op->nparams = n;
    for (int i = 0; i < n; i++) {
        const aorm_param_slot *s = &p->slots[i];
        op->values[i] = s->len < 0 ? NULL : cur + s->offset;
        op->lengths[i] = s->len < 0 ? 0 : s->len;
        op->formats[i] = s->format;
        op->types[i] = s->type;
    }
    op->hash = aorm__stmt_hash(op->sql, sql_len, op->types, n); /* statement cache and dispatch */
    op->flags = xo ? xo->flags : 0;
    op->submitted = aorm_loop_now(e->loop);
    double d = xo ? xo->deadline : 0;
    if (d == 0) d = e->o.statement_timeout > 0 ? e->o.statement_timeout : -1;
    op->deadline = d > 0 ? op->submitted + d : AORM__NEVER;
    op->queued = true;
    if (xo && xo->owner) aorm__owner_link(xo->owner, op);
    return op;
}

/* Frees op once its callback has run and no in-flight item refers to it. */
void aorm__op_release(aorm__op *op) {
    if (op->done && op->nitems == 0 && !op->queued) {
        PQclear(op->prep_err);
        free(op);
    }
}

/* One parameter as the echo shows it: integers and floats decoded, text
 * quoted (cut at 40 bytes), arrays as type[count], anything else as its
 * size. */
static int echo_param(char *out, size_t cap, const aorm__op *op, int i) {
    const char *v = op->values[i];
    int len = op->lengths[i];
    uint32_t t = op->types[i];
    int64_t iv;
    double dv;
    if (!v) return snprintf(out, cap, "NULL");
    if (op->formats[i] == 0) return snprintf(out, cap, "'%.*s'", len > 40 ? 40 : len, v);
    if (aorm_decode_int(t, v, len, &iv) == 0) return snprintf(out, cap, "%lld", (long long)iv);
    if ((t == AORM_T_FLOAT8 || t == AORM_T_FLOAT4) && aorm_decode_float8(t, v, len, &dv) == 0)
        return snprintf(out, cap, "%g", dv);
    if (t == AORM_T_TEXT || t == AORM_T_VARCHAR || t == AORM_T_JSON)
        return snprintf(out, cap, "'%.*s'%s", len > 40 ? 40 : len, v, len > 40 ? "..." : "");
    if (t == AORM_T_BOOL && len == 1) return snprintf(out, cap, "%s", v[0] ? "true" : "false");
    if (len >= 20 && (t == AORM_T_INT8_ARRAY || t == AORM_T_INT4_ARRAY || t == AORM_T_TEXT_ARRAY ||
                      t == AORM_T_UUID_ARRAY || t == AORM_T_INT2_ARRAY)) {
        /* header: ndim, flags, elem oid, then (dim, lbound) */
        uint32_t ndim = aorm__get_be32(v);
        uint32_t n = ndim ? aorm__get_be32(v + 12) : 0;
        const char *name = t == AORM_T_INT8_ARRAY ? "int8" : t == AORM_T_INT4_ARRAY ? "int4"
                         : t == AORM_T_TEXT_ARRAY ? "text" : t == AORM_T_UUID_ARRAY ? "uuid" : "int2";
        return snprintf(out, cap, "%s[%u]", name, n);
    }
    if (len >= 12 && aorm__get_be32(v) == 1) /* another one-dimensional array */
        return snprintf(out, cap, "array[%u]", aorm__get_be32(v + 12));
    return snprintf(out, cap, "<%d bytes>", len);
}

static void echo(aorm_engine *e, const aorm__op *op, const aorm_result *res, const aorm_error *err) {
    double ms = (aorm_loop_now(e->loop) - op->submitted) * 1000.0;
    char params[512];
    size_t pl = 0;
    params[0] = '\0';
    for (int i = 0; i < op->nparams && pl < sizeof(params) - 64; i++) {
        int w = snprintf(params + pl, sizeof(params) - pl, "%s$%d=", i ? ", " : " [", i + 1);
        if (w < 0) break;
        pl += (size_t)w;
        if (e->o.echo_params && !(op->flags & AORM_EXEC_SENSITIVE))
            w = echo_param(params + pl, sizeof(params) - pl, op, i);
        else w = snprintf(params + pl, sizeof(params) - pl, "redacted");
        if (w < 0) break;
        pl += (size_t)w;
        if (pl >= sizeof(params) - 2) pl = sizeof(params) - 3;
    }
    if (op->nparams > 0) {
        params[pl++] = ']';
        params[pl] = '\0';
    }
    if (err)
        aorm__engine_log(e, AORM_LOG_SQL, "%s%s -> error %s %s (%.3f ms)", op->sql, params, err->sqlstate,
                         err->message, ms);
    else
        aorm__engine_log(e, AORM_LOG_SQL, "%s%s -> %s, %d rows (%.3f ms)", op->sql, params,
                         aorm_result_cmd_tag(res), res->nrows, ms);
}

/* The error a statement flagged AORM_EXEC_SENSITIVE reports: a server
 * error keeps its code, SQLSTATE and the names of what it refers to
 * (constraint, table, column), but not the message, detail and hint, where
 * PostgreSQL quotes values ("invalid input syntax for type integer:
 * \"...\"", "Key (email)=(...) already exists"). The engine's own errors
 * carry no values and pass as they are. */
static const aorm_error *sensitive_error(const aorm_error *err, aorm_error *out, char *msg, size_t cap) {
    if (!err || err->code != AORM_ESERVER) return err;
    *out = *err;
    snprintf(msg, cap, "server error %s%s%s (message withheld: the statement is marked sensitive)",
             err->sqlstate, *err->constraint ? " on constraint " : "", err->constraint);
    out->message = msg;
    out->detail = "";
    out->hint = "";
    return out;
}

void aorm__op_deliver(aorm__op *op, aorm_result *res, const aorm_error *err) {
    aorm_engine *e = op->e;
    aorm__assert(!op->done);
    op->done = true;
    aorm_error withheld;
    char withheld_msg[160];
    if (op->flags & AORM_EXEC_SENSITIVE) err = sensitive_error(err, &withheld, withheld_msg, sizeof(withheld_msg));
    aorm__owner_unlink(op);
    if (op->kind != OP_ACQUIRE && e->o.echo && e->o.log && e->o.log_level >= AORM_LOG_SQL)
        echo(e, op, res, err);
    aorm_conn *auto_conn = op->auto_release;
    if (op->role != ROLE_INTERNAL) {
        aorm_conn *outer = e->cb_conn;
        e->cb_conn = op->held;
        if (op->kind == OP_ACQUIRE) op->cb.conn(e, NULL, err, op->user);
        else op->cb.result(e, err ? NULL : res, err, op->user);
        e->cb_conn = outer;
    } else if (err && err->code != AORM_ECANCELED) {
        aorm__engine_log(e, AORM_LOG_WARN, "internal statement failed: %s: %s", op->sql, err->message);
    }
    if (auto_conn) aorm_conn_release(auto_conn);
}

void aorm__op_fail(aorm__op *op, int code, const char *sqlstate, const char *msg) {
    aorm_error err;
    /* failures to reach the server carry the last connection error */
    const char *detail =
        (code == AORM_ECONNECT || code == AORM_EPOOLTIMEOUT || code == AORM_EAUTH) ? op->e->last_connect_error : NULL;
    error_make(&err, code, sqlstate, msg, detail);
    aorm__op_deliver(op, NULL, &err);
}

void aorm__op_requeue(aorm__op *op) {
    aorm_engine *e = op->e;
    op->resends++;
    PQclear(op->prep_err);
    op->prep_err = NULL;
    op->queued = true;
    op->next = e->q_head; /* ahead of newer work: it was submitted first */
    e->q_head = op;
    if (!e->q_tail) e->q_tail = op;
    e->q_len++;
}

static void mark_dirty(aorm_conn *c);

/* A held connection's statement that must run again where it was: at the
 * head of the holder's queue, ahead of anything queued after it. */
void aorm__op_requeue_held(aorm__op *op) {
    aorm_conn *c = op->held;
    op->resends++;
    PQclear(op->prep_err);
    op->prep_err = NULL;
    op->queued = true;
    op->next = c->pend_head;
    c->pend_head = op;
    if (!c->pend_tail) c->pend_tail = op;
    mark_dirty(c);
}

static void queue_push(aorm__op **head, aorm__op **tail, aorm__op *op) {
    op->next = NULL;
    if (*tail) (*tail)->next = op;
    else *head = op;
    *tail = op;
    /* Work queued after the before-poll stage (from a soon callback, at
     * the end of a turn) must keep the loop running until the next
     * before-poll stage dispatches it, even when no connection is open
     * yet: wake it. The wake ends at that stage, so it never turns the
     * poll itself non-blocking. */
    aorm_loop_wake(op->e->loop);
}

int aorm_engine_execute(aorm_engine *e, const char *sql, const aorm_params *params,
                        const aorm_exec_options *opts, aorm_result_cb cb, void *user) {
    if (!e || !sql || !cb) return AORM_EMISUSE;
    if (e->group) return aorm__hosts_execute(e, sql, params, opts, cb, user);
    if (e->closing) return AORM_ECLOSED;
    if (params && params->error) return params->error;
    if (opts && opts->owner && aorm_owner_engine(opts->owner) != e) return AORM_EMISUSE;
    if (params && e->o.max_param_bytes && params->len > e->o.max_param_bytes) return AORM_ERANGE;
    int rc = aorm__pgbouncer_check(e, sql);
    if (rc < 0) return rc;
    aorm__op *op = op_new(e, sql, params, opts, &rc);
    if (!op) return rc;
    op->cb.result = cb;
    op->user = user;
    queue_push(&e->q_head, &e->q_tail, op);
    e->q_len++;
    return 0;
}

aorm_result *aorm_result_detach(aorm_result *r) {
    if (!r) return NULL;
    if (r->heap) return r;
    aorm_result *d = malloc(sizeof(*d));
    if (!d) return NULL;
    *d = *r;
    d->heap = 1;
    r->pg = NULL; /* ownership moved: the engine will not clear it */
    return d;
}

struct pg_result *aorm_result_pgresult(const aorm_result *r) { return r ? r->pg : NULL; }

void aorm_result_free(aorm_result *r) {
    if (!r || !r->heap) return;
    PQclear(r->pg);
    free(r);
}

/* ---- held connections ------------------------------------------------------ */

int aorm_engine_acquire(aorm_engine *e, aorm_conn_cb cb, void *user) {
    if (!e || !cb) return AORM_EMISUSE;
    if (e->group) return aorm__hosts_acquire(e, NULL, cb, user);
    if (e->closing) return AORM_ECLOSED;
    int rc = 0;
    aorm__op *op = op_new(e, "", NULL, NULL, &rc);
    if (!op) return rc;
    op->kind = OP_ACQUIRE;
    op->cb.conn = cb;
    op->user = user;
    queue_push(&e->acq_head, &e->acq_tail, op);
    e->acq_len++;
    return 0;
}

static void mark_dirty(aorm_conn *c) {
    if (c->e->in_dispatch) c->e->dirty_during_dispatch = true;
    if (c->in_dirty) return;
    c->in_dirty = true;
    c->dirty_next = c->e->dirty;
    c->e->dirty = c;
}

static int conn_submit(aorm_conn *c, aorm__op *op) {
    op->held = c;
    queue_push(&c->pend_head, &c->pend_tail, op);
    mark_dirty(c);
    return 0;
}

static int conn_check(const aorm_conn *c) {
    if (!c || !c->held || c->releasing) return AORM_EMISUSE;
    if (c->e->closing) return AORM_ECLOSED;
    if (c->state == CONN_BROKEN) return AORM_ECONNLOST;
    return 0;
}

static int conn_exec_role(aorm_conn *c, const char *sql, const aorm_params *params,
                          const aorm_exec_options *opts, uint8_t role, aorm_result_cb cb, void *user) {
    int rc = conn_check(c);
    if (rc < 0) return rc;
    if (!sql || (!cb && role != ROLE_INTERNAL)) return AORM_EMISUSE;
    if (params && params->error) return params->error;
    aorm_exec_options mapped; /* an owner of the router this server belongs to: its owner here */
    if (opts && opts->owner && c->e->router && aorm_owner_engine(opts->owner) == c->e->router) {
        mapped = *opts;
        if (!(mapped.owner = aorm__owner_sub(opts->owner, c->e->group_index))) return AORM_ENOMEM;
        opts = &mapped;
    }
    if (opts && opts->owner && aorm_owner_engine(opts->owner) != c->e) return AORM_EMISUSE;
    if (params && c->e->o.max_param_bytes && params->len > c->e->o.max_param_bytes) return AORM_ERANGE;
    if ((rc = aorm__pgbouncer_check(c->e, sql)) < 0) return rc;
    aorm__op *op = op_new(c->e, sql, params, opts, &rc);
    if (!op) return rc;
    if (!op->owner && c->owner && role != ROLE_INTERNAL) aorm__owner_link(c->owner, op);
    op->role = role;
    op->cb.result = cb;
    op->user = user;
    return conn_submit(c, op);
}

int aorm_conn_execute(aorm_conn *c, const char *sql, const aorm_params *params,
                      const aorm_exec_options *opts, aorm_result_cb cb, void *user) {
    return conn_exec_role(c, sql, params, opts, ROLE_USER, cb, user);
}

int aorm_conn_begin(aorm_conn *c, const aorm_tx_options *o, aorm_result_cb cb, void *user) {
    char sql[128] = "BEGIN";
    if (o) {
        static const char *iso[] = {"", " ISOLATION LEVEL READ COMMITTED", " ISOLATION LEVEL REPEATABLE READ",
                                    " ISOLATION LEVEL SERIALIZABLE"};
        if ((unsigned)o->isolation > AORM_ISO_SERIALIZABLE) return AORM_EMISUSE;
        snprintf(sql, sizeof(sql), "BEGIN%s%s%s", iso[o->isolation], o->read_only ? " READ ONLY" : "",
                 o->deferrable ? " DEFERRABLE" : "");
    }
    aorm_exec_options xo = {.flags = AORM_EXEC_UNPREPARED, .deadline = -1};
    return conn_exec_role(c, sql, NULL, &xo, ROLE_BEGIN, cb, user);
}

int aorm_conn_commit(aorm_conn *c, aorm_result_cb cb, void *user) {
    aorm_exec_options xo = {.flags = AORM_EXEC_UNPREPARED, .deadline = -1};
    int rc = conn_exec_role(c, "COMMIT", NULL, &xo, ROLE_COMMIT, cb, user);
    if (rc == 0 && c->e->router) aorm__hosts_commit_queued(c); /* read-your-writes (hosts.c) */
    return rc;
}

int aorm_conn_rollback(aorm_conn *c, aorm_result_cb cb, void *user) {
    aorm_exec_options xo = {.flags = AORM_EXEC_UNPREPARED, .deadline = -1};
    return conn_exec_role(c, "ROLLBACK", NULL, &xo, ROLE_END, cb, user);
}

/* "<verb> <quoted name>": names are identifiers, quoted so that nothing a
 * caller passes can change the statement. */
static int savepoint_stmt(aorm_conn *c, const char *verb, const char *name, aorm_result_cb cb, void *user) {
    if (!name || !*name) return AORM_EMISUSE;
    aorm__buf b = {0};
    int rc = AORM_ENOMEM;
    if (aorm__buf_append(&b, verb, strlen(verb)) < 0 || aorm__buf_putc(&b, '"') < 0) goto out;
    for (const char *p = name; *p; p++)
        if ((*p == '"' && aorm__buf_putc(&b, '"') < 0) || aorm__buf_putc(&b, *p) < 0) goto out;
    if (aorm__buf_append(&b, "\"", 2) < 0) goto out;
    aorm_exec_options xo = {.flags = AORM_EXEC_UNPREPARED | (strncmp(verb, "ROLLBACK", 8) == 0 ? AORM__EXEC_NEW_GROUP : 0),
                            .deadline = -1};
    rc = conn_exec_role(c, b.data, NULL, &xo, ROLE_USER, cb, user);
out:
    aorm__buf_free(&b);
    return rc;
}

int aorm_conn_savepoint(aorm_conn *c, const char *name, aorm_result_cb cb, void *user) {
    return savepoint_stmt(c, "SAVEPOINT ", name, cb, user);
}
int aorm_conn_release_savepoint(aorm_conn *c, const char *name, aorm_result_cb cb, void *user) {
    return savepoint_stmt(c, "RELEASE SAVEPOINT ", name, cb, user);
}
int aorm_conn_rollback_to(aorm_conn *c, const char *name, aorm_result_cb cb, void *user) {
    return savepoint_stmt(c, "ROLLBACK TO SAVEPOINT ", name, cb, user);
}

aorm_tx_status aorm_conn_tx_status(const aorm_conn *c) {
    if (!c || c->state == CONN_BROKEN) return AORM_TX_UNKNOWN;
    /* Inside the callback of one of its statements: the state that
     * statement left behind, whatever is queued after it and whether or
     * not the sync behind it has been read (conn.c tracks it per answer).
     * Elsewhere: ACTIVE while statements are queued or unanswered. */
    if (c->e->cb_conn == c) return c->txs;
    if (c->inflight_ops > 0 || c->pend_head) return AORM_TX_ACTIVE;
    return c->txs;
}

bool aorm_conn_broken(const aorm_conn *c) { return !c || c->state == CONN_BROKEN; }

static void unlink_conn(aorm_engine *e, aorm_conn *c) {
    if (c->prev) c->prev->next = c->next;
    else if (e->conns == c) e->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    c->prev = c->next = NULL;
    if (c->in_dirty) {
        aorm_conn **pp = &e->dirty;
        while (*pp && *pp != c) pp = &(*pp)->dirty_next;
        if (*pp) *pp = c->dirty_next;
        c->in_dirty = false;
    }
}

void aorm_conn_release(aorm_conn *c) {
    if (!c || !c->held || c->releasing) return;
    aorm_engine *e = c->e;
    c->releasing = true;
    c->owner = NULL;
    e->rescan = true;
    if (e->closing) return; /* engine_destroy frees every connection */
    if (c->state == CONN_BROKEN) {
        e->nheld--;
        unlink_conn(e, c);
        aorm__conn_free(c);
        return;
    }
    /* Anything that may have left a transaction open is rolled back; the
     * dispatcher hands the connection back once it is clean. */
    if (c->in_tx || c->txs == AORM_TX_INTRANS || c->txs == AORM_TX_INERROR || c->pend_head) {
        int rc = 0;
        aorm_exec_options xo = {.flags = AORM_EXEC_UNPREPARED, .deadline = -1};
        aorm__op *op = op_new(e, "ROLLBACK", NULL, &xo, &rc);
        if (!op) {
            aorm__conn_lost(c, AORM_ENOMEM, "out of memory cleaning a released connection");
            return;
        }
        op->role = ROLE_INTERNAL;
        conn_submit(c, op);
    }
    mark_dirty(c);
}

/* The operation both COPY entry points queue: unprepared (COPY cannot be
 * prepared), without a deadline (how long a COPY runs is a matter of the
 * caller's data), with the fill callback attached. NULL with *rc set on
 * failure. */
static aorm__op *copy_op_new(aorm_engine *e, const char *sql, aorm_copy_fill_fn fill, void *fill_user,
                             aorm_result_cb cb, void *user, int *rc) {
    aorm_exec_options xo = {.flags = AORM_EXEC_UNPREPARED, .deadline = -1};
    aorm__op *op = op_new(e, sql, NULL, &xo, rc);
    if (!op) return NULL;
    op->kind = OP_COPY;
    op->fill = fill;
    op->fill_user = fill_user;
    op->cb.result = cb;
    op->user = user;
    return op;
}

int aorm_engine_copy(aorm_engine *e, const char *sql, aorm_copy_fill_fn fill, void *fill_user,
                     aorm_result_cb cb, void *user) {
    if (!e || !sql || !fill || !cb) return AORM_EMISUSE;
    if (e->group) return aorm__hosts_copy(e, sql, fill, fill_user, cb, user);
    if (e->closing) return AORM_ECLOSED;
    int rc = 0;
    aorm__op *op = copy_op_new(e, sql, fill, fill_user, cb, user, &rc);
    if (!op) return rc;
    queue_push(&e->acq_head, &e->acq_tail, op); /* needs a connection of its own */
    e->acq_len++;
    return 0;
}

int aorm_conn_copy(aorm_conn *c, const char *sql, aorm_copy_fill_fn fill, void *fill_user,
                   aorm_result_cb cb, void *user) {
    int rc = conn_check(c);
    if (rc < 0) return rc;
    if (!sql || !fill || !cb) return AORM_EMISUSE;
    aorm__op *op = copy_op_new(c->e, sql, fill, fill_user, cb, user, &rc);
    if (!op) return rc;
    if (c->owner) aorm__owner_link(c->owner, op);
    return conn_submit(c, op);
}

/* ---- connection events ----------------------------------------------------- */

void aorm__engine_conn_ready(aorm_engine *e, aorm_conn *c) {
    e->backoff = 0;
    e->next_connect_at = 0;
}

static void fail_list(aorm__op *op, int code, const char *sqlstate, const char *msg) {
    while (op) {
        aorm__op *next = op->next;
        op->queued = false;
        aorm__op_fail(op, code, sqlstate, msg);
        aorm__op_release(op);
        op = next;
    }
}

static void fail_waiters(aorm_engine *e, int code, const char *sqlstate, const char *msg) {
    aorm__op *q = e->q_head, *a = e->acq_head;
    e->rescan = true; /* connections reserved for these acquires go back */
    e->q_head = e->q_tail = e->acq_head = e->acq_tail = NULL;
    e->q_len = e->acq_len = 0;
    fail_list(q, code, sqlstate, msg);
    fail_list(a, code, sqlstate, msg);
}

void aorm__engine_conn_gone(aorm_engine *e, aorm_conn *c, bool connect_failed) {
    e->nconns--;
    if (e->closing) return; /* engine_destroy frees every listed connection */
    bool keep = c->held && !c->releasing; /* its holder still has the handle */
    if (!keep) {
        if (c->held) e->nheld--;
        unlink_conn(e, c);
        aorm__conn_free(c);
    }
    if (connect_failed) {
        double now = aorm_loop_now(e->loop);
        e->backoff = e->backoff > 0 ? fmin(e->backoff * 2, e->o.reconnect_max) : e->o.reconnect_min;
        e->next_connect_at = now + e->backoff;
        /* Waiting callers keep waiting, up to their pool timeout or
         * deadline, while the engine reconnects with backoff: a server
         * restart is a pause, not an error. Refused credentials or a
         * failed certificate check will not heal by waiting: those
         * callers hear it now. */
        if (e->last_connect_code == AORM_EAUTH) fail_waiters(e, AORM_EAUTH, "28000", e->last_connect_error);
        else if (e->q_head || e->acq_head) arm_engine_timer(e, e->next_connect_at);
    }
}

/* ---- the dispatcher -------------------------------------------------------- */

static bool shared_usable(const aorm_conn *c) {
    return c->state == CONN_READY && !c->held && !c->draining && !c->reserved && !c->dead;
}

/* PgBouncer in transaction mode (o.pgbouncer) hands the server connection
 * to another client as soon as a transaction ends (a ReadyForQuery with no
 * transaction open), and 1.18 does not wait for the syncs still in flight:
 * whatever the client pipelined behind that sync could reach another
 * server. So a new sync group goes out only on a connection with nothing
 * in flight, or behind groups of a transaction block whose end (COMMIT,
 * ROLLBACK) has not been sent; a statement that joins the open group goes
 * out at once (statements of one group are one transaction: one server). */
static bool pgb_may_send(const aorm_conn *c, const aorm__op *op) {
    if (c->icount == 0 && !c->group_open) return true;
    bool deadline = op->kind == OP_QUERY && op->deadline < AORM__NEVER;
    bool share = ((op->flags & AORM_EXEC_READONLY) && !deadline) || (c->held && c->in_tx) || op->role == ROLE_BEGIN;
    bool new_group = (op->flags & AORM__EXEC_NEW_GROUP) || op->role == ROLE_END || op->kind == OP_COPY;
    if (c->group_open && share && !new_group) return true;
    if (!c->held || !c->in_tx) return false;
    for (uint32_t i = 0; i < c->icount; i++) {
        const aorm__item *it = &c->items[(c->ihead + i) % c->icap];
        if (it->kind == IT_QUERY && it->op && (it->op->role == ROLE_COMMIT || it->op->role == ROLE_END)) return false;
    }
    return true;
}

static void touch(aorm_conn *c, aorm_conn **touched) {
    if (c->touched) return;
    c->touched = true;
    c->group_open = false;
    c->touched_next = *touched;
    *touched = c;
}

/* Sends one op on c with the sync discipline of its kind: read-only
 * autocommit statements and statements inside a transaction block share a
 * sync; anything else is its own implicit transaction. */
static int send_one(aorm_conn *c, aorm__op *op) {
    /* a statement with a deadline outside a transaction block has a sync
     * group of its own: the timeout set for it ends with that group */
    bool deadline = op->kind == OP_QUERY && op->deadline < AORM__NEVER;
    bool share = ((op->flags & AORM_EXEC_READONLY) && !deadline) || (c->held && c->in_tx) || op->role == ROLE_BEGIN;
    /* ROLLBACK [TO SAVEPOINT] must run even when a statement before it in
     * the same turn failed: it opens a sync group of its own */
    if (((op->flags & AORM__EXEC_NEW_GROUP) || op->role == ROLE_END) && c->group_open) {
        if (aorm__conn_sync(c) < 0) return -1;
        c->group_open = false;
    }
    if (!share && c->group_open) {
        if (aorm__conn_sync(c) < 0) return -1;
        c->group_open = false;
    }
    if (aorm__conn_send(c, op) < 0) return -1;
    if (op->kind == OP_COPY) return 0; /* not in pipeline mode: no sync */
    if (share && (op->role != ROLE_COMMIT && op->role != ROLE_END)) {
        c->group_open = true;
        return 0;
    }
    if (aorm__conn_sync(c) < 0) return -1;
    c->group_open = false;
    return 0;
}

/* A connection idle for more than a millisecond may have been closed by
 * the server while the loop was not looking (the caller may have blocked,
 * or the loop has not polled since): check it before sending. Measured on
 * the monotonic clock, not the loop's cached time, for that reason. */
static bool needs_check(aorm_engine *e, aorm_conn *c) {
    if (c->checked_turn == e->turn) return false; /* checked already in this dispatch */
    if (!e->o.pre_ping && aorm__mono_now() - c->last_used <= 0.001) return false;
    c->checked_turn = e->turn; /* aorm__conn_check_alive follows */
    return true;
}

/* ---- service times: what dispatch knows of a statement ----------------------
 *
 * Pipelining many short statements on one connection is what makes the
 * engine fast; pipelining anything behind a long statement is head-of-line
 * blocking. Dispatch tells the two apart by the service time each
 * statement text took recently: the time between its answer and the
 * previous answer on its connection (or its send, if later). A statement
 * never seen, or one that took long, is not pipelined behind, nor
 * pipelined behind others while an idle connection exists. */

static float lat_expect(const aorm_engine *e, const aorm__op *op) {
    const aorm__lat *l = &e->lat[op->hash & (AORM__LAT_SLOTS - 1)];
    return l->hash == op->hash && l->us > 0 ? l->us : -1.0f;
}

void aorm__lat_sent(aorm_conn *c, aorm__op *op) {
    op->expect_us = lat_expect(c->e, op);
    op->sent_mono = aorm__mono_now();
    if (op->expect_us < 0) c->unknown_inflight++;
    else c->expect_us += op->expect_us;
}

void aorm__lat_answered(aorm_conn *c, aorm__op *op, bool ran) {
    aorm_engine *e = c->e;
    double now = aorm__mono_now();
    /* two answers of one read say nothing of the time between them */
    bool same_read = c->last_answer_read == c->reads && c->last_answer > op->sent_mono;
    c->last_answer_read = c->reads;
    double us;
    if (c->last_answer > op->sent_mono) {
        /* answered right behind another answer: the gap is the server's time */
        us = (now - c->last_answer) * 1e6;
    } else {
        /* the first answer since it was sent: less the round trip itself,
         * whose estimate is the smallest such wait seen lately (never
         * above 2 ms: a slow first statement must not pass for a round
         * trip; a slower network only makes fewer statements look short) */
        double wait = (now - op->sent_mono) * 1e6;
        e->rtt_us = fmin(2000.0, e->rtt_us > 0 ? fmin(wait, e->rtt_us * 1.01 + 1.0) : wait);
        us = wait - e->rtt_us;
    }
    c->last_answer = now;
    if (op->expect_us < 0) {
        if (c->unknown_inflight > 0) c->unknown_inflight--;
    } else {
        c->expect_us = c->inflight_ops > 0 ? fmax(0.0, c->expect_us - op->expect_us) : 0.0;
    }
    if (op->kind != OP_QUERY || !ran || same_read) return;
    aorm__lat *l = &e->lat[op->hash & (AORM__LAT_SLOTS - 1)];
    /* A slowly rising minimum, not an average: a sample can only be too
     * long (the loop was busy with other callbacks between two reads, the
     * machine was loaded), never too short, so the smallest recent one is
     * the statement's cost; one that has really become slow rises 10 % a
     * sample, and overdue() stops packing behind a stuck one at once. */
    if (l->hash != op->hash || l->us <= 0) {
        l->hash = op->hash;
        l->us = (float)fmax(us, 1.0);
    } else {
        l->us = (float)fmax(1.0, fmin(us, l->us * 1.1 + 1.0));
    }
}

/* Pipelined behind work expected to take longer than this, a statement
 * waits rather than runs: it goes to an idle connection instead. */
#define AORM__PACK_BUDGET_US 5000.0
/* and never more than this many statements per connection at once */
#define AORM__PACK 32

/* True when the statement at the head of c's pipeline has run longer
 * than the budget (a short statement stuck on a lock, say): nothing is
 * pipelined behind it while it is that late. */
static bool overdue(const aorm_conn *c) {
    for (uint32_t i = 0; i < c->icount; i++) {
        const aorm__item *it = &c->items[(c->ihead + i) % c->icap];
        if (it->kind != IT_QUERY) continue;
        double started = fmax(it->op->sent_mono, c->last_answer);
        return (c->e->turn_mono - started) * 1e6 > fmax(AORM__PACK_BUDGET_US, it->op->expect_us);
    }
    return false;
}

/* The connection for the next autocommit statement:
 *   1. a busy connection whose work in flight is known to be short, when
 *      op is known to be short too (the fullest one that stays within
 *      the budget: short statements share pipelines, the fast path);
 *   2. else an idle connection (the most or least recently used, per
 *      `lifo`): nothing waits behind a long or unknown statement while
 *      another connection is free;
 *   3. else the least loaded connection: op is pipelined behind others
 *      (*packed is set: the pool should grow).
 * NULL when no shared connection can take it. */
static aorm_conn *pick_shared(aorm_engine *e, const aorm__op *op, bool *packed) {
    float want = lat_expect(e, op);
    aorm_conn *idle = NULL, *fit = NULL, *least = NULL;
    double least_load = 0;
    for (aorm_conn *c = e->conns; c; c = c->next) {
        if (!shared_usable(c) || c->icount >= (uint32_t)e->o.max_pipeline) continue;
        if (e->o.pgbouncer && !pgb_may_send(c, op)) continue;
        if (c->icount == 0) {
            if (!c->touched && needs_check(e, c) && !aorm__conn_check_alive(c))
                return pick_shared(e, op, packed); /* the list changed */
            if (!idle || (e->o.lifo ? c->last_used > idle->last_used : c->last_used < idle->last_used)) idle = c;
            continue;
        }
        if (want >= 0 && c->unknown_inflight == 0 && c->inflight_ops < AORM__PACK &&
            c->expect_us + want <= AORM__PACK_BUDGET_US && (!fit || c->expect_us > fit->expect_us) &&
            !overdue(c))
            fit = c;
        double load = c->unknown_inflight * 1e12 + c->expect_us;
        if (!least || load < least_load) {
            least = c;
            least_load = load;
        }
    }
    *packed = false;
    if (fit) return fit;
    if (idle) return idle;
    *packed = least != NULL;
    return least;
}

static aorm_conn *pick_idle(aorm_engine *e, double now) {
    for (aorm_conn *c = e->conns; c; c = c->next) {
        if (!shared_usable(c) || !aorm__conn_idle(c) || c->touched) continue;
        if (needs_check(e, c) && !aorm__conn_check_alive(c)) return pick_idle(e, now);
        return c;
    }
    return NULL;
}

/* Warnings about the pool's sizing, at most one of each kind per 10 s,
 * with the count since the last one. */
static void pool_warn(aorm_engine *e, int kind) {
    double now = aorm_loop_now(e->loop);
    e->warn_count[kind]++;
    if (now < e->warn_at[kind]) return;
    if (kind == 0)
        aorm__engine_log(e, AORM_LOG_WARN,
                         "pool: %d connection(s) opened beyond pool_size %d recently (churn); raise pool_size "
                         "or idle_timeout", e->warn_count[kind], e->o.pool_size);
    else
        aorm__engine_log(e, AORM_LOG_WARN,
                         "pool: %d caller(s) waited for a connection recently (pool_size %d, max_overflow %d)",
                         e->warn_count[kind], e->o.pool_size, e->o.max_overflow);
    e->warn_count[kind] = 0;
    e->warn_at[kind] = now + 10.0;
}

static void open_conn(aorm_engine *e) {
    aorm_conn *c = aorm__conn_new(e);
    if (!c) return;
    if (e->nconns > e->o.pool_size) {
        e->stats.overflow_opened++;
        pool_warn(e, 0);
    }
    aorm__conn_start(c);
}

/* Idle connections beyond pool_size that have waited idle_timeout for
 * reuse are closed; returns the loop time of the next such expiry
 * (AORM__NEVER for none). */
static double reap_idle(aorm_engine *e) {
    double next = AORM__NEVER;
    double mono = aorm__mono_now(), now = aorm_loop_now(e->loop);
    for (aorm_conn *c = e->conns, *n; c && e->nconns > e->o.pool_size; c = n) {
        n = c->next;
        if (c->held || !shared_usable(c) || !aorm__conn_idle(c) || c->touched) continue;
        double left = c->last_used + e->o.idle_timeout - mono;
        if (left > 0) {
            next = fmin(next, now + left);
            continue;
        }
        aorm__engine_log(e, AORM_LOG_INFO, "connection %llu closed (idle beyond pool_size)", (unsigned long long)c->id);
        e->stats.overflow_closed++;
        e->nconns--;
        unlink_conn(e, c);
        aorm__conn_free(c);
    }
    return next;
}

static void grant(aorm_engine *e, aorm__op *op, aorm_conn *c) {
    e->acq_head = op->next;
    if (!e->acq_head) e->acq_tail = NULL;
    e->acq_len--;
    op->queued = false;
    c->held = true;
    c->reserved = false;
    c->draining = false;
    c->releasing = false;
    c->in_tx = false;
    e->nheld++;
    if (op->kind == OP_COPY) {
        op->auto_release = c;
        op->queued = true;
        conn_submit(c, op);
        return;
    }
    op->done = true;
    c->owner = op->owner;
    aorm__owner_unlink(op);
    op->cb.conn(e, c, NULL, op->user);
    aorm__op_release(op);
}

static void finish_release(aorm_engine *e, aorm_conn *c) {
    c->held = false;
    c->owner = NULL;
    c->releasing = false;
    c->in_tx = false;
    e->nheld--;
    c->last_used = aorm__mono_now();
    if (c->txs != AORM_TX_IDLE) {
        e->stats.discarded++;
        aorm__conn_lost(c, AORM_ECONNLOST, "released connection could not be cleaned; discarded");
        return;
    }
    /* beyond pool_size, it lingers for idle_timeout to be reused (reap_idle) */
    bool overflow = e->nconns > e->o.pool_size && e->o.idle_timeout <= 0;
    if (overflow || (e->o.recycle > 0 && aorm_loop_now(e->loop) - c->created > e->o.recycle)) {
        aorm__engine_log(e, AORM_LOG_INFO, "connection %llu closed (%s)", (unsigned long long)c->id,
                         overflow ? "overflow" : "recycled");
        e->nconns--;
        unlink_conn(e, c);
        aorm__conn_free(c);
    }
}

static void send_pending(aorm_conn *c, aorm_conn **touched) {
    while (c->pend_head && c->state == CONN_READY) {
        aorm__op *op = c->pend_head;
        if (c->e->o.pgbouncer && !pgb_may_send(c, op)) return; /* after the answers in flight */
        if (op->kind == OP_COPY && (c->icount > 0 || c->group_open)) {
            if (c->group_open && aorm__conn_sync(c) == 0) c->group_open = false;
            return; /* COPY leaves pipeline mode: wait for the pipeline to drain */
        }
        c->pend_head = op->next;
        if (!c->pend_head) c->pend_tail = NULL;
        touch(c, touched);
        /* pinned across the send: if the connection is lost on the way,
         * conn_lost calls op back and would free it under us */
        op->nitems++;
        int rc = send_one(c, op);
        op->nitems--;
        if (rc < 0) {
            if (c->state == CONN_BROKEN) { /* conn_lost failed the rest of pending */
                op->queued = false;
                aorm__op_fail_lost(op, AORM_ECONNLOST, "connection lost", false); /* unless it went out */
                aorm__op_release(op);
                return;
            }
            op->queued = false;
            if (op->role == ROLE_COMMIT) aorm__op_fail_lost(op, AORM_ENOMEM, "", false);
            else aorm__op_fail(op, AORM_ENOMEM, "", "out of memory sending a statement");
            aorm__op_release(op);
            continue;
        }
        if (op->kind == OP_COPY) return;
    }
}

static void dispatch(aorm_loop *loop, void *arg) {
    aorm_engine *e = arg;
    if (e->closing) return;
    /* the common turn: nothing queued, nothing to hand back */
    if (!e->q_head && !e->acq_head && !e->dirty && !e->rescan) return;
    aorm__engine_enter(e);
    double now = aorm_loop_now(loop);
    aorm_conn *touched = NULL;
    e->in_dispatch = true;
    e->turn++;
    e->turn_mono = aorm__mono_now();

    /* 1. connections coming back: released, drained after a deadline,
     *    reserved for acquire requests that have gone since (timed out,
     *    cancelled) */
    bool rescan = e->rescan;
    e->rescan = false;
    if (rescan) {
        int reserved = 0;
        for (aorm_conn *c = e->conns; c; c = c->next) {
            if (!c->reserved) continue;
            if (++reserved > e->acq_len) {
                c->reserved = false;
                c->draining = false;
            }
        }
    }
    for (aorm_conn *c = rescan ? e->conns : NULL, *next; c; c = next) {
        next = c->next;
        if (c->state != CONN_READY || c->touched) continue;
        if (c->held && c->releasing && !c->pend_head && c->icount == 0 && !c->writing) {
            finish_release(e, c);
            continue;
        }
        if (c->draining && !c->reserved && c->icount == 0) c->draining = false;
        if ((c->held && c->releasing) || c->draining) e->rescan = true; /* not yet */
    }

    /* 2. acquire requests: an idle connection, a new one, or the next
     *    shared connection to drain */
    while (e->acq_head) {
        aorm_conn *c = NULL;
        for (aorm_conn *r = e->conns; r; r = r->next)
            if (r->reserved && r->state == CONN_READY && r->icount == 0 && !r->touched) c = r;
        if (!c) c = pick_idle(e, now);
        if (c) {
            grant(e, e->acq_head, c);
            if (e->closing) goto out;
            continue;
        }
        int reserved = 0;
        for (aorm_conn *r = e->conns; r; r = r->next)
            if (r->reserved) reserved++;
        int want = e->acq_len - reserved - e->connecting;
        if (want > 0 && e->nconns < e->o.pool_size + e->o.max_overflow && now >= e->next_connect_at) {
            open_conn(e);
            continue;
        }
        if (want > 0 && e->connecting == 0) {
            /* every slot is open: take the least busy shared connection
             * out of the autocommit rotation for the next waiter */
            aorm_conn *r = NULL;
            for (aorm_conn *x = e->conns; x; x = x->next)
                if (shared_usable(x) && (!r || x->inflight_ops < r->inflight_ops)) r = x;
            if (r) {
                r->reserved = true;
                r->draining = true;
            }
        }
        break;
    }

    /* 3. held connections: queued statements, in order */
    aorm_conn *dirty = e->dirty;
    e->dirty = NULL;
    while (dirty) {
        aorm_conn *c = dirty;
        dirty = c->dirty_next;
        c->dirty_next = NULL;
        c->in_dirty = false;
        if (c->state == CONN_READY) send_pending(c, &touched);
        /* still waiting (for a COPY to drain or the connection): next turn */
        if (c->pend_head && c->state != CONN_BROKEN) mark_dirty(c);
    }

    /* 4. autocommit statements */
    bool packed_any = false;
    while (e->q_head) {
        bool packed;
        aorm_conn *c = pick_shared(e, e->q_head, &packed);
        if (!c) break;
        packed_any |= packed;
        aorm__op *op = e->q_head;
        e->q_head = op->next;
        if (!e->q_head) e->q_tail = NULL;
        e->q_len--;
        touch(c, &touched);
        c->last_used = aorm__mono_now();
        op->nitems++; /* pinned across the send (see send_pending) */
        int rc = send_one(c, op);
        op->nitems--;
        if (rc < 0) {
            if (c->state == CONN_BROKEN && op->done) { /* it went out: conn_lost called it back */
                op->queued = false;
                aorm__op_release(op);
                continue;
            }
            if (c->state == CONN_BROKEN) {
                aorm__op_requeue(op); /* never reached the server */
                op->resends--;
                continue;
            }
            op->queued = false;
            aorm__op_fail(op, AORM_ENOMEM, "", "out of memory sending a statement");
            aorm__op_release(op);
        } else {
            aorm__op_release(op); /* no-op while its items refer to it */
        }
    }

    /* 5. grow the pool toward pool_size while statements wait, or had to
     *    be pipelined behind busy connections */
    if (now >= e->next_connect_at && (e->q_head || packed_any)) {
        int open = e->nconns - e->nheld;
        if (e->connecting == 0 && open < e->o.pool_size && e->nconns < e->o.pool_size + e->o.max_overflow)
            open_conn(e);
    }

    /* 6. one write per connection: close open sync groups and flush */
    while (touched) {
        aorm_conn *c = touched;
        touched = c->touched_next;
        c->touched = false;
        c->touched_next = NULL;
        if (c->state != CONN_READY && c->state != CONN_COPY) continue;
        if (c->group_open && c->state == CONN_READY) {
            if (aorm__conn_sync(c) < 0) continue;
        }
        c->group_open = false;
        if (c->ndeallocs > 0 && aorm__conn_send_deallocs(c) < 0) continue;
        e->stats.round_trips++;
        aorm__conn_flush(c);
    }

    /* Callbacks run during this dispatch (grants, failures) may have queued
     * statements on held connections after step 3: make the loop come
     * back at once instead of blocking in poll. */
    if (e->dirty_during_dispatch) {
        for (aorm_conn *c = e->dirty; c; c = c->dirty_next)
            if (c->state == CONN_READY && c->icount == 0) aorm_loop_wake(e->loop);
    }
    e->dirty_during_dispatch = false;
    aorm__engine_bury(e);

    /* 7. time limits for whoever still waits, and idle connections
     *    beyond pool_size */
    double at = e->nconns > e->o.pool_size ? reap_idle(e) : AORM__NEVER;
    if (e->q_head || e->acq_head) {
        for (aorm__op *op = e->q_head; op; op = op->next) {
            at = fmin(at, op_wait_limit(op, e));
            if (!op->waited) {
                op->waited = true;
                e->stats.pool_waits++;
                pool_warn(e, 1);
            }
        }
        for (aorm__op *op = e->acq_head; op; op = op->next) {
            at = fmin(at, op_wait_limit(op, e));
            if (!op->waited) {
                op->waited = true;
                e->stats.pool_waits++;
                pool_warn(e, 1);
            }
        }
        if (e->next_connect_at > now) at = fmin(at, e->next_connect_at);
    }
    if (at < AORM__NEVER) {
        aorm_timer_stop(e->timer); /* the earliest of these, whatever was armed before */
        arm_engine_timer(e, at);
    } else {
        aorm_timer_stop(e->timer);
    }
out:
    aorm__engine_bury(e);
    aorm__engine_leave(e);
}

static void expire_list(aorm_engine *e, aorm__op **head, aorm__op **tail, int *len, double now) {
    aorm__op *keep_head = NULL, *keep_tail = NULL, *expired = NULL;
    while (*head) {
        aorm__op *op = *head;
        *head = op->next;
        op->next = NULL;
        if (op_wait_limit(op, e) <= now) {
            op->next = expired;
            expired = op;
            op->nitems++; /* pinned: a callback below may cancel its owner, which must not free it */
            (*len)--;
        } else {
            queue_push(&keep_head, &keep_tail, op);
        }
    }
    *head = keep_head;
    *tail = keep_tail;
    bool usable = false; /* a connection is open: the wait was for a turn, not for the server */
    for (aorm_conn *c = e->conns; c && !usable; c = c->next) usable = c->state == CONN_READY || c->state == CONN_COPY;
    e->rescan = true; /* a connection reserved for an expired acquire goes back */
    /* callbacks in submission order: the chain was built newest first */
    aorm__op *ordered = NULL;
    while (expired) {
        aorm__op *op = expired;
        expired = op->next;
        op->next = ordered;
        ordered = op;
    }
    while (ordered) {
        aorm__op *op = ordered;
        ordered = op->next;
        op->next = NULL;
        op->queued = false;
        if (op->done) {
            /* an earlier callback cancelled its owner: answered already */
        } else if (e->closing)
            aorm__op_fail(op, AORM_ECANCELED, "", "engine closed");
        else if (op->deadline <= now)
            aorm__op_fail(op, AORM_ETIMEOUT, "57014", "statement deadline expired before it could be sent");
        else if (!usable && e->backoff > 0) {
            /* the server could not be reached for the whole wait: say why */
            aorm_error err;
            error_make(&err, AORM_ECONNECT, "08001", e->last_connect_error,
                       "no connection could be opened within the pool timeout; this was the last attempt's error");
            aorm__op_deliver(op, NULL, &err);
        } else
            aorm__op_fail(op, AORM_EPOOLTIMEOUT, "", "timed out waiting for a connection from the pool");
        op->nitems--;
        aorm__op_release(op);
    }
}

static void on_engine_timer(aorm_timer *t, void *arg) {
    aorm_engine *e = arg;
    aorm__engine_enter(e);
    double now = aorm_loop_now(e->loop);
    expire_list(e, &e->q_head, &e->q_tail, &e->q_len, now);
    if (!e->closing) expire_list(e, &e->acq_head, &e->acq_tail, &e->acq_len, now);
    /* the dispatcher runs before the next poll: it reconnects if needed,
     * closes idle connections beyond pool_size and re-arms this timer */
    if (!e->closing) e->rescan = true;
    aorm__engine_leave(e);
}

int aorm_engine_warm(aorm_engine *e) {
    if (!e) return AORM_EMISUSE;
    if (e->group) return aorm__hosts_warm(e);
    if (e->closing) return AORM_ECLOSED;
    while (e->nconns < e->o.pool_size) open_conn(e);
    return 0;
}
