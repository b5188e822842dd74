/* worker.c -- the engine's helper thread, for the two things libpq 15 can
 * only do blocking: sending a cancel request (PQcancel opens a new
 * connection to the server) and resolving host names.
 *
 * The thread is started on first use and never touches engine state: it
 * takes jobs from a mutex-protected list and puts finished jobs on another,
 * then wakes the loop through an eventfd. The loop side applies results to
 * connections by id, so a connection that went away meanwhile is simply
 * not found. Owns: the thread, the job lists, the eventfd. */
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "async_engine/engine_int.h"

typedef enum job_kind { JOB_CANCEL, JOB_RESOLVE } job_kind;

typedef struct job {
    struct job *next;
    job_kind kind;
    uint64_t conn_id;
    PGcancel *cancel; /* JOB_CANCEL, owned */
    char *hosts;      /* JOB_RESOLVE: comma-separated host list */
    char *hostaddr;   /* JOB_RESOLVE result */
    char err[256];    /* empty on success */
} job;

struct aorm__worker {
    aorm_engine *e;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool started;
    bool stop;
    job *todo_head, *todo_tail;
    job *done;
    int outstanding; /* jobs submitted and not yet applied (loop thread only) */
    int efd;
    aorm_io *io;
};

static void job_free(job *j) {
    if (j->cancel) PQfreeCancel(j->cancel);
    free(j->hosts);
    free(j->hostaddr);
    free(j);
}

static void do_resolve(job *j) {
    aorm__buf out = {0};
    const char *p = j->hosts;
    for (int first = 1;; first = 0) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        char host[256];
        if (!first && aorm__buf_putc(&out, ',') < 0) goto oom;
        if (len >= sizeof(host)) {
            snprintf(j->err, sizeof(j->err), "host name too long");
            goto fail;
        }
        memcpy(host, p, len);
        host[len] = '\0';
        if (len > 0 && host[0] != '/' && host[0] != '@') {
            struct addrinfo hints = {0}, *res = NULL;
            hints.ai_family = AF_UNSPEC;
            hints.ai_socktype = SOCK_STREAM;
            int rc = getaddrinfo(host, NULL, &hints, &res);
            if (rc != 0 || !res) {
                snprintf(j->err, sizeof(j->err), "could not translate host name \"%.200s\" to address: %s", host,
                         gai_strerror(rc));
                goto fail;
            }
            char addr[NI_MAXHOST];
            rc = getnameinfo(res->ai_addr, res->ai_addrlen, addr, sizeof(addr), NULL, 0, NI_NUMERICHOST);
            freeaddrinfo(res);
            if (rc != 0) {
                snprintf(j->err, sizeof(j->err), "could not format the address of \"%.200s\"", host);
                goto fail;
            }
            if (aorm__buf_append(&out, addr, strlen(addr)) < 0) goto oom;
        }
        if (!comma) break;
        p = comma + 1;
    }
    if (aorm__buf_putc(&out, '\0') < 0) goto oom;
    j->hostaddr = out.data;
    return;
oom:
    snprintf(j->err, sizeof(j->err), "out of memory resolving host names");
fail:
    aorm__buf_free(&out);
}

static void *worker_main(void *arg) {
    aorm__worker *w = arg;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (!w->todo_head && !w->stop) pthread_cond_wait(&w->cv, &w->mu);
        if (w->stop) break;
        job *j = w->todo_head;
        w->todo_head = j->next;
        if (!w->todo_head) w->todo_tail = NULL;
        pthread_mutex_unlock(&w->mu);

        if (j->kind == JOB_CANCEL) {
            if (!PQcancel(j->cancel, j->err, sizeof(j->err)) && !j->err[0])
                snprintf(j->err, sizeof(j->err), "cancel request failed");
        } else {
            do_resolve(j);
        }

        pthread_mutex_lock(&w->mu);
        j->next = w->done;
        w->done = j;
        uint64_t one = 1;
        ssize_t n = write(w->efd, &one, sizeof(one));
        (void)n; /* a full counter still wakes the loop */
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

static aorm_conn *find_conn(aorm_engine *e, uint64_t id) {
    for (aorm_conn *c = e->conns; c; c = c->next)
        if (c->id == id) return c;
    return NULL;
}

static void on_done(aorm_io *io, int revents, void *arg) {
    aorm__worker *w = arg;
    aorm_engine *e = w->e;
    uint64_t cnt;
    ssize_t n = read(w->efd, &cnt, sizeof(cnt));
    (void)n;
    pthread_mutex_lock(&w->mu);
    job *list = w->done;
    w->done = NULL;
    pthread_mutex_unlock(&w->mu);
    aorm__engine_enter(e);
    while (list) {
        job *j = list;
        list = j->next;
        aorm_conn *c = e->closing ? NULL : find_conn(e, j->conn_id);
        if (j->kind == JOB_CANCEL) {
            if (j->err[0]) aorm__engine_log(e, AORM_LOG_WARN, "cancel request failed: %s", j->err);
            if (c) aorm__conn_cancel_done(c);
        } else if (c) {
            c->busy++;
            aorm__conn_resolved(c, j->hostaddr, j->err[0] ? j->err : NULL);
            c->busy--;
            if (c->dead && c->busy == 0) aorm__conn_free(c);
        }
        job_free(j);
        if (--w->outstanding == 0) aorm_io_set(w->io, 0);
    }
    aorm__engine_leave(e);
}

aorm__worker *aorm__worker_new(aorm_engine *e) {
    aorm__worker *w = calloc(1, sizeof(*w));
    if (!w) return NULL;
    w->e = e;
    w->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (w->efd < 0) {
        free(w);
        return NULL;
    }
    w->io = aorm_io_new(e->loop, w->efd, on_done, w);
    if (!w->io) {
        close(w->efd);
        free(w);
        return NULL;
    }
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    return w;
}

static int submit(aorm__worker *w, job *j) {
    pthread_mutex_lock(&w->mu);
    if (!w->started) {
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
            pthread_mutex_unlock(&w->mu);
            return -1;
        }
        w->started = true;
    }
    j->next = NULL;
    if (w->todo_tail) w->todo_tail->next = j;
    else w->todo_head = j;
    w->todo_tail = j;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    /* watch the eventfd only while jobs are out, so an idle helper never
     * keeps the loop alive */
    w->outstanding++;
    aorm_io_set(w->io, AORM_READ);
    return 0;
}

int aorm__worker_cancel(aorm__worker *w, uint64_t conn_id, PGcancel *cancel) {
    job *j = calloc(1, sizeof(*j));
    if (!j) return -1;
    j->kind = JOB_CANCEL;
    j->conn_id = conn_id;
    j->cancel = cancel;
    if (submit(w, j) < 0) {
        free(j); /* on failure the caller still owns cancel */
        return -1;
    }
    return 0;
}

int aorm__worker_resolve(aorm__worker *w, uint64_t conn_id, const char *hosts) {
    job *j = calloc(1, sizeof(*j));
    if (!j) return -1;
    j->kind = JOB_RESOLVE;
    j->conn_id = conn_id;
    j->hosts = aorm__strdup(hosts);
    if (!j->hosts || submit(w, j) < 0) {
        job_free(j);
        return -1;
    }
    return 0;
}

void aorm__worker_free(aorm__worker *w) {
    if (!w) return;
    if (w->started) {
        pthread_mutex_lock(&w->mu);
        w->stop = true;
        pthread_cond_signal(&w->cv);
        pthread_mutex_unlock(&w->mu);
        pthread_join(w->thread, NULL);
    }
    while (w->todo_head) {
        job *j = w->todo_head;
        w->todo_head = j->next;
        job_free(j);
    }
    while (w->done) {
        job *j = w->done;
        w->done = j->next;
        job_free(j);
    }
    aorm_io_free(w->io);
    close(w->efd);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w);
}
