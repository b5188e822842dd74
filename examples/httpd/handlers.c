/* handlers.c -- aorm-httpd's endpoints: the TechEmpower tests and the
 * bookstore API.
 *
 * Every handler follows the same shape: validate the request (400 with a
 * message before any database work), queue engine or session work with
 * the request as the user pointer, and answer exactly once with one of the
 * req_reply*() calls. Every callback starts with `if (req_gone(r))
 * return;`: the request may have been answered already (a sibling
 * statement failed) or its client may be gone; in both cases the
 * request's session and owner are being freed and the callback is one of
 * their cancellations.
 *
 * Which path each endpoint takes through aorm:
 *   /db            a session: aorm_session_get (one statement)
 *   /queries       Core statements on the engine, one per row, all queued
 *                  in one loop turn under the request's owner (pipelined)
 *   /updates       the same reads, then one UPDATE ... FROM unnest() of
 *                  every row (the TechEmpower rules allow batched writes)
 *   /fortunes      a session query, then the template
 *   /cached-queries a session reading through the Redis cache: one
 *                  aorm_session_get_many (one MGET, PostgreSQL `= ANY` for
 *                  the misses only)
 *   --engine-only  /db and /queries with raw SQL text on aorm_engine_execute
 *                  and the result getters: the ceiling the others are
 *                  measured against
 *   bookstore      a session per request: selectin loads, keyset pages, the
 *                  unit of work (POST, PATCH, DELETE commit through it) */
#include <errno.h>
#include <http_parser.h>
#include <stdlib.h>
#include <string.h>

#include "httpd.h"
#include "json_model.h"
#include "models.h"
#include "world.h"

enum { TE_MAX_QUERIES = 500, WORLD_ROWS = 10000, BOOKS_MAX_LIMIT = 100, BOOKS_DEFAULT_LIMIT = 20,
       MAX_TAGS_PER_BOOK = 100 };

/* ==== small helpers ========================================================= */

/* Strict decimal integer: the whole string, no sign unless allowed. */
static int parse_i64(const char *s, int64_t *out) {
    if (!s || !*s) return -1;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || (*s != '-' && (*s < '0' || *s > '9'))) return -1;
    *out = v;
    return 0;
}

/* The value of `name` in a query string into out (no percent-decoding:
 * every parameter here is a number). Returns 1 when present. */
static int query_param(const char *query, const char *name, char *out, size_t cap) {
    size_t nl = strlen(name);
    for (const char *p = query; p && *p;) {
        const char *amp = strchr(p, '&');
        size_t len = amp ? (size_t)(amp - p) : strlen(p);
        if (len > nl && p[nl] == '=' && strncmp(p, name, nl) == 0) {
            size_t vl = len - nl - 1;
            if (vl >= cap) vl = cap - 1;
            memcpy(out, p + nl + 1, vl);
            out[vl] = 0;
            return 1;
        }
        if (len == nl && strncmp(p, name, nl) == 0) { out[0] = 0; return 1; }
        p = amp ? amp + 1 : NULL;
    }
    return 0;
}

/* TechEmpower's count parameter: missing, empty or not a number is 1;
 * clamped to 1..500. */
static int te_count(const req *r, const char *name, const char *alias) {
    char v[32];
    int64_t n;
    if (!query_param(r->query, name, v, sizeof v) && !(alias && query_param(r->query, alias, v, sizeof v))) return 1;
    if (parse_i64(v, &n) < 0 || n < 1) return 1;
    return n > TE_MAX_QUERIES ? TE_MAX_QUERIES : (int)n;
}

/* "/prefix/123" -> 123. Returns 1 on a match with a valid id, 0 when the
 * path is not under prefix, -1 when the id is not a positive integer. */
static int path_id(const char *path, const char *prefix, int64_t *id) {
    size_t pl = strlen(prefix);
    if (strncmp(path, prefix, pl) != 0 || path[pl] != '/') return 0;
    const char *s = path + pl + 1;
    if (*s < '1' || *s > '9' || parse_i64(s, id) < 0 || *id < 1) return -1;
    return 1;
}

static aorm_session *req_session(req *r, bool with_deadline) {
    aorm_session_options so;
    aorm_session_options_init(&so);
    if (with_deadline) so.statement_timeout = r->w->cfg->deadline;
    r->s = aorm_session_new(r->w->e, &so);
    if (!r->s) req_reply_error(r, 503, "cannot open a session", NULL);
    return r->s;
}

/* Answers with a negative return of a call that takes a callback (the
 * callback will not run). Returns true when rc was fine. */
static bool queued(req *r, const char *what, int rc) {
    if (rc < 0) req_reply_code(r, what, rc);
    return rc >= 0;
}

static json_t *world_json(int32_t id, int32_t rn) {
    json_t *j = json_object();
    json_object_set_new(j, "id", json_integer(id));
    json_object_set_new(j, "randomNumber", json_integer(rn));
    return j;
}

static const aorm_exec_options *owned(req *r, aorm_exec_options *o) {
    *o = (aorm_exec_options){.owner = r->owner};
    return o;
}

/* ==== /json, /plaintext ====================================================== */

static void te_json(req *r) {
    json_t *j = json_object();
    json_object_set_new(j, "message", json_string("Hello, World!"));
    req_reply_json(r, 200, j);
}

static void te_plaintext(req *r) {
    static const char text[] = "Hello, World!";
    req_reply(r, 200, "text/plain", text, sizeof text - 1);
}

/* ==== /db ==================================================================== */

static void on_db_get(aorm_session *s, void *obj, const aorm_error *err, void *user) {
    req *r = user;
    if (req_gone(r)) return;
    if (err) { req_reply_aorm(r, "db", err); return; }
    if (!obj) { req_reply_error(r, 404, "no such world row", NULL); return; }
    world *row = obj;
    req_reply_json(r, 200, world_json(row->id, row->randomnumber));
}

static const char WORLD_BY_ID[] = "SELECT id, randomnumber FROM world WHERE id = $1";

/* Engine-only: raw text, getters. */
static int raw_world(req *r, int32_t id, aorm_result_cb cb, void *user) {
    aorm_params p;
    aorm_params_init(&p);
    aorm_params_int4(&p, id);
    aorm_exec_options o = {.flags = AORM_EXEC_READONLY, .owner = r->owner};
    int rc = aorm_engine_execute(r->w->e, WORLD_BY_ID, &p, &o, cb, user);
    aorm_params_free(&p);
    return rc;
}

static int read_world_row(const aorm_result *res, int32_t *id, int32_t *rn) {
    if (aorm_result_nrows(res) != 1) return AORM_ENOTFOUND;
    int rc = aorm_result_int32(res, 0, 0, id);
    return rc < 0 ? rc : aorm_result_int32(res, 0, 1, rn);
}

static void on_db_raw(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    req *r = user;
    if (req_gone(r)) return;
    if (err) { req_reply_aorm(r, "db", err); return; }
    int32_t id, rn;
    int rc = read_world_row(res, &id, &rn);
    if (rc < 0) { req_reply_code(r, "db", rc); return; }
    req_reply_json(r, 200, world_json(id, rn));
}

static void te_db(req *r) {
    int32_t id = worker_random(r->w, WORLD_ROWS);
    if (r->w->cfg->engine_only) {
        queued(r, "db", raw_world(r, id, on_db_raw, r));
        return;
    }
    aorm_session *s = req_session(r, false);
    if (!s) return;
    queued(r, "db", aorm_session_get(s, &world_model, &(world){.id = id}, NULL, on_db_get, r));
}

/* ==== /queries and /updates ================================================== */

typedef struct worlds_ctx worlds_ctx;
typedef struct world_slot {
    req *r;
    worlds_ctx *x;
    int i;
} world_slot;

struct worlds_ctx {
    int n, pending;
    bool update;        /* /updates: write them back once all are read */
    int32_t *ids, *numbers;
    world_slot *slots;
};

static void worlds_free(void *p) {
    worlds_ctx *x = p;
    if (!x) return;
    free(x->ids);
    free(x->numbers);
    free(x->slots);
    free(x);
}

static void reply_worlds(req *r, worlds_ctx *x) {
    json_t *a = json_array();
    for (int i = 0; i < x->n; i++) json_array_append_new(a, world_json(x->ids[i], x->numbers[i]));
    req_reply_json(r, 200, a);
}

static void on_updated(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    req *r = user;
    if (req_gone(r)) return;
    if (err) { req_reply_aorm(r, "updates", err); return; }
    /* a raw write the sessions cannot see: the cached world rows go */
    if (r->w->cache) aorm_cache_invalidate_model(r->w->cache, &world_model);
    reply_worlds(r, r->ctx);
}

/* /updates: every row read; one statement writes them all. The ids are
 * distinct and sorted, so concurrent requests lock rows in one order and
 * cannot deadlock. */
static void write_worlds(req *r, worlds_ctx *x) {
    for (int i = 0; i < x->n; i++) x->numbers[i] = worker_random(r->w, WORLD_ROWS);
    aorm_stmt *q = aorm_raw("UPDATE world SET randomnumber = v.r "
                            "FROM unnest(:ids::int4[], :numbers::int4[]) AS v(id, r) WHERE world.id = v.id");
    aorm_bind(q, "ids", aorm_int4_array(x->ids, (size_t)x->n));
    aorm_bind(q, "numbers", aorm_int4_array(x->numbers, (size_t)x->n));
    aorm_exec_options o;
    int rc = aorm_stmt_execute(r->w->e, q, owned(r, &o), on_updated, r);
    aorm_stmt_free(q);
    queued(r, "updates", rc);
}

static void on_world_row(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    world_slot *sl = user;
    req *r = sl->r;
    if (req_gone(r)) return;
    worlds_ctx *x = sl->x;
    if (err) { req_reply_aorm(r, x->update ? "updates" : "queries", err); return; }
    int rc;
    if (r->w->cfg->engine_only && !x->update) {
        int32_t id;
        rc = read_world_row(res, &id, &x->numbers[sl->i]);
    } else if (aorm_result_nrows(res) != 1) {
        rc = AORM_ENOTFOUND;
    } else {
        world row;
        rc = aorm_stmt_load(r->w->world_proto, res, 0, &world_model, &row, NULL);
        x->numbers[sl->i] = row.randomnumber;
    }
    if (rc < 0) { req_reply_code(r, "queries", rc); return; }
    if (--x->pending > 0) return;
    if (x->update) write_worlds(r, x);
    else reply_worlds(r, x);
}

static void te_worlds(req *r, bool update) {
    int n = te_count(r, "queries", NULL);
    worlds_ctx *x = calloc(1, sizeof *x);
    if (x) {
        x->ids = malloc((size_t)n * sizeof *x->ids);
        x->numbers = malloc((size_t)n * sizeof *x->numbers);
        x->slots = malloc((size_t)n * sizeof *x->slots);
    }
    if (!x || !x->ids || !x->numbers || !x->slots) {
        worlds_free(x);
        req_reply_error(r, 500, "out of memory", NULL);
        return;
    }
    r->ctx = x, r->ctx_free = worlds_free;
    x->n = x->pending = n;
    x->update = update;
    if (update) { /* distinct ids, ascending */
        uint8_t seen[WORLD_ROWS / 8 + 1] = {0};
        for (int i = 0; i < n;) {
            int32_t id = worker_random(r->w, WORLD_ROWS);
            if (seen[id / 8] & (1u << (id % 8))) continue;
            seen[id / 8] |= (uint8_t)(1u << (id % 8));
            i++;
        }
        int k = 0;
        for (int32_t id = 1; id <= WORLD_ROWS; id++)
            if (seen[id / 8] & (1u << (id % 8))) x->ids[k++] = id;
    } else {
        for (int i = 0; i < n; i++) x->ids[i] = worker_random(r->w, WORLD_ROWS);
    }
    /* every row its own statement, all queued now: they leave in one
     * pipeline write at the end of this loop turn */
    for (int i = 0; i < n; i++) {
        x->slots[i] = (world_slot){r, x, i};
        int rc;
        if (r->w->cfg->engine_only && !update) {
            rc = raw_world(r, x->ids[i], on_world_row, &x->slots[i]);
        } else {
            aorm_stmt *q = aorm_select(&world_model);
            aorm_where(q, aorm_eq(AORM_COL(world, id), aorm_int4(x->ids[i])));
            aorm_exec_options o;
            rc = aorm_stmt_execute(r->w->e, q, owned(r, &o), on_world_row, &x->slots[i]);
            aorm_stmt_free(q);
        }
        if (!queued(r, update ? "updates" : "queries", rc)) return;
    }
}

/* ==== /fortunes ============================================================== */

static const char FORTUNES_HTML[] =
    "<!DOCTYPE html><html><head><title>Fortunes</title></head><body><table>"
    "<tr><th>id</th><th>message</th></tr>"
    "{{#fortunes}}<tr><td>{{id}}</td><td>{{message}}</td></tr>{{/fortunes}}"
    "</table></body></html>";

static int by_message(const void *a, const void *b) {
    const fortune *x = *(fortune *const *)a, *y = *(fortune *const *)b;
    return strcmp(x->message, y->message);
}

static const char *fortune_value(void *ctx, int row, const char *name, char *scratch) {
    fortune **rows = ctx;
    if (row < 0) return NULL;
    if (strcmp(name, "id") == 0) {
        snprintf(scratch, 64, "%d", rows[row]->id);
        return scratch;
    }
    return strcmp(name, "message") == 0 ? rows[row]->message : NULL;
}

static void on_fortunes(aorm_session *s, aorm_objects *objs, const aorm_error *err, void *user) {
    req *r = user;
    if (req_gone(r)) return;
    if (err) { req_reply_aorm(r, "fortunes", err); return; }
    size_t n = objs->len + 1;
    fortune **rows = aorm_session_alloc(s, n * sizeof *rows);
    fortune *extra = aorm_session_alloc(s, sizeof *extra);
    if (!rows || !extra) { req_reply_error(r, 500, "out of memory", NULL); return; }
    for (size_t i = 0; i < objs->len; i++) rows[i] = objs->items[i];
    extra->id = 0;
    extra->message = "Additional fortune added at request time.";
    rows[n - 1] = extra;
    qsort(rows, n, sizeof *rows, by_message);
    buf out = {0};
    tmpl_render(r->w->fortunes, &out, (int)n, fortune_value, rows);
    if (out.failed) req_reply_error(r, 500, "out of memory", NULL);
    else req_reply(r, 200, "text/html; charset=utf-8", out.data, out.len);
    buf_free(&out);
}

static void te_fortunes(req *r) {
    aorm_session *s = req_session(r, false);
    if (!s) return;
    queued(r, "fortunes", aorm_session_query(s, aorm_select(&fortune_model), NULL, on_fortunes, r));
}

/* ==== /cached-queries ========================================================= */

static void on_cached(aorm_session *s, aorm_objects *objs, const aorm_error *err, void *user) {
    req *r = user;
    if (req_gone(r)) return;
    if (err) { req_reply_aorm(r, "cached-queries", err); return; }
    json_t *a = json_array();
    for (size_t i = 0; i < objs->len; i++) {
        world *row = objs->items[i];
        if (!row) { json_decref(a); req_reply_error(r, 404, "no such world row", NULL); return; }
        json_array_append_new(a, world_json(row->id, row->randomnumber));
    }
    req_reply_json(r, 200, a);
}

static void te_cached(req *r) {
    if (!r->w->cache) { req_reply_error(r, 503, "no cache: start the server with --redis", NULL); return; }
    int n = te_count(r, "count", "queries");
    aorm_session_options so;
    aorm_session_options_init(&so);
    so.cache = r->w->cache;
    if (!(r->s = aorm_session_new(r->w->e, &so))) { req_reply_error(r, 503, "cannot open a session", NULL); return; }
    world *keys = aorm_session_alloc(r->s, (size_t)n * sizeof *keys);
    const void **kp = aorm_session_alloc(r->s, (size_t)n * sizeof *kp);
    if (!keys || !kp) { req_reply_error(r, 500, "out of memory", NULL); return; }
    for (int i = 0; i < n; i++) {
        keys[i] = (world){.id = worker_random(r->w, WORLD_ROWS)};
        kp[i] = &keys[i];
    }
    queued(r, "cached-queries",
           aorm_session_get_many(r->s, &world_model, (const void *const *)kp, (size_t)n, NULL, on_cached, r));
}

/* ==== /stats ================================================================= */

json_t *worker_stats_json(worker *w) {
    aorm_engine_stats st;
    aorm_engine_stats_get(w->e, &st);
    json_t *e = json_object();
#define U(f) json_object_set_new(e, #f, json_integer((json_int_t)st.f))
    U(statements); U(round_trips); U(syncs); U(prepares); U(prepared_hits); U(resent); U(connects);
    U(connect_failures); U(connections_lost); U(cancels); U(discarded); U(overflow_opened);
    U(overflow_closed); U(pool_waits); U(open); U(idle); U(held); U(waiting);
#undef U
    json_t *h = json_object();
    const http_counters *hc = &w->http;
#define H(f) json_object_set_new(h, #f, json_integer((json_int_t)hc->f))
    H(accepted); H(closed); H(requests); H(responses); H(status_2xx); H(status_4xx); H(status_5xx);
    H(parse_errors); H(timeouts); H(cancelled);
#undef H
    json_object_set_new(h, "open", json_integer((json_int_t)(hc->accepted - hc->closed)));
    json_t *j = json_object();
    json_object_set_new(j, "worker", json_integer(w->index));
    json_object_set_new(j, "workers", json_integer(w->cfg->workers));
    json_object_set_new(j, "engine_only", json_boolean(w->cfg->engine_only));
    json_object_set_new(j, "engine", e);
    json_object_set_new(j, "http", h);
    if (w->cache) {
        aorm_cache_stats cs;
        aorm_cache_stats_get(w->cache, &cs);
        json_t *c = json_object();
#define C(f) json_object_set_new(c, #f, json_integer((json_int_t)cs.f))
        C(hits); C(near_hits); C(misses); C(writebacks); C(writebacks_refused); C(invalidations); C(bypasses);
        C(errors); C(retries); C(retry_queued);
#undef C
        json_object_set_new(c, "disabled", json_boolean(cs.disabled));
        json_object_set_new(j, "cache", c);
    }
    return j;
}

static void te_stats(req *r) { req_reply_json(r, 200, worker_stats_json(r->w)); }

/* ==== the bookstore ========================================================== */

/* GET /authors/{id}: the author, its books and their tags; selectin: one
 * statement per depth, 3 in all. */
static const aorm_load_plan *const AUTHOR_PLAN =
    AORM_PLAN(AORM_SELECTIN_THEN(author, books, AORM_SELECTIN(book, tags)));

static void on_author(aorm_session *s, aorm_objects *objs, const aorm_error *err, void *user) {
    req *r = user;
    if (req_gone(r)) return;
    if (err) { req_reply_aorm(r, "author", err); return; }
    if (objs->len == 0) { req_reply_error(r, 404, "no such author", NULL); return; }
    req_reply_json(r, 200, jm_to_json(s, &author_model, objs->items[0], true));
}

static void get_author(req *r, int64_t id) {
    aorm_session *s = req_session(r, true);
    if (!s) return;
    aorm_stmt *q = aorm_select(&author_model);
    aorm_where(q, aorm_eq(AORM_COL(author, id), aorm_int8(id)));
    aorm_query_options qo = {.load = AUTHOR_PLAN};
    queued(r, "author", aorm_session_query(s, q, &qo, on_author, r));
}

/* GET /books?author_id=&limit=&after=: keyset pagination by id. */
typedef struct books_page {
    int64_t limit;
} books_page;

static void on_books(aorm_session *s, aorm_objects *objs, const aorm_error *err, void *user) {
    req *r = user;
    if (req_gone(r)) return;
    if (err) { req_reply_aorm(r, "books", err); return; }
    books_page *pg = r->ctx;
    json_t *a = json_array();
    for (size_t i = 0; i < objs->len; i++) json_array_append_new(a, jm_to_json(s, &book_model, objs->items[i], false));
    json_t *j = json_object();
    json_object_set_new(j, "books", a);
    json_object_set_new(j, "next", (int64_t)objs->len == pg->limit && objs->len
                                       ? json_integer(((book *)objs->items[objs->len - 1])->id) : json_null());
    req_reply_json(r, 200, j);
}

static void list_books(req *r) {
    char v[32];
    int64_t author_id = 0, limit = BOOKS_DEFAULT_LIMIT, after = 0;
    bool by_author = query_param(r->query, "author_id", v, sizeof v);
    if (by_author && (parse_i64(v, &author_id) < 0 || author_id < 1)) {
        req_reply_error(r, 400, "author_id must be a positive integer", NULL);
        return;
    }
    if (query_param(r->query, "limit", v, sizeof v) && (parse_i64(v, &limit) < 0 || limit < 1 || limit > BOOKS_MAX_LIMIT)) {
        req_reply_error(r, 400, "limit must be an integer from 1 to 100", NULL);
        return;
    }
    if (query_param(r->query, "after", v, sizeof v) && (parse_i64(v, &after) < 0 || after < 0)) {
        req_reply_error(r, 400, "after must be a book id (a non-negative integer)", NULL);
        return;
    }
    books_page *pg = malloc(sizeof *pg);
    if (!pg) { req_reply_error(r, 500, "out of memory", NULL); return; }
    pg->limit = limit;
    r->ctx = pg, r->ctx_free = free;
    aorm_session *s = req_session(r, true);
    if (!s) return;
    aorm_stmt *q = aorm_select(&book_model);
    if (by_author) aorm_where(q, aorm_eq(AORM_COL(book, author_id), aorm_int8(author_id)));
    aorm_where(q, aorm_gt(AORM_COL(book, id), aorm_int8(after)));
    aorm_order_by(q, AORM_COL(book, id), AORM_ASC);
    aorm_limit(q, limit);
    queued(r, "books", aorm_session_query(s, q, NULL, on_books, r));
}

/* Parses the body as a JSON object; answers 400 and returns NULL when it
 * is not one. */
static json_t *body_json(req *r) {
    if (!r->body_len) { req_reply_error(r, 400, "a JSON body is required", NULL); return NULL; }
    json_error_t je;
    json_t *j = json_loadb(r->body, r->body_len, JSON_REJECT_DUPLICATES, &je);
    if (!j) {
        char msg[300];
        snprintf(msg, sizeof msg, "invalid JSON at line %d, column %d: %s", je.line, je.column, je.text);
        req_reply_error(r, 400, msg, NULL);
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        req_reply_error(r, 400, "the body must be a JSON object", NULL);
        return NULL;
    }
    return j;
}

/* POST's state, in the session's arena (freed with it) */
typedef struct create_ctx {
    book *b;
    int64_t *tag_ids;
    size_t ntags;
} create_ctx;

static void on_committed_created(aorm_session *s, const aorm_error *err, void *user) {
    req *r = user;
    if (req_gone(r)) return;
    if (err) { req_reply_aorm(r, "create book", err); return; }
    book *b = ((create_ctx *)r->ctx)->b;
    json_t *j = json_object();
    json_object_set_new(j, "id", json_integer(b->id));
    req_reply_json(r, 201, j);
}

static void add_and_commit(req *r, book *b) {
    int rc = aorm_session_add(r->s, b);
    if (rc == 0) rc = aorm_session_commit(r->s, on_committed_created, r);
    queued(r, "create book", rc);
}

static void on_tags(aorm_session *s, aorm_objects *objs, const aorm_error *err, void *user) {
    req *r = user;
    if (req_gone(r)) return;
    if (err) { req_reply_aorm(r, "create book", err); return; }
    create_ctx *x = r->ctx;
    book *b = x->b;
    for (size_t i = 0; i < objs->len; i++) {
        if (!objs->items[i]) {
            char msg[96];
            snprintf(msg, sizeof msg, "unknown tag id %lld", (long long)x->tag_ids[i]);
            req_reply_error(r, 422, msg, NULL);
            return;
        }
        if (aorm_session_list_append(s, &b->tags, objs->items[i]) < 0) {
            req_reply_error(r, 500, "out of memory", NULL);
            return;
        }
    }
    add_and_commit(r, b);
}

/* POST /books {"author_id", "title", "year", "price", "tag_ids": [...],
 * optional "id"} -> 201 {"id"}. */
static void create_book(req *r) {
    static const char *const allowed[] = {"id", "author_id", "title", "year", "price", NULL};
    static const char *const required[] = {"author_id", "title", "year", "price", NULL};
    static const char *const extra[] = {"tag_ids", NULL};
    json_t *body = body_json(r);
    if (!body) return;
    aorm_session *s = req_session(r, true);
    if (!s) { json_decref(body); return; }
    book *b = aorm_session_new_object(s, &book_model);
    char msg[256];
    const jm_fields fields = {.allowed = allowed, .required = required, .extra = extra};
    if (!b || jm_from_json(s, &book_model, b, body, &fields, msg, sizeof msg) < 0) {
        json_decref(body);
        req_reply_error(r, b ? 400 : 500, b ? msg : "out of memory", NULL);
        return;
    }
    if (b->id < 0 || (json_object_get(body, "id") && b->id == 0)) {
        json_decref(body);
        req_reply_error(r, 400, "field \"id\" must be a positive integer", NULL);
        return;
    }
    json_t *tags = json_object_get(body, "tag_ids");
    size_t ntags = 0;
    int64_t *ids = NULL;
    const void **keys = NULL;
    if (tags) {
        if (!json_is_array(tags)) { json_decref(body); req_reply_error(r, 400, "field \"tag_ids\": expected an array of tag ids", NULL); return; }
        ntags = json_array_size(tags);
        if (ntags > MAX_TAGS_PER_BOOK) { json_decref(body); req_reply_error(r, 400, "field \"tag_ids\": at most 100 tags", NULL); return; }
        ids = aorm_session_alloc(s, (ntags + 1) * sizeof *ids);
        keys = aorm_session_alloc(s, (ntags + 1) * sizeof *keys);
        tag *kt = aorm_session_alloc(s, (ntags + 1) * sizeof *kt);
        if (!ids || !keys || !kt) { json_decref(body); req_reply_error(r, 500, "out of memory", NULL); return; }
        for (size_t i = 0; i < ntags; i++) {
            json_t *v = json_array_get(tags, i);
            if (!json_is_integer(v) || json_integer_value(v) < 1) {
                json_decref(body);
                req_reply_error(r, 400, "field \"tag_ids\": every element must be a positive integer", NULL);
                return;
            }
            ids[i] = json_integer_value(v);
            for (size_t k = 0; k < i; k++)
                if (ids[k] == ids[i]) {
                    json_decref(body);
                    snprintf(msg, sizeof msg, "field \"tag_ids\": tag %lld is listed twice", (long long)ids[i]);
                    req_reply_error(r, 400, msg, NULL);
                    return;
                }
            kt[i] = (tag){.id = ids[i]};
            keys[i] = &kt[i];
        }
    }
    json_decref(body);
    create_ctx *x = aorm_session_alloc(s, sizeof *x);
    if (!x) { req_reply_error(r, 500, "out of memory", NULL); return; }
    *x = (create_ctx){.b = b, .tag_ids = ids, .ntags = ntags};
    r->ctx = x; /* no ctx_free: the arena goes with the session */
    if (ntags == 0) { add_and_commit(r, b); return; }
    queued(r, "create book", aorm_session_get_many(s, &tag_model, (const void *const *)keys, ntags, NULL, on_tags, r));
}

/* PATCH /books/{id} and DELETE /books/{id}: get, change or delete, commit
 * (the unit of work writes only the changed columns). GET /books/{id}
 * shares the lookup. */
typedef struct book_edit {
    int method;
    json_t *body;   /* PATCH */
    book *b;
} book_edit;

static void edit_free(void *p) {
    book_edit *x = p;
    if (!x) return;
    json_decref(x->body);
    free(x);
}

static void on_book_committed(aorm_session *s, const aorm_error *err, void *user) {
    req *r = user;
    if (req_gone(r)) return;
    book_edit *x = r->ctx;
    if (err) { req_reply_aorm(r, x->method == HTTP_DELETE ? "delete book" : "update book", err); return; }
    if (x->method == HTTP_DELETE) req_reply(r, 204, "application/json", "", 0);
    else req_reply_json(r, 200, jm_to_json(s, &book_model, x->b, false));
}

static void on_book(aorm_session *s, void *obj, const aorm_error *err, void *user) {
    req *r = user;
    if (req_gone(r)) return;
    book_edit *x = r->ctx;
    if (err) { req_reply_aorm(r, "book", err); return; }
    if (!obj) { req_reply_error(r, 404, "no such book", NULL); return; }
    x->b = obj;
    int rc;
    if (x->method == HTTP_GET) {
        req_reply_json(r, 200, jm_to_json(s, &book_model, obj, false));
        return;
    }
    if (x->method == HTTP_DELETE) {
        rc = aorm_session_delete(s, obj);
    } else {
        static const char *const allowed[] = {"author_id", "title", "year", "price", NULL};
        const jm_fields fields = {.allowed = allowed};
        char msg[256];
        if (jm_from_json(s, &book_model, obj, x->body, &fields, msg, sizeof msg) < 0) {
            req_reply_error(r, 400, msg, NULL);
            return;
        }
        rc = 0;
    }
    if (rc == 0) rc = aorm_session_commit(s, on_book_committed, r);
    queued(r, "book", rc);
}

static void edit_book(req *r, int64_t id) {
    book_edit *x = calloc(1, sizeof *x);
    if (!x) { req_reply_error(r, 500, "out of memory", NULL); return; }
    x->method = r->method;
    r->ctx = x, r->ctx_free = edit_free;
    if (r->method == HTTP_PATCH && !(x->body = body_json(r))) return;
    aorm_session *s = req_session(r, true);
    if (!s) return;
    queued(r, "book", aorm_session_get(s, &book_model, &(book){.id = id}, NULL, on_book, r));
}

/* ==== routing ================================================================ */

static void not_allowed(req *r) { req_reply_error(r, 405, "method not allowed", NULL); }

void handle_request(req *r) {
    const char *p = r->path;
    bool get = r->method == HTTP_GET;
    int64_t id;
    int m;
    static const struct {
        const char *path;
        void (*fn)(req *);
    } te[] = {{"/json", te_json}, {"/plaintext", te_plaintext}, {"/db", te_db}, {"/fortunes", te_fortunes},
              {"/stats", te_stats}, {"/cached-queries", te_cached}};
    for (size_t i = 0; i < sizeof te / sizeof *te; i++)
        if (strcmp(p, te[i].path) == 0) {
            if (get) te[i].fn(r);
            else not_allowed(r);
            return;
        }
    if (strcmp(p, "/queries") == 0 || strcmp(p, "/updates") == 0) {
        if (get) te_worlds(r, p[1] == 'u');
        else not_allowed(r);
        return;
    }
    if (strcmp(p, "/books") == 0) {
        if (get) list_books(r);
        else if (r->method == HTTP_POST) create_book(r);
        else not_allowed(r);
        return;
    }
    if ((m = path_id(p, "/books", &id)) != 0) {
        if (m < 0) req_reply_error(r, 400, "a book id is a positive integer", NULL);
        else if (get || r->method == HTTP_PATCH || r->method == HTTP_DELETE) edit_book(r, id);
        else not_allowed(r);
        return;
    }
    if ((m = path_id(p, "/authors", &id)) != 0) {
        if (m < 0) req_reply_error(r, 400, "an author id is a positive integer", NULL);
        else if (get) get_author(r, id);
        else not_allowed(r);
        return;
    }
    req_reply_error(r, 404, "no such resource", NULL);
}

static void on_cache_log(aorm_log_level level, const char *message, void *user) {
    worker *w = user;
    if (level <= AORM_LOG_WARN) fprintf(stderr, "aorm-httpd[%d]: cache: %s\n", w->index, message);
}

/* The world region in Redis (and a near cache in this worker's memory,
 * kept coherent by Redis client tracking). */
static int cache_init(worker *w) {
    const config *cfg = w->cfg;
    char host[256];
    const char *colon = strrchr(cfg->redis, ':');
    int64_t port = 6379;
    aorm_cache_options co;
    aorm_cache_options_init(&co);
    if (cfg->redis[0] == '/') {
        co.redis.unix_path = cfg->redis;
    } else {
        size_t hl = colon ? (size_t)(colon - cfg->redis) : strlen(cfg->redis);
        if (hl >= sizeof host || (colon && (parse_i64(colon + 1, &port) < 0 || port < 1 || port > 65535))) {
            fprintf(stderr, "aorm-httpd: --redis: expected HOST:PORT or a socket path: %s\n", cfg->redis);
            return -1;
        }
        memcpy(host, cfg->redis, hl);
        host[hl] = 0;
        co.redis.host = host;
        co.redis.port = (int)port;
    }
    co.redis.username = cfg->redis_user;
    co.redis.password = cfg->redis_password;
    co.redis.log = on_cache_log;
    co.redis.log_user = w;
    aorm_cache_region_options ro;
    aorm_cache_region_options_init(&ro);
    ro.near_max_entries = (size_t)cfg->near_cache;
    if (!(w->cache = aorm_cache_new(w->loop, &co)) || !aorm_cache_model(w->cache, &world_model, &ro)) {
        fprintf(stderr, "aorm-httpd: cannot set up the Redis cache (%s)\n", cfg->redis);
        return -1;
    }
    return 0;
}

int handlers_init(worker *w) {
    char err[128];
    if (w->cfg->redis && cache_init(w) < 0) return -1;
    if (!(w->fortunes = tmpl_compile(FORTUNES_HTML, err, sizeof err))) {
        fprintf(stderr, "aorm-httpd: fortunes template: %s\n", err);
        return -1;
    }
    w->world_proto = aorm_select(&world_model);
    if (!w->world_proto || aorm_stmt_compile(w->world_proto) < 0) {
        fprintf(stderr, "aorm-httpd: cannot compile the world statement\n");
        return -1;
    }
    return 0;
}

void handlers_free(worker *w) {
    aorm_cache_free(w->cache); /* after every session (the connections are closed), before the engine */
    w->cache = NULL;
    tmpl_free(w->fortunes);
    w->fortunes = NULL;
    aorm_stmt_free(w->world_proto);
    w->world_proto = NULL;
}
