/* stream.c -- a large result handed over in batches through a server-side
 * cursor on a held connection (aorm_conn_stream).
 *
 * DECLARE and the first FETCH are queued together; when a batch arrives
 * the next FETCH is queued before the callback sees the batch, so the
 * server works while the caller does (at most two batches in memory). A
 * batch shorter than `batch` is the last. Pause keeps a batch that
 * arrives meanwhile (detached) and sends nothing more; stop and the end
 * of the rows queue CLOSE. The end call comes once every statement of the
 * stream has answered, so no answer can arrive for a freed stream.
 *
 * Built on aorm_conn_execute() only: the statements are ordinary ones of
 * the connection, with its deadlines, owner and fault handling (a lost
 * connection fails the FETCH in flight: the end call reports it).
 * Owns: the stream and a batch kept while paused. Must not: call the
 * callback from inside aorm_conn_stream() or aorm_stream_resume(). */
#include <stdio.h>
#include <string.h>

#include "async_engine/engine_int.h"
#include "async_engine/result_int.h"

struct aorm_stream {
    aorm_conn *c;
    aorm_loop *loop;
    aorm_stream_fn fn;
    void *user;
    int batch;
    int out;            /* statements of the stream not yet answered */
    bool eof;           /* the last batch has arrived */
    bool paused;
    bool stopping;      /* stopped or at the end: CLOSE queued, nothing more is handed over */
    bool resume_soon;   /* a soon callback will hand over the kept batch */
    bool ended;         /* the end call has run */
    aorm_result *kept;  /* arrived while paused (detached) */
    aorm_error *err;    /* first failure */
    char close_sql[64];
    char fetch_sql[96];
};

static unsigned long stream_seq;

static void stream_free(aorm_stream *st) {
    aorm_result_free(st->kept);
    aorm_error_free(st->err);
    free(st);
}

/* The end call, once every statement is back. */
static void maybe_end(aorm_stream *st) {
    if (st->out > 0 || st->ended || st->resume_soon) return;
    if (!st->stopping && !st->err) return;
    st->ended = true;
    st->fn(st->c, NULL, st->err, st->user);
    stream_free(st);
}

static void on_close(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    aorm_stream *st = user;
    (void)e;
    (void)res;
    st->out--;
    if (err && !st->err) st->err = aorm_error_copy(err);
    maybe_end(st);
}

static void stop(aorm_stream *st) {
    if (st->stopping) return;
    st->stopping = true;
    if (st->err) return; /* the transaction is aborted: CLOSE would fail too */
    if (aorm_conn_execute(st->c, st->close_sql, NULL, &(aorm_exec_options){.flags = AORM_EXEC_UNPREPARED}, on_close,
                          st) == 0)
        st->out++;
}

static void on_fetch(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user);

static int send_fetch(aorm_stream *st) {
    int rc = aorm_conn_execute(st->c, st->fetch_sql, NULL, &(aorm_exec_options){.flags = AORM_EXEC_UNPREPARED},
                               on_fetch, st);
    if (rc == 0) st->out++;
    return rc;
}

/* Hands res over; what the callback returns decides what comes next. */
static void hand_over(aorm_stream *st, aorm_result *res) {
    int what = st->fn(st->c, res, NULL, st->user);
    if (what == AORM_STREAM_STOP || st->eof) stop(st);
    else if (what == AORM_STREAM_PAUSE) st->paused = true;
    maybe_end(st);
}

static void on_fetch(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    aorm_stream *st = user;
    (void)e;
    st->out--;
    if (err) {
        if (!st->err) st->err = aorm_error_copy(err);
        if (!st->err) st->err = aorm_error_copy(&(aorm_error){.code = AORM_ENOMEM, .message = "out of memory"});
        maybe_end(st);
        return;
    }
    if (st->stopping || st->err) { /* after a stop: the prefetched batch goes nowhere */
        maybe_end(st);
        return;
    }
    int n = aorm_result_nrows(res);
    st->eof = n < st->batch;
    if (n == 0) { /* the previous batch was the last, and full: nothing to hand over */
        stop(st);
        maybe_end(st);
        return;
    }
    if (st->paused) {
        st->kept = aorm_result_detach(res);
        if (!st->kept) {
            st->err = aorm_error_copy(&(aorm_error){.code = AORM_ENOMEM, .message = "out of memory keeping a batch"});
            stop(st);
            maybe_end(st);
        }
        return;
    }
    if (!st->eof && send_fetch(st) < 0) st->eof = true; /* the next FETCH fails to queue: this one ends it */
    hand_over(st, res);
}

static void on_declare(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    aorm_stream *st = user;
    (void)e;
    (void)res;
    st->out--;
    if (err && !st->err) st->err = aorm_error_copy(err); /* the FETCH behind it fails as well */
    maybe_end(st);
}

int aorm_conn_stream(aorm_conn *c, const char *sql, const aorm_params *params, int batch, aorm_stream_fn fn,
                     void *user, aorm_stream **out) {
    if (out) *out = NULL;
    if (!c || !sql || !fn || batch < 1) return AORM_EMISUSE;
    aorm_stream *st = calloc(1, sizeof(*st));
    if (!st) return AORM_ENOMEM;
    *st = (aorm_stream){.c = c, .loop = aorm_engine_loop(c->e), .fn = fn, .user = user, .batch = batch};
    unsigned long id = ++stream_seq;
    snprintf(st->close_sql, sizeof(st->close_sql), "CLOSE aorm_stream_%lu", id);
    snprintf(st->fetch_sql, sizeof(st->fetch_sql), "FETCH FORWARD %d FROM aorm_stream_%lu", batch, id);
    aorm__buf decl = {0};
    char head[64];
    snprintf(head, sizeof(head), "DECLARE aorm_stream_%lu NO SCROLL CURSOR FOR ", id);
    int rc = aorm__buf_append(&decl, head, strlen(head)) < 0 || aorm__buf_append(&decl, sql, strlen(sql) + 1) < 0
                 ? AORM_ENOMEM
                 : 0;
    if (rc == 0)
        rc = aorm_conn_execute(c, decl.data, params, &(aorm_exec_options){.flags = AORM_EXEC_UNPREPARED}, on_declare,
                               st);
    aorm__buf_free(&decl);
    if (rc < 0) {
        free(st);
        return rc;
    }
    st->out++;
    if (send_fetch(st) < 0) st->stopping = true; /* DECLARE's answer ends it (err NULL: no rows handed over) */
    if (out) *out = st;
    return 0;
}

static void resume_kept(void *arg) {
    aorm_stream *st = arg;
    st->resume_soon = false;
    aorm_result *res = st->kept;
    st->kept = NULL;
    if (st->stopping || st->err) {
        aorm_result_free(res);
        maybe_end(st);
        return;
    }
    if (!st->eof && send_fetch(st) < 0) st->eof = true;
    /* handed over as borrowed, as the engine's own results are: a caller
     * that detaches it takes the PGresult (the shell stays ours) */
    aorm_result lent = *res;
    lent.heap = 0;
    hand_over(st, &lent);
    if (!lent.pg) res->pg = NULL;
    aorm_result_free(res);
}

int aorm_stream_stop(aorm_stream *st) {
    if (!st || st->ended) return AORM_EMISUSE;
    st->paused = false;
    aorm_result_free(st->kept);
    st->kept = NULL;
    stop(st);
    if (!st->resume_soon && st->out == 0) { /* nothing will answer: end from the loop */
        if (aorm_loop_soon(st->loop, resume_kept, st) < 0) return AORM_ENOMEM;
        st->resume_soon = true;
    }
    return 0;
}

int aorm_stream_resume(aorm_stream *st) {
    if (!st || !st->paused || st->ended) return AORM_EMISUSE;
    st->paused = false;
    if (st->kept && !st->resume_soon) {
        if (aorm_loop_soon(st->loop, resume_kept, st) < 0) {
            st->paused = true;
            return AORM_ENOMEM;
        }
        st->resume_soon = true;
    }
    return 0;
}
