/* copy.c -- COPY FROM STDIN in PostgreSQL's binary format, streamed
 * without blocking the loop.
 *
 * The caller's fill callback appends rows to an aorm_copy buffer; the pump
 * hands the buffer to libpq (PQputCopyData), flushes what the socket takes
 * and asks for more rows only once the previous chunk is written, so
 * memory stays bounded by one chunk whatever the number of rows. COPY
 * cannot run in pipeline mode: the connection leaves it for the COPY and
 * re-enters it when the COPY's result has been read (conn.c).
 *
 * A chunk may be larger than PQputCopyData() takes in one call (its
 * length is an int): it is handed over in pieces of at most chunk_max
 * bytes (INT_MAX; tests lower it through copy_int.h), the offset of the
 * next piece kept in `sent`, so no byte is lost or cut whatever one fill
 * appends.
 * Owns: the buffer. */
#include <limits.h>
#include <stdio.h>

#include "async_engine/copy_int.h"
#include "async_engine/engine_int.h"

struct aorm_copy {
    aorm__buf buf;
    size_t sent;      /* bytes of buf already handed to libpq */
    size_t chunk_max; /* most bytes per PQputCopyData() call */
    bool done;        /* the fill callback said there is nothing more */
    bool failed;      /* fill aborted or a writer failed: end with an error */
    int error;        /* first writer error */
    const char *abort_msg;
};

static const char copy_header[19] = "PGCOPY\n\377\r\n\0\0\0\0\0\0\0\0\0";

aorm_copy *aorm__copy_new(void) {
    aorm_copy *cp = calloc(1, sizeof(*cp));
    if (!cp) return NULL;
    cp->chunk_max = INT_MAX;
    if (aorm__buf_append(&cp->buf, copy_header, sizeof(copy_header)) < 0) {
        free(cp);
        return NULL;
    }
    return cp;
}

void aorm__copy_free(aorm_copy *cp) {
    if (!cp) return;
    aorm__buf_free(&cp->buf);
    free(cp);
}

size_t aorm_copy_buffered(const aorm_copy *cp) { return cp ? cp->buf.len - cp->sent : 0; }

void aorm__copy_set_chunk_max(aorm_copy *cp, size_t max) {
    if (cp) cp->chunk_max = max == 0 || max > INT_MAX ? INT_MAX : max;
}

size_t aorm__copy_piece(size_t len, size_t sent, size_t max) {
    size_t left = len - sent;
    return left < max ? left : max;
}

static int put(aorm_copy *cp, const void *p, size_t n) {
    if (cp->error) return cp->error;
    if (aorm__buf_append(&cp->buf, p, n) < 0) return cp->error = AORM_ENOMEM;
    return 0;
}

static int field(aorm_copy *cp, const void *p, size_t n) {
    if (!cp) return AORM_EMISUSE;
    if (n > INT32_MAX) return cp->error = AORM_ERANGE;
    if (cp->error) return cp->error;
    if (aorm__buf_reserve(&cp->buf, 4 + n) < 0) return cp->error = AORM_ENOMEM;
    aorm__put_be32(cp->buf.data + cp->buf.len, (uint32_t)n);
    if (n) memcpy(cp->buf.data + cp->buf.len + 4, p, n);
    cp->buf.len += 4 + n;
    return 0;
}

int aorm_copy_row(aorm_copy *cp, int nfields) {
    if (!cp || nfields < 0 || nfields > INT16_MAX) return AORM_EMISUSE;
    char b[2];
    aorm__put_be16(b, (uint16_t)nfields);
    return put(cp, b, 2);
}

int aorm_copy_null(aorm_copy *cp) {
    if (!cp) return AORM_EMISUSE;
    char b[4];
    aorm__put_be32(b, UINT32_MAX); /* -1 */
    return put(cp, b, 4);
}

int aorm_copy_bool(aorm_copy *cp, bool v) {
    char b = v ? 1 : 0;
    return field(cp, &b, 1);
}

int aorm_copy_int2(aorm_copy *cp, int16_t v) {
    char b[2];
    aorm__put_be16(b, (uint16_t)v);
    return field(cp, b, 2);
}

int aorm_copy_int4(aorm_copy *cp, int32_t v) {
    char b[4];
    aorm__put_be32(b, (uint32_t)v);
    return field(cp, b, 4);
}

int aorm_copy_int8(aorm_copy *cp, int64_t v) {
    char b[8];
    aorm__put_be64(b, (uint64_t)v);
    return field(cp, b, 8);
}

int aorm_copy_float4(aorm_copy *cp, float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    return aorm_copy_int4(cp, (int32_t)u);
}

int aorm_copy_float8(aorm_copy *cp, double v) {
    uint64_t u;
    memcpy(&u, &v, 8);
    return aorm_copy_int8(cp, (int64_t)u);
}

int aorm_copy_text(aorm_copy *cp, const char *s, size_t len) {
    if (!cp) return AORM_EMISUSE;
    if (!s) return aorm_copy_null(cp);
    if (memchr(s, '\0', len)) return cp->error = AORM_EENCODING;
    return field(cp, s, len);
}

int aorm_copy_bytea(aorm_copy *cp, const void *data, size_t len) {
    if (!cp) return AORM_EMISUSE;
    if (!data) return aorm_copy_null(cp);
    return field(cp, data, len);
}

int aorm_copy_raw(aorm_copy *cp, const void *data, size_t len) { return aorm_copy_bytea(cp, data, len); }

/* Moves data from the fill callback to the socket until the socket is
 * full (then the write watcher resumes it) or the COPY has been ended.
 * Returns 0, or -1 when the connection was lost. */
int aorm__copy_pump(aorm_conn *c) {
    aorm_copy *cp = c->copy;
    aorm__op *op = c->copy_op;
    for (;;) {
        if (cp->sent < cp->buf.len) {
            size_t piece = aorm__copy_piece(cp->buf.len, cp->sent, cp->chunk_max);
            int r = PQputCopyData(c->pg, cp->buf.data + cp->sent, (int)piece);
            if (r < 0) {
                aorm__conn_lost(c, AORM_ECONNLOST, PQerrorMessage(c->pg));
                return -1;
            }
            if (r == 0) { /* libpq's buffer is full: wait for the socket */
                c->writing = true;
                aorm_io_set(c->io, AORM_READ | AORM_WRITE);
                return 0;
            }
            cp->sent += piece;
            if (cp->sent == cp->buf.len) cp->buf.len = cp->sent = 0;
            int f = aorm__conn_flush(c);
            if (f < 0) return -1;
            if (f == 1) return 0; /* resumed by the write watcher */
            continue;
        }
        if (cp->done) {
            int r = PQputCopyEnd(c->pg, cp->failed ? cp->abort_msg : NULL);
            if (r < 0) {
                aorm__conn_lost(c, AORM_ECONNLOST, PQerrorMessage(c->pg));
                return -1;
            }
            if (r == 0) {
                c->writing = true;
                aorm_io_set(c->io, AORM_READ | AORM_WRITE);
                return 0;
            }
            c->copy_ended = true;
            return aorm__conn_flush(c) < 0 ? -1 : 0;
        }
        int more = op->done ? -1 : op->fill(cp, op->fill_user);
        /* the fill callback may have freed the engine (or cancelled the
         * COPY's owner): the COPY state is gone then, the connection is
         * kept allocated by its handler (busy) */
        if (c->state != CONN_COPY || c->copy != cp) return -1;
        if (more < 0 || cp->error) {
            cp->failed = true;
            cp->done = true;
            cp->buf.len = cp->sent = 0;
            cp->abort_msg = cp->error ? aorm_strerror(cp->error) : "COPY aborted by the caller";
            continue;
        }
        if (more > 0 && cp->buf.len == 0) {
            /* more promised, nothing given: would spin forever */
            cp->failed = true;
            cp->done = true;
            cp->abort_msg = "COPY fill callback returned 1 without adding rows";
            continue;
        }
        if (more == 0) {
            cp->done = true;
            char trailer[2];
            aorm__put_be16(trailer, UINT16_MAX); /* -1: end of data */
            if (put(cp, trailer, 2) < 0) {
                cp->failed = true;
                cp->buf.len = cp->sent = 0;
                cp->abort_msg = "out of memory";
            }
        }
    }
}
