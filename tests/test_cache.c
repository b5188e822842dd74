/* test_cache.c -- the second-level cache (cache.h) against the sandbox's
 * Redis and PostgreSQL with the reference data (bench/schema.sql: authors
 * 1..10000 named 'author <id>', born 1900 + id % 100).
 *
 * What is proved:
 *   - the read path: a cold get_many reads PostgreSQL in one statement and
 *     writes every row back; a second session reads them all from Redis
 *     with no statement; a mixed batch sends only the misses to
 *     PostgreSQL (one statement), and the rows are the database's;
 *   - two processes share one Redis: a commit in one is seen by the
 *     other's next read after the invalidation reached Redis;
 *   - the reader/writer race, reproduced deterministically (the reader's
 *     write-back is held by a test seam until the writer has committed and
 *     invalidated): the stale write-back is refused, Redis holds nothing,
 *     the next read returns the new row; and the other order (write-back
 *     first) is deleted by the invalidation;
 *   - a rollback sends nothing (the key and the generation are unchanged);
 *     a session sees its own uncommitted writes;
 *   - faults: a garbled value is a miss; Redis killed, stopped (SIGSTOP),
 *     replaced by a server answering garbage: every read returns the right
 *     rows, without an error, within the deadline; the breaker opens; an
 *     invalidation that fails is retried once Redis is back, and the table
 *     is read from PostgreSQL meanwhile;
 *   - the value encoding: every truncation and every single-byte change of
 *     a value is refused; a changed model layout gets other keys;
 *   - collections: a selectin tree (author.books, book.tags) read from
 *     Redis with no statement once warm; a committed change of a book
 *     retires the books lists and only them;
 *   - the near cache: a near hit sends nothing; an entry another process
 *     changed is gone in the loop turn its invalidation message arrives;
 *     killing the tracking connection flushes it, and it fills again once
 *     tracking is back;
 *   - stampede control: three sessions missing the same keys in one turn
 *     cost one read of them; a waiter or a loader that goes away leaves
 *     nobody hanging;
 *   - the echo: one line per cache read with its keys, hits and misses.
 *
 * Isolation: each test uses its own key prefix (pid and test name); rows a
 * test writes are its own (inserted with its name, deleted at the end).
 * The suite kills, stops and restarts the sandbox's Redis: it runs alone
 * (SERIAL). Every test has the same timeout. */
#include <errno.h>
#include <hiredis/hiredis.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cache/cache_int.h"
#include "models.h"
#include "session_kit.h"
#include "support.h"

#define TIMEOUT 120
#define DEADLINE 0.2 /* the caches' Redis deadline in these tests */

/* ==========================================================================
 * Kit
 * ========================================================================== */

static char prefix[96];

static void set_prefix(const char *test) { snprintf(prefix, sizeof(prefix), "aorm:t%d:%s:", (int)getpid(), test); }

/* A cache on t's loop with the sandbox's Redis (its unix socket when there
 * is one), regions for authors and books, connected before it returns. */
static void on_ping(aorm_redis *r, struct redisReply *rep, const aorm_error *err, void *user) {
    (void)r;
    (void)rep;
    *(int *)user = err ? -1 : 1;
}

static void redis_target(aorm_redis_options *ro) {
    const char *sock = getenv("AORM_TEST_REDIS_SOCKET");
    if (sock && *sock) ro->unix_path = sock;
    else {
        ro->host = t_redis_host();
        ro->port = t_redis_port();
    }
    const char *pw = getenv("AORM_TEST_REDIS_PASSWORD");
    if (pw && *pw) {
        ro->password = pw;
        ro->username = getenv("AORM_TEST_REDIS_USER");
    }
}

static size_t near_entries; /* near cache of the authors region in caches made from now on (0: none) */

static double lease_secs, lease_wait_secs = 0.05; /* leases of the authors region in caches made from now on */

static aorm_cache *cache_with(env *t, const aorm_redis_options *ro, bool wait) {
    aorm_cache_options co;
    aorm_cache_options_init(&co);
    co.redis = *ro;
    co.prefix = prefix;
    co.deadline = DEADLINE;
    co.redis.reconnect_min = 0.02;
    co.redis.reconnect_max = 0.2;
    co.redis.breaker_threshold = 3;
    co.redis.breaker_cooldown = 0.3;
    co.retry_interval = 0.05;
    aorm_cache *c = aorm_cache_new(t->loop, &co);
    cr_assert_not_null(c);
    aorm_cache_region_options rgo;
    aorm_cache_region_options_init(&rgo);
    rgo.near_max_entries = near_entries;
    rgo.lease = lease_secs;
    rgo.lease_wait = lease_wait_secs;
    cr_assert_not_null(aorm_cache_model(c, &author_model, &rgo));
    cr_assert_not_null(aorm_cache_model(c, &book_model, NULL));
    if (wait) {
        int done = 0;
        cr_assert_eq(aorm_redis_command(aorm_cache_redis(c), NULL, on_ping, &done, "PING"), 0);
        cr_assert(t_run_until(t->evl, &done, 10), "Redis did not answer PING");
        cr_assert_eq(done, 1, "PING failed");
    }
    return c;
}

static aorm_cache *cache_open(env *t) {
    aorm_redis_options ro;
    aorm_redis_options_init(&ro);
    redis_target(&ro);
    return cache_with(t, &ro, true);
}

static aorm_session *csession(env *t, aorm_cache *c) {
    aorm_session_options so;
    aorm_session_options_init(&so);
    so.cache = c;
    aorm_session *s = aorm_session_new(t->e, &so);
    cr_assert_not_null(s);
    return s;
}

static aorm_cache_stats rstats(aorm_cache *c) {
    aorm_cache_stats st;
    aorm_cache_region_stats(aorm_cache_region_of(c, &author_model), &st);
    return st;
}

/* get_many of authors ids[0..n) to completion, asserting success; *r
 * holds the objects in key order. */
static void get_authors(env *t, aorm_session *s, const int64_t *ids, size_t n, qres *r) {
    author *keys = calloc(n, sizeof(author));
    const void **kp = calloc(n, sizeof(void *));
    for (size_t i = 0; i < n; i++) {
        keys[i].id = ids[i];
        kp[i] = &keys[i];
    }
    memset(r, 0, sizeof(*r));
    int rc = aorm_session_get_many(s, &author_model, kp, n, NULL, on_objects, r);
    cr_assert_eq(rc, 0, "get_many: %s", aorm_errname(rc));
    wait_done(t, &r->done, "get_many");
    cr_assert_null(r->err, "get_many failed: %s: %s", r->err ? aorm_errname(r->err->code) : "",
                   r->err ? r->err->message : "");
    cr_assert_eq(r->len, n);
    free(keys);
    free(kp);
}

typedef struct ores {
    int done;
    author *obj;
    aorm_error *err;
} ores;

static void on_obj(aorm_session *s, void *obj, const aorm_error *err, void *user) {
    (void)s;
    ores *r = user;
    r->done++;
    r->obj = obj;
    if (err) r->err = aorm_error_copy(err);
}

typedef struct rres {
    int done;
    aorm_error *err;
} rres;

static void on_rows(aorm_session *s, aorm_result *res, const aorm_error *err, void *user) {
    (void)s;
    (void)res;
    rres *r = user;
    r->done++;
    if (err) r->err = aorm_error_copy(err);
}

static author *get_author(env *t, aorm_session *s, int64_t id) {
    ores r = {0};
    author key = {.id = id};
    cr_assert_eq(aorm_session_get(s, &author_model, &key, NULL, on_obj, &r), 0);
    wait_done(t, &r.done, "get");
    cr_assert_null(r.err, "get failed: %s: %s", r.err ? aorm_errname(r.err->code) : "", r.err ? r.err->message : "");
    return r.obj;
}

/* The reference row of author id. */
static void expect_reference(const author *a, int64_t id) {
    char name[32];
    snprintf(name, sizeof(name), "author %lld", (long long)id);
    cr_assert_not_null(a, "author %lld missing", (long long)id);
    cr_assert_eq(a->id, id);
    cr_assert_str_eq(a->name, name);
    cr_assert(a->born.valid && a->born.value == 1900 + id % 100, "author %lld: born", (long long)id);
}

typedef struct wcond {
    aorm_cache *c;
    uint64_t want;
} wcond;

static int writebacks_reach(void *arg) {
    wcond *w = arg;
    aorm_cache_stats st = rstats(w->c);
    return st.writebacks + st.writebacks_refused >= w->want;
}

/* Runs the loop until the author region's write-backs (done or refused)
 * reach want. */
static void wait_writebacks(env *t, aorm_cache *c, uint64_t want) {
    wcond w = {c, want};
    cr_assert(t_run_until_fn(t->evl, writebacks_reach, &w, 10), "write-backs did not reach %llu",
              (unsigned long long)want);
}

static int invalidations_acked(void *arg) {
    aorm_cache *c = arg;
    for (aorm__ctable *tb = c->tables; tb; tb = tb->next)
        if (tb->unacked) return 0;
    return 1;
}

static void wait_acked(env *t, aorm_cache *c) {
    cr_assert(t_run_until_fn(t->evl, invalidations_acked, c, 15), "invalidations not acknowledged");
}

/* Inserts an author row of the test's own (name `name`), committed;
 * returns its id. */
static int64_t insert_author(env *t, const char *name) {
    aorm_session *s = session_new(t);
    author *a = aorm_session_new_object(s, &author_model);
    a->name = (char *)name;
    a->born = AORM_SOME(aorm_opt_int32, 1);
    cr_assert_eq(aorm_session_add(s, a), 0);
    session_commit(t, s);
    int64_t id = a->id;
    aorm_session_free(s);
    cr_assert_gt(id, 0);
    return id;
}

static void delete_author(int64_t id) {
    PGconn *pg = t_pg();
    char sql[128];
    snprintf(sql, sizeof(sql), "DELETE FROM authors WHERE id = %lld", (long long)id);
    free(t_pg_exec(pg, sql));
    PQfinish(pg);
}

/* Commits a new name for author id through a cached session. */
static void rename_author(env *t, aorm_cache *c, int64_t id, const char *name) {
    aorm_session *s = csession(t, c);
    author *a = get_author(t, s, id);
    cr_assert_not_null(a);
    a->name = (char *)name;
    session_commit(t, s);
    aorm_session_free(s);
}

/* The key of author id in c, and whether Redis holds it now. */
static void author_key(aorm_cache *c, int64_t id, aorm__buf *b) {
    author k = {.id = id};
    b->len = 0;
    cr_assert_eq(aorm__cache_row_key(aorm_cache_region_of(c, &author_model), &k, b), 0);
}

static bool redis_has(aorm_cache *c, int64_t id) {
    aorm__buf b = {0};
    author_key(c, id, &b);
    redisContext *r = t_redis(false);
    redisReply *rep = redisCommand(r, "EXISTS %b", b.data, b.len);
    cr_assert(rep && rep->type == REDIS_REPLY_INTEGER);
    bool has = rep->integer == 1;
    freeReplyObject(rep);
    redisFree(r);
    aorm__buf_free(&b);
    return has;
}

static long long redis_gen(const char *table) {
    char key[160];
    snprintf(key, sizeof(key), "%sg:%s", prefix, table);
    redisContext *r = t_redis(false);
    redisReply *rep = redisCommand(r, "GET %s", key);
    cr_assert(rep);
    long long v = rep->type == REDIS_REPLY_STRING ? atoll(rep->str) : 0;
    freeReplyObject(rep);
    redisFree(r);
    return v;
}

static pid_t redis_pid(void) {
    char path[512];
    snprintf(path, sizeof(path), "%s/redis.pid", t_env("AORM_SANDBOX_DIR"));
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "no %s", path);
    long pid = 0;
    cr_assert_eq(fscanf(f, "%ld", &pid), 1);
    fclose(f);
    return (pid_t)pid;
}

/* ==========================================================================
 * The read path
 * ========================================================================== */

Test(cache, read_path_batches, .timeout = TIMEOUT) {
    set_prefix("read");
    env t;
    env_open(&t, true);
    aorm_cache *c = cache_open(&t);
    int64_t ids[200];
    for (int i = 0; i < 200; i++) ids[i] = 101 + i * 7;

    /* cold: one statement for the 100 first, all written back */
    aorm_session *s1 = csession(&t, c);
    qres r;
    mark m0 = mark_now(&t, s1);
    get_authors(&t, s1, ids, 100, &r);
    mark m1 = mark_now(&t, s1);
    expect_cost(&m0, &m1, 1, 1, "cold get_many");
    for (int i = 0; i < 100; i++) expect_reference(r.items[i], ids[i]);
    qres_free(&r);
    aorm_cache_stats st = rstats(c);
    cr_assert_eq(st.misses, 100);
    cr_assert_eq(st.hits, 0);
    wait_writebacks(&t, c, 1 * 100);
    cr_assert_eq(rstats(c).writebacks, 100);

    /* warm, in another session: no statement at all */
    aorm_session *s2 = csession(&t, c);
    m0 = mark_now(&t, s2);
    get_authors(&t, s2, ids, 100, &r);
    m1 = mark_now(&t, s2);
    expect_cost(&m0, &m1, 0, 0, "warm get_many");
    for (int i = 0; i < 100; i++) expect_reference(r.items[i], ids[i]);
    qres_free(&r);
    cr_assert_eq(rstats(c).hits, 100);

    /* mixed: 100 hits, 100 misses in one statement */
    aorm_session *s3 = csession(&t, c);
    m0 = mark_now(&t, s3);
    get_authors(&t, s3, ids, 200, &r);
    m1 = mark_now(&t, s3);
    expect_cost(&m0, &m1, 1, 1, "mixed get_many");
    for (int i = 0; i < 200; i++) expect_reference(r.items[i], ids[i]);
    qres_free(&r);
    st = rstats(c);
    cr_assert_eq(st.hits, 200);
    cr_assert_eq(st.misses, 200);
    cr_assert_eq(echo_count(&t, "ANY"), 2, "only the misses go to PostgreSQL, one statement each time");

    /* a single get of a cached row: no statement; objects are the
     * identity map's (the same pointer twice) */
    aorm_session *s4 = csession(&t, c);
    m0 = mark_now(&t, s4);
    author *a = get_author(&t, s4, ids[5]);
    author *b = get_author(&t, s4, ids[5]);
    m1 = mark_now(&t, s4);
    expect_cost(&m0, &m1, 0, 0, "cached get");
    cr_assert_eq(a, b);
    expect_reference(a, ids[5]);
    cr_assert_eq(aorm_object_state_of(s4, a), AORM_PERSISTENT);
    cr_assert_not(aorm_object_modified(s4, a));

    aorm_session_free(s1);
    aorm_session_free(s2);
    aorm_session_free(s3);
    aorm_session_free(s4);
    aorm_cache_free(c);
    env_close(&t);
}

/* ==========================================================================
 * Two processes
 * ========================================================================== */

static void pipe_put(int fd, char c) { cr_assert_eq(write(fd, &c, 1), 1); }
static char pipe_get(int fd) {
    char c = 0;
    ssize_t n;
    while ((n = read(fd, &c, 1)) < 0 && errno == EINTR) {
    }
    return n == 1 ? c : 0;
}

/* The writer process: renames author id when told, waits until its
 * invalidation is acknowledged, says so. Exit status 0 on success. */
static int writer_process(int in, int out, int64_t id, const char *name) {
    env t;
    env_open(&t, false);
    aorm_cache *c = cache_open(&t);
    if (pipe_get(in) != 'w') return 2;
    rename_author(&t, c, id, name);
    wait_acked(&t, c);
    pipe_put(out, 'd');
    aorm_cache_free(c);
    env_close(&t);
    return 0;
}

/* The writer process, forked before the test's own engine opens. */
typedef struct writer_proc {
    pid_t pid;
    int go, done; /* pipe ends: to it, from it */
} writer_proc;

static writer_proc writer_start(int64_t id, const char *newname) {
    int p2c[2], c2p[2];
    cr_assert_eq(pipe(p2c), 0);
    cr_assert_eq(pipe(c2p), 0);
    pid_t child = fork();
    cr_assert_geq(child, 0);
    if (child == 0) {
        close(p2c[1]);
        close(c2p[0]);
        _exit(writer_process(p2c[0], c2p[1], id, newname));
    }
    close(p2c[0]);
    close(c2p[1]);
    return (writer_proc){child, p2c[1], c2p[0]};
}

/* Has the writer commit, and waits until its invalidation is in Redis. */
static void writer_go(writer_proc *w) {
    pipe_put(w->go, 'w');
    cr_assert_eq(pipe_get(w->done), 'd', "the writer process failed");
}

static void writer_end(writer_proc *w) {
    int status = 0;
    cr_assert_eq(waitpid(w->pid, &status, 0), w->pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "writer exit status %d", status);
    close(w->go);
    close(w->done);
}

Test(cache, two_processes_commit_is_seen, .timeout = TIMEOUT) {
    set_prefix("twoproc");
    char name[64], newname[64];
    snprintf(name, sizeof(name), "cache-twoproc-%d", (int)getpid());
    snprintf(newname, sizeof(newname), "cache-twoproc-%d-renamed", (int)getpid());
    env t;
    env_open(&t, false);
    int64_t id = insert_author(&t, name);
    writer_proc w = writer_start(id, newname);

    aorm_cache *c = cache_open(&t);
    int64_t ids[3] = {id, 11, 12};
    aorm_session *s = csession(&t, c);
    qres r;
    get_authors(&t, s, ids, 3, &r);
    cr_assert_str_eq(((author *)r.items[0])->name, name);
    qres_free(&r);
    wait_writebacks(&t, c, 3);
    aorm_session_free(s);
    s = csession(&t, c);
    get_authors(&t, s, ids, 3, &r); /* every row from Redis */
    qres_free(&r);
    aorm_session_free(s);
    cr_assert_eq(rstats(c).hits, 3);

    writer_go(&w);
    s = csession(&t, c);
    get_authors(&t, s, ids, 3, &r);
    cr_assert_str_eq(((author *)r.items[0])->name, newname, "the other process's commit is seen");
    expect_reference(r.items[1], 11);
    qres_free(&r);
    aorm_session_free(s);
    aorm_cache_stats st = rstats(c);
    cr_assert_eq(st.hits, 5, "the rows the writer did not touch are still cached");
    cr_assert_eq(st.misses, 4);
    writer_end(&w);
    aorm_cache_free(c);
    delete_author(id);
    env_close(&t);
}

/* ==========================================================================
 * The race: a reader's PostgreSQL read before a writer's commit, its
 * write-back after the writer's invalidation
 * ========================================================================== */

static void (*held_send)(void *);
static void *held_job;

static void hold_writeback(void (*send)(void *job), void *job) {
    cr_assert_null(held_job, "one write-back at a time in this test");
    held_send = send;
    held_job = job;
}

static void release_writeback(void) {
    cr_assert_not_null(held_job, "the reader's write-back was not held");
    void *j = held_job;
    held_job = NULL;
    held_send(j);
}

Test(cache, race_stale_writeback_refused, .timeout = TIMEOUT) {
    set_prefix("race");
    char name[64], newname[64];
    snprintf(name, sizeof(name), "cache-race-%d", (int)getpid());
    snprintf(newname, sizeof(newname), "cache-race-%d-new", (int)getpid());
    env t;
    env_open(&t, false);
    int64_t id = insert_author(&t, name);
    aorm_cache *reader = cache_open(&t);
    aorm_cache *writer = cache_open(&t); /* another connection: as another process */

    /* 1. the reader misses and reads PostgreSQL: the old row. Its
     *    write-back is held. */
    aorm__cache_wb_gate = hold_writeback;
    aorm_session *rs = csession(&t, reader);
    author *old = get_author(&t, rs, id);
    cr_assert_str_eq(old->name, name);
    cr_assert_not_null(held_job);
    aorm__cache_wb_gate = NULL;

    /* 2. the writer commits and invalidates */
    long long g0 = redis_gen("authors");
    rename_author(&t, writer, id, newname);
    wait_acked(&t, writer);
    cr_assert_gt(redis_gen("authors"), g0);

    /* 3. the reader's write-back arrives late: refused */
    release_writeback();
    wait_writebacks(&t, reader, 1);
    aorm_cache_stats st = rstats(reader);
    cr_assert_eq(st.writebacks_refused, 1, "the stale write-back was refused");
    cr_assert_eq(st.writebacks, 0);
    cr_assert_not(redis_has(reader, id), "Redis holds no old row");
    aorm_session_free(rs);

    /* 4. the next read anywhere is the new row */
    rs = csession(&t, reader);
    cr_assert_str_eq(get_author(&t, rs, id)->name, newname);
    aorm_session_free(rs);

    /* the other order: a reader's write-back of the old row lands before
     * the writer's invalidation, which then deletes it */
    wait_writebacks(&t, reader, 2); /* step 4's miss wrote the new row back */
    cr_assert(redis_has(reader, id), "the row read in step 4 was written back");
    rename_author(&t, writer, id, name); /* back to the first name */
    wait_acked(&t, writer);
    cr_assert_not(redis_has(reader, id), "the invalidation deleted the written-back row");
    rs = csession(&t, reader);
    cr_assert_str_eq(get_author(&t, rs, id)->name, name);
    aorm_session_free(rs);

    aorm_cache_free(reader);
    aorm_cache_free(writer);
    delete_author(id);
    env_close(&t);
}

/* ==========================================================================
 * Rollback, own writes
 * ========================================================================== */

Test(cache, rollback_sends_nothing, .timeout = TIMEOUT) {
    set_prefix("rollback");
    env t;
    env_open(&t, false);
    aorm_cache *c = cache_open(&t);
    aorm_session *s = csession(&t, c);
    get_author(&t, s, 77);
    wait_writebacks(&t, c, 1);
    aorm_session_free(s);
    cr_assert(redis_has(c, 77));
    long long g0 = redis_gen("authors");

    s = csession(&t, c);
    author *a = get_author(&t, s, 77);
    a->name = "changed, then rolled back";
    session_flush(&t, s);
    session_rollback(&t, s);
    settle(&t);
    aorm_session_free(s);
    cr_assert(redis_has(c, 77), "a rollback deletes nothing");
    cr_assert_eq(redis_gen("authors"), g0, "a rollback bumps nothing");
    s = csession(&t, c);
    expect_reference(get_author(&t, s, 77), 77);
    aorm_session_free(s);
    cr_assert_eq(rstats(c).hits, 2);
    aorm_cache_free(c);
    env_close(&t);
}

Test(cache, own_uncommitted_writes_are_seen, .timeout = TIMEOUT) {
    set_prefix("own");
    env t;
    env_open(&t, false);
    aorm_cache *c = cache_open(&t);
    aorm_session *s = csession(&t, c);
    get_author(&t, s, 78);
    wait_writebacks(&t, c, 1);
    aorm_session_free(s);

    /* a Core UPDATE in the session's transaction, then a get: from
     * PostgreSQL, inside the transaction */
    s = csession(&t, c);
    aorm_stmt *u = aorm_update(&author_model);
    aorm_set(u, AORM_COL(author, name), aorm_text("own write"));
    aorm_where(u, aorm_eq(AORM_COL(author, id), aorm_int8(78)));
    rres er = {0};
    cr_assert_eq(aorm_session_execute(s, u, on_rows, &er), 0);
    wait_done(&t, &er.done, "execute");
    cr_assert_null(er.err);
    uint64_t bypass0 = rstats(c).bypasses;
    mark m0 = mark_now(&t, s);
    author *a = get_author(&t, s, 78);
    mark m1 = mark_now(&t, s);
    cr_assert_str_eq(a->name, "own write", "the session sees its own uncommitted write");
    cr_assert_eq(m1.session - m0.session, 1, "read from PostgreSQL");
    cr_assert_gt(rstats(c).bypasses, bypass0);
    /* a pending change: the same (autoflush) */
    author *b = get_author(&t, s, 79);
    b->name = "pending";
    int64_t ids[2] = {79, 80};
    qres r;
    get_authors(&t, s, ids, 2, &r);
    cr_assert_eq(r.items[0], b);
    qres_free(&r);
    session_rollback(&t, s);
    aorm_session_free(s);
    /* rolled back: the cached row is still the database's */
    s = csession(&t, c);
    expect_reference(get_author(&t, s, 78), 78);
    aorm_session_free(s);
    aorm_cache_free(c);
    env_close(&t);
}

/* ==========================================================================
 * Faults: Redis is never in the way
 * ========================================================================== */

/* Reads ids[0..n) and checks every row against the reference data, with no
 * error; returns the seconds it took. */
static double read_reference(env *t, aorm_cache *c, const int64_t *ids, size_t n) {
    aorm_session *s = csession(t, c);
    qres r;
    double t0 = ev_time();
    get_authors(t, s, ids, n, &r);
    double dt = ev_time() - t0 - 0.1; /* wait_done settles 0.1 s */
    for (size_t i = 0; i < n; i++) expect_reference(r.items[i], ids[i]);
    qres_free(&r);
    aorm_session_free(s);
    return dt;
}

Test(cache, garbled_value_is_a_miss, .timeout = TIMEOUT) {
    set_prefix("garbled");
    env t;
    env_open(&t, false);
    aorm_cache *c = cache_open(&t);
    int64_t ids[2] = {91, 92};
    read_reference(&t, c, ids, 2);
    wait_writebacks(&t, c, 2);
    /* 91: junk; 92: a valid value of another row */
    aorm__buf k91 = {0}, k92 = {0};
    author_key(c, 91, &k91);
    author_key(c, 92, &k92);
    redisContext *r = t_redis(false);
    redisReply *rep = redisCommand(r, "SET %b %b", k91.data, k91.len, "\x01\x00garbage", (size_t)9);
    freeReplyObject(rep);
    rep = redisCommand(r, "GET %b", k92.data, k92.len);
    cr_assert(rep && rep->type == REDIS_REPLY_STRING);
    redisReply *rep2 = redisCommand(r, "SET %b %b", k91.data, k91.len, rep->str, rep->len);
    freeReplyObject(rep2);
    freeReplyObject(rep);
    redisFree(r);
    uint64_t miss0 = rstats(c).misses;
    read_reference(&t, c, ids, 2);
    cr_assert_eq(rstats(c).misses, miss0 + 1, "the value of another row is a miss");
    aorm__buf_free(&k91);
    aorm__buf_free(&k92);
    aorm_cache_free(c);
    env_close(&t);
}

Test(cache, redis_killed_and_restarted, .timeout = TIMEOUT) {
    set_prefix("killed");
    env t;
    env_open(&t, false);
    aorm_cache *c = cache_open(&t);
    int64_t ids[50];
    for (int i = 0; i < 50; i++) ids[i] = 2001 + i;
    read_reference(&t, c, ids, 50);
    wait_writebacks(&t, c, 50);

    pid_t pid = redis_pid();
    cr_assert_eq(kill(pid, SIGKILL), 0);
    while (kill(pid, 0) == 0) usleep(10000);
    for (int round = 0; round < 6; round++) {
        double dt = read_reference(&t, c, ids, 50);
        cr_assert_lt(dt, DEADLINE + 2.0, "round %d took %.3f s", round, dt);
    }
    aorm_cache_stats st = rstats(c);
    cr_assert_gt(st.bypasses, 0);
    cr_assert_gt(st.errors + st.bypasses, 0);
    aorm_redis_stats rs;
    aorm_redis_stats_get(aorm_cache_redis(c), &rs);
    cr_assert_gt(rs.breaker_opens, 0, "the breaker opened");

    /* a commit while Redis is down: its invalidation waits, the table is
     * read from PostgreSQL meanwhile */
    char name[64];
    snprintf(name, sizeof(name), "cache-killed-%d", (int)getpid());
    int64_t mine = insert_author(&t, name);
    rename_author(&t, c, mine, "renamed while Redis was down");
    cr_assert_gt(rstats(c).retry_queued + (rstats(c).disabled ? 1 : 0), 0, "the invalidation is kept");

    t_sandbox("restart-redis");
    wait_acked(&t, c);
    cr_assert_eq(rstats(c).retry_queued, 0);
    /* Redis is empty after a restart: misses, write-backs, then hits */
    read_reference(&t, c, ids, 50);
    uint64_t hits0 = rstats(c).hits;
    wait_writebacks(&t, c, st.writebacks + 50);
    read_reference(&t, c, ids, 50);
    cr_assert_eq(rstats(c).hits, hits0 + 50, "cached again after the restart");
    aorm_session *s = csession(&t, c);
    cr_assert_str_eq(get_author(&t, s, mine)->name, "renamed while Redis was down");
    aorm_session_free(s);
    aorm_cache_free(c);
    delete_author(mine);
    env_close(&t);
}

Test(cache, redis_stopped, .timeout = TIMEOUT) {
    set_prefix("stopped");
    env t;
    env_open(&t, false);
    aorm_cache *c = cache_open(&t);
    int64_t ids[20];
    for (int i = 0; i < 20; i++) ids[i] = 3001 + i;
    read_reference(&t, c, ids, 20);
    wait_writebacks(&t, c, 20);
    pid_t pid = redis_pid();
    cr_assert_eq(kill(pid, SIGSTOP), 0);
    double worst = 0;
    for (int round = 0; round < 5; round++) {
        double dt = read_reference(&t, c, ids, 20);
        if (dt > worst) worst = dt;
    }
    cr_assert_eq(kill(pid, SIGCONT), 0);
    cr_assert_lt(worst, DEADLINE + 1.0, "a read waited %.3f s for a stopped Redis", worst);
    aorm_cache_stats st = rstats(c);
    cr_assert_gt(st.errors, 0, "the deadline fired");
    /* back: hits again */
    for (int i = 0; i < 200 && rstats(c).hits <= st.hits; i++) {
        read_reference(&t, c, ids, 20);
        wait_writebacks(&t, c, 0);
    }
    cr_assert_gt(rstats(c).hits, st.hits, "Redis is used again once it runs");
    aorm_cache_free(c);
    env_close(&t);
}

/* A server that answers everything with bytes that are not the Redis
 * protocol. */
typedef struct fake {
    int lfd;
    volatile int stop;
    char path[108];
    pthread_t th;
} fake;

static void *fake_main(void *arg) {
    fake *f = arg;
    while (!f->stop) {
        fd_set rs;
        FD_ZERO(&rs);
        FD_SET(f->lfd, &rs);
        struct timeval tv = {0, 20000};
        if (select(f->lfd + 1, &rs, NULL, NULL, &tv) <= 0) continue;
        int cfd = accept(f->lfd, NULL, NULL);
        if (cfd < 0) continue;
        char buf[4096];
        struct timeval rt = {0, 200000};
        setsockopt(cfd, SOL_SOCKET, SO_RCVTIMEO, &rt, sizeof(rt));
        while (!f->stop) {
            ssize_t n = read(cfd, buf, sizeof(buf));
            if (n == 0) break;
            if (n < 0) {
                if (errno == EAGAIN || errno == EINTR) continue;
                break;
            }
            if (send(cfd, "\x01\x02 not redis \xff\r\n", 17, MSG_NOSIGNAL) < 0) break;
        }
        close(cfd);
    }
    return NULL;
}

Test(cache, fake_server_answers_garbage, .timeout = TIMEOUT) {
    set_prefix("fake");
    fake f = {0};
    snprintf(f.path, sizeof(f.path), "/tmp/aorm-cache-fake-%d.sock", (int)getpid());
    unlink(f.path);
    f.lfd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    memcpy(sa.sun_path, f.path, strlen(f.path) + 1);
    cr_assert_eq(bind(f.lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    cr_assert_eq(listen(f.lfd, 8), 0);
    cr_assert_eq(pthread_create(&f.th, NULL, fake_main, &f), 0);

    env t;
    env_open(&t, false);
    aorm_redis_options ro;
    aorm_redis_options_init(&ro);
    ro.unix_path = f.path;
    aorm_cache *c = cache_with(&t, &ro, false);
    int64_t ids[10];
    for (int i = 0; i < 10; i++) ids[i] = 4001 + i;
    for (int round = 0; round < 5; round++) {
        double dt = read_reference(&t, c, ids, 10);
        cr_assert_lt(dt, DEADLINE + 1.0, "round %d took %.3f s", round, dt);
    }
    aorm_cache_stats st = rstats(c);
    cr_assert_eq(st.hits, 0);
    cr_assert_gt(st.errors + st.bypasses, 0);
    aorm_redis_stats rs;
    aorm_redis_stats_get(aorm_cache_redis(c), &rs);
    cr_assert_gt(rs.protocol_errors, 0, "the garbage was seen as such");
    aorm_cache_free(c);
    env_close(&t);
    f.stop = 1;
    pthread_join(f.th, NULL);
    close(f.lfd);
    unlink(f.path);
}

/* ==========================================================================
 * The value encoding and the layout
 * ========================================================================== */

typedef struct author_v2 { /* authors with one more column: another layout */
    int64_t id;
    char *name;
    aorm_opt_int32 born;
    aorm_opt_int32 died;
} author_v2;

static const aorm_column author_v2_columns[] = {
    AORM_COLUMN(author_v2, id, AORM_INT8, AORM_PK | AORM_SERIAL),
    AORM_COLUMN(author_v2, name, AORM_TEXT, 0),
    AORM_COLUMN(author_v2, born, AORM_INT4, AORM_NULLABLE),
    AORM_COLUMN(author_v2, died, AORM_INT4, AORM_NULLABLE),
};
static const aorm_model author_v2_model = {AORM_MODEL_OF(author_v2, "authors"), AORM_COLUMNS(author_v2_columns)};

static void *heap_alloc(void *ctx, size_t n) {
    (void)ctx;
    return malloc(n);
}

Test(cache, encoding_refuses_every_damage, .timeout = TIMEOUT) {
    set_prefix("enc");
    env t;
    env_open(&t, false);
    aorm_cache *c = cache_open(&t);
    aorm_cache_region *rg = aorm_cache_region_of(c, &author_model);
    aorm_cache_region_options ro;
    aorm_cache_region_options_init(&ro);
    ro.name = "authors_v2";
    aorm_cache_region *rg2 = aorm_cache_model(c, &author_v2_model, &ro);
    cr_assert_not_null(rg2);
    cr_assert_neq(rg->layout, rg2->layout, "another column, another layout hash");
    cr_assert_null(aorm_cache_model(c, &author_model, NULL), "one region per model");

    author a = {.id = 5, .name = "Ursula", .born = AORM_SOME(aorm_opt_int32, 1929)};
    aorm__buf v = {0};
    cr_assert_eq(aorm__cache_encode(rg, &a, 7, &v), 0);
    aorm_allocator al = {heap_alloc, NULL};
    author out = {0};
    cr_assert_eq(aorm__cache_decode(rg, v.data, v.len, 7, &out, &al), 0);
    cr_assert_eq(out.id, 5);
    cr_assert_str_eq(out.name, "Ursula");
    cr_assert(out.born.valid && out.born.value == 1929);
    free(out.name);
    cr_assert_eq(aorm__cache_decode(rg, v.data, v.len, 8, &out, &al), -1, "another row generation");
    author_v2 o2 = {0};
    cr_assert_eq(aorm__cache_decode(rg2, v.data, v.len, 7, &o2, &al), -1, "another layout");
    for (size_t n = 0; n < v.len; n++) {
        memset(&out, 0, sizeof(out));
        cr_assert_eq(aorm__cache_decode(rg, v.data, n, 7, &out, &al), -1, "truncated to %zu bytes", n);
    }
    char *copy = malloc(v.len + 1);
    for (size_t i = 0; i < v.len; i++) {
        for (int bit = 0; bit < 8; bit++) {
            memcpy(copy, v.data, v.len);
            copy[i] ^= (char)(1 << bit);
            memset(&out, 0, sizeof(out));
            int rc = aorm__cache_decode(rg, copy, v.len, 7, &out, &al);
            cr_assert_eq(rc, -1, "byte %zu bit %d flipped was accepted", i, bit);
        }
    }
    memcpy(copy, v.data, v.len);
    copy[v.len] = 'x';
    cr_assert_eq(aorm__cache_decode(rg, copy, v.len + 1, 7, &out, &al), -1, "a byte too many");
    free(copy);
    aorm__buf_free(&v);
    aorm_cache_free(c);
    env_close(&t);
}

/* ==========================================================================
 * The near cache
 * ========================================================================== */

typedef struct tcond {
    aorm_cache *c;
    uint64_t keys;
} tcond;

static int tracker_ready(void *arg) { return aorm__tracker_ready(((aorm_cache *)arg)->tracker); }

static int tracker_keys_reach(void *arg) {
    tcond *w = arg;
    aorm__tracker_stats ts;
    aorm__tracker_stats_get(w->c->tracker, &ts);
    return ts.keys >= w->keys;
}

static uint64_t tracker_keys(aorm_cache *c) {
    aorm__tracker_stats ts;
    aorm__tracker_stats_get(c->tracker, &ts);
    return ts.keys;
}

static aorm_cache *near_cache_open(env *t) {
    near_entries = 1000;
    aorm_cache *c = cache_open(t);
    near_entries = 0;
    cr_assert_not_null(c->tracker);
    cr_assert(t_run_until_fn(t->evl, tracker_ready, c, 10), "tracking never became ready");
    return c;
}

static aorm__near *author_near(aorm_cache *c) { return aorm_cache_region_of(c, &author_model)->near; }

/* Puts author id into c's near cache: a miss (written back), the
 * write-back's own invalidation message seen, then a Redis hit (stored
 * near). */
static void warm_near(env *t, aorm_cache *c, int64_t id) {
    uint64_t k0 = tracker_keys(c);
    aorm_cache_stats st = rstats(c);
    aorm_session *s = csession(t, c);
    get_author(t, s, id);
    aorm_session_free(s);
    wait_writebacks(t, c, st.writebacks + st.writebacks_refused + 1);
    tcond w = {c, k0 + 1};
    cr_assert(t_run_until_fn(t->evl, tracker_keys_reach, &w, 10), "the write-back's invalidation never came");
    s = csession(t, c);
    get_author(t, s, id);
    aorm_session_free(s);
    cr_assert_eq(rstats(c).hits, st.hits + 1);
    aorm__buf k = {0};
    author_key(c, id, &k);
    size_t vlen;
    cr_assert_not_null(aorm__near_get(author_near(c), k.data, k.len, aorm_loop_now(t->loop), &vlen),
                       "the Redis hit is in the near cache");
    aorm__buf_free(&k);
}

Test(cache, near_hits_and_drops_what_another_process_changed, .timeout = TIMEOUT) {
    set_prefix("near");
    char name[64], newname[64];
    snprintf(name, sizeof(name), "cache-near-%d", (int)getpid());
    snprintf(newname, sizeof(newname), "cache-near-%d-renamed", (int)getpid());
    env t;
    env_open(&t, false);
    int64_t id = insert_author(&t, name);
    writer_proc w = writer_start(id, newname);

    aorm_cache *c = near_cache_open(&t);
    warm_near(&t, c, id);
    /* a near hit: no Redis command, no statement */
    aorm_redis_stats r0, r1;
    aorm_redis_stats_get(aorm_cache_redis(c), &r0);
    aorm_session *s = csession(&t, c);
    mark m0 = mark_now(&t, s);
    cr_assert_str_eq(get_author(&t, s, id)->name, name);
    mark m1 = mark_now(&t, s);
    aorm_session_free(s);
    aorm_redis_stats_get(aorm_cache_redis(c), &r1);
    expect_cost(&m0, &m1, 0, 0, "near hit");
    cr_assert_eq(r1.commands, r0.commands, "a near hit sends nothing to Redis");
    cr_assert_eq(rstats(c).near_hits, 1);

    /* the other process commits a change: the entry is gone in the loop
     * turn that handles the invalidation message */
    aorm__buf k = {0};
    author_key(c, id, &k);
    uint64_t k0 = tracker_keys(c);
    writer_go(&w);
    double t0 = ev_time();
    while (tracker_keys(c) == k0 && ev_time() - t0 < 10) ev_run(t.evl, EVRUN_ONCE);
    cr_assert_gt(tracker_keys(c), k0, "no invalidation message");
    size_t vlen;
    cr_assert_null(aorm__near_get(author_near(c), k.data, k.len, aorm_loop_now(t.loop), &vlen),
                   "the near entry is dropped in the turn its invalidation arrived");
    s = csession(&t, c);
    cr_assert_str_eq(get_author(&t, s, id)->name, newname);
    aorm_session_free(s);
    cr_assert_eq(rstats(c).near_hits, 1);
    writer_end(&w);
    aorm__buf_free(&k);
    aorm_cache_free(c);
    delete_author(id);
    env_close(&t);
}

Test(cache, near_flushed_when_tracking_is_dropped, .timeout = TIMEOUT) {
    set_prefix("nearkill");
    env t;
    env_open(&t, false);
    aorm_cache *c = near_cache_open(&t);
    warm_near(&t, c, 501);
    warm_near(&t, c, 502);
    aorm__near_stats ns;
    aorm__near_stats_get(author_near(c), &ns);
    cr_assert_eq(ns.entries, 2);
    aorm__tracker_stats ts;
    aorm__tracker_stats_get(c->tracker, &ts);
    cr_assert_gt(ts.client_id, 0);
    char cmd[96];
    snprintf(cmd, sizeof(cmd), "redis-cli client kill id %lld", ts.client_id);
    t_sandbox(cmd);
    double t0 = ev_time();
    do {
        ev_run(t.evl, EVRUN_ONCE);
        aorm__near_stats_get(author_near(c), &ns);
    } while (ns.entries > 0 && ev_time() - t0 < 10);
    cr_assert_eq(ns.entries, 0, "the near cache was flushed");
    cr_assert_gt(ns.flushes, 0);
    /* reads meanwhile are right, and near hits come back once tracking is */
    cr_assert(t_run_until_fn(t.evl, tracker_ready, c, 10), "tracking did not come back");
    uint64_t nh = rstats(c).near_hits;
    aorm_session *s = csession(&t, c);
    expect_reference(get_author(&t, s, 501), 501); /* Redis hit, stored near again */
    aorm_session_free(s);
    s = csession(&t, c);
    expect_reference(get_author(&t, s, 501), 501);
    aorm_session_free(s);
    cr_assert_eq(rstats(c).near_hits, nh + 1, "near hits again after tracking came back");
    aorm_cache_free(c);
    env_close(&t);
}

/* ==========================================================================
 * Collections: selectin loads through the cache
 * ========================================================================== */

static const aorm_load_plan *const plan_tree = AORM_PLAN(AORM_SELECTIN_THEN(author, books, AORM_SELECTIN(book, tags)));

static void declare_collections(aorm_cache *c) {
    cr_assert_not_null(aorm_cache_collection(c, &author_model, AORM_REL(author, books), NULL));
    cr_assert_not_null(aorm_cache_collection(c, &book_model, AORM_REL(book, tags), NULL));
    cr_assert_not_null(aorm_cache_model(c, &tag_model, NULL));
    cr_assert_null(aorm_cache_collection(c, &author_model, AORM_REL(author, books), NULL), "declared twice");
    cr_assert_null(aorm_cache_collection(c, &book_model, AORM_REL(book, author), NULL), "not a collection");
}

/* The reference tree of author a: books (a-1)*10+1.., each with the tags
 * 1 + ((b * 7 + k * 13) % 50), k = 0..2, ordered by id. */
static void expect_tree(aorm_session *s, const author *a, const char *changed_title, int64_t changed_book) {
    aorm_list *books;
    cr_assert_eq(AORM_GET_REL(s, author, a, books, &books), 0, "%s", aorm_session_errmsg(s));
    cr_assert_eq(books->len, 10);
    for (size_t i = 0; i < 10; i++) {
        const book *b = books->items[i];
        int64_t bid = (a->id - 1) * 10 + 1 + (int64_t)i;
        cr_assert_eq(b->id, bid);
        cr_assert_eq(b->author_id, a->id);
        cr_assert_eq(b->author, a, "back-populated");
        char title[32];
        snprintf(title, sizeof(title), "book %lld", (long long)bid);
        cr_assert_str_eq(b->title, bid == changed_book ? changed_title : title);
        aorm_list *tags;
        cr_assert_eq(AORM_GET_REL(s, book, b, tags, &tags), 0, "%s", aorm_session_errmsg(s));
        cr_assert_eq(tags->len, 3);
        int64_t want[3];
        for (int k = 0; k < 3; k++) want[k] = 1 + ((bid * 7 + k * 13) % 50);
        for (int x = 0; x < 3; x++)
            for (int y = x + 1; y < 3; y++)
                if (want[y] < want[x]) {
                    int64_t tmp = want[x];
                    want[x] = want[y];
                    want[y] = tmp;
                }
        for (int k = 0; k < 3; k++) {
            const tag *tg = tags->items[k];
            char tn[16];
            snprintf(tn, sizeof(tn), "tag %lld", (long long)want[k]);
            cr_assert_eq(tg->id, want[k], "book %lld tag %d", (long long)bid, k);
            cr_assert_str_eq(tg->name, tn);
        }
    }
}

/* get_many of the authors, then the tree loaded for them. Returns the
 * session's statements for the whole. */
static uint64_t load_trees(env *t, aorm_session *s, const int64_t *ids, size_t n, const char *changed_title,
                           int64_t changed_book) {
    uint64_t st0 = aorm_session_statements(s);
    qres r;
    get_authors(t, s, ids, n, &r);
    load(t, s, r.items, r.len, plan_tree);
    for (size_t i = 0; i < n; i++) expect_tree(s, r.items[i], changed_title, changed_book);
    qres_free(&r);
    return aorm_session_statements(s) - st0;
}

Test(cache, collections_from_redis_and_invalidated_by_commits, .timeout = TIMEOUT) {
    set_prefix("coll");
    env t;
    env_open(&t, false);
    aorm_cache *c = cache_open(&t);
    declare_collections(c);
    aorm_cache_region *books_rg = aorm__cache_coll_region(c, &author_model, AORM_REL(author, books));
    aorm_cache_region *tags_rg = aorm__cache_coll_region(c, &book_model, AORM_REL(book, tags));
    int64_t ids[5] = {301, 302, 303, 304, 305};

    /* cold: authors, books, tags from PostgreSQL; lists written back */
    aorm_session *s = csession(&t, c);
    cr_assert_eq(load_trees(&t, s, ids, 5, NULL, 0), 3, "one statement per level");
    aorm_session_free(s);
    cr_assert_eq(books_rg->st.misses, 5);
    cr_assert_eq(tags_rg->st.misses, 50);
    wcond w = {c, 5};
    cr_assert(t_run_until_fn(t.evl, writebacks_reach, &w, 10));
    for (int i = 0; i < 200 && books_rg->st.writebacks + tags_rg->st.writebacks < 55; i++) settle(&t);
    cr_assert_eq(books_rg->st.writebacks, 5);
    cr_assert_eq(tags_rg->st.writebacks, 50);

    /* warm: the whole tree with no statement */
    s = csession(&t, c);
    cr_assert_eq(load_trees(&t, s, ids, 5, NULL, 0), 0, "every level from Redis");
    aorm_session_free(s);
    cr_assert_eq(books_rg->st.hits, 5);
    cr_assert_eq(tags_rg->st.hits, 50);

    /* a committed change of one book (through another cache, as another
     * process): the books lists are retired (their table's generation),
     * the tags lists stay */
    aorm_cache *w2 = cache_open(&t);
    declare_collections(w2);
    aorm_session *ws = csession(&t, w2);
    ores o = {0};
    book bk = {.id = 3012};
    cr_assert_eq(aorm_session_get(ws, &book_model, &bk, NULL, (aorm_object_cb)on_obj, &o), 0);
    wait_done(&t, &o.done, "get book");
    book *b = (book *)o.obj;
    cr_assert_not_null(b);
    char newtitle[64];
    snprintf(newtitle, sizeof(newtitle), "book 3012 (cache %d)", (int)getpid());
    b->title = newtitle;
    session_commit(&t, ws);
    aorm_session_free(ws);
    wait_acked(&t, w2);
    s = csession(&t, c);
    cr_assert_eq(load_trees(&t, s, ids, 5, newtitle, 3012), 1, "the books level from PostgreSQL");
    aorm_session_free(s);
    cr_assert_eq(books_rg->st.misses, 10);
    cr_assert_eq(tags_rg->st.hits, 100);

    /* and back (the reference data stays as it was) */
    ws = csession(&t, w2);
    memset(&o, 0, sizeof(o));
    cr_assert_eq(aorm_session_get(ws, &book_model, &bk, NULL, (aorm_object_cb)on_obj, &o), 0);
    wait_done(&t, &o.done, "get book");
    ((book *)o.obj)->title = "book 3012";
    session_commit(&t, ws);
    aorm_session_free(ws);
    wait_acked(&t, w2);
    s = csession(&t, c);
    load_trees(&t, s, ids, 5, NULL, 0);
    aorm_session_free(s);
    aorm_cache_free(w2);
    aorm_cache_free(c);
    env_close(&t);
}

/* ==========================================================================
 * Stampede control in one process
 * ========================================================================== */

Test(cache, concurrent_misses_become_one_load, .timeout = TIMEOUT) {
    set_prefix("stampede");
    env t;
    env_open(&t, false);
    aorm_cache *c = cache_open(&t);
    enum { N = 40 };
    author ka[N], kb[N + 5];
    const void *pa[N], *pb[N + 5];
    for (int i = 0; i < N; i++) {
        ka[i] = (author){.id = 5001 + i};
        pa[i] = &ka[i];
    }
    for (int i = 0; i < N + 5; i++) { /* the same keys, in reverse, and 5 more */
        kb[i] = (author){.id = i < N ? 5001 + N - 1 - i : 6001 + i};
        pb[i] = &kb[i];
    }
    aorm_session *a = csession(&t, c), *b = csession(&t, c), *d = csession(&t, c);
    qres ra = {0}, rb = {0}, rd = {0};
    /* the three in one loop turn: three MGETs, all misses */
    cr_assert_eq(aorm_session_get_many(a, &author_model, pa, N, NULL, on_objects, &ra), 0);
    cr_assert_eq(aorm_session_get_many(b, &author_model, pb, N + 5, NULL, on_objects, &rb), 0);
    cr_assert_eq(aorm_session_get_many(d, &author_model, pa, N, NULL, on_objects, &rd), 0);
    wait_done(&t, &ra.done, "a");
    wait_done(&t, &rb.done, "b");
    wait_done(&t, &rd.done, "d");
    cr_assert_null(ra.err);
    cr_assert_null(rb.err);
    cr_assert_null(rd.err);
    for (int i = 0; i < N; i++) {
        expect_reference(ra.items[i], 5001 + i);
        expect_reference(rd.items[i], 5001 + i);
    }
    for (int i = 0; i < N + 5; i++) expect_reference(rb.items[i], kb[i].id);
    cr_assert_eq(aorm_session_statements(a), 1, "the first session reads PostgreSQL");
    cr_assert_eq(aorm_session_statements(b), 1, "the second reads only the 5 keys nobody else was reading");
    cr_assert_eq(aorm_session_statements(d), 0, "the third waits for the first one's rows");
    aorm_cache_stats st = rstats(c);
    cr_assert_eq(st.coalesced, 2 * N, "%llu coalesced", (unsigned long long)st.coalesced);
    cr_assert_neq(ra.items[0], rd.items[0], "each session has its own objects");
    cr_assert_eq(aorm_object_state_of(d, rd.items[0]), AORM_PERSISTENT);
    qres_free(&ra);
    qres_free(&rb);
    qres_free(&rd);

    /* a waiter whose session is freed while it waits, and a loader whose
     * session goes before its rows: nobody is left hanging */
    author kc = {.id = 7001};
    const void *pc[1] = {&kc};
    aorm_session *l = csession(&t, c), *w = csession(&t, c), *w2 = csession(&t, c);
    qres rl = {0}, rw = {0}, rw2 = {0};
    cr_assert_eq(aorm_session_get_many(l, &author_model, pc, 1, NULL, on_objects, &rl), 0);
    cr_assert_eq(aorm_session_get_many(w, &author_model, pc, 1, NULL, on_objects, &rw), 0);
    cr_assert_eq(aorm_session_get_many(w2, &author_model, pc, 1, NULL, on_objects, &rw2), 0);
    /* until both waiters wait, then the first waiter's session goes, then the loader's */
    double t0 = ev_time();
    while (aorm_session_statements(l) == 0 && ev_time() - t0 < 10) ev_run(t.evl, EVRUN_ONCE);
    cr_assert_eq(aorm_session_statements(l), 1);
    aorm_session_free(w);
    cr_assert_eq(rw.done, 1);
    cr_assert_not_null(rw.err);
    cr_assert_eq(rw.err->code, AORM_ECANCELED);
    aorm_session_free(l);
    cr_assert_eq(rl.done, 1);
    wait_done(&t, &rw2.done, "w2");
    cr_assert_null(rw2.err);
    expect_reference(rw2.items[0], 7001);
    cr_assert_eq(aorm_session_statements(w2), 1, "the loader went: the waiter read PostgreSQL itself");
    qres_free(&rl);
    qres_free(&rw);
    qres_free(&rw2);
    aorm_session_free(w2);
    aorm_session_free(a);
    aorm_session_free(b);
    aorm_session_free(d);
    aorm_cache_free(c);
    env_close(&t);
}

/* ==========================================================================
 * The echo
 * ========================================================================== */

static char echo_lines[8][256];
static int necho;

static void on_cache_log(aorm_log_level level, const char *msg, void *user) {
    (void)user;
    t_log("cache log %d: %s", (int)level, msg);
    if (level == AORM_LOG_SQL && necho < 8) snprintf(echo_lines[necho++], sizeof(echo_lines[0]), "%s", msg);
}

Test(cache, echo_shows_hits_and_misses, .timeout = TIMEOUT) {
    set_prefix("echo");
    env t;
    env_open(&t, false);
    aorm_redis_options ro;
    aorm_redis_options_init(&ro);
    redis_target(&ro);
    ro.log = on_cache_log;
    ro.log_level = AORM_LOG_SQL;
    aorm_cache *c = cache_with(&t, &ro, true);
    int64_t ids[3] = {21, 22, 23};
    necho = 0;
    read_reference(&t, c, ids, 3);
    wait_writebacks(&t, c, 3);
    read_reference(&t, c, ids, 2);
    cr_assert_eq(necho, 2, "one echo line per cache read");
    cr_assert_str_eq(echo_lines[0], "cache authors: 3 keys, 0 hits, 3 misses");
    cr_assert_str_eq(echo_lines[1], "cache authors: 2 keys, 2 hits, 0 misses");
    aorm_cache_free(c);
    env_close(&t);
}

/* ==========================================================================
 * Cached queries
 * ========================================================================== */

static aorm_cache_stats qstats(aorm_cache *c, const aorm_model *m) {
    aorm_cache_stats st;
    aorm_cache_region_stats(aorm__cache_query_region(c, m), &st);
    return st;
}

typedef struct qwcond {
    aorm_cache *c;
    const aorm_model *m;
    uint64_t want;
} qwcond;

static int qwritebacks_reach(void *arg) {
    qwcond *w = arg;
    aorm_cache_stats st = qstats(w->c, w->m);
    return st.writebacks + st.writebacks_refused >= w->want;
}

static void wait_qwritebacks(env *t, aorm_cache *c, const aorm_model *m, uint64_t want) {
    qwcond w = {c, m, want};
    cr_assert(t_run_until_fn(t->evl, qwritebacks_reach, &w, 10), "query write-backs did not reach %llu",
              (unsigned long long)want);
}

/* aorm_session_query with the cache option, to completion; *r holds the
 * objects; the statements it cost are checked against `statements`. */
static void cached_query(env *t, aorm_session *s, aorm_stmt *q, qres *r, uint64_t statements, const char *what) {
    aorm_query_options qo;
    aorm_query_options_init(&qo);
    qo.cache = true;
    memset(r, 0, sizeof(*r));
    mark m0 = mark_now(t, s);
    cr_assert_eq(aorm_session_query(s, q, &qo, on_objects, r), 0);
    wait_done(t, &r->done, what);
    mark m1 = mark_now(t, s);
    cr_assert_null(r->err, "%s failed: %s", what, r->err ? r->err->message : "");
    expect_cost(&m0, &m1, statements, statements, what);
}

static aorm_stmt *q_author_named(const char *name) {
    aorm_stmt *q = aorm_select(&author_model);
    cr_assert_eq(aorm_where(q, aorm_eq(AORM_COL(author, name), aorm_text(name))), 0);
    cr_assert_eq(aorm_order_by(q, AORM_COL(author, id), 0), 0);
    return q;
}

Test(cache, query_cached_and_retired_by_another_process, .timeout = TIMEOUT) {
    set_prefix("query");
    char name[64], newname[64];
    snprintf(name, sizeof(name), "cache-query-%d", (int)getpid());
    snprintf(newname, sizeof(newname), "cache-query-%d-renamed", (int)getpid());
    env t;
    env_open(&t, false);
    int64_t id = insert_author(&t, name);
    writer_proc w = writer_start(id, newname); /* its cache has no query region */

    aorm_cache *c = cache_open(&t);
    cr_assert_not_null(aorm_cache_query(c, &author_model, NULL));
    cr_assert_null(aorm_cache_query(c, &author_model, NULL), "one query region per model");
    qres r;
    aorm_session *s = csession(&t, c);
    cached_query(&t, s, q_author_named(name), &r, 1, "cold cached query");
    cr_assert_eq(r.len, 1);
    cr_assert_eq(((author *)r.items[0])->id, id);
    qres_free(&r);
    wait_qwritebacks(&t, c, &author_model, 1);
    cr_assert_eq(qstats(c, &author_model).writebacks, 1);
    aorm_session_free(s);

    /* warm, another session: no statement; another parameter is another key */
    s = csession(&t, c);
    cached_query(&t, s, q_author_named(name), &r, 0, "warm cached query");
    cr_assert_eq(r.len, 1);
    cr_assert_eq(((author *)r.items[0])->id, id);
    cr_assert_str_eq(((author *)r.items[0])->name, name);
    cr_assert_eq(aorm_object_state_of(s, r.items[0]), AORM_PERSISTENT);
    qres_free(&r);
    cached_query(&t, s, q_author_named(newname), &r, 1, "another parameter");
    cr_assert_eq(r.len, 0);
    qres_free(&r);
    wait_qwritebacks(&t, c, &author_model, 2);
    aorm_session_free(s);
    s = csession(&t, c);
    cached_query(&t, s, q_author_named(newname), &r, 0, "an empty answer is cached too");
    cr_assert_eq(r.len, 0);
    qres_free(&r);
    aorm_session_free(s);
    cr_assert_eq(qstats(c, &author_model).hits, 2);

    /* another process commits a change of the table: both answers retire */
    writer_go(&w);
    s = csession(&t, c);
    cached_query(&t, s, q_author_named(name), &r, 1, "after the other process's commit");
    cr_assert_eq(r.len, 0, "the renamed author no longer answers");
    qres_free(&r);
    cached_query(&t, s, q_author_named(newname), &r, 1, "the new name, after the commit");
    cr_assert_eq(r.len, 1);
    cr_assert_str_eq(((author *)r.items[0])->name, newname);
    qres_free(&r);
    aorm_session_free(s);
    writer_end(&w);

    /* a session's own write to the table: it reads PostgreSQL */
    wait_qwritebacks(&t, c, &author_model, 4);
    s = csession(&t, c);
    author *a = get_author(&t, s, id);
    a->born = AORM_SOME(aorm_opt_int32, 7);
    session_flush(&t, s); /* written in its open transaction, not committed */
    uint64_t bypasses = qstats(c, &author_model).bypasses;
    cached_query(&t, s, q_author_named(newname), &r, 1, "after its own flushed write");
    cr_assert_eq(qstats(c, &author_model).bypasses, bypasses + 1);
    cr_assert_eq(r.len, 1);
    cr_assert_eq(((author *)r.items[0])->born.value, 7);
    qres_free(&r);
    session_commit(&t, s); /* the row lock goes before delete_author */
    aorm_session_free(s);

    aorm_cache_free(c);
    delete_author(id);
    env_close(&t);
}

/* The books of the authors named nm (a join). */
static aorm_stmt *q_books_of(const char *nm) {
    aorm_stmt *q = aorm_select(&book_model);
    cr_assert_eq(aorm_join(q, &author_model, aorm_eq(AORM_COL(book, author_id), AORM_COL(author, id))), 0);
    cr_assert_eq(aorm_where(q, aorm_eq(AORM_COL(author, name), aorm_text(nm))), 0);
    return q;
}

/* A query of books joined to authors: a commit that changes only authors
 * retires it; and the reader/writer race for queries stays closed. */
Test(cache, query_race_and_join_dependency, .timeout = TIMEOUT) {
    set_prefix("qrace");
    char name[64], newname[64];
    snprintf(name, sizeof(name), "cache-qrace-%d", (int)getpid());
    snprintf(newname, sizeof(newname), "cache-qrace-%d-new", (int)getpid());
    env t;
    env_open(&t, false);
    int64_t id = insert_author(&t, name);
    PGconn *pg = t_pg();
    t_pg_runf(pg, "INSERT INTO books (author_id, title, year, price) VALUES (%lld, 'qrace', 2000, 1.5)", (long long)id);
    aorm_cache *reader = cache_open(&t);
    cr_assert_not_null(aorm_cache_query(reader, &book_model, NULL));
    aorm_cache *writer = cache_open(&t); /* another connection, no query region: as another process */

    /* 1. the reader misses and reads PostgreSQL; its write-back is held */
    aorm__cache_wb_gate = hold_writeback;
    aorm_session *rs = csession(&t, reader);
    qres r;
    cached_query(&t, rs, q_books_of(name), &r, 1, "cold join query");
    cr_assert_eq(r.len, 1);
    qres_free(&r);
    cr_assert_not_null(held_job);
    aorm__cache_wb_gate = NULL;
    aorm_session_free(rs);

    /* 2. the writer commits a change of authors only */
    long long g0 = redis_gen("authors");
    rename_author(&t, writer, id, newname);
    wait_acked(&t, writer);
    cr_assert_gt(redis_gen("authors"), g0);

    /* 3. the reader's write-back arrives late: refused */
    release_writeback();
    wait_qwritebacks(&t, reader, &book_model, 1);
    cr_assert_eq(qstats(reader, &book_model).writebacks_refused, 1, "the stale answer was refused");
    cr_assert_eq(qstats(reader, &book_model).writebacks, 0);

    /* 4. read again: PostgreSQL (nothing cached), the right answer, cached */
    rs = csession(&t, reader);
    cached_query(&t, rs, q_books_of(name), &r, 1, "join query after the race");
    cr_assert_eq(r.len, 0);
    qres_free(&r);
    wait_qwritebacks(&t, reader, &book_model, 2);
    aorm_session_free(rs);
    rs = csession(&t, reader);
    cached_query(&t, rs, q_books_of(name), &r, 0, "warm join query");
    cr_assert_eq(r.len, 0);
    qres_free(&r);
    aorm_session_free(rs);

    /* 5. a commit to the joined table (authors) retires it */
    rename_author(&t, writer, id, name);
    wait_acked(&t, writer);
    rs = csession(&t, reader);
    cached_query(&t, rs, q_books_of(name), &r, 1, "join query after a commit to the joined table");
    cr_assert_eq(r.len, 1);
    cr_assert_str_eq(((book *)r.items[0])->title, "qrace");
    qres_free(&r);
    aorm_session_free(rs);

    aorm_cache_free(reader);
    aorm_cache_free(writer);
    t_pg_runf(pg, "DELETE FROM books WHERE author_id = %lld", (long long)id);
    PQfinish(pg);
    delete_author(id);
    env_close(&t);
}

/* ==========================================================================
 * Leases across processes
 * ========================================================================== */

static bool redis_exists(const char *k, size_t len) {
    redisContext *r = t_redis(false);
    redisReply *rep = redisCommand(r, "EXISTS %b", k, len);
    cr_assert(rep && rep->type == REDIS_REPLY_INTEGER);
    bool has = rep->integer == 1;
    freeReplyObject(rep);
    redisFree(r);
    return has;
}

/* The lease key of author id in c. */
static void author_lease_key(aorm_cache *c, int64_t id, aorm__buf *b) {
    aorm__buf k = {0};
    author_key(c, id, &k);
    b->len = 0;
    cr_assert_eq(aorm__buf_append(b, c->prefix, c->prefix_len), 0);
    cr_assert_eq(aorm__buf_append(b, "l:", 2), 0);
    cr_assert_eq(aorm__buf_append(b, k.data + c->prefix_len, k.len - c->prefix_len), 0);
    aorm__buf_free(&k);
}

typedef struct lwcond {
    aorm_cache *c;
    int *done;
} lwcond;

static int lease_waiting_or_done(void *arg) {
    lwcond *w = arg;
    return *w->done || rstats(w->c).lease_waits >= 1;
}

/* The other process: reads author id through its leased region when told
 * ('r'), says 'w' once it waits for another process's lease ('x' if it
 * never did), then how it was answered: 'h' the right row with no
 * statement, 'p' the right row from PostgreSQL, 'e' anything else. */
static int lease_child(int in, int out, int64_t id) {
    env t;
    env_open(&t, false);
    aorm_cache *c = cache_open(&t);
    if (pipe_get(in) != 'r') return 2;
    aorm_session *s = csession(&t, c);
    ores r = {0};
    author key = {.id = id};
    uint64_t st0 = aorm_session_statements(s);
    if (aorm_session_get(s, &author_model, &key, NULL, on_obj, &r) != 0) return 3;
    lwcond w = {c, &r.done};
    t_run_until_fn(t.evl, lease_waiting_or_done, &w, 10);
    pipe_put(out, rstats(c).lease_waits >= 1 && !r.done ? 'w' : 'x');
    wait_done(&t, &r.done, "leased get");
    char name[32];
    snprintf(name, sizeof(name), "author %lld", (long long)id);
    bool right = !r.err && r.obj && r.obj->id == id && strcmp(r.obj->name, name) == 0;
    uint64_t stmts = aorm_session_statements(s) - st0;
    pipe_put(out, !right ? 'e' : stmts == 0 && rstats(c).lease_hits == 1 ? 'h' : 'p');
    aorm_session_free(s);
    aorm_cache_free(c);
    env_close(&t);
    return 0;
}

Test(cache, lease_other_process_waits_for_the_loader, .timeout = TIMEOUT) {
    set_prefix("lease");
    lease_secs = 5;
    lease_wait_secs = 5;
    const int64_t id = 4242;
    env t;
    env_open(&t, false);
    int p2c[2], c2p[2];
    cr_assert_eq(pipe(p2c), 0);
    cr_assert_eq(pipe(c2p), 0);
    pid_t child = fork();
    cr_assert_geq(child, 0);
    if (child == 0) {
        close(p2c[1]);
        close(c2p[0]);
        _exit(lease_child(p2c[0], c2p[1], id));
    }
    close(p2c[0]);
    close(c2p[1]);
    writer_proc w = {child, p2c[1], c2p[0]};

    /* this process misses first: it takes the lease and reads PostgreSQL;
     * its write-back (and so the lease's release) is held */
    aorm_cache *c = cache_open(&t);
    aorm__buf lk = {0};
    author_lease_key(c, id, &lk);
    aorm__cache_wb_gate = hold_writeback;
    aorm_session *s = csession(&t, c);
    uint64_t st0 = aorm_session_statements(s);
    expect_reference(get_author(&t, s, id), id);
    cr_assert_eq(aorm_session_statements(s) - st0, 1);
    cr_assert_not_null(held_job);
    aorm__cache_wb_gate = NULL;
    cr_assert(redis_exists(lk.data, lk.len), "the loader holds the lease");

    /* the other process misses the same key: it waits for the lease */
    pipe_put(w.go, 'r');
    cr_assert_eq(pipe_get(w.done), 'w', "the other process did not wait for the lease");

    /* the loader writes back and releases: the waiter reads Redis */
    release_writeback();
    wait_writebacks(&t, c, 1);
    cr_assert_eq(rstats(c).writebacks, 1);
    cr_assert_eq(pipe_get(w.done), 'h', "the waiter was not answered from Redis without a statement");
    cr_assert_not(redis_exists(lk.data, lk.len), "the lease was released");
    writer_end(&w);
    aorm_session_free(s);
    aorm_cache_free(c);

    /* a lease whose holder never writes back: the wait ends at the bound,
     * the row comes from PostgreSQL, the other holder's lease stays */
    lease_wait_secs = 0.3;
    c = cache_open(&t);
    const int64_t id2 = 4243;
    author_lease_key(c, id2, &lk);
    redisContext *rc = t_redis(false);
    redisReply *rep = redisCommand(rc, "SET %b someone-else PX 10000", lk.data, lk.len);
    cr_assert(rep && rep->type == REDIS_REPLY_STATUS);
    freeReplyObject(rep);
    redisFree(rc);
    s = csession(&t, c);
    st0 = aorm_session_statements(s);
    double t0 = aorm_loop_now(t.loop);
    expect_reference(get_author(&t, s, id2), id2);
    double waited = aorm_loop_now(t.loop) - t0;
    cr_assert_eq(aorm_session_statements(s) - st0, 1, "read from PostgreSQL at the bound");
    cr_assert(waited >= 0.29 && waited < 3, "waited %.3f s for a bound of 0.3 s", waited);
    aorm_cache_stats st = rstats(c);
    cr_assert_eq(st.lease_waits, 1);
    cr_assert_eq(st.lease_hits, 0);
    cr_assert(redis_exists(lk.data, lk.len), "another holder's lease is not deleted");
    aorm_session_free(s);
    aorm_cache_free(c);
    aorm__buf_free(&lk);
    lease_secs = 0;
    lease_wait_secs = 0.05;
    env_close(&t);
}
