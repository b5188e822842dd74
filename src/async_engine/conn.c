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
 * statement cache. Must not: block (no PQexec, no blocking PQcancel: the
 * helper thread sends cancels), or free itself while one of its handlers
 * is on the stack (`busy` / `dead`). */
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <stdio.h>
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

static void connect_begin(aorm_conn *c, const char *hostaddr) {
    aorm_engine *e = c->e;
    if (hostaddr) e->val[e->hostaddr_index] = hostaddr;
    c->pg = PQconnectStartParams(e->kw, e->val, 0);
    if (hostaddr) e->val[e->hostaddr_index] = NULL;
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

void aorm__conn_start(aorm_conn *c) {
    aorm_engine *e = c->e;
    aorm__conn_arm_timer(c, aorm_loop_now(e->loop) + e->o.connect_timeout);
    if (e->host_list) {
        c->state = CONN_RESOLVING;
        if (aorm__worker_resolve(e->worker, c->id, e->host_list) < 0)
            aorm__conn_lost(c, AORM_ENOMEM, "cannot queue host name resolution");
        return;
    }
    connect_begin(c, NULL);
}

void aorm__conn_resolved(aorm_conn *c, const char *hostaddr, const char *err) {
    if (c->state != CONN_RESOLVING) return;
    if (err) {
        aorm__conn_lost(c, AORM_ECONNECT, err);
        return;
    }
    connect_begin(c, hostaddr);
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

/* Evicted statements are deallocated in a sync group of their own, sent
 * at the end of a dispatch: inside a group that aborts, the server would
 * skip the DEALLOCATE and the statement would stay for the life of the
 * connection. */
static int queue_dealloc(aorm_conn *c, const aorm__stmt *s) {
    if (c->ndeallocs == c->cap_deallocs) {
        int cap = c->cap_deallocs ? c->cap_deallocs * 2 : 8;
        char **d = realloc(c->deallocs, (size_t)cap * sizeof(char *));
        if (!d) return -1;
        c->deallocs = d;
        c->cap_deallocs = cap;
    }
    char *name = aorm__strdup(s->name);
    if (!name) return -1;
    c->deallocs[c->ndeallocs++] = name;
    return 0;
}

int aorm__conn_send_deallocs(aorm_conn *c) {
    if (c->ndeallocs == 0 || c->state != CONN_READY) return 0;
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

/* Sends op's messages (no sync). Returns 0, or -1 when nothing of op was
 * sent (out of memory, or libpq refused: the connection is then lost). A
 * COPY is sent only on an idle connection: it leaves pipeline mode. */
int aorm__conn_send(aorm_conn *c, aorm__op *op) {
    aorm_engine *e = c->e;
    int fmt = (op->flags & AORM_EXEC_TEXT_RESULT) ? 0 : 1;
    uint32_t before = c->icount;

    if (op->kind == OP_COPY) {
        aorm__assert(c->icount == 0);
        if (PQexitPipelineMode(c->pg) != 1) return -1;
        if (items_push(c, IT_QUERY, op, NULL) < 0) goto refused;
        if (!PQsendQueryParams(c->pg, op->sql, 0, NULL, NULL, NULL, NULL, 0)) goto refused;
        c->copy = aorm__copy_new();
        if (!c->copy) goto refused;
        c->state = CONN_COPY;
        c->copy_op = op;
        c->copy_started = false;
        c->copy_ended = false;
        goto sent;
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

sent:
    op->queued = false;
    c->inflight_ops++;
    e->stats.statements++;
    if (op->role == ROLE_BEGIN) c->in_tx = true;
    if (op->deadline < AORM__NEVER) aorm__conn_arm_timer(c, op->deadline);
    return 0;

refused:
    /* Undo what this op pushed, so its fate is the caller's to decide. A
     * libpq refusal means the connection is unusable. */
    while (c->icount > before) items_pop_back(c);
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

/* FATAL and PANIC end the session on the server side. */
static bool is_fatal(const PGresult *r) {
    const char *sev = PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED);
    return sev && (strcmp(sev, "FATAL") == 0 || strcmp(sev, "PANIC") == 0);
}

static void update_txs(aorm_conn *c) {
    switch (PQtransactionStatus(c->pg)) {
    case PQTRANS_IDLE: c->txs = AORM_TX_IDLE; c->in_tx = false; break;
    case PQTRANS_ACTIVE: c->txs = AORM_TX_ACTIVE; break;
    case PQTRANS_INTRANS: c->txs = AORM_TX_INTRANS; break;
    case PQTRANS_INERROR: c->txs = AORM_TX_INERROR; break;
    case PQTRANS_UNKNOWN: c->txs = AORM_TX_UNKNOWN; break;
    }
}

/* The head op was timed out by the caller's deadline and is (or is about
 * to be) the statement the server is running: ask the server to stop it.
 * Only the head item's op can be running, so a cancel never targets a
 * statement that has not started. */
static void maybe_cancel(aorm_conn *c) {
    for (uint32_t i = 0; i < c->icount; i++) {
        aorm__item *it = &c->items[(c->ihead + i) % c->icap];
        if (it->kind == IT_SYNC || it->kind == IT_DISCARD || it->kind == IT_DEALLOC) continue;
        aorm__op *op = it->op;
        if (!op->done || op->cancel_sent || op->deadline > aorm_loop_now(c->e->loop)) return;
        PGcancel *pc = PQgetCancel(c->pg);
        if (!pc || aorm__worker_cancel(c->e->worker, c->id, pc) < 0) {
            if (pc) PQfreeCancel(pc);
            aorm__conn_lost(c, AORM_ECONNLOST, "could not send a cancel request; connection discarded");
            return;
        }
        op->cancel_sent = true;
        c->cancel_pending = true;
        c->e->stats.cancels++;
        aorm__engine_log(c->e, AORM_LOG_WARN, "statement deadline expired on connection %llu: cancelling",
                         (unsigned long long)c->id);
        return;
    }
}

/* One QUERY item finished with result r (NULL if the server sent none). */
static void query_done(aorm_conn *c, aorm__op *op, PGresult *r) {
    c->inflight_ops--;
    if (op->done) {
        PQclear(r);
        return;
    }
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    aorm_error err;
    switch (st) {
    case PGRES_TUPLES_OK:
    case PGRES_COMMAND_OK:
    case PGRES_EMPTY_QUERY:
    case PGRES_SINGLE_TUPLE: {
        if (op->role == ROLE_COMMIT || op->role == ROLE_END) {
            /* the block is closed; the sync behind it will confirm IDLE,
             * but a release from this very callback must not see INTRANS */
            c->in_tx = false;
            c->txs = AORM_TX_IDLE;
        }
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
        aorm__op_fail(op, AORM_EABORTED, "", "statement not executed: an earlier statement in its pipeline failed");
        return;
    case PGRES_FATAL_ERROR:
    case PGRES_NONFATAL_ERROR:
    case PGRES_BAD_RESPONSE:
        if (!r) {
            aorm__op_fail(op, AORM_EPROTOCOL, "08P01", "no result from the server");
            return;
        }
        /* A statement whose PREPARE was skipped or which hit a stale
         * cached plan has not run: outside a transaction, send it again. */
        if ((!op->held || !c->in_tx) && op->resends < 2 &&
            (sqlstate_is(r, "26000") || (sqlstate_is(r, "0A000") && strstr(PQresultErrorMessage(r), "cached plan")))) {
            PQclear(r);
            c->e->stats.resent++;
            aorm__op_requeue(op);
            return;
        }
        if (is_fatal(r)) {
            /* the backend is going away (terminated, shut down, crashed):
             * the connection is lost for everyone, and this statement's
             * outcome is known only if it is not a COMMIT */
            aorm__conn_lost(c, AORM_ECONNLOST, PQresultErrorMessage(r));
            aorm__error_from_pg(&err, r);
            if (op->role == ROLE_COMMIT) {
                err.code = AORM_EUNKNOWN_OUTCOME;
                memcpy(err.sqlstate, "08007", 6);
                err.message = "connection lost while committing: the transaction may or may not have committed";
            } else {
                err.code = AORM_ECONNLOST;
            }
            aorm__op_deliver(op, NULL, &err);
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
        if (r && PQresultStatus(r) == PGRES_PIPELINE_ABORTED && it->name) {
            /* skipped: try again in a later group (the name moves back) */
            if (c->ndeallocs < c->cap_deallocs) {
                c->deallocs[c->ndeallocs++] = it->name;
                it->name = NULL;
            }
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
        if (s && r && PQresultStatus(r) == PGRES_FATAL_ERROR &&
            (sqlstate_is(r, "26000") || sqlstate_is(r, "0A000")))
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
        if (c->icount > 0) maybe_cancel(c);
    }
}

static void read_input(aorm_conn *c) {
    bool was_idle = c->icount == 0;
    if (!PQconsumeInput(c->pg)) {
        aorm__conn_lost(c, AORM_ECONNLOST, PQerrorMessage(c->pg));
        return;
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
    case CONN_CONNECTING:
        poll_connect(c);
        break;
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
    case CONN_RESOLVING:
    case CONN_CONNECTING:
        aorm__conn_lost(c, AORM_ECONNECT, "connection attempt timed out");
        break;
    case CONN_READY:
    case CONN_COPY: {
        if (c->draining && c->drain_limit > 0 && c->drain_limit <= now) {
            e->stats.discarded++;
            aorm__conn_lost(c, AORM_ECONNLOST, "connection discarded: a cancelled statement did not end in time");
            break;
        }
        bool expired = false;
        double next = AORM__NEVER;
        for (uint32_t i = 0; i < c->icount && !c->dead; i++) {
            aorm__item *it = &c->items[(c->ihead + i) % c->icap];
            aorm__op *op = it->op;
            if (it->kind != IT_QUERY || op->done) continue;
            if (op->deadline <= now) {
                expired = true;
                aorm__op_fail(op, AORM_ETIMEOUT, "57014", "statement deadline expired; the statement was cancelled");
            } else if (op->deadline < next) {
                next = op->deadline;
            }
        }
        if (c->dead || c->state == CONN_BROKEN) break;
        if (expired) {
            /* Late answers are read and dropped; no new work goes here
             * until the pipeline has drained, and if the server does not
             * stop in time the connection is discarded. */
            if (!c->held) c->draining = true;
            e->rescan = true;
            c->drain_limit = now + fmax(5.0, e->o.connect_timeout);
            maybe_cancel(c);
        }
        if (c->draining && c->drain_limit > 0 && c->drain_limit < next) next = c->drain_limit;
        if (next < AORM__NEVER && !c->dead) aorm__conn_arm_timer(c, next);
        break;
    }
    case CONN_BROKEN:
        break;
    }
    c->busy--;
    if (c->dead && c->busy == 0) aorm__conn_free(c);
    aorm__engine_leave(e);
}

void aorm__conn_cancel_done(aorm_conn *c) {
    c->cancel_pending = false;
    c->e->rescan = true;
}

/* ---- loss and teardown ---------------------------------------------------- */

static void fail_op_lost(aorm__op *op, int code, const char *msg) {
    if (op->done) return;
    if (op->role == ROLE_COMMIT && code == AORM_ECONNLOST)
        aorm__op_fail(op, AORM_EUNKNOWN_OUTCOME, "08007",
                      "connection lost while committing: the transaction may or may not have committed");
    else
        aorm__op_fail(op, code, code == AORM_ECONNECT ? "08001" : "08006", msg);
}

void aorm__conn_lost(aorm_conn *c, int code, const char *msg) {
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
    if (c->io) {
        aorm_io_free(c->io);
        c->io = NULL;
    }
    if (c->pg) {
        PQfinish(c->pg);
        c->pg = NULL;
    }
    if (connecting) {
        e->connecting--;
        e->stats.connect_failures++;
        snprintf(e->last_connect_error, sizeof(e->last_connect_error), "%s", buf);
        aorm__engine_log(e, AORM_LOG_ERROR, "connection %llu failed: %s", (unsigned long long)c->id, buf);
    } else if (code == AORM_ECANCELED) {
        aorm__engine_log(e, AORM_LOG_INFO, "connection %llu closed", (unsigned long long)c->id);
    } else {
        e->stats.connections_lost++;
        aorm__engine_log(e, AORM_LOG_WARN, "connection %llu lost: %s", (unsigned long long)c->id, buf);
    }

    /* Every in-flight operation fails exactly once; items are dropped. */
    int fail_code = connecting ? AORM_ECONNECT : (code == AORM_ECONNECT ? AORM_ECONNLOST : code);
    while (c->icount > 0) {
        aorm__item it = *items_head(c);
        items_pop_front(c);
        PQclear(it.res);
        free(it.name);
        if (it.stmt) aorm__stmt_unref(it.stmt);
        if (it.op) {
            if (it.kind == IT_QUERY) c->inflight_ops--;
            fail_op_lost(it.op, fail_code, buf);
            it.op->nitems--;
            aorm__op_release(it.op);
        }
    }
    if (c->copy) {
        aorm__copy_free(c->copy);
        c->copy = NULL;
        c->copy_op = NULL;
    }
    while (c->pend_head) {
        aorm__op *op = c->pend_head;
        c->pend_head = op->next;
        op->queued = false;
        fail_op_lost(op, fail_code, buf);
        aorm__op_release(op);
    }
    c->pend_tail = NULL;
    aorm__stmt_cache_free(&c->stmts);
    for (int i = 0; i < c->ndeallocs; i++) free(c->deallocs[i]); /* gone with the server session */
    c->ndeallocs = 0;
    aorm__engine_conn_gone(e, c, connecting);
}

void aorm__conn_free(aorm_conn *c) {
    if (c->busy > 0) {
        c->dead = true;
        return;
    }
    aorm__assert(c->icount == 0 || c->state != CONN_BROKEN);
    while (c->icount > 0) {
        aorm__item it = *items_head(c);
        items_pop_front(c);
        PQclear(it.res);
        free(it.name);
        if (it.stmt) aorm__stmt_unref(it.stmt);
        if (it.op) {
            it.op->nitems--;
            aorm__op_release(it.op);
        }
    }
    for (int i = 0; i < c->ndeallocs; i++) free(c->deallocs[i]);
    free(c->deallocs);
    aorm__copy_free(c->copy);
    aorm__stmt_cache_free(&c->stmts);
    aorm_timer_free(c->timer);
    aorm_io_free(c->io);
    if (c->pg) PQfinish(c->pg);
    free(c->items);
    free(c);
}
