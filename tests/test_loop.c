/* test_loop.c -- the libev binding: soon queue ordering and deferral,
 * timers, the before-poll stage, and clean teardown. */
#include <ev.h>

#include "support.h"

typedef struct rec {
    int order[64];
    int n;
    aorm_loop *loop;
    int inside; /* non-zero while the queueing call is on the stack */
    int ran_inside;
} rec;

static void push(rec *r, int v) {
    if (r->n < 64) r->order[r->n++] = v;
}

typedef struct item {
    rec *r;
    int v;
} item;

static void soon_cb(void *arg) {
    item *it = arg;
    if (it->r->inside) it->r->ran_inside = 1;
    push(it->r, it->v);
}

Test(loop, soon_never_runs_inside_the_call, .timeout = 10) {
    struct ev_loop *evl = ev_loop_new(EVFLAG_AUTO);
    rec r = {0};
    r.loop = aorm_loop_new_ev(evl);
    cr_assert_not_null(r.loop);
    item it = {&r, 1};
    r.inside = 1;
    cr_assert_eq(aorm_loop_soon(r.loop, soon_cb, &it), 0);
    r.inside = 0;
    cr_assert_eq(r.n, 0, "callback ran inside aorm_loop_soon");
    cr_assert_eq(aorm_loop_soon_pending(r.loop), 1);
    ev_run(evl, 0);
    cr_assert_eq(r.n, 1);
    cr_assert_eq(r.ran_inside, 0);
    aorm_loop_free(r.loop);
    ev_loop_destroy(evl);
}

Test(loop, soon_runs_fifo, .timeout = 10) {
    struct ev_loop *evl = ev_loop_new(EVFLAG_AUTO);
    rec r = {0};
    r.loop = aorm_loop_new_ev(evl);
    item its[40];
    for (int i = 0; i < 40; i++) { /* more than one growth of the ring */
        its[i] = (item){&r, i};
        cr_assert_eq(aorm_loop_soon(r.loop, soon_cb, &its[i]), 0);
    }
    ev_run(evl, 0);
    cr_assert_eq(r.n, 40);
    for (int i = 0; i < 40; i++) cr_assert_eq(r.order[i], i, "position %d holds %d", i, r.order[i]);
    aorm_loop_free(r.loop);
    ev_loop_destroy(evl);
}

Test(loop, soon_cancel_drops_entries, .timeout = 10) {
    struct ev_loop *evl = ev_loop_new(EVFLAG_AUTO);
    rec r = {0};
    r.loop = aorm_loop_new_ev(evl);
    item a = {&r, 1}, b = {&r, 2}, c = {&r, 3};
    aorm_loop_soon(r.loop, soon_cb, &a);
    aorm_loop_soon(r.loop, soon_cb, &b);
    aorm_loop_soon(r.loop, soon_cb, &c);
    cr_assert_eq(aorm_loop_soon_cancel(r.loop, soon_cb, &b), 1);
    ev_run(evl, 0);
    cr_assert_eq(r.n, 2);
    cr_assert_eq(r.order[0], 1);
    cr_assert_eq(r.order[1], 3);
    aorm_loop_free(r.loop);
    ev_loop_destroy(evl);
}

/* Work queued from inside a soon callback runs on a later loop turn: the
 * before-poll stage (one per turn) must run in between. */
typedef struct turn_state {
    aorm_loop *loop;
    int prepares;
    int prepare_at_first;
    int prepare_at_second;
    int steps;
} turn_state;

static void second_step(void *arg) {
    turn_state *t = arg;
    t->prepare_at_second = t->prepares;
    t->steps++;
}

static void first_step(void *arg) {
    turn_state *t = arg;
    t->prepare_at_first = t->prepares;
    t->steps++;
    aorm_loop_soon(t->loop, second_step, t);
}

static void count_prepare(aorm_loop *l, void *user) { ((turn_state *)user)->prepares++; }

Test(loop, requeued_work_runs_on_a_later_turn, .timeout = 10) {
    struct ev_loop *evl = ev_loop_new(EVFLAG_AUTO);
    turn_state t = {0};
    t.loop = aorm_loop_new_ev(evl);
    cr_assert_eq(aorm_loop_before_poll_add(t.loop, count_prepare, &t), 0);
    aorm_loop_soon(t.loop, first_step, &t);
    ev_run(evl, 0);
    cr_assert_eq(t.steps, 2);
    cr_assert_gt(t.prepare_at_second, t.prepare_at_first,
                 "second step ran in the same turn (prepares %d then %d)", t.prepare_at_first,
                 t.prepare_at_second);
    cr_assert_eq(aorm_loop_before_poll_remove(t.loop, count_prepare, &t), 0);
    cr_assert_eq(aorm_loop_before_poll_remove(t.loop, count_prepare, &t), AORM_ENOTFOUND);
    aorm_loop_free(t.loop);
    ev_loop_destroy(evl);
}

typedef struct timer_state {
    aorm_loop *loop;
    aorm_timer *t;
    aorm_timer *other;
    int fired;
    int other_fired;
    double started;
    double fired_at;
} timer_state;

static void on_t(aorm_timer *t, void *user) {
    timer_state *s = user;
    s->fired++;
    s->fired_at = aorm_loop_now(s->loop);
    cr_assert_eq(aorm_timer_active(t), 0, "a fired one-shot timer must be inactive");
    if (s->fired == 1) aorm_timer_start(t, 0.02); /* restart from its own callback */
}

static void on_other(aorm_timer *t, void *user) { ((timer_state *)user)->other_fired++; }

Test(loop, timers_fire_stop_and_restart, .timeout = 10) {
    struct ev_loop *evl = ev_loop_new(EVFLAG_AUTO);
    timer_state s = {0};
    s.loop = aorm_loop_new_ev(evl);
    s.t = aorm_timer_new(s.loop, on_t, &s);
    s.other = aorm_timer_new(s.loop, on_other, &s);
    cr_assert(s.t && s.other);
    s.started = aorm_loop_now(s.loop);
    aorm_timer_start(s.t, 0.03);
    aorm_timer_start(s.other, 0.01);
    aorm_timer_stop(s.other); /* stopped: must never fire */
    cr_assert_eq(aorm_timer_active(s.other), 0);
    ev_run(evl, 0);
    cr_assert_eq(s.fired, 2, "timer fired %d times", s.fired);
    cr_assert_eq(s.other_fired, 0);
    cr_assert_geq(s.fired_at - s.started, 0.045, "restart did not delay: %f", s.fired_at - s.started);
    /* restarting an active timer moves its expiry */
    aorm_timer_start(s.other, 5.0);
    aorm_timer_start(s.other, 0.01);
    double t0 = aorm_loop_now(s.loop);
    ev_run(evl, 0);
    cr_assert_eq(s.other_fired, 1);
    cr_assert_lt(aorm_loop_now(s.loop) - t0, 1.0);
    aorm_timer_free(s.t);
    aorm_timer_free(s.other);
    aorm_loop_free(s.loop);
    ev_loop_destroy(evl);
}

typedef struct io_state {
    aorm_io *io;
    int fds[2];
    int reads;
    int writes;
} io_state;

static void on_pipe(aorm_io *io, int revents, void *user) {
    io_state *s = user;
    if (revents & AORM_READ) {
        char buf[16];
        cr_assert_gt(read(s->fds[0], buf, sizeof(buf)), 0);
        s->reads++;
        aorm_io_free(io); /* freeing from its own callback is allowed */
        s->io = NULL;
    }
}

Test(loop, io_watcher_and_teardown_leaves_nothing_active, .timeout = 10) {
    struct ev_loop *evl = ev_loop_new(EVFLAG_AUTO);
    aorm_loop *l = aorm_loop_new_ev(evl);
    io_state s = {0};
    cr_assert_eq(pipe(s.fds), 0);
    s.io = aorm_io_new(l, s.fds[0], on_pipe, &s);
    aorm_io_set(s.io, AORM_READ);
    cr_assert_eq(aorm_io_events(s.io), AORM_READ);
    cr_assert_eq(write(s.fds[1], "x", 1), 1);
    /* ev_run returns on its own once the last watcher is gone: the
     * binding's prepare/check watchers never keep the loop alive */
    ev_run(evl, 0);
    cr_assert_eq(s.reads, 1);
    cr_assert_null(s.io);
    aorm_loop_free(l);
    /* after detaching, the libev loop has no active watcher at all */
    cr_assert_eq(ev_run(evl, 0), 0, "ev_run reports active watchers after teardown");
    close(s.fds[0]);
    close(s.fds[1]);
    ev_loop_destroy(evl);
}

Test(loop, attaches_to_the_default_loop, .timeout = 10) {
    struct ev_loop *evl = EV_DEFAULT;
    aorm_loop *l = aorm_loop_new_ev(evl);
    cr_assert_not_null(l);
    cr_assert_eq(aorm_loop_ev(l), evl);
    rec r = {0};
    item it = {&r, 7};
    aorm_loop_soon(l, soon_cb, &it);
    ev_run(evl, 0);
    cr_assert_eq(r.n, 1);
    aorm_loop_free(l);
    cr_assert_eq(ev_run(evl, 0), 0);
}

Test(loop, misuse_returns_errors, .timeout = 10) {
    cr_assert_null(aorm_loop_new_ev(NULL));
    cr_assert_eq(aorm_loop_soon(NULL, soon_cb, NULL), AORM_EMISUSE);
    aorm_loop_free(NULL);
    aorm_io_free(NULL);
    aorm_timer_free(NULL);
    cr_assert_str_eq(aorm_errname(AORM_ETIMEOUT), "AORM_ETIMEOUT");
    cr_assert_str_neq(aorm_strerror(AORM_ECONNLOST), "unknown error");
    cr_assert_str_eq(aorm_strerror(12345), "unknown error");
}
