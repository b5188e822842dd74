/** @file loop.h
 * the event-loop binding every aorm module runs on.
 *
 * aorm never owns the event loop: it attaches to the caller's libev loop
 * (default or not) and adds a few watchers to it. Everything above this
 * layer talks to an aorm_loop through the calls below; only the libev
 * backend (src/loop/loop_ev.c) includes <ev.h>.
 *
 * The loop offers four things:
 *   - I/O watchers  (aorm_io):    readiness of a file descriptor;
 *   - timers        (aorm_timer): one-shot, restartable;
 *   - the before-poll stage:      hooks that run right before the loop
 *                                 blocks for I/O (libev's ev_prepare); the
 *                                 engine writes its queued pipelines there,
 *                                 so everything queued in one loop turn goes
 *                                 out together;
 *   - the soon queue:             callbacks that run on a later loop turn,
 *                                 never inside the call that queued them, in
 *                                 FIFO order. Work queued from inside a soon
 *                                 callback runs on the turn after.
 *
 * Threading: an aorm_loop and everything attached to it belong to the one
 * thread that runs the underlying loop. Nothing here is thread-safe.
 *
 * A different loop (or a fake one, in tests) can be plugged in through
 * aorm_loop_hooks: the backend provides watchers and calls back into
 * aorm_loop_backend_*() at the right stages.
 *
 * Handles and ownership:
 *   - aorm_loop: made by aorm_loop_new_ev() (or _new_hooks), owned and
 *     freed by the caller with aorm_loop_free(), after every engine, Redis
 *     client, watcher and timer made on it, and before the libev loop is
 *     destroyed. The libev loop stays the caller's: aorm never runs,
 *     breaks or destroys it (ending a program is ev_break() or letting
 *     ev_run() return once nothing is active: see the guide).
 *   - aorm_io, aorm_timer: owned by whoever made them; freed with
 *     aorm_io_free() / aorm_timer_free(). The fd of an aorm_io stays its
 *     caller's.
 *
 * Callbacks: I/O, timer, soon and before-poll callbacks run on the loop's
 * thread, from inside ev_run(), never from inside the call that set them
 * up. From inside any of them every function of aorm may be called --
 * including freeing the watcher or timer that is running, or an engine or
 * session -- except aorm_loop_free().
 *
 * Units: times are seconds as a double, measured on the loop's clock
 * (aorm_loop_now()).
 */
#ifndef AORM_LOOP_H
#define AORM_LOOP_H

#include "export.h"

#ifdef __cplusplus
extern "C" {
#endif

struct ev_loop; /**< libev's loop; aorm_loop_new_ev() attaches to one */

typedef struct aorm_loop aorm_loop;
typedef struct aorm_io aorm_io;
typedef struct aorm_timer aorm_timer;

enum { AORM_READ = 1, AORM_WRITE = 2 };

typedef void (*aorm_io_cb)(aorm_io *io, int revents, void *user);
typedef void (*aorm_timer_cb)(aorm_timer *t, void *user);
typedef void (*aorm_soon_cb)(void *arg);
typedef void (*aorm_stage_cb)(aorm_loop *loop, void *user);

/* ---- attaching ---------------------------------------------------------- */

/** Attaches to a libev loop (EV_DEFAULT or one from ev_loop_new()). Starts
 * an ev_prepare and an ev_check watcher that do not keep ev_run() alive on
 * their own. Returns NULL on out of memory or a NULL argument.
 * Free with aorm_loop_free() before the libev loop is destroyed. */
AORM_API aorm_loop *aorm_loop_new_ev(struct ev_loop *evl);

/** Detaches from the loop and frees it. Every aorm_io and aorm_timer made
 * on it must have been freed already (asserted in debug builds); soon
 * callbacks still queued are dropped without being called. Accepts NULL.
 * Must not be called from inside a callback of this loop. */
AORM_API void aorm_loop_free(aorm_loop *loop);

/** The libev loop this aorm_loop is attached to, or NULL for a backend
 * that is not libev. */
AORM_API struct ev_loop *aorm_loop_ev(aorm_loop *loop);

/** The loop's cached current time in seconds (ev_now for libev). */
AORM_API double aorm_loop_now(aorm_loop *loop);

/* ---- I/O watchers ------------------------------------------------------- */

/** New watcher on fd, stopped. cb runs with the ready subset of AORM_READ |
 * AORM_WRITE. Returns NULL on out of memory. The fd stays the caller's. */
AORM_API aorm_io *aorm_io_new(aorm_loop *loop, int fd, aorm_io_cb cb, void *user);

/** Sets the events to watch (0 stops the watcher). Cheap when unchanged.
 * May be called from any callback. */
AORM_API void aorm_io_set(aorm_io *io, int events);

/** Points the watcher at fd, keeping the watched events, and registers it
 * with the backend again even when the number is unchanged: libpq closes
 * its socket and opens the next one, often under the same number, when a
 * connection attempt moves on to the next address. */
AORM_API void aorm_io_set_fd(aorm_io *io, int fd);

/** Currently watched events. */
AORM_API int aorm_io_events(const aorm_io *io);

/** Stops and frees the watcher. Accepts NULL. May be called from any
 * callback, including this watcher's own. */
AORM_API void aorm_io_free(aorm_io *io);

/* ---- timers ------------------------------------------------------------- */

/** New stopped one-shot timer. Returns NULL on out of memory. */
AORM_API aorm_timer *aorm_timer_new(aorm_loop *loop, aorm_timer_cb cb, void *user);

/** (Re)starts the timer to fire once, `after` seconds from the loop's
 * current time. Restarting an active timer moves its expiry. */
AORM_API void aorm_timer_start(aorm_timer *t, double after);

/** Stops the timer; no effect when it is not active. */
AORM_API void aorm_timer_stop(aorm_timer *t);

/** True while the timer is started and has not fired. */
AORM_API int aorm_timer_active(const aorm_timer *t);

/** Stops and frees the timer. Accepts NULL. May be called from any
 * callback, including this timer's own. */
AORM_API void aorm_timer_free(aorm_timer *t);

/* ---- the soon queue ----------------------------------------------------- */

/** Queues cb(arg) to run on a later loop turn (after this turn's I/O), in
 * FIFO order with everything else queued. Never runs cb before returning.
 * While the queue is not empty the loop does not block in poll. Returns 0,
 * or AORM_ENOMEM (cb will then never run). May be called from any
 * callback. */
AORM_API int aorm_loop_soon(aorm_loop *loop, aorm_soon_cb cb, void *arg);

/** Removes every queued (cb, arg) pair equal to the arguments without
 * calling it; for owners that are being freed. Returns how many were
 * removed. */
AORM_API int aorm_loop_soon_cancel(aorm_loop *loop, aorm_soon_cb cb, void *arg);

/** Number of callbacks waiting in the soon queue. */
AORM_API int aorm_loop_soon_pending(const aorm_loop *loop);

/* ---- the before-poll stage ---------------------------------------------- */

/** Registers cb(loop, user) to run every loop turn right before the loop
 * polls for I/O. Hooks run in registration order. Returns 0 or
 * AORM_ENOMEM. */
AORM_API int aorm_loop_before_poll_add(aorm_loop *loop, aorm_stage_cb cb, void *user);

/** Unregisters a hook added with the same (cb, user). Safe from inside a
 * hook. Returns 0, or AORM_ENOTFOUND. */
AORM_API int aorm_loop_before_poll_remove(aorm_loop *loop, aorm_stage_cb cb, void *user);

/** Asks the loop not to block in its next poll, so that the before-poll
 * hooks run again promptly (used when work is queued from outside any
 * callback, e.g. before ev_run() starts). */
AORM_API void aorm_loop_wake(aorm_loop *loop);

/* ---- plugging in another loop ------------------------------------------- */

/** A backend implements watchers on its own loop. Handles are the
 * backend's; aorm keeps them opaque. The backend must call
 * aorm_loop_backend_before_poll() right before it blocks for I/O,
 * aorm_loop_backend_after_poll() after it has dispatched the I/O and timer
 * callbacks of a turn, aorm_io_backend_fire() and aorm_timer_backend_fire()
 * when a watcher is ready, and must not block in poll while
 * set_nonblocking(backend, 1) is in force. */
typedef struct aorm_loop_hooks {
    void *(*io_new)(void *backend, aorm_io *io, int fd);
    void (*io_set)(void *backend, void *handle, int fd, int events);
    void (*io_free)(void *backend, void *handle);
    void *(*timer_new)(void *backend, aorm_timer *t);
    void (*timer_start)(void *backend, void *handle, double after);
    void (*timer_stop)(void *backend, void *handle);
    void (*timer_free)(void *backend, void *handle);
    double (*now)(void *backend);
    void (*set_nonblocking)(void *backend, int on);
    void (*detach)(void *backend); /**< called once by aorm_loop_free() */
} aorm_loop_hooks;

/** Creates a loop over a custom backend. `hooks` must outlive the loop. */
AORM_API aorm_loop *aorm_loop_new_hooks(const aorm_loop_hooks *hooks, void *backend);

AORM_API void aorm_loop_backend_before_poll(aorm_loop *loop);
AORM_API void aorm_loop_backend_after_poll(aorm_loop *loop);
AORM_API void aorm_io_backend_fire(aorm_io *io, int revents);
AORM_API void aorm_timer_backend_fire(aorm_timer *t);

#ifdef __cplusplus
}
#endif

#endif /* AORM_LOOP_H */
