/* worker.c -- the engine's helper threads, for the one thing libpq does
 * only blocking that the engine needs: looking up host names
 * (getaddrinfo).
 *
 * Up to MAX_THREADS lookups run at once: the pool opens several
 * connections together, and every host name of one connection attempt is
 * looked up in parallel. A thread is started when a lookup is queued and
 * no idle thread is free for it, runs detached, and ends after IDLE_EXIT
 * seconds without work. When every thread is stuck (a resolver that never
 * answers), new lookups wait in the queue, still bounded by the loop.
 *
 * Threads never touch engine memory. What they share with the loop is the
 * `shared` block: the queue, the finished lookups and the eventfd that
 * wakes the loop. It is reference-counted (one reference for the engine,
 * one per thread), so freeing the engine never waits for a thread stuck in
 * getaddrinfo: freeing drops the lookups not yet started, marks the block
 * orphaned and lets go; a thread that finishes after that frees its job
 * (the answer is dropped), and the last thread out frees the block.
 * Nothing is ever joined.
 *
 * The loop bounds every lookup from its side: a connection attempt whose
 * lookups have not all answered by its connect timeout fails (conn.c's
 * timer takes the message from aorm__worker_resolve_timeout()), and the
 * late answers are dropped when they come. Results are applied to
 * connections by id, so a connection that went away meanwhile is simply
 * not found.
 *
 * Owns: the shared block and the threads, the loop's records of the
 * lookups it waits for (grouped per connection attempt), the eventfd
 * watcher. Must not: block the loop, wait for a thread, or hand a thread
 * anything of the engine's. */
#include <errno.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "async_engine/engine_int.h"

#define MAX_THREADS 16 /* host names looked up at once */
#define IDLE_EXIT 5    /* seconds an idle thread waits for work before it ends */

typedef enum job_state {
    JOB_QUEUED,  /* in the queue: the loop may still take it back */
    JOB_RUNNING, /* a thread has it: only that thread touches its name and result */
    JOB_DONE     /* on the done list, for the loop */
} job_state;

typedef struct attempt attempt;

/* One lookup. */
typedef struct job {
    struct job *next;        /* queue or done list (under the mutex) */
    uint8_t state;           /* job_state, under the mutex */
    /* the thread's while running, the loop's before and after */
    char *name;              /* the host name */
    char *addrs;             /* result: numeric addresses, comma-separated */
    char err[256];           /* empty on success */
    /* loop thread only */
    bool abandoned;          /* the loop gave up on it: its answer is dropped */
    attempt *attempt;        /* the attempt it belongs to, NULL once abandoned */
    int entry;               /* its index in the engine's host list */
} job;

typedef struct shared {
    pthread_mutex_t mu;
    pthread_cond_t cv;       /* a job was queued, or the block was orphaned */
    int refs;                /* the engine's (until it is freed) + one per thread */
    bool orphaned;           /* the engine is gone: answers are dropped */
    job *head, *tail;        /* queued jobs */
    int queued;
    int threads;             /* alive, running a job or idle */
    int idle;                /* waiting for a job */
    job *done;               /* finished jobs, newest first */
    int efd;                 /* eventfd: written when a job is done */
} shared;

/* The lookups of one connection attempt (loop thread only). */
struct attempt {
    attempt *next;
    uint64_t conn_id;
    int n;                   /* entries of the engine's host list */
    int pending;             /* lookups not yet answered */
    char **addrs;            /* per entry, see aorm__resolved */
    job **jobs;              /* per entry: its lookup while unanswered */
    aorm__buf err;           /* lookup failures */
};

struct aorm__worker {
    aorm_engine *e;
    shared *s;
    aorm_io *io;             /* the eventfd; watched while an answer is awaited */
    int awaited;             /* jobs submitted, not applied and not abandoned */
    attempt *attempts;
};

static char failed_entry[] = ""; /* attempt->addrs of a host that could not be resolved */

/* ---- the threads' side -------------------------------------------------- */

static void job_free(job *j) {
    free(j->name);
    free(j->addrs);
    free(j);
}

static void shared_free(shared *s) {
    close(s->efd);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

/* Every address of j->name (A and AAAA), in getaddrinfo's order, each
 * once. The hints are libpq's own, so the list is what libpq would try. */
static void do_resolve(job *j) {
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(j->name, NULL, &hints, &res);
    if (rc != 0 || !res) {
        snprintf(j->err, sizeof(j->err), "could not translate host name \"%.200s\" to address: %s", j->name,
                 gai_strerror(rc));
        if (res) freeaddrinfo(res);
        return;
    }
    aorm__buf out = {0};
    for (struct addrinfo *ai = res; ai && !j->err[0]; ai = ai->ai_next) {
        bool seen = false;
        for (struct addrinfo *p = res; p != ai && !seen; p = p->ai_next)
            seen = p->ai_addrlen == ai->ai_addrlen && memcmp(p->ai_addr, ai->ai_addr, ai->ai_addrlen) == 0;
        char addr[NI_MAXHOST];
        if (seen || getnameinfo(ai->ai_addr, ai->ai_addrlen, addr, sizeof(addr), NULL, 0, NI_NUMERICHOST) != 0)
            continue;
        if ((out.len > 0 && aorm__buf_putc(&out, ',') < 0) || aorm__buf_append(&out, addr, strlen(addr)) < 0)
            snprintf(j->err, sizeof(j->err), "out of memory resolving host name \"%.200s\"", j->name);
    }
    freeaddrinfo(res);
    if (!j->err[0] && out.len == 0)
        snprintf(j->err, sizeof(j->err), "could not format the addresses of \"%.200s\"", j->name);
    if (!j->err[0] && aorm__buf_putc(&out, '\0') < 0)
        snprintf(j->err, sizeof(j->err), "out of memory resolving host name \"%.200s\"", j->name);
    if (j->err[0]) {
        aorm__buf_free(&out);
        return;
    }
    j->addrs = out.data;
}

static void *thread_main(void *arg) {
    shared *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        if (!s->head) {
            if (s->orphaned) break;
            struct timespec until;
            clock_gettime(CLOCK_MONOTONIC, &until);
            until.tv_sec += IDLE_EXIT;
            s->idle++;
            int rc = 0;
            while (!s->head && !s->orphaned && rc != ETIMEDOUT) rc = pthread_cond_timedwait(&s->cv, &s->mu, &until);
            s->idle--;
            if (!s->head) break;
        }
        job *j = s->head;
        s->head = j->next;
        if (!s->head) s->tail = NULL;
        s->queued--;
        j->state = JOB_RUNNING;
        pthread_mutex_unlock(&s->mu);

        do_resolve(j);

        pthread_mutex_lock(&s->mu);
        if (s->orphaned) {
            job_free(j); /* nobody is waiting for it any more */
            continue;
        }
        j->state = JOB_DONE;
        j->next = s->done;
        s->done = j;
        uint64_t one = 1;
        ssize_t n = write(s->efd, &one, sizeof(one));
        (void)n; /* a full counter still wakes the loop */
    }
    s->threads--;
    bool last = --s->refs == 0;
    pthread_mutex_unlock(&s->mu);
    if (last) shared_free(s);
    return NULL;
}

/* Starts a detached thread (called with the mutex held). Signals stay
 * with the program's threads: the helper blocks them all. */
static int start_thread(shared *s) {
    pthread_attr_t attr;
    if (pthread_attr_init(&attr) != 0) return -1;
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_t t;
    int rc = pthread_create(&t, &attr, thread_main, s);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    if (rc != 0) return -1;
    s->threads++;
    s->refs++;
    return 0;
}

/* Removes a queued job from the queue (called with the mutex held). */
static void queue_unlink(shared *s, job *j) {
    job **pp = &s->head, *prev = NULL;
    while (*pp && *pp != j) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (!*pp) return;
    *pp = j->next;
    if (s->tail == j) s->tail = prev;
    s->queued--;
}

/* ---- the loop's side ---------------------------------------------------- */

/* The eventfd is watched only while an answer is awaited, so that idle
 * helpers, or stuck ones nobody waits for, never keep the loop alive. */
static void await_add(aorm__worker *w, int delta) {
    w->awaited += delta;
    aorm_io_set(w->io, w->awaited > 0 ? AORM_READ : 0);
}

static int submit(aorm__worker *w, job *j) {
    shared *s = w->s;
    pthread_mutex_lock(&s->mu);
    j->state = JOB_QUEUED;
    j->next = NULL;
    if (s->tail) s->tail->next = j;
    else s->head = j;
    s->tail = j;
    s->queued++;
    if (s->idle >= s->queued) {
        pthread_cond_signal(&s->cv);
    } else if (s->threads < MAX_THREADS && start_thread(s) < 0 && s->threads == 0) {
        queue_unlink(s, j);
        pthread_mutex_unlock(&s->mu);
        return -1;
    }
    /* otherwise every thread is busy (some perhaps stuck): the job waits
     * its turn, and the loop's bound still applies */
    pthread_mutex_unlock(&s->mu);
    await_add(w, 1);
    return 0;
}

/* The loop gives up on j: a queued job is taken back and freed at once,
 * a running or finished one is left alone and its answer dropped. */
static void abandon(aorm__worker *w, job *j) {
    shared *s = w->s;
    pthread_mutex_lock(&s->mu);
    bool queued = j->state == JOB_QUEUED;
    if (queued) queue_unlink(s, j);
    pthread_mutex_unlock(&s->mu);
    await_add(w, -1);
    if (queued) {
        job_free(j);
        return;
    }
    j->abandoned = true;
    j->attempt = NULL;
}

static void attempt_unlink(aorm__worker *w, attempt *a) {
    for (attempt **pp = &w->attempts; *pp; pp = &(*pp)->next) {
        if (*pp == a) {
            *pp = a->next;
            break;
        }
    }
    a->next = NULL;
}

/* Frees a, giving up on its lookups still out. */
static void attempt_free(aorm__worker *w, attempt *a) {
    attempt_unlink(w, a);
    for (int i = 0; i < a->n; i++) {
        if (a->jobs && a->jobs[i]) abandon(w, a->jobs[i]);
        if (a->addrs && a->addrs[i] != failed_entry) free(a->addrs[i]);
    }
    free(a->addrs);
    free(a->jobs);
    aorm__buf_free(&a->err);
    free(a);
}

static aorm_conn *find_conn(aorm_engine *e, uint64_t id) {
    if (e->closing) return NULL;
    for (aorm_conn *c = e->conns; c; c = c->next)
        if (c->id == id) return c;
    return NULL;
}

/* One lookup of its attempt has answered; the last one hands the whole
 * result to the connection. */
static void lookup_done(aorm__worker *w, job *j) {
    aorm_engine *e = w->e;
    attempt *a = j->attempt;
    a->jobs[j->entry] = NULL;
    a->pending--;
    if (j->err[0]) {
        a->addrs[j->entry] = failed_entry;
        if ((a->err.len > 0 && aorm__buf_append(&a->err, "; ", 2) < 0) ||
            aorm__buf_append(&a->err, j->err, strlen(j->err)) < 0)
            aorm__buf_free(&a->err);
    } else {
        a->addrs[j->entry] = j->addrs;
        j->addrs = NULL;
    }
    if (a->pending > 0) return;
    /* out of the list first: the connection's code may start another
     * attempt (aorm_engine_warm from a callback), which prunes the list */
    attempt_unlink(w, a);
    aorm__resolved r = {.n = a->n, .addrs = a->addrs, .err = NULL};
    for (int i = 0; i < a->n && !r.err; i++) {
        if (a->addrs[i] != failed_entry) continue;
        r.err = a->err.len > 0 && aorm__buf_putc(&a->err, '\0') == 0 ? a->err.data
                                                                      : "could not resolve host names (out of memory)";
    }
    aorm_conn *c = find_conn(e, a->conn_id);
    if (c) {
        c->busy++;
        aorm__conn_resolved(c, &r);
        c->busy--;
        if (c->dead && c->busy == 0) aorm__conn_free(c);
    }
    attempt_free(w, a);
}

static void on_done(aorm_io *io, int revents, void *arg) {
    aorm__worker *w = arg;
    aorm_engine *e = w->e;
    shared *s = w->s;
    uint64_t cnt;
    ssize_t n = read(s->efd, &cnt, sizeof(cnt));
    (void)n;
    pthread_mutex_lock(&s->mu);
    job *list = NULL;
    while (s->done) { /* oldest first */
        job *j = s->done;
        s->done = j->next;
        j->next = list;
        list = j;
    }
    pthread_mutex_unlock(&s->mu);
    aorm__engine_enter(e);
    while (list) {
        job *j = list;
        list = j->next;
        if (!j->abandoned) {
            await_add(w, -1);
            lookup_done(w, j);
        }
        job_free(j);
    }
    aorm__engine_leave(e); /* may free the engine, and w with it */
}

aorm__worker *aorm__worker_new(aorm_engine *e) {
    aorm__worker *w = calloc(1, sizeof(*w));
    shared *s = calloc(1, sizeof(*s));
    int efd = w && s ? eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC) : -1;
    if (efd < 0) {
        free(s);
        free(w);
        return NULL;
    }
    w->e = e;
    w->s = s;
    s->refs = 1;
    s->efd = efd;
    pthread_mutex_init(&s->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cv, &ca);
    pthread_condattr_destroy(&ca);
    w->io = aorm_io_new(e->loop, s->efd, on_done, w);
    if (!w->io) {
        shared_free(s);
        free(w);
        return NULL;
    }
    return w;
}

int aorm__worker_resolve(aorm__worker *w, uint64_t conn_id) {
    aorm_engine *e = w->e;
    /* attempts whose connection went away some other way than its
     * timeout: their lookups not yet started need no thread */
    for (attempt *a = w->attempts, *next; a; a = next) {
        next = a->next;
        aorm_conn *c = find_conn(e, a->conn_id);
        if (!c || c->state != CONN_RESOLVING) attempt_free(w, a);
    }
    attempt *a = calloc(1, sizeof(*a));
    if (!a) return -1;
    a->conn_id = conn_id;
    a->n = e->nhosts;
    a->addrs = calloc((size_t)a->n, sizeof(char *));
    a->jobs = calloc((size_t)a->n, sizeof(job *));
    a->next = w->attempts;
    w->attempts = a;
    if (!a->addrs || !a->jobs) goto fail;
    for (int i = 0; i < e->nhosts; i++) {
        if (!e->lookup[i]) continue;
        job *j = calloc(1, sizeof(*j));
        if (!j) goto fail;
        j->attempt = a;
        j->entry = i;
        j->name = aorm__strdup(e->hosts[i]);
        if (!j->name || submit(w, j) < 0) {
            job_free(j);
            goto fail;
        }
        a->jobs[i] = j;
        a->pending++;
    }
    return 0;
fail:
    attempt_free(w, a);
    return -1;
}

void aorm__worker_resolve_timeout(aorm__worker *w, uint64_t conn_id, char *msg, size_t cap) {
    aorm_engine *e = w->e;
    attempt *a = w->attempts;
    while (a && a->conn_id != conn_id) a = a->next;
    const char *name = NULL;
    for (int i = 0; a && i < a->n && !name; i++)
        if (a->jobs[i]) name = e->hosts[i];
    if (name)
        snprintf(msg, cap, "could not resolve host name \"%.200s\": timed out after %g s", name, e->o.connect_timeout);
    else
        snprintf(msg, cap, "connection attempt timed out");
    if (a) attempt_free(w, a);
}

void aorm__worker_free(aorm__worker *w) {
    if (!w) return;
    shared *s = w->s;
    job *drop = NULL;
    pthread_mutex_lock(&s->mu);
    s->orphaned = true;
    while (s->head) { /* not started: dropped */
        job *j = s->head;
        s->head = j->next;
        j->next = drop;
        drop = j;
    }
    s->tail = NULL;
    s->queued = 0;
    while (s->done) {
        job *j = s->done;
        s->done = j->next;
        j->next = drop;
        drop = j;
    }
    pthread_cond_broadcast(&s->cv); /* idle threads end now */
    bool last = --s->refs == 0;
    pthread_mutex_unlock(&s->mu);
    /* every other job is running: its thread frees it */
    while (drop) {
        job *j = drop;
        drop = j->next;
        job_free(j);
    }
    while (w->attempts) {
        attempt *a = w->attempts;
        w->attempts = a->next;
        for (int i = 0; i < a->n; i++)
            if (a->addrs[i] != failed_entry) free(a->addrs[i]);
        free(a->addrs);
        free(a->jobs);
        aorm__buf_free(&a->err);
        free(a);
    }
    aorm_io_free(w->io);
    if (last) shared_free(s);
    free(w);
}
