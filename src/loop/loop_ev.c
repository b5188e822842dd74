/* loop_ev.c -- the libev backend of aorm_loop: the only aorm source file
 * that includes <ev.h>.
 *
 * Maps aorm watchers onto ev_io / ev_timer, runs the before-poll stage
 * from an ev_prepare watcher and drains the soon queue from an ev_check
 * watcher. Both are unreferenced (ev_unref) so that they never keep
 * ev_run() alive on their own: when the last aorm watcher stops, ev_run()
 * returns. An ev_idle watcher is active only while work is queued; its
 * presence makes libev poll with a zero timeout. */
#include <ev.h>
#include <stdlib.h>

#include "loop/loop_int.h"
#include "util/util.h"

typedef struct evb_state {
    struct ev_loop *evl;
    aorm_loop *loop;
    ev_prepare prepare;
    ev_check check;
    ev_idle idle;
} evb_state;

typedef struct ev_io_h {
    ev_io w;
    aorm_io *io;
} ev_io_h;

typedef struct ev_timer_h {
    ev_timer w;
    aorm_timer *t;
} ev_timer_h;

static void on_io(struct ev_loop *evl, ev_io *w, int revents) {
    ev_io_h *h = (ev_io_h *)w;
    int ev = ((revents & EV_READ) ? AORM_READ : 0) | ((revents & EV_WRITE) ? AORM_WRITE : 0);
    aorm_io_backend_fire(h->io, ev);
}

static void on_timer(struct ev_loop *evl, ev_timer *w, int revents) {
    aorm_timer_backend_fire(((ev_timer_h *)w)->t);
}

static void on_prepare(struct ev_loop *evl, ev_prepare *w, int revents) {
    evb_state *b = w->data;
    aorm_loop_backend_before_poll(b->loop);
}

static void on_check(struct ev_loop *evl, ev_check *w, int revents) {
    evb_state *b = w->data;
    aorm_loop_backend_after_poll(b->loop);
}

static void on_idle(struct ev_loop *evl, ev_idle *w, int revents) {
    /* Nothing to do: being active is what keeps the poll non-blocking. */
}

static void *be_io_new(void *backend, aorm_io *io, int fd) {
    ev_io_h *h = malloc(sizeof(*h));
    if (!h) return NULL;
    ev_io_init(&h->w, on_io, fd, 0);
    h->io = io;
    return h;
}

static void be_io_set(void *backend, void *handle, int fd, int events) {
    evb_state *b = backend;
    ev_io_h *h = handle;
    ev_io_stop(b->evl, &h->w);
    int ev = ((events & AORM_READ) ? EV_READ : 0) | ((events & AORM_WRITE) ? EV_WRITE : 0);
    ev_io_set(&h->w, fd, ev);
    if (ev) ev_io_start(b->evl, &h->w);
}

static void be_io_free(void *backend, void *handle) {
    evb_state *b = backend;
    ev_io_h *h = handle;
    ev_io_stop(b->evl, &h->w);
    free(h);
}

static void *be_timer_new(void *backend, aorm_timer *t) {
    ev_timer_h *h = malloc(sizeof(*h));
    if (!h) return NULL;
    ev_timer_init(&h->w, on_timer, 0., 0.);
    h->t = t;
    return h;
}

static void be_timer_start(void *backend, void *handle, double after) {
    evb_state *b = backend;
    ev_timer_h *h = handle;
    ev_timer_stop(b->evl, &h->w);
    ev_timer_set(&h->w, after, 0.);
    ev_timer_start(b->evl, &h->w);
}

static void be_timer_stop(void *backend, void *handle) {
    evb_state *b = backend;
    ev_timer_stop(b->evl, &((ev_timer_h *)handle)->w);
}

static void be_timer_free(void *backend, void *handle) {
    be_timer_stop(backend, handle);
    free(handle);
}

static double be_now(void *backend) { return ev_now(((evb_state *)backend)->evl); }

static void be_set_nonblocking(void *backend, int on) {
    evb_state *b = backend;
    if (on) ev_idle_start(b->evl, &b->idle);
    else ev_idle_stop(b->evl, &b->idle);
}

static void be_detach(void *backend) {
    evb_state *b = backend;
    ev_idle_stop(b->evl, &b->idle);
    ev_ref(b->evl); /* undo the ev_unref of start before stopping */
    ev_prepare_stop(b->evl, &b->prepare);
    ev_ref(b->evl);
    ev_check_stop(b->evl, &b->check);
    free(b);
}

static const aorm_loop_hooks ev_hooks = {
    be_io_new, be_io_set, be_io_free,
    be_timer_new, be_timer_start, be_timer_stop, be_timer_free,
    be_now, be_set_nonblocking, be_detach,
};

aorm_loop *aorm_loop_new_ev(struct ev_loop *evl) {
    if (!evl) return NULL;
    evb_state *b = calloc(1, sizeof(*b));
    if (!b) return NULL;
    aorm_loop *l = aorm_loop_new_hooks(&ev_hooks, b);
    if (!l) {
        free(b);
        return NULL;
    }
    l->evl = evl;
    b->evl = evl;
    b->loop = l;
    ev_prepare_init(&b->prepare, on_prepare);
    b->prepare.data = b;
    ev_check_init(&b->check, on_check);
    b->check.data = b;
    ev_idle_init(&b->idle, on_idle);
    ev_prepare_start(evl, &b->prepare);
    ev_unref(evl);
    ev_check_start(evl, &b->check);
    ev_unref(evl);
    return l;
}
