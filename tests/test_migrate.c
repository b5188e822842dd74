/* test_migrate.c -- migrations (migrate.h) against the sandbox PostgreSQL.
 *
 * Every test works in a database of its own (created here, dropped at
 * the end) and a revision directory of its own under /tmp, so the suite's
 * parallel workers never see each other's history tables or locks. The
 * catalog is compared through a query of this file (not the library's),
 * so a round trip is checked against what the server says. */
#include <criterion/criterion.h>
#include <errno.h>
#include <ev.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "aorm/aorm.h"
#include "models.h"
#include "support.h"

#define TIMEOUT 90

/* ==========================================================================
 * Databases and directories of the test's own
 * ========================================================================== */

typedef struct tdb {
    char name[64];
    char *dsn;
} tdb;

static tdb dbs[3];
static int ndbs;
static char tdir[256];
static int dir_seq;

static void quiet(void *arg, const char *message) {}

static tdb *new_db(const char *label) {
    cr_assert(ndbs < 3);
    tdb *d = &dbs[ndbs++];
    snprintf(d->name, sizeof d->name, "aorm_mig_%ld_%s", (long)getpid(), label);
    PGconn *c = t_pg();
    char sql[256];
    snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s WITH (FORCE)", d->name);
    PQsetNoticeProcessor(c, quiet, NULL);
    free(t_pg_exec(c, sql));
    snprintf(sql, sizeof sql, "CREATE DATABASE %s", d->name);
    free(t_pg_exec(c, sql));
    PQfinish(c);
    d->dsn = t_conninfo(t_owner_dsn(), "dbname", d->name, NULL);
    return d;
}

static PGconn *db_conn(const tdb *d) {
    PGconn *c = PQconnectdb(d->dsn);
    cr_assert(PQstatus(c) == CONNECTION_OK, "connect %s: %s", d->name, PQerrorMessage(c));
    PQsetNoticeProcessor(c, quiet, NULL);
    return c;
}

static long db_long(const tdb *d, const char *sql) {
    PGconn *c = db_conn(d);
    long v = t_pg_long(c, sql);
    PQfinish(c);
    return v;
}

static char *db_text(const tdb *d, const char *sql) {
    PGconn *c = db_conn(d);
    char *v = t_pg_exec(c, sql);
    PQfinish(c);
    return v;
}

static void rm_tree(const char *dir) {
    if (!dir[0]) return;
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", dir);
}

static void setup(void) {
    snprintf(tdir, sizeof tdir, "/tmp/aorm-migrate-test.%ld", (long)getpid());
    rm_tree(tdir);
    cr_assert(mkdir(tdir, 0700) == 0, "mkdir %s: %s", tdir, strerror(errno));
}

static void teardown(void) {
    for (int i = 0; i < ndbs; i++) {
        PGconn *c = PQconnectdb(t_owner_dsn());
        if (PQstatus(c) == CONNECTION_OK) {
            char sql[256];
            snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s WITH (FORCE)", dbs[i].name);
            PQclear(PQexec(c, sql));
        }
        PQfinish(c);
        free(dbs[i].dsn);
    }
    ndbs = 0;
    rm_tree(tdir);
}

/* A fresh revision directory under tdir. */
static const char *new_dir(char *out, size_t cap) {
    snprintf(out, cap, "%s/d%d", tdir, ++dir_seq);
    cr_assert(mkdir(out, 0700) == 0, "mkdir %s: %s", out, strerror(errno));
    return out;
}

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f, "cannot write %s", path);
    fputs(text, f);
    fclose(f);
}

/* Writes DIR/NAME.sql with a header and the two sections. */
static void rev(const char *dir, const char *name, const char *id, const char *parents, const char *extra_header,
                const char *up, const char *down) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s.sql", dir, name);
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    fprintf(f, "-- revision: %s\n-- parents: %s\n-- message: %s\n%s\n-- migrate:up\n%s\n-- migrate:down\n%s", id,
            parents, name, extra_header ? extra_header : "", up, down);
    fclose(f);
    write_file(path, text);
    free(text);
}

/* ==========================================================================
 * Running commands
 * ========================================================================== */

/* A command's outcome, copied out of its callback. */
typedef struct outcome {
    bool called;
    int calls;
    int code;
    char sqlstate[6];
    aorm_migrate_problem problem;
    char *message, *text, *file, *statement, *revision, *done;
    int line, ndone;
    bool nothing, drift;
} outcome;

static void outcome_free(outcome *o) {
    free(o->message);
    free(o->text);
    free(o->file);
    free(o->statement);
    free(o->revision);
    free(o->done);
    memset(o, 0, sizeof(*o));
}

typedef struct env {
    struct ev_loop *evl;
    aorm_loop *loop;
    aorm_engine *e;
    aorm_migrate *m;
    aorm_migrate_options o;
    char log[8192]; /* progress lines */
} env;

static void on_mlog(aorm_log_level level, const char *msg, void *user) {
    env *t = user;
    size_t l = strlen(t->log);
    snprintf(t->log + l, sizeof t->log - l, "%s\n", msg);
}

static void on_elog(aorm_log_level level, const char *msg, void *user) {}

/* An engine on the test's database and a handle over dir (models may be
 * NULL). */
static void env_open(env *t, struct ev_loop *evl, const tdb *d, const char *dir, const aorm_model *const *models,
                     int nmodels) {
    memset(t, 0, sizeof(*t));
    t->evl = evl;
    t->loop = aorm_loop_new_ev(evl);
    cr_assert_not_null(t->loop);
    if (d) {
        aorm_engine_options eo;
        aorm_engine_options_init(&eo);
        eo.conninfo = d->dsn;
        eo.pool_size = 3;
        eo.log = on_elog;
        t->e = aorm_engine_new(t->loop, &eo);
        cr_assert_not_null(t->e);
    }
    aorm_migrate_options_init(&t->o);
    t->o.directory = dir;
    t->o.models = models;
    t->o.nmodels = nmodels;
    t->o.lock_poll = 0.05;
    t->o.lock_wait = 30;
    t->o.log = on_mlog;
    t->o.log_user = t;
}

static void env_handle(env *t) {
    aorm_migrate_free(t->m);
    char why[256];
    t->m = aorm_migrate_new(t->loop, t->e, &t->o, why, sizeof why);
    cr_assert_not_null(t->m, "aorm_migrate_new: %s", why);
}

static void env_close(env *t) {
    aorm_migrate_free(t->m);
    aorm_engine_free(t->e);
    aorm_loop_free(t->loop);
    t->m = NULL;
    t->e = NULL;
    t->loop = NULL;
}

static void on_outcome(aorm_migrate *m, const aorm_migrate_report *r, const aorm_error *err, void *user) {
    outcome *o = user;
    o->calls++;
    o->called = true;
    o->code = err ? err->code : 0;
    if (err) memcpy(o->sqlstate, err->sqlstate, 6);
    o->problem = r->problem;
    o->message = strdup(r->message);
    o->text = strdup(r->text);
    o->file = strdup(r->file);
    o->statement = strdup(r->statement);
    o->revision = strdup(r->revision);
    o->line = r->line;
    o->ndone = r->ndone;
    o->nothing = r->nothing_to_do;
    o->drift = r->drift;
    size_t len = 0;
    for (int i = 0; i < r->ndone; i++) len += strlen(r->done[i]) + 1;
    o->done = calloc(1, len + 1);
    for (int i = 0; i < r->ndone; i++) {
        if (i) strcat(o->done, " ");
        strcat(o->done, r->done[i]);
    }
}

static int called(void *arg) { return ((outcome *)arg)->called; }

static void wait_outcome(env *t, outcome *o, const char *what) {
    cr_assert(t_run_until_fn(t->evl, called, o, 60), "%s: no callback within 60 s", what);
    cr_assert_eq(o->calls, 1, "%s: called back %d times", what, o->calls);
}

typedef enum { UPGRADE, DOWNGRADE, STAMP, STATUS, REPAIR, CHECK, AUTOGEN } which;

/* Runs one command to its callback; the outcome must be freed. */
static outcome run(env *t, which w, const char *target) {
    if (!t->m) env_handle(t);
    outcome o = {0};
    int rc;
    switch (w) {
    case UPGRADE: rc = aorm_migrate_upgrade(t->m, target, on_outcome, &o); break;
    case DOWNGRADE: rc = aorm_migrate_downgrade(t->m, target, on_outcome, &o); break;
    case STAMP: rc = aorm_migrate_stamp(t->m, target, on_outcome, &o); break;
    case STATUS: rc = aorm_migrate_status(t->m, on_outcome, &o); break;
    case REPAIR: rc = aorm_migrate_repair(t->m, on_outcome, &o); break;
    case CHECK: rc = aorm_migrate_check(t->m, on_outcome, &o); break;
    case AUTOGEN: rc = aorm_migrate_create(t->m, target, AORM_MIGRATE_AUTOGENERATE, on_outcome, &o); break;
    }
    cr_assert_eq(rc, 0, "command %d: %s", (int)w, aorm_strerror(rc));
    cr_assert(!o.called, "called back from inside the call");
    wait_outcome(t, &o, "command");
    return o;
}

static void expect_ok(const outcome *o, const char *what) {
    cr_assert_eq(o->code, 0, "%s failed: %s (problem %d)", what, o->message, (int)o->problem);
}

/* The schema as the server describes it: tables with their columns
 * (type, nullability, default), constraints and indexes, one line each,
 * sorted; the history table left out. */
static char *catalog(const tdb *d) {
    return db_text(d,
                   "SELECT coalesce(string_agg(x, E'\\n' ORDER BY x), '') FROM ("
                   " SELECT 'col ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)"
                   "   || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END"
                   "   || coalesce(' default ' || pg_get_expr(ad.adbin, ad.adrelid), '') AS x"
                   "  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
                   "  LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum"
                   "  WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r' AND a.attnum > 0"
                   "  AND NOT a.attisdropped AND c.relname <> 'aorm_migrate_history'"
                   " UNION ALL SELECT 'con ' || c.relname || ' ' || k.conname || ' ' || pg_get_constraintdef(k.oid)"
                   "  FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid"
                   "  WHERE c.relnamespace = 'public'::regnamespace AND c.relname <> 'aorm_migrate_history'"
                   " UNION ALL SELECT 'idx ' || indexdef || CASE WHEN i.indisvalid THEN '' ELSE ' INVALID' END"
                   "  FROM pg_indexes x JOIN pg_class ic ON ic.relname = x.indexname"
                   "  AND ic.relnamespace = 'public'::regnamespace JOIN pg_index i ON i.indexrelid = ic.oid"
                   "  WHERE schemaname = 'public' AND tablename <> 'aorm_migrate_history'"
                   " UNION ALL SELECT 'seq ' || relname FROM pg_class WHERE relkind = 'S'"
                   "  AND relnamespace = 'public'::regnamespace) s");
}

static long history_rows(const tdb *d) {
    return db_long(d, "SELECT count(*) FROM aorm_migrate_history");
}

static bool has_table(const tdb *d, const char *name) {
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM pg_class WHERE relname = '%s' AND relkind = 'r'", name);
    return db_long(d, sql) == 1;
}

TestSuite(migrate, .init = setup, .fini = teardown, .timeout = TIMEOUT);

/* ==========================================================================
 * Round trips over a graph with a branch and a merge
 * ========================================================================== */

/*        a (t1)
 *       /     \
 *  b (t1.note)  c (t2)
 *       \     /
 *        d (merge: fk t2 -> t1, index on t1.note)          */
static void branch_and_merge(const char *dir, bool with_merge) {
    rev(dir, "01_a", "aaaa00000001", "", NULL, "CREATE TABLE t1 (id bigint PRIMARY KEY, name text NOT NULL);",
        "DROP TABLE t1;");
    rev(dir, "02_b", "bbbb00000002", "aaaa00000001", NULL,
        "ALTER TABLE t1 ADD COLUMN note text DEFAULT 'none';\nUPDATE t1 SET note = 'x';", "ALTER TABLE t1 DROP COLUMN note;");
    rev(dir, "03_c", "cccc00000003", "aaaa00000001", NULL,
        "CREATE TABLE t2 (id serial PRIMARY KEY, t1_id bigint, v numeric(10, 2) NOT NULL DEFAULT 0);",
        "DROP TABLE t2;");
    if (with_merge)
        rev(dir, "04_d", "dddd00000004", "bbbb00000002 cccc00000003", NULL,
            "ALTER TABLE t2 ADD CONSTRAINT t2_t1_fkey FOREIGN KEY (t1_id) REFERENCES t1 (id);\n"
            "CREATE INDEX t1_note_idx ON t1 (note);",
            "DROP INDEX t1_note_idx;\nALTER TABLE t2 DROP CONSTRAINT t2_t1_fkey;");
}

Test(migrate, round_trips_over_a_branch_and_a_merge_restore_the_catalog_exactly) {
    tdb *d = new_db("rt");
    char dir[300];
    new_dir(dir, sizeof dir);
    branch_and_merge(dir, true);
    struct ev_loop *evl = ev_loop_new(0);
    env t;
    env_open(&t, evl, d, dir, NULL, 0);

    char *cat0 = catalog(d);
    outcome o = run(&t, UPGRADE, "aaaa");
    expect_ok(&o, "upgrade a");
    cr_assert_str_eq(o.done, "aaaa00000001");
    outcome_free(&o);
    char *cat_a = catalog(d);
    o = run(&t, UPGRADE, "bbbb00000002");
    expect_ok(&o, "upgrade b");
    cr_assert_str_eq(o.done, "bbbb00000002");
    outcome_free(&o);
    char *cat_ab = catalog(d);
    o = run(&t, UPGRADE, NULL); /* head: the merge, through c */
    expect_ok(&o, "upgrade head");
    cr_assert_str_eq(o.done, "cccc00000003 dddd00000004", "graph order: c before its child d, got %s", o.done);
    outcome_free(&o);
    char *cat_d = catalog(d);
    cr_assert(strstr(cat_d, "con t2 t2_t1_fkey FOREIGN KEY (t1_id) REFERENCES t1(id)"), "%s", cat_d);
    cr_assert(strstr(cat_d, "idx CREATE INDEX t1_note_idx ON public.t1 USING btree (note)"), "%s", cat_d);
    cr_assert(strstr(cat_d, "col t1.note text default 'none'::text"), "%s", cat_d);
    cr_assert_eq(history_rows(d), 4);

    /* down to b: d and c go (children first), a and b stay */
    o = run(&t, DOWNGRADE, "bbbb00000002");
    expect_ok(&o, "downgrade b");
    cr_assert_str_eq(o.done, "dddd00000004 cccc00000003");
    outcome_free(&o);
    char *now = catalog(d);
    cr_assert_str_eq(now, cat_ab);
    free(now);
    cr_assert_eq(history_rows(d), 2);
    o = run(&t, DOWNGRADE, "aaaa00000001");
    expect_ok(&o, "downgrade a");
    outcome_free(&o);
    now = catalog(d);
    cr_assert_str_eq(now, cat_a);
    free(now);
    o = run(&t, DOWNGRADE, "base");
    expect_ok(&o, "downgrade base");
    cr_assert_str_eq(o.done, "aaaa00000001");
    outcome_free(&o);
    now = catalog(d);
    cr_assert_str_eq(now, cat0);
    free(now);
    cr_assert_eq(history_rows(d), 0);

    /* and all the way up again: the same catalog as the first time */
    o = run(&t, UPGRADE, "heads");
    expect_ok(&o, "upgrade heads");
    cr_assert_str_eq(o.done, "aaaa00000001 bbbb00000002 cccc00000003 dddd00000004");
    outcome_free(&o);
    now = catalog(d);
    cr_assert_str_eq(now, cat_d);
    free(now);
    o = run(&t, UPGRADE, NULL);
    expect_ok(&o, "upgrade again");
    cr_assert(o.nothing && o.ndone == 0);
    outcome_free(&o);
    free(cat0);
    free(cat_a);
    free(cat_ab);
    free(cat_d);
    env_close(&t);
    ev_loop_destroy(evl);
}

Test(migrate, two_heads_need_a_target_and_history_lists_the_graph) {
    tdb *d = new_db("heads");
    char dir[300];
    new_dir(dir, sizeof dir);
    branch_and_merge(dir, false);
    struct ev_loop *evl = ev_loop_new(0);
    env t;
    env_open(&t, evl, d, dir, NULL, 0);
    outcome o = run(&t, UPGRADE, NULL);
    cr_assert_eq(o.code, AORM_EMISUSE);
    cr_assert_eq(o.problem, AORM_MIGRATE_MULTIPLE_HEADS);
    cr_assert(strstr(o.message, "bbbb00000002") && strstr(o.message, "cccc00000003"), "%s", o.message);
    outcome_free(&o);
    cr_assert_not(has_table(d, "t1"), "nothing runs when the target is ambiguous");
    o = run(&t, UPGRADE, "heads");
    expect_ok(&o, "upgrade heads");
    cr_assert_eq(o.ndone, 3);
    outcome_free(&o);

    char *heads = NULL, *hist = NULL, why[256];
    cr_assert_eq(aorm_migrate_heads(t.m, &heads, why, sizeof why), 0, "%s", why);
    cr_assert(strstr(heads, "bbbb00000002") && strstr(heads, "cccc00000003") && !strstr(heads, "aaaa00000001 <-"),
              "%s", heads);
    /* a merge revision written by `new --merge` joins them */
    outcome n = {0};
    cr_assert_eq(aorm_migrate_create(t.m, "join", 0, on_outcome, &n), 0);
    wait_outcome(&t, &n, "new without --merge");
    cr_assert_eq(n.problem, AORM_MIGRATE_MULTIPLE_HEADS);
    outcome_free(&n);
    cr_assert_eq(aorm_migrate_create(t.m, "join the branches", AORM_MIGRATE_MERGE, on_outcome, &n), 0);
    wait_outcome(&t, &n, "new --merge");
    expect_ok(&n, "new --merge");
    char *text = t_read_file(n.file);
    cr_assert(strstr(text, "-- parents: bbbb00000002 cccc00000003\n"), "%s", text);
    free(text);
    cr_assert_eq(aorm_migrate_history(t.m, &hist, why, sizeof why), 0, "%s", why);
    cr_assert(strstr(hist, "<- bbbb00000002, cccc00000003  join the branches  (head)  (merge)"), "%s", hist);
    outcome_free(&n);
    o = run(&t, UPGRADE, NULL);
    expect_ok(&o, "upgrade to the merge");
    cr_assert_eq(o.ndone, 1);
    outcome_free(&o);
    free(heads);
    free(hist);
    env_close(&t);
    ev_loop_destroy(evl);
}

/* ==========================================================================
 * Failures
 * ========================================================================== */

Test(migrate, a_failing_revision_rolls_back_only_itself_and_names_file_line_statement_sqlstate) {
    tdb *d = new_db("fail");
    char dir[300];
    new_dir(dir, sizeof dir);
    rev(dir, "01_a", "a1", "", NULL, "CREATE TABLE t1 (id int PRIMARY KEY);\nINSERT INTO t1 VALUES (1);",
        "DROP TABLE t1;");
    rev(dir, "02_b", "b2", "a1", NULL,
        "CREATE TABLE t2 (id int);\n"
        "INSERT INTO t1 VALUES (2);\n"
        "-- the next one fails\n"
        "SELECT *\n  FROM no_such_table;\n"
        "CREATE TABLE t3 (id int);",
        "DROP TABLE t2;");
    struct ev_loop *evl = ev_loop_new(0);
    env t;
    env_open(&t, evl, d, dir, NULL, 0);
    outcome o = run(&t, UPGRADE, NULL);
    cr_assert_eq(o.code, AORM_ESERVER, "%s", o.message);
    cr_assert_str_eq(o.sqlstate, "42P01");
    cr_assert_eq(o.problem, AORM_MIGRATE_FAILED);
    cr_assert_str_eq(o.revision, "b2");
    cr_assert(strstr(o.file, "/02_b.sql"), "%s", o.file);
    cr_assert_str_eq(o.statement, "SELECT *\n  FROM no_such_table");
    /* header: 3 lines, a blank, the marker: the section starts on line 6 */
    cr_assert_eq(o.line, 9, "line %d", o.line);
    cr_assert(strstr(o.message, "02_b.sql:9") && strstr(o.message, "42P01") &&
                  strstr(o.message, "SELECT *   FROM no_such_table"),
              "%s", o.message);
    cr_assert_str_eq(o.done, "a1", "the first revision was applied and reported");
    outcome_free(&o);
    cr_assert(has_table(d, "t1"));
    cr_assert_not(has_table(d, "t2"), "the failed revision's work is rolled back");
    cr_assert_eq(db_long(d, "SELECT count(*) FROM t1"), 1);
    char *applied = db_text(d, "SELECT string_agg(revision, ',') FROM aorm_migrate_history");
    cr_assert_str_eq(applied, "a1");
    free(applied);
    env_close(&t);
    ev_loop_destroy(evl);
}

Test(migrate, a_failure_in_a_file_without_transaction_keeps_what_ran_and_records_nothing) {
    tdb *d = new_db("notx");
    char dir[300];
    new_dir(dir, sizeof dir);
    rev(dir, "01_a", "a1", "", "-- transaction: false",
        "CREATE TABLE t1 (id int);\nSELECT 1 / 0;\nCREATE TABLE t2 (id int);", "DROP TABLE t1;");
    struct ev_loop *evl = ev_loop_new(0);
    env t;
    env_open(&t, evl, d, dir, NULL, 0);
    outcome o = run(&t, UPGRADE, NULL);
    cr_assert_str_eq(o.sqlstate, "22012", "%s", o.message);
    cr_assert_str_eq(o.statement, "SELECT 1 / 0");
    cr_assert_eq(o.line, 7);
    cr_assert(strstr(o.message, "no transaction: the statements before it stay applied"), "%s", o.message);
    outcome_free(&o);
    cr_assert(has_table(d, "t1"), "autocommit: the first statement stays");
    cr_assert_not(has_table(d, "t2"), "nothing after the failure runs");
    cr_assert_eq(history_rows(d), 0, "the revision is not recorded");
    env_close(&t);
    ev_loop_destroy(evl);
}

Test(migrate, files_that_cannot_run_as_written_are_refused_when_read) {
    tdb *d = new_db("refuse");
    char dir[300];
    struct ev_loop *evl = ev_loop_new(0);
    static const struct {
        const char *extra, *up, *expect;
        aorm_migrate_problem problem;
    } cases[] = {
        {NULL, "CREATE INDEX CONCURRENTLY i ON t (x);", "transaction: false", AORM_MIGRATE_BAD_FILE},
        {NULL, "BEGIN;\nCREATE TABLE x (i int);\nCOMMIT;", "transaction statement", AORM_MIGRATE_BAD_FILE},
        {"-- transacton: false", "SELECT 1;", "unknown header key", AORM_MIGRATE_BAD_FILE},
        {NULL, "SELECT 'unterminated;", "unterminated string", AORM_MIGRATE_BAD_FILE},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        new_dir(dir, sizeof dir);
        rev(dir, "01_x", "x1", "", cases[i].extra, cases[i].up, "");
        env t;
        env_open(&t, evl, d, dir, NULL, 0);
        outcome o = run(&t, UPGRADE, NULL);
        cr_assert_eq(o.problem, cases[i].problem, "case %zu: problem %d: %s", i, (int)o.problem, o.message);
        cr_assert(strstr(o.message, cases[i].expect) && strstr(o.message, "01_x.sql"), "case %zu: %s", i, o.message);
        outcome_free(&o);
        env_close(&t);
    }
    cr_assert_eq(db_long(d, "SELECT count(*) FROM pg_class WHERE relname = 'aorm_migrate_history'"), 0,
                 "a refused file stops the run before it touches the database");
    /* REFRESH MATERIALIZED VIEW CONCURRENTLY may run in a transaction: not refused */
    new_dir(dir, sizeof dir);
    rev(dir, "01_x", "x1", "", NULL,
        "CREATE MATERIALIZED VIEW mv AS SELECT 1 AS k;\nCREATE UNIQUE INDEX mv_k ON mv (k);\n"
        "REFRESH MATERIALIZED VIEW CONCURRENTLY mv;",
        "DROP MATERIALIZED VIEW mv;");
    {
        env t;
        env_open(&t, evl, d, dir, NULL, 0);
        outcome o = run(&t, UPGRADE, NULL);
        expect_ok(&o, "REFRESH ... CONCURRENTLY in a transaction");
        outcome_free(&o);
        o = run(&t, DOWNGRADE, "base");
        expect_ok(&o, "downgrade");
        outcome_free(&o);
        env_close(&t);
    }
    /* an unknown parent */
    new_dir(dir, sizeof dir);
    rev(dir, "01_x", "x1", "nope", NULL, "SELECT 1;", "");
    env t;
    env_open(&t, evl, d, dir, NULL, 0);
    outcome o = run(&t, UPGRADE, NULL);
    cr_assert_eq(o.problem, AORM_MIGRATE_BAD_GRAPH, "%s", o.message);
    outcome_free(&o);
    env_close(&t);
    cr_assert_eq(db_long(d, "SELECT count(*) FROM aorm_migrate_history"), 0,
                 "the refused files touched nothing");
    ev_loop_destroy(evl);
}

Test(migrate, statement_timeout_stops_a_long_statement) {
    tdb *d = new_db("stmt");
    char dir[300];
    new_dir(dir, sizeof dir);
    rev(dir, "01_a", "a1", "", NULL, "CREATE TABLE t1 (id int);\nSELECT pg_sleep(5);", "DROP TABLE t1;");
    struct ev_loop *evl = ev_loop_new(0);
    env t;
    env_open(&t, evl, d, dir, NULL, 0);
    t.o.statement_timeout = 0.3;
    outcome o = run(&t, UPGRADE, NULL);
    cr_assert_eq(o.code, AORM_ESERVER, "%s", o.message);
    cr_assert_str_eq(o.sqlstate, "57014");
    cr_assert_str_eq(o.statement, "SELECT pg_sleep(5)");
    outcome_free(&o);
    cr_assert_not(has_table(d, "t1"));
    env_close(&t);
    ev_loop_destroy(evl);
}

/* The blocker's COMMIT, from a timer of the test's loop. */
typedef struct blocker {
    PGconn *c;
    ev_timer w;
} blocker;

static void release_blocker(struct ev_loop *evl, ev_timer *w, int revents) {
    blocker *b = w->data;
    free(t_pg_exec(b->c, "COMMIT"));
}

Test(migrate, a_lock_timeout_is_retried_until_the_table_is_free) {
    tdb *d = new_db("lockto");
    char dir[300];
    new_dir(dir, sizeof dir);
    rev(dir, "01_a", "a1", "", NULL, "CREATE TABLE t1 (id int);", "DROP TABLE t1;");
    rev(dir, "02_b", "b2", "a1", NULL, "ALTER TABLE t1 ADD COLUMN x int;", "ALTER TABLE t1 DROP COLUMN x;");
    struct ev_loop *evl = ev_loop_new(0);
    env t;
    env_open(&t, evl, d, dir, NULL, 0);
    outcome o = run(&t, UPGRADE, "a1");
    expect_ok(&o, "upgrade a");
    outcome_free(&o);

    /* without retries: the lock timeout is the revision's failure */
    blocker b = {.c = db_conn(d)};
    free(t_pg_exec(b.c, "BEGIN"));
    free(t_pg_exec(b.c, "LOCK TABLE t1 IN ACCESS EXCLUSIVE MODE"));
    t.o.lock_timeout = 0.1;
    t.o.lock_retries = 0;
    env_handle(&t);
    o = run(&t, UPGRADE, NULL);
    cr_assert_str_eq(o.sqlstate, "55P03", "%s", o.message);
    cr_assert_eq(o.problem, AORM_MIGRATE_FAILED);
    outcome_free(&o);

    /* with retries: it waits out the blocker, which commits after 0.6 s */
    t.o.lock_retries = 20;
    t.o.retry_delay = 0.05;
    env_handle(&t);
    t.log[0] = '\0';
    b.w.data = &b;
    ev_timer_init(&b.w, release_blocker, 0.6, 0);
    ev_timer_start(evl, &b.w);
    o = run(&t, UPGRADE, NULL);
    expect_ok(&o, "upgrade with retries");
    cr_assert_str_eq(o.done, "b2");
    outcome_free(&o);
    cr_assert(strstr(t.log, "lock timeout (attempt 1 of 21); retrying"), "%s", t.log);
    cr_assert_eq(db_long(d, "SELECT count(*) FROM information_schema.columns WHERE table_name = 't1' "
                            "AND column_name = 'x'"),
                 1);
    PQfinish(b.c);
    env_close(&t);
    ev_loop_destroy(evl);
}

/* Terminates, from a timer of the test's loop, the backend whose query or
 * advisory lock matches. */
typedef struct killer {
    const tdb *d;
    const char *sql; /* returns the pids to terminate */
    ev_timer w;
    int killed;
} killer;

static void on_kill(struct ev_loop *evl, ev_timer *w, int revents) {
    killer *k = w->data;
    char sql[512];
    snprintf(sql, sizeof sql, "SELECT count(pg_terminate_backend(pid)) FROM (%s) s", k->sql);
    k->killed = (int)db_long(k->d, sql);
    if (k->killed == 0) { /* not there yet: look again */
        ev_timer_set(w, 0.05, 0);
        ev_timer_start(evl, w);
    }
}

static void kill_soon(killer *k, struct ev_loop *evl, const tdb *d, const char *sql) {
    k->d = d;
    k->sql = sql;
    k->killed = 0;
    k->w.data = k;
    ev_timer_init(&k->w, on_kill, 0.05, 0);
    ev_timer_start(evl, &k->w);
}

Test(migrate, a_connection_lost_mid_revision_fails_the_run_and_names_the_revision) {
    tdb *d = new_db("lost");
    char dir[300];
    new_dir(dir, sizeof dir);
    rev(dir, "01_a", "a1", "", NULL, "CREATE TABLE t1 (id int);\nSELECT pg_sleep(3);", "DROP TABLE t1;");
    struct ev_loop *evl = ev_loop_new(0);
    env t;
    env_open(&t, evl, d, dir, NULL, 0);
    t.o.lock_key = 6161;
    killer k;
    kill_soon(&k, evl, d, "SELECT pid FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(3)' AND state = 'active'");
    outcome o = run(&t, UPGRADE, NULL);
    ev_timer_stop(evl, &k.w);
    cr_assert_eq(k.killed, 1);
    cr_assert_eq(o.problem, AORM_MIGRATE_FAILED, "%s", o.message);
    cr_assert(o.code == AORM_ECONNLOST || o.code == AORM_EUNKNOWN_OUTCOME, "%s: %s", aorm_errname(o.code),
              o.message);
    cr_assert_str_eq(o.revision, "a1");
    cr_assert(strstr(o.file, "/01_a.sql"), "%s", o.file);
    cr_assert(strstr(o.message, "the connection was lost while it ran") && strstr(o.message, "status"), "%s",
              o.message);
    cr_assert_str_eq(o.statement, "", "which statement was running is not claimed");
    outcome_free(&o);
    cr_assert_not(has_table(d, "t1"));
    cr_assert_eq(history_rows(d), 0);
    cr_assert_eq(db_long(d, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND objid = 6161"), 0,
                 "the lock was released");
    /* the next run applies it */
    rev(dir, "01_a", "a1", "", NULL, "CREATE TABLE t1 (id int);", "DROP TABLE t1;");
    o = run(&t, UPGRADE, NULL);
    expect_ok(&o, "upgrade after the loss");
    outcome_free(&o);
    env_close(&t);
    ev_loop_destroy(evl);
}

Test(migrate, losing_the_lock_connection_stops_the_run_before_the_next_revision) {
    tdb *d = new_db("lostlock");
    char dir[300];
    new_dir(dir, sizeof dir);
    rev(dir, "01_a", "a1", "", NULL, "CREATE TABLE t1 (id int);\nSELECT pg_sleep(1);", "DROP TABLE t1;");
    rev(dir, "02_b", "b2", "a1", NULL, "CREATE TABLE t2 (id int);", "DROP TABLE t2;");
    struct ev_loop *evl = ev_loop_new(0);
    env t;
    env_open(&t, evl, d, dir, NULL, 0);
    t.o.lock_key = 6262;
    killer k;
    /* the lock's holder, once the first revision is running */
    kill_soon(&k, evl, d,
              "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND objid = 6262 AND granted AND EXISTS "
              "(SELECT 1 FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(1)' AND state = 'active')");
    outcome o = run(&t, UPGRADE, NULL);
    ev_timer_stop(evl, &k.w);
    cr_assert_eq(k.killed, 1, "%s", o.message);
    cr_assert_eq(o.code, AORM_ECONNLOST, "%s", o.message);
    cr_assert(strstr(o.message, "advisory lock"), "%s", o.message);
    cr_assert_str_eq(o.done, "a1", "the revision in flight completes; the next one never starts");
    outcome_free(&o);
    cr_assert(has_table(d, "t1"));
    cr_assert_not(has_table(d, "t2"));
    o = run(&t, UPGRADE, NULL);
    expect_ok(&o, "upgrade again");
    cr_assert_str_eq(o.done, "b2");
    outcome_free(&o);
    env_close(&t);
    ev_loop_destroy(evl);
}

/* ==========================================================================
 * Two runners
 * ========================================================================== */

Test(migrate, two_runners_at_once_one_applies_the_other_finds_nothing_to_do) {
    tdb *d = new_db("two");
    char dir[300];
    new_dir(dir, sizeof dir);
    rev(dir, "01_a", "a1", "", NULL, "CREATE TABLE t1 (id int);\nSELECT pg_sleep(0.5);", "DROP TABLE t1;");
    rev(dir, "02_b", "b2", "a1", NULL, "CREATE TABLE t2 (id int);", "DROP TABLE t2;");
    struct ev_loop *evl = ev_loop_new(0);
    env t1, t2;
    env_open(&t1, evl, d, dir, NULL, 0);
    env_open(&t2, evl, d, dir, NULL, 0); /* its own engine: another deploy */
    env_handle(&t1);
    env_handle(&t2);
    outcome o1 = {0}, o2 = {0};
    cr_assert_eq(aorm_migrate_upgrade(t1.m, NULL, on_outcome, &o1), 0);
    cr_assert_eq(aorm_migrate_upgrade(t2.m, NULL, on_outcome, &o2), 0);
    wait_outcome(&t1, &o1, "runner 1");
    wait_outcome(&t2, &o2, "runner 2");
    expect_ok(&o1, "runner 1");
    expect_ok(&o2, "runner 2");
    outcome *applied = o1.ndone ? &o1 : &o2, *idle = o1.ndone ? &o2 : &o1;
    cr_assert_str_eq(applied->done, "a1 b2");
    cr_assert(!applied->nothing);
    cr_assert(idle->nothing && idle->ndone == 0, "the other runner: %s", idle->message);
    cr_assert(strstr(idle->message, "nothing to do"), "%s", idle->message);
    cr_assert_eq(history_rows(d), 2);
    outcome_free(&o1);
    outcome_free(&o2);
    env_close(&t1);
    env_close(&t2);
    ev_loop_destroy(evl);
}

Test(migrate, a_runner_waits_for_the_lock_within_lock_wait_only) {
    tdb *d = new_db("wait");
    char dir[300];
    new_dir(dir, sizeof dir);
    rev(dir, "01_a", "a1", "", NULL, "CREATE TABLE t1 (id int);", "DROP TABLE t1;");
    struct ev_loop *evl = ev_loop_new(0);
    env t;
    env_open(&t, evl, d, dir, NULL, 0);
    t.o.lock_key = 4242;
    t.o.lock_wait = 0.5;
    PGconn *holder = db_conn(d);
    free(t_pg_exec(holder, "SELECT pg_advisory_lock(4242)"));
    double t0 = ev_time();
    outcome o = run(&t, UPGRADE, NULL);
    double took = ev_time() - t0;
    cr_assert_eq(o.code, AORM_ETIMEOUT, "%s", o.message);
    cr_assert_eq(o.problem, AORM_MIGRATE_LOCK_WAIT);
    cr_assert(took >= 0.5 && took < 5, "waited %.2f s", took);
    outcome_free(&o);
    cr_assert_not(has_table(d, "t1"));
    /* it never queued a blocking waiter: no ungranted advisory lock now or ever needed */
    cr_assert_eq(db_long(d, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND NOT granted"), 0);
    free(t_pg_exec(holder, "SELECT pg_advisory_unlock(4242)"));
    o = run(&t, UPGRADE, NULL);
    expect_ok(&o, "upgrade once the lock is free");
    outcome_free(&o);
    /* and it let go of the lock when done */
    char *got = t_pg_exec(holder, "SELECT pg_try_advisory_lock(4242)::text");
    cr_assert_str_eq(got, "true");
    free(got);
    PQfinish(holder);
    env_close(&t);
    ev_loop_destroy(evl);
}

/* ==========================================================================
 * CREATE INDEX CONCURRENTLY and the lock
 * ========================================================================== */

static void cic_revisions(const char *dir) {
    rev(dir, "01_a", "a1", "", NULL,
        "CREATE TABLE t1 (id int PRIMARY KEY, v int);\nINSERT INTO t1 SELECT g, g % 7 FROM generate_series(1, 2000) g;",
        "DROP TABLE t1;");
    rev(dir, "02_b", "b2", "a1", "-- transaction: false",
        "SELECT pg_sleep(0.4);\nCREATE INDEX CONCURRENTLY t1_v_idx ON t1 (v);",
        "DROP INDEX CONCURRENTLY t1_v_idx;");
}

Test(migrate, create_index_concurrently_runs_while_the_lock_is_held_in_another_database) {
    tdb *d = new_db("cic");
    tdb *other = new_db("cic_other");
    char dir[300];
    new_dir(dir, sizeof dir);
    cic_revisions(dir);
    /* a session of the other database holds the same key, inside an open
     * transaction with a snapshot */
    PGconn *holder = db_conn(other);
    free(t_pg_exec(holder, "BEGIN ISOLATION LEVEL REPEATABLE READ"));
    free(t_pg_exec(holder, "SELECT pg_advisory_lock(777001)"));
    free(t_pg_exec(holder, "SELECT count(*) FROM pg_class"));
    struct ev_loop *evl = ev_loop_new(0);
    env t;
    env_open(&t, evl, d, dir, NULL, 0);
    t.o.lock_key = 777001;
    outcome o = run(&t, UPGRADE, NULL);
    expect_ok(&o, "upgrade with CONCURRENTLY");
    cr_assert_str_eq(o.done, "a1 b2");
    outcome_free(&o);
    char *cat = catalog(d);
    cr_assert(strstr(cat, "idx CREATE INDEX t1_v_idx ON public.t1 USING btree (v)\n"), "valid index: %s", cat);
    free(cat);
    char *tx = db_text(d, "SELECT transactional::text FROM aorm_migrate_history WHERE revision = 'b2'");
    cr_assert_str_eq(tx, "false");
    free(tx);
    /* back down: DROP INDEX CONCURRENTLY, outside a transaction too */
    o = run(&t, DOWNGRADE, "a1");
    expect_ok(&o, "downgrade");
    outcome_free(&o);
    cr_assert_eq(db_long(d, "SELECT count(*) FROM pg_class WHERE relname = 't1_v_idx'"), 0);
    free(t_pg_exec(holder, "COMMIT"));
    PQfinish(holder);
    env_close(&t);
    ev_loop_destroy(evl);
}

Test(migrate, create_index_concurrently_completes_while_a_second_runner_waits_for_the_lock) {
    /* The runner without the lock polls: between polls its connection is
     * idle, outside any transaction. A blocking pg_advisory_lock() would
     * wait inside a statement whose snapshot the CONCURRENTLY build waits
     * for: neither would ever finish (the test's timeout). */
    tdb *d = new_db("cic2");
    char dir[300];
    new_dir(dir, sizeof dir);
    cic_revisions(dir);
    struct ev_loop *evl = ev_loop_new(0);
    env t1, t2;
    env_open(&t1, evl, d, dir, NULL, 0);
    env_open(&t2, evl, d, dir, NULL, 0);
    env_handle(&t1);
    env_handle(&t2);
    outcome o1 = {0}, o2 = {0};
    cr_assert_eq(aorm_migrate_upgrade(t1.m, NULL, on_outcome, &o1), 0);
    cr_assert_eq(aorm_migrate_upgrade(t2.m, NULL, on_outcome, &o2), 0);
    wait_outcome(&t1, &o1, "runner 1");
    wait_outcome(&t2, &o2, "runner 2");
    expect_ok(&o1, "runner 1");
    expect_ok(&o2, "runner 2");
    cr_assert_eq(o1.ndone + o2.ndone, 2);
    cr_assert(o1.nothing != o2.nothing);
    outcome_free(&o1);
    outcome_free(&o2);
    cr_assert_eq(db_long(d, "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                            "WHERE c.relname = 't1_v_idx' AND i.indisvalid"),
                 1);
    env_close(&t1);
    env_close(&t2);
    ev_loop_destroy(evl);
}

/* ==========================================================================
 * Checksums: tampered and missing files
 * ========================================================================== */

Test(migrate, a_tampered_and_a_missing_applied_file_stop_the_run_until_repaired) {
    tdb *d = new_db("sum");
    char dir[300];
    new_dir(dir, sizeof dir);
    rev(dir, "01_a", "a1", "", NULL, "CREATE TABLE t1 (id int);", "DROP TABLE t1;");
    rev(dir, "02_b", "b2", "a1", NULL, "CREATE TABLE t2 (id int);", "DROP TABLE t2;");
    struct ev_loop *evl = ev_loop_new(0);
    env t;
    env_open(&t, evl, d, dir, NULL, 0);
    outcome o = run(&t, UPGRADE, NULL);
    expect_ok(&o, "upgrade");
    outcome_free(&o);

    /* the recorded checksum is the SHA-256 of the file's bytes */
    char path_a[400], path_b[400];
    snprintf(path_a, sizeof path_a, "%s/01_a.sql", dir);
    snprintf(path_b, sizeof path_b, "%s/02_b.sql", dir);
    char *bytes = t_read_file(path_a);
    PGconn *c = db_conn(d);
    const char *pv[1] = {bytes};
    PGresult *r = PQexecParams(c, "SELECT encode(sha256(convert_to($1, 'UTF8')), 'hex') = checksum "
                               "FROM aorm_migrate_history WHERE revision = 'a1'",
                               1, NULL, pv, NULL, NULL, 0);
    cr_assert(PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1, "%s", PQerrorMessage(c));
    cr_assert_str_eq(PQgetvalue(r, 0, 0), "t");
    PQclear(r);
    PQfinish(c);

    /* an edit of an applied file -- a comment is enough */
    FILE *f = fopen(path_a, "a");
    fputs("-- edited\n", f);
    fclose(f);
    rev(dir, "03_c", "c3", "b2", NULL, "CREATE TABLE t3 (id int);", "DROP TABLE t3;");
    o = run(&t, UPGRADE, NULL);
    cr_assert_eq(o.problem, AORM_MIGRATE_TAMPERED, "%s", o.message);
    cr_assert(strstr(o.message, "01_a.sql") && strstr(o.message, "repair"), "%s", o.message);
    outcome_free(&o);
    cr_assert_not(has_table(d, "t3"), "nothing runs past a tampered file");
    o = run(&t, STATUS, NULL);
    expect_ok(&o, "status");
    cr_assert_eq(o.problem, AORM_MIGRATE_TAMPERED);
    cr_assert(strstr(o.text, "TAMPERED  a1") && strstr(o.text, "pending  c3"), "%s", o.text);
    outcome_free(&o);
    o = run(&t, REPAIR, NULL);
    expect_ok(&o, "repair");
    cr_assert(strstr(o.text, "recorded  a1"), "%s", o.text);
    outcome_free(&o);
    o = run(&t, UPGRADE, NULL);
    expect_ok(&o, "upgrade after repair");
    cr_assert_str_eq(o.done, "c3");
    outcome_free(&o);

    /* an applied file that is gone */
    cr_assert(unlink(path_b) == 0);
    snprintf(path_b, sizeof path_b, "%s/03_c.sql", dir);
    rev(dir, "03_c", "c3", "a1", NULL, "CREATE TABLE t3 (id int);", "DROP TABLE t3;"); /* c3 now hangs off a1 */
    o = run(&t, UPGRADE, NULL);
    cr_assert_eq(o.problem, AORM_MIGRATE_MISSING, "%s", o.message);
    cr_assert(strstr(o.message, "b2"), "%s", o.message);
    outcome_free(&o);
    o = run(&t, DOWNGRADE, "base");
    cr_assert_eq(o.problem, AORM_MIGRATE_MISSING, "downgrade stops too: %s", o.message);
    outcome_free(&o);
    cr_assert(has_table(d, "t1"));
    o = run(&t, REPAIR, NULL);
    expect_ok(&o, "repair");
    cr_assert(strstr(o.text, "forgot    b2"), "%s", o.text);
    outcome_free(&o);
    cr_assert_eq(history_rows(d), 2);
    o = run(&t, UPGRADE, NULL);
    expect_ok(&o, "upgrade after the second repair");
    cr_assert(o.nothing);
    outcome_free(&o);
    free(bytes);
    env_close(&t);
    ev_loop_destroy(evl);
}

/* ==========================================================================
 * Offline and stamp
 * ========================================================================== */

Test(migrate, offline_writes_the_sql_and_runs_nothing) {
    tdb *d = new_db("offline");
    char dir[300];
    new_dir(dir, sizeof dir);
    rev(dir, "01_a", "a1", "", NULL, "CREATE TABLE t1 (id int, s text DEFAULT 'it''s');", "DROP TABLE t1;");
    rev(dir, "02_b", "b2", "a1", "-- transaction: false", "CREATE INDEX CONCURRENTLY t1_id_idx ON t1 (id);",
        "DROP INDEX t1_id_idx;");
    struct ev_loop *evl = ev_loop_new(0);
    for (int with_engine = 0; with_engine < 2; with_engine++) {
        env t;
        env_open(&t, evl, with_engine ? d : NULL, dir, NULL, 0);
        t.o.offline = true;
        outcome o = run(&t, UPGRADE, NULL);
        expect_ok(&o, "offline upgrade");
        cr_assert_str_eq(o.done, "a1 b2");
        const char *s = o.text;
        const char *p1 = strstr(s, "CREATE TABLE IF NOT EXISTS \"aorm_migrate_history\"");
        const char *p2 = strstr(s, "BEGIN;\nSET LOCAL lock_timeout = '5000ms';\nSET LOCAL statement_timeout = '300000ms';\n"
                                   "CREATE TABLE t1 (id int, s text DEFAULT 'it''s');\nINSERT INTO \"aorm_migrate_history\"");
        const char *p3 = strstr(s, "SET statement_timeout = '300000ms';\nCREATE INDEX CONCURRENTLY t1_id_idx ON t1 (id);\n"
                                   "INSERT INTO \"aorm_migrate_history\"");
        cr_assert(p1 && p2 && p3 && p1 < p2 && p2 < p3, "%s", s);
        cr_assert(strstr(s, "'01_a.sql'") && strstr(s, "RESET statement_timeout;"), "%s", s);
        outcome_free(&o);
        env_close(&t);
        cr_assert_eq(db_long(d, "SELECT count(*) FROM pg_class WHERE relname IN ('t1', 'aorm_migrate_history')"), 0);
    }
    /* the script is what a run does: psql can run it */
    env t;
    env_open(&t, evl, NULL, dir, NULL, 0);
    t.o.offline = true;
    outcome o = run(&t, UPGRADE, NULL);
    char script[400];
    snprintf(script, sizeof script, "%s/up.sql", tdir);
    write_file(script, o.text);
    outcome_free(&o);
    env_close(&t);
    char *cmd = NULL;
    cr_assert(asprintf(&cmd, "psql -X -q -v ON_ERROR_STOP=1 -f '%s' '%s' > /dev/null 2>&1", script, d->dsn) > 0);
    cr_assert_eq(system(cmd), 0, "psql -f of the offline script failed");
    free(cmd);
    env_open(&t, evl, d, dir, NULL, 0);
    o = run(&t, UPGRADE, NULL);
    expect_ok(&o, "upgrade after the script");
    cr_assert(o.nothing, "the script recorded the history a run would: %s", o.message);
    outcome_free(&o);
    env_close(&t);
    ev_loop_destroy(evl);
}

Test(migrate, stamp_records_without_running_and_status_lists_both_kinds) {
    tdb *d = new_db("stamp");
    char dir[300];
    new_dir(dir, sizeof dir);
    branch_and_merge(dir, true);
    struct ev_loop *evl = ev_loop_new(0);
    env t;
    env_open(&t, evl, d, dir, NULL, 0);
    outcome o = run(&t, STAMP, "bbbb");
    expect_ok(&o, "stamp b");
    cr_assert(strstr(o.text, "stamped   aaaa00000001") && strstr(o.text, "stamped   bbbb00000002"), "%s", o.text);
    outcome_free(&o);
    cr_assert_not(has_table(d, "t1"), "stamp runs nothing");
    o = run(&t, STATUS, NULL);
    expect_ok(&o, "status");
    cr_assert(strstr(o.text, "applied  aaaa00000001") && strstr(o.text, "applied  bbbb00000002") &&
                  strstr(o.text, "pending  cccc00000003") && strstr(o.text, "pending  dddd00000004  04_d  (head)"),
              "%s", o.text);
    cr_assert_str_eq(o.message, "2 applied, 2 pending");
    outcome_free(&o);
    o = run(&t, STAMP, "base");
    expect_ok(&o, "stamp base");
    outcome_free(&o);
    cr_assert_eq(history_rows(d), 0);
    env_close(&t);
    ev_loop_destroy(evl);
}

/* ==========================================================================
 * Autogenerate and check
 * ========================================================================== */

/* The bookstore's books, changed: a column added (ISBN, named by the
 * macro's second argument), a type changed (year: integer -> bigint), an
 * index added (title), a foreign key added (editor_id -> authors). */
#define CHANGED_BOOKS(S, isbn)                                                                   \
    typedef struct S {                                                                           \
        int64_t id;                                                                              \
        int64_t author_id;                                                                       \
        char *title;                                                                             \
        int64_t year;                                                                            \
        double price;                                                                            \
        char *isbn;                                                                              \
        aorm_opt_int64 editor_id;                                                                \
    } S;                                                                                         \
    static const aorm_column S##_columns[] = {                                                   \
        AORM_COLUMN(S, id, AORM_INT8, AORM_PK | AORM_SERIAL), AORM_COLUMN(S, author_id, AORM_INT8, 0), \
        AORM_COLUMN(S, title, AORM_TEXT, 0),           AORM_COLUMN(S, year, AORM_INT8, 0),        \
        AORM_COLUMN(S, price, AORM_FLOAT8, 0),         AORM_COLUMN(S, isbn, AORM_TEXT, AORM_NULLABLE), \
        AORM_COLUMN(S, editor_id, AORM_INT8, AORM_NULLABLE),                                     \
    };                                                                                           \
    static const aorm_foreign_key S##_fks[] = {                                                  \
        AORM_FOREIGN_KEY(S, author_id, author, id),                                              \
        AORM_FOREIGN_KEY(S, editor_id, author, id, .on_delete = AORM_FK_SET_NULL),               \
    };                                                                                           \
    static const aorm_index S##_indexes[] = {                                                    \
        {.name = "books_title_idx", .fields = (const size_t[]){offsetof(S, title)}, .nfields = 1}, \
    };                                                                                           \
    static const aorm_model S##_model = {                                                        \
        AORM_MODEL_OF(S, "books"),                                                               \
        AORM_COLUMNS(S##_columns),                                                               \
        AORM_FOREIGN_KEYS(S##_fks),                                                              \
        AORM_INDEXES(S##_indexes),                                                               \
    };

CHANGED_BOOKS(book2, isbn)   /* v2 */
CHANGED_BOOKS(book3, isbn13) /* v3: isbn renamed to isbn13 (same type) */

static const aorm_model *const V1[] = {&author_model, &book_model, &tag_model, &book_tag_model};
static const aorm_model *const V2[] = {&author_model, &book2_model, &tag_model, &book_tag_model};
static const aorm_model *const V3[] = {&author_model, &book3_model, &tag_model, &book_tag_model};

/* The up section of a revision file (from its marker to the down one). */
static char *up_section(const char *path) {
    char *text = t_read_file(path);
    char *up = strstr(text, "-- migrate:up\n");
    char *down = strstr(text, "-- migrate:down\n");
    cr_assert(up && down && up < down, "%s", text);
    *down = '\0';
    char *out = strdup(up);
    free(text);
    return out;
}

/* True when some line of text that is not a comment contains needle. */
static bool active_line_has(const char *text, const char *needle) {
    for (const char *p = text; *p;) {
        const char *e = strchr(p, '\n');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (strncmp(p, "--", 2) != 0) {
            char *line = strndup(p, n);
            bool hit = strstr(line, needle) != NULL;
            free(line);
            if (hit) return true;
        }
        p += n + (e ? 1 : 0);
    }
    return false;
}

Test(migrate, autogenerate_from_the_bookstore_then_a_changed_model_applies_and_check_is_clean) {
    tdb *d = new_db("auto");
    char dir[300];
    new_dir(dir, sizeof dir);
    struct ev_loop *evl = ev_loop_new(0);
    env t;
    env_open(&t, evl, d, dir, V1, 4);

    outcome o = run(&t, CHECK, NULL);
    expect_ok(&o, "check of an empty database");
    cr_assert(o.drift && o.problem == AORM_MIGRATE_DRIFT);
    cr_assert(strstr(o.text, "+ table authors") && strstr(o.text, "+ table book_tags"), "%s", o.text);
    outcome_free(&o);

    o = run(&t, AUTOGEN, "the bookstore");
    expect_ok(&o, "autogenerate v1");
    char *first_id = strdup(o.revision);
    char *up = up_section(o.file);
    cr_assert(strstr(up, "CREATE TABLE \"authors\"") && strstr(up, "CREATE INDEX \"books_author_id_idx\""), "%s", up);
    free(up);
    outcome_free(&o);
    o = run(&t, UPGRADE, NULL);
    expect_ok(&o, "upgrade v1");
    outcome_free(&o);
    o = run(&t, CHECK, NULL);
    expect_ok(&o, "check v1");
    cr_assert_not(o.drift, "drift after the v1 revision: %s", o.text);
    outcome_free(&o);
    char *cat_v1 = catalog(d);
    /* rows survive the changes below */
    free(db_text(d, "INSERT INTO authors (name) VALUES ('a'); INSERT INTO books (author_id, title, year, price) "
                    "VALUES (1, 't', 1999, 1.5)"));

    /* the changed model */
    t.o.models = V2;
    env_handle(&t);
    o = run(&t, CHECK, NULL);
    cr_assert(o.drift);
    cr_assert(strstr(o.text, "+ column books.isbn") && strstr(o.text, "~ column books.year: type integer -> bigint") &&
                  strstr(o.text, "+ index books_title_idx") && strstr(o.text, "+ foreign key books_editor_id_fkey"),
              "%s", o.text);
    outcome_free(&o);
    o = run(&t, AUTOGEN, "isbn, editors, title index");
    expect_ok(&o, "autogenerate v2");
    char *v2_path = strdup(o.file);
    char *text = t_read_file(o.file);
    char parents[64];
    snprintf(parents, sizeof parents, "-- parents: %s\n", first_id);
    cr_assert(strstr(text, parents), "%s", text);
    cr_assert(strstr(text, "ALTER TABLE \"books\" ADD COLUMN \"isbn\" text;"), "%s", text);
    cr_assert(strstr(text, "ALTER TABLE \"books\" ALTER COLUMN \"year\" TYPE bigint USING \"year\"::bigint;"), "%s", text);
    cr_assert(strstr(text, "CREATE INDEX books_title_idx ON books USING btree (title);"), "%s", text);
    cr_assert(strstr(text, "ADD CONSTRAINT \"books_editor_id_fkey\" FOREIGN KEY (editor_id) REFERENCES authors(id) ON DELETE SET NULL;"),
              "%s", text);
    cr_assert(strstr(text, "ALTER COLUMN \"year\" TYPE integer USING \"year\"::integer;"), "down: %s", text);
    free(text);
    outcome_free(&o);
    o = run(&t, UPGRADE, NULL);
    expect_ok(&o, "upgrade v2");
    outcome_free(&o);
    o = run(&t, CHECK, NULL);
    expect_ok(&o, "check v2");
    cr_assert_not(o.drift, "drift after the v2 revision: %s", o.text);
    outcome_free(&o);
    cr_assert_eq(db_long(d, "SELECT year FROM books"), 1999);

    /* a rename cannot be told from a drop and an add: a hint, never a drop */
    t.o.models = V3;
    env_handle(&t);
    o = run(&t, AUTOGEN, "isbn13");
    expect_ok(&o, "autogenerate v3");
    up = up_section(o.file);
    cr_assert(strstr(up, "-- column books.isbn is in the database but not in the models; not dropped."), "%s", up);
    cr_assert(strstr(up, "--   ALTER TABLE \"books\" RENAME COLUMN \"isbn\" TO \"isbn13\";"), "%s", up);
    cr_assert(active_line_has(up, "ADD COLUMN \"isbn13\""), "%s", up);
    cr_assert_not(active_line_has(up, "DROP"), "no drop outside a comment: %s", up);
    free(up);
    /* the v3 revision is not kept: back to v2 files */
    cr_assert(unlink(o.file) == 0);
    outcome_free(&o);

    /* the down section of v2 restores v1 exactly */
    t.o.models = V1;
    env_handle(&t);
    o = run(&t, DOWNGRADE, first_id);
    expect_ok(&o, "downgrade to v1");
    outcome_free(&o);
    char *now = catalog(d);
    cr_assert_str_eq(now, cat_v1);
    free(now);
    o = run(&t, CHECK, NULL);
    cr_assert(o.drift && !strcmp(o.text, "! 1 revision not applied\n"), "only v2 is pending: %s", o.text);
    outcome_free(&o);
    cr_assert(unlink(v2_path) == 0);
    free(v2_path);
    o = run(&t, CHECK, NULL);
    cr_assert_not(o.drift, "%s", o.text);
    outcome_free(&o);
    /* nothing left to generate: no file */
    o = run(&t, AUTOGEN, "nothing");
    expect_ok(&o, "autogenerate without differences");
    cr_assert(o.nothing && !o.file[0], "%s", o.file);
    outcome_free(&o);
    free(cat_v1);
    free(first_id);
    env_close(&t);
    ev_loop_destroy(evl);
}

Test(migrate, autogenerate_refuses_a_database_behind_its_revisions) {
    tdb *d = new_db("behind");
    char dir[300];
    new_dir(dir, sizeof dir);
    rev(dir, "01_a", "a1", "", NULL, "CREATE TABLE t1 (id int);", "DROP TABLE t1;");
    struct ev_loop *evl = ev_loop_new(0);
    env t;
    env_open(&t, evl, d, dir, V1, 4);
    outcome o = run(&t, AUTOGEN, "x");
    cr_assert_eq(o.problem, AORM_MIGRATE_NOT_AT_HEAD, "%s", o.message);
    outcome_free(&o);
    o = run(&t, CHECK, NULL);
    cr_assert(o.drift && strstr(o.text, "! 1 revision not applied"), "%s", o.text);
    outcome_free(&o);
    env_close(&t);
    ev_loop_destroy(evl);
}

/* ==========================================================================
 * On the loop; freeing the handle mid-run
 * ========================================================================== */

typedef struct ticker {
    ev_timer w;
    int ticks;
} ticker;

static void on_tick(struct ev_loop *evl, ev_timer *w, int revents) { ((ticker *)w->data)->ticks++; }

Test(migrate, a_run_never_blocks_the_loop) {
    tdb *d = new_db("loop");
    char dir[300];
    new_dir(dir, sizeof dir);
    rev(dir, "01_a", "a1", "", NULL, "CREATE TABLE t1 (id int);\nSELECT pg_sleep(0.6);", "DROP TABLE t1;");
    struct ev_loop *evl = ev_loop_new(0);
    env t;
    env_open(&t, evl, d, dir, NULL, 0);
    env_handle(&t);
    ticker tk = {.ticks = 0};
    tk.w.data = &tk;
    ev_timer_init(&tk.w, on_tick, 0.01, 0.01);
    ev_timer_start(evl, &tk.w);
    outcome o = {0};
    cr_assert_eq(aorm_migrate_upgrade(t.m, NULL, on_outcome, &o), 0);
    cr_assert_not(o.called);
    wait_outcome(&t, &o, "upgrade");
    ev_timer_stop(evl, &tk.w);
    expect_ok(&o, "upgrade");
    /* 0.6 s of server time at 10 ms a tick: the loop kept turning */
    cr_assert(tk.ticks >= 30, "only %d ticks while the revision ran", tk.ticks);
    outcome_free(&o);
    env_close(&t);
    ev_loop_destroy(evl);
}

static int lock_released(void *arg) {
    const tdb *d = arg;
    return db_long(d, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND objid = 5151") == 0;
}

static int lock_taken(void *arg) { return !lock_released(arg); }

Test(migrate, freeing_the_handle_mid_run_calls_back_once_and_lets_go_of_the_lock) {
    tdb *d = new_db("free");
    char dir[300];
    new_dir(dir, sizeof dir);
    rev(dir, "01_a", "a1", "", NULL, "CREATE TABLE t1 (id int);\nSELECT pg_sleep(0.5);", "DROP TABLE t1;");
    rev(dir, "02_b", "b2", "a1", NULL, "CREATE TABLE t2 (id int);", "DROP TABLE t2;");
    struct ev_loop *evl = ev_loop_new(0);
    env t;
    env_open(&t, evl, d, dir, NULL, 0);
    t.o.lock_key = 5151;
    env_handle(&t);
    outcome o = {0};
    cr_assert_eq(aorm_migrate_upgrade(t.m, NULL, on_outcome, &o), 0);
    cr_assert(t_run_until_fn(evl, lock_taken, d, 20), "the run never took the lock");
    aorm_migrate_free(t.m);
    t.m = NULL;
    cr_assert_eq(o.calls, 1, "called back from inside aorm_migrate_free");
    cr_assert_eq(o.code, AORM_ECANCELED);
    outcome_free(&o);
    /* the job winds down on its own: the lock goes, the revision in flight
     * finishes (it was sent), the next one never starts */
    cr_assert(t_run_until_fn(evl, lock_released, d, 20), "the lock was never released");
    cr_assert_not(has_table(d, "t2"));
    env_close(&t);
    ev_loop_destroy(evl);
}

static int run_for(struct ev_loop *evl, double seconds) {
    volatile int never = 0;
    return t_run_until(evl, &never, seconds);
}

Test(migrate, freeing_the_engine_while_a_run_waits_for_the_lock_calls_back_once) {
    tdb *d = new_db("engfree");
    char dir[300];
    new_dir(dir, sizeof dir);
    rev(dir, "01_a", "a1", "", NULL, "CREATE TABLE t1 (id int);", "DROP TABLE t1;");
    struct ev_loop *evl = ev_loop_new(0);
    env t;
    env_open(&t, evl, d, dir, NULL, 0);
    t.o.lock_key = 5252;
    PGconn *holder = db_conn(d);
    free(t_pg_exec(holder, "SELECT pg_advisory_lock(5252)"));
    env_handle(&t);
    outcome o = {0};
    cr_assert_eq(aorm_migrate_upgrade(t.m, NULL, on_outcome, &o), 0);
    run_for(evl, 0.5); /* it polls, and waits on its timer in between */
    cr_assert_not(o.called);
    aorm_engine_free(t.e);
    t.e = NULL;
    cr_assert_eq(o.calls, 1, "called back once, from inside aorm_engine_free");
    cr_assert_eq(o.code, AORM_ECANCELED, "%s", o.message);
    run_for(evl, 0.2);
    cr_assert_eq(o.calls, 1);
    outcome_free(&o);
    env_close(&t); /* the handle, then the loop: nothing of the job is left on it */
    cr_assert_not(has_table(d, "t1"));
    PQfinish(holder);
    ev_loop_destroy(evl);
}

/* ==========================================================================
 * The command line and the bookstore's revisions
 * ========================================================================== */

static int cli(const tdb *d, const char *args) {
    char *cmd = NULL;
    cr_assert(asprintf(&cmd, "AORM_MIGRATE_DSN='%s' '%s' -q %s > %s/cli.out 2>&1", d->dsn, AORM_MIGRATE_CLI, args,
                       tdir) > 0);
    int st = system(cmd);
    free(cmd);
    cr_assert(WIFEXITED(st));
    return WEXITSTATUS(st);
}

Test(migrate, the_cli_runs_the_bookstore_revisions_and_check_fails_on_drift) {
    tdb *d = new_db("cli");
    char args[1024];
    snprintf(args, sizeof args, "--models '%s' -d '%s' check", AORM_BOOKSTORE_MODELS, AORM_BOOKSTORE_MIGRATIONS);
    cr_assert_eq(cli(d, args), 3, "check of an empty database exits 3 (drift)");
    snprintf(args, sizeof args, "-d '%s' upgrade", AORM_BOOKSTORE_MIGRATIONS);
    cr_assert_eq(cli(d, args), 0);
    snprintf(args, sizeof args, "--models '%s' -d '%s' check", AORM_BOOKSTORE_MODELS, AORM_BOOKSTORE_MIGRATIONS);
    cr_assert_eq(cli(d, args), 0, "the bookstore's revisions match its models");
    free(db_text(d, "ALTER TABLE books ADD COLUMN extra int"));
    cr_assert_eq(cli(d, args), 3, "an extra column is drift");
    snprintf(args, sizeof args, "-d '%s' downgrade", AORM_BOOKSTORE_MIGRATIONS);
    cr_assert_eq(cli(d, args), 2, "downgrade without a target is a usage error");
    snprintf(args, sizeof args, "-d '%s' --sql upgrade", AORM_BOOKSTORE_MIGRATIONS);
    cr_assert_eq(cli(d, args), 0);
}

/* A model with an enum, interval, inet/cidr and array columns: the
 * revision creates the enum type before the table (and drops it after),
 * and once applied, check finds no drift (the scratch schema's
 * format_type() matches the live one). */
typedef enum mig_level { MIG_LOW = 1, MIG_HIGH = 2 } mig_level;
static const char *const mig_level_labels[] = {"low", "high"};
static const int mig_level_values[] = {MIG_LOW, MIG_HIGH};
static const aorm_enum mig_level_enum = {"mig_level", NULL, mig_level_labels, mig_level_values, 2};
typedef struct mig_typed {
    int64_t id;
    mig_level level;
    aorm_opt_int32 level2;
    aorm_interval span;
    aorm_opt_inet addr;
    aorm_inet net;
    aorm_array_int64 ids;
    aorm_array_text names;
    aorm_array_int64 stamps;
    aorm_array_text nums;
} mig_typed;
static const aorm_column mig_typed_columns[] = {
    AORM_COLUMN(mig_typed, id, AORM_INT8, AORM_PK),
    AORM_COLUMN(mig_typed, level, AORM_ENUM, 0, .enum_type = &mig_level_enum),
    AORM_COLUMN(mig_typed, level2, AORM_ENUM, AORM_NULLABLE, .enum_type = &mig_level_enum),
    AORM_COLUMN(mig_typed, span, AORM_INTERVAL, 0),
    AORM_COLUMN(mig_typed, addr, AORM_INET, AORM_NULLABLE),
    AORM_COLUMN(mig_typed, net, AORM_CIDR, 0),
    AORM_COLUMN(mig_typed, ids, AORM_INT8_ARRAY, 0),
    AORM_COLUMN(mig_typed, names, AORM_TEXT_ARRAY, AORM_NULLABLE),
    AORM_COLUMN(mig_typed, stamps, AORM_TIMESTAMPTZ_ARRAY, 0),
    AORM_COLUMN(mig_typed, nums, AORM_NUMERIC_ARRAY, 0),
};
static const aorm_model mig_typed_model = {AORM_MODEL_OF(mig_typed, "mig_typed"), AORM_COLUMNS(mig_typed_columns)};
static const aorm_model *const TYPED[] = {&mig_typed_model};

Test(migrate, autogenerate_a_model_with_enum_interval_inet_and_array_columns_then_check_is_clean) {
    tdb *d = new_db("typed");
    char dir[300];
    new_dir(dir, sizeof dir);
    struct ev_loop *evl = ev_loop_new(0);
    env t;
    env_open(&t, evl, d, dir, TYPED, 1);
    outcome o = run(&t, AUTOGEN, "typed");
    expect_ok(&o, "autogenerate");
    char *text = t_read_file(o.file);
    char *ct = strstr(text, "CREATE TYPE \"mig_level\" AS ENUM ('low', 'high');");
    char *tb = strstr(text, "CREATE TABLE \"mig_typed\"");
    cr_assert(ct && tb && ct < tb, "%s", text);
    cr_assert(strstr(text, "\"level\" \"mig_level\" NOT NULL") && strstr(text, "\"ids\" bigint[] NOT NULL"), "%s", text);
    char *dt = strstr(text, "DROP TYPE \"mig_level\";"), *dtb = strstr(text, "DROP TABLE \"mig_typed\";");
    cr_assert(dt && dtb && dtb < dt, "down: %s", text);
    free(text);
    char *first = strdup(o.revision);
    outcome_free(&o);
    o = run(&t, UPGRADE, NULL);
    expect_ok(&o, "upgrade");
    outcome_free(&o);
    o = run(&t, CHECK, NULL);
    expect_ok(&o, "check");
    cr_assert_not(o.drift, "drift after the revision: %s", o.text);
    outcome_free(&o);
    o = run(&t, AUTOGEN, "nothing");
    expect_ok(&o, "autogenerate without differences");
    cr_assert(o.nothing && !o.file[0], "%s", o.file);
    outcome_free(&o);
    o = run(&t, DOWNGRADE, "base");
    expect_ok(&o, "downgrade to base");
    outcome_free(&o);
    cr_assert_eq(db_long(d, "SELECT count(*) FROM pg_type WHERE typname = 'mig_level'"), 0, "the type is dropped");
    free(first);
    env_close(&t);
    ev_loop_destroy(evl);
}
