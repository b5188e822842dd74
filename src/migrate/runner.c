/* runner.c -- the migration commands, run on the engine's loop.
 *
 * A command is a job: it reads the revision directory, takes the advisory
 * lock (commands that write), reads the history table, compares it with
 * the files, plans, and runs the plan one revision at a time on a held
 * connection; then it releases what it holds and calls back once.
 *
 *   soon -> [lock connection -> poll pg_try_advisory_lock every lock_poll]
 *        -> work connection -> [CREATE TABLE IF NOT EXISTS history]
 *        -> SELECT history -> checksums -> plan
 *        -> per revision: BEGIN, SET LOCAL timeouts, statements, history
 *           row, COMMIT, queued together (one pipeline); a failure: ROLLBACK,
 *           then a retry after a delay (lock timeout) or the report
 *        -> unlock, release, callback
 *
 * The lock is a session lock on a connection of its own, taken by polling:
 * between two polls that connection sits idle, outside any transaction, so
 * it holds no snapshot that a CREATE INDEX CONCURRENTLY of the runner
 * holding the lock would have to wait for. Before each revision the job
 * checks that the lock's connection is still alive (a lost connection
 * loses the lock, and another runner could start).
 *
 * Every engine operation the job queues is counted in `outstanding`; the
 * job is freed only when that count is zero, so a late callback never
 * reaches freed memory. When the handle is freed mid-run the user is
 * called back at once (AORM_ECANCELED) and the job winds down on its own:
 * it stops at the next step, rolls back what is open and unlocks.
 *
 * Owns: the job (revision set, history copy, report strings), the held
 * connections until released, the timer. Must not: call the user back
 * from inside a command's call; release a connection after the engine
 * cancelled it (the engine frees its connections itself then). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aorm/migrate.h"
#include "aorm/result.h"
#include "aorm/sql.h"
#include "migrate/migrate_int.h"

typedef enum cmd { CMD_UPGRADE, CMD_DOWNGRADE, CMD_STAMP, CMD_STATUS, CMD_REPAIR, CMD_CHECK, CMD_CREATE } cmd;

typedef enum step_kind {
    ST_BEGIN,    /* BEGIN */
    ST_SET,      /* SET [LOCAL] timeouts, RESET */
    ST_STMT,     /* a statement of the revision */
    ST_HISTORY,  /* the history row */
    ST_COMMIT,   /* COMMIT */
    ST_SNAPSHOT, /* the models' catalog image */
    ST_OTHER     /* scratch schema, DDL of the image */
} step_kind;

typedef struct job job;

typedef struct step {
    job *j;
    step_kind kind;
    int stmt; /* ST_STMT: index into the section */
} step;

struct aorm_migrate {
    aorm_loop *loop;
    aorm_engine *e;
    aorm_migrate_options o;
    char *dir;
    char *history;
    job *job;
    void *data;
};

struct job {
    aorm_migrate *m; /* NULL once the handle is gone */
    aorm_loop *loop;
    aorm_engine *e;
    aorm_migrate_options o; /* directory and history point at the strings below */
    char *dir, *history;
    cmd cmd;
    char *target, *message;
    unsigned flags;
    aorm_migrate_cb cb;
    void *user;

    mig_set set;
    aorm_owner *owner; /* the job's work and connections: tells when the engine goes */
    aorm_conn *lock_conn, *conn;
    bool locked;
    bool engine_gone; /* the engine cancelled us: never release its connections */
    aorm_timer *timer;
    bool timer_for_retry;
    double lock_deadline;
    int outstanding;
    bool finishing;

    /* history: applied[i] for revision i; rows of the table without a file */
    bool *applied;
    bool have_history_table;
    aorm__buf hist_text;      /* problems found, for status/the message */
    char **h_id, **h_sum;
    int nh;

    int *plan;
    int nplan, pos;
    bool down;
    int attempt;

    step *steps;
    int nsteps;
    int seq;        /* non-transactional: next step to send */
    int fail_step;  /* index of the step whose error is recorded, -1 */
    aorm_error *err;
    int err_code;

    mig_snapshot want, have;

    aorm_migrate_problem problem;
    aorm__buf text;
    char **done;
    int ndone;
    bool nothing;
    bool drift;
    char msg[4096];
    char *fail_rev, *fail_file, *fail_stmt;
    int fail_line;
};

/* =========================================================================
 * Small helpers
 * ========================================================================= */

void aorm_migrate_options_init(aorm_migrate_options *o) {
    memset(o, 0, sizeof(*o));
    o->history_table = "aorm_migrate_history";
    o->lock_timeout = 5;
    o->statement_timeout = 300;
    o->lock_retries = 5;
    o->retry_delay = 0.5;
    o->lock_wait = 120;
    o->lock_poll = 0.2;
}

__attribute__((format(printf, 2, 3))) static void logf_(job *j, const char *fmt, ...) {
    if (!j->o.log) return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    j->o.log(AORM_LOG_INFO, line, j->o.log_user);
}

__attribute__((format(printf, 3, 4))) static void set_msg(job *j, aorm_migrate_problem p, const char *fmt, ...) {
    if (j->problem != AORM_MIGRATE_OK && j->problem != AORM_MIGRATE_DRIFT) return; /* the first one stands */
    j->problem = p;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(j->msg, sizeof j->msg, fmt, ap);
    va_end(ap);
}

static void tput(job *j, const char *s) {
    if (aorm__buf_append(&j->text, s, strlen(s)) < 0) j->err_code = j->err_code ? j->err_code : AORM_ENOMEM;
}

__attribute__((format(printf, 2, 3))) static void tputf(job *j, const char *fmt, ...) {
    char tmp[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    tput(j, tmp);
}

/* Appends s as an SQL string literal ('' doubled): offline scripts only. */
static void tput_literal(job *j, const char *s) {
    tput(j, "'");
    for (const char *p = s; *p; p++) {
        char c[3] = {*p, *p == '\'' ? '\'' : 0, 0};
        tput(j, c);
    }
    tput(j, "'");
}

static void tput_ident(job *j, const char *s) {
    if (aorm__quote_ident(&j->text, s) < 0) j->err_code = AORM_ENOMEM;
}

static char *qualified_history(const char *history) {
    aorm__buf b = {0};
    if (aorm__quote_ident(&b, history) < 0 || aorm__buf_putc(&b, '\0') < 0) {
        aorm__buf_free(&b);
        return NULL;
    }
    return b.data;
}

static int64_t lock_key(const job *j) {
    if (j->o.lock_key) return j->o.lock_key;
    char hex[65];
    char seed[512];
    snprintf(seed, sizeof seed, "aorm-migrate:%s", j->history);
    if (aorm__mig_sha256_hex(seed, strlen(seed), hex) < 0) return 0x616f726d6d696772LL;
    uint64_t k = 0;
    for (int i = 0; i < 16; i++) k = (k << 4) | (uint64_t)(hex[i] <= '9' ? hex[i] - '0' : hex[i] - 'a' + 10);
    return (int64_t)k;
}

static long ms(double s) { return s > 0 ? (long)(s * 1000 + 0.5) : 0; }

/* =========================================================================
 * The handle
 * ========================================================================= */

aorm_migrate *aorm_migrate_new(aorm_loop *loop, aorm_engine *e, const aorm_migrate_options *o, char *errmsg,
                               size_t errcap) {
    if (errmsg && errcap) errmsg[0] = '\0';
    if (!loop || !o || !o->directory || !o->directory[0]) {
        if (errmsg && errcap) snprintf(errmsg, errcap, "aorm_migrate_new: a loop and options.directory are required");
        return NULL;
    }
    const char *hist = o->history_table && o->history_table[0] ? o->history_table : "aorm_migrate_history";
    if (o->nmodels < 0 || (o->nmodels > 0 && !o->models)) {
        if (errmsg && errcap) snprintf(errmsg, errcap, "aorm_migrate_new: nmodels without models");
        return NULL;
    }
    aorm_migrate *m = calloc(1, sizeof(*m));
    if (!m || !(m->dir = aorm__strdup(o->directory)) || !(m->history = aorm__strdup(hist))) {
        if (m) free(m->dir);
        free(m);
        if (errmsg && errcap) snprintf(errmsg, errcap, "out of memory");
        return NULL;
    }
    m->loop = loop;
    m->e = e;
    m->o = *o;
    m->o.directory = m->dir;
    m->o.history_table = m->history;
    if (m->o.lock_poll <= 0) m->o.lock_poll = 0.2;
    if (m->o.lock_retries < 0) m->o.lock_retries = 0;
    return m;
}

void aorm_migrate_set_data(aorm_migrate *m, void *data) {
    if (m) m->data = data;
}
void *aorm_migrate_data(const aorm_migrate *m) { return m ? m->data : NULL; }

static void job_free(job *j) {
    aorm_owner_free(j->owner); /* nothing of it is pending by now */
    aorm__mig_set_free(&j->set);
    aorm_timer_free(j->timer);
    free(j->dir);
    free(j->history);
    free(j->target);
    free(j->message);
    free(j->applied);
    aorm__buf_free(&j->hist_text);
    for (int i = 0; i < j->nh; i++) {
        free(j->h_id[i]);
        free(j->h_sum[i]);
    }
    free(j->h_id);
    free(j->h_sum);
    free(j->plan);
    free(j->steps);
    aorm_error_free(j->err);
    aorm__mig_snapshot_free(&j->want);
    aorm__mig_snapshot_free(&j->have);
    aorm__buf_free(&j->text);
    free(j->done);
    free(j->fail_rev);
    free(j->fail_file);
    free(j->fail_stmt);
    free(j);
}

static void start_job(void *arg);
static void job_finish(job *j);
static void job_done(job *j);
static void on_step(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user);
static void poll_lock(job *j);

/* Calls the user back (once) with the job's outcome. */
static void deliver(job *j) {
    aorm_migrate *m = j->m;
    aorm_migrate_cb cb = j->cb;
    j->cb = NULL;
    if (m) m->job = NULL;
    j->m = NULL;
    if (!cb) return;
    if (aorm__buf_putc(&j->text, '\0') < 0) j->err_code = j->err_code ? j->err_code : AORM_ENOMEM;
    else j->text.len--;
    aorm_migrate_report r = {
        .problem = j->problem,
        .message = j->msg,
        .text = j->text.data ? j->text.data : "",
        .done = (const char *const *)j->done,
        .ndone = j->ndone,
        .nothing_to_do = j->nothing,
        .drift = j->drift,
        .revision = j->fail_rev ? j->fail_rev : "",
        .file = j->fail_file ? j->fail_file : "",
        .statement = j->fail_stmt ? j->fail_stmt : "",
        .line = j->fail_line,
    };
    aorm_error fallback = {.code = j->err_code, .message = j->msg[0] ? j->msg : aorm_strerror(j->err_code),
                           .detail = "", .hint = "", .constraint = "", .table = "", .column = ""};
    const aorm_error *err = NULL;
    if (j->err_code) {
        if (j->err) {
            /* the server's error, with our one-line account as its message */
            fallback = *j->err;
            if (j->msg[0]) fallback.message = j->msg;
        }
        err = &fallback;
    }
    cb(m, &r, err, j->user);
}

void aorm_migrate_free(aorm_migrate *m) {
    if (!m) return;
    job *j = m->job;
    if (j) {
        m->job = NULL;
        j->m = NULL;
        if (!j->err_code) {
            j->err_code = AORM_ECANCELED;
            snprintf(j->msg, sizeof j->msg, "the migration handle was freed: the command stops");
        }
        aorm_migrate_cb cb = j->cb;
        j->cb = NULL;
        /* a hold across the callback, which may free the engine (whose
         * cancellations then reach the job's own callbacks) */
        j->outstanding++;
        if (cb) {
            aorm_migrate_report r = {.problem = j->problem, .message = j->msg, .text = "", .revision = "",
                                     .file = "", .statement = ""};
            aorm_error err = {.code = AORM_ECANCELED, .message = j->msg, .detail = "", .hint = "",
                              .constraint = "", .table = "", .column = ""};
            cb(NULL, &r, &err, j->user);
        }
        j->outstanding--;
        if (j->outstanding == 0) {
            if (j->finishing) {
                job_done(j);
            } else if (aorm_loop_soon_cancel(j->loop, start_job, j) > 0) {
                job_free(j); /* it never started */
            } else {
                /* nothing of the engine in flight (a timer is pending):
                 * wind down now */
                job_finish(j);
            }
        }
    }
    free(m->dir);
    free(m->history);
    free(m);
}

/* =========================================================================
 * Finishing: release what is held, unlock, call back
 * ========================================================================= */

static void job_done(job *j) {
    if (j->outstanding > 0) return;
    deliver(j);
    job_free(j);
}

static void on_unlocked(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    job *j = user;
    j->outstanding--;
    if (err && err->code == AORM_ECANCELED) j->engine_gone = true;
    if (!j->engine_gone) aorm_conn_release(j->lock_conn);
    j->lock_conn = NULL;
    j->locked = false;
    job_done(j);
}

static void job_finish(job *j) {
    j->finishing = true;
    aorm_timer_stop(j->timer);
    if (j->conn && !j->engine_gone) aorm_conn_release(j->conn); /* an open transaction is rolled back */
    j->conn = NULL;
    if (j->lock_conn && !j->engine_gone) {
        /* The unlock is waited for, also when nobody is to be called back:
         * the job (and its owner, whose freeing would cancel an unsent
         * statement) lives until it is answered, so a pooled connection
         * never keeps the lock. */
        if (j->locked && !aorm_conn_broken(j->lock_conn)) {
            aorm_exec_options xo = {.flags = AORM_EXEC_UNPREPARED};
            if (aorm_conn_execute(j->lock_conn, "SELECT pg_advisory_unlock_all()", NULL, &xo, on_unlocked, j) == 0) {
                j->outstanding++;
                return;
            }
        }
        aorm_conn_release(j->lock_conn);
    }
    j->lock_conn = NULL;
    job_done(j);
}

/* Records an engine error (the first one) for the report. */
static void take_error(job *j, const aorm_error *err) {
    if (err->code == AORM_ECANCELED) j->engine_gone = true;
    if (j->err_code) return;
    j->err_code = err->code;
    j->err = aorm_error_copy(err);
}

/* A failure outside any revision: record it and wind down. */
static void fail_db(job *j, const char *what, const aorm_error *err) {
    take_error(j, err);
    if (err->sqlstate[0])
        set_msg(j, AORM_MIGRATE_DATABASE, "%s failed: SQLSTATE %s: %s", what, err->sqlstate, err->message);
    else
        set_msg(j, AORM_MIGRATE_DATABASE, "%s failed: %s", what, err->message);
    job_finish(j);
}

static void fail_code(job *j, const char *what, int code) {
    aorm_error err = {.code = code, .message = aorm_strerror(code), .detail = "", .hint = "", .constraint = "",
                      .table = "", .column = ""};
    if (code == AORM_ECLOSED) j->engine_gone = true;
    fail_db(j, what, &err);
}

/* Every engine callback of the job starts here: one operation fewer in
 * flight, and an error ends the job (what: the step, for the message).
 * Returns false when the callback must return at once. */
static bool answered(job *j, const aorm_error *err, const char *what) {
    j->outstanding--;
    if (!err) return true;
    fail_db(j, what, err);
    return false;
}

/* The job should stop now (handle freed, or the engine going away). */
static bool stopping(job *j) {
    if (j->m && !j->engine_gone) return false;
    if (!j->err_code) j->err_code = AORM_ECANCELED;
    return true;
}

/* =========================================================================
 * Plans
 * ========================================================================= */

/* Resolves target into need[] (target and its ancestors). Returns false
 * with the problem recorded. */
static bool resolve(job *j, const char *target, bool *need, bool allow_base) {
    int n = j->set.n;
    memset(need, 0, (size_t)n + 1);
    if (!target || !strcmp(target, "head")) {
        int heads = 0, h = -1;
        for (int i = 0; i < n; i++)
            if (j->set.v[i].head) heads++, h = i;
        if (heads > 1) {
            aorm__buf b = {0};
            for (int i = 0; i < n; i++)
                if (j->set.v[i].head) {
                    if (b.len) aorm__buf_append(&b, ", ", 2);
                    aorm__buf_append(&b, j->set.v[i].id, strlen(j->set.v[i].id));
                }
            aorm__buf_putc(&b, '\0');
            set_msg(j, AORM_MIGRATE_MULTIPLE_HEADS,
                    "the revisions have %d heads (%s): name one as the target, upgrade to \"heads\", or merge "
                    "them with `new --merge`",
                    heads, b.data ? b.data : "");
            aorm__buf_free(&b);
            j->err_code = AORM_EMISUSE;
            return false;
        }
        if (h >= 0) aorm__mig_ancestors(&j->set, h, need);
        return true;
    }
    if (!strcmp(target, "heads")) {
        for (int i = 0; i < n; i++)
            if (j->set.v[i].head) aorm__mig_ancestors(&j->set, i, need);
        return true;
    }
    if (!strcmp(target, "base")) {
        if (allow_base) return true;
        set_msg(j, AORM_MIGRATE_UNKNOWN_TARGET, "\"base\" is a target for downgrade and stamp only");
        j->err_code = AORM_EMISUSE;
        return false;
    }
    int i = aorm__mig_find(&j->set, target);
    if (i < 0) {
        set_msg(j, AORM_MIGRATE_UNKNOWN_TARGET, i == -2 ? "target %s matches several revisions" :
                                                          "target %s is not a revision of the directory",
                target);
        j->err_code = AORM_EMISUSE;
        return false;
    }
    aorm__mig_ancestors(&j->set, i, need);
    return true;
}

/* Compares the history with the files: tampered and missing files. */
static bool verify(job *j) {
    bool ok = true;
    for (int k = 0; k < j->nh; k++) {
        int i = -1;
        for (int x = 0; x < j->set.n && i < 0; x++)
            if (!strcmp(j->set.v[x].id, j->h_id[k])) i = x;
        if (i < 0) {
            char line[1024];
            snprintf(line, sizeof line,
                     "MISSING   %s: applied, but no file of %s declares it (restore the file, or run repair to "
                     "forget it)\n",
                     j->h_id[k], j->dir);
            aorm__buf_append(&j->hist_text, line, strlen(line));
            set_msg(j, AORM_MIGRATE_MISSING,
                    "applied revision %s has no file in %s: restore it, or run `repair` to forget it", j->h_id[k],
                    j->dir);
            ok = false;
        } else if (strcmp(j->set.v[i].checksum, j->h_sum[k]) != 0) {
            char line[1024];
            snprintf(line, sizeof line, "TAMPERED  %s: %s changed after it was applied (sha256 %.12s... recorded, %.12s... now)\n",
                     j->h_id[k], j->set.v[i].filename, j->h_sum[k], j->set.v[i].checksum);
            aorm__buf_append(&j->hist_text, line, strlen(line));
            set_msg(j, AORM_MIGRATE_TAMPERED,
                    "%s (revision %s) was changed after it was applied (sha256 %.12s... recorded, %.12s... now): "
                    "restore the file, or run `repair` to record the new checksum",
                    j->set.v[i].filename, j->h_id[k], j->h_sum[k], j->set.v[i].checksum);
            ok = false;
        }
        if (i >= 0) j->applied[i] = true;
    }
    return ok;
}

static bool make_plan(job *j) {
    int n = j->set.n;
    bool *need = calloc((size_t)n + 1, 1);
    j->plan = calloc((size_t)n + 1, sizeof(int));
    if (!need || !j->plan) {
        free(need);
        j->err_code = AORM_ENOMEM;
        set_msg(j, AORM_MIGRATE_DATABASE, "out of memory");
        return false;
    }
    bool ok = resolve(j, j->target, need, j->cmd != CMD_UPGRADE);
    j->nplan = 0;
    if (ok && j->cmd == CMD_UPGRADE) {
        for (int i = 0; i < n; i++)
            if (need[i] && !j->applied[i]) j->plan[j->nplan++] = i;
    } else if (ok && j->cmd == CMD_DOWNGRADE) {
        j->down = true;
        for (int i = n - 1; i >= 0; i--)
            if (j->applied[i] && !need[i]) j->plan[j->nplan++] = i;
    } else if (ok && j->cmd == CMD_STAMP) {
        /* plan: the revisions whose history row changes; need[] kept in applied[] terms */
        for (int i = 0; i < n; i++)
            if (need[i] != j->applied[i]) j->plan[j->nplan++] = need[i] ? i : -1 - i;
    }
    free(need);
    return ok;
}

/* =========================================================================
 * Running one revision
 * ========================================================================= */

static void run_next(job *j);
static void run_revision(job *j);

static char *parents_text(const mig_rev *r) {
    aorm__buf b = {0};
    for (int p = 0; p < r->nparents; p++) {
        if (p) aorm__buf_putc(&b, ' ');
        aorm__buf_append(&b, r->parents[p], strlen(r->parents[p]));
    }
    if (aorm__buf_putc(&b, '\0') < 0) {
        aorm__buf_free(&b);
        return NULL;
    }
    return b.data;
}

/* The history write of revision r (insert when applying, delete when
 * reverting), queued on the work connection; counted in outstanding. */
static int queue_history(job *j, const mig_rev *r, bool insert, aorm_result_cb cb, void *user) {
    char *h = qualified_history(j->history);
    char *parents = parents_text(r);
    if (!h || !parents) {
        free(h);
        free(parents);
        return AORM_ENOMEM;
    }
    char sql[512];
    aorm_params p;
    aorm_params_init(&p);
    if (insert) {
        snprintf(sql, sizeof sql,
                 "INSERT INTO %s (revision, parents, message, filename, checksum, transactional) "
                 "VALUES ($1, $2, $3, $4, $5, $6)",
                 h);
        aorm_params_text(&p, r->id);
        aorm_params_text(&p, parents);
        aorm_params_text(&p, r->message);
        aorm_params_text(&p, r->filename);
        aorm_params_text(&p, r->checksum);
        aorm_params_bool(&p, r->transactional);
    } else {
        snprintf(sql, sizeof sql, "DELETE FROM %s WHERE revision = $1", h);
        aorm_params_text(&p, r->id);
    }
    free(h);
    free(parents);
    aorm_exec_options xo = {.flags = AORM_EXEC_UNPREPARED};
    int rc = aorm_conn_execute(j->conn, sql, &p, &xo, cb, user);
    aorm_params_free(&p);
    if (rc == 0) j->outstanding++;
    return rc;
}

static const mig_stmt *section(const job *j, const mig_rev *r, int *n) {
    *n = j->down ? r->ndown : r->nup;
    return j->down ? r->down : r->up;
}

/* Steps of a transactional revision: BEGIN, SET LOCAL x2, statements,
 * history, COMMIT. Of a non-transactional one: SET, statements, history,
 * RESET (sent one at a time). */
static int build_steps(job *j, const mig_rev *r) {
    int n;
    section(j, r, &n);
    int total = n + 5;
    free(j->steps);
    if (!(j->steps = calloc((size_t)total, sizeof(step)))) return AORM_ENOMEM;
    int k = 0;
    if (r->transactional) {
        j->steps[k++] = (step){j, ST_BEGIN, 0};
        j->steps[k++] = (step){j, ST_SET, 0};
        j->steps[k++] = (step){j, ST_SET, 1};
    } else {
        j->steps[k++] = (step){j, ST_SET, 2};
    }
    for (int i = 0; i < n; i++) j->steps[k++] = (step){j, ST_STMT, i};
    j->steps[k++] = (step){j, ST_HISTORY, 0};
    if (r->transactional) j->steps[k++] = (step){j, ST_COMMIT, 0};
    else j->steps[k++] = (step){j, ST_SET, 3};
    j->nsteps = k;
    return 0;
}

/* Queues step k of the current revision. */
static int send_step(job *j, int k) {
    const mig_rev *r = &j->set.v[j->plan[j->pos]];
    step *st = &j->steps[k];
    aorm_exec_options xo = {.flags = AORM_EXEC_UNPREPARED};
    char sql[128];
    int rc;
    switch (st->kind) {
    case ST_BEGIN: rc = aorm_conn_begin(j->conn, NULL, on_step, st); break;
    case ST_SET:
        if (st->stmt == 0) snprintf(sql, sizeof sql, "SET LOCAL lock_timeout = '%ldms'", ms(j->o.lock_timeout));
        else if (st->stmt == 1)
            snprintf(sql, sizeof sql, "SET LOCAL statement_timeout = '%ldms'", ms(j->o.statement_timeout));
        else if (st->stmt == 2)
            snprintf(sql, sizeof sql, "SET statement_timeout = '%ldms'", ms(j->o.statement_timeout));
        else
            snprintf(sql, sizeof sql, "RESET statement_timeout");
        rc = aorm_conn_execute(j->conn, sql, NULL, &xo, on_step, st);
        break;
    case ST_STMT: {
        int n;
        const mig_stmt *s = section(j, r, &n);
        rc = aorm_conn_execute(j->conn, s[st->stmt].sql, NULL, &xo, on_step, st);
        break;
    }
    case ST_HISTORY: return queue_history(j, r, !j->down, on_step, st); /* counts itself */
    case ST_COMMIT: rc = aorm_conn_commit(j->conn, on_step, st); break;
    case ST_SNAPSHOT:
    case ST_OTHER: rc = AORM_EMISUSE; break; /* catalog steps are queued by on_have() */
    }
    if (rc == 0) j->outstanding++;
    return rc;
}

/* The report of a failed revision: file, line, statement, SQLSTATE. */
static void report_failure(job *j) {
    const mig_rev *r = &j->set.v[j->plan[j->pos]];
    const step *st = j->fail_step >= 0 ? &j->steps[j->fail_step] : NULL;
    free(j->fail_rev);
    free(j->fail_file);
    free(j->fail_stmt);
    j->fail_rev = aorm__strdup(r->id);
    j->fail_file = aorm__strdup(r->path);
    j->fail_stmt = NULL;
    j->fail_line = 0;
    const char *what = "the revision";
    char buf[64];
    if (st && st->kind == ST_STMT) {
        int n;
        const mig_stmt *s = section(j, r, &n);
        j->fail_stmt = aorm__strdup(s[st->stmt].sql);
        j->fail_line = s[st->stmt].line;
        snprintf(buf, sizeof buf, "statement %d", st->stmt + 1);
        what = buf;
    } else if (st && st->kind == ST_HISTORY) {
        what = "the history row";
    } else if (st && st->kind == ST_COMMIT) {
        what = "COMMIT";
    } else if (st && st->kind == ST_SET) {
        what = "setting the timeouts";
    }
    const aorm_error *e = j->err;
    const char *sqlstate = e && e->sqlstate[0] ? e->sqlstate : "-";
    const char *message = e ? e->message : aorm_strerror(j->err_code);
    if (j->err_code == AORM_ECONNLOST || j->err_code == AORM_EUNKNOWN_OUTCOME || !strncmp(sqlstate, "08", 2)) {
        /* the engine fails every step of the lost pipeline: which
         * statement was running is not known, and not claimed */
        free(j->fail_stmt);
        j->fail_stmt = NULL;
        j->fail_line = 0;
        set_msg(j, AORM_MIGRATE_FAILED,
                "%s: %s %s (%s): the connection was lost while it ran (SQLSTATE %s: %s); %s", r->path,
                j->down ? "downgrade of" : "revision", r->id, r->message, sqlstate, message,
                r->transactional ? "the history row is written in the revision's own transaction, so `status` "
                                   "says whether it committed"
                                 : "no transaction: statements before the loss may have run; the revision is "
                                   "not recorded");
        return;
    }
    char stmt_line[300] = "";
    if (j->fail_stmt) {
        snprintf(stmt_line, sizeof stmt_line, ": %.*s%s", 200, j->fail_stmt, strlen(j->fail_stmt) > 200 ? "..." : "");
        for (char *p = stmt_line; *p; p++)
            if (*p == '\n') *p = ' ';
    }
    set_msg(j, AORM_MIGRATE_FAILED, "%s:%d: %s %s (%s) failed at %s: SQLSTATE %s: %s%s%s", r->path, j->fail_line,
            j->down ? "downgrade of" : "revision", r->id, r->message, what, sqlstate, message, stmt_line,
            r->transactional ? " (the revision was rolled back; earlier revisions stay applied)"
                             : " (no transaction: the statements before it stay applied, the revision is not "
                               "recorded)");
}

static void on_retry_timer(job *j);

/* A transactional revision whose every step has answered. */
static void revision_settled(job *j) {
    const mig_rev *r = &j->set.v[j->plan[j->pos]];
    if (!j->err_code) {
        j->done[j->ndone++] = j->set.v[j->plan[j->pos]].id;
        j->applied[j->plan[j->pos]] = !j->down;
        j->pos++;
        run_next(j);
        return;
    }
    if (j->engine_gone || aorm_conn_broken(j->conn) || stopping(j)) {
        if (!j->engine_gone && j->m) report_failure(j);
        job_finish(j);
        return;
    }
    bool lock_to = j->err && aorm_error_is(j->err, "55P03");
    if (lock_to && r->transactional && j->attempt < j->o.lock_retries) {
        double delay = j->o.retry_delay * (double)(1u << (j->attempt < 16 ? j->attempt : 16));
        if (delay > 30) delay = 30;
        logf_(j, "%s: lock timeout (attempt %d of %d); retrying in %.2f s", r->id, j->attempt + 1,
              j->o.lock_retries + 1, delay);
        j->attempt++;
        aorm_error_free(j->err);
        j->err = NULL;
        j->err_code = 0;
        j->fail_step = -1;
        /* the connection is released and acquired again after the delay:
         * the rollback has run by then */
        aorm_conn_release(j->conn);
        j->conn = NULL;
        j->timer_for_retry = true;
        aorm_timer_start(j->timer, delay);
        return;
    }
    report_failure(j);
    job_finish(j);
}

static void on_step(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    step *st = user;
    job *j = st->j;
    j->outstanding--;
    const mig_rev *r = &j->set.v[j->plan[j->pos]];
    /* The report names the earliest step that failed: a server error
     * makes the steps behind it come back AORM_EABORTED, and a lost
     * connection fails them all, in whatever order the engine calls
     * them back. */
    int idx = (int)(st - j->steps);
    if (err && err->code == AORM_ECANCELED) j->engine_gone = true;
    if (err && (j->fail_step < 0 || idx < j->fail_step)) {
        j->fail_step = idx;
        j->err_code = err->code;
        aorm_error_free(j->err);
        j->err = aorm_error_copy(err);
    }
    if (r->transactional) {
        if (j->outstanding == 0) revision_settled(j);
        return;
    }
    /* one at a time: the next step, or after a failure the RESET */
    if (j->outstanding) return;
    if (j->engine_gone || aorm_conn_broken(j->conn)) {
        revision_settled(j);
        return;
    }
    /* after a failure (or when the job must stop) only the RESET of
     * statement_timeout is left to send */
    int k = (int)(st - j->steps) + 1;
    if (k < j->nsteps && (j->err_code || stopping(j))) k = j->nsteps - 1;
    if (k < j->nsteps) {
        int rc = send_step(j, k);
        if (rc == 0) return;
        if (!j->err_code) j->err_code = rc;
    }
    revision_settled(j);
}

static void start_revision(job *j) {
    const mig_rev *r = &j->set.v[j->plan[j->pos]];
    j->fail_step = -1;
    int rc = build_steps(j, r);
    if (rc) {
        fail_code(j, "preparing a revision", rc);
        return;
    }
    if (r->transactional) {
        for (int k = 0; k < j->nsteps && rc == 0; k++) rc = send_step(j, k);
    } else {
        rc = send_step(j, 0);
    }
    if (rc) {
        if (!j->err_code) j->err_code = rc;
        if (j->outstanding == 0) revision_settled(j);
    }
}

static void on_retry_conn(aorm_engine *e, aorm_conn *c, const aorm_error *err, void *user) {
    job *j = user;
    if (!answered(j, err, "acquiring a connection")) return;
    j->conn = c;
    if (stopping(j)) {
        job_finish(j);
        return;
    }
    run_revision(j);
}

static void on_timer(aorm_timer *t, void *user) {
    job *j = user;
    if (j->engine_gone) { /* (the owner's close callback finished the job already) */
        job_finish(j);
        return;
    }
    if (j->timer_for_retry) on_retry_timer(j);
    else poll_lock(j);
}

static void on_retry_timer(job *j) {
    if (stopping(j)) {
        job_finish(j);
        return;
    }
    int rc = aorm_owner_acquire(j->owner, on_retry_conn, j);
    if (rc) {
        fail_code(j, "acquiring a connection", rc);
        return;
    }
    j->outstanding++;
}

static void run_revision(job *j) {
    const mig_rev *r = &j->set.v[j->plan[j->pos]];
    if (j->lock_conn && aorm_conn_broken(j->lock_conn)) {
        aorm_error err = {.code = AORM_ECONNLOST, .message = "the connection holding the migration lock was lost",
                          .detail = "", .hint = "", .constraint = "", .table = "", .column = ""};
        memcpy(err.sqlstate, "08006", 6);
        fail_db(j, "holding the advisory lock", &err);
        return;
    }
    logf_(j, "%s %s %s (%s)", j->down ? "reverting" : "applying", r->id, r->message, r->filename);
    start_revision(j);
}

static void run_next(job *j) {
    if (stopping(j)) {
        job_finish(j);
        return;
    }
    if (j->pos >= j->nplan) {
        if (j->ndone == 0) j->nothing = true;
        snprintf(j->msg, sizeof j->msg, j->ndone ? "%s %d revision%s" : "nothing to do: the history is complete",
                 j->down ? "reverted" : "applied", j->ndone, j->ndone == 1 ? "" : "s");
        job_finish(j);
        return;
    }
    j->attempt = 0;
    run_revision(j);
}

/* =========================================================================
 * Offline: the script a run would execute
 * ========================================================================= */

static void offline_history_sql(job *j, const mig_rev *r, bool insert) {
    if (insert) {
        tput(j, "INSERT INTO ");
        tput_ident(j, j->history);
        tput(j, " (revision, parents, message, filename, checksum, transactional) VALUES (");
        tput_literal(j, r->id);
        tput(j, ", ");
        char *p = parents_text(r);
        tput_literal(j, p ? p : "");
        free(p);
        tput(j, ", ");
        tput_literal(j, r->message);
        tput(j, ", ");
        tput_literal(j, r->filename);
        tput(j, ", ");
        tput_literal(j, r->checksum);
        tput(j, r->transactional ? ", true);\n" : ", false);\n");
    } else {
        tput(j, "DELETE FROM ");
        tput_ident(j, j->history);
        tput(j, " WHERE revision = ");
        tput_literal(j, r->id);
        tput(j, ";\n");
    }
}

static const char *history_ddl_fmt =
    "CREATE TABLE IF NOT EXISTS %s (\n"
    "    revision text PRIMARY KEY,\n"
    "    parents text NOT NULL,\n"
    "    message text NOT NULL,\n"
    "    filename text NOT NULL,\n"
    "    checksum text NOT NULL,\n"
    "    transactional boolean NOT NULL,\n"
    "    applied_at timestamptz NOT NULL DEFAULT now()\n"
    ")";

static void write_offline(job *j) {
    char *h = qualified_history(j->history);
    if (!h) {
        j->err_code = AORM_ENOMEM;
        return;
    }
    tputf(j, "-- aorm-migrate %s %s (offline: nothing was run)\n",
          j->cmd == CMD_UPGRADE ? "upgrade" : j->cmd == CMD_DOWNGRADE ? "downgrade" : "stamp",
          j->target ? j->target : "head");
    tputf(j, history_ddl_fmt, h);
    tput(j, ";\n");
    free(h);
    if (j->cmd == CMD_STAMP) {
        tput(j, "BEGIN;\n");
        for (int k = 0; k < j->nplan; k++) {
            int i = j->plan[k] >= 0 ? j->plan[k] : -1 - j->plan[k];
            offline_history_sql(j, &j->set.v[i], j->plan[k] >= 0);
        }
        tput(j, "COMMIT;\n");
    }
    for (int k = 0; j->cmd != CMD_STAMP && k < j->nplan; k++) {
        const mig_rev *r = &j->set.v[j->plan[k]];
        int n;
        const mig_stmt *s = section(j, r, &n);
        tputf(j, "\n-- %s %s: %s (%s)\n", j->down ? "revert" : "apply", r->id, r->message, r->filename);
        if (r->transactional) {
            tput(j, "BEGIN;\n");
            tputf(j, "SET LOCAL lock_timeout = '%ldms';\n", ms(j->o.lock_timeout));
            tputf(j, "SET LOCAL statement_timeout = '%ldms';\n", ms(j->o.statement_timeout));
        } else {
            tputf(j, "SET statement_timeout = '%ldms';\n", ms(j->o.statement_timeout));
        }
        for (int i = 0; i < n; i++) {
            tput(j, s[i].sql);
            tput(j, ";\n");
        }
        offline_history_sql(j, r, !j->down);
        tput(j, r->transactional ? "COMMIT;\n" : "RESET statement_timeout;\n");
        j->done[j->ndone++] = r->id;
    }
    if (j->nplan == 0) j->nothing = true;
    snprintf(j->msg, sizeof j->msg, "offline: %d revision%s written as SQL", j->nplan, j->nplan == 1 ? "" : "s");
}

/* =========================================================================
 * Stamp and repair: history rows only, one transaction
 * ========================================================================= */

static void on_rows_written(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    job *j = user;
    j->outstanding--;
    if (err && (err->code != AORM_EABORTED || !j->err_code)) take_error(j, err);
    if (j->outstanding) return;
    if (j->err_code && !j->msg[0])
        set_msg(j, AORM_MIGRATE_DATABASE, "writing the history failed: %s",
                j->err ? j->err->message : aorm_strerror(j->err_code));
    job_finish(j);
}

static int queue_sql(job *j, const char *sql, aorm_params *p, aorm_result_cb cb) {
    aorm_exec_options xo = {.flags = AORM_EXEC_UNPREPARED};
    int rc = aorm_conn_execute(j->conn, sql, p, &xo, cb, j);
    if (rc == 0) j->outstanding++;
    return rc;
}

static void write_rows(job *j) {
    char *h = qualified_history(j->history);
    if (!h) {
        fail_code(j, "writing the history", AORM_ENOMEM);
        return;
    }
    int rc = aorm_conn_begin(j->conn, NULL, on_rows_written, j);
    if (rc == 0) j->outstanding++;
    char sql[512];
    if (j->cmd == CMD_STAMP) {
        for (int k = 0; k < j->nplan && rc == 0; k++) {
            int i = j->plan[k] >= 0 ? j->plan[k] : -1 - j->plan[k];
            const mig_rev *r = &j->set.v[i];
            tputf(j, "%s %s %s\n", j->plan[k] >= 0 ? "stamped  " : "unstamped", r->id, r->message);
            rc = queue_history(j, r, j->plan[k] >= 0, on_rows_written, j);
        }
        if (j->nplan == 0) j->nothing = true;
        snprintf(j->msg, sizeof j->msg, "stamp: %d history row%s changed", j->nplan, j->nplan == 1 ? "" : "s");
    } else {
        int changed = 0;
        for (int k = 0; k < j->nh && rc == 0; k++) {
            int i = -1;
            for (int x = 0; x < j->set.n && i < 0; x++)
                if (!strcmp(j->set.v[x].id, j->h_id[k])) i = x;
            aorm_params p;
            aorm_params_init(&p);
            if (i < 0) {
                snprintf(sql, sizeof sql, "DELETE FROM %s WHERE revision = $1", h);
                aorm_params_text(&p, j->h_id[k]);
                tputf(j, "forgot    %s (its file is gone)\n", j->h_id[k]);
            } else if (strcmp(j->set.v[i].checksum, j->h_sum[k]) != 0) {
                snprintf(sql, sizeof sql, "UPDATE %s SET checksum = $2, filename = $3 WHERE revision = $1", h);
                aorm_params_text(&p, j->h_id[k]);
                aorm_params_text(&p, j->set.v[i].checksum);
                aorm_params_text(&p, j->set.v[i].filename);
                tputf(j, "recorded  %s: new checksum of %s\n", j->h_id[k], j->set.v[i].filename);
            } else {
                aorm_params_free(&p);
                continue;
            }
            changed++;
            rc = queue_sql(j, sql, &p, on_rows_written);
            aorm_params_free(&p);
        }
        if (changed == 0) j->nothing = true;
        snprintf(j->msg, sizeof j->msg, "repair: %d history row%s changed", changed, changed == 1 ? "" : "s");
    }
    free(h);
    if (rc == 0) rc = aorm_conn_commit(j->conn, on_rows_written, j);
    if (rc == 0) {
        j->outstanding++;
        return;
    }
    if (!j->err_code) j->err_code = rc;
    set_msg(j, AORM_MIGRATE_DATABASE, "writing the history failed: %s", aorm_strerror(rc));
    if (j->outstanding == 0) job_finish(j);
}

/* =========================================================================
 * Status
 * ========================================================================= */

static void write_status(job *j) {
    int pending = 0;
    for (int i = 0; i < j->set.n; i++) {
        const mig_rev *r = &j->set.v[i];
        if (!j->applied[i]) pending++;
        tputf(j, "%s %s  %s%s%s\n", j->applied[i] ? "applied " : "pending ", r->id, r->message,
              r->head ? "  (head)" : "", r->transactional ? "" : "  [no transaction]");
    }
    if (j->hist_text.len) {
        aorm__buf_putc(&j->hist_text, '\0');
        tput(j, j->hist_text.data);
    }
    if (!j->have_history_table) tput(j, "(the database has no history table yet)\n");
    if (j->problem == AORM_MIGRATE_OK)
        snprintf(j->msg, sizeof j->msg, "%d applied, %d pending", j->set.n - pending, pending);
    if (pending == 0 && j->problem == AORM_MIGRATE_OK) j->nothing = true;
}

/* =========================================================================
 * Autogenerate and check: the catalog images
 * ========================================================================= */

static void catalog_done(job *j);

static void on_catalog(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    step *st = user;
    job *j = st->j;
    j->outstanding--;
    if (err && (err->code != AORM_EABORTED || !j->err_code)) take_error(j, err);
    if (!err && st->kind == ST_SNAPSHOT && aorm__mig_snapshot_read(res, &j->want) < 0 && !j->err_code)
        j->err_code = AORM_ENOMEM;
    if (j->outstanding == 0) catalog_done(j);
}

static void on_have(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    job *j = user;
    if (!answered(j, err, "reading the catalog")) return;
    if (aorm__mig_snapshot_read(res, &j->have) < 0) {
        fail_code(j, "reading the catalog", AORM_ENOMEM);
        return;
    }
    if (stopping(j)) {
        job_finish(j);
        return;
    }
    /* the models' image: created in a scratch schema, read, rolled back */
    char *ddl = NULL;
    char why[512] = "";
    int rc = aorm_ddl_create_sql(j->o.models, j->o.nmodels, 0, &ddl, why, sizeof why);
    if (rc) {
        j->err_code = rc;
        set_msg(j, AORM_MIGRATE_DATABASE, "the models cannot be written as DDL: %s", why);
        job_finish(j);
        return;
    }
    mig_stmt *v = NULL;
    int n = 0;
    bool conc = false, txctl = false;
    rc = aorm__mig_split(ddl, 1, &v, &n, &conc, &txctl, why, sizeof why);
    free(ddl);
    free(j->steps);
    j->steps = rc ? NULL : calloc((size_t)n + 8, sizeof(step));
    if (rc || !j->steps) {
        aorm__mig_stmts_free(v, n);
        fail_code(j, "preparing the models' image", rc ? rc : AORM_ENOMEM);
        return;
    }
    aorm_exec_options xo = {.flags = AORM_EXEC_UNPREPARED};
    aorm_exec_options xt = {.flags = AORM_EXEC_UNPREPARED | AORM_EXEC_TEXT_RESULT};
    int k = 0;
    j->steps[k] = (step){j, ST_OTHER, 0};
    rc = aorm_conn_begin(j->conn, NULL, on_catalog, &j->steps[k++]);
    if (rc == 0) j->outstanding++;
    const char *pre[] = {"CREATE SCHEMA " MIG_SCRATCH_SCHEMA, "SET LOCAL search_path = " MIG_SCRATCH_SCHEMA};
    for (int i = 0; i < 2 && rc == 0; i++) {
        j->steps[k] = (step){j, ST_OTHER, 0};
        if ((rc = aorm_conn_execute(j->conn, pre[i], NULL, &xo, on_catalog, &j->steps[k++])) == 0) j->outstanding++;
    }
    for (int i = 0; i < n && rc == 0; i++) {
        j->steps[k] = (step){j, ST_OTHER, 0};
        if ((rc = aorm_conn_execute(j->conn, v[i].sql, NULL, &xo, on_catalog, &j->steps[k++])) == 0)
            j->outstanding++;
    }
    aorm__mig_stmts_free(v, n);
    if (rc == 0) {
        aorm_params p;
        aorm_params_init(&p);
        aorm_params_text(&p, j->history);
        j->steps[k] = (step){j, ST_SNAPSHOT, 0};
        rc = aorm_conn_execute(j->conn, aorm__mig_snapshot_sql, &p, &xt, on_catalog, &j->steps[k++]);
        aorm_params_free(&p);
        if (rc == 0) j->outstanding++;
    }
    /* the ROLLBACK runs even behind a failed statement (a sync group of its own) */
    j->steps[k] = (step){j, ST_OTHER, 0};
    int rb = aorm_conn_rollback(j->conn, on_catalog, &j->steps[k++]);
    if (rb == 0) j->outstanding++;
    if (rc && !j->err_code) j->err_code = rc;
    if (j->outstanding == 0) catalog_done(j);
}

static void start_catalog(job *j) {
    aorm_params p;
    aorm_params_init(&p);
    aorm_params_text(&p, j->history);
    aorm_exec_options xt = {.flags = AORM_EXEC_UNPREPARED | AORM_EXEC_TEXT_RESULT};
    int rc = aorm_conn_execute(j->conn, aorm__mig_snapshot_sql, &p, &xt, on_have, j);
    aorm_params_free(&p);
    if (rc) {
        fail_code(j, "reading the catalog", rc);
        return;
    }
    j->outstanding++;
}

/* Text for a file name: lower-case letters, digits and '_' of message. */
static void slug(const char *message, char *out, size_t cap) {
    size_t k = 0;
    bool sep = false;
    for (const char *p = message; *p && k + 1 < cap; p++) {
        char c = *p;
        if (c >= 'A' && c <= 'Z') c = (char)(c + 32);
        if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) {
            if (sep && k) out[k++] = '_';
            if (k + 1 < cap) out[k++] = c;
            sep = false;
        } else {
            sep = true;
        }
    }
    out[k] = '\0';
}

/* Writes a new revision file with the given sections (NULL: empty).
 * Records its path in fail_file and its id in fail_rev (the report's
 * file and revision). */
static void write_revision(job *j, const char *up, const char *down) {
    int nheads = 0;
    for (int i = 0; i < j->set.n; i++) nheads += j->set.v[i].head;
    if (nheads > 1 && !(j->flags & AORM_MIGRATE_MERGE)) {
        set_msg(j, AORM_MIGRATE_MULTIPLE_HEADS,
                "the revisions have %d heads: a new revision would be a merge; ask for it (--merge)", nheads);
        j->err_code = AORM_EMISUSE;
        return;
    }
    char id[13];
    int rc = aorm__mig_random_id(id);
    if (rc) {
        j->err_code = rc;
        set_msg(j, AORM_MIGRATE_BAD_FILE, "no random bytes for a revision id");
        return;
    }
    char sl[48];
    slug(j->message ? j->message : "", sl, sizeof sl);
    size_t pl = strlen(j->dir) + 64;
    char *path = malloc(pl);
    if (!path) {
        j->err_code = AORM_ENOMEM;
        return;
    }
    snprintf(path, pl, "%s/%s%s%s.sql", j->dir, id, sl[0] ? "_" : "", sl);
    FILE *f = fopen(path, "wx");
    if (!f) {
        set_msg(j, AORM_MIGRATE_BAD_FILE, "cannot create %s: %s", path, strerror(errno));
        j->err_code = AORM_EIO;
        free(path);
        return;
    }
    fprintf(f, "-- revision: %s\n-- parents:", id);
    for (int i = 0; i < j->set.n; i++)
        if (j->set.v[i].head) fprintf(f, " %s", j->set.v[i].id);
    fprintf(f, "\n-- message: ");
    for (const char *p = j->message ? j->message : ""; *p; p++) fputc(*p == '\n' || *p == '\r' ? ' ' : *p, f);
    fprintf(f, "\n\n-- migrate:up\n%s\n-- migrate:down\n%s", up ? up : "", down ? down : "");
    bool bad = ferror(f) != 0;
    if (fclose(f) != 0 || bad) {
        set_msg(j, AORM_MIGRATE_BAD_FILE, "cannot write %s: %s", path, strerror(errno));
        j->err_code = AORM_EIO;
        free(path);
        return;
    }
    free(j->fail_file);
    j->fail_file = aorm__strdup(path);
    free(j->fail_rev);
    j->fail_rev = aorm__strdup(id);
    snprintf(j->msg, sizeof j->msg, "wrote %s", path);
    free(path);
}

static void catalog_done(job *j) {
    if (j->err_code) {
        if (!j->msg[0]) {
            const aorm_error *e = j->err;
            set_msg(j, AORM_MIGRATE_DATABASE, "building the models' image failed: SQLSTATE %s: %s",
                    e && e->sqlstate[0] ? e->sqlstate : "-", e ? e->message : aorm_strerror(j->err_code));
        }
        job_finish(j);
        return;
    }
    aorm__buf up = {0}, down = {0}, list = {0};
    char why[512] = "";
    int n = aorm__mig_diff(j->o.models, j->o.nmodels, &j->want, &j->have, &up, &down, &list, why, sizeof why);
    if (n < 0) {
        j->err_code = n;
        set_msg(j, AORM_MIGRATE_DATABASE, "comparing the models with the database: %s", why);
    } else if (j->cmd == CMD_CHECK) {
        int pending = 0;
        for (int i = 0; i < j->set.n; i++) pending += !j->applied[i];
        if (list.len) aorm__buf_append(&j->text, list.data, list.len);
        if (pending) tputf(j, "! %d revision%s not applied\n", pending, pending == 1 ? "" : "s");
        j->drift = n > 0 || pending > 0;
        if (j->drift) {
            set_msg(j, AORM_MIGRATE_DRIFT, "drift: %d difference%s between the models and the database, %d pending revision%s",
                    n, n == 1 ? "" : "s", pending, pending == 1 ? "" : "s");
        } else {
            j->nothing = true;
            snprintf(j->msg, sizeof j->msg, "no drift: the database matches the models and the revisions");
        }
    } else if (n == 0) {
        j->nothing = true;
        snprintf(j->msg, sizeof j->msg, "no differences between the models and the database: no revision written");
    } else {
        if (aorm__buf_putc(&up, '\0') == 0 && aorm__buf_putc(&down, '\0') == 0) write_revision(j, up.data, down.data);
        else j->err_code = AORM_ENOMEM;
        if (list.len && !j->err_code) aorm__buf_append(&j->text, list.data, list.len);
    }
    aorm__buf_free(&up);
    aorm__buf_free(&down);
    aorm__buf_free(&list);
    job_finish(j);
}

/* =========================================================================
 * History, then the command's own work
 * ========================================================================= */

static void after_history(job *j) {
    if (stopping(j)) {
        job_finish(j);
        return;
    }
    bool ok = verify(j);
    if (j->cmd == CMD_REPAIR) {
        /* what verify() found is what repair fixes */
        ok = true;
        j->problem = AORM_MIGRATE_OK;
        j->msg[0] = '\0';
    }
    switch (j->cmd) {
    case CMD_STATUS:
        write_status(j);
        job_finish(j);
        return;
    case CMD_REPAIR:
        write_rows(j);
        return;
    case CMD_UPGRADE:
    case CMD_DOWNGRADE:
    case CMD_STAMP:
        if (!ok) {
            j->err_code = AORM_EMISUSE;
            job_finish(j);
            return;
        }
        if (!make_plan(j)) {
            job_finish(j);
            return;
        }
        if (j->o.offline) {
            write_offline(j);
            job_finish(j);
        } else if (j->cmd == CMD_STAMP) {
            write_rows(j);
        } else {
            run_next(j);
        }
        return;
    case CMD_CHECK:
    case CMD_CREATE:
        if (!ok) {
            j->err_code = AORM_EMISUSE;
            job_finish(j);
            return;
        }
        if (j->cmd == CMD_CREATE) {
            int pending = 0;
            for (int i = 0; i < j->set.n; i++) pending += !j->applied[i];
            if (pending) {
                set_msg(j, AORM_MIGRATE_NOT_AT_HEAD,
                        "the database has %d pending revision%s: upgrade it before autogenerating", pending,
                        pending == 1 ? "" : "s");
                j->err_code = AORM_EMISUSE;
                job_finish(j);
                return;
            }
        }
        start_catalog(j);
        return;
    }
}

static void on_history(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    job *j = user;
    j->outstanding--;
    if (err) {
        if (err->code == AORM_ESERVER && aorm_error_is(err, "42P01") && j->cmd != CMD_UPGRADE &&
            j->cmd != CMD_DOWNGRADE && j->cmd != CMD_STAMP && j->cmd != CMD_REPAIR) {
            after_history(j); /* no table yet: nothing applied */
            return;
        }
        if (err->code == AORM_ESERVER && aorm_error_is(err, "42P01") && j->o.offline) {
            after_history(j);
            return;
        }
        fail_db(j, "reading the history", err);
        return;
    }
    j->have_history_table = true;
    int n = aorm_result_nrows(res);
    j->h_id = calloc((size_t)n + 1, sizeof(char *));
    j->h_sum = calloc((size_t)n + 1, sizeof(char *));
    if (!j->h_id || !j->h_sum) {
        fail_code(j, "reading the history", AORM_ENOMEM);
        return;
    }
    for (int i = 0; i < n; i++) {
        const char *id = "", *sum = "";
        aorm_result_text(res, i, 0, &id, NULL);
        aorm_result_text(res, i, 1, &sum, NULL);
        j->h_id[i] = aorm__strdup(id);
        j->h_sum[i] = aorm__strdup(sum);
        j->nh++;
        if (!j->h_id[i] || !j->h_sum[i]) {
            fail_code(j, "reading the history", AORM_ENOMEM);
            return;
        }
    }
    after_history(j);
}

static void read_history(job *j) {
    char *h = qualified_history(j->history);
    if (!h) {
        fail_code(j, "reading the history", AORM_ENOMEM);
        return;
    }
    char sql[512];
    snprintf(sql, sizeof sql, "SELECT revision, checksum FROM %s ORDER BY applied_at, revision", h);
    free(h);
    aorm_exec_options xt = {.flags = AORM_EXEC_UNPREPARED | AORM_EXEC_TEXT_RESULT};
    int rc = aorm_conn_execute(j->conn, sql, NULL, &xt, on_history, j);
    if (rc) {
        fail_code(j, "reading the history", rc);
        return;
    }
    j->outstanding++;
}

static void on_history_table(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    job *j = user;
    if (!answered(j, err, "creating the history table")) return;
    read_history(j);
}

static bool writes(const job *j) {
    return !j->o.offline && (j->cmd == CMD_UPGRADE || j->cmd == CMD_DOWNGRADE || j->cmd == CMD_STAMP ||
                             j->cmd == CMD_REPAIR);
}

static void on_work_conn(aorm_engine *e, aorm_conn *c, const aorm_error *err, void *user) {
    job *j = user;
    if (!answered(j, err, "acquiring a connection")) return;
    j->conn = c;
    if (stopping(j)) {
        job_finish(j);
        return;
    }
    if (!writes(j)) {
        read_history(j);
        return;
    }
    char *h = qualified_history(j->history);
    if (!h) {
        fail_code(j, "creating the history table", AORM_ENOMEM);
        return;
    }
    char sql[1024];
    snprintf(sql, sizeof sql, history_ddl_fmt, h);
    free(h);
    aorm_exec_options xo = {.flags = AORM_EXEC_UNPREPARED};
    int rc = aorm_conn_execute(c, sql, NULL, &xo, on_history_table, j);
    if (rc) {
        fail_code(j, "creating the history table", rc);
        return;
    }
    j->outstanding++;
}

static void acquire_work(job *j) {
    int rc = aorm_owner_acquire(j->owner, on_work_conn, j);
    if (rc) {
        fail_code(j, "acquiring a connection", rc);
        return;
    }
    j->outstanding++;
}

/* =========================================================================
 * The advisory lock: polled, never waited for on the server
 * ========================================================================= */

static void on_poll(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    job *j = user;
    if (!answered(j, err, "pg_try_advisory_lock")) return;
    bool got = false;
    if (aorm_result_bool(res, 0, 0, &got) < 0) got = false;
    if (got) {
        j->locked = true;
        if (stopping(j)) {
            job_finish(j);
            return;
        }
        logf_(j, "took the migration lock (key %lld)", (long long)lock_key(j));
        acquire_work(j);
        return;
    }
    if (stopping(j)) {
        job_finish(j);
        return;
    }
    if (aorm_loop_now(j->loop) >= j->lock_deadline) {
        set_msg(j, AORM_MIGRATE_LOCK_WAIT,
                "another runner has held the migration lock (advisory lock %lld) for more than %.1f s",
                (long long)lock_key(j), j->o.lock_wait);
        j->err_code = AORM_ETIMEOUT;
        job_finish(j);
        return;
    }
    j->timer_for_retry = false;
    aorm_timer_start(j->timer, j->o.lock_poll);
}

static void poll_lock(job *j) {
    if (stopping(j)) {
        job_finish(j);
        return;
    }
    aorm_params p;
    aorm_params_init(&p);
    aorm_params_int8(&p, lock_key(j));
    aorm_exec_options xo = {.flags = AORM_EXEC_UNPREPARED};
    int rc = aorm_conn_execute(j->lock_conn, "SELECT pg_try_advisory_lock($1)", &p, &xo, on_poll, j);
    aorm_params_free(&p);
    if (rc) {
        fail_code(j, "pg_try_advisory_lock", rc);
        return;
    }
    j->outstanding++;
}

static void on_lock_conn(aorm_engine *e, aorm_conn *c, const aorm_error *err, void *user) {
    job *j = user;
    if (!answered(j, err, "acquiring the lock's connection")) return;
    j->lock_conn = c;
    j->lock_deadline = aorm_loop_now(j->loop) + j->o.lock_wait;
    poll_lock(j);
}

/* =========================================================================
 * Starting a command
 * ========================================================================= */

/* The engine is being freed; the job's work has been called back with
 * AORM_ECANCELED already (and may have finished the job). A job waiting on
 * its timer ends here. Must not call the engine. */
static void on_engine_closed(aorm_owner *o, void *user) {
    job *j = user;
    j->engine_gone = true;
    if (j->outstanding == 0 && !j->finishing) {
        if (!j->err_code) {
            j->err_code = AORM_ECANCELED;
            set_msg(j, AORM_MIGRATE_DATABASE, "the engine was freed: the command stops");
        }
        aorm_timer_stop(j->timer);
        job_finish(j);
    }
}

static void start_job(void *arg) {
    job *j = arg;
    if (stopping(j)) {
        job_finish(j);
        return;
    }
    aorm_migrate_problem problem;
    char why[1024] = "";
    int rc = aorm__mig_load(j->dir, &j->set, &problem, why, sizeof why);
    if (rc) {
        j->err_code = rc;
        set_msg(j, problem, "%s", why);
        job_finish(j);
        return;
    }
    j->applied = calloc((size_t)j->set.n + 1, sizeof(bool));
    j->done = calloc((size_t)j->set.n + 1, sizeof(char *));
    if (!j->applied || !j->done) {
        fail_code(j, "starting", AORM_ENOMEM);
        return;
    }
    if (j->cmd == CMD_CREATE && !(j->flags & AORM_MIGRATE_AUTOGENERATE)) {
        write_revision(j, NULL, NULL);
        job_finish(j);
        return;
    }
    if (!j->e) {
        /* offline, from an empty database */
        after_history(j);
        return;
    }
    if (!(j->owner = aorm_owner_new(j->e))) {
        fail_code(j, "starting", AORM_ECLOSED);
        return;
    }
    aorm_owner_on_close(j->owner, on_engine_closed, j);
    if (!writes(j)) {
        acquire_work(j);
        return;
    }
    rc = aorm_owner_acquire(j->owner, on_lock_conn, j);
    if (rc) {
        fail_code(j, "acquiring the lock's connection", rc);
        return;
    }
    j->outstanding++;
}

static int submit(aorm_migrate *m, cmd c, const char *target, const char *message, unsigned flags,
                  aorm_migrate_cb cb, void *user) {
    if (!m || !cb || m->job) return AORM_EMISUSE;
    bool needs_db = !(c == CMD_CREATE && !(flags & AORM_MIGRATE_AUTOGENERATE)) &&
                    !((c == CMD_UPGRADE || c == CMD_DOWNGRADE || c == CMD_STAMP) && m->o.offline);
    if (needs_db && !m->e) return AORM_EMISUSE;
    if (c == CMD_CHECK || (c == CMD_CREATE && (flags & AORM_MIGRATE_AUTOGENERATE))) {
        /* the models' image is built in a scratch schema through the
         * search path: a model naming its own schema would escape it */
        if (m->o.nmodels == 0) return AORM_EMISUSE;
        for (int i = 0; i < m->o.nmodels; i++)
            if (!m->o.models[i] || m->o.models[i]->schema) return AORM_EMISUSE;
    }
    job *j = calloc(1, sizeof(*j));
    if (!j) return AORM_ENOMEM;
    j->m = m;
    j->loop = m->loop;
    j->e = m->e;
    j->o = m->o;
    j->cmd = c;
    j->flags = flags;
    j->cb = cb;
    j->user = user;
    j->fail_step = -1;
    j->dir = aorm__strdup(m->dir);
    j->history = aorm__strdup(m->history);
    j->target = aorm__strdup(target);
    j->message = aorm__strdup(message);
    j->timer = aorm_timer_new(m->loop, on_timer, j);
    if (!j->dir || !j->history || (target && !j->target) || (message && !j->message) || !j->timer ||
        aorm_loop_soon(m->loop, start_job, j) < 0) {
        job_free(j);
        return AORM_ENOMEM;
    }
    j->o.directory = j->dir;
    j->o.history_table = j->history;
    m->job = j;
    return 0;
}

int aorm_migrate_upgrade(aorm_migrate *m, const char *target, aorm_migrate_cb cb, void *user) {
    return submit(m, CMD_UPGRADE, target, NULL, 0, cb, user);
}
int aorm_migrate_downgrade(aorm_migrate *m, const char *target, aorm_migrate_cb cb, void *user) {
    if (!target) return AORM_EMISUSE;
    return submit(m, CMD_DOWNGRADE, target, NULL, 0, cb, user);
}
int aorm_migrate_stamp(aorm_migrate *m, const char *target, aorm_migrate_cb cb, void *user) {
    if (!target) return AORM_EMISUSE;
    return submit(m, CMD_STAMP, target, NULL, 0, cb, user);
}
int aorm_migrate_status(aorm_migrate *m, aorm_migrate_cb cb, void *user) {
    return submit(m, CMD_STATUS, NULL, NULL, 0, cb, user);
}
int aorm_migrate_repair(aorm_migrate *m, aorm_migrate_cb cb, void *user) {
    return submit(m, CMD_REPAIR, NULL, NULL, 0, cb, user);
}
int aorm_migrate_check(aorm_migrate *m, aorm_migrate_cb cb, void *user) {
    return submit(m, CMD_CHECK, NULL, NULL, 0, cb, user);
}
int aorm_migrate_create(aorm_migrate *m, const char *message, unsigned flags, aorm_migrate_cb cb, void *user) {
    if (flags & ~(unsigned)(AORM_MIGRATE_AUTOGENERATE | AORM_MIGRATE_MERGE)) return AORM_EMISUSE;
    return submit(m, CMD_CREATE, NULL, message ? message : "", flags, cb, user);
}

/* =========================================================================
 * Listings of the directory (synchronous)
 * ========================================================================= */

static int listing(aorm_migrate *m, bool heads_only, char **out, char *errmsg, size_t errcap) {
    if (!m || !out) return AORM_EMISUSE;
    *out = NULL;
    mig_set s;
    aorm_migrate_problem problem;
    int rc = aorm__mig_load(m->dir, &s, &problem, errmsg, errcap);
    if (rc) return rc;
    aorm__buf b = {0};
    int err = 0;
    for (int i = s.n - 1; i >= 0; i--) {
        const mig_rev *r = &s.v[i];
        if (heads_only && !r->head) continue;
        char line[1024];
        int n = snprintf(line, sizeof line, "%s <- ", r->id);
        for (int p = 0; p < r->nparents && n > 0 && (size_t)n < sizeof line; p++)
            n += snprintf(line + n, sizeof line - (size_t)n, "%s%s", p ? ", " : "", r->parents[p]);
        if (r->nparents == 0 && n > 0 && (size_t)n < sizeof line) n += snprintf(line + n, sizeof line - (size_t)n, "base");
        if (n > 0 && (size_t)n < sizeof line)
            snprintf(line + n, sizeof line - (size_t)n, "  %s%s%s%s\n", r->message, r->head ? "  (head)" : "",
                     r->nparents > 1 ? "  (merge)" : "", r->transactional ? "" : "  [no transaction]");
        if (aorm__buf_append(&b, line, strlen(line)) < 0) err = AORM_ENOMEM;
    }
    if (!err && aorm__buf_putc(&b, '\0') < 0) err = AORM_ENOMEM;
    aorm__mig_set_free(&s);
    if (err) {
        aorm__buf_free(&b);
        return err;
    }
    *out = b.data;
    return 0;
}

int aorm_migrate_history(aorm_migrate *m, char **out, char *errmsg, size_t errcap) {
    return listing(m, false, out, errmsg, errcap);
}
int aorm_migrate_heads(aorm_migrate *m, char **out, char *errmsg, size_t errcap) {
    return listing(m, true, out, errmsg, errcap);
}
