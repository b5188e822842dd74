/* test_model.c -- models (src/mapping): lookups, the declaration checker,
 * DDL text, field codecs, and both checked against the sandbox PostgreSQL.
 *
 * Parts:
 *   lookups / validate   the bookstore models, and hand-built models with
 *                        one mistake each (the message must name it);
 *   ddl_text             golden CREATE / DROP text, dependency order,
 *                        cycles;
 *   field                aorm__field_* without a server: parameter bytes,
 *                        array layout, loading, equality, unset/NULL;
 *   server               create_all against a fresh database compared with
 *                        the catalog bench/schema.sql produces in another
 *                        fresh database; re-runs with IF NOT EXISTS; a
 *                        failing create rolled back; drop_all; and the round
 *                        trip of every column type, one value at a time and
 *                        as unnest() arrays.
 *
 * The sandbox's default database may already hold the reference tables,
 * so every server test works in databases of its own, created at its start
 * and dropped (WITH (FORCE)) by its fini. */
#include <float.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "aorm/model.h"
#include "aorm/sql.h"
#include "mapping/mapping.h"
#include "models.h" /* examples/bookstore */
#include "support.h"

#ifndef AORM_SOURCE_DIR
#error "AORM_SOURCE_DIR must name the source tree (set by tests/CMakeLists.txt)"
#endif

/* Seconds a test waits for one answer. */
#define WAIT 20.0
/* One timeout for every test of the file: Criterion 2.4.1's runner leaks
 * an entry of its timeout queue (reported by LeakSanitizer, failing the
 * run) when a test with a shorter timeout starts while one with a longer
 * timeout is still running. */
#define TIMEOUT 120

static const aorm_model *const bookstore[] = {&author_model, &book_model, &tag_model, &book_tag_model,
                                              &bulk_book_model};
#define NBOOKSTORE ((int)(sizeof(bookstore) / sizeof(bookstore[0])))

/* ==========================================================================
 * Test models
 * ========================================================================== */

/* person / team: a correct many-to-one / one-to-many pair, the base of the
 * broken variants below. */
typedef struct team {
    int64_t id;
    char *title;
    aorm_list members;
} team;

typedef struct person {
    int64_t id;
    char *name;
    int64_t team_id;
    char *code;
    struct team *team;
    aorm_list friends;
} person;

/* association for person.friends */
typedef struct friendship {
    int64_t a_id;
    int64_t b_id;
} friendship;

extern const aorm_model team_model, person_model, friendship_model;

static const aorm_column team_columns[] = {
    AORM_COLUMN(team, id, AORM_INT8, AORM_PK | AORM_SERIAL),
    AORM_COLUMN(team, title, AORM_TEXT, 0),
};
static const aorm_relationship team_relationships[] = {
    AORM_ONE_TO_MANY(team, members, person, team_id, .back_populates = "team"),
};
const aorm_model team_model = {
    AORM_MODEL_OF(team, "teams"),
    AORM_COLUMNS(team_columns),
    AORM_RELATIONSHIPS(team_relationships),
};

static const aorm_column person_columns[] = {
    AORM_COLUMN(person, id, AORM_INT8, AORM_PK | AORM_SERIAL),
    AORM_COLUMN(person, name, AORM_TEXT, 0),
    AORM_COLUMN(person, team_id, AORM_INT8, 0),
    AORM_COLUMN(person, code, AORM_TEXT, 0),
};
static const aorm_foreign_key person_foreign_keys[] = {
    AORM_FOREIGN_KEY(person, team_id, team, id),
};
static const aorm_relationship person_relationships[] = {
    AORM_MANY_TO_ONE(person, team, team, team_id, .back_populates = "members"),
    AORM_MANY_TO_MANY(person, friends, person, friendship, a_id, b_id),
};
const aorm_model person_model = {
    AORM_MODEL_OF(person, "people"),
    AORM_COLUMNS(person_columns),
    AORM_FOREIGN_KEYS(person_foreign_keys),
    AORM_RELATIONSHIPS(person_relationships),
};

static const aorm_column friendship_columns[] = {
    AORM_COLUMN(friendship, a_id, AORM_INT8, AORM_PK),
    AORM_COLUMN(friendship, b_id, AORM_INT8, AORM_PK),
};
static const aorm_foreign_key friendship_foreign_keys[] = {
    AORM_FOREIGN_KEY(friendship, a_id, person, id),
    AORM_FOREIGN_KEY(friendship, b_id, person, id),
};
const aorm_model friendship_model = {
    AORM_MODEL_OF(friendship, "friendships"),
    AORM_COLUMNS(friendship_columns),
    AORM_FOREIGN_KEYS(friendship_foreign_keys),
};

/* ---- broken declarations, one mistake each --------------------------------- */

/* Models reuse person's columns etc. with one part replaced. The name stays
 * "person" so messages are checked for the culprit field, not the model. */
#define PERSON_BASE                                                                                  \
    .name = "person", .table = "people", .size = sizeof(person)

static const aorm_column cols_no_pk[] = {
    AORM_COLUMN(person, id, AORM_INT8, 0),
    AORM_COLUMN(person, name, AORM_TEXT, 0),
};
static const aorm_model bad_no_pk = {PERSON_BASE, AORM_COLUMNS(cols_no_pk)};

static const aorm_column cols_dup_name[] = {
    AORM_COLUMN(person, id, AORM_INT8, AORM_PK),
    AORM_COLUMN(person, name, AORM_TEXT, 0),
    {.name = "name", .offset = offsetof(person, code), .size = sizeof(char *), .type = AORM_TEXT},
};
static const aorm_model bad_dup_name = {PERSON_BASE, AORM_COLUMNS(cols_dup_name)};

/* hand-built: a char * field declared AORM_INT8 */
static const aorm_column cols_bad_size[] = {
    AORM_COLUMN(person, id, AORM_INT8, AORM_PK),
    {.name = "name", .offset = offsetof(person, name), .size = 4, .type = AORM_INT4, .flags = AORM_NULLABLE},
};
static const aorm_model bad_size = {PERSON_BASE, AORM_COLUMNS(cols_bad_size)};

static const aorm_column cols_serial_text[] = {
    AORM_COLUMN(person, id, AORM_INT8, AORM_PK),
    AORM_COLUMN(person, name, AORM_TEXT, AORM_SERIAL),
};
static const aorm_model bad_serial_text = {PERSON_BASE, AORM_COLUMNS(cols_serial_text)};

typedef struct nullable_pk {
    aorm_opt_int64 id;
} nullable_pk;
static const aorm_column cols_nullable_pk[] = {
    AORM_COLUMN(nullable_pk, id, AORM_INT8, AORM_PK | AORM_NULLABLE),
};
static const aorm_model bad_nullable_pk = {.name = "nullable_pk", .table = "nullable_pks",
                                           .size = sizeof(nullable_pk), AORM_COLUMNS(cols_nullable_pk)};

/* FK on a field that is not a declared column (code is, team is not) */
static const aorm_foreign_key fks_not_column[] = {
    {.offset = offsetof(person, team), .target = &team_model, .target_offset = offsetof(team, id)},
};
static const aorm_model bad_fk_not_column = {PERSON_BASE, AORM_COLUMNS(person_columns),
                                             AORM_FOREIGN_KEYS(fks_not_column)};

/* FK from a text column to an int8 key */
static const aorm_foreign_key fks_type[] = {
    AORM_FOREIGN_KEY(person, code, team, id),
};
static const aorm_model bad_fk_type = {PERSON_BASE, AORM_COLUMNS(person_columns), AORM_FOREIGN_KEYS(fks_type)};

/* FK to a column that is neither the key nor unique */
static const aorm_foreign_key fks_not_unique[] = {
    AORM_FOREIGN_KEY(person, code, team, title),
};
static const aorm_model bad_fk_not_unique = {PERSON_BASE, AORM_COLUMNS(person_columns),
                                             AORM_FOREIGN_KEYS(fks_not_unique)};

static const aorm_foreign_key fks_set_null[] = {
    AORM_FOREIGN_KEY(person, team_id, team, id, .on_delete = AORM_FK_SET_NULL),
};
static const aorm_model bad_fk_set_null = {PERSON_BASE, AORM_COLUMNS(person_columns),
                                           AORM_FOREIGN_KEYS(fks_set_null)};

/* many-to-one without a foreign key behind it */
static const aorm_relationship rels_m2o[] = {
    AORM_MANY_TO_ONE(person, team, team, team_id),
};
static const aorm_model bad_m2o_no_fk = {PERSON_BASE, AORM_COLUMNS(person_columns), AORM_RELATIONSHIPS(rels_m2o)};

/* one-to-many whose target has no foreign key back (person's code is no FK) */
static const aorm_relationship rels_o2m[] = {
    AORM_ONE_TO_MANY(team, members, person, code),
};
static const aorm_model bad_o2m_no_fk = {.name = "team", .table = "teams", .size = sizeof(team),
                                         AORM_COLUMNS(team_columns), AORM_RELATIONSHIPS(rels_o2m)};

/* many-to-many through a secondary with only one of its two foreign keys */
typedef struct club {
    int64_t id;
    aorm_list people;
} club;
typedef struct membership {
    int64_t club_id;
    int64_t person_id;
} membership;
extern const aorm_model club_model, membership_model;
static const aorm_column club_columns[] = {AORM_COLUMN(club, id, AORM_INT8, AORM_PK)};
static const aorm_relationship club_relationships[] = {
    AORM_MANY_TO_MANY(club, people, person, membership, club_id, person_id),
};
const aorm_model club_model = {AORM_MODEL_OF(club, "clubs"), AORM_COLUMNS(club_columns),
                               AORM_RELATIONSHIPS(club_relationships)};
static const aorm_column membership_columns[] = {
    AORM_COLUMN(membership, club_id, AORM_INT8, AORM_PK),
    AORM_COLUMN(membership, person_id, AORM_INT8, AORM_PK),
};
static const aorm_foreign_key membership_foreign_keys[] = {
    AORM_FOREIGN_KEY(membership, club_id, club, id), /* person_id's is missing */
};
const aorm_model membership_model = {AORM_MODEL_OF(membership, "memberships"), AORM_COLUMNS(membership_columns),
                                     AORM_FOREIGN_KEYS(membership_foreign_keys)};

/* back_populates naming nothing */
static const aorm_relationship rels_bp_missing[] = {
    AORM_MANY_TO_ONE(person, team, team, team_id, .back_populates = "players"),
};
static const aorm_model bad_bp_missing = {PERSON_BASE, AORM_COLUMNS(person_columns),
                                          AORM_FOREIGN_KEYS(person_foreign_keys),
                                          AORM_RELATIONSHIPS(rels_bp_missing)};

/* back_populates naming a relationship of the wrong kind: coach.squad is
 * many-to-one and names squad.coaches, which is many-to-one too (through
 * another foreign key) instead of one-to-many */
typedef struct coach {
    int64_t id;
    int64_t squad_id;
    struct squad *squad;
} coach;
typedef struct squad {
    int64_t id;
    int64_t head_id;
    struct coach *coaches;
} squad;
extern const aorm_model coach_model, squad_model;
static const aorm_column coach_columns[] = {
    AORM_COLUMN(coach, id, AORM_INT8, AORM_PK),
    AORM_COLUMN(coach, squad_id, AORM_INT8, 0),
};
static const aorm_foreign_key coach_foreign_keys[] = {AORM_FOREIGN_KEY(coach, squad_id, squad, id)};
static const aorm_relationship coach_relationships[] = {
    AORM_MANY_TO_ONE(coach, squad, squad, squad_id, .back_populates = "coaches"),
};
const aorm_model coach_model = {AORM_MODEL_OF(coach, "coaches"), AORM_COLUMNS(coach_columns),
                                AORM_FOREIGN_KEYS(coach_foreign_keys), AORM_RELATIONSHIPS(coach_relationships)};
static const aorm_column squad_columns[] = {
    AORM_COLUMN(squad, id, AORM_INT8, AORM_PK),
    AORM_COLUMN(squad, head_id, AORM_INT8, 0),
};
static const aorm_foreign_key squad_foreign_keys[] = {AORM_FOREIGN_KEY(squad, head_id, coach, id)};
static const aorm_relationship squad_relationships[] = {
    AORM_MANY_TO_ONE(squad, coaches, coach, head_id),
};
const aorm_model squad_model = {AORM_MODEL_OF(squad, "squads"), AORM_COLUMNS(squad_columns),
                                AORM_FOREIGN_KEYS(squad_foreign_keys), AORM_RELATIONSHIPS(squad_relationships)};

/* an index over a field that is not a column */
static const size_t idx_fields_bad[] = {offsetof(person, name), offsetof(person, team)};
static const aorm_index idx_bad[] = {{.name = "people_name_team", .fields = idx_fields_bad, .nfields = 2}};
static const aorm_model bad_index = {PERSON_BASE, AORM_COLUMNS(person_columns),
                                     AORM_FOREIGN_KEYS(person_foreign_keys), AORM_INDEXES(idx_bad)};

/* ---- the kitchen sink: every DDL feature -------------------------------------- */

typedef struct node {
    int64_t id;
    aorm_opt_int64 parent_id;
    char *label;
    int64_t created;
    aorm_uuid token;
    int32_t rank;
    int32_t kind;
} node;

typedef struct edge {
    int64_t src;
    int64_t dst;
    aorm_opt_double weight;
} edge;

extern const aorm_model node_model, edge_model;

static const aorm_column node_columns[] = {
    AORM_COLUMN(node, id, AORM_INT8, AORM_PK | AORM_IDENTITY),
    AORM_COLUMN(node, parent_id, AORM_INT8, AORM_NULLABLE),
    AORM_COLUMN(node, label, AORM_TEXT, AORM_UNIQUE),
    AORM_COLUMN(node, created, AORM_TIMESTAMPTZ, 0, .server_default = "now()"),
    AORM_COLUMN(node, token, AORM_UUID, AORM_INDEX),
    AORM_COLUMN(node, rank, AORM_INT4, 0, .server_default = "0"),
    AORM_COLUMN(node, kind, AORM_INT4, 0),
};
static const aorm_foreign_key node_foreign_keys[] = {
    AORM_FOREIGN_KEY(node, parent_id, node, id, .on_delete = AORM_FK_SET_NULL),
};
static const size_t node_rank_kind[] = {offsetof(node, rank), offsetof(node, kind)};
static const size_t node_kind_label[] = {offsetof(node, kind), offsetof(node, label)};
static const aorm_index node_indexes[] = {
    {.fields = node_rank_kind, .nfields = 2},
    {.name = "nodes_kind_label_uq", .fields = node_kind_label, .nfields = 2, .unique = true},
};
const aorm_model node_model = {
    AORM_MODEL_OF(node, "nodes"),
    .schema = "app",
    AORM_COLUMNS(node_columns),
    AORM_FOREIGN_KEYS(node_foreign_keys),
    AORM_INDEXES(node_indexes),
};

static const aorm_column edge_columns[] = {
    AORM_COLUMN(edge, src, AORM_INT8, AORM_PK),
    AORM_COLUMN(edge, dst, AORM_INT8, AORM_PK),
    AORM_COLUMN(edge, weight, AORM_FLOAT8, AORM_NULLABLE),
};
static const aorm_foreign_key edge_foreign_keys[] = {
    AORM_FOREIGN_KEY(edge, src, node, id, .on_delete = AORM_FK_CASCADE),
    AORM_FOREIGN_KEY(edge, dst, node, id, .on_delete = AORM_FK_RESTRICT),
};
const aorm_model edge_model = {
    AORM_MODEL_OF(edge, "edges"),
    .schema = "app",
    AORM_COLUMNS(edge_columns),
    AORM_FOREIGN_KEYS(edge_foreign_keys),
};

/* ---- a cycle: cyc_a <-> cyc_b, and cyc_c hanging off it --------------------- */

typedef struct cyc_a {
    int64_t id;
    int64_t b_id;
} cyc_a;
typedef struct cyc_b {
    int64_t id;
    int64_t a_id;
} cyc_b;
typedef struct cyc_c {
    int64_t id;
    int64_t a_id;
} cyc_c;
extern const aorm_model cyc_a_model, cyc_b_model, cyc_c_model;

static const aorm_column cyc_a_columns[] = {
    AORM_COLUMN(cyc_a, id, AORM_INT8, AORM_PK),
    AORM_COLUMN(cyc_a, b_id, AORM_INT8, 0),
};
static const aorm_foreign_key cyc_a_fks[] = {AORM_FOREIGN_KEY(cyc_a, b_id, cyc_b, id)};
const aorm_model cyc_a_model = {AORM_MODEL_OF(cyc_a, "cyc_a"), AORM_COLUMNS(cyc_a_columns),
                                AORM_FOREIGN_KEYS(cyc_a_fks)};
static const aorm_column cyc_b_columns[] = {
    AORM_COLUMN(cyc_b, id, AORM_INT8, AORM_PK),
    AORM_COLUMN(cyc_b, a_id, AORM_INT8, 0),
};
static const aorm_foreign_key cyc_b_fks[] = {AORM_FOREIGN_KEY(cyc_b, a_id, cyc_a, id)};
const aorm_model cyc_b_model = {AORM_MODEL_OF(cyc_b, "cyc_b"), AORM_COLUMNS(cyc_b_columns),
                                AORM_FOREIGN_KEYS(cyc_b_fks)};
static const aorm_column cyc_c_columns[] = {
    AORM_COLUMN(cyc_c, id, AORM_INT8, AORM_PK),
    AORM_COLUMN(cyc_c, a_id, AORM_INT8, 0),
};
static const aorm_foreign_key cyc_c_fks[] = {AORM_FOREIGN_KEY(cyc_c, a_id, cyc_a, id)};
const aorm_model cyc_c_model = {AORM_MODEL_OF(cyc_c, "cyc_c"), AORM_COLUMNS(cyc_c_columns),
                                AORM_FOREIGN_KEYS(cyc_c_fks)};

/* ---- every column type, non-null and nullable ---------------------------------- */

typedef struct every {
    int64_t id;
    bool b;
    aorm_opt_bool nb;
    int16_t i2;
    aorm_opt_int16 ni2;
    int32_t i4;
    aorm_opt_int32 ni4;
    int64_t i8;
    aorm_opt_int64 ni8;
    float f4;
    aorm_opt_float nf4;
    double f8;
    aorm_opt_double nf8;
    char *num;
    char *nnum;
    char *txt;
    char *ntxt;
    aorm_bytes by;
    aorm_bytes nby;
    int32_t d;
    aorm_opt_int32 nd;
    int64_t ts;
    aorm_opt_int64 nts;
    int64_t tz;
    aorm_opt_int64 ntz;
    aorm_uuid u;
    aorm_opt_uuid nu;
    char *js;
    char *njs;
    char *jb;
    char *njb;
} every;

extern const aorm_model every_model;

static const aorm_column every_columns[] = {
    AORM_COLUMN(every, id, AORM_INT8, AORM_PK),
    AORM_COLUMN(every, b, AORM_BOOL, 0),
    AORM_COLUMN(every, nb, AORM_BOOL, AORM_NULLABLE),
    AORM_COLUMN(every, i2, AORM_INT2, 0),
    AORM_COLUMN(every, ni2, AORM_INT2, AORM_NULLABLE),
    AORM_COLUMN(every, i4, AORM_INT4, 0),
    AORM_COLUMN(every, ni4, AORM_INT4, AORM_NULLABLE),
    AORM_COLUMN(every, i8, AORM_INT8, 0),
    AORM_COLUMN(every, ni8, AORM_INT8, AORM_NULLABLE),
    AORM_COLUMN(every, f4, AORM_FLOAT4, 0),
    AORM_COLUMN(every, nf4, AORM_FLOAT4, AORM_NULLABLE),
    AORM_COLUMN(every, f8, AORM_FLOAT8, 0),
    AORM_COLUMN(every, nf8, AORM_FLOAT8, AORM_NULLABLE),
    AORM_COLUMN(every, num, AORM_NUMERIC, 0),
    AORM_COLUMN(every, nnum, AORM_NUMERIC, AORM_NULLABLE),
    AORM_COLUMN(every, txt, AORM_TEXT, 0),
    AORM_COLUMN(every, ntxt, AORM_TEXT, AORM_NULLABLE),
    AORM_COLUMN(every, by, AORM_BYTEA, 0),
    AORM_COLUMN(every, nby, AORM_BYTEA, AORM_NULLABLE),
    AORM_COLUMN(every, d, AORM_DATE, 0),
    AORM_COLUMN(every, nd, AORM_DATE, AORM_NULLABLE),
    AORM_COLUMN(every, ts, AORM_TIMESTAMP, 0),
    AORM_COLUMN(every, nts, AORM_TIMESTAMP, AORM_NULLABLE),
    AORM_COLUMN(every, tz, AORM_TIMESTAMPTZ, 0),
    AORM_COLUMN(every, ntz, AORM_TIMESTAMPTZ, AORM_NULLABLE),
    AORM_COLUMN(every, u, AORM_UUID, 0),
    AORM_COLUMN(every, nu, AORM_UUID, AORM_NULLABLE),
    AORM_COLUMN(every, js, AORM_JSON, 0),
    AORM_COLUMN(every, njs, AORM_JSON, AORM_NULLABLE),
    AORM_COLUMN(every, jb, AORM_JSONB, 0),
    AORM_COLUMN(every, njb, AORM_JSONB, AORM_NULLABLE),
};
const aorm_model every_model = {
    AORM_MODEL_OF(every, "every_type"),
    AORM_COLUMNS(every_columns),
};

#define NEVERY ((int)(sizeof(every_columns) / sizeof(every_columns[0])))

static const char multibyte[] = "h\xc3\xa9llo w\xc3\xb6rld \xe2\x9c\x93 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x8e\x89";
static uint8_t bytes_with_nuls[] = {0, 1, 2, 0, 0xff, 0};
static uint8_t one_nul[] = {0};
static uint8_t empty_bytes[1];

/* The rows of the round trip: maxima; minima with every nullable field
 * NULL; NaN and the other special values with nullable fields holding
 * zero values (not NULL); ordinary values. */
static every every_rows[4];

static void every_rows_init(void) {
    memset(every_rows, 0, sizeof(every_rows));
    every *r = &every_rows[0];
    r->id = 1;
    r->b = true;
    r->nb = AORM_SOME(aorm_opt_bool, false);
    r->i2 = INT16_MAX;
    r->ni2 = AORM_SOME(aorm_opt_int16, INT16_MIN);
    r->i4 = INT32_MAX;
    r->ni4 = AORM_SOME(aorm_opt_int32, INT32_MIN);
    r->i8 = INT64_MAX;
    r->ni8 = AORM_SOME(aorm_opt_int64, INT64_MIN);
    r->f4 = INFINITY;
    r->nf4 = AORM_SOME(aorm_opt_float, -INFINITY);
    r->f8 = INFINITY;
    r->nf8 = AORM_SOME(aorm_opt_double, -INFINITY);
    r->num = "Infinity";
    r->nnum = "-Infinity";
    r->txt = (char *)multibyte;
    r->ntxt = "x";
    r->by = (aorm_bytes){bytes_with_nuls, sizeof(bytes_with_nuls)};
    r->nby = (aorm_bytes){one_nul, 1};
    r->d = AORM_DATE_INFINITY;
    r->nd = AORM_SOME(aorm_opt_int32, AORM_DATE_NEG_INFINITY);
    r->ts = AORM_TIMESTAMP_INFINITY;
    r->nts = AORM_SOME(aorm_opt_int64, AORM_TIMESTAMP_NEG_INFINITY);
    r->tz = AORM_TIMESTAMP_INFINITY;
    r->ntz = AORM_SOME(aorm_opt_int64, 0);
    memset(r->u.b, 0xff, 16);
    r->nu.valid = true;
    for (int i = 0; i < 16; i++) r->nu.value.b[i] = (uint8_t)(i * 17);
    r->js = "{\"a\" : [1, 2.50, \"\xc3\xa9\"],  \"a\": null}"; /* json keeps its text as is */
    r->njs = "null";
    r->jb = "{\"a\": 1, \"bb\": [true, null, \"\xc3\xa9\"]}";  /* jsonb's own output form */
    r->njb = "[]";

    r = &every_rows[1];
    r->id = 2;
    r->b = false;
    r->i2 = INT16_MIN;
    r->i4 = INT32_MIN;
    r->i8 = INT64_MIN;
    r->f4 = -INFINITY;
    r->f8 = -INFINITY;
    r->num = "-12345678901234567890.000000000000000000001";
    r->txt = "";
    r->by = (aorm_bytes){empty_bytes, 0};
    r->d = AORM_DATE_NEG_INFINITY;
    r->ts = AORM_TIMESTAMP_NEG_INFINITY;
    r->tz = AORM_TIMESTAMP_NEG_INFINITY;
    r->js = "[]";
    r->jb = "{}";

    r = &every_rows[2];
    r->id = 3;
    r->nb = AORM_SOME(aorm_opt_bool, true);
    r->ni2 = AORM_SOME(aorm_opt_int16, 0);
    r->ni4 = AORM_SOME(aorm_opt_int32, 0);
    r->ni8 = AORM_SOME(aorm_opt_int64, 0);
    r->f4 = NAN;
    r->nf4 = AORM_SOME(aorm_opt_float, -0.0f);
    r->f8 = NAN;
    r->nf8 = AORM_SOME(aorm_opt_double, -0.0);
    r->num = "NaN";
    r->nnum = "0.000";
    r->txt = "it's \"quoted\"\n\ttab \\ backslash";
    r->ntxt = "";
    r->by = (aorm_bytes){one_nul, 1};
    r->nby = (aorm_bytes){empty_bytes, 0};
    r->d = 0;
    r->nd = AORM_SOME(aorm_opt_int32, 0);
    r->nts = AORM_SOME(aorm_opt_int64, 0);
    r->ntz = AORM_SOME(aorm_opt_int64, -1);
    r->nu = AORM_SOME(aorm_opt_uuid, (aorm_uuid){{0}});
    r->js = "\"\"";
    r->njs = "{}";
    r->jb = "\"\"";
    r->njb = "0";

    r = &every_rows[3];
    r->id = 4;
    r->b = true;
    r->nb = AORM_SOME(aorm_opt_bool, true);
    r->i2 = -2;
    r->ni2 = AORM_SOME(aorm_opt_int16, 12345);
    r->i4 = 1969;
    r->ni4 = AORM_SOME(aorm_opt_int32, -7);
    r->i8 = INT64_C(1) << 53;
    r->ni8 = AORM_SOME(aorm_opt_int64, -(INT64_C(1) << 40));
    r->f4 = 3.25f;
    r->nf4 = AORM_SOME(aorm_opt_float, FLT_MIN);
    r->f8 = 0.1;
    r->nf8 = AORM_SOME(aorm_opt_double, DBL_MAX);
    r->num = "3.14159265358979323846264338327950288";
    r->nnum = "-0.5";
    r->txt = "plain";
    r->ntxt = (char *)multibyte;
    r->by = (aorm_bytes){(uint8_t *)"abc", 3};
    r->nby = (aorm_bytes){bytes_with_nuls, sizeof(bytes_with_nuls)};
    r->d = aorm_date_from_ymd(2024, 2, 29);
    r->nd = AORM_SOME(aorm_opt_int32, aorm_date_from_ymd(1, 1, 1));
    r->ts = aorm_timestamp_from_unix_us(INT64_C(1700000000123456));
    r->nts = AORM_SOME(aorm_opt_int64, aorm_timestamp_from_unix_us(-INT64_C(1)));
    r->tz = aorm_timestamp_from_unix_us(0);
    r->ntz = AORM_SOME(aorm_opt_int64, INT64_C(86400000000) * 365 * 100);
    for (int i = 0; i < 16; i++) r->u.b[i] = (uint8_t)(0xa0 + i);
    r->nu = AORM_SOME(aorm_opt_uuid, ((aorm_uuid){{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}}));
    r->js = "[1,2,3]";
    r->njs = "\"\xe6\x97\xa5\"";
    r->jb = "[1, 2, 3]";
    r->njb = "{\"k\": {\"x\": [1, {\"y\": false}]}}";
}

/* ==========================================================================
 * Helpers
 * ========================================================================== */

static bool contains(const char *hay, const char *needle) { return hay && strstr(hay, needle) != NULL; }

/* Appends s to b, keeping b NUL-terminated. */
static void bput(aorm__buf *b, const char *s) {
    cr_assert_eq(aorm__buf_append(b, s, strlen(s) + 1), 0);
    b->len--;
}

static void expect_invalid(const aorm_model *m, const char *needle) {
    char msg[512];
    memset(msg, 'x', sizeof(msg));
    int rc = aorm_model_validate(m, msg, sizeof(msg));
    const char *name = m ? m->name : "(NULL)";
    cr_assert_eq(rc, AORM_EMISUSE, "model %s validated, expected a message with \"%s\"", name, needle);
    cr_assert(memchr(msg, '\0', sizeof(msg)) != NULL, "message not terminated");
    cr_assert(contains(msg, needle), "message \"%s\" does not mention \"%s\"", msg, needle);
}

static void expect_valid(const aorm_model *m) {
    char msg[512] = "untouched";
    int rc = aorm_model_validate(m, msg, sizeof(msg));
    cr_assert_eq(rc, 0, "model %s rejected: %s", m->name, msg);
    cr_assert_str_eq(msg, "", "a valid model leaves an empty message");
}

/* ==========================================================================
 * Lookups
 * ========================================================================== */

Test(lookups, bookstore_columns_relationships_and_keys, .timeout = TIMEOUT) {
    cr_assert_eq(aorm_model_column_at(&book_model, offsetof(book, title)), &book_model.columns[2]);
    cr_assert_null(aorm_model_column_at(&book_model, offsetof(book, author)), "a relationship is no column");
    cr_assert_eq(aorm_model_column(&book_model, "price"), &book_model.columns[4]);
    cr_assert_null(aorm_model_column(&book_model, "author"));
    cr_assert_null(aorm_model_column(&book_model, "Price"), "names are case-sensitive");
    cr_assert_null(aorm_model_column(NULL, "id"));
    cr_assert_null(aorm_model_column(&book_model, NULL));

    const aorm_relationship *r = aorm_model_relationship(&book_model, "author");
    cr_assert_not_null(r);
    cr_assert_eq(r->kind, AORM_MANY_TO_ONE);
    cr_assert_eq(r->target, &author_model);
    cr_assert_eq(aorm_model_relationship_at(&book_model, offsetof(book, tags)), &book_model.relationships[1]);
    cr_assert_eq(AORM_REL(book, tags), &book_model.relationships[1]);
    cr_assert_null(aorm_model_relationship_at(&book_model, offsetof(book, title)));
    cr_assert_null(aorm_model_relationship(&tag_model, "books"), "tag has no relationships");
    cr_assert_null(aorm_model_relationship_at(&tag_model, 0));

    cr_assert_eq(aorm_model_pk_count(&book_model), 1);
    cr_assert_eq(aorm_model_pk(&book_model, 0), &book_model.columns[0]);
    cr_assert_null(aorm_model_pk(&book_model, 1));
    cr_assert_null(aorm_model_pk(&book_model, -1));
    cr_assert_eq(aorm_model_pk_count(&book_tag_model), 2);
    cr_assert_str_eq(aorm_model_pk(&book_tag_model, 0)->name, "book_id");
    cr_assert_str_eq(aorm_model_pk(&book_tag_model, 1)->name, "tag_id");
    cr_assert_eq(aorm_model_pk_count(NULL), 0);
    cr_assert_null(aorm_model_pk(NULL, 0));
}

/* ==========================================================================
 * Validation
 * ========================================================================== */

Test(validate, accepts_the_bookstore_and_the_test_models, .timeout = TIMEOUT) {
    for (int i = 0; i < NBOOKSTORE; i++) expect_valid(bookstore[i]);
    expect_valid(&team_model);
    expect_valid(&person_model);
    expect_valid(&friendship_model);
    expect_valid(&node_model);
    expect_valid(&edge_model);
    expect_valid(&every_model);
    expect_valid(&cyc_a_model); /* a cycle is a DDL problem, not a model's */
    /* msg may be NULL */
    cr_assert_eq(aorm_model_validate(&book_model, NULL, 0), 0);
    cr_assert_eq(aorm_model_validate(&bad_no_pk, NULL, 0), AORM_EMISUSE);
}

Test(validate, rejects_each_kind_of_mistake_and_names_the_culprit, .timeout = TIMEOUT) {
    expect_invalid(NULL, "NULL");
    expect_invalid(&bad_no_pk, "no primary-key column");
    expect_invalid(&bad_dup_name, "column name name is declared twice");
    expect_invalid(&bad_size, "column name is AORM_INT4 NULLABLE");
    expect_invalid(&bad_serial_text, "column name is AORM_TEXT; only AORM_INT2/INT4/INT8 can be SERIAL");
    expect_invalid(&bad_nullable_pk, "primary-key column id cannot be NULLABLE");
    expect_invalid(&bad_fk_not_column, "is not a declared column");
    expect_invalid(&bad_fk_type, "foreign key code is AORM_TEXT but references team.id, which is AORM_INT8");
    expect_invalid(&bad_fk_not_unique, "references team.title, which is neither the primary key nor UNIQUE");
    expect_invalid(&bad_fk_set_null, "foreign key team_id is ON DELETE SET NULL but the column is not NULLABLE");
    expect_invalid(&bad_m2o_no_fk, "relationship team (many-to-one to team) needs a foreign key from "
                                   "person.team_id to team.id");
    expect_invalid(&bad_o2m_no_fk, "relationship members (one-to-many to person) needs a foreign key from "
                                   "person.code to team.id");
    expect_invalid(&club_model, "relationship people (many-to-many through membership) needs a foreign "
                                "key from membership.person_id to person.id");
    expect_invalid(&bad_bp_missing, "back_populates \"players\" is not a relationship of team");
    expect_invalid(&coach_model, "relationship squad is many-to-one but back_populates squad.coaches is "
                                 "many-to-one");
    expect_invalid(&bad_index, "index people_name_team: field 2 is not a column");
}

Test(validate, message_is_truncated_to_cap, .timeout = TIMEOUT) {
    char msg[8];
    memset(msg, 'x', sizeof(msg));
    cr_assert_eq(aorm_model_validate(&bad_no_pk, msg, sizeof(msg)), AORM_EMISUSE);
    cr_assert_eq(strlen(msg), sizeof(msg) - 1);
    cr_assert_str_eq(msg, "model p");
}

/* ==========================================================================
 * DDL text
 * ========================================================================== */

static const char bookstore_create[] =
    "CREATE TABLE \"authors\" (\n"
    "    \"id\" bigserial NOT NULL,\n"
    "    \"name\" text NOT NULL,\n"
    "    \"born\" integer,\n"
    "    CONSTRAINT \"authors_pkey\" PRIMARY KEY (\"id\")\n"
    ");\n"
    "CREATE TABLE \"books\" (\n"
    "    \"id\" bigserial NOT NULL,\n"
    "    \"author_id\" bigint NOT NULL,\n"
    "    \"title\" text NOT NULL,\n"
    "    \"year\" integer NOT NULL,\n"
    "    \"price\" double precision NOT NULL,\n"
    "    CONSTRAINT \"books_pkey\" PRIMARY KEY (\"id\"),\n"
    "    CONSTRAINT \"books_author_id_fkey\" FOREIGN KEY (\"author_id\") REFERENCES \"authors\" (\"id\") "
    "ON DELETE NO ACTION\n"
    ");\n"
    "CREATE TABLE \"tags\" (\n"
    "    \"id\" bigserial NOT NULL,\n"
    "    \"name\" text NOT NULL,\n"
    "    CONSTRAINT \"tags_pkey\" PRIMARY KEY (\"id\"),\n"
    "    CONSTRAINT \"tags_name_key\" UNIQUE (\"name\")\n"
    ");\n"
    "CREATE TABLE \"book_tags\" (\n"
    "    \"book_id\" bigint NOT NULL,\n"
    "    \"tag_id\" bigint NOT NULL,\n"
    "    CONSTRAINT \"book_tags_pkey\" PRIMARY KEY (\"book_id\", \"tag_id\"),\n"
    "    CONSTRAINT \"book_tags_book_id_fkey\" FOREIGN KEY (\"book_id\") REFERENCES \"books\" (\"id\") "
    "ON DELETE NO ACTION,\n"
    "    CONSTRAINT \"book_tags_tag_id_fkey\" FOREIGN KEY (\"tag_id\") REFERENCES \"tags\" (\"id\") "
    "ON DELETE NO ACTION\n"
    ");\n"
    "CREATE TABLE \"bulk_books\" (\n"
    "    \"id\" bigserial NOT NULL,\n"
    "    \"author_id\" bigint NOT NULL,\n"
    "    \"title\" text NOT NULL,\n"
    "    \"year\" integer NOT NULL,\n"
    "    \"price\" double precision NOT NULL,\n"
    "    CONSTRAINT \"bulk_books_pkey\" PRIMARY KEY (\"id\")\n"
    ");\n"
    "CREATE INDEX \"books_author_id_idx\" ON \"books\" (\"author_id\");\n"
    "CREATE INDEX \"book_tags_tag_id_idx\" ON \"book_tags\" (\"tag_id\");\n";

Test(ddl_text, bookstore_create_golden, .timeout = TIMEOUT) {
    char *sql = NULL;
    char err[256] = "";
    cr_assert_eq(aorm_ddl_create_sql(bookstore, NBOOKSTORE, 0, &sql, err, sizeof(err)), 0, "%s", err);
    cr_assert_str_eq(sql, bookstore_create);
    free(sql);
}

Test(ddl_text, bookstore_create_if_not_exists_golden, .timeout = TIMEOUT) {
    char *sql = NULL;
    cr_assert_eq(aorm_ddl_create_sql(bookstore, NBOOKSTORE, AORM_DDL_IF_NOT_EXISTS, &sql, NULL, 0), 0);
    cr_assert(contains(sql, "CREATE TABLE IF NOT EXISTS \"authors\" (\n"));
    cr_assert(contains(sql, "CREATE INDEX IF NOT EXISTS \"books_author_id_idx\" ON \"books\" (\"author_id\");\n"));
    cr_assert(contains(sql, "CREATE INDEX IF NOT EXISTS \"book_tags_tag_id_idx\" ON \"book_tags\" (\"tag_id\");\n"));
    /* the same script with the two guards added everywhere */
    size_t n = 0;
    for (const char *p = sql; (p = strstr(p, "IF NOT EXISTS ")); p++) n++;
    cr_assert_eq(n, 7, "5 tables and 2 indexes, got %zu guards", n);
    cr_assert_null(strstr(sql, "ALTER"), "foreign keys are inline: nothing to guard");
    free(sql);
}

Test(ddl_text, bookstore_drop_golden, .timeout = TIMEOUT) {
    char *sql = NULL;
    cr_assert_eq(aorm_ddl_drop_sql(bookstore, NBOOKSTORE, 0, &sql, NULL, 0), 0);
    cr_assert_str_eq(sql, "DROP TABLE \"bulk_books\";\n"
                          "DROP TABLE \"book_tags\";\n"
                          "DROP TABLE \"tags\";\n"
                          "DROP TABLE \"books\";\n"
                          "DROP TABLE \"authors\";\n");
    free(sql);
    cr_assert_eq(aorm_ddl_drop_sql(bookstore, 2, AORM_DDL_IF_EXISTS | AORM_DDL_CASCADE, &sql, NULL, 0), 0);
    cr_assert_str_eq(sql, "DROP TABLE IF EXISTS \"books\" CASCADE;\n"
                          "DROP TABLE IF EXISTS \"authors\" CASCADE;\n");
    free(sql);
}

/* Offset of needle in hay, failing when absent. */
static size_t pos_of(const char *hay, const char *needle) {
    const char *p = strstr(hay, needle);
    cr_assert_not_null(p, "\"%s\" not found in:\n%s", needle, hay);
    return (size_t)(p - hay);
}

Test(ddl_text, referenced_tables_come_first_whatever_the_input_order, .timeout = TIMEOUT) {
    const aorm_model *const shuffled[] = {&book_tag_model, &bulk_book_model, &book_model, &tag_model,
                                          &author_model};
    char *sql = NULL;
    cr_assert_eq(aorm_ddl_create_sql(shuffled, 5, 0, &sql, NULL, 0), 0);
    /* the first listed among those ready goes first */
    size_t bulk = pos_of(sql, "CREATE TABLE \"bulk_books\""), tags = pos_of(sql, "CREATE TABLE \"tags\""),
           authors = pos_of(sql, "CREATE TABLE \"authors\""), books = pos_of(sql, "CREATE TABLE \"books\""),
           bt = pos_of(sql, "CREATE TABLE \"book_tags\"");
    cr_assert(bulk < tags && tags < authors && authors < books && books < bt, "order:\n%s", sql);
    free(sql);
    cr_assert_eq(aorm_ddl_drop_sql(shuffled, 5, 0, &sql, NULL, 0), 0);
    cr_assert_str_eq(sql, "DROP TABLE \"book_tags\";\n"
                          "DROP TABLE \"books\";\n"
                          "DROP TABLE \"authors\";\n"
                          "DROP TABLE \"tags\";\n"
                          "DROP TABLE \"bulk_books\";\n");
    free(sql);
}

static const char kitchen_create[] =
    "CREATE TABLE IF NOT EXISTS \"app\".\"nodes\" (\n"
    "    \"id\" bigint NOT NULL GENERATED BY DEFAULT AS IDENTITY,\n"
    "    \"parent_id\" bigint,\n"
    "    \"label\" text NOT NULL,\n"
    "    \"created\" timestamp with time zone NOT NULL DEFAULT now(),\n"
    "    \"token\" uuid NOT NULL,\n"
    "    \"rank\" integer NOT NULL DEFAULT 0,\n"
    "    \"kind\" integer NOT NULL,\n"
    "    CONSTRAINT \"nodes_pkey\" PRIMARY KEY (\"id\"),\n"
    "    CONSTRAINT \"nodes_label_key\" UNIQUE (\"label\"),\n"
    "    CONSTRAINT \"nodes_parent_id_fkey\" FOREIGN KEY (\"parent_id\") REFERENCES \"app\".\"nodes\" (\"id\") "
    "ON DELETE SET NULL\n"
    ");\n"
    "CREATE TABLE IF NOT EXISTS \"app\".\"edges\" (\n"
    "    \"src\" bigint NOT NULL,\n"
    "    \"dst\" bigint NOT NULL,\n"
    "    \"weight\" double precision,\n"
    "    CONSTRAINT \"edges_pkey\" PRIMARY KEY (\"src\", \"dst\"),\n"
    "    CONSTRAINT \"edges_src_fkey\" FOREIGN KEY (\"src\") REFERENCES \"app\".\"nodes\" (\"id\") "
    "ON DELETE CASCADE,\n"
    "    CONSTRAINT \"edges_dst_fkey\" FOREIGN KEY (\"dst\") REFERENCES \"app\".\"nodes\" (\"id\") "
    "ON DELETE RESTRICT\n"
    ");\n"
    "CREATE INDEX IF NOT EXISTS \"nodes_token_idx\" ON \"app\".\"nodes\" (\"token\");\n"
    "CREATE INDEX IF NOT EXISTS \"nodes_rank_idx\" ON \"app\".\"nodes\" (\"rank\", \"kind\");\n"
    "CREATE UNIQUE INDEX IF NOT EXISTS \"nodes_kind_label_uq\" ON \"app\".\"nodes\" (\"kind\", \"label\");\n"
    "CREATE INDEX IF NOT EXISTS \"nodes_parent_id_idx\" ON \"app\".\"nodes\" (\"parent_id\");\n"
    "CREATE INDEX IF NOT EXISTS \"edges_dst_idx\" ON \"app\".\"edges\" (\"dst\");\n";

static const aorm_model *const kitchen[] = {&edge_model, &node_model};

Test(ddl_text, identity_defaults_unique_schema_self_reference_and_declared_indexes, .timeout = TIMEOUT) {
    char *sql = NULL;
    char err[256] = "";
    cr_assert_eq(aorm_ddl_create_sql(kitchen, 2, AORM_DDL_IF_NOT_EXISTS, &sql, err, sizeof(err)), 0, "%s", err);
    cr_assert_str_eq(sql, kitchen_create);
    free(sql);
}

Test(ddl_text, cycles_are_refused_naming_the_tables, .timeout = TIMEOUT) {
    const aorm_model *const list[] = {&cyc_c_model, &cyc_a_model, &cyc_b_model, &author_model};
    char *sql = (char *)"untouched";
    char err[256] = "";
    cr_assert_eq(aorm_ddl_create_sql(list, 4, 0, &sql, err, sizeof(err)), AORM_EMISUSE);
    cr_assert_null(sql, "*out is NULL on error");
    cr_assert(contains(err, "cycle"), "%s", err);
    cr_assert(contains(err, "\"cyc_a\" -> \"cyc_b\" -> \"cyc_a\""), "%s", err);
    cr_assert(!contains(err, "cyc_c"), "cyc_c only hangs off the cycle: %s", err);
    cr_assert_eq(aorm_ddl_drop_sql(list, 4, 0, &sql, err, sizeof(err)), AORM_EMISUSE);
    cr_assert(contains(err, "\"cyc_a\" -> \"cyc_b\" -> \"cyc_a\""), "%s", err);
    /* a table referencing itself is no cycle */
    cr_assert_eq(aorm_ddl_create_sql((const aorm_model *const[]){&node_model}, 1, 0, &sql, err, sizeof(err)), 0,
                 "%s", err);
    free(sql);
}

Test(ddl_text, misuse, .timeout = TIMEOUT) {
    char *sql = NULL;
    char err[256];
    cr_assert_eq(aorm_ddl_create_sql(bookstore, NBOOKSTORE, 0, NULL, err, sizeof(err)), AORM_EMISUSE);
    cr_assert_eq(aorm_ddl_create_sql(NULL, 2, 0, &sql, err, sizeof(err)), AORM_EMISUSE);
    cr_assert_eq(aorm_ddl_create_sql(bookstore, -1, 0, &sql, err, sizeof(err)), AORM_EMISUSE);
    cr_assert_eq(aorm_ddl_create_sql(bookstore, NBOOKSTORE, 0x100, &sql, err, sizeof(err)), AORM_EMISUSE);
    cr_assert(contains(err, "unknown DDL flags"), "%s", err);
    const aorm_model *const twice[] = {&author_model, &book_model, &author_model};
    cr_assert_eq(aorm_ddl_create_sql(twice, 3, 0, &sql, err, sizeof(err)), AORM_EMISUSE);
    cr_assert(contains(err, "both map table authors"), "%s", err);
    const aorm_model *const broken[] = {&author_model, &bad_fk_type};
    cr_assert_eq(aorm_ddl_create_sql(broken, 2, 0, &sql, err, sizeof(err)), AORM_EMISUSE);
    cr_assert(contains(err, "foreign key code is AORM_TEXT"), "invalid models are reported: %s", err);
    const aorm_model *const with_null[] = {&author_model, NULL};
    cr_assert_eq(aorm_ddl_create_sql(with_null, 2, 0, &sql, err, sizeof(err)), AORM_EMISUSE);
    cr_assert_null(sql);
    /* an empty list is an empty script */
    cr_assert_eq(aorm_ddl_create_sql(NULL, 0, 0, &sql, err, sizeof(err)), 0);
    cr_assert_str_eq(sql, "");
    free(sql);
}

/* ==========================================================================
 * Field codecs, without a server
 * ========================================================================== */

Test(field, type_oids_and_sql_names, .timeout = TIMEOUT) {
    static const struct {
        aorm_type t;
        uint32_t oid, array;
        const char *sql, *serial;
    } want[] = {
        {AORM_BOOL, 16, 1000, "boolean", "boolean"},
        {AORM_INT2, 21, 1005, "smallint", "smallserial"},
        {AORM_INT4, 23, 1007, "integer", "serial"},
        {AORM_INT8, 20, 1016, "bigint", "bigserial"},
        {AORM_FLOAT4, 700, 1021, "real", "real"},
        {AORM_FLOAT8, 701, 1022, "double precision", "double precision"},
        {AORM_NUMERIC, 1700, 1231, "numeric", "numeric"},
        {AORM_TEXT, 25, 1009, "text", "text"},
        {AORM_BYTEA, 17, 1001, "bytea", "bytea"},
        {AORM_DATE, 1082, 1182, "date", "date"},
        {AORM_TIMESTAMP, 1114, 1115, "timestamp without time zone", "timestamp without time zone"},
        {AORM_TIMESTAMPTZ, 1184, 1185, "timestamp with time zone", "timestamp with time zone"},
        {AORM_UUID, 2950, 2951, "uuid", "uuid"},
        {AORM_JSON, 114, 199, "json", "json"},
        {AORM_JSONB, 3802, 3807, "jsonb", "jsonb"},
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        cr_assert_eq(aorm__type_oid(want[i].t), want[i].oid, "type %d", (int)want[i].t);
        cr_assert_eq(aorm__type_array_oid(want[i].t), want[i].array, "type %d", (int)want[i].t);
        cr_assert_str_eq(aorm__type_sql(want[i].t, false), want[i].sql);
        cr_assert_str_eq(aorm__type_sql(want[i].t, true), want[i].serial);
    }
    cr_assert_eq(aorm__type_oid((aorm_type)0), 0);
    cr_assert_eq(aorm__type_array_oid((aorm_type)99), 0);
    cr_assert_null(aorm__type_sql((aorm_type)99, false));
}

static const aorm_column *every_col(const char *name) {
    const aorm_column *c = aorm_model_column(&every_model, name);
    cr_assert_not_null(c, "no column %s", name);
    return c;
}

/* Parameter i's bytes and length in a builder (test-only peek). */
static const char *param_bytes(const aorm_params *p, int i, int32_t *len) {
    *len = p->slots[i].len;
    return p->slots[i].len < 0 ? NULL : p->data + p->slots[i].offset;
}

Test(field, params_are_the_builders_encodings, .timeout = TIMEOUT) {
    every_rows_init();
    /* Each column of each row, through aorm__field_param and through the
     * builder function for its type directly: same OID, same bytes. */
    for (int r = 0; r < 4; r++) {
        const every *o = &every_rows[r];
        for (int i = 0; i < NEVERY; i++) {
            const aorm_column *c = &every_columns[i];
            aorm_params got, want;
            aorm_params_init(&got);
            aorm_params_init(&want);
            cr_assert_eq(aorm__field_param(c, o, &got), 0, "row %d column %s", r, c->name);
            if (aorm__field_is_null(c, o)) {
                aorm_params_null(&want, aorm__type_oid(c->type));
            } else {
                const void *f = aorm__cfield(c, o);
                bool opt = c->flags & AORM_NULLABLE;
                switch (c->type) {
                case AORM_BOOL: aorm_params_bool(&want, opt ? ((const aorm_opt_bool *)f)->value : *(const bool *)f); break;
                case AORM_INT2: aorm_params_int2(&want, opt ? ((const aorm_opt_int16 *)f)->value : *(const int16_t *)f); break;
                case AORM_INT4: aorm_params_int4(&want, opt ? ((const aorm_opt_int32 *)f)->value : *(const int32_t *)f); break;
                case AORM_DATE: aorm_params_date(&want, opt ? ((const aorm_opt_int32 *)f)->value : *(const int32_t *)f); break;
                case AORM_INT8: aorm_params_int8(&want, opt ? ((const aorm_opt_int64 *)f)->value : *(const int64_t *)f); break;
                case AORM_TIMESTAMP: aorm_params_timestamp(&want, opt ? ((const aorm_opt_int64 *)f)->value : *(const int64_t *)f); break;
                case AORM_TIMESTAMPTZ: aorm_params_timestamptz(&want, opt ? ((const aorm_opt_int64 *)f)->value : *(const int64_t *)f); break;
                case AORM_FLOAT4: aorm_params_float4(&want, opt ? ((const aorm_opt_float *)f)->value : *(const float *)f); break;
                case AORM_FLOAT8: aorm_params_float8(&want, opt ? ((const aorm_opt_double *)f)->value : *(const double *)f); break;
                case AORM_UUID: aorm_params_uuid(&want, opt ? ((const aorm_opt_uuid *)f)->value.b : ((const aorm_uuid *)f)->b); break;
                case AORM_NUMERIC: aorm_params_numeric(&want, *(char *const *)f); break;
                case AORM_TEXT: aorm_params_text(&want, *(char *const *)f); break;
                case AORM_JSON: aorm_params_json(&want, *(char *const *)f, strlen(*(char *const *)f)); break;
                case AORM_JSONB: aorm_params_jsonb(&want, *(char *const *)f, strlen(*(char *const *)f)); break;
                case AORM_BYTEA: aorm_params_bytea(&want, ((const aorm_bytes *)f)->data, ((const aorm_bytes *)f)->len); break;
                default: cr_assert_fail("column %s: a type the every model does not have", c->name);
                }
            }
            cr_assert_eq(aorm_params_error(&want), 0);
            cr_assert_eq(got.count, 1);
            cr_assert_eq(got.slots[0].type, want.slots[0].type, "row %d column %s", r, c->name);
            cr_assert_eq(got.slots[0].format, 1);
            int32_t gl, wl;
            const char *gb = param_bytes(&got, 0, &gl), *wb = param_bytes(&want, 0, &wl);
            cr_assert_eq(gl, wl, "row %d column %s", r, c->name);
            cr_assert(gl < 0 || memcmp(gb, wb, (size_t)gl) == 0, "row %d column %s: bytes differ", r, c->name);
            aorm_params_free(&got);
            aorm_params_free(&want);
        }
    }
}

Test(field, param_errors_are_sticky, .timeout = TIMEOUT) {
    every o;
    memset(&o, 0, sizeof(o));
    o.num = "12.x";
    aorm_params p;
    aorm_params_init(&p);
    cr_assert_eq(aorm__field_param(every_col("num"), &o, &p), AORM_EENCODING);
    cr_assert_eq(aorm__field_param(every_col("id"), &o, &p), AORM_EENCODING, "sticky");
    cr_assert_eq(aorm_params_error(&p), AORM_EENCODING);
    aorm_params_free(&p);

    const every *objs[] = {&o};
    aorm_params_init(&p);
    cr_assert_eq(aorm__field_param_array(every_col("num"), (const void *const *)objs, 1, &p), AORM_EENCODING);
    cr_assert_eq(aorm_params_error(&p), AORM_EENCODING);
    cr_assert_eq(aorm_params_count(&p), 0);
    aorm_params_free(&p);

    aorm_params_init(&p);
    cr_assert_eq(aorm__field_param(NULL, &o, &p), AORM_EMISUSE);
    cr_assert_eq(aorm_params_error(&p), AORM_EMISUSE);
    aorm_params_free(&p);
    cr_assert_eq(aorm__field_param(every_col("id"), &o, NULL), AORM_EMISUSE);
}

Test(field, array_layout, .timeout = TIMEOUT) {
    every a, b, c;
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    memset(&c, 0, sizeof(c));
    a.ni4 = AORM_SOME(aorm_opt_int32, 7);
    c.ni4 = AORM_SOME(aorm_opt_int32, -1);
    const every *objs[] = {&a, &b, &c};
    aorm_params p;
    aorm_params_init(&p);
    cr_assert_eq(aorm__field_param_array(every_col("ni4"), (const void *const *)objs, 3, &p), 0);
    int32_t len;
    const char *v = param_bytes(&p, 0, &len);
    cr_assert_eq(p.slots[0].type, AORM_T_INT4_ARRAY);
    cr_assert_eq(p.slots[0].format, 1);
    static const unsigned char want[] = {
        0, 0, 0, 1,    /* ndim */
        0, 0, 0, 1,    /* has nulls */
        0, 0, 0, 23,   /* int4 */
        0, 0, 0, 3,    /* length */
        0, 0, 0, 1,    /* lower bound */
        0, 0, 0, 4, 0, 0, 0, 7,
        0xff, 0xff, 0xff, 0xff,
        0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff,
    };
    cr_assert_eq(len, (int32_t)sizeof(want));
    cr_assert(memcmp(v, want, sizeof(want)) == 0);

    /* no NULLs: flag 0; jsonb elements carry their version byte */
    aorm_params_reset(&p);
    a.jb = "{}";
    b.jb = "[1]";
    cr_assert_eq(aorm__field_param_array(every_col("jb"), (const void *const *)objs, 2, &p), 0);
    v = param_bytes(&p, 0, &len);
    static const unsigned char want_jb[] = {
        0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x0e, 0xda, 0, 0, 0, 2, 0, 0, 0, 1,
        0, 0, 0, 3, 1, '{', '}',
        0, 0, 0, 4, 1, '[', '1', ']',
    };
    cr_assert_eq(p.slots[0].type, 3807);
    cr_assert_eq(len, (int32_t)sizeof(want_jb));
    cr_assert(memcmp(v, want_jb, sizeof(want_jb)) == 0);

    /* empty: no dimensions */
    aorm_params_reset(&p);
    cr_assert_eq(aorm__field_param_array(every_col("i8"), NULL, 0, &p), 0);
    v = param_bytes(&p, 0, &len);
    static const unsigned char want_empty[] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 20};
    cr_assert_eq(p.slots[0].type, AORM_T_INT8_ARRAY);
    cr_assert_eq(len, (int32_t)sizeof(want_empty));
    cr_assert(memcmp(v, want_empty, sizeof(want_empty)) == 0);

    /* numeric elements are the builder's numeric encoding */
    aorm_params_reset(&p);
    a.num = "-1234.5678";
    cr_assert_eq(aorm__field_param_array(every_col("num"), (const void *const *)objs, 1, &p), 0);
    aorm_params one;
    aorm_params_init(&one);
    cr_assert_eq(aorm_params_numeric(&one, "-1234.5678"), 0);
    int32_t nlen;
    const char *nv = param_bytes(&one, 0, &nlen);
    v = param_bytes(&p, 0, &len);
    cr_assert_eq(len, 20 + 4 + nlen);
    cr_assert_eq((int32_t)aorm__get_be32(v + 20), nlen);
    cr_assert(memcmp(v + 24, nv, (size_t)nlen) == 0);
    aorm_params_free(&one);
    aorm_params_free(&p);
}

Test(field, load_widens_losslessly_and_refuses_the_rest, .timeout = TIMEOUT) {
    every o;
    memset(&o, 0, sizeof(o));
    char b2[2], b4[4], b8[8];
    aorm__put_be16(b2, (uint16_t)(int16_t)-300);
    aorm__put_be32(b4, (uint32_t)INT32_MIN);
    aorm__put_be64(b8, (uint64_t)INT64_MIN);

    /* int2 / int4 into int8, int2 into int4 */
    cr_assert_eq(aorm__field_load(every_col("i8"), &o, AORM_T_INT2, b2, 2, NULL), 0);
    cr_assert_eq(o.i8, -300);
    cr_assert_eq(aorm__field_load(every_col("i8"), &o, AORM_T_INT4, b4, 4, NULL), 0);
    cr_assert_eq(o.i8, INT32_MIN);
    cr_assert_eq(aorm__field_load(every_col("ni8"), &o, AORM_T_INT8, b8, 8, NULL), 0);
    cr_assert(o.ni8.valid && o.ni8.value == INT64_MIN);
    cr_assert_eq(aorm__field_load(every_col("i4"), &o, AORM_T_INT2, b2, 2, NULL), 0);
    cr_assert_eq(o.i4, -300);
    /* narrowing is refused, field unchanged */
    cr_assert_eq(aorm__field_load(every_col("i4"), &o, AORM_T_INT8, b8, 8, NULL), AORM_ETYPE);
    cr_assert_eq(o.i4, -300);
    cr_assert_eq(aorm__field_load(every_col("i2"), &o, AORM_T_INT4, b4, 4, NULL), AORM_ETYPE);
    /* float4 and int4 into double */
    float f = 1.5f;
    uint32_t fb;
    memcpy(&fb, &f, 4);
    aorm__put_be32(b4, fb);
    cr_assert_eq(aorm__field_load(every_col("f8"), &o, AORM_T_FLOAT4, b4, 4, NULL), 0);
    cr_assert(o.f8 == 1.5);
    cr_assert_eq(aorm__field_load(every_col("nf8"), &o, AORM_T_INT2, b2, 2, NULL), 0);
    cr_assert(o.nf8.valid && o.nf8.value == -300.0);
    cr_assert_eq(aorm__field_load(every_col("f4"), &o, AORM_T_FLOAT8, b8, 8, NULL), AORM_ETYPE);
    /* integers into numeric strings */
    cr_assert_eq(aorm__field_load(every_col("num"), &o, AORM_T_INT8, b8, 8, NULL), 0);
    cr_assert_str_eq(o.num, "-9223372036854775808");
    free(o.num);
    o.num = NULL;
    /* text into an integer, integer into text: no */
    cr_assert_eq(aorm__field_load(every_col("i8"), &o, AORM_T_TEXT, "12", 2, NULL), AORM_ETYPE);
    cr_assert_eq(aorm__field_load(every_col("txt"), &o, AORM_T_INT4, b4, 4, NULL), AORM_ETYPE);
    cr_assert_null(o.txt);
    /* varchar into text; json and jsonb into either json field */
    cr_assert_eq(aorm__field_load(every_col("txt"), &o, AORM_T_VARCHAR, "vc", 2, NULL), 0);
    cr_assert_str_eq(o.txt, "vc");
    cr_assert_eq(aorm__field_load(every_col("js"), &o, AORM_T_JSONB, "\x01[1]", 4, NULL), 0);
    cr_assert_str_eq(o.js, "[1]");
    cr_assert_eq(aorm__field_load(every_col("jb"), &o, AORM_T_JSON, "[2]", 3, NULL), 0);
    cr_assert_str_eq(o.jb, "[2]");
    /* timestamps of either kind */
    aorm__put_be64(b8, 42);
    cr_assert_eq(aorm__field_load(every_col("ts"), &o, AORM_T_TIMESTAMPTZ, b8, 8, NULL), 0);
    cr_assert_eq(o.ts, 42);
    cr_assert_eq(aorm__field_load(every_col("tz"), &o, AORM_T_TIMESTAMP, b8, 8, NULL), 0);
    cr_assert_eq(o.tz, 42);
    cr_assert_eq(aorm__field_load(every_col("d"), &o, AORM_T_TIMESTAMP, b8, 8, NULL), AORM_ETYPE);
    aorm_model_free_fields(&every_model, &o);
    cr_assert_null(o.txt);
    cr_assert_null(o.js);
    cr_assert_null(o.jb);
}

Test(field, load_nulls_and_malformed_values, .timeout = TIMEOUT) {
    every o;
    memset(&o, 0, sizeof(o));
    o.i8 = 5;
    o.txt = "keep";
    o.nb = AORM_SOME(aorm_opt_bool, true);
    o.nby = (aorm_bytes){one_nul, 1};
    o.ntxt = "was set";
    /* NULL into non-nullable: refused, unchanged */
    cr_assert_eq(aorm__field_load(every_col("i8"), &o, AORM_T_INT8, NULL, -1, NULL), AORM_ENULLVALUE);
    cr_assert_eq(o.i8, 5);
    cr_assert_eq(aorm__field_load(every_col("txt"), &o, AORM_T_TEXT, NULL, -1, NULL), AORM_ENULLVALUE);
    cr_assert_str_eq(o.txt, "keep");
    /* NULL into nullable */
    cr_assert_eq(aorm__field_load(every_col("nb"), &o, AORM_T_BOOL, NULL, -1, NULL), 0);
    cr_assert(!o.nb.valid);
    cr_assert_eq(aorm__field_load(every_col("nby"), &o, AORM_T_BYTEA, NULL, -1, NULL), 0);
    cr_assert(o.nby.data == NULL && o.nby.len == 0);
    cr_assert_eq(aorm__field_load(every_col("ntxt"), &o, AORM_T_TEXT, NULL, -1, NULL), 0);
    cr_assert_null(o.ntxt);
    /* wrong lengths, bad jsonb version, NUL inside text */
    cr_assert_eq(aorm__field_load(every_col("i8"), &o, AORM_T_INT8, "1234", 4, NULL), AORM_EPROTOCOL);
    cr_assert_eq(o.i8, 5);
    cr_assert_eq(aorm__field_load(every_col("u"), &o, AORM_T_UUID, "short", 5, NULL), AORM_EPROTOCOL);
    cr_assert_eq(aorm__field_load(every_col("b"), &o, AORM_T_BOOL, "", 0, NULL), AORM_EPROTOCOL);
    cr_assert_eq(aorm__field_load(every_col("jb"), &o, AORM_T_JSONB, "\x02{}", 3, NULL), AORM_EPROTOCOL);
    cr_assert_eq(aorm__field_load(every_col("txt"), &o, AORM_T_TEXT, "a\0b", 3, NULL), AORM_EPROTOCOL);
    cr_assert_eq(aorm__field_load(every_col("num"), &o, AORM_T_NUMERIC, "\0\0", 2, NULL), AORM_EPROTOCOL);
    cr_assert_str_eq(o.txt, "keep");
    /* misuse */
    cr_assert_eq(aorm__field_load(NULL, &o, AORM_T_INT8, NULL, -1, NULL), AORM_EMISUSE);
    cr_assert_eq(aorm__field_load(every_col("i8"), &o, AORM_T_INT8, NULL, 8, NULL), AORM_EMISUSE);
}

/* An allocator that counts and keeps what it hands out. */
typedef struct arena {
    void *blocks[64];
    int n;
} arena;

static void *arena_alloc(void *ctx, size_t size) {
    arena *a = ctx;
    if (a->n == 64) return NULL;
    a->blocks[a->n] = malloc(size);
    return a->blocks[a->n++];
}

static void arena_free(arena *a) {
    for (int i = 0; i < a->n; i++) free(a->blocks[i]);
    a->n = 0;
}

Test(field, load_uses_the_allocator_and_empty_bytea_is_not_null, .timeout = TIMEOUT) {
    arena ar = {.n = 0};
    aorm_allocator al = {arena_alloc, &ar};
    every o;
    memset(&o, 0, sizeof(o));
    cr_assert_eq(aorm__field_load(every_col("txt"), &o, AORM_T_TEXT, "abc", 3, &al), 0);
    cr_assert_eq(aorm__field_load(every_col("by"), &o, AORM_T_BYTEA, "", 0, &al), 0);
    cr_assert_eq(ar.n, 2);
    cr_assert_str_eq(o.txt, "abc");
    cr_assert_not_null(o.by.data, "an empty bytea is not NULL");
    cr_assert_eq(o.by.len, 0);
    cr_assert(!aorm__field_is_null(every_col("by"), &o));
    /* a failing allocator: AORM_ENOMEM and the field unchanged */
    ar.n = 64;
    char *before = o.txt;
    cr_assert_eq(aorm__field_load(every_col("txt"), &o, AORM_T_TEXT, "xyz", 3, &al), AORM_ENOMEM);
    cr_assert_eq(o.txt, before);
    ar.n = 2;
    arena_free(&ar);
}

Test(field, equality_null_and_unset, .timeout = TIMEOUT) {
    every a, b;
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    const aorm_column *f8 = every_col("f8"), *nf8 = every_col("nf8"), *txt = every_col("txt"),
                      *by = every_col("by"), *nu = every_col("nu");
    a.f8 = b.f8 = NAN;
    cr_assert(aorm__field_equal(f8, &a, &b), "NaN equals the same NaN");
    a.f8 = 0.0;
    b.f8 = -0.0;
    cr_assert(!aorm__field_equal(f8, &a, &b), "0.0 and -0.0 differ");
    cr_assert(aorm__field_equal(nf8, &a, &b), "both NULL");
    a.nf8 = AORM_SOME(aorm_opt_double, 0.0);
    cr_assert(!aorm__field_equal(nf8, &a, &b), "NULL vs 0");
    b.nf8 = AORM_SOME(aorm_opt_double, 0.0);
    cr_assert(aorm__field_equal(nf8, &a, &b));
    cr_assert(aorm__field_equal(txt, &a, &b), "both NULL pointers");
    a.txt = "x";
    cr_assert(!aorm__field_equal(txt, &a, &b));
    b.txt = (char[]){"x"};
    cr_assert(aorm__field_equal(txt, &a, &b), "by content");
    a.by = (aorm_bytes){empty_bytes, 0};
    cr_assert(!aorm__field_equal(by, &a, &b), "empty vs NULL");
    b.by = (aorm_bytes){one_nul, 0};
    cr_assert(aorm__field_equal(by, &a, &b), "two empty values");
    a.by = (aorm_bytes){bytes_with_nuls, 3};
    b.by = (aorm_bytes){(uint8_t[]){0, 1, 2}, 3};
    cr_assert(aorm__field_equal(by, &a, &b));
    b.by.len = 2;
    cr_assert(!aorm__field_equal(by, &a, &b));
    a.nu.valid = true;
    b.nu.valid = true;
    b.nu.value.b[15] = 1;
    cr_assert(!aorm__field_equal(nu, &a, &b));

    /* is_null */
    memset(&a, 0, sizeof(a));
    cr_assert(!aorm__field_is_null(every_col("i8"), &a), "a non-nullable scalar is never NULL");
    cr_assert(aorm__field_is_null(every_col("ni8"), &a));
    cr_assert(aorm__field_is_null(every_col("txt"), &a), "a NULL pointer is NULL");
    cr_assert(aorm__field_is_null(every_col("by"), &a));
    a.ni8 = AORM_SOME(aorm_opt_int64, 0);
    cr_assert(!aorm__field_is_null(every_col("ni8"), &a));

    /* unset: serial/identity zero, server_default zero or NULL */
    node n;
    memset(&n, 0, sizeof(n));
    cr_assert(aorm__field_unset(aorm_model_column(&node_model, "id"), &n), "identity 0");
    cr_assert(aorm__field_unset(aorm_model_column(&node_model, "created"), &n), "default, 0");
    cr_assert(aorm__field_unset(aorm_model_column(&node_model, "rank"), &n));
    cr_assert(!aorm__field_unset(aorm_model_column(&node_model, "kind"), &n), "no default");
    cr_assert(!aorm__field_unset(aorm_model_column(&node_model, "label"), &n), "no default");
    n.id = 9;
    n.created = 1;
    cr_assert(!aorm__field_unset(aorm_model_column(&node_model, "id"), &n));
    cr_assert(!aorm__field_unset(aorm_model_column(&node_model, "created"), &n));
    author au = {.id = 0};
    cr_assert(aorm__field_unset(aorm_model_column(&author_model, "id"), &au), "serial 0");
    au.id = -1;
    cr_assert(!aorm__field_unset(aorm_model_column(&author_model, "id"), &au));
}

Test(field, free_fields_releases_malloced_strings, .timeout = TIMEOUT) {
    every o;
    memset(&o, 0, sizeof(o));
    o.i8 = 3;
    cr_assert_eq(aorm__field_load(every_col("txt"), &o, AORM_T_TEXT, "t", 1, NULL), 0);
    cr_assert_eq(aorm__field_load(every_col("nby"), &o, AORM_T_BYTEA, "\0\1", 2, NULL), 0);
    cr_assert_eq(aorm__field_load(every_col("njb"), &o, AORM_T_JSONB, "\x01{}", 3, NULL), 0);
    aorm_model_free_fields(&every_model, &o);
    cr_assert_null(o.txt);
    cr_assert_null(o.nby.data);
    cr_assert_eq(o.nby.len, 0);
    cr_assert_null(o.njb);
    cr_assert_eq(o.i8, 3, "scalars are left alone");
    aorm_model_free_fields(&every_model, &o); /* idempotent */
    aorm_model_free_fields(NULL, &o);
    aorm_model_free_fields(&every_model, NULL);
}

/* ==========================================================================
 * Against the sandbox: databases of the test's own
 * ========================================================================== */

#define MAX_DBS 4
static char test_dbs[MAX_DBS][64];
static int ntest_dbs;

/* The sandbox DSN with dbname replaced (values quoted for conninfo). */
static char *dsn_for(const char *dbname) {
    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(t_dsn(), &err);
    cr_assert_not_null(opts, "cannot parse AORM_TEST_DSN: %s", err ? err : "out of memory");
    char *out = NULL;
    size_t outlen = 0;
    FILE *f = open_memstream(&out, &outlen);
    cr_assert_not_null(f);
    bool have_db = false;
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        const char *v = o->val;
        if (strcmp(o->keyword, "dbname") == 0) {
            v = dbname;
            have_db = true;
        }
        if (!v) continue;
        fprintf(f, "%s='", o->keyword);
        for (const char *c = v; *c; c++) {
            if (*c == '\'' || *c == '\\') fputc('\\', f);
            fputc(*c, f);
        }
        fputs("' ", f);
    }
    if (!have_db) fprintf(f, "dbname='%s'", dbname);
    fclose(f);
    PQconninfoFree(opts);
    return out;
}

static void quiet_notices(void *arg, const char *message) {}

/* Creates a fresh database aorm_model_<pid>_<label>; returns its DSN
 * (malloc'd). The fini drops it. */
static char *fresh_db(const char *label) {
    cr_assert(ntest_dbs < MAX_DBS);
    char *name = test_dbs[ntest_dbs++];
    snprintf(name, 64, "aorm_model_%ld_%s", (long)getpid(), label);
    PGconn *c = t_pg();
    PQsetNoticeProcessor(c, quiet_notices, NULL); /* "does not exist, skipping" */
    char sql[256];
    snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS \"%s\" WITH (FORCE)", name);
    free(t_pg_exec(c, sql));
    snprintf(sql, sizeof(sql), "CREATE DATABASE \"%s\"", name);
    free(t_pg_exec(c, sql));
    PQfinish(c);
    return dsn_for(name);
}

static void drop_test_dbs(void) {
    if (ntest_dbs == 0) return;
    PGconn *c = PQconnectdb(t_dsn());
    PQsetNoticeProcessor(c, quiet_notices, NULL);
    for (int i = 0; i < ntest_dbs; i++) {
        char sql[256];
        snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS \"%s\" WITH (FORCE)", test_dbs[i]);
        PQclear(PQexec(c, sql));
    }
    PQfinish(c);
    ntest_dbs = 0;
}

static PGconn *pg_at(const char *dsn) {
    PGconn *c = PQconnectdb(dsn);
    cr_assert(PQstatus(c) == CONNECTION_OK, "cannot connect to %s: %s", dsn, PQerrorMessage(c));
    return c;
}

typedef struct env {
    struct ev_loop *evl;
    aorm_loop *loop;
    aorm_engine *e;
} env;

static void env_open(env *t, const char *dsn) {
    t_loop_open(&t->evl, &t->loop);
    aorm_engine_options o;
    aorm_engine_options_init(&o);
    o.conninfo = dsn;
    t->e = aorm_engine_new(t->loop, &o);
    cr_assert_not_null(t->e);
}

static void env_close(env *t) {
    aorm_engine_free(t->e);
    t_loop_close(&t->evl, &t->loop);
}

typedef struct call {
    int done;
    aorm_result *res;
    aorm_error *err;
} call;

static void on_call(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    call *c = user;
    c->done++;
    cr_assert((res == NULL) != (err == NULL), "exactly one of result and error");
    if (err) {
        c->err = aorm_error_copy(err);
        cr_assert_not_null(c->err);
    } else {
        c->res = aorm_result_detach(res);
        cr_assert_not_null(c->res);
    }
}

static void call_clear(call *c) {
    aorm_result_free(c->res);
    aorm_error_free(c->err);
    memset(c, 0, sizeof(*c));
}

static void call_wait(env *t, call *c, const char *what) {
    cr_assert(t_run_until(t->evl, &c->done, WAIT), "%s: no callback", what);
    cr_assert_eq(c->done, 1, "%s: called back %d times", what, c->done);
}

static void call_ok(env *t, call *c, const char *what) {
    call_wait(t, c, what);
    if (c->err) cr_assert_fail("%s failed: %s %s %s", what, c->err->sqlstate, c->err->message, c->err->detail);
}

/* One statement, waited for. */
static void exec_ok(env *t, const char *sql, const aorm_params *p, call *c) {
    memset(c, 0, sizeof(*c));
    int rc = aorm_engine_execute(t->e, sql, p, NULL, on_call, c);
    cr_assert_eq(rc, 0, "%s: %s", sql, aorm_errname(rc));
    call_ok(t, c, sql);
}

/* create_all / drop_all, waited for, with the callback contract checked:
 * not from inside the call, exactly once. Returns the call (for errors). */
static call ddl_run(env *t, bool create, const aorm_model *const *models, int n, unsigned flags) {
    call c = {0};
    int rc = create ? aorm_ddl_create_all(t->e, models, n, flags, on_call, &c)
                    : aorm_ddl_drop_all(t->e, models, n, flags, on_call, &c);
    cr_assert_eq(rc, 0, "%s: %s", create ? "create_all" : "drop_all", aorm_errname(rc));
    cr_assert_eq(c.done, 0, "called back from inside the call");
    call_wait(t, &c, create ? "create_all" : "drop_all");
    /* another round trip: no second callback may arrive meanwhile */
    call s;
    exec_ok(t, "SELECT 1", NULL, &s);
    call_clear(&s);
    cr_assert_eq(c.done, 1);
    return c;
}

static void ddl_ok(env *t, bool create, const aorm_model *const *models, int n, unsigned flags) {
    call c = ddl_run(t, create, models, n, flags);
    if (c.err) cr_assert_fail("DDL failed: %s %s", c.err->sqlstate, c.err->message);
    cr_assert_str_eq(aorm_result_cmd_tag(c.res), "COMMIT", "the callback gets COMMIT's result");
    call_clear(&c);
}

/* The catalog of schema `public` as sorted lines: per table its columns
 * (position, name, format_type, NOT NULL, has a default), primary key,
 * UNIQUE and foreign-key constraints (columns, referenced table and
 * columns, ON DELETE action) and indexes (column lists, uniqueness).
 * Constraint and index names are left out: they may differ. */
static const char catalog_sql[] =
    "SELECT coalesce(string_agg(line, E'\\n' ORDER BY line), '') FROM ("
    " SELECT format('%s|col|%s|%s|%s|notnull=%s|default=%s', c.relname, lpad(a.attnum::text, 3, '0'),"
    "        a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, a.atthasdef) AS line"
    "   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    "   JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
    "  WHERE n.nspname = 'public' AND c.relkind = 'r'"
    " UNION ALL"
    " SELECT format('%s|%s|%s%s', c.relname,"
    "        CASE k.contype WHEN 'p' THEN 'pk' WHEN 'u' THEN 'unique' ELSE 'fk' END,"
    "        (SELECT string_agg(a.attname, ',' ORDER BY u.ord) FROM unnest(k.conkey) WITH ORDINALITY u(num, ord)"
    "           JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.num),"
    "        CASE WHEN k.contype = 'f' THEN format(' -> %s(%s) on delete %s', r.relname,"
    "             (SELECT string_agg(a.attname, ',' ORDER BY u.ord)"
    "                FROM unnest(k.confkey) WITH ORDINALITY u(num, ord)"
    "                JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.num),"
    "             k.confdeltype) ELSE '' END)"
    "   FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid"
    "   JOIN pg_namespace n ON n.oid = c.relnamespace LEFT JOIN pg_class r ON r.oid = k.confrelid"
    "  WHERE n.nspname = 'public' AND k.contype IN ('p', 'u', 'f')"
    " UNION ALL"
    " SELECT format('%s|index|%s|unique=%s', c.relname,"
    "        (SELECT string_agg(a.attname, ',' ORDER BY u.ord)"
    "           FROM unnest(i.indkey::int2[]) WITH ORDINALITY u(num, ord)"
    "           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = u.num), i.indisunique)"
    "   FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
    "  WHERE n.nspname = 'public'"
    ") s";

static char *catalog_of(const char *dsn) {
    PGconn *c = pg_at(dsn);
    char *text = t_pg_exec(c, catalog_sql);
    PQfinish(c);
    cr_assert_not_null(text);
    return text;
}

/* Runs the CREATE statements of bench/schema.sql (its DDL, not its data
 * load) in the database at dsn. The file has no ';' inside literals. */
static int load_reference_ddl(const char *dsn) {
    char *text = t_read_file(AORM_SOURCE_DIR "/bench/schema.sql");
    PGconn *c = pg_at(dsn);
    int n = 0;
    char *save = NULL;
    for (char *stmt = strtok_r(text, ";", &save); stmt; stmt = strtok_r(NULL, ";", &save)) {
        /* drop leading comment lines and blanks */
        for (;;) {
            stmt += strspn(stmt, " \t\r\n");
            if (strncmp(stmt, "--", 2) != 0) break;
            char *nl = strchr(stmt, '\n');
            if (!nl) {
                stmt += strlen(stmt);
                break;
            }
            stmt = nl + 1;
        }
        if (strncasecmp(stmt, "CREATE", 6) != 0) continue;
        free(t_pg_exec(c, stmt));
        n++;
    }
    PQfinish(c);
    free(text);
    return n;
}

Test(server, create_all_matches_the_reference_schema, .timeout = TIMEOUT, .fini = drop_test_dbs) {
    char *dsn_a = fresh_db("orm");
    char *dsn_b = fresh_db("ref");
    env t;
    env_open(&t, dsn_a);

    ddl_ok(&t, true, bookstore, NBOOKSTORE, 0);
    /* re-runs with IF NOT EXISTS change nothing and fail on nothing */
    ddl_ok(&t, true, bookstore, NBOOKSTORE, AORM_DDL_IF_NOT_EXISTS);
    ddl_ok(&t, true, bookstore, NBOOKSTORE, AORM_DDL_IF_NOT_EXISTS);

    cr_assert_eq(load_reference_ddl(dsn_b), 7, "bench/schema.sql: 5 CREATE TABLE and 2 CREATE INDEX");
    char *ours = catalog_of(dsn_a);
    char *ref = catalog_of(dsn_b);
    cr_assert(contains(ref, "books|fk|author_id -> authors(id) on delete a"), "reference catalog:\n%s", ref);
    cr_assert(contains(ref, "book_tags|index|tag_id|unique=f"), "reference catalog:\n%s", ref);
    cr_assert(contains(ref, "tags|unique|name"), "reference catalog:\n%s", ref);
    cr_assert_str_eq(ours, ref, "\n--- create_all:\n%s\n--- bench/schema.sql:\n%s", ours, ref);
    free(ours);
    free(ref);

    /* the same data the reference loads fits our tables */
    call c;
    exec_ok(&t, "INSERT INTO authors (name, born) VALUES ('a', NULL)", NULL, &c);
    call_clear(&c);
    exec_ok(&t, "INSERT INTO books (author_id, title, year, price) SELECT id, 't', 2000, 1.5 FROM authors", NULL,
            &c);
    call_clear(&c);

    ddl_ok(&t, false, bookstore, NBOOKSTORE, AORM_DDL_CASCADE);
    PGconn *pg = pg_at(dsn_a);
    cr_assert_eq(t_pg_long(pg, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"), 0);
    PQfinish(pg);
    /* dropping what is gone: an error without IF EXISTS, fine with it */
    call d = ddl_run(&t, false, bookstore, NBOOKSTORE, 0);
    cr_assert_not_null(d.err);
    cr_assert_str_eq(d.err->sqlstate, "42P01");
    call_clear(&d);
    ddl_ok(&t, false, bookstore, NBOOKSTORE, AORM_DDL_IF_EXISTS);

    env_close(&t);
    free(dsn_a);
    free(dsn_b);
}

Test(server, failing_create_all_rolls_everything_back, .timeout = TIMEOUT, .fini = drop_test_dbs) {
    char *dsn = fresh_db("fail");
    PGconn *pg = pg_at(dsn);
    free(t_pg_exec(pg, "CREATE TABLE tags (id int)"));
    env t;
    env_open(&t, dsn);
    call c = ddl_run(&t, true, bookstore, NBOOKSTORE, 0);
    cr_assert_not_null(c.err, "tags already exists");
    cr_assert_eq(c.err->code, AORM_ESERVER);
    cr_assert_str_eq(c.err->sqlstate, "42P07", "the first error, not a later 'aborted': %s", c.err->message);
    call_clear(&c);
    cr_assert_eq(t_pg_long(pg, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"), 1,
                 "authors and books were rolled back");
    /* the connection came back clean: the engine still works */
    call s;
    exec_ok(&t, "SELECT count(*) FROM tags", NULL, &s);
    call_clear(&s);
    /* synchronous refusals never call back */
    const aorm_model *const cyc[] = {&cyc_a_model, &cyc_b_model};
    cr_assert_eq(aorm_ddl_create_all(t.e, cyc, 2, 0, on_call, &c), AORM_EMISUSE);
    cr_assert_eq(aorm_ddl_create_all(NULL, bookstore, 1, 0, on_call, &c), AORM_EMISUSE);
    cr_assert_eq(aorm_ddl_create_all(t.e, bookstore, 1, 0, NULL, NULL), AORM_EMISUSE);
    cr_assert_eq(aorm_ddl_drop_all(t.e, bookstore, 1, 0x40, on_call, &c), AORM_EMISUSE);
    exec_ok(&t, "SELECT 1", NULL, &s);
    call_clear(&s);
    cr_assert_eq(c.done, 0);
    env_close(&t);
    PQfinish(pg);
    free(dsn);
}

Test(server, engine_freed_while_create_all_runs, .timeout = TIMEOUT, .fini = drop_test_dbs) {
    char *dsn = fresh_db("free");
    env t;
    env_open(&t, dsn);
    call c = {0};
    cr_assert_eq(aorm_ddl_create_all(t.e, bookstore, NBOOKSTORE, 0, on_call, &c), 0);
    /* freeing right away cancels the acquire: one callback, with an error */
    aorm_engine_free(t.e);
    t.e = NULL;
    cr_assert_eq(c.done, 1);
    cr_assert_not_null(c.err);
    cr_assert_eq(c.err->code, AORM_ECANCELED);
    call_clear(&c);
    t_loop_close(&t.evl, &t.loop);
    free(dsn);
}

static aorm_engine *held_probe;
static int holds_a_connection(void *arg) {
    aorm_engine_stats st;
    aorm_engine_stats_get(held_probe, &st);
    return st.held == 1 || *(int *)arg;
}

Test(server, engine_freed_while_create_all_holds_its_connection, .timeout = TIMEOUT, .fini = drop_test_dbs) {
    char *dsn = fresh_db("free2");
    env t;
    env_open(&t, dsn);
    call c = {0};
    cr_assert_eq(aorm_ddl_create_all(t.e, bookstore, NBOOKSTORE, 0, on_call, &c), 0);
    held_probe = t.e;
    cr_assert(t_run_until_fn(t.evl, holds_a_connection, &c.done, WAIT), "the connection was never acquired");
    cr_assert_eq(c.done, 0, "the statements are queued or in flight");
    /* every queued statement is cancelled; the job reports once */
    aorm_engine_free(t.e);
    cr_assert_eq(c.done, 1);
    cr_assert_not_null(c.err);
    cr_assert_eq(c.err->code, AORM_ECANCELED, "%s", aorm_errname(c.err->code));
    call_clear(&c);
    t_loop_close(&t.evl, &t.loop);
    free(dsn);
}

Test(server, kitchen_sink_ddl_runs_and_reruns, .timeout = TIMEOUT, .fini = drop_test_dbs) {
    char *dsn = fresh_db("sink");
    PGconn *pg = pg_at(dsn);
    free(t_pg_exec(pg, "CREATE SCHEMA app"));
    env t;
    env_open(&t, dsn);
    ddl_ok(&t, true, kitchen, 2, AORM_DDL_IF_NOT_EXISTS);
    ddl_ok(&t, true, kitchen, 2, AORM_DDL_IF_NOT_EXISTS);
    cr_assert_eq(t_pg_long(pg, "SELECT count(*) FROM pg_indexes WHERE schemaname = 'app'"), 8,
                 "2 keys, 1 unique constraint, 5 indexes");
    /* identity, defaults and ON DELETE actions behave as declared */
    free(t_pg_exec(pg, "INSERT INTO app.nodes (label, token, kind) VALUES ('root', gen_random_uuid(), 1)"));
    free(t_pg_exec(pg, "INSERT INTO app.nodes (parent_id, label, token, kind) "
                       "SELECT id, 'leaf', gen_random_uuid(), 2 FROM app.nodes"));
    cr_assert_eq(t_pg_long(pg, "SELECT count(*) FROM app.nodes WHERE created IS NOT NULL AND rank = 0"), 2);
    free(t_pg_exec(pg, "INSERT INTO app.edges (src, dst) SELECT l.id, r.id FROM app.nodes l, app.nodes r "
                       "WHERE l.label = 'leaf' AND r.label = 'root'"));
    PGresult *r = PQexec(pg, "DELETE FROM app.nodes WHERE label = 'root'");
    cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_SQLSTATE), "23503", "RESTRICT on edges.dst");
    cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_CONSTRAINT_NAME), "edges_dst_fkey");
    PQclear(r);
    free(t_pg_exec(pg, "DELETE FROM app.nodes WHERE label = 'leaf'"));
    cr_assert_eq(t_pg_long(pg, "SELECT count(*) FROM app.edges"), 0, "CASCADE on edges.src");
    ddl_ok(&t, false, kitchen, 2, 0);
    cr_assert_eq(t_pg_long(pg, "SELECT count(*) FROM pg_tables WHERE schemaname = 'app'"), 0);
    env_close(&t);
    PQfinish(pg);
    free(dsn);
}

/* ---- round trips ------------------------------------------------------------------ */

/* Loads row `row` of r (columns in every_columns order) into o. */
static void load_every(const aorm_result *r, int row, every *o) {
    memset(o, 0, sizeof(*o));
    cr_assert_eq(aorm_result_ncols(r), NEVERY);
    for (int i = 0; i < NEVERY; i++) {
        const char *v;
        int len;
        cr_assert_eq(aorm_result_raw(r, row, i, &v, &len), 0);
        int rc = aorm__field_load(&every_columns[i], o, aorm_result_col_type(r, i), v, len, NULL);
        cr_assert_eq(rc, 0, "row %d column %s: %s", row, every_columns[i].name, aorm_errname(rc));
    }
}

static void assert_every_equal(const every *want, const every *got, const char *how) {
    for (int i = 0; i < NEVERY; i++)
        cr_assert(aorm__field_equal(&every_columns[i], want, got), "%s: row %" PRId64 " column %s differs", how,
                  want->id, every_columns[i].name);
}

Test(server, round_trip_of_every_type, .timeout = TIMEOUT, .fini = drop_test_dbs) {
    every_rows_init();
    char *dsn = fresh_db("types");
    env t;
    env_open(&t, dsn);
    const aorm_model *const ms[] = {&every_model};
    ddl_ok(&t, true, ms, 1, 0);

    /* INSERT INTO "every_type" ("id", ...) VALUES ($1, ...) */
    aorm__buf ins = {0}, sel = {0};
    bput(&ins, "INSERT INTO \"every_type\" (");
    bput(&sel, "SELECT ");
    for (int i = 0; i < NEVERY; i++) {
        if (i) {
            bput(&ins, ", ");
            bput(&sel, ", ");
        }
        cr_assert_eq(aorm__quote_ident(&ins, every_columns[i].name), 0);
        cr_assert_eq(aorm__quote_ident(&sel, every_columns[i].name), 0);
    }
    bput(&ins, ") VALUES (");
    for (int i = 0; i < NEVERY; i++) {
        char ph[16];
        snprintf(ph, sizeof(ph), "%s$%d", i ? ", " : "", i + 1);
        bput(&ins, ph);
    }
    bput(&ins, ")");
    bput(&sel, " FROM \"every_type\" ORDER BY \"id\"");

    call ci[4];
    for (int r = 0; r < 4; r++) {
        aorm_params p;
        aorm_params_init(&p);
        for (int i = 0; i < NEVERY; i++)
            cr_assert_eq(aorm__field_param(&every_columns[i], &every_rows[r], &p), 0, "row %d column %s", r,
                         every_columns[i].name);
        memset(&ci[r], 0, sizeof(ci[r]));
        cr_assert_eq(aorm_engine_execute(t.e, ins.data, &p, NULL, on_call, &ci[r]), 0);
        aorm_params_free(&p);
    }
    for (int r = 0; r < 4; r++) {
        call_ok(&t, &ci[r], "insert");
        cr_assert_eq(aorm_result_affected(ci[r].res), 1);
        call_clear(&ci[r]);
    }

    call cs;
    exec_ok(&t, sel.data, NULL, &cs);
    cr_assert_eq(aorm_result_nrows(cs.res), 4);
    every got[4];
    for (int r = 0; r < 4; r++) {
        load_every(cs.res, r, &got[r]);
        assert_every_equal(&every_rows[r], &got[r], "select");
    }
    call_clear(&cs);

    /* explicit checks of the extremes, beyond field_equal */
    cr_assert_eq(got[0].i8, INT64_MAX);
    cr_assert_eq(got[1].i8, INT64_MIN);
    cr_assert(got[0].ni8.valid && got[0].ni8.value == INT64_MIN);
    cr_assert_eq(got[0].i2, INT16_MAX);
    cr_assert_eq(got[1].i4, INT32_MIN);
    cr_assert(isinf(got[0].f8) && got[0].f8 > 0);
    cr_assert(isinf(got[1].f4) && got[1].f4 < 0);
    cr_assert(isnan(got[2].f8));
    cr_assert(isnan(got[2].f4));
    cr_assert(got[2].nf8.valid && got[2].nf8.value == 0.0 && signbit(got[2].nf8.value), "-0.0 kept");
    cr_assert(got[3].nf8.valid && got[3].nf8.value == DBL_MAX);
    cr_assert_str_eq(got[0].num, "Infinity");
    cr_assert_str_eq(got[0].nnum, "-Infinity");
    cr_assert_str_eq(got[1].num, "-12345678901234567890.000000000000000000001");
    cr_assert_str_eq(got[2].num, "NaN");
    cr_assert_str_eq(got[2].nnum, "0.000");
    cr_assert_str_eq(got[0].txt, multibyte);
    cr_assert_str_eq(got[1].txt, "");
    cr_assert_not_null(got[1].txt, "'' is not NULL");
    cr_assert_null(got[1].ntxt);
    cr_assert_str_eq(got[2].ntxt, "");
    cr_assert_eq(got[0].by.len, sizeof(bytes_with_nuls));
    cr_assert(memcmp(got[0].by.data, bytes_with_nuls, sizeof(bytes_with_nuls)) == 0);
    cr_assert(got[1].by.data != NULL && got[1].by.len == 0, "empty bytea");
    cr_assert_null(got[1].nby.data);
    cr_assert_eq(got[0].d, AORM_DATE_INFINITY);
    cr_assert_eq(got[1].d, AORM_DATE_NEG_INFINITY);
    cr_assert_eq(got[0].ts, AORM_TIMESTAMP_INFINITY);
    cr_assert_eq(got[1].tz, AORM_TIMESTAMP_NEG_INFINITY);
    cr_assert_eq(got[3].ts, aorm_timestamp_from_unix_us(INT64_C(1700000000123456)), "microseconds kept");
    cr_assert(!got[1].nb.valid && !got[1].ni2.valid && !got[1].nf4.valid && !got[1].nd.valid &&
              !got[1].nts.valid && !got[1].nu.valid);
    cr_assert(got[2].nb.valid && got[2].ni4.valid && got[2].ni4.value == 0 && got[2].nu.valid);
    cr_assert_str_eq(got[0].js, every_rows[0].js, "json keeps its text byte for byte");
    cr_assert_str_eq(got[0].jb, every_rows[0].jb);
    cr_assert_null(got[1].njb);
    for (int r = 0; r < 4; r++) aorm_model_free_fields(&every_model, &got[r]);

    /* the server agrees on what it stored */
    PGconn *pg = pg_at(dsn);
    cr_assert_eq(t_pg_long(pg, "SELECT count(*) FROM every_type WHERE i8 = 9223372036854775807 "
                               "AND f8 = 'Infinity' AND num = 'Infinity' AND d = 'infinity' AND nb = false"),
                 1);
    cr_assert_eq(t_pg_long(pg, "SELECT octet_length(by) FROM every_type WHERE id = 1"), 6);
    cr_assert_eq(t_pg_long(pg, "SELECT char_length(txt) FROM every_type WHERE id = 1"), 18);
    char *date = t_pg_exec(pg, "SELECT d::text FROM every_type WHERE id = 4");
    cr_assert_str_eq(date, "2024-02-29");
    free(date);
    PQfinish(pg);

    aorm__buf_free(&ins);
    aorm__buf_free(&sel);
    env_close(&t);
    free(dsn);
}

Test(server, param_array_round_trip_of_every_type, .timeout = TIMEOUT, .fini = drop_test_dbs) {
    every_rows_init();
    char *dsn = fresh_db("arrays");
    env t;
    env_open(&t, dsn);
    const every *objs[4] = {&every_rows[0], &every_rows[1], &every_rows[2], &every_rows[3]};

    /* one statement per column, all in one pipeline */
    call c[NEVERY];
    for (int i = 0; i < NEVERY; i++) {
        const aorm_column *col = &every_columns[i];
        char sql[256];
        snprintf(sql, sizeof(sql), "SELECT v FROM unnest($1::%s[]) WITH ORDINALITY AS u(v, i) ORDER BY i",
                 aorm__type_sql(col->type, false));
        aorm_params p;
        aorm_params_init(&p);
        cr_assert_eq(aorm__field_param_array(col, (const void *const *)objs, 4, &p), 0, "column %s", col->name);
        cr_assert_eq(aorm_params_count(&p), 1);
        memset(&c[i], 0, sizeof(c[i]));
        cr_assert_eq(aorm_engine_execute(t.e, sql, &p, NULL, on_call, &c[i]), 0);
        aorm_params_free(&p);
    }
    int nulls_seen = 0;
    for (int i = 0; i < NEVERY; i++) {
        const aorm_column *col = &every_columns[i];
        call_ok(&t, &c[i], col->name);
        cr_assert_eq(aorm_result_nrows(c[i].res), 4, "column %s", col->name);
        cr_assert_eq(aorm_result_col_type(c[i].res, 0), aorm__type_oid(col->type));
        for (int r = 0; r < 4; r++) {
            every got;
            memset(&got, 0, sizeof(got));
            const char *v;
            int len;
            cr_assert_eq(aorm_result_raw(c[i].res, r, 0, &v, &len), 0);
            if (len < 0) nulls_seen++;
            int rc = aorm__field_load(col, &got, aorm_result_col_type(c[i].res, 0), v, len, NULL);
            cr_assert_eq(rc, 0, "column %s row %d: %s", col->name, r, aorm_errname(rc));
            cr_assert(aorm__field_equal(col, &every_rows[r], &got), "column %s row %d differs", col->name, r);
            aorm_model_free_fields(&every_model, &got);
        }
        call_clear(&c[i]);
    }
    cr_assert_eq(nulls_seen, 15, "row 2's nullable fields are NULL elements");

    /* NULL elements in a non-nullable text column's array, and an empty array */
    every a = every_rows[3], b = every_rows[3];
    b.txt = NULL;
    const every *two[] = {&a, &b};
    aorm_params p;
    aorm_params_init(&p);
    cr_assert_eq(aorm__field_param_array(every_col("txt"), (const void *const *)two, 2, &p), 0);
    cr_assert_eq(aorm__field_param_array(every_col("i8"), NULL, 0, &p), 0);
    call s;
    exec_ok(&t, "SELECT array_length($1::text[], 1), $1::text[] IS NOT NULL AND ($1::text[])[2] IS NULL, "
                "cardinality($2::bigint[])",
            &p, &s);
    int32_t n;
    bool second_null;
    int32_t empty;
    cr_assert_eq(aorm_result_int32(s.res, 0, 0, &n), 0);
    cr_assert_eq(n, 2);
    cr_assert_eq(aorm_result_bool(s.res, 0, 1, &second_null), 0);
    cr_assert(second_null);
    cr_assert_eq(aorm_result_int32(s.res, 0, 2, &empty), 0);
    cr_assert_eq(empty, 0);
    call_clear(&s);
    aorm_params_free(&p);

    /* many rows: the multi-row insert shape the statement compiler uses */
    const aorm_model *const ms[] = {&every_model};
    ddl_ok(&t, true, ms, 1, 0);
    aorm_params_init(&p);
    aorm__buf sql = {0};
    bput(&sql, "INSERT INTO \"every_type\" SELECT * FROM unnest(");
    for (int i = 0; i < NEVERY; i++) {
        char part[96];
        snprintf(part, sizeof(part), "%s$%d::%s[]", i ? ", " : "", i + 1,
                 aorm__type_sql(every_columns[i].type, false));
        bput(&sql, part);
        cr_assert_eq(aorm__field_param_array(&every_columns[i], (const void *const *)objs, 4, &p), 0);
    }
    bput(&sql, ")");
    exec_ok(&t, sql.data, &p, &s);
    cr_assert_eq(aorm_result_affected(s.res), 4);
    call_clear(&s);
    aorm_params_free(&p);
    aorm__buf_free(&sql);
    PGconn *pg = pg_at(dsn);
    cr_assert_eq(t_pg_long(pg, "SELECT count(*) FROM every_type WHERE id = 3 AND f8 = 'NaN' AND nnum = 0"), 1);
    cr_assert_eq(t_pg_long(pg, "SELECT count(*) FROM every_type WHERE id = 2 AND nb IS NULL AND njb IS NULL"), 1);
    PQfinish(pg);

    env_close(&t);
    free(dsn);
}

/* ---- generated names longer than PostgreSQL keeps --------------------------------- */

/* Two tables whose 63-byte names differ only in their last byte, with
 * long column names sharing 55-byte prefixes: every generated name
 * ("<table>_pkey", "<table>_<column>_key", "_fkey", "_idx") is longer
 * than the 63 bytes the server keeps, and cut there they would all
 * collide (the primary key's index even with its own table). */
#define LONG_T62 "ddl_long_name_table_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
#define LONG_K55 "kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk"
#define LONG_I55 "iiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiii"

typedef struct longb {
    int64_t id;
} longb;

static const aorm_column longb_columns[] = {
    AORM_COLUMN(longb, id, AORM_INT8, AORM_PK),
};
const aorm_model longb_model = {
    AORM_MODEL_OF(longb, LONG_T62 "b"),
    AORM_COLUMNS(longb_columns),
};

typedef struct longa {
    int64_t id;
    int64_t parent_id;
    int32_t k1, k2, i1, i2;
} longa;

static const aorm_column longa_columns[] = {
    AORM_COLUMN(longa, id, AORM_INT8, AORM_PK),
    {.name = LONG_K55 "_parent", .offset = offsetof(longa, parent_id), .size = sizeof(int64_t), .type = AORM_INT8},
    {.name = LONG_K55 "_one", .offset = offsetof(longa, k1), .size = sizeof(int32_t), .type = AORM_INT4,
     .flags = AORM_UNIQUE},
    {.name = LONG_K55 "_two", .offset = offsetof(longa, k2), .size = sizeof(int32_t), .type = AORM_INT4,
     .flags = AORM_UNIQUE},
    {.name = LONG_I55 "_one", .offset = offsetof(longa, i1), .size = sizeof(int32_t), .type = AORM_INT4,
     .flags = AORM_INDEX},
    {.name = LONG_I55 "_two", .offset = offsetof(longa, i2), .size = sizeof(int32_t), .type = AORM_INT4,
     .flags = AORM_INDEX},
};
static const aorm_foreign_key longa_fks[] = {
    {.offset = offsetof(longa, parent_id), .target = &longb_model, .target_offset = offsetof(longb, id)},
};
const aorm_model longa_model = {
    AORM_MODEL_OF(longa, LONG_T62 "a"),
    AORM_COLUMNS(longa_columns),
    AORM_FOREIGN_KEYS(longa_fks),
};

/* A table of two-byte characters: a cut at byte 54 would split one. */
typedef struct longu {
    int64_t id;
} longu;

static const aorm_column longu_columns[] = {
    AORM_COLUMN(longu, id, AORM_INT8, AORM_PK),
};
const aorm_model longu_model = {
    AORM_MODEL_OF(longu, "x\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9"
                         "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9"
                         "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9"),
    AORM_COLUMNS(longu_columns),
};

static const aorm_model *const long_models[] = {&longa_model, &longb_model, &longu_model};

static bool utf8_ok(const unsigned char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        size_t k = s[i] < 0x80 ? 0 : (s[i] & 0xE0) == 0xC0 ? 1 : (s[i] & 0xF0) == 0xE0 ? 2 : (s[i] & 0xF8) == 0xF0 ? 3 : 9;
        if (k == 9 || i + k >= n + (k ? 0 : 1)) return false;
        for (size_t j = 1; j <= k; j++)
            if ((s[i + j] & 0xC0) != 0x80) return false;
        i += k + 1;
    }
    return true;
}

/* The names after CONSTRAINT and INDEX [IF NOT EXISTS] in a script. */
static int script_names(const char *sql, char names[][80], int cap) {
    int n = 0;
    for (const char *p = sql; (p = strstr(p, "\"")) && n < cap;) {
        const char *before = p;
        bool named = (before - sql >= 11 && strncmp(before - 11, "CONSTRAINT ", 11) == 0) ||
                     (before - sql >= 6 && strncmp(before - 6, "INDEX ", 6) == 0) ||
                     (before - sql >= 20 && strncmp(before - 20, "INDEX IF NOT EXISTS ", 20) == 0);
        const char *end = strchr(p + 1, '"');
        cr_assert_not_null(end);
        if (named) {
            size_t len = (size_t)(end - p - 1);
            cr_assert_lt(len, 80, "name of %zu bytes", len);
            memcpy(names[n], p + 1, len);
            names[n][len] = '\0';
            n++;
        }
        p = end + 1;
    }
    return n;
}

Test(ddl_text, generated_names_fit_in_63_bytes_and_stay_distinct, .timeout = TIMEOUT) {
    char *sql = NULL, *again = NULL;
    char err[256] = "";
    cr_assert_eq(aorm_ddl_create_sql(long_models, 3, 0, &sql, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(aorm_ddl_create_sql(long_models, 3, AORM_DDL_IF_NOT_EXISTS, &again, err, sizeof(err)), 0);
    char names[32][80], names2[32][80];
    int n = script_names(sql, names, 32);
    cr_assert_eq(n, 2 + 2 + 1 + 3 + 1, "constraints and indexes named: %d in\n%s", n, sql);
    cr_assert_eq(script_names(again, names2, 32), n);
    for (int i = 0; i < n; i++) {
        cr_assert_leq(strlen(names[i]), 63, "\"%s\" is %zu bytes", names[i], strlen(names[i]));
        cr_assert(utf8_ok((const unsigned char *)names[i], strlen(names[i])), "\"%s\" is not UTF-8", names[i]);
        cr_assert_str_eq(names[i], names2[i], "names are the same on every run");
        for (int j = 0; j < i; j++) cr_assert_str_neq(names[i], names[j], "two names are \"%s\"", names[i]);
        for (size_t k = 0; k < 3; k++)
            cr_assert_str_neq(names[i], long_models[k]->table, "a name is a table's name");
    }
    /* a name that fits is left as PostgreSQL would choose it */
    cr_assert(strstr(sql, "CONSTRAINT \"authors_pkey\"") == NULL);
    free(sql);
    free(again);
    cr_assert_eq(aorm_ddl_create_sql((const aorm_model *const[]){&author_model}, 1, 0, &sql, NULL, 0), 0);
    cr_assert(strstr(sql, "CONSTRAINT \"authors_pkey\""), "%s", sql);
    free(sql);
}

/* Declared index names are the model's own: two that the server would
 * cut to the same 63 bytes are refused, naming the index. */
typedef struct longix {
    int64_t id;
    int32_t a, b;
} longix;

static const aorm_column longix_columns[] = {
    AORM_COLUMN(longix, id, AORM_INT8, AORM_PK),
    AORM_COLUMN(longix, a, AORM_INT4, 0),
    AORM_COLUMN(longix, b, AORM_INT4, 0),
};
static const aorm_index longix_indexes[] = {
    {.name = LONG_T62 "_index_on_a", .fields = AORM__OFFSETS(longix, (a)), .nfields = 1},
    {.name = LONG_T62 "_index_on_b", .fields = AORM__OFFSETS(longix, (b)), .nfields = 1},
};
const aorm_model longix_model = {
    AORM_MODEL_OF(longix, "longix"),
    AORM_COLUMNS(longix_columns),
    AORM_INDEXES(longix_indexes),
};

Test(ddl_text, declared_index_names_equal_in_63_bytes_are_refused, .timeout = TIMEOUT) {
    char *sql = NULL;
    char err[256] = "";
    cr_assert_eq(aorm_ddl_create_sql((const aorm_model *const[]){&longix_model}, 1, 0, &sql, err, sizeof(err)),
                 AORM_EMISUSE);
    cr_assert_null(sql);
    cr_assert(strstr(err, "used twice") && strstr(err, "63 bytes"), "%s", err);
}

Test(server, long_generated_names_create_and_rerun, .timeout = TIMEOUT, .fini = drop_test_dbs) {
    char *dsn = fresh_db("long");
    PGconn *pg = pg_at(dsn);
    env t;
    env_open(&t, dsn);
    ddl_ok(&t, true, long_models, 3, 0);
    ddl_ok(&t, true, long_models, 3, AORM_DDL_IF_NOT_EXISTS);
    cr_assert_eq(t_pg_long(pg, "SELECT count(*) FROM pg_indexes WHERE tablename = '" LONG_T62 "a'"), 6,
                 "primary key, 2 unique constraints, 2 indexes and the foreign key's index");
    cr_assert_eq(t_pg_long(pg, "SELECT count(DISTINCT conname) FROM pg_constraint WHERE conrelid = '\"" LONG_T62
                               "a\"'::regclass"),
                 4, "primary key, 2 unique, 1 foreign key");
    cr_assert_eq(t_pg_long(pg, "SELECT count(*) FROM pg_indexes WHERE tablename LIKE 'x%'"), 1);
    /* the constraints work: a duplicate in either unique column is refused */
    free(t_pg_exec(pg, "INSERT INTO \"" LONG_T62 "b\" VALUES (1)"));
    free(t_pg_exec(pg, "INSERT INTO \"" LONG_T62 "a\" VALUES (1, 1, 1, 1, 0, 0)"));
    PGresult *r = PQexec(pg, "INSERT INTO \"" LONG_T62 "a\" VALUES (2, 1, 2, 1, 0, 0)");
    cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_SQLSTATE), "23505", "the second unique column");
    PQclear(r);
    ddl_ok(&t, false, long_models, 3, 0);
    cr_assert_eq(t_pg_long(pg, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"), 0);
    env_close(&t);
    PQfinish(pg);
    free(dsn);
}

/* An empty name is misuse, reported as such: a referenced model outside
 * the list (not validated with it) with an empty schema used to come back
 * as "out of memory" (the quoting refused it). */
typedef struct emptyparent {
    int64_t id;
} emptyparent;

static const aorm_column emptyparent_columns[] = {
    AORM_COLUMN(emptyparent, id, AORM_INT8, AORM_PK),
};
const aorm_model emptyparent_model = {
    AORM_MODEL_OF(emptyparent, "parents"), .schema = "", AORM_COLUMNS(emptyparent_columns),
};

typedef struct emptychild {
    int64_t id;
    int64_t parent_id;
} emptychild;

static const aorm_column emptychild_columns[] = {
    AORM_COLUMN(emptychild, id, AORM_INT8, AORM_PK),
    AORM_COLUMN(emptychild, parent_id, AORM_INT8, 0),
};
static const aorm_foreign_key emptychild_fks[] = {
    AORM_FOREIGN_KEY(emptychild, parent_id, emptyparent, id),
};
const aorm_model emptychild_model = {
    AORM_MODEL_OF(emptychild, "children"), AORM_COLUMNS(emptychild_columns), AORM_FOREIGN_KEYS(emptychild_fks),
};

Test(ddl_text, empty_identifier_is_misuse, .timeout = TIMEOUT) {
    char *sql = NULL;
    char err[256] = "";
    int rc = aorm_ddl_create_sql((const aorm_model *const[]){&emptychild_model}, 1, 0, &sql, err, sizeof(err));
    cr_assert_eq(rc, AORM_EMISUSE, "got %s: %s", aorm_errname(rc), err);
    cr_assert_null(sql);
    cr_assert(strstr(err, "emptyparent") && strstr(err, "empty schema"), "%s", err);
    /* with the parent in the list, its own validation says the same */
    rc = aorm_ddl_create_sql((const aorm_model *const[]){&emptychild_model, &emptyparent_model}, 2, 0, &sql, err,
                             sizeof(err));
    cr_assert_eq(rc, AORM_EMISUSE);
    cr_assert(strstr(err, "empty schema"), "%s", err);
    /* Core statements say so too, never AORM_ENOMEM */
    aorm_stmt *q = aorm_select(&emptyparent_model);
    cr_assert_eq(aorm_stmt_compile(q), AORM_EMISUSE);
    cr_assert(strstr(aorm_stmt_errmsg(q), "empty identifier"), "%s", aorm_stmt_errmsg(q));
    aorm_stmt_free(q);
    q = aorm_select(&emptychild_model);
    cr_assert_eq(aorm_join(q, &emptyparent_model,
                           aorm_eq(AORM_COL(emptyparent, id), AORM_COL(emptychild, parent_id))),
                 0);
    cr_assert_eq(aorm_stmt_compile(q), AORM_EMISUSE);
    aorm_stmt_free(q);
}
