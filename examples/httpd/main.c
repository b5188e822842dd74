/* main.c -- aorm-httpd: options, the listening sockets, the worker
 * threads and the signals.
 *
 * Workers are threads, one per core by default, each with its own libev
 * loop, aorm loop and engine (aorm's rule: one loop, one thread; nothing
 * is shared between workers, so no lock is on any request's path). Each
 * worker has its own listening socket on the same address (SO_REUSEPORT):
 * the kernel spreads the connections. Threads rather than processes:
 * one process to start, stop, trace and check for leaks, one signal
 * handling point (the main thread waits for SIGTERM/SIGINT with
 * sigwait(), every worker has them blocked), and one address space whose
 * worker structures the main thread can reach to stop them.
 *
 * Stop: SIGTERM or SIGINT -> every worker is told (ev_async) -> each stops
 * accepting, finishes or, after --shutdown-grace, cancels its in-flight
 * requests, frees sessions, engine and loops -> the threads are joined ->
 * exit 0. */
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: aorm-httpd [options]\n"
            "  --host H             address to listen on (127.0.0.1)\n"
            "  --port P             port (8080)\n"
            "  --workers N          worker threads, one loop and engine each (0: one per core)\n"
            "  --dsn DSN            PostgreSQL conninfo (else $AORM_HTTPD_DSN, else $AORM_TEST_DSN)\n"
            "  --pool N             engine connections per worker (8)\n"
            "  --overflow N         extra connections per worker under load (= --pool)\n"
            "  --pool-timeout S     wait for a pooled connection before 503 (2)\n"
            "  --deadline S         deadline of each bookstore statement before 504 (5; 0 none)\n"
            "  --redis HOST:PORT    Redis for /cached-queries (else $AORM_TEST_REDIS; user and password\n"
            "                       from $AORM_TEST_REDIS_USER, $AORM_TEST_REDIS_PASSWORD); 'off': none\n"
            "  --near-cache N       world rows kept in each worker's memory too (10000; 0: Redis only)\n"
            "  --access-log PATH    one JSON line per request; '-' for stdout, 'off' (default)\n"
            "  --max-body BYTES     largest request body (1048576)\n"
            "  --max-headers N      most header fields of a request (64)\n"
            "  --max-header-bytes B request line and headers (16384)\n"
            "  --idle-timeout S     close a keep-alive connection idle this long (30)\n"
            "  --request-timeout S  a request not received (or answer not read) in this time: 408/close (10)\n"
            "  --shutdown-grace S   on SIGTERM, in-flight requests get this long (10)\n"
            "  --engine-only        /db and /queries from raw engine calls (the ceiling of the bench)\n");
}

static double parse_seconds(const char *s, const char *opt) {
    char *end;
    double v = strtod(s, &end);
    if (*end || v < 0) {
        fprintf(stderr, "aorm-httpd: %s: not a number of seconds: %s\n", opt, s);
        exit(2);
    }
    return v;
}

static long parse_count(const char *s, const char *opt, long min) {
    char *end;
    long v = strtol(s, &end, 10);
    if (*end || !*s || v < min) {
        fprintf(stderr, "aorm-httpd: %s: expected an integer >= %ld: %s\n", opt, min, s);
        exit(2);
    }
    return v;
}

static int listen_on(const char *host, int port) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    int rc = getaddrinfo(host, ps, &hints, &ai);
    if (rc) {
        fprintf(stderr, "aorm-httpd: %s: %s\n", host, gai_strerror(rc));
        return -1;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0 ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 1024) < 0) {
        fprintf(stderr, "aorm-httpd: cannot listen on %s:%d: %s\n", host, port, strerror(errno));
        if (fd >= 0) close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    return fd;
}

typedef struct start {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int ready, failed;
} start;

typedef struct thread_arg {
    worker *w;
    start *st;
    int running; /* init succeeded: the worker takes worker_stop() (under st->mu) */
} thread_arg;

static void *worker_thread(void *p) {
    thread_arg *a = p;
    worker *w = a->w;
    int rc = worker_init(w);
    pthread_mutex_lock(&a->st->mu);
    if (rc < 0) a->st->failed++;
    else a->st->ready++;
    if (rc == 0) a->running = 1;
    pthread_cond_signal(&a->st->cv);
    pthread_mutex_unlock(&a->st->mu);
    worker_run(w, rc == 0); /* after a failed init: frees what it made */
    return NULL;
}

int main(int argc, char **argv) {
    config cfg = {
        .host = "127.0.0.1", .port = 8080, .workers = 0, .pool = 8, .max_header_bytes = 16384,
        .max_headers = 64, .max_body = 1 << 20, .max_pipeline = 64, .idle_timeout = 30, .request_timeout = 10,
        .deadline = 5, .pool_timeout = 2, .shutdown_grace = 10, .near_cache = 10000,
    };
    int overflow = -1;
    const char *access_log = "off";
    enum { O_HOST = 1, O_PORT, O_WORKERS, O_DSN, O_POOL, O_OVERFLOW, O_POOL_TIMEOUT, O_DEADLINE, O_REDIS,
           O_ACCESS_LOG, O_MAX_BODY, O_MAX_HEADERS, O_MAX_HEADER_BYTES, O_IDLE, O_REQUEST, O_GRACE, O_ENGINE_ONLY,
           O_NEAR, O_HELP };
    static const struct option opts[] = {
        {"host", required_argument, 0, O_HOST}, {"port", required_argument, 0, O_PORT},
        {"workers", required_argument, 0, O_WORKERS}, {"dsn", required_argument, 0, O_DSN},
        {"pool", required_argument, 0, O_POOL}, {"overflow", required_argument, 0, O_OVERFLOW},
        {"pool-timeout", required_argument, 0, O_POOL_TIMEOUT}, {"deadline", required_argument, 0, O_DEADLINE},
        {"redis", required_argument, 0, O_REDIS}, {"access-log", required_argument, 0, O_ACCESS_LOG},
        {"max-body", required_argument, 0, O_MAX_BODY}, {"max-headers", required_argument, 0, O_MAX_HEADERS},
        {"max-header-bytes", required_argument, 0, O_MAX_HEADER_BYTES},
        {"idle-timeout", required_argument, 0, O_IDLE}, {"request-timeout", required_argument, 0, O_REQUEST},
        {"shutdown-grace", required_argument, 0, O_GRACE}, {"engine-only", no_argument, 0, O_ENGINE_ONLY},
        {"near-cache", required_argument, 0, O_NEAR},
        {"help", no_argument, 0, O_HELP}, {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (o) {
        case O_HOST: cfg.host = optarg; break;
        case O_PORT: cfg.port = (int)parse_count(optarg, "--port", 0); break;
        case O_WORKERS: cfg.workers = (int)parse_count(optarg, "--workers", 0); break;
        case O_DSN: cfg.dsn = optarg; break;
        case O_POOL: cfg.pool = (int)parse_count(optarg, "--pool", 1); break;
        case O_OVERFLOW: overflow = (int)parse_count(optarg, "--overflow", 0); break;
        case O_POOL_TIMEOUT: cfg.pool_timeout = parse_seconds(optarg, "--pool-timeout"); break;
        case O_DEADLINE: cfg.deadline = parse_seconds(optarg, "--deadline"); break;
        case O_REDIS: cfg.redis = optarg; break;
        case O_ACCESS_LOG: access_log = optarg; break;
        case O_MAX_BODY: cfg.max_body = (size_t)parse_count(optarg, "--max-body", 0); break;
        case O_MAX_HEADERS: cfg.max_headers = (int)parse_count(optarg, "--max-headers", 1); break;
        case O_MAX_HEADER_BYTES: cfg.max_header_bytes = (size_t)parse_count(optarg, "--max-header-bytes", 64); break;
        case O_IDLE: cfg.idle_timeout = parse_seconds(optarg, "--idle-timeout"); break;
        case O_REQUEST: cfg.request_timeout = parse_seconds(optarg, "--request-timeout"); break;
        case O_GRACE: cfg.shutdown_grace = parse_seconds(optarg, "--shutdown-grace"); break;
        case O_ENGINE_ONLY: cfg.engine_only = true; break;
        case O_NEAR: cfg.near_cache = (int)parse_count(optarg, "--near-cache", 0); break;
        case O_HELP:
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) { usage(stderr); return 2; }
    cfg.overflow = overflow < 0 ? cfg.pool : overflow;
    if (!cfg.dsn) cfg.dsn = getenv("AORM_HTTPD_DSN");
    if (!cfg.dsn) cfg.dsn = getenv("AORM_TEST_DSN");
    if (!cfg.dsn) {
        fprintf(stderr, "aorm-httpd: no database: give --dsn or set AORM_HTTPD_DSN\n");
        return 2;
    }
    if (!cfg.redis) cfg.redis = getenv("AORM_TEST_REDIS");
    if (cfg.redis && (!*cfg.redis || strcmp(cfg.redis, "off") == 0)) cfg.redis = NULL;
    cfg.redis_user = getenv("AORM_TEST_REDIS_USER");
    cfg.redis_password = getenv("AORM_TEST_REDIS_PASSWORD");
    if (cfg.workers == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        cfg.workers = n > 0 ? (int)n : 1;
    }
    if (strcmp(access_log, "off") == 0) cfg.access_log = NULL;
    else if (strcmp(access_log, "-") == 0) cfg.access_log = stdout;
    else if (!(cfg.access_log = fopen(access_log, "a"))) {
        fprintf(stderr, "aorm-httpd: %s: %s\n", access_log, strerror(errno));
        return 2;
    }
    if (cfg.access_log) setvbuf(cfg.access_log, NULL, _IOLBF, 0); /* whole lines, one write each */

    /* SIGTERM and SIGINT are taken by sigwait() below: blocked in every
     * thread (the workers inherit the mask); SIGPIPE is not wanted at all */
    signal(SIGPIPE, SIG_IGN);
    json_object_seed(0); /* jansson's hash seed, once, before any worker makes an object */
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGTERM);
    sigaddset(&stop_signals, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);

    worker *ws = calloc((size_t)cfg.workers, sizeof *ws);
    thread_arg *args = calloc((size_t)cfg.workers, sizeof *args);
    pthread_t *th = calloc((size_t)cfg.workers, sizeof *th);
    start st = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    if (!ws || !args || !th) { fprintf(stderr, "aorm-httpd: out of memory\n"); return 1; }
    int started = 0, status = 0;
    for (int i = 0; i < cfg.workers; i++) {
        ws[i] = (worker){.index = i, .cfg = &cfg, .lfd = listen_on(cfg.host, cfg.port)};
        if (ws[i].lfd < 0) { status = 1; break; }
        args[i] = (thread_arg){.w = &ws[i], .st = &st};
        if (pthread_create(&th[i], NULL, worker_thread, &args[i]) != 0) {
            close(ws[i].lfd);
            status = 1;
            break;
        }
        started++;
    }
    pthread_mutex_lock(&st.mu);
    while (st.ready + st.failed < started) pthread_cond_wait(&st.cv, &st.mu);
    if (st.failed) status = 1;
    pthread_mutex_unlock(&st.mu);

    if (status == 0) {
        fprintf(stderr, "aorm-httpd: listening on %s:%d (%d workers%s)\n", cfg.host, cfg.port, cfg.workers,
                cfg.engine_only ? ", engine only" : "");
        int sig;
        sigwait(&stop_signals, &sig);
        fprintf(stderr, "aorm-httpd: %s: stopping\n", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    }
    for (int i = 0; i < started; i++)
        if (args[i].running) worker_stop(&ws[i]);
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
    if (cfg.access_log && cfg.access_log != stdout) fclose(cfg.access_log);
    else if (cfg.access_log) fflush(stdout);
    free(ws);
    free(args);
    free(th);
    if (status == 0) fprintf(stderr, "aorm-httpd: stopped\n");
    return status;
}
