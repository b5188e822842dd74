/* sql_int.h -- private to src/sql: the statement struct, its arena and the
 * functions the Core's files share.
 *
 * Memory: a statement owns one arena (a bump allocator over a first block
 * inside the statement itself and further malloc'd blocks, all freed with
 * the statement). Every copied expression node, string, array, select
 * item and list lives there; growing lists are re-allocated in the arena
 * (doubling, the old copy is simply abandoned). Nothing in the arena is
 * freed individually. Outside the arena the statement owns: the compiled
 * text (an aorm__buf), two parameter builders (the compiled parameters
 * and the encoded INSERT rows) and its subqueries (the `subs` list). */
#ifndef AORM_SQL_INT_H
#define AORM_SQL_INT_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "aorm/error.h"
#include "aorm/sql.h"
#include "util/bump.h"
#include "util/util.h"

/* ---- arena ---------------------------------------------------------------- */

/* The project's one bump allocator (util/bump.h), set up the statement's
 * way: the first block inside the statement, then blocks doubling from
 * 4 KiB to 64 KiB, requests above 1 KiB in blocks of their own. */
typedef aorm__bump aorm__arena;

/* Bytes of the arena's first block, kept inside the statement so that a
 * small statement costs one malloc. */
#define AORM__STMT_INLINE 1536

void aorm__arena_init(aorm__arena *a, void *first, size_t size);
void aorm__arena_free(aorm__arena *a);
/* n bytes aligned for any type, or NULL on out of memory. */
void *aorm__arena_alloc(aorm__arena *a, size_t n);

/* ---- statement parts ------------------------------------------------------------ */

typedef enum aorm__stmt_kind {
    AORM__SELECT = 1, /* SELECT ... FROM ... */
    AORM__INSERT,     /* INSERT INTO ... */
    AORM__UPDATE,     /* UPDATE ... SET ... */
    AORM__DELETE,     /* DELETE FROM ... */
    AORM__RAW,        /* raw text with :name binds */
    AORM__COMPOUND    /* (arm) UNION / INTERSECT / EXCEPT [ALL] (arm) */
} aorm__stmt_kind;

/* One select-list or RETURNING entry. */
typedef struct aorm__item {
    const aorm_expr *e;       /* the copied expression; NULL for a plain column */
    const aorm_model *model;  /* column entries (plain or labelled): the column's model... */
    const aorm_column *col;   /* ...and column; NULL for other expressions */
    const char *alias;        /* column entries: the FROM item's alias (NULL: the model's table) */
    const char *name;         /* output name */
    bool as;                  /* emit `AS "name"` (explicit or automatic label) */
} aorm__item;

typedef struct aorm__items {
    aorm__item *v;
    int n, cap;
    const char **set;         /* open-addressing set of the output names */
    unsigned set_cap;         /* power of two, or 0 */
    unsigned set_len;
} aorm__items;

typedef struct aorm__exprs {
    const aorm_expr **v;
    int n, cap;
} aorm__exprs;

/* A FROM item beyond the first of a SELECT (a join), or one of the items
 * of UPDATE ... FROM / DELETE ... USING (comma: no ON, no join word).
 * Exactly one of model, sub and cte is set. Its name in the statement is
 * alias, else the CTE's name, else the model's table. */
typedef struct aorm__join {
    const aorm_model *model;  /* a model's table */
    aorm_stmt *sub;           /* a derived table (owned through subs) */
    const char *cte;          /* a CTE by name */
    const char *alias;        /* AS "alias", or NULL */
    const aorm_expr *on;      /* NULL: CROSS JOIN / ON TRUE */
    bool outer;
    bool lateral;
    bool comma;               /* an UPDATE FROM / DELETE USING item */
} aorm__join;

/* WITH "name" AS (stmt) */
typedef struct aorm__cte {
    const char *name;
    aorm_stmt *stmt;          /* owned through subs */
} aorm__cte;

enum { AORM__SETOP_UNION = 1, AORM__SETOP_INTERSECT, AORM__SETOP_EXCEPT };

typedef struct aorm__order {
    const aorm_expr *e;
    unsigned flags;
} aorm__order;

/* `col = value` of UPDATE SET, an INSERT's explicit values or DO UPDATE SET. */
typedef struct aorm__set {
    const aorm_column *col;
    const aorm_expr *value;
} aorm__set;

typedef struct aorm__sets {
    aorm__set *v;
    int n, cap;
} aorm__sets;

/* Raw text: a placeholder occurrence and a distinct name. */
typedef struct aorm__raw_ph {
    size_t start, end;        /* the `:name` bytes in the text */
    int name;                 /* index into names */
} aorm__raw_ph;

typedef struct aorm__raw_name {
    const char *name;         /* into the copied text, not NUL-terminated */
    size_t len;
    const aorm_expr *value;   /* bound value (copied), or NULL */
    int num;                  /* $n given during the current compile, 0 before */
} aorm__raw_name;

enum { AORM__CONFLICT_NONE = 0, AORM__CONFLICT_NOTHING, AORM__CONFLICT_UPDATE };

struct aorm_stmt {
    aorm__stmt_kind kind;
    int error;                /* sticky error, 0 when fine */
    const char *errmsg;       /* its description (arena or static) */
    bool compiled;            /* sql/params hold the current compilation */

    aorm_stmt *owner;         /* the statement this one is a subquery of */
    aorm_stmt *subs;          /* owned subqueries, linked by next_sub */
    aorm_stmt *next_sub;

    const aorm_model *model;  /* FROM / INSERT INTO / UPDATE / DELETE */
    bool from_explicit;       /* FROM given by aorm_select/aorm_from... (not derived) */
    const char *from_alias;   /* SELECT: FROM model AS "from_alias" */
    aorm_stmt *from_sub;      /* SELECT: FROM (from_sub) AS "from_alias" (model NULL) */
    const char *from_cte;     /* SELECT: FROM "from_cte" [AS "from_alias"] (model NULL) */

    /* WITH (every kind but raw) */
    aorm__cte *ctes;
    int nctes, cap_ctes;
    bool recursive;

    /* COMPOUND: arms[0] setop arms[1] (both owned through subs); takes
     * the SELECT's order, limit and offset */
    int setop;
    bool setop_all;
    aorm_stmt *arms[2];

    /* SELECT */
    bool distinct;
    aorm__exprs distinct_on;
    aorm__items items;        /* select list */
    aorm__join *joins;
    int njoins, cap_joins;
    aorm__exprs where, group, having;
    aorm__order *order;
    int norder, cap_order;
    bool has_limit, has_offset, has_lock;
    int64_t limit, offset;
    unsigned lock;
    bool locking_sub;         /* some subquery (at any depth) locks rows or is raw text */

    /* INSERT */
    const aorm_column **icols; /* columns of the object rows / of INSERT ... SELECT */
    int nicols;
    aorm_stmt *isel;           /* INSERT ... SELECT: the query (owned through subs) */
    bool *use_default;         /* per column of the model: aorm_insert_use_default (or NULL) */
    const char *conflict_constraint; /* ON CONFLICT ON CONSTRAINT "name" */
    size_t nrows;              /* object rows added (0: none) */
    aorm_params rows;          /* encoded object rows: one value or one array per column */
    int conflict;              /* AORM__CONFLICT_* */
    const aorm_column **ccols; /* conflict target */
    int nccols;
    aorm__sets sets;           /* UPDATE SET / INSERT explicit values */
    aorm__sets upd;            /* ON CONFLICT DO UPDATE SET */
    aorm__items ret;           /* RETURNING */

    /* RAW */
    const char *text;
    size_t text_len;
    aorm__raw_ph *ph;
    int nph;
    aorm__raw_name *names;
    int nnames;

    /* compiled output */
    aorm__buf sql;
    aorm__buf qual;            /* compile scratch: a quoted table name */
    aorm_params params;
    /* named placeholders (aorm_param) met by the last compile: the
     * parameter index each one took (names live in the arena) */
    struct aorm__named { const char *name; int slot; aorm_type type; const aorm_enum *enum_type; } *named;
    int nnamed, cap_named;

    aorm__arena arena;
    max_align_t inline_mem[AORM__STMT_INLINE / sizeof(max_align_t)];
};

/* ---- shared helpers --------------------------------------------------------------- */

/* Records code (and a printf-style description) as q's error unless one is
 * already kept; clears the compiled state. Returns the kept error. */
int aorm__sql_fail(aorm_stmt *q, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int aorm__sql_failv(aorm_stmt *q, int code, const char *fmt, va_list ap);

/* A new empty statement of `kind`, or NULL on out of memory. */
aorm_stmt *aorm__sql_new(aorm__stmt_kind kind, const aorm_model *m);

/* The column of m stored at offset, or NULL. */
const aorm_column *aorm__sql_column_at(const aorm_model *m, size_t offset);

/* Copy flags: where an expression may hold a label / EXCLUDED.col. */
enum { AORM__CP_LABEL = 1u << 0, AORM__CP_EXCLUDED = 1u << 1 };

/* Deep-copies e into q's arena, checking it on the way. Subqueries met are
 * taken over by q. Returns 0 and *out, or the (recorded) error; on error
 * every subquery of e has been taken over by q all the same. `what` names
 * the calling function for messages. */
int aorm__sql_copy(aorm_stmt *q, const aorm_expr *e, unsigned flags, const char *what,
                   const aorm_expr **out);
/* Takes over every subquery of e and e2 (either may be NULL) not owned
 * yet: q becomes its owner, or it is freed when q is NULL (once, even if
 * passed twice). For the error paths of builder calls. */
void aorm__sql_take_subs(aorm_stmt *q, const aorm_expr *e, const aorm_expr *e2);
/* The same for every expression of l[0..n) (a builder call's list). */
void aorm__sql_take_subs_list(aorm_stmt *q, const aorm_expr *const *l, int n);
/* Takes over a statement handed to a builder call (a subquery, a CTE, an
 * arm): q becomes its owner. Refuses (recording the error in q, the
 * statement freed with q all the same when it could be adopted) NULL,
 * q itself or an ancestor, one that already has an owner, a kind not in
 * `kinds` (a mask of 1 << aorm__stmt_kind) and a failed one. */
int aorm__sql_take_stmt(aorm_stmt *q, aorm_stmt *sub, unsigned kinds, const char *what);
/* Checks an alias, CTE, constraint name: 1 to 63 bytes. Returns 0 or the
 * (recorded) AORM_EMISUSE. */
int aorm__sql_check_name(aorm_stmt *q, const char *name, const char *what, const char *fn);
/* The output list of q (select list, RETURNING, a set operation's first
 * arm's), or NULL for raw text (whose output is unknown). */
const aorm__items *aorm__sql_outputs(const aorm_stmt *q);
/* True when the output names of it include name. */
bool aorm__sql_items_has(const aorm__items *it, const char *name);
/* Frees a statement regardless of ownership (the owner's teardown). */
void aorm__sql_destroy(aorm_stmt *q);

/* Compiles q into its sql buffer and params (both reset first). */
int aorm__sql_compile(aorm_stmt *q);
/* Compiles so far, in this process (tests of aorm_stmt_prepare). */
extern unsigned long aorm__sql_compiles;

/* Raw text: splits it into placeholders (aorm_raw) / compiles it into b
 * with parameters appended to p (numbered in p's sequence). */
int aorm__sql_raw_parse(aorm_stmt *q);
int aorm__sql_raw_emit(aorm_stmt *q, aorm_stmt *root, aorm__buf *b, aorm_params *p);
/* The SQL name of an aggregate or of a function of AORM_X_CALL other
 * than AORM_FN_NAMED (lowercase: also the output name PostgreSQL gives
 * its result); "?" for anything else. */
const char *aorm__sql_fn_name(aorm_op op);
/* Appends value e (an AORM_X_VALUE or AORM_X_ARRAY copy) to p. */
int aorm__sql_param(aorm_params *p, const aorm_expr *e);

#endif /* AORM_SQL_INT_H */
