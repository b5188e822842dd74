/* migrate_int.h -- private to src/migrate: revision files and their graph
 * (revision.c), the catalog diff (autogen.c), shared with the runner
 * (runner.c). */
#ifndef AORM_MIGRATE_INT_H
#define AORM_MIGRATE_INT_H

#include <stdbool.h>
#include <stddef.h>

#include "aorm/migrate.h"
#include "util/util.h"

/* One statement of a section: its text (NUL-terminated, without the ';')
 * and the line of the file it starts on. */
typedef struct mig_stmt {
    char *sql;
    int line;
} mig_stmt;

typedef struct mig_rev {
    char *id;
    char **parents;
    int nparents;
    char *message;
    char *path;          /* directory/filename */
    char *filename;      /* points into path */
    bool transactional;  /* false: `-- transaction: false` */
    mig_stmt *up, *down;
    int nup, ndown;
    char checksum[65];   /* SHA-256 of the file, lower-case hex */
    int *pidx;           /* parents as indexes into the set */
    bool head;
} mig_rev;

/* A directory's revisions in graph order: every revision after its
 * parents; among revisions free to go, the file name sorting first. */
typedef struct mig_set {
    mig_rev *v;
    int n;
} mig_set;

/* Reads and parses every *.sql of dir. Returns 0, or a negative code with
 * *problem (BAD_FILE / BAD_GRAPH) and the reason in msg. */
int aorm__mig_load(const char *dir, mig_set *out, aorm_migrate_problem *problem, char *msg, size_t cap);
void aorm__mig_set_free(mig_set *s);

/* Index of the revision with id (exact, else a unique prefix), -1 none,
 * -2 ambiguous. */
int aorm__mig_find(const mig_set *s, const char *id);

/* Marks in `need` (n bools) the revision i and all its ancestors. */
void aorm__mig_ancestors(const mig_set *s, int i, bool *need);

/* SHA-256 of data as 64 lower-case hex digits (+ NUL). Returns 0 or
 * AORM_ENOMEM. */
int aorm__mig_sha256_hex(const void *data, size_t len, char out[65]);

/* 12 random hex digits (a new revision id). */
int aorm__mig_random_id(char out[13]);

/* Splits section text into statements (appended to *v / *n); line0 is the
 * file line the text starts on. Returns 0, or AORM_EMISUSE with msg
 * (unterminated quote or comment), AORM_ENOMEM. *concurrently is set when
 * a statement holds the word CONCURRENTLY outside quotes (but for REFRESH
 * MATERIALIZED VIEW, which may run in a transaction), *txctl when one
 * starts with BEGIN / START / COMMIT / END / ROLLBACK / ABORT (and is not
 * a DO or function body). */
int aorm__mig_split(const char *text, int line0, mig_stmt **v, int *n, bool *concurrently, bool *txctl,
                    char *msg, size_t cap);
void aorm__mig_stmts_free(mig_stmt *v, int n);

/* ---- autogenerate (autogen.c) ------------------------------------------- */

/* The catalog queries: the first creates the models' image in a scratch
 * schema inside the caller's transaction; the snapshot query reads one
 * schema (search_path set to it by the caller). */
#define MIG_SCRATCH_SCHEMA "aorm_migrate_scratch"
extern const char aorm__mig_snapshot_sql[];

/* One row of a catalog snapshot (text format): kind ('T' table, 'C'
 * column, 'K' constraint, 'I' index), table, name, then up to four
 * attributes (column: type, not null "t"/"f", default or "", identity;
 * constraint: contype, definition; index: definition). */
typedef struct mig_obj {
    char kind;
    char *table;
    char *name;
    char *a[4];
    bool matched;
} mig_obj;

typedef struct mig_snapshot {
    mig_obj *v;
    int n;
} mig_snapshot;

struct aorm_result;
int aorm__mig_snapshot_read(const struct aorm_result *r, mig_snapshot *out);
void aorm__mig_snapshot_free(mig_snapshot *s);

/* Differences between the models' image (want) and the database (have):
 * up and down SQL (statements ending ";\n", hints as "-- " comment lines)
 * and a readable list of differences. The models are used for the DDL of
 * missing tables (aorm_ddl_create_sql) and of added columns. Returns the
 * number of differences (0: none), or a negative code with msg. */
int aorm__mig_diff(const aorm_model *const *models, int nmodels, mig_snapshot *want, mig_snapshot *have,
                   aorm__buf *up, aorm__buf *down, aorm__buf *list, char *msg, size_t cap);

#endif /* AORM_MIGRATE_INT_H */
