/* main.c -- aorm-bench: runs the benchmark workloads and prints one line of
 * figures per workload.
 *
 *   aorm-bench [--dsn DSN] [--pool N] [--repeat N] [--verbose] [--list]
 *              [workload|group ...]
 *
 * Owns the registry (assembled from the per-file arrays declared in
 * bench.h), the command line and the output format. Must not: measure
 * anything itself (each workload times only its own work), or run a
 * workload against a database without the reference data, whose figures
 * would be meaningless.
 *
 * Output, on stdout, one line per selected workload:
 *   NAME seconds=S queries=Q ops=N ops_per_s=R [key=value ...]
 * With --repeat N the best of N runs (lowest seconds) is printed. A failed
 * run prints `NAME error=REASON` on stderr and the exit status becomes 1;
 * the other workloads still run. */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#include "bench.h"

/* wl_session.c: the peer's session workloads (and raw_load_rows, their
 * libpq ceiling); wl_core.c: the peer's Core bulk loads. */
extern const bench_workload wl_session_list[];
extern const bench_workload wl_core_list[];
/* wl_loaders.c: the peer's relationship-loading workloads and their ceiling. */
extern const bench_workload wl_loaders_list[];
/* wl_redis.c: batch reads from Redis, plain hiredis and aorm_redis. */
extern const bench_workload wl_redis_list[];
/* wl_cache.c: the second-level cache against PostgreSQL and plain hiredis. */
extern const bench_workload wl_cache_list[];
/* wl_pipeline.c: a session's round trips (gets of one turn, TPC-B). Its
 * "tpcb" group needs pgbench's tables: it runs only when named (bench/tpcb). */
extern const bench_workload wl_pipeline_list[];
/* wl_stream.c: a million rows in bounded memory, next to libpq's single-row mode. */
extern const bench_workload wl_stream_list[];

/* The default run order: the ceilings first, then what is measured
 * against them. New wl_*.c files add their array here (see bench.h). */
static const bench_workload *const lists[] = {
    wl_raw_list,
    wl_engine_list,
    wl_session_list,
    wl_core_list,
    wl_loaders_list,
    wl_redis_list,
    wl_pipeline_list,
    wl_stream_list,
    wl_cache_list,
    NULL
};

#define REFERENCE_BOOKS 100000L

/* ---- helpers declared in bench.h ---------------------------------------- */

double bench_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void bench_extra(bench_out *out, const char *key, const char *fmt, ...) {
    if (out->nextra >= BENCH_MAX_EXTRA) return;
    bench_kv *kv = &out->extra[out->nextra++];
    kv->key = key;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(kv->value, sizeof(kv->value), fmt, ap);
    va_end(ap);
}

int bench_fail(bench_out *out, const char *fmt, ...) {
    if (out->error[0] != '\0') return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out->error, sizeof(out->error), fmt, ap);
    va_end(ap);
    /* One line: server messages may carry newlines. */
    size_t n = 0;
    for (char *p = out->error; *p; p++, n++)
        if (*p == '\n' || *p == '\r') *p = ' ';
    while (n > 0 && out->error[n - 1] == ' ') out->error[--n] = '\0';
    return -1;
}

/* ---- registry ----------------------------------------------------------- */

static size_t registry_count(void) {
    size_t n = 0;
    for (size_t l = 0; lists[l]; l++)
        for (const bench_workload *w = lists[l]; w->name; w++) n++;
    return n;
}

/* The i-th workload in registry order. */
static const bench_workload *registry_at(size_t i) {
    for (size_t l = 0; lists[l]; l++)
        for (const bench_workload *w = lists[l]; w->name; w++)
            if (i-- == 0) return w;
    return NULL;
}

/* FNV-1a of the name: a seed that is fixed per workload. */
static uint64_t name_seed(const char *name) {
    uint64_t h = 0xCBF29CE484222325ull;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
        h ^= *p;
        h *= 0x100000001B3ull;
    }
    return h;
}

/* ---- command line ------------------------------------------------------- */

static void usage(FILE *f) {
    fprintf(f,
            "usage: aorm-bench [--dsn DSN] [--pool N] [--repeat N] [--verbose] [--list]\n"
            "                  [workload|group ...]\n"
            "\n"
            "  --dsn DSN     libpq conninfo (default: $AORM_TEST_DSN)\n"
            "  --pool N      engine pool size (default %d)\n"
            "  --repeat N    run each workload N times, print the best (default 1)\n"
            "  --verbose     diagnostics on stderr\n"
            "  --list        list workloads and their groups, then exit\n"
            "\n"
            "Without names every workload runs, in registry order.\n",
            BENCH_DEFAULT_POOL);
}

static int parse_positive(const char *opt, const char *s, int *out) {
    char *end;
    errno = 0;
    long v = s ? strtol(s, &end, 10) : 0;
    if (!s || errno != 0 || *end != '\0' || v <= 0 || v > INT_MAX) {
        fprintf(stderr, "aorm-bench: %s needs a positive integer\n", opt);
        return -1;
    }
    *out = (int)v;
    return 0;
}

/* Marks the workloads a command-line word names: a workload name, or a
 * group (all of its members). Returns how many it matched. */
static int select_word(const char *word, const bench_workload **sel, size_t *nsel, size_t cap) {
    int matched = 0;
    for (size_t i = 0; i < registry_count(); i++) {
        const bench_workload *w = registry_at(i);
        if (strcmp(w->name, word) != 0 && strcmp(w->group, word) != 0) continue;
        matched++;
        size_t k;
        for (k = 0; k < *nsel && sel[k] != w; k++) {
        }
        if (k == *nsel && *nsel < cap) sel[(*nsel)++] = w;
    }
    return matched;
}

/* ---- reference data check ----------------------------------------------- */

/* Returns 0 when `books` holds the reference data, otherwise prints why
 * not and how to fix it. */
static int check_reference_data(const char *dsn) {
    PGconn *c = PQconnectdb(dsn);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "aorm-bench: cannot connect: %s", PQerrorMessage(c));
        PQfinish(c);
        return -1;
    }
    PGresult *r = PQexec(c, "SELECT count(*) FROM books");
    long n = -1;
    int rc = -1;
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1) {
        n = strtol(PQgetvalue(r, 0, 0), NULL, 10);
        if (n == REFERENCE_BOOKS) rc = 0;
    }
    if (rc != 0) {
        if (n < 0)
            fprintf(stderr, "aorm-bench: the reference data is not loaded (%s)",
                    PQresultErrorMessage(r));
        else
            fprintf(stderr, "aorm-bench: the reference data is not loaded (books has %ld rows, "
                            "expected %ld)\n", n, REFERENCE_BOOKS);
        fprintf(stderr, "aorm-bench: load bench/schema.sql first: run `scripts/sandbox schema` "
                        "(or start the sandbox with `scripts/sandbox start --schema`)\n");
    }
    PQclear(r);
    PQfinish(c);
    return rc;
}

/* ---- running ------------------------------------------------------------ */

static void print_line(const char *name, const bench_out *o) {
    double rate = o->seconds > 0 ? (double)o->ops / o->seconds : 0.0;
    printf("%s seconds=%.4f queries=%llu ops=%llu ops_per_s=%.0f", name, o->seconds,
           (unsigned long long)o->queries, (unsigned long long)o->ops, round(rate));
    for (int i = 0; i < o->nextra; i++) printf(" %s=%s", o->extra[i].key, o->extra[i].value);
    putchar('\n');
    fflush(stdout);
}

/* Runs w `repeat` times and prints the best run. Returns 0, or -1 after
 * printing the error of the first failed run (later runs are skipped). */
static int run_workload(const bench_workload *w, const char *dsn, int pool, int repeat, int verbose) {
    bench_out best;
    int have_best = 0;
    for (int i = 0; i < repeat; i++) {
        bench_ctx ctx = {.dsn = dsn, .pool_size = pool, .verbose = verbose};
        bench_rng_seed(&ctx.rng, name_seed(w->name));
        bench_out o;
        memset(&o, 0, sizeof(o));
        int rc = w->run(&ctx, &o);
        if (rc != 0) {
            fprintf(stderr, "%s error=%s\n", w->name, o.error[0] ? o.error : "failed");
            return -1;
        }
        if (verbose)
            fprintf(stderr, "aorm-bench: %s run %d/%d: %.4f s\n", w->name, i + 1, repeat, o.seconds);
        if (!have_best || o.seconds < best.seconds) {
            best = o;
            have_best = 1;
        }
    }
    print_line(w->name, &best);
    return 0;
}

int main(int argc, char **argv) {
    const char *dsn = getenv("AORM_TEST_DSN");
    int pool = BENCH_DEFAULT_POOL, repeat = 1, verbose = 0, list = 0;
    size_t total = registry_count();
    const bench_workload **sel = calloc(total ? total : 1, sizeof(*sel));
    size_t nsel = 0;
    int named = 0;
    if (!sel) {
        fprintf(stderr, "aorm-bench: out of memory\n");
        return 1;
    }

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--dsn") == 0) {
            if (++i >= argc) {
                fprintf(stderr, "aorm-bench: --dsn needs a value\n");
                return 2;
            }
            dsn = argv[i];
        } else if (strcmp(a, "--pool") == 0) {
            if (parse_positive(a, i + 1 < argc ? argv[++i] : NULL, &pool) != 0) return 2;
        } else if (strcmp(a, "--repeat") == 0) {
            if (parse_positive(a, i + 1 < argc ? argv[++i] : NULL, &repeat) != 0) return 2;
        } else if (strcmp(a, "--list") == 0) {
            list = 1;
        } else if (strcmp(a, "--verbose") == 0 || strcmp(a, "-v") == 0) {
            verbose++;
        } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (a[0] == '-') {
            fprintf(stderr, "aorm-bench: unknown option %s\n", a);
            usage(stderr);
            return 2;
        } else {
            named = 1;
            if (select_word(a, sel, &nsel, total) == 0) {
                fprintf(stderr, "aorm-bench: no workload or group named '%s' (see --list)\n", a);
                return 2;
            }
        }
    }

    if (list) {
        for (size_t i = 0; i < total; i++) {
            const bench_workload *w = registry_at(i);
            printf("%-24s %s\n", w->name, w->group);
        }
        free(sel);
        return 0;
    }
    if (!named)
        for (size_t i = 0; i < total; i++)
            if (strcmp(registry_at(i)->group, "tpcb") != 0) sel[nsel++] = registry_at(i);

    if (!dsn || !*dsn) {
        fprintf(stderr, "aorm-bench: no database: pass --dsn or set AORM_TEST_DSN "
                        "(eval \"$(scripts/sandbox start --schema)\")\n");
        free(sel);
        return 2;
    }
    if (check_reference_data(dsn) != 0) {
        free(sel);
        return 1;
    }

    int status = 0;
    for (size_t i = 0; i < nsel; i++)
        if (run_workload(sel[i], dsn, pool, repeat, verbose) != 0) status = 1;
    free(sel);
    return status;
}
