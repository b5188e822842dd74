/* owner.c -- owners: cancel groups for engine work.
 *
 * An owner links the operations whose callbacks are still due (queued,
 * in flight, or waiting for a connection) in submission order, and knows
 * the connections held through it. Cancelling takes the owner's queued
 * operations out of every queue (so they are never sent), calls every
 * due callback once with AORM_ECANCELED, and releases the held
 * connections. In-flight statements stay in their connection's ring:
 * their late answers are read and dropped like a timed-out statement's.
 *
 * An owner outlives its engine: engine_destroy() calls back its work
 * (cancel_all) and then orphans every owner (aorm__owners_orphan), which
 * leaves an empty handle that only aorm_owner_free() still needs.
 *
 * Owns: the owner handles. Must not: touch an operation after its
 * callback without holding a reference (a callback may free the engine,
 * which frees whatever nobody refers to). */
#include "aorm/hosts.h"
#include "async_engine/engine_int.h"

struct aorm_owner {
    aorm_engine *e;              /* NULL once the engine is gone */
    aorm_owner *prev, *next;     /* the engine's list */
    aorm__op *head, *tail;       /* operations whose callback is due, in submission order */
    aorm_owner_close_fn close_fn;
    void *close_user;
    int busy;                    /* cancels of this owner on the stack */
    bool free_pending;           /* freed from inside its own cancel */
    /* host groups: an owner on a router has one owner per server (subs,
     * made on first use; its own lists stay empty) and the read-your-writes
     * state; each of those has `parent` */
    aorm_owner *parent;
    aorm_owner **subs;
    int nsubs;
    aorm__owner_rw rw;
};

static void engine_unlink(aorm_owner *o) {
    aorm_engine *e = o->e;
    if (o->prev) o->prev->next = o->next;
    else if (e->owners == o) e->owners = o->next;
    if (o->next) o->next->prev = o->prev;
    o->prev = o->next = NULL;
}

aorm_owner *aorm_owner_new(aorm_engine *e) {
    if (!e || e->closing) return NULL;
    aorm_owner *o = calloc(1, sizeof(*o));
    if (!o) return NULL;
    if (e->group) {
        o->nsubs = aorm_hosts_count(e);
        o->subs = calloc((size_t)o->nsubs, sizeof(*o->subs));
        if (!o->subs) {
            free(o);
            return NULL;
        }
    }
    o->e = e;
    o->next = e->owners;
    if (e->owners) e->owners->prev = o;
    e->owners = o;
    return o;
}

/* NULL from the start of aorm_engine_free(): while the engine calls back
 * its work, an owner's user must not start anything new. */
aorm_engine *aorm_owner_engine(const aorm_owner *o) { return o && o->e && !o->e->closing ? o->e : NULL; }

void aorm_owner_on_close(aorm_owner *o, aorm_owner_close_fn fn, void *user) {
    if (!o) return;
    o->close_fn = fn;
    o->close_user = user;
}

void aorm__owner_link(aorm_owner *o, aorm__op *op) {
    op->owner = o;
    op->owner_next = NULL;
    op->owner_prev = o->tail;
    if (o->tail) o->tail->owner_next = op;
    else o->head = op;
    o->tail = op;
}

void aorm__owner_unlink(aorm__op *op) {
    aorm_owner *o = op->owner;
    if (!o) return;
    if (op->owner_prev) op->owner_prev->owner_next = op->owner_next;
    else o->head = op->owner_next;
    if (op->owner_next) op->owner_next->owner_prev = op->owner_prev;
    else o->tail = op->owner_prev;
    op->owner = NULL;
    op->owner_prev = op->owner_next = NULL;
}

/* Takes every op marked `cancelling` out of a singly linked queue. */
static void filter_queue(aorm__op **head, aorm__op **tail, int *len) {
    aorm__op *keep = NULL, *last = NULL;
    for (aorm__op *op = *head, *next; op; op = next) {
        next = op->next;
        op->next = NULL;
        if (op->cancelling) {
            op->queued = false;
            if (len) (*len)--;
            continue;
        }
        if (last) last->next = op;
        else keep = op;
        last = op;
    }
    *head = keep;
    *tail = last;
}

int aorm_owner_acquire(aorm_owner *o, aorm_conn_cb cb, void *user) {
    if (!o || !cb) return AORM_EMISUSE;
    if (!o->e) return AORM_ECLOSED;
    if (o->subs) return aorm__hosts_acquire(o->e, o, cb, user);
    aorm_engine *e = o->e;
    int rc = aorm_engine_acquire(e, cb, user);
    if (rc < 0) return rc;
    aorm__owner_link(o, e->acq_tail); /* the request just queued */
    return 0;
}

/* A router owner: cancel its owner on every server. */
static void cancel_subs(aorm_owner *o) {
    o->busy++;
    if (o->e && o->e->group) aorm__hosts_unpark(o->e, o);
    for (int i = 0; i < o->nsubs; i++)
        if (o->subs[i]) aorm_owner_cancel(o->subs[i]);
    o->busy--;
    if (o->busy == 0 && o->free_pending) {
        o->free_pending = false;
        aorm_owner_free(o);
    }
}

void aorm_owner_cancel(aorm_owner *o) {
    if (!o || !o->e) return;
    if (o->subs) {
        cancel_subs(o);
        return;
    }
    aorm_engine *e = o->e;
    aorm__engine_enter(e);
    o->busy++;

    /* 1. detach the due operations and pin them: a callback below may
     *    free the engine, which must not free an op still on this list */
    aorm__op *list = o->head;
    o->head = o->tail = NULL;
    for (aorm__op *op = list; op; op = op->owner_next) {
        op->owner = NULL;
        op->cancelling = true;
        op->nitems++;
    }

    /* 2. what has not been sent never will be */
    bool any_queued = false;
    for (aorm__op *op = list; op; op = op->owner_next) any_queued |= op->queued;
    if (any_queued) {
        e->rescan = true; /* a connection reserved for a cancelled acquire goes back */
        filter_queue(&e->q_head, &e->q_tail, &e->q_len);
        filter_queue(&e->acq_head, &e->acq_tail, &e->acq_len);
        for (aorm_conn *c = e->conns; c; c = c->next)
            if (c->pend_head) filter_queue(&c->pend_head, &c->pend_tail, NULL);
    }

    /* 3. every callback once, in submission order */
    for (aorm__op *op = list, *next; op; op = next) {
        next = op->owner_next;
        op->owner_prev = op->owner_next = NULL;
        bool sent = !op->queued && op->nitems > 1; /* still referenced by an in-flight item */
        if (op->queued) op->queued = false;       /* taken out of its queue above */
        op->cancelling = false;
        if (!op->done) aorm__op_fail_lost(op, AORM_ECANCELED, "cancelled by its owner", sent);
        op->nitems--;
        aorm__op_release(op);
    }

    /* 4. connections held through the owner go back (rolled back) */
    if (!e->closing && !e->free_pending) {
        for (aorm_conn *c = e->conns, *next; c; c = next) {
            next = c->next;
            if (c->owner == o && c->held && !c->releasing) {
                c->owner = NULL;
                aorm_conn_release(c);
            }
        }
    }

    /* the leave may destroy the engine, whose orphaning calls the close
     * callback, which may free this owner: still busy, so that is deferred */
    aorm__engine_leave(e); /* e is not used after this */
    o->busy--;
    if (o->busy == 0 && o->free_pending) {
        o->free_pending = false;
        aorm_owner_free(o);
    }
}

void aorm_owner_free(aorm_owner *o) {
    if (!o) return;
    if (o->busy > 0) {
        o->free_pending = true;
        return;
    }
    if (o->subs) {
        if (o->e) {
            o->busy++;
            cancel_subs(o);
            o->busy--;
        }
        for (int i = 0; i < o->nsubs; i++) aorm_owner_free(o->subs[i]);
        free(o->subs);
        if (o->rw.fleet_get) o->rw.fleet_get->owner = NULL; /* its reply finds nobody */
        free(o->rw.fleet_key);
        o->subs = NULL;
        if (o->e) engine_unlink(o);
        free(o);
        return;
    }
    if (o->e) {
        o->busy++;
        aorm_owner_cancel(o);
        o->busy--;
        if (o->e) {
            for (aorm_conn *c = o->e->conns; c; c = c->next)
                if (c->owner == o) c->owner = NULL;
            engine_unlink(o);
        }
    }
    free(o);
}

/* engine_destroy: the work is called back already; the handles stay. */
void aorm__owners_orphan(aorm_engine *e) {
    aorm_owner *list = e->owners;
    e->owners = NULL;
    while (list) {
        aorm_owner *o = list;
        list = o->next;
        o->prev = o->next = NULL;
        for (aorm__op *op = o->head, *next; op; op = next) { /* none expected: cancel_all called them back */
            next = op->owner_next;
            op->owner = NULL;
            op->owner_prev = op->owner_next = NULL;
        }
        o->head = o->tail = NULL;
        o->e = NULL;
        if (o->close_fn) o->close_fn(o, o->close_user);
    }
}

/* ---- host groups ------------------------------------------------------------ */

aorm_owner *aorm__owner_sub(aorm_owner *o, int host) {
    if (!o->subs || host < 0 || host >= o->nsubs || !o->e) return NULL;
    if (!o->subs[host]) {
        aorm_owner *sub = aorm_owner_new(aorm_hosts_engine(o->e, host));
        if (!sub) return NULL;
        sub->parent = o;
        o->subs[host] = sub;
    }
    return o->subs[host];
}

aorm_owner *aorm__owner_parent(const aorm_owner *o) { return o ? o->parent : NULL; }

aorm__owner_rw *aorm__owner_rw_of(aorm_owner *o) { return o && o->subs ? &o->rw : NULL; }

uint64_t aorm_owner_commit_lsn(const aorm_owner *o) { return o && o->subs ? o->rw.lsn : 0; }

void aorm_owner_set_commit_lsn(aorm_owner *o, uint64_t lsn) {
    if (o && o->subs && lsn > o->rw.lsn) o->rw.lsn = lsn;
}

void aorm_owner_use_primary(aorm_owner *o, bool on) {
    if (o && o->subs) o->rw.primary = on;
}
