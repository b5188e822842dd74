/* test_copy.c -- how the COPY pump hands a fill's data to libpq
 * (src/async_engine/copy.c). PQputCopyData() takes an int length, so a
 * fill of more than INT_MAX bytes must go out in pieces; it used to be
 * cut by an (int) cast, silently. The piece arithmetic is checked at
 * sizes past 4 GiB without allocating them, and the pump itself with a
 * piece size lowered to a few bytes (aorm__copy_set_chunk_max), against
 * the sandbox PostgreSQL: every byte of every row must arrive. */
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "support.h"

#include "async_engine/copy_int.h"

#define WAIT 30.0

/* ==========================================================================
 * Piece arithmetic
 * ========================================================================== */

Test(copy, pieces_cover_a_buffer_past_int_max, .timeout = 10) {
    const size_t sizes[] = {0, 1, (size_t)INT_MAX, (size_t)INT_MAX + 1, (size_t)INT_MAX * 2 + 5,
                            (size_t)5 << 30, (size_t)1 << 40};
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        size_t len = sizes[k], sent = 0, pieces = 0;
        while (sent < len) {
            size_t p = aorm__copy_piece(len, sent, INT_MAX);
            cr_assert(p > 0 && p <= (size_t)INT_MAX, "piece of %zu bytes", p);
            sent += p;
            pieces++;
        }
        cr_assert_eq(sent, len, "pieces of a %zu-byte buffer add up to %zu", len, sent);
        cr_assert_eq(pieces, (len + INT_MAX - 1) / INT_MAX, "%zu pieces for %zu bytes", pieces, len);
    }
    cr_assert_eq(aorm__copy_piece(10, 4, 3), 3);
    cr_assert_eq(aorm__copy_piece(10, 8, 3), 2);
    cr_assert_eq(aorm__copy_piece(10, 10, 3), 0);
}

/* ==========================================================================
 * The pump, with small pieces, against the server
 * ========================================================================== */

typedef struct env {
    struct ev_loop *evl;
    aorm_loop *loop;
    aorm_engine *e;
    PGconn *pg;
} env;

static void env_open(env *t) {
    memset(t, 0, sizeof(*t));
    t_loop_open(&t->evl, &t->loop);
    t->e = t_engine(t->loop, NULL);
    t->pg = t_pg();
}

static void env_close(env *t) {
    aorm_engine_free(t->e);
    t_loop_close(&t->evl, &t->loop);
    PQfinish(t->pg);
}

typedef struct src {
    size_t piece;       /* piece size to set on the first call */
    int rows;           /* rows to send, all in the first fill */
    size_t blob;        /* bytes of the bytea of row 0 */
    int calls;
    size_t first_fill;  /* bytes buffered by the first fill */
    int64_t sum_id;
    int64_t name_bytes;
    t_rec done;         /* the reply */
} src;

static int fill(aorm_copy *cp, void *user) {
    src *s = user;
    if (s->calls++ > 0) return -1; /* everything went in the first call: never asked again */
    aorm__copy_set_chunk_max(cp, s->piece);
    for (int i = 0; i < s->rows; i++) {
        cr_assert_eq(aorm_copy_row(cp, 3), 0);
        cr_assert_eq(aorm_copy_int8(cp, i + 1), 0);
        s->sum_id += i + 1;
        char name[64];
        int n = snprintf(name, sizeof(name), "row %d caf\xc3\xa9 %*s", i, i % 17, "");
        cr_assert_eq(aorm_copy_text(cp, name, (size_t)n), 0);
        s->name_bytes += n;
        if (i == 0) {
            uint8_t *b = malloc(s->blob);
            cr_assert_not_null(b);
            for (size_t k = 0; k < s->blob; k++) b[k] = (uint8_t)(k * 131 + 7);
            cr_assert_eq(aorm_copy_bytea(cp, b, s->blob), 0);
            free(b);
        } else {
            cr_assert_eq(aorm_copy_null(cp), 0);
        }
    }
    s->first_fill = aorm_copy_buffered(cp);
    return 0;
}

/* One COPY of s->rows rows in one fill, handed over in s->piece-byte
 * pieces; then what the table holds is checked by the server. */
static void copy_in_pieces(env *t, src *s, const char *table) {
    char sql[256];
    snprintf(sql, sizeof(sql), "DROP TABLE IF EXISTS %s; CREATE TABLE %s (id int8, name text, blob bytea)", table,
             table);
    free(t_pg_exec(t->pg, sql));
    snprintf(sql, sizeof(sql), "COPY %s (id, name, blob) FROM STDIN (FORMAT binary)", table);
    cr_assert_eq(aorm_engine_copy(t->e, sql, fill, s, t_rec_on_result, &s->done), 0);
    cr_assert(t_run_until(t->evl, &s->done.calls, WAIT), "the COPY did not finish within %.0f s", WAIT);
    cr_assert_eq(s->done.calls, 1);
    cr_assert_eq(s->done.code, 0, "COPY failed: %s %s", s->done.sqlstate, s->done.msg);
    cr_assert_eq(s->done.affected, s->rows, "COPY reported %" PRId64 " rows of %d", s->done.affected, s->rows);
    cr_assert_eq(s->calls, 1, "fill called %d times (once: it returned 0, done)", s->calls);
    cr_assert_gt(s->first_fill, 100 * s->piece, "the fill must span many pieces (%zu bytes)", s->first_fill);

    snprintf(sql, sizeof(sql),
             "SELECT count(*), sum(id), sum(octet_length(name)), count(blob), "
             "coalesce(max(octet_length(blob)), 0) FROM %s",
             table);
    PGresult *r = PQexec(t->pg, sql);
    cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQerrorMessage(t->pg));
    cr_assert_eq(strtoll(PQgetvalue(r, 0, 0), NULL, 10), s->rows, "rows");
    cr_assert_eq(strtoll(PQgetvalue(r, 0, 1), NULL, 10), s->sum_id, "sum(id)");
    cr_assert_eq(strtoll(PQgetvalue(r, 0, 2), NULL, 10), s->name_bytes, "bytes of name");
    cr_assert_eq(strtoll(PQgetvalue(r, 0, 3), NULL, 10), 1, "one blob");
    cr_assert_eq((size_t)strtoll(PQgetvalue(r, 0, 4), NULL, 10), s->blob, "blob length");
    PQclear(r);
    /* the blob's bytes, each where it was put */
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM %s, generate_series(0, octet_length(blob) - 1) k "
             "WHERE get_byte(blob, k) <> (k * 131 + 7) %% 256",
             table);
    cr_assert_eq(t_pg_long(t->pg, sql), 0, "blob bytes differ");
    snprintf(sql, sizeof(sql), "DROP TABLE %s", table);
    free(t_pg_exec(t->pg, sql));
}

/* Pieces of 7 bytes: every field and row boundary falls inside some piece. */
Test(copy, one_fill_in_seven_byte_pieces, .timeout = 60) {
    env t;
    env_open(&t);
    src s = {.piece = 7, .rows = 3000, .blob = 20000};
    copy_in_pieces(&t, &s, "copy_pieces_7");
    env_close(&t);
}

/* A piece size near the socket buffer's, with a blob of a few pieces. */
Test(copy, one_fill_in_64k_pieces, .timeout = 60) {
    env t;
    env_open(&t);
    src s = {.piece = 65536 + 3, .rows = 200000, .blob = 300000};
    copy_in_pieces(&t, &s, "copy_pieces_64k");
    env_close(&t);
}
