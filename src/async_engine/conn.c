/* conn.c -- one PostgreSQL connection as a non-blocking state machine.
 *
 * States (conn_state): RESOLVING -> CONNECTING -> READY <-> COPY, and
 * BROKEN from anywhere. A READY connection is always in pipeline mode and
 * its socket is always watched for reading, so a server-side close of an
 * idle connection is noticed at once.
 *
 * Every protocol message group sent is recorded as an item in the
 * connection's in-flight ring, in send order; libpq returns results in the
 * same order (each PREPARE/QUERY item ends with a NULL from PQgetResult, a
 * SYNC item is one PGRES_PIPELINE_SYNC), which is how every result is
 * paired with its operation, including PGRES_PIPELINE_ABORTED.
 *
 * Owns: the PGconn, its watcher and timer, the item ring, the prepared
 * statement cache. Must not: block (no PQexec, no PQcancel: deadlines are
 * enforced by the server, see send_deadline), or free itself while one of its handlers
 * is on the stack (`busy` / `dead`). */
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <stdio.h>
#include <strings.h>
#include <time.h>

#include "async_engine/engine_int.h"

static void on_io(aorm_io *io, int revents, void *arg);
static void on_timer(aorm_timer *t, void *arg);

/* Server notices reach the log at the level their own severity deserves
 * (WARNING as a warning; NOTICE, INFO and below as information). */
static void notice_receiver(void *arg, const PGresult *r) {
    aorm_conn *c = arg;
    const char *sev = PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED);
    const char *msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
    aorm_log_level lvl = AORM_LOG_INFO;
    if (sev && strcmp(sev, "WARNING") == 0) lvl = AORM_LOG_WARN;
    else if (sev && (strcmp(sev, "DEBUG") == 0 || strcmp(sev, "LOG") == 0)) lvl = AORM_LOG_DEBUG;
    aorm__engine_log(c->e, lvl, "server %s (connection %llu): %s", sev ? sev : "notice",
                     (unsigned long long)c->id, msg ? msg : "");
}

aorm_conn *aorm__conn_new(aorm_engine *e) {
    aorm_conn *c = calloc(1, sizeof(*c));
    if (!c) return NULL;
    c->e = e;
    c->id = ++e->next_conn_id;
    c->timer = aorm_timer_new(e->loop, on_timer, c);
    if (!c->timer) {
        free(c);
        return NULL;
    }
    aorm__stmt_cache_init(&c->stmts, e->o.prepared_cache_size);
    c->created = aorm_loop_now(e->loop);
    c->last_used = aorm__mono_now();
    c->txs = AORM_TX_IDLE;
    c->state = CONN_CONNECTING;
    c->next = e->conns;
    if (e->conns) e->conns->prev = c;
    e->conns = c;
    e->nconns++;
    e->connecting++;
    return c;
}

void aorm__conn_arm_timer(aorm_conn *c, double at) {
    if (aorm_timer_active(c->timer) && c->timer_at <= at) return;
    c->timer_at = at;
    aorm_timer_start(c->timer, at - aorm_loop_now(c->e->loop));
}

/* Appends entry number `index` of a libpq list (entries may be empty). */
static int list_put(aorm__buf *b, int index, const char *s, size_t len) {
    if (index > 0 && aorm__buf_putc(b, ',') < 0) return -1;
    return aorm__buf_append(b, s, len);
}

/* libpq wants host, hostaddr and a port list of the same length: one entry
 * per address found, the name repeated with each (TLS verification and
 * GSSAPI use host), and an empty hostaddr slot for an entry that needed no
 * lookup (libpq then uses host as it is). An entry whose lookup failed is
 * left out. Returns the number of entries written, or -1 (out of memory). */
static int expand_hosts(const aorm_engine *e, const aorm__resolved *r, aorm__buf *host, aorm__buf *addr,
                        aorm__buf *port) {
    int count = 0;
    for (int i = 0; i < e->nhosts; i++) {
        const char *list = r->addrs[i];
        const char *a = list ? list : "";
        if (list && !*list) continue; /* lookup failed */
        for (;;) {
            const char *comma = strchr(a, ',');
            size_t len = comma ? (size_t)(comma - a) : strlen(a);
            if (list_put(host, count, e->hosts[i], strlen(e->hosts[i])) < 0 || list_put(addr, count, a, len) < 0 ||
                (e->ports && list_put(port, count, e->ports[i], strlen(e->ports[i])) < 0))
                return -1;
            count++;
            if (!comma) break;
            a = comma + 1;
        }
    }
    if (aorm__buf_putc(host, '\0') < 0 || aorm__buf_putc(addr, '\0') < 0 || aorm__buf_putc(port, '\0') < 0)
        return -1;
    return count;
}

/* Starts libpq's non-blocking connect: with the conninfo as parsed, or
 * (r) with host, hostaddr and port lists built from what resolving found,
 * in this connection's own copy of the keyword arrays. */
static void connect_begin(aorm_conn *c, const aorm__resolved *r) {
    aorm_engine *e = c->e;
    if (!r) {
        c->pg = PQconnectStartParams(e->kw, e->val, 0);
    } else {
        aorm__buf host = {0}, addr = {0}, port = {0};
        const char **kw = calloc((size_t)e->nkw + 2, sizeof(char *));
        const char **val = calloc((size_t)e->nkw + 2, sizeof(char *));
        int count = kw && val ? expand_hosts(e, r, &host, &addr, &port) : -1;
        if (count > 0) {
            memcpy(kw, e->kw, (size_t)e->nkw * sizeof(char *));
            memcpy(val, e->val, (size_t)e->nkw * sizeof(char *));
            val[e->host_index] = host.data;
            if (e->ports) val[e->port_index] = port.data;
            kw[e->nkw] = "hostaddr";
            val[e->nkw] = addr.data;
            aorm__engine_log(e, AORM_LOG_DEBUG, "connection %llu: host=%s hostaddr=%s%s%s", (unsigned long long)c->id,
                             host.data, addr.data, e->ports ? " port=" : "", e->ports ? port.data : "");
            c->pg = PQconnectStartParams(kw, val, 0); /* copies every value */
        }
        free(kw);
        free(val);
        aorm__buf_free(&host);
        aorm__buf_free(&addr);
        aorm__buf_free(&port);
        if (count == 0) {
            aorm__conn_lost(c, AORM_ECONNECT, r->err ? r->err : "no address found for any host");
            return;
        }
    }
    if (!c->pg) {
        aorm__conn_lost(c, AORM_ENOMEM, "out of memory starting a connection");
        return;
    }
    if (PQstatus(c->pg) == CONNECTION_BAD) {
        aorm__conn_lost(c, AORM_ECONNECT, PQerrorMessage(c->pg));
        return;
    }
    PQsetNoticeReceiver(c->pg, notice_receiver, c);
    c->state = CONN_CONNECTING;
    c->io = aorm_io_new(e->loop, PQsocket(c->pg), on_io, c);
    if (!c->io) {
        aorm__conn_lost(c, AORM_ENOMEM, "out of memory starting a connection");
        return;
    }
    /* libpq: right after PQconnectStart, behave as if PQconnectPoll had
     * returned PGRES_POLLING_WRITING. */
    aorm_io_set(c->io, AORM_WRITE);
}

/* Host names are looked up on the helper threads first (RESOLVING); the
 * connect timeout, armed here, bounds lookups and connecting together. */
void aorm__conn_start(aorm_conn *c) {
    aorm_engine *e = c->e;
    aorm__conn_arm_timer(c, aorm_loop_now(e->loop) + e->o.connect_timeout);
    if (e->nlookups > 0) {
        c->state = CONN_RESOLVING;
        if (aorm__worker_resolve(e->worker, c->id) < 0)
            aorm__conn_lost(c, AORM_ENOMEM, "cannot queue host name resolution");
        return;
    }
    connect_begin(c, NULL);
}

/* Every lookup of this attempt has answered. Hosts that could not be
 * resolved are left out (libpq too moves on to the next host); only when
 * nothing is left does the attempt fail. */
void aorm__conn_resolved(aorm_conn *c, const aorm__resolved *r) {
    if (c->state != CONN_RESOLVING) return;
    if (r->err) {
        bool any = false;
        for (int i = 0; i < r->n; i++)
            if (!r->addrs[i] || *r->addrs[i]) any = true;
        if (!any) {
            aorm__conn_lost(c, AORM_ECONNECT, r->err);
            return;
        }
        aorm__engine_log(c->e, AORM_LOG_WARN, "connection %llu: %s; trying the other hosts", (unsigned long long)c->id,
                         r->err);
    }
    connect_begin(c, r);
}

static void connected(aorm_conn *c) {
    aorm_engine *e = c->e;
    if (PQsetnonblocking(c->pg, 1) != 0 || PQenterPipelineMode(c->pg) != 1) {
        aorm__conn_lost(c, AORM_ECONNECT, PQerrorMessage(c->pg));
        return;
    }
    c->state = CONN_READY;
    e->connecting--;
    aorm_timer_stop(c->timer);
    aorm_io_set(c->io, AORM_READ);
    c->created = aorm_loop_now(e->loop);
    c->last_used = aorm__mono_now();
    e->stats.connects++;
    aorm__engine_log(e, AORM_LOG_INFO, "connection %llu open (server %d, backend pid %d)",
                     (unsigned long long)c->id, PQserverVersion(c->pg), PQbackendPID(c->pg));
    aorm__engine_conn_ready(e, c);
}

static void poll_connect(aorm_conn *c) {
    PostgresPollingStatusType st = PQconnectPoll(c->pg);
    int fd = PQsocket(c->pg);
    if (fd >= 0) aorm_io_set_fd(c->io, fd);
    switch (st) {
    case PGRES_POLLING_READING: aorm_io_set(c->io, AORM_READ); break;
    case PGRES_POLLING_WRITING: aorm_io_set(c->io, AORM_WRITE); break;
    case PGRES_POLLING_ACTIVE: aorm_io_set(c->io, AORM_WRITE); break; /* unused by libpq */
    case PGRES_POLLING_OK: connected(c); break;
    case PGRES_POLLING_FAILED: aorm__conn_lost(c, AORM_ECONNECT, PQerrorMessage(c->pg)); break;
    }
}

/* ---- the in-flight ring -------------------------------------------------- */

static int items_push(aorm_conn *c, uint8_t kind, aorm__op *op, aorm__stmt *s) {
    if (c->icount == c->icap) {
        uint32_t cap = c->icap ? c->icap * 2 : 64;
        aorm__item *n = malloc(cap * sizeof(*n));
        if (!n) return -1;
        for (uint32_t i = 0; i < c->icount; i++) n[i] = c->items[(c->ihead + i) % c->icap];
        free(c->items);
        c->items = n;
        c->icap = cap;
        c->ihead = 0;
    }
    aorm__item *it = &c->items[(c->ihead + c->icount) % c->icap];
    it->kind = kind;
    it->op = op;
    it->stmt = s;
    it->res = NULL;
    it->name = NULL;
    c->icount++;
    if (op) op->nitems++;
    if (s) s->refs++;
    return 0;
}

/* Drops the newest item (a send that libpq refused). */
static void items_pop_back(aorm_conn *c) {
    aorm__item *it = &c->items[(c->ihead + c->icount - 1) % c->icap];
    if (it->op) it->op->nitems--;
    if (it->stmt) aorm__stmt_unref(it->stmt);
    c->icount--;
}

static aorm__item *items_head(aorm_conn *c) { return &c->items[c->ihead]; }

static void items_pop_front(aorm_conn *c) {
    c->ihead = (c->ihead + 1) % c->icap;
    c->icount--;
}

bool aorm__conn_idle(const aorm_conn *c) {
    return c->state == CONN_READY && c->icount == 0 && !c->pend_head && !c->writing;
}

/* ---- sending -------------------------------------------------------------- */

int aorm__conn_flush(aorm_conn *c) {
    int r = PQflush(c->pg);
    if (r < 0) {
        aorm__conn_lost(c, AORM_ECONNLOST, PQerrorMessage(c->pg));
        return -1;
    }
    c->writing = r == 1;
    /* While output is pending keep reading too: the server may be waiting
     * for us to read before it reads more (libpq's pipeline-mode advice). */
    aorm_io_set(c->io, c->writing ? (AORM_READ | AORM_WRITE) : AORM_READ);
    return r;
}

int aorm__conn_sync(aorm_conn *c) {
    if (items_push(c, IT_SYNC, NULL, NULL) < 0) return -1;
    if (PQpipelineSync(c->pg) != 1) {
        items_pop_back(c);
        aorm__conn_lost(c, AORM_ECONNLOST, PQerrorMessage(c->pg));
        return -1;
    }
    c->e->stats.syncs++;
    c->sync_group++;
    return 0;
}

/* Adds a name (owned from then on) to the statements to deallocate. */
static int push_dealloc(aorm_conn *c, char *name) {
    if (c->ndeallocs == c->cap_deallocs) {
        int cap = c->cap_deallocs ? c->cap_deallocs * 2 : 8;
        char **d = realloc(c->deallocs, (size_t)cap * sizeof(char *));
        if (!d) return -1;
        c->deallocs = d;
        c->cap_deallocs = cap;
    }
    c->deallocs[c->ndeallocs++] = name;
    return 0;
}

/* Evicted statements are deallocated in a sync group of their own, sent
 * at the end of a dispatch: inside a group that aborts, the server would
 * skip the DEALLOCATE and the statement would stay for the life of the
 * connection. */
static int queue_dealloc(aorm_conn *c, const aorm__stmt *s) {
    char *name = aorm__strdup(s->name);
    if (!name || push_dealloc(c, name) < 0) {
        free(name);
        return -1;
    }
    return 0;
}

int aorm__conn_send_deallocs(aorm_conn *c) {
    /* inside a failed transaction block the server refuses everything
     * until the rollback: wait for it */
    if (c->ndeallocs == 0 || c->state != CONN_READY || c->txs == AORM_TX_INERROR) return 0;
    for (int i = 0; i < c->ndeallocs; i++) {
        char sql[64];
        snprintf(sql, sizeof(sql), "DEALLOCATE \"%s\"", c->deallocs[i]);
        if (items_push(c, IT_DEALLOC, NULL, NULL) < 0) return -1;
        aorm__item *it = &c->items[(c->ihead + c->icount - 1) % c->icap];
        it->name = c->deallocs[i]; /* the item owns it now */
        if (!PQsendQueryParams(c->pg, sql, 0, NULL, NULL, NULL, NULL, 1)) {
            it->name = NULL;
            items_pop_back(c);
            /* what is left stays queued for the next dispatch */
            memmove(c->deallocs, c->deallocs + i, (size_t)(c->ndeallocs - i) * sizeof(char *));
            c->ndeallocs -= i;
            aorm__conn_lost(c, AORM_ECONNLOST, PQerrorMessage(c->pg));
            return -1;
        }
    }
    c->ndeallocs = 0;
    return aorm__conn_sync(c);
}

/* Deadlines are enforced by the server, for the one statement that has
 * it: right before it, in the same pipeline, the statement's remaining
 * time becomes statement_timeout for the current transaction (set_config
 * with is_local), the previous value kept in a placeholder setting; a
 * server since 13 restarts that timer at every Execute, so it covers
 * this statement alone. Autocommit statements with a deadline get a sync
 * group of their own (engine.c send_one), which ends the setting with
 * the implicit transaction; on a held connection, inside a transaction
 * block, the previous value is put back right after it. Nothing is ever
 * sent from outside the pipeline (no cancel request), so a deadline
 * cannot stop another caller's statement. Costs one small statement in
 * the same write, not a round trip. */
static int send_deadline(aorm_conn *c, aorm__op *op, bool restore) {
    static const char set_sql[] =
        "SELECT set_config('aorm.saved_statement_timeout', current_setting('statement_timeout'), true), "
        "set_config('statement_timeout', $1, true)";
    /* A COMMIT, ROLLBACK or ROLLBACK TO SAVEPOINT between the two has
     * undone both settings already: then there is nothing to restore (and
     * an empty value must not fail the holder's next statements). */
    static const char restore_sql[] =
        "SELECT set_config('statement_timeout', coalesce(nullif(current_setting('aorm.saved_statement_timeout', "
        "true), ''), current_setting('statement_timeout')), true)";
    char ms[32];
    const char *vals[1] = {ms};
    if (restore) {
        if (items_push(c, IT_DISCARD, NULL, NULL) < 0) return -1;
        return PQsendQueryParams(c->pg, restore_sql, 0, NULL, NULL, NULL, NULL, 1) ? 0 : -2;
    }
    double left = op->deadline - aorm_loop_now(c->e->loop);
    long v = left > 0 ? (long)ceil(left * 1000.0) : 1;
    if (v < 1) v = 1;
    op->server_timeout = (double)v / 1000.0;
    snprintf(ms, sizeof(ms), "%ld", v);
    if (items_push(c, IT_DISCARD, NULL, NULL) < 0) return -1;
    return PQsendQueryParams(c->pg, set_sql, 1, NULL, vals, NULL, NULL, 1) ? 0 : -2;
}

/* Sends op's messages (no sync). Returns 0, or -1 when nothing of op was
 * sent (out of memory, or libpq refused: the connection is then lost). A
 * COPY is sent only on an idle connection: it leaves pipeline mode. */
int aorm__conn_send(aorm_conn *c, aorm__op *op) {
    aorm_engine *e = c->e;
    int fmt = (op->flags & AORM_EXEC_TEXT_RESULT) ? 0 : 1;
    /* items whose messages libpq has taken stay in the ring whatever
     * happens next: their answers will come and must find them */
    uint32_t keep = c->icount;
    /* inside a failed transaction block the statement fails anyway, with
     * the 25P02 its caller keys on: no set_config in front of it */
    bool server_deadline = op->kind == OP_QUERY && op->deadline < AORM__NEVER && c->txs != AORM_TX_INERROR;

    if (op->kind == OP_COPY) {
        aorm__assert(c->icount == 0);
        if (PQexitPipelineMode(c->pg) != 1) return -1;
        if (items_push(c, IT_QUERY, op, NULL) < 0) goto refused;
        if (!PQsendQueryParams(c->pg, op->sql, 0, NULL, NULL, NULL, NULL, 0)) goto refused;
        keep = c->icount;
        c->copy = aorm__copy_new();
        if (!c->copy) goto refused;
        c->state = CONN_COPY;
        c->copy_op = op;
        c->copy_started = false;
        c->copy_ended = false;
        goto sent;
    }

    if (server_deadline) {
        if (send_deadline(c, op, false) < 0) goto refused;
        keep = c->icount;
    }

    if (e->o.prepared_cache_size > 0 && !(op->flags & AORM_EXEC_UNPREPARED)) {
        aorm__stmt *s = aorm__stmt_lookup(&c->stmts, op);
        if (s && s->state == STMT_PREPARING && s->prep_group != c->sync_group) {
            /* its PREPARE is in another sync group, which may yet abort:
             * do not depend on it across the group boundary */
            goto unnamed;
        }
        if (s) {
            e->stats.prepared_hits++;
        } else {
            aorm__stmt *evicted;
            bool full;
            s = aorm__stmt_insert(&c->stmts, op, &evicted, &full);
            if (!s && full) goto unnamed;
            if (!s) return -1;
            if (evicted) {
                int rc = queue_dealloc(c, evicted);
                aorm__stmt_unref(evicted);
                if (rc < 0) {
                    aorm__stmt_forget(&c->stmts, s);
                    goto refused;
                }
            }
            s->prep_group = c->sync_group;
            if (items_push(c, IT_PREPARE, op, s) < 0) {
                aorm__stmt_forget(&c->stmts, s);
                goto refused;
            }
            if (!PQsendPrepare(c->pg, s->name, op->sql, op->nparams, op->types)) {
                aorm__stmt_forget(&c->stmts, s);
                goto refused;
            }
            keep = c->icount;
            e->stats.prepares++;
            aorm__engine_log(e, AORM_LOG_DEBUG, "prepare %s on connection %llu: %s", s->name,
                             (unsigned long long)c->id, op->sql);
        }
        if (items_push(c, IT_QUERY, op, s) < 0) goto refused;
        if (!PQsendQueryPrepared(c->pg, s->name, op->nparams, op->values, op->lengths, op->formats, fmt))
            goto refused;
    } else {
    unnamed:
        if (items_push(c, IT_QUERY, op, NULL) < 0) goto refused;
        if (!PQsendQueryParams(c->pg, op->sql, op->nparams, op->types, op->values, op->lengths,
                               op->formats, fmt))
            goto refused;
    }

    keep = c->icount;
    if (server_deadline && c->held && send_deadline(c, op, true) < 0) {
        /* op went out, but its transaction would keep the short timeout */
        while (c->icount > keep) items_pop_back(c);
        c->inflight_ops++;
        op->queued = false;
        aorm__conn_lost(c, AORM_ECONNLOST, "could not restore statement_timeout after a deadline; connection discarded");
        return -1;
    }

sent:
    op->queued = false;
    c->inflight_ops++;
    aorm__lat_sent(c, op);
    e->stats.statements++;
    if (op->role == ROLE_BEGIN) c->in_tx = true;
    if (op->deadline < AORM__NEVER) aorm__conn_arm_timer(c, op->deadline);
    return 0;

refused:
    /* Undo what libpq did not take, so op's fate is the caller's to
     * decide (what it took keeps its items: a PREPARE or the deadline's
     * set_config answer like any other). A libpq refusal means the
     * connection is unusable. */
    while (c->icount > keep) items_pop_back(c);
    if (PQstatus(c->pg) == CONNECTION_BAD || !PQisnonblocking(c->pg) ||
        PQpipelineStatus(c->pg) == PQ_PIPELINE_OFF)
        aorm__conn_lost(c, AORM_ECONNLOST, PQerrorMessage(c->pg));
    return -1;
}

/* ---- reading -------------------------------------------------------------- */

static bool sqlstate_is(const PGresult *r, const char *state) {
    const char *s = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    return s && strcmp(s, state) == 0;
}

/* The named statement is gone (26000) or its cached plan went stale
 * under a schema change (0A000 raised by the plan cache). The latter is
 * told by the reporting source function, which the server never
 * translates, unlike the message. */
static bool plan_gone(const PGresult *r) {
    if (sqlstate_is(r, "26000")) return true;
    const char *fn = PQresultErrorField(r, PG_DIAG_SOURCE_FUNCTION);
    return sqlstate_is(r, "0A000") && fn && strcmp(fn, "RevalidateCachedQuery") == 0;
}

/* FATAL and PANIC end the session on the server side. */
static bool is_fatal(const PGresult *r) {
    const char *sev = PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED);
    return sev && (strcmp(sev, "FATAL") == 0 || strcmp(sev, "PANIC") == 0);
}

static void update_txs(aorm_conn *c) {
    switch (PQtransactionStatus(c->pg)) {
    case PQTRANS_IDLE: c->txs = AORM_TX_IDLE; c->in_tx = false; break;
    case PQTRANS_ACTIVE: break; /* libpq is busy with later results: nothing to learn, keep what was tracked */
    case PQTRANS_INTRANS: c->txs = AORM_TX_INTRANS; break;
    case PQTRANS_INERROR: c->txs = AORM_TX_INERROR; break;
    case PQTRANS_UNKNOWN: c->txs = AORM_TX_UNKNOWN; break;
    }
}

/* True when sql starts with "ROLLBACK TO" (any case, any spacing): its
 * command tag is "ROLLBACK" too, but it keeps the block open. */
static bool is_rollback_to(const char *sql) {
    while (*sql == ' ' || *sql == '\t' || *sql == '\n' || *sql == '\r') sql++;
    if (strncasecmp(sql, "ROLLBACK", 8) != 0) return false;
    sql += 8;
    if (*sql != ' ' && *sql != '\t' && *sql != '\n' && *sql != '\r') return false;
    while (*sql == ' ' || *sql == '\t' || *sql == '\n' || *sql == '\r') sql++;
    return strncasecmp(sql, "TO", 2) == 0 && (sql[2] == '\0' || sql[2] == ' ' || sql[2] == '\t' ||
                                               sql[2] == '\n' || sql[2] == '\r');
}

/* The transaction state right after one statement's answer. In pipeline
 * mode libpq learns it only from the ReadyForQuery of the next sync,
 * which may arrive in a later read than the statement's result; a
 * callback must already see the state its own statement left behind, so
 * the engine derives it here from the outcome and the command tag, and
 * the sync confirms it (update_txs). */
static void track_txs(aorm_conn *c, const aorm__op *op, const PGresult *r, bool ok) {
    if (!ok) {
        if (op->role == ROLE_COMMIT) c->txs = AORM_TX_IDLE; /* a failed COMMIT rolls back */
        else if (c->txs == AORM_TX_INTRANS || (c->held && c->in_tx)) c->txs = AORM_TX_INERROR;
        return;
    }
    if (op->role == ROLE_BEGIN) {
        c->txs = AORM_TX_INTRANS;
        return;
    }
    if (op->role == ROLE_COMMIT || op->role == ROLE_END) {
        c->in_tx = false;
        c->txs = AORM_TX_IDLE;
        return;
    }
    const char *tag = r ? PQcmdStatus((PGresult *)r) : "";
    if (strcmp(tag, "BEGIN") == 0 || strcmp(tag, "START TRANSACTION") == 0) {
        c->txs = AORM_TX_INTRANS;
    } else if (strcmp(tag, "COMMIT") == 0 || strcmp(tag, "ROLLBACK") == 0) {
        if (is_rollback_to(op->sql)) {
            c->txs = AORM_TX_INTRANS;
        } else {
            c->txs = AORM_TX_IDLE;
            c->in_tx = false;
        }
    }
}

/* The backend is going away (terminated, shut down, crashed): its FATAL
 * arrived as the answer to op (or to op's PREPARE). The connection is lost
 * for everyone; op hears it first, as a connection loss that carries the
 * server's SQLSTATE and message (an unknown outcome if op is a COMMIT),
 * then everything behind it, in order. */
static void fatal_lost(aorm_conn *c, aorm__op *op, const PGresult *r) {
    aorm_error err;
    aorm__error_from_pg(&err, r);
    char msg[512];
    snprintf(msg, sizeof(msg), "%s", err.message); /* r outlives the PGconn, but keep a copy */
    err.message = msg;
    if (op->role == ROLE_COMMIT) {
        err.code = AORM_EUNKNOWN_OUTCOME;
        memcpy(err.sqlstate, "08007", 6);
        err.message = "connection lost while committing: the transaction may or may not have committed";
    } else {
        err.code = AORM_ECONNLOST;
    }
    aorm__conn_lost_first(c, AORM_ECONNLOST, msg, op, &err);
}

/* One QUERY item finished with result r (NULL if the server sent none). */
static void query_done(aorm_conn *c, aorm__op *op, PGresult *r) {
    c->inflight_ops--;
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    /* a service time only from what ran (or ran into its own deadline) */
    aorm__lat_answered(c, op, st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK ||
                                  (r && st == PGRES_FATAL_ERROR && sqlstate_is(r, "57014")));
    if (st != PGRES_PIPELINE_ABORTED && c->held)
        track_txs(c, op, r, st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK || st == PGRES_EMPTY_QUERY ||
                                st == PGRES_SINGLE_TUPLE);
    if (op->done) {
        if (r && st == PGRES_FATAL_ERROR && sqlstate_is(r, "57014") && op->deadline < AORM__NEVER)
            c->e->stats.cancels++; /* the server stopped it at its deadline */
        PQclear(r);
        return;
    }
    aorm_error err;
    switch (st) {
    case PGRES_TUPLES_OK:
    case PGRES_COMMAND_OK:
    case PGRES_EMPTY_QUERY:
    case PGRES_SINGLE_TUPLE: {
        if (op->role == ROLE_COMMIT && r && strcmp(PQcmdStatus(r), "ROLLBACK") == 0) {
            /* COMMIT of a transaction that had already failed: the server
             * rolled it back and says so only in the tag. That is a
             * failure, and the caller must hear it as one. */
            PQclear(r);
            aorm__op_fail(op, AORM_ESERVER, "25P02",
                          "COMMIT rolled the transaction back: a statement in it had failed");
            return;
        }
        aorm_result res;
        aorm__result_init(&res, r);
        aorm__op_deliver(op, &res, NULL);
        if (res.pg) PQclear(res.pg);
        return;
    }
    case PGRES_PIPELINE_ABORTED:
        PQclear(r);
        if (op->prep_err && is_fatal(op->prep_err)) {
            fatal_lost(c, op, op->prep_err);
            return;
        }
        if (op->prep_err) {
            aorm__error_from_pg(&err, op->prep_err);
            aorm__op_deliver(op, NULL, &err);
            return;
        }
        if (!op->held && (op->flags & AORM_EXEC_READONLY) && op->resends < 8) {
            c->e->stats.resent++;
            aorm__op_requeue(op); /* the server skipped it: safe to send again */
            return;
        }
        if (op->role == ROLE_COMMIT) {
            /* skipped behind a failed statement of its own transaction,
             * which stays open in the failed state: it did not commit */
            aorm__op_fail(op, AORM_ESERVER, "25P02",
                          "COMMIT not executed: a statement of the transaction failed; it must be rolled back");
            return;
        }
        aorm__op_fail(op, AORM_EABORTED, "", "statement not executed: an earlier statement in its pipeline failed");
        return;
    case PGRES_FATAL_ERROR:
    case PGRES_NONFATAL_ERROR:
    case PGRES_BAD_RESPONSE:
        if (!r) {
            if (op->role == ROLE_COMMIT) aorm__op_fail_lost(op, AORM_EPROTOCOL, "", true);
            else aorm__op_fail(op, AORM_EPROTOCOL, "08P01", "no result from the server");
            return;
        }
        /* A statement whose PREPARE was skipped or which hit a stale
         * cached plan has not run. Autocommit: send it again, anywhere.
         * On a held connection it must run there, in its place: again
         * only when the server is outside a transaction block (an error
         * inside one aborted it) and nothing of the holder's was sent
         * after it; otherwise the holder hears the error. */
        if (op->resends < 2 && plan_gone(r)) {
            if (!op->held) {
                PQclear(r);
                c->e->stats.resent++;
                aorm__op_requeue(op);
                return;
            }
            if (c->txs == AORM_TX_IDLE && !c->in_tx && c->inflight_ops == 0 && !c->releasing) {
                PQclear(r);
                c->e->stats.resent++;
                aorm__op_requeue_held(op);
                return;
            }
        }
        if (is_fatal(r) || (op->prep_err && is_fatal(op->prep_err))) {
            fatal_lost(c, op, is_fatal(r) ? r : op->prep_err);
            PQclear(r);
            return;
        }
        aorm__error_from_pg(&err, op->prep_err ? op->prep_err : r);
        aorm__op_deliver(op, NULL, &err);
        PQclear(r);
        return;
    case PGRES_COPY_IN:
    case PGRES_COPY_OUT:
    case PGRES_COPY_BOTH:
    case PGRES_PIPELINE_SYNC:
        PQclear(r);
        aorm__op_fail(op, AORM_EPROTOCOL, "08P01", "unexpected result status from the server");
        return;
    }
}

/* The head item has received all its results (PQgetResult returned NULL). */
static void item_done(aorm_conn *c, aorm__item *it) {
    aorm__op *op = it->op;
    aorm__stmt *s = it->stmt;
    PGresult *r = it->res;
    switch ((item_kind)it->kind) {
    case IT_DISCARD:
        PQclear(r);
        break;
    case IT_DEALLOC:
        if (it->name && r &&
            (PQresultStatus(r) == PGRES_PIPELINE_ABORTED ||
             (PQresultStatus(r) == PGRES_FATAL_ERROR && sqlstate_is(r, "25P02")))) {
            /* skipped, or refused inside a failed transaction block
             * (25P02): the statement still exists on the server; try
             * again once the block is over (the name moves back) */
            if (push_dealloc(c, it->name) == 0) it->name = NULL;
        }
        free(it->name);
        PQclear(r);
        break;
    case IT_PREPARE:
        if (r && PQresultStatus(r) == PGRES_COMMAND_OK) {
            if (s->state == STMT_PREPARING) s->state = STMT_READY;
            PQclear(r);
        } else {
            s->state = STMT_FAILED;
            aorm__stmt_forget(&c->stmts, s);
            if (r && PQresultStatus(r) == PGRES_FATAL_ERROR && !op->prep_err) op->prep_err = r;
            else PQclear(r);
        }
        break;
    case IT_QUERY:
        if (s && r && PQresultStatus(r) == PGRES_FATAL_ERROR && plan_gone(r))
            aorm__stmt_forget(&c->stmts, s); /* gone or stale on the server */
        query_done(c, op, r);
        break;
    case IT_SYNC:
        break;
    }
    if (s) aorm__stmt_unref(s);
    if (op) {
        op->nitems--;
        aorm__op_release(op);
    }
}

static void process(aorm_conn *c) {
    while (c->icount > 0 && !c->dead && (c->state == CONN_READY || c->state == CONN_COPY)) {
        if (c->state == CONN_COPY && c->copy_started && !c->copy_ended) return;
        if (PQisBusy(c->pg)) return;
        aorm__item *it = items_head(c);
        PGresult *r = PQgetResult(c->pg);
        if (it->kind == IT_SYNC) {
            if (!r) continue; /* tolerated: libpq may report an end before the sync */
            ExecStatusType st = PQresultStatus(r);
            PQclear(r);
            if (st != PGRES_PIPELINE_SYNC) {
                aorm__conn_lost(c, AORM_EPROTOCOL, "pipeline out of step with the server");
                return;
            }
            items_pop_front(c);
            update_txs(c);
            continue;
        }
        if (r && PQresultStatus(r) == PGRES_COPY_IN) {
            PQclear(r);
            if (c->state != CONN_COPY || !c->copy_op) {
                aorm__conn_lost(c, AORM_EPROTOCOL, "server entered COPY unexpectedly");
                return;
            }
            c->copy_started = true;
            aorm__copy_pump(c);
            continue;
        }
        if (r) {
            if (!it->res) it->res = r;
            else PQclear(r); /* one result per statement: extras (none expected) dropped */
            continue;
        }
        /* end of this item's results */
        aorm__item done = *it;
        items_pop_front(c);
        item_done(c, &done);
        if (c->state == CONN_COPY && done.kind == IT_QUERY && done.op == c->copy_op) {
            aorm__copy_free(c->copy);
            c->copy = NULL;
            c->copy_op = NULL;
            if (PQenterPipelineMode(c->pg) != 1) {
                aorm__conn_lost(c, AORM_ECONNLOST, PQerrorMessage(c->pg));
                return;
            }
            c->state = CONN_READY;
            update_txs(c);
        }
    }
}

/* True when the socket has data waiting (a poll that does not wait). */
static bool socket_readable(int fd) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

static void read_input(aorm_conn *c) {
    bool was_idle = c->icount == 0;
    c->reads++;
    if (!PQconsumeInput(c->pg)) {
        aorm__conn_lost(c, AORM_ECONNLOST, PQerrorMessage(c->pg));
        return;
    }
    /* Over TLS one read takes one record (the server writes one or more
     * per flush, i.e. per answered sync): take what else has arrived now,
     * so that its answers are handled, and the statements their callbacks
     * queue are sent, together rather than one loop turn each. PostgreSQL
     * writes records of at most 8 kB and libpq reads with at least that
     * much room, so nothing is left waiting inside the TLS layer. */
    for (int i = 0; i < 64 && PQsslInUse(c->pg) && socket_readable(PQsocket(c->pg)); i++) {
        if (!PQconsumeInput(c->pg)) {
            aorm__conn_lost(c, AORM_ECONNLOST, PQerrorMessage(c->pg));
            return;
        }
    }
    process(c);
    if (c->dead || c->state == CONN_BROKEN) return;
    PGnotify *n;
    while ((n = PQnotifies(c->pg)) != NULL) PQfreemem(n);
    if (PQstatus(c->pg) == CONNECTION_BAD) {
        aorm__conn_lost(c, AORM_ECONNLOST, PQerrorMessage(c->pg));
        return;
    }
    if (c->icount == 0) {
        if (was_idle && c->state == CONN_READY) {
            /* input nobody asked for: the server is closing it (FATAL,
             * then end of stream, which the second read sees) */
            if (!PQconsumeInput(c->pg) || PQstatus(c->pg) == CONNECTION_BAD) {
                aorm__conn_lost(c, AORM_ECONNLOST, PQerrorMessage(c->pg));
                return;
            }
        }
        c->last_used = aorm__mono_now();
        /* idle now: beyond pool_size, its idle_timeout starts (dispatch
         * arms the reaper); drained after a deadline, it can take work;
         * released by its holder (during a COPY, say), it can go back */
        if (!was_idle && (c->e->nconns > c->e->o.pool_size || c->draining || c->releasing)) c->e->rescan = true;
    }
}

double aorm__mono_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

bool aorm__conn_check_alive(aorm_conn *c) {
    /* An idle connection must have nothing to say: readable means the
     * server sent a FATAL (shutdown, pg_terminate_backend) and closed it,
     * even if the loop has not polled since. One poll() tells. */
    struct pollfd p = {.fd = PQsocket(c->pg), .events = POLLIN | POLLRDHUP};
    int n = poll(&p, 1, 0);
    if (n == 0) return true;
    if (n < 0 && errno == EINTR) return true;
    PQconsumeInput(c->pg);
    aorm__conn_lost(c, AORM_ECONNLOST, PQstatus(c->pg) == CONNECTION_BAD ? PQerrorMessage(c->pg)
                                                                           : "server closed the idle connection");
    return false;
}

static void on_io(aorm_io *io, int revents, void *arg) {
    aorm_conn *c = arg;
    aorm_engine *e = c->e;
    aorm__engine_enter(e);
    c->busy++;
    switch (c->state) {
    case CONN_CONNECTING: {
        /* A connection step may be CPU work of several ms (a TLS
         * handshake, SCRAM's key derivation), and a pool's connections
         * tend to become ready together: at most a slice of such steps
         * per loop turn (the first always runs, so each connection
         * progresses); the others stay ready and run in the next turn
         * (the watcher is level-triggered). */
        double now = aorm_loop_now(e->loop);
        if (e->connect_turn != now) {
            e->connect_turn = now;
            e->connect_spent = 0;
        }
        if (e->connect_spent >= AORM__CONNECT_SLICE) break;
        double t0 = aorm__mono_now();
        poll_connect(c);
        e->connect_spent += aorm__mono_now() - t0;
        break;
    }
    case CONN_READY:
    case CONN_COPY:
        if ((revents & AORM_WRITE) && c->state == CONN_COPY && c->copy_started && !c->copy_ended) {
            if (aorm__copy_pump(c) < 0) break;
        } else if (revents & AORM_WRITE) {
            if (aorm__conn_flush(c) < 0) break;
        }
        if (revents & AORM_READ) read_input(c);
        if (!c->dead && c->state == CONN_COPY && c->copy_started && !c->copy_ended && !c->writing)
            aorm__copy_pump(c);
        break;
    case CONN_RESOLVING:
    case CONN_BROKEN:
        break;
    }
    c->busy--;
    if (c->dead && c->busy == 0) aorm__conn_free(c);
    aorm__engine_leave(e);
}

/* ---- deadlines ------------------------------------------------------------ */

static void on_timer(aorm_timer *t, void *arg) {
    aorm_conn *c = arg;
    aorm_engine *e = c->e;
    double now = aorm_loop_now(e->loop);
    aorm__engine_enter(e);
    c->busy++;
    switch (c->state) {
    case CONN_RESOLVING: {
        char msg[384];
        aorm__worker_resolve_timeout(e->worker, c->id, msg, sizeof(msg));
        aorm__conn_lost(c, AORM_ECONNECT, msg);
        break;
    }
    case CONN_CONNECTING:
        aorm__conn_lost(c, AORM_ECONNECT, "connection attempt timed out");
        break;
    case CONN_READY:
    case CONN_COPY: {
        /* A statement past its deadline hears AORM_ETIMEOUT now; the
         * server stops it by itself (its own statement_timeout, set for
         * it alone: see send_deadline). Its late answer is read and
         * dropped. Only a server that has still not answered it a grace
         * period later costs the connection. */
        /* The grace period counts from when the server can have started
         * the statement (its predecessors answered), not from the
         * client's deadline: an expired statement pipelined behind a long
         * one is not a hung server. */
        double grace = fmax(5.0, e->o.connect_timeout);
        double next = AORM__NEVER, mono = aorm__mono_now();
        bool stuck = false, head = true;
        for (uint32_t i = 0; i < c->icount && !c->dead && c->state != CONN_BROKEN && !e->closing; i++) {
            aorm__item *it = &c->items[(c->ihead + i) % c->icap];
            aorm__op *op = it->op;
            if (it->kind != IT_QUERY) continue;
            bool is_head = head;
            head = false;
            double deadline = op->deadline;
            if (deadline >= AORM__NEVER) continue;
            if (op->done) {
                if (!is_head) {
                    next = fmin(next, now + grace); /* look again once it can have started */
                    continue;
                }
                double started = fmax(op->sent_mono, c->last_answer);
                double left = started + op->server_timeout + grace - mono;
                if (left <= 0) stuck = true;
                else next = fmin(next, now + left);
            } else if (deadline <= now) {
                /* the callback may free anything, op included */
                aorm__op_fail(op, AORM_ETIMEOUT, "57014", "statement deadline expired; the statement was cancelled");
                if (c->dead || c->state == CONN_BROKEN || e->closing) break;
                next = fmin(next, now + grace);
                /* a shared connection takes no new work until the server
                 * has answered it (or the grace period discards it): work
                 * queued behind a hung server would die with it */
                if (!c->held) {
                    c->draining = true;
                    e->rescan = true;
                }
            } else {
                next = fmin(next, op->deadline);
            }
        }
        if (c->dead || c->state == CONN_BROKEN) break;
        if (stuck) {
            e->stats.discarded++;
            aorm__conn_lost(c, AORM_ECONNLOST,
                            "connection discarded: the server did not stop a statement past its deadline in time");
            break;
        }
        if (next < AORM__NEVER) aorm__conn_arm_timer(c, next);
        break;
    }
    case CONN_BROKEN:
        break;
    }
    c->busy--;
    if (c->dead && c->busy == 0) aorm__conn_free(c);
    aorm__engine_leave(e);
}


/* ---- loss and teardown ---------------------------------------------------- */

/* Fails an operation whose connection went away (or never came). The rule
 * for a COMMIT depends only on whether it reached the wire: sent and not
 * answered is an unknown outcome, whatever ended the connection (a loss,
 * a protocol error, the engine being freed); never sent means the
 * transaction did not commit. */
void aorm__op_fail_lost(aorm__op *op, int code, const char *msg, bool sent) {
    if (op->done) return;
    if (op->role == ROLE_COMMIT && sent)
        aorm__op_fail(op, AORM_EUNKNOWN_OUTCOME, "08007",
                      "connection lost while committing: the transaction may or may not have committed");
    else if (op->role == ROLE_COMMIT)
        aorm__op_fail(op, AORM_ENOT_COMMITTED, "08006",
                      "COMMIT was never sent (the connection was lost or closed first): the transaction did not commit");
    else
        aorm__op_fail(op, code, code == AORM_EAUTH ? "28000" : code == AORM_ECONNECT ? "08001" : "08006", msg);
}

/* What a failed connection attempt means for the caller: refused
 * credentials and failed certificate checks will not heal by retrying
 * (AORM_EAUTH); anything else may (AORM_ECONNECT). libpq reports both only
 * as text, so the classification is by its messages. */
static int connect_failure_code(const char *msg) {
    static const char *const auth[] = {
        "password authentication failed", "no password supplied", "SCRAM", "authentication failed",
        "certificate verify failed", "does not match host name", "server certificate", "channel binding",
        "SSL error", "no pg_hba.conf entry", "server does not support SSL", "certificate",
    };
    for (size_t i = 0; i < sizeof(auth) / sizeof(auth[0]); i++)
        if (strstr(msg, auth[i])) return AORM_EAUTH;
    const char *role = strstr(msg, "role \"");
    if (role && strstr(role, "\" does not exist")) return AORM_EAUTH; /* 28000: no such login */
    return AORM_ECONNECT;
}

void aorm__conn_lost(aorm_conn *c, int code, const char *msg) { aorm__conn_lost_first(c, code, msg, NULL, NULL); }

/* Teardown, written once for both ends of a connection's life (a loss and
 * a free). item_clear drops what an item owns itself -- its result, its
 * prepared statement's name, its statement reference -- and leaves its
 * operation to the caller, which fails or releases it. close_wire closes
 * the connection's side of the wire: its watcher, its libpq connection, a
 * COPY in progress, its prepared statements and the deallocations still
 * owed to the server (all gone with the server session). The timer and
 * the item array stay: a lost connection is still an engine object. */
static void item_clear(aorm__item *it) {
    PQclear(it->res);
    free(it->name);
    if (it->stmt) aorm__stmt_unref(it->stmt);
}

static void close_wire(aorm_conn *c) {
    if (c->io) {
        aorm_io_free(c->io);
        c->io = NULL;
    }
    if (c->pg) {
        PQfinish(c->pg);
        c->pg = NULL;
    }
    if (c->copy) {
        aorm__copy_free(c->copy);
        c->copy = NULL;
        c->copy_op = NULL;
    }
    aorm__stmt_cache_free(&c->stmts);
    for (int i = 0; i < c->ndeallocs; i++) free(c->deallocs[i]);
    c->ndeallocs = 0;
}

/* The connection is gone: every operation on it fails exactly once, in
 * submission order (in-flight first, then the holder's queued ones);
 * `first` (may be NULL), the statement whose own answer ended the
 * connection (a FATAL), gets `first_err` in its place at the head.
 * Counts are settled before any callback runs, because a callback may
 * release, free or reuse what it holds (a release from inside one must
 * not give the connection's place back a second time). */
void aorm__conn_lost_first(aorm_conn *c, int code, const char *msg, aorm__op *first, const aorm_error *first_err) {
    if (c->state == CONN_BROKEN) return;
    aorm_engine *e = c->e;
    bool connecting = c->state == CONN_RESOLVING || c->state == CONN_CONNECTING;
    char buf[512];
    /* msg may point into the PGconn we are about to close */
    snprintf(buf, sizeof(buf), "%s", msg && *msg ? msg : aorm_strerror(code));
    size_t n = strlen(buf);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' ')) buf[--n] = '\0';

    c->state = CONN_BROKEN;
    c->txs = AORM_TX_UNKNOWN;
    c->in_tx = false;
    aorm_timer_stop(c->timer);
    int fail_code = code == AORM_ECONNECT ? AORM_ECONNLOST : code;
    if (connecting) {
        fail_code = connect_failure_code(buf);
        e->connecting--;
        e->stats.connect_failures++;
        e->last_connect_code = fail_code;
        snprintf(e->last_connect_error, sizeof(e->last_connect_error), "%s", buf);
        aorm__engine_log(e, AORM_LOG_ERROR, "connection %llu failed: %s", (unsigned long long)c->id, buf);
    } else if (code == AORM_ECANCELED) {
        aorm__engine_log(e, AORM_LOG_INFO, "connection %llu closed", (unsigned long long)c->id);
    } else {
        e->stats.connections_lost++;
        aorm__engine_log(e, AORM_LOG_WARN, "connection %llu lost: %s", (unsigned long long)c->id, buf);
    }

    /* Detach every operation first, in order. In-flight ops are in no
     * queue, so their `next` link is free; an op with several items (a
     * PREPARE and its QUERY) appears once. They keep their item
     * references until they are failed, so none is freed under us. */
    aorm__op *sent_head = NULL, *sent_tail = NULL;
    while (c->icount > 0) {
        aorm__item it = *items_head(c);
        items_pop_front(c);
        item_clear(&it);
        if (!it.op) continue;
        if (it.kind == IT_QUERY) c->inflight_ops--;
        if (it.op == sent_tail) {
            it.op->nitems--; /* one reference kept per listed op */
            continue;
        }
        it.op->next = NULL;
        if (sent_tail) sent_tail->next = it.op;
        else sent_head = it.op;
        sent_tail = it.op;
    }
    aorm__op *pend = c->pend_head;
    c->pend_head = c->pend_tail = NULL;
    close_wire(c);
    aorm__engine_enter(e); /* conn_gone may call back waiters, which may free the engine */
    aorm__engine_conn_gone(e, c, connecting); /* may free c */

    if (first && !first->done) aorm__op_deliver(first, NULL, first_err);
    while (sent_head) {
        aorm__op *op = sent_head;
        sent_head = op->next;
        op->next = NULL;
        aorm__op_fail_lost(op, fail_code, buf, true);
        op->nitems--;
        aorm__op_release(op);
    }
    while (pend) {
        aorm__op *op = pend;
        pend = op->next;
        op->queued = false;
        aorm__op_fail_lost(op, fail_code, buf, false);
        aorm__op_release(op);
    }
    aorm__engine_leave(e);
}

void aorm__conn_free(aorm_conn *c) {
    if (c->busy > 0) {
        c->dead = true;
        return;
    }
    if (c->e->in_dispatch) {
        /* the dispatcher may still hold it (the connection it is sending
         * on, its list of connections written this turn): freed when the
         * dispatch ends (aorm__engine_bury) */
        if (!c->dead) {
            c->dead = true;
            c->grave_next = c->e->graveyard;
            c->e->graveyard = c;
        }
        return;
    }
    aorm__assert(c->icount == 0 || c->state != CONN_BROKEN);
    while (c->icount > 0) {
        aorm__item it = *items_head(c);
        items_pop_front(c);
        item_clear(&it);
        if (it.op) {
            it.op->nitems--;
            aorm__op_release(it.op);
        }
    }
    close_wire(c);
    free(c->deallocs);
    aorm_timer_free(c->timer);
    free(c->items);
    free(c);
}
