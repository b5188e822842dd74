/* loop.c -- the backend-independent part of aorm's event-loop binding: the
 * soon queue, the before-poll stage and the watcher bookkeeping.
 *
 * Owns: the aorm_loop, its queues and the aorm_io / aorm_timer shells (the
 * backend owns the handles inside them). Must not: include <ev.h>, call a
 * user callback from inside the call that queued it, or block.
 *
 * The soon queue is drained after each turn's I/O (the backend's
 * after-poll stage). Only the entries present when draining starts run;
 * entries queued by those callbacks wait for the next turn, so a callback
 * that keeps re-queueing itself cannot starve I/O. While the queue is not
 * empty the backend is told not to block in poll. */
#include "loop/loop_int.h"

#include <stdlib.h>
#include <string.h>

#include "aorm/error.h"
#include "util/util.h"

aorm_loop *aorm_loop_new_hooks(const aorm_loop_hooks *hooks, void *backend) {
    if (!hooks) return NULL;
    aorm_loop *l = calloc(1, sizeof(*l));
    if (!l) return NULL;
    l->hooks = hooks;
    l->backend = backend;
    return l;
}

void aorm_loop_free(aorm_loop *l) {
    if (!l) return;
    aorm__assert(l->nwatchers == 0);
    aorm__assert(l->in_stage == 0);
    if (l->hooks->detach) l->hooks->detach(l->backend);
    free(l->soon);
    free(l->stage);
    free(l);
}

struct ev_loop *aorm_loop_ev(aorm_loop *l) { return l ? l->evl : NULL; }

double aorm_loop_now(aorm_loop *l) { return l->hooks->now(l->backend); }

static void loop_update_blocking(aorm_loop *l) {
    int want = l->soon_len > 0 || l->woken;
    if (want != l->nonblocking) {
        l->nonblocking = want;
        l->hooks->set_nonblocking(l->backend, want);
    }
}

/* ---- I/O watchers ------------------------------------------------------- */

aorm_io *aorm_io_new(aorm_loop *l, int fd, aorm_io_cb cb, void *user) {
    if (!l || !cb) return NULL;
    aorm_io *io = calloc(1, sizeof(*io));
    if (!io) return NULL;
    io->loop = l;
    io->fd = fd;
    io->cb = cb;
    io->user = user;
    io->handle = l->hooks->io_new(l->backend, io, fd);
    if (!io->handle) {
        free(io);
        return NULL;
    }
    l->nwatchers++;
    return io;
}

void aorm_io_set(aorm_io *io, int events) {
    events &= AORM_READ | AORM_WRITE;
    if (events == io->events) return;
    io->events = events;
    io->loop->hooks->io_set(io->loop->backend, io->handle, io->fd, events);
}

void aorm_io_set_fd(aorm_io *io, int fd) {
    /* registered again even for the same number: it may be a new socket
     * (closed and reopened), which the backend would otherwise never see */
    io->fd = fd;
    io->loop->hooks->io_set(io->loop->backend, io->handle, fd, io->events);
}

int aorm_io_events(const aorm_io *io) { return io->events; }

void aorm_io_free(aorm_io *io) {
    if (!io) return;
    io->loop->hooks->io_free(io->loop->backend, io->handle);
    io->loop->nwatchers--;
    free(io);
}

void aorm_io_backend_fire(aorm_io *io, int revents) {
    revents &= io->events;
    if (revents) io->cb(io, revents, io->user);
}

/* ---- timers ------------------------------------------------------------- */

aorm_timer *aorm_timer_new(aorm_loop *l, aorm_timer_cb cb, void *user) {
    if (!l || !cb) return NULL;
    aorm_timer *t = calloc(1, sizeof(*t));
    if (!t) return NULL;
    t->loop = l;
    t->cb = cb;
    t->user = user;
    t->handle = l->hooks->timer_new(l->backend, t);
    if (!t->handle) {
        free(t);
        return NULL;
    }
    l->nwatchers++;
    return t;
}

void aorm_timer_start(aorm_timer *t, double after) {
    if (after < 0) after = 0;
    t->active = 1;
    t->loop->hooks->timer_start(t->loop->backend, t->handle, after);
}

void aorm_timer_stop(aorm_timer *t) {
    if (!t->active) return;
    t->active = 0;
    t->loop->hooks->timer_stop(t->loop->backend, t->handle);
}

int aorm_timer_active(const aorm_timer *t) { return t->active; }

void aorm_timer_free(aorm_timer *t) {
    if (!t) return;
    t->loop->hooks->timer_free(t->loop->backend, t->handle);
    t->loop->nwatchers--;
    free(t);
}

void aorm_timer_backend_fire(aorm_timer *t) {
    t->active = 0; /* one-shot: inactive before the callback may restart it */
    t->cb(t, t->user);
}

/* ---- the soon queue ----------------------------------------------------- */

static int soon_grow(aorm_loop *l) {
    size_t cap = l->soon_cap ? l->soon_cap * 2 : 64;
    aorm__soon_item *n = malloc(cap * sizeof(*n));
    if (!n) return -1;
    /* unroll the ring into the new array, head first */
    for (size_t i = 0; i < l->soon_len; i++)
        n[i] = l->soon[(l->soon_head + i) % l->soon_cap];
    free(l->soon);
    l->soon = n;
    l->soon_cap = cap;
    l->soon_head = 0;
    return 0;
}

int aorm_loop_soon(aorm_loop *l, aorm_soon_cb cb, void *arg) {
    if (!l || !cb) return AORM_EMISUSE;
    if (l->soon_len == l->soon_cap && soon_grow(l) < 0) return AORM_ENOMEM;
    aorm__soon_item *it = &l->soon[(l->soon_head + l->soon_len) % l->soon_cap];
    it->cb = cb;
    it->arg = arg;
    l->soon_len++;
    loop_update_blocking(l);
    return 0;
}

int aorm_loop_soon_cancel(aorm_loop *l, aorm_soon_cb cb, void *arg) {
    int n = 0;
    for (size_t i = 0; i < l->soon_len; i++) {
        aorm__soon_item *it = &l->soon[(l->soon_head + i) % l->soon_cap];
        if (it->cb == cb && it->arg == arg) {
            it->cb = NULL;
            n++;
        }
    }
    return n;
}

int aorm_loop_soon_pending(const aorm_loop *l) {
    int n = 0;
    for (size_t i = 0; i < l->soon_len; i++)
        if (l->soon[(l->soon_head + i) % l->soon_cap].cb) n++;
    return n;
}

static void soon_drain(aorm_loop *l) {
    size_t n = l->soon_len; /* only what was queued before this turn */
    while (n-- > 0 && l->soon_len > 0) {
        aorm__soon_item it = l->soon[l->soon_head];
        l->soon_head = (l->soon_head + 1) % l->soon_cap;
        l->soon_len--;
        if (it.cb) it.cb(it.arg);
    }
}

/* ---- the before-poll stage ---------------------------------------------- */

int aorm_loop_before_poll_add(aorm_loop *l, aorm_stage_cb cb, void *user) {
    if (!l || !cb) return AORM_EMISUSE;
    if (l->nstage == l->stage_cap) {
        int cap = l->stage_cap ? l->stage_cap * 2 : 4;
        aorm__stage_item *n = realloc(l->stage, (size_t)cap * sizeof(*n));
        if (!n) return AORM_ENOMEM;
        l->stage = n;
        l->stage_cap = cap;
    }
    l->stage[l->nstage].cb = cb;
    l->stage[l->nstage].user = user;
    l->nstage++;
    return 0;
}

int aorm_loop_before_poll_remove(aorm_loop *l, aorm_stage_cb cb, void *user) {
    for (int i = 0; i < l->nstage; i++) {
        if (l->stage[i].cb == cb && l->stage[i].user == user) {
            if (l->in_stage) {
                l->stage[i].cb = NULL;
                l->stage_dirty = 1;
            } else {
                memmove(&l->stage[i], &l->stage[i + 1],
                        (size_t)(l->nstage - i - 1) * sizeof(*l->stage));
                l->nstage--;
            }
            return 0;
        }
    }
    return AORM_ENOTFOUND;
}

void aorm_loop_wake(aorm_loop *l) {
    l->woken = 1;
    loop_update_blocking(l);
}

void aorm_loop_backend_before_poll(aorm_loop *l) {
    l->woken = 0;
    l->in_stage++;
    /* hooks added during the stage run next turn: bound the count first */
    int n = l->nstage;
    for (int i = 0; i < n; i++)
        if (l->stage[i].cb) l->stage[i].cb(l, l->stage[i].user);
    if (--l->in_stage == 0 && l->stage_dirty) {
        int k = 0;
        for (int i = 0; i < l->nstage; i++)
            if (l->stage[i].cb) l->stage[k++] = l->stage[i];
        l->nstage = k;
        l->stage_dirty = 0;
    }
    loop_update_blocking(l);
}

void aorm_loop_backend_after_poll(aorm_loop *l) {
    soon_drain(l);
    loop_update_blocking(l);
}
