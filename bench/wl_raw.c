/* wl_raw.c -- the ceilings: the engine's workloads done with plain,
 * blocking libpq and nothing of aorm.
 *
 * These are what a hand-written C client gets from the same server on the
 * same machine, so that aorm's figures can be read as ratios to them
 * (scripts/bench-ratios). Each does the same work as its engine twin:
 * same SQL, binary parameters and results, each row decoded into a struct
 * and checked. Must not: use any aorm code, or time its set-up (connect,
 * prepare, truncate).
 *
 *   raw_pk_seq        one lookup at a time: PQexecPrepared x 5,000
 *   raw_pk_pipelined  pipeline mode, 100 lookups per sync, 50,000 in all
 *   raw_copy          COPY ... FROM STDIN (FORMAT binary) of 100,000 rows */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "bench.h"

#define PK_SQL "SELECT id, name, born FROM authors WHERE id = $1"
#define PK_STMT "bench_pk"
#define PK_AUTHORS 10000
#define PK_SEQ_N 5000
#define PK_PIPE_N 50000
#define PK_PIPE_BATCH 100

#define COPY_SQL "COPY bulk_books (author_id, title, year, price) FROM STDIN (FORMAT binary)"
#define COPY_ROWS 100000
#define COPY_CHUNK 65536

#define OID_INT8 20

/* ---- binary wire helpers ------------------------------------------------ */

static void put_be16(unsigned char *p, uint16_t v) {
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

static void put_be32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static void put_be64(unsigned char *p, uint64_t v) {
    put_be32(p, (uint32_t)(v >> 32));
    put_be32(p + 4, (uint32_t)v);
}

static uint32_t get_be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static uint64_t get_be64(const unsigned char *p) {
    return (uint64_t)get_be32(p) << 32 | get_be32(p + 4);
}

/* ---- connections -------------------------------------------------------- */

static PGconn *raw_connect(bench_ctx *ctx, bench_out *out) {
    PGconn *c = PQconnectdb(ctx->dsn);
    if (PQstatus(c) != CONNECTION_OK) {
        bench_fail(out, "connect: %s", PQerrorMessage(c));
        PQfinish(c);
        return NULL;
    }
    return c;
}

/* Runs a statement that returns no rows. Returns 0 or bench_fail(). */
static int raw_command(PGconn *c, const char *sql, bench_out *out) {
    PGresult *r = PQexec(c, sql);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok) bench_fail(out, "%s: %s", sql, PQresultErrorMessage(r));
    PQclear(r);
    return ok ? 0 : -1;
}

static int raw_prepare_pk(PGconn *c, bench_out *out) {
    const Oid types[1] = {OID_INT8};
    PGresult *r = PQprepare(c, PK_STMT, PK_SQL, 1, types);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok) bench_fail(out, "prepare: %s", PQresultErrorMessage(r));
    PQclear(r);
    return ok ? 0 : -1;
}

/* ---- primary-key lookups ------------------------------------------------ */

/* One decoded row of authors. name points into the PGresult. */
typedef struct raw_author {
    int64_t id;
    const char *name;
    int name_len;
    int32_t born;
    int born_null;
} raw_author;

/* Decodes the single row of a binary lookup result into *a and checks it
 * is author `want`. Returns 0 or bench_fail(). */
static int decode_author(const PGresult *r, int64_t want, raw_author *a, bench_out *out) {
    if (PQresultStatus(r) != PGRES_TUPLES_OK)
        return bench_fail(out, "lookup %lld: %s", (long long)want, PQresultErrorMessage(r));
    if (PQntuples(r) != 1 || PQnfields(r) != 3)
        return bench_fail(out, "lookup %lld: %d rows of %d columns", (long long)want, PQntuples(r),
                          PQnfields(r));
    if (PQgetisnull(r, 0, 0) || PQgetlength(r, 0, 0) != 8)
        return bench_fail(out, "lookup %lld: bad id value", (long long)want);
    a->id = (int64_t)get_be64((const unsigned char *)PQgetvalue(r, 0, 0));
    if (PQgetisnull(r, 0, 1)) return bench_fail(out, "lookup %lld: NULL name", (long long)want);
    a->name = PQgetvalue(r, 0, 1);
    a->name_len = PQgetlength(r, 0, 1);
    a->born_null = PQgetisnull(r, 0, 2);
    a->born = 0;
    if (!a->born_null) {
        if (PQgetlength(r, 0, 2) != 4)
            return bench_fail(out, "lookup %lld: bad born value", (long long)want);
        a->born = (int32_t)get_be32((const unsigned char *)PQgetvalue(r, 0, 2));
    }
    if (a->id != want || a->name_len <= 0)
        return bench_fail(out, "lookup %lld: got author %lld", (long long)want, (long long)a->id);
    return 0;
}

/* 5,000 lookups, each waiting for its answer before the next is sent:
 * one network round trip per lookup. */
static int run_raw_pk_seq(bench_ctx *ctx, bench_out *out) {
    PGconn *c = raw_connect(ctx, out);
    if (!c) return -1;
    int rc = raw_prepare_pk(c, out);
    bench_rng_seed(&ctx->rng, BENCH_SEED_PK);

    unsigned char param[8];
    const char *values[1] = {(const char *)param};
    const int lengths[1] = {8};
    const int formats[1] = {1};
    double t0 = bench_now();
    for (int i = 0; rc == 0 && i < PK_SEQ_N; i++) {
        int64_t id = bench_rng_range(&ctx->rng, 1, PK_AUTHORS);
        put_be64(param, (uint64_t)id);
        PGresult *r = PQexecPrepared(c, PK_STMT, 1, values, lengths, formats, 1);
        raw_author a;
        rc = decode_author(r, id, &a, out);
        PQclear(r);
    }
    out->seconds = bench_now() - t0;
    out->ops = PK_SEQ_N;
    out->queries = PK_SEQ_N;
    PQfinish(c);
    return rc;
}

/* 50,000 lookups on one connection in pipeline mode, PK_PIPE_BATCH per
 * sync. Blocking mode is enough because each batch is read in full before
 * the next is sent: a batch's queries and its results (a few KiB each way)
 * fit in the socket buffers, so neither side can stall on a full buffer. */
static int run_raw_pk_pipelined(bench_ctx *ctx, bench_out *out) {
    PGconn *c = raw_connect(ctx, out);
    if (!c) return -1;
    int rc = raw_prepare_pk(c, out);
    if (rc == 0 && PQenterPipelineMode(c) != 1)
        rc = bench_fail(out, "PQenterPipelineMode: %s", PQerrorMessage(c));
    bench_rng_seed(&ctx->rng, BENCH_SEED_PK);

    unsigned char params[PK_PIPE_BATCH][8];
    int64_t ids[PK_PIPE_BATCH];
    const int lengths[1] = {8};
    const int formats[1] = {1};
    double t0 = bench_now();
    for (int done = 0; rc == 0 && done < PK_PIPE_N; done += PK_PIPE_BATCH) {
        for (int k = 0; rc == 0 && k < PK_PIPE_BATCH; k++) {
            ids[k] = bench_rng_range(&ctx->rng, 1, PK_AUTHORS);
            put_be64(params[k], (uint64_t)ids[k]);
            const char *values[1] = {(const char *)params[k]};
            if (PQsendQueryPrepared(c, PK_STMT, 1, values, lengths, formats, 1) != 1)
                rc = bench_fail(out, "PQsendQueryPrepared: %s", PQerrorMessage(c));
        }
        if (rc == 0 && PQpipelineSync(c) != 1)
            rc = bench_fail(out, "PQpipelineSync: %s", PQerrorMessage(c));
        /* Each query's result is followed by a NULL that ends it; the
         * batch ends with the PGRES_PIPELINE_SYNC result. */
        for (int k = 0; rc == 0 && k < PK_PIPE_BATCH; k++) {
            PGresult *r = PQgetResult(c);
            raw_author a;
            rc = r ? decode_author(r, ids[k], &a, out)
                   : bench_fail(out, "pipeline: missing result: %s", PQerrorMessage(c));
            PQclear(r);
            if (rc == 0 && (r = PQgetResult(c)) != NULL) {
                rc = bench_fail(out, "pipeline: unexpected result %s", PQresStatus(PQresultStatus(r)));
                PQclear(r);
            }
        }
        if (rc == 0) {
            PGresult *r = PQgetResult(c);
            if (PQresultStatus(r) != PGRES_PIPELINE_SYNC)
                rc = bench_fail(out, "pipeline: expected a sync, got %s: %s",
                                PQresStatus(PQresultStatus(r)), PQerrorMessage(c));
            PQclear(r);
        }
    }
    out->seconds = bench_now() - t0;
    out->ops = PK_PIPE_N;
    out->queries = PK_PIPE_N;
    bench_extra(out, "batch", "%d", PK_PIPE_BATCH);
    PQfinish(c);
    return rc;
}

/* ---- COPY --------------------------------------------------------------- */

/* Appends row i of the bulk_books load (the peer's copy_bulk_insert:
 * author_id 1 + i % 10000, title "b<i>", year 2000, price 1.5) in binary
 * COPY format. Returns the bytes written; buf needs 64 bytes free. */
static size_t copy_row(unsigned char *buf, int i) {
    unsigned char *p = buf;
    char title[16];
    int tlen = snprintf(title, sizeof(title), "b%d", i);
    double price = 1.5;
    uint64_t pbits;
    memcpy(&pbits, &price, sizeof(pbits));

    put_be16(p, 4);
    p += 2;
    put_be32(p, 8);
    put_be64(p + 4, (uint64_t)(1 + i % 10000));
    p += 12;
    put_be32(p, (uint32_t)tlen);
    memcpy(p + 4, title, (size_t)tlen);
    p += 4 + tlen;
    put_be32(p, 4);
    put_be32(p + 4, 2000);
    p += 8;
    put_be32(p, 8);
    put_be64(p + 4, pbits);
    p += 12;
    return (size_t)(p - buf);
}

#define COPY_ROW_MAX 64

static int copy_put(PGconn *c, const unsigned char *buf, size_t len, bench_out *out) {
    if (PQputCopyData(c, (const char *)buf, (int)len) != 1)
        return bench_fail(out, "PQputCopyData: %s", PQerrorMessage(c));
    return 0;
}

/* 100,000 rows through binary COPY, sent in 64 KiB chunks. */
static int run_raw_copy(bench_ctx *ctx, bench_out *out) {
    PGconn *c = raw_connect(ctx, out);
    if (!c) return -1;
    int rc = raw_command(c, "TRUNCATE bulk_books", out);
    unsigned char *buf = malloc(COPY_CHUNK);
    if (rc == 0 && !buf) rc = bench_fail(out, "out of memory");

    double t0 = bench_now();
    if (rc == 0) {
        PGresult *r = PQexec(c, COPY_SQL);
        if (PQresultStatus(r) != PGRES_COPY_IN)
            rc = bench_fail(out, "%s: %s", COPY_SQL, PQresultErrorMessage(r));
        PQclear(r);
    }
    if (rc == 0) {
        /* Header: signature, flags (no OIDs), header extension length. */
        size_t len = 0;
        memcpy(buf, "PGCOPY\n\377\r\n\0", 11);
        put_be32(buf + 11, 0);
        put_be32(buf + 15, 0);
        len = 19;
        for (int i = 0; rc == 0 && i < COPY_ROWS; i++) {
            if (len + COPY_ROW_MAX > COPY_CHUNK) {
                rc = copy_put(c, buf, len, out);
                len = 0;
            }
            len += copy_row(buf + len, i);
        }
        put_be16(buf + len, 0xFFFF); /* trailer: field count -1 */
        len += 2;
        if (rc == 0) rc = copy_put(c, buf, len, out);
        /* End the COPY even after a failure, so the connection is clean. */
        if (PQputCopyEnd(c, rc == 0 ? NULL : "aborted by aorm-bench") != 1 && rc == 0)
            rc = bench_fail(out, "PQputCopyEnd: %s", PQerrorMessage(c));
        PGresult *r;
        while ((r = PQgetResult(c)) != NULL) {
            if (rc == 0) {
                if (PQresultStatus(r) != PGRES_COMMAND_OK)
                    rc = bench_fail(out, "COPY: %s", PQresultErrorMessage(r));
                else if (strtol(PQcmdTuples(r), NULL, 10) != COPY_ROWS)
                    rc = bench_fail(out, "COPY loaded %s rows, expected %d", PQcmdTuples(r), COPY_ROWS);
            }
            PQclear(r);
        }
    }
    out->seconds = bench_now() - t0;
    out->ops = COPY_ROWS;
    out->queries = 1;
    free(buf);
    PQfinish(c);
    return rc;
}

const bench_workload wl_raw_list[] = {
    {"raw_pk_seq", "raw", run_raw_pk_seq},
    {"raw_pk_pipelined", "raw", run_raw_pk_pipelined},
    {"raw_copy", "raw", run_raw_copy},
    {NULL, NULL, NULL}
};
