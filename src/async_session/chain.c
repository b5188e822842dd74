/* chain.c -- callback chaining and the transaction retry helper, built on
 * the session's public operations only.
 *
 * A chain is a small state machine: step i queues one operation; its
 * callback stores the outcome and runs step i + 1. The first failure goes
 * to `done` and ends the chain. Owns: the chain, the copied step list, the
 * previous outcome (object array copy, detached result). */
#include <stdio.h>

#include "aorm/loaders.h"
#include "async_session/session_int.h"

#define CHAIN_SLOTS 8

struct aorm_chain {
    aorm_session *s;
    aorm_step_fn *steps;
    int nsteps;
    int next;                /* next step to run */
    aorm_session_cb done;
    void *user;
    void *obj;
    aorm_objects objs;
    aorm_result *res;
    void *slots[CHAIN_SLOTS];
    bool queued;             /* the running step queued an operation */
    bool failed;
    int fail_code;
    char fail_msg[160];
    /* run_transaction */
    bool tx;
    aorm_tx_options txo;
    bool has_txo;
    int attempt, max_attempts;
    int phase;               /* 0 steps, 1 commit sent, 2 rollback for retry sent */
};

static void advance(aorm_chain *c);

static void chain_free(aorm_chain *c) {
    free(c->objs.items);
    aorm_result_free(c->res);
    free(c->steps);
    free(c);
}

static void clear_outcome(aorm_chain *c) {
    free(c->objs.items);
    c->objs.items = NULL;
    c->objs.len = 0;
    aorm_result_free(c->res);
    c->res = NULL;
    c->obj = NULL;
}

static bool retryable(const aorm_error *err) {
    return err && (aorm_error_is(err, "40001") || aorm_error_is(err, "40P01"));
}

static void end(aorm_chain *c, const aorm_error *err) {
    /* done first: err may point into the chain (aorm_chain_fail's message) */
    c->done(c->s, err, c->user);
    chain_free(c);
}

static void on_retry_rollback(aorm_session *s, const aorm_error *err, void *user) {
    aorm_chain *c = user;
    if (err && err->code == AORM_ECANCELED) {
        end(c, err);
        return;
    }
    aorm_session_expunge_all(s); /* nothing of the failed attempt is reused */
    c->attempt++;
    c->next = 0;
    c->phase = 0;
    memset(c->slots, 0, sizeof(c->slots));
    clear_outcome(c);
    advance(c);
}

/* A step's operation failed (or the commit did). */
static void failed(aorm_chain *c, const aorm_error *err) {
    if (c->tx && err->code != AORM_ECANCELED) {
        if (retryable(err) && c->attempt < c->max_attempts) {
            c->phase = 2;
            if (aorm_session_rollback(c->s, on_retry_rollback, c) == 0) return;
        }
        /* leave the session usable: its transaction is rolled back (queued
         * ahead of anything the caller queues from done) */
        if (aorm_session_in_transaction(c->s)) aorm_session_rollback(c->s, NULL, NULL);
    }
    end(c, err);
}

static void on_obj(aorm_session *s, void *obj, const aorm_error *err, void *user) {
    aorm_chain *c = user;
    if (err) {
            failed(c, err);
            return;
        }
    clear_outcome(c);
    c->obj = obj;
    advance(c);
}

static void on_objs(aorm_session *s, aorm_objects *objs, const aorm_error *err, void *user) {
    aorm_chain *c = user;
    if (err) {
            failed(c, err);
            return;
        }
    clear_outcome(c);
    if (objs->len) {
        c->objs.items = malloc(objs->len * sizeof(void *));
        if (!c->objs.items) {
            aorm_error e = {.code = AORM_ENOMEM, .message = "out of memory", .detail = "", .hint = "",
                            .constraint = "", .table = "", .column = ""};
            {
            failed(c, &e);
            return;
        }
        }
        memcpy(c->objs.items, objs->items, objs->len * sizeof(void *));
        c->objs.len = objs->len;
    }
    advance(c);
}

static void on_rows(aorm_session *s, aorm_result *res, const aorm_error *err, void *user) {
    aorm_chain *c = user;
    if (err) {
            failed(c, err);
            return;
        }
    clear_outcome(c);
    c->res = aorm_result_detach(res);
    advance(c);
}

static void on_done_step(aorm_session *s, const aorm_error *err, void *user) {
    aorm_chain *c = user;
    if (err) {
            failed(c, err);
            return;
        }
    if (c->phase == 1) { /* the helper's COMMIT */
        end(c, NULL);
        return;
    }
    advance(c);
}

/* Runs steps until one queues an operation, the list ends, or one fails. */
static void advance(aorm_chain *c) {
    if (c->tx && c->next == 0 && c->phase == 0 && !aorm_session_in_transaction(c->s)) {
        /* BEGIN first, without waiting for its answer: it goes out with the
         * first step's statement (a refused BEGIN fails that statement) */
        c->phase = -1;
        if (aorm__session_begin_lazy(c->s, c->has_txo ? &c->txo : NULL, on_done_step, c) == 0) return;
    }
    if (c->phase == -1) c->phase = 0;
    while (c->next < c->nsteps) {
        c->queued = false;
        int rc = c->steps[c->next++](c, c->user);
        if (c->failed || rc < 0) {
            aorm_error e = {.code = c->failed ? c->fail_code : rc,
                            .message = c->failed ? c->fail_msg : aorm_strerror(rc), .detail = "", .hint = "",
                            .constraint = "", .table = "", .column = ""};
            failed(c, &e);
            return;
        }
        if (c->queued) return;
        clear_outcome(c);
    }
    if (c->tx) {
        c->phase = 1;
        if (aorm_session_commit(c->s, on_done_step, c) == 0) return;
    }
    end(c, NULL);
}

static int chain_new(aorm_session *s, const aorm_step_fn *steps, int nsteps, aorm_session_cb done, void *user,
                     aorm_chain **out) {
    if (!s || !steps || nsteps <= 0 || !done) return AORM_EMISUSE;
    aorm_chain *c = calloc(1, sizeof(*c));
    if (!c) return AORM_ENOMEM;
    c->steps = malloc((size_t)nsteps * sizeof(*c->steps));
    if (!c->steps) {
        free(c);
        return AORM_ENOMEM;
    }
    memcpy(c->steps, steps, (size_t)nsteps * sizeof(*steps));
    c->s = s;
    c->nsteps = nsteps;
    c->done = done;
    c->user = user;
    c->attempt = 1;
    *out = c;
    return 0;
}

/* Steps start from a no-op session operation, so that the first step
 * runs in order with the session's queue and never inside
 * aorm_chain_run itself. */
static void on_start(aorm_session *s, const aorm_error *err, void *user) {
    aorm_chain *c = user;
    if (err) {
            failed(c, err);
            return;
        }
    advance(c);
}

static int start(aorm_chain *c) {
    int rc = aorm__session_noop(c->s, on_start, c);
    if (rc < 0) chain_free(c);
    return rc;
}

int aorm_chain_run(aorm_session *s, const aorm_step_fn *steps, int nsteps, aorm_session_cb done, void *user) {
    aorm_chain *c;
    int rc = chain_new(s, steps, nsteps, done, user, &c);
    return rc < 0 ? rc : start(c);
}

int aorm_session_run_transaction(aorm_session *s, const aorm_tx_options *tx, int max_attempts,
                                 const aorm_step_fn *steps, int nsteps, aorm_session_cb done, void *user) {
    if (s && aorm_session_in_transaction(s)) return AORM_ETXSTATE;
    aorm_chain *c;
    int rc = chain_new(s, steps, nsteps, done, user, &c);
    if (rc < 0) return rc;
    c->tx = true;
    c->max_attempts = max_attempts > 0 ? max_attempts : 1;
    if (tx) {
        c->txo = *tx;
        c->has_txo = true;
    }
    return start(c);
}

/* ---- step operations ---------------------------------------------------------------- */

static int queued(aorm_chain *c, int rc) {
    if (rc == 0) c->queued = true;
    return rc;
}

int aorm_chain_get(aorm_chain *c, const aorm_model *m, const void *key) {
    return queued(c, aorm_session_get(c->s, m, key, NULL, on_obj, c));
}
int aorm_chain_query(aorm_chain *c, aorm_stmt *q, const aorm_query_options *opts) {
    return queued(c, aorm_session_query(c->s, q, opts, on_objs, c));
}
int aorm_chain_execute(aorm_chain *c, aorm_stmt *q) { return queued(c, aorm_session_execute(c->s, q, on_rows, c)); }
int aorm_chain_flush(aorm_chain *c) { return queued(c, aorm_session_flush(c->s, on_done_step, c)); }
int aorm_chain_commit(aorm_chain *c) {
    if (c->tx) return aorm_chain_fail(c, AORM_EMISUSE, "steps of a retried transaction must not commit");
    return queued(c, aorm_session_commit(c->s, on_done_step, c));
}
int aorm_chain_rollback(aorm_chain *c) {
    if (c->tx) return aorm_chain_fail(c, AORM_EMISUSE, "steps of a retried transaction must not roll back");
    return queued(c, aorm_session_rollback(c->s, on_done_step, c));
}
int aorm_chain_begin(aorm_chain *c, const aorm_tx_options *tx) {
    return queued(c, aorm_session_begin(c->s, tx, on_done_step, c));
}

int aorm_chain_load(aorm_chain *c, void *const *objs, size_t n, const aorm_load_plan *plan) {
    return queued(c, aorm_session_load(c->s, objs, n, plan, on_done_step, c));
}

int aorm_chain_fail(aorm_chain *c, int code, const char *message) {
    c->failed = true;
    c->fail_code = code < 0 ? code : AORM_EMISUSE;
    snprintf(c->fail_msg, sizeof(c->fail_msg), "%s", message ? message : aorm_strerror(c->fail_code));
    return c->fail_code;
}

void *aorm_chain_object(const aorm_chain *c) { return c ? c->obj : NULL; }
aorm_objects *aorm_chain_objects(aorm_chain *c) { return c ? &c->objs : NULL; }
aorm_result *aorm_chain_result(const aorm_chain *c) { return c ? c->res : NULL; }
aorm_session *aorm_chain_session(const aorm_chain *c) { return c ? c->s : NULL; }
void *aorm_chain_user(const aorm_chain *c) { return c ? c->user : NULL; }
int aorm_chain_attempt(const aorm_chain *c) { return c ? c->attempt : 0; }

void aorm_chain_keep(aorm_chain *c, int slot, void *value) {
    if (c && slot >= 0 && slot < CHAIN_SLOTS) c->slots[slot] = value;
}

void *aorm_chain_kept(const aorm_chain *c, int slot) {
    return (c && slot >= 0 && slot < CHAIN_SLOTS) ? c->slots[slot] : NULL;
}
