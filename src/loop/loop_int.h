/* loop_int.h -- private to src/loop: the aorm_loop and watcher structs
 * shared by the generic part (loop.c) and the libev backend (loop_ev.c). */
#ifndef AORM_LOOP_INT_H
#define AORM_LOOP_INT_H

#include <stddef.h>

#include "aorm/loop.h"

typedef struct aorm__soon_item {
    aorm_soon_cb cb; /* NULL once cancelled */
    void *arg;
} aorm__soon_item;

typedef struct aorm__stage_item {
    aorm_stage_cb cb; /* NULL once removed (compacted after the stage) */
    void *user;
} aorm__stage_item;

struct aorm_loop {
    const aorm_loop_hooks *hooks;
    void *backend;
    struct ev_loop *evl; /* NULL for non-libev backends */

    /* soon queue: a ring of (cb, arg), grown by doubling */
    aorm__soon_item *soon;
    size_t soon_head, soon_len, soon_cap;

    /* before-poll hooks */
    aorm__stage_item *stage;
    int nstage, stage_cap;
    int in_stage;      /* > 0 while the hooks run: removals only mark */
    int stage_dirty;   /* a removal happened during the stage */

    int nonblocking;   /* what the backend was last told */
    int woken;         /* aorm_loop_wake() asked for one non-blocking poll */
    int nwatchers;     /* live aorm_io + aorm_timer, for the teardown check */
};

struct aorm_io {
    aorm_loop *loop;
    void *handle;
    int fd;
    int events;
    aorm_io_cb cb;
    void *user;
};

struct aorm_timer {
    aorm_loop *loop;
    void *handle;
    int active;
    aorm_timer_cb cb;
    void *user;
};

#endif /* AORM_LOOP_INT_H */
