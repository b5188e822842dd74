/* cache.c -- the second-level cache's handle: regions, keys, the row
 * encoding, and invalidation after commit (the pipeline, its retries and
 * the disabled state).
 *
 * The read path through sessions lives in cache_session.c; this file knows
 * nothing of sessions. See cache_int.h for the keys and why a flush's
 * invalidation bumps generations before it deletes keys.
 *
 * Owns: the regions, the tables (one per distinct table of the regions'
 * models), the Redis connection, the retry queue and its timer, and every
 * invalidation from the moment it is sent until Redis acknowledges it or
 * the cache is freed. Must not: block, send an invalidation before its
 * transaction committed (the session decides when: aorm__inval_send is
 * called after COMMIT), or let a failed invalidation be forgotten while
 * this process could still read what it names (the table stays
 * unacknowledged, i.e. bypassed, until it is applied or the cache is
 * disabled and recovered). */
#include <hiredis/hiredis.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "cache/cache_int.h"

/* The conditional write-back: KEYS[1..ng] are generation keys, ARGV[1]
 * is ng, ARGV[2] the TTL in milliseconds, ARGV[3..ng+2] the values the
 * reader saw before it read PostgreSQL ("" for none); KEYS[ng+1..] and
 * ARGV[ng+3..] the values to write. Nothing is written when the generation moved: a writer committed
 * since, and the rows read may be the ones it replaced. */
static const char wb_script[] =
    "local ng = tonumber(ARGV[1])\n"
    "for i = 1, ng do\n"
    "  if (redis.call('GET', KEYS[i]) or '') ~= ARGV[i + 2] then return 0 end\n"
    "end\n"
    "for i = ng + 1, #KEYS do redis.call('SET', KEYS[i], ARGV[i + 2], 'PX', ARGV[2]) end\n"
    "return #KEYS - ng\n";

const char *aorm__cache_wb_script(void) { return wb_script; }

void aorm__cache_logf(aorm_cache *c, aorm_log_level level, const char *fmt, ...) {
    if (!c->log || level > c->log_level) return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    c->log(level, msg, c->log_user);
}

/* ---- options and the handle ---------------------------------------------------------- */

void aorm_cache_options_init(aorm_cache_options *o) {
    memset(o, 0, sizeof(*o));
    aorm_redis_options_init(&o->redis);
    o->prefix = "aorm:c:";
    o->deadline = 0.1;
    o->retry_max = 1024;
    o->retry_interval = 0.05;
}

void aorm_cache_region_options_init(aorm_cache_region_options *o) {
    memset(o, 0, sizeof(*o));
    o->ttl = 300;
    o->strategy = AORM_CACHE_READ_WRITE;
    o->lease_wait = 0.05;
}

static void on_retry_timer(aorm_timer *t, void *user);

static void free_ropts(aorm_cache *c) {
    if (c->ropts.password) explicit_bzero((char *)c->ropts.password, strlen(c->ropts.password));
    free((char *)c->ropts.host);
    free((char *)c->ropts.unix_path);
    free((char *)c->ropts.username);
    free((char *)c->ropts.password);
    free((char *)c->ropts.client_name);
}

aorm_cache *aorm_cache_new(aorm_loop *loop, const aorm_cache_options *o) {
    if (!loop || !o || !o->prefix || !*o->prefix || o->deadline < 0 || o->retry_interval <= 0) return NULL;
    aorm_cache *c = calloc(1, sizeof(*c));
    if (!c) return NULL;
    c->loop = loop;
    c->prefix = strdup(o->prefix);
    c->prefix_len = strlen(o->prefix);
    c->deadline = o->deadline > 0 ? o->deadline : 0.1;
    c->retry_max = o->retry_max;
    c->retry_interval = o->retry_interval;
    c->log = o->redis.log;
    c->log_user = o->redis.log_user;
    c->log_level = o->redis.log_level;
    c->ropts = o->redis;
    c->ropts.command_timeout = c->deadline;
    c->ropts.on_ready = c->ropts.on_lost = NULL;
    c->ropts.hook_user = NULL;
    bool copied = true;
    const char **strs[] = {&c->ropts.host, &c->ropts.unix_path, &c->ropts.username, &c->ropts.password,
                           &c->ropts.client_name};
    for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++)
        if (*strs[i] && !(*strs[i] = strdup(*strs[i]))) copied = false;
    c->retry_timer = aorm_timer_new(loop, on_retry_timer, c);
    if (!copied || !c->prefix || !c->retry_timer || !(c->r = aorm_redis_new(loop, &c->ropts))) {
        aorm_timer_free(c->retry_timer);
        free_ropts(c);
        free(c->prefix);
        free(c);
        return NULL;
    }
    return c;
}

aorm_redis *aorm_cache_redis(aorm_cache *c) { return c ? c->r : NULL; }

static void region_free(aorm_cache_region *rg) {
    aorm__near_free(rg->near);
    aorm__buf_free(&rg->kprefix);
    free(rg->name);
    free(rg);
}

void aorm_cache_free(aorm_cache *c) {
    if (!c) return;
    c->freeing = true;
    aorm__tracker_free(c->tracker);
    c->tracker = NULL;
    /* every command still out calls back now (AORM_ECANCELED): the
     * invalidations free themselves, read tickets let their sessions go
     * on to PostgreSQL */
    aorm_redis_free(c->r);
    c->r = NULL;
    while (c->retry_head) {
        aorm__inval *iv = c->retry_head;
        c->retry_head = iv->next;
        aorm__inval_free(iv);
    }
    aorm_timer_free(c->retry_timer);
    while (c->regions) {
        aorm_cache_region *rg = c->regions;
        c->regions = rg->next;
        region_free(rg);
    }
    while (c->tables) {
        aorm__ctable *t = c->tables;
        c->tables = t->next;
        aorm__buf_free(&t->gkey);
        aorm__buf_free(&t->hkey);
        free(t->name);
        free(t);
    }
    free_ropts(c);
    free(c->scr_argv);
    free(c->scr_lens);
    free(c->prefix);
    free(c);
}

/* ---- regions ----------------------------------------------------------------------- */

aorm_cache_region *aorm__cache_region(const aorm_cache *c, const aorm_model *m) {
    for (aorm_cache_region *rg = c ? c->regions : NULL; rg; rg = rg->next)
        if (rg->kind == AORM__REGION_ROWS && rg->m == m) return rg;
    return NULL;
}

aorm_cache_region *aorm__cache_coll_region(const aorm_cache *c, const aorm_model *m, const aorm_relationship *rel) {
    for (aorm_cache_region *rg = c ? c->regions : NULL; rg; rg = rg->next)
        if (rg->kind == AORM__REGION_COLL && rg->owner == m && rg->rel == rel) return rg;
    return NULL;
}

static void table_name(const aorm_model *m, char *name, size_t cap) {
    if (m->schema) snprintf(name, cap, "%s.%s", m->schema, m->table);
    else snprintf(name, cap, "%s", m->table);
}

aorm__ctable *aorm__cache_table(const aorm_cache *c, const aorm_model *m) {
    if (!c->tables) return NULL;
    char name[512];
    table_name(m, name, sizeof(name));
    for (aorm__ctable *t = c->tables; t; t = t->next)
        if (strcmp(t->name, name) == 0) return t;
    return NULL;
}

aorm_cache_region *aorm_cache_region_of(const aorm_cache *c, const aorm_model *m) { return aorm__cache_region(c, m); }

aorm_cache_region *aorm__cache_query_region(const aorm_cache *c, const aorm_model *m) {
    for (aorm_cache_region *rg = c ? c->regions : NULL; rg; rg = rg->next)
        if (rg->kind == AORM__REGION_QUERY && rg->m == m) return rg;
    return NULL;
}

static aorm__ctable *table_for(aorm_cache *c, const aorm_model *m);

aorm__ctable *aorm__cache_table_make(aorm_cache *c, const aorm_model *m) { return table_for(c, m); }

aorm__ctable *aorm__cache_table_written(aorm_cache *c, const aorm_model *m) {
    return c->nqueries > 0 ? table_for(c, m) : aorm__cache_table(c, m);
}

/* Bytes one fixed-width value takes (0: a variable-length type). */
static size_t fixed_width(aorm_type t) {
    switch (t) {
    case AORM_BOOL: return 1;
    case AORM_INT2: return 2;
    case AORM_INT4:
    case AORM_DATE:
    case AORM_FLOAT4: return 4;
    case AORM_INT8:
    case AORM_TIMESTAMP:
    case AORM_TIMESTAMPTZ:
    case AORM_FLOAT8: return 8;
    case AORM_UUID: return 16;
    case AORM_NUMERIC:
    case AORM_TEXT:
    case AORM_BYTEA:
    case AORM_JSON:
    case AORM_JSONB: return 0;
    case AORM_ENUM: return 4;
    case AORM_INTERVAL: return sizeof(aorm_interval);
    case AORM_INET:
    case AORM_CIDR: return sizeof(aorm_inet);
    default: return 0; /* arrays: not cached (encode_col refuses them) */
    }
}

/* What a value's bytes depend on: every column's name, type, size,
 * nullability and key flag in order, the byte order, the format version.
 * Two builds agree on it exactly when they can read each other's values. */
static uint64_t layout_hash(const aorm_model *m) {
    XXH3_state_t *st = XXH3_createState();
    if (!st) return 0;
    XXH3_64bits_reset(st);
    uint32_t endian = 0x01020304u;
    unsigned char fmt = AORM__CACHE_VFMT;
    XXH3_64bits_update(st, &fmt, 1);
    XXH3_64bits_update(st, &endian, sizeof(endian));
    XXH3_64bits_update(st, m->table, strlen(m->table) + 1);
    for (int i = 0; i < m->ncolumns; i++) {
        const aorm_column *c = &m->columns[i];
        uint32_t desc[3] = {(uint32_t)c->type, (uint32_t)c->size, c->flags & (AORM_PK | AORM_NULLABLE)};
        XXH3_64bits_update(st, c->name, strlen(c->name) + 1);
        XXH3_64bits_update(st, desc, sizeof(desc));
    }
    uint64_t h = XXH3_64bits_digest(st);
    XXH3_freeState(st);
    return h;
}

static int buf_str(aorm__buf *b, const char *s) { return aorm__buf_append(b, s, strlen(s)); }

static aorm__ctable *table_for(aorm_cache *c, const aorm_model *m) {
    char name[512];
    table_name(m, name, sizeof(name));
    for (aorm__ctable *t = c->tables; t; t = t->next)
        if (strcmp(t->name, name) == 0) return t;
    aorm__ctable *t = calloc(1, sizeof(*t));
    if (!t || !(t->name = strdup(name)) || aorm__buf_append(&t->gkey, c->prefix, c->prefix_len) < 0 ||
        buf_str(&t->gkey, "g:") < 0 || buf_str(&t->gkey, name) < 0 ||
        aorm__buf_append(&t->hkey, c->prefix, c->prefix_len) < 0 || buf_str(&t->hkey, "h:") < 0 ||
        buf_str(&t->hkey, name) < 0) {
        if (t) {
            aorm__buf_free(&t->gkey);
            aorm__buf_free(&t->hkey);
            free(t->name);
            free(t);
        }
        return NULL;
    }
    t->next = c->tables;
    c->tables = t;
    return t;
}

/* Redis says key changed (key NULL: anything may have): the near copies
 * go. A row key drops its entry; a row generation drops every entry of
 * the regions of that table (their values carry the old one). */
static void on_invalidate(void *user, const char *key, size_t klen) {
    aorm_cache *c = user;
    if (!key) {
        for (aorm_cache_region *rg = c->regions; rg; rg = rg->next)
            if (rg->near) aorm__near_clear(rg->near);
        return;
    }
    if (klen < c->prefix_len + 2 || memcmp(key, c->prefix, c->prefix_len) != 0) return;
    const char *rest = key + c->prefix_len;
    size_t rlen = klen - c->prefix_len;
    if (rest[0] == 'r' && rest[1] == ':') {
        for (aorm_cache_region *rg = c->regions; rg; rg = rg->next)
            if (rg->near && klen >= rg->kprefix.len && memcmp(key, rg->kprefix.data, rg->kprefix.len) == 0) {
                aorm__near_del(rg->near, key, klen);
                rg->st.invalidations++;
                return;
            }
    } else if (rest[0] == 'h' && rest[1] == ':') {
        for (aorm_cache_region *rg = c->regions; rg; rg = rg->next)
            if (rg->near && strlen(rg->table->name) == rlen - 2 && memcmp(rest + 2, rg->table->name, rlen - 2) == 0)
                aorm__near_clear(rg->near);
    }
}

aorm_cache_region *aorm_cache_model(aorm_cache *c, const aorm_model *m, const aorm_cache_region_options *o) {
    aorm_cache_region_options def;
    if (!o) {
        aorm_cache_region_options_init(&def);
        o = &def;
    }
    if (!c || !m || !m->table || aorm_model_pk_count(m) < 1 || aorm__cache_region(c, m) || o->ttl <= 0) return NULL;
    const char *name = o->name ? o->name : m->table;
    if (!*name || strchr(name, ':')) return NULL;
    for (int i = 0; i < m->ncolumns; i++) /* every key column needs a byte encoding */
        if ((m->columns[i].flags & AORM_PK) && m->columns[i].type == AORM_BYTEA) return NULL;
    aorm_cache_region *rg = calloc(1, sizeof(*rg));
    if (!rg) return NULL;
    rg->cache = c;
    rg->m = m;
    rg->ttl = o->ttl;
    rg->strategy = o->strategy;
    rg->near_max_entries = o->near_max_entries;
    rg->near_max_bytes = o->near_max_bytes;
    rg->lease = o->lease > 0 ? o->lease : 0;
    rg->lease_wait = o->lease_wait > 0 ? o->lease_wait : 0;
    rg->layout = layout_hash(m);
    char hex[24];
    snprintf(hex, sizeof(hex), "%08x:", (unsigned)(uint32_t)rg->layout);
    if (!(rg->name = strdup(name)) || !(rg->table = table_for(c, m)) ||
        aorm__buf_append(&rg->kprefix, c->prefix, c->prefix_len) < 0 || buf_str(&rg->kprefix, "r:") < 0 ||
        buf_str(&rg->kprefix, name) < 0 || buf_str(&rg->kprefix, ":") < 0 || buf_str(&rg->kprefix, hex) < 0) {
        region_free(rg);
        return NULL;
    }
    if (rg->near_max_entries > 0) {
        /* one tracker for the whole prefix: rows (r:) and row generations
         * (h:) of every region, whatever region comes later */
        if (!(rg->near = aorm__near_new(rg->near_max_entries, rg->near_max_bytes)) ||
            (!c->tracker && !(c->tracker = aorm__tracker_new(c->loop, &c->ropts, c->r,
                                                             (const char *const[]){c->prefix}, 1, on_invalidate, c)))) {
            region_free(rg);
            return NULL;
        }
    }
    rg->next = c->regions;
    c->regions = rg;
    return rg;
}

aorm_cache_region *aorm_cache_collection(aorm_cache *c, const aorm_model *m, const aorm_relationship *rel,
                                         const aorm_cache_region_options *o) {
    aorm_cache_region_options def;
    if (!o) {
        aorm_cache_region_options_init(&def);
        o = &def;
    }
    if (!c || !m || !rel || rel < m->relationships || rel >= m->relationships + m->nrelationships ||
        rel->kind == AORM_MANY_TO_ONE || aorm__cache_coll_region(c, m, rel) || o->ttl <= 0 ||
        aorm_model_pk_count(m) < 1 || aorm_model_pk_count(rel->target) < 1)
        return NULL;
    char defname[256];
    snprintf(defname, sizeof(defname), "%s.%s", m->table, rel->name);
    const char *name = o->name ? o->name : defname;
    if (!*name || strchr(name, ':')) return NULL;
    for (int i = 0; i < m->ncolumns; i++)
        if ((m->columns[i].flags & AORM_PK) && m->columns[i].type == AORM_BYTEA) return NULL;
    aorm_cache_region *rg = calloc(1, sizeof(*rg));
    if (!rg) return NULL;
    rg->cache = c;
    rg->kind = AORM__REGION_COLL;
    rg->m = rel->target;
    rg->owner = m;
    rg->rel = rel;
    rg->ttl = o->ttl;
    rg->strategy = o->strategy;
    /* the children's layout, and the owner's key layout */
    rg->layout = layout_hash(rel->target) ^ (layout_hash(m) * 0x9e3779b97f4a7c15ull);
    char hex[24];
    snprintf(hex, sizeof(hex), "%08x:", (unsigned)(uint32_t)rg->layout);
    rg->ndeps = rel->kind == AORM_MANY_TO_MANY ? 2 : 1;
    bool ok = (rg->name = strdup(name)) != NULL;
    if (ok && rel->kind == AORM_MANY_TO_MANY) ok = (rg->deps[0] = table_for(c, rel->secondary)) != NULL;
    if (ok) ok = (rg->deps[rg->ndeps - 1] = table_for(c, rel->target)) != NULL;
    rg->table = rg->deps[0];
    if (!ok || aorm__buf_append(&rg->kprefix, c->prefix, c->prefix_len) < 0 || buf_str(&rg->kprefix, "c:") < 0 ||
        buf_str(&rg->kprefix, name) < 0 || buf_str(&rg->kprefix, ":") < 0 || buf_str(&rg->kprefix, hex) < 0) {
        region_free(rg);
        return NULL;
    }
    rg->next = c->regions;
    c->regions = rg;
    return rg;
}

aorm_cache_region *aorm_cache_query(aorm_cache *c, const aorm_model *m, const aorm_cache_region_options *o) {
    aorm_cache_region_options def;
    if (!o) {
        aorm_cache_region_options_init(&def);
        o = &def;
    }
    if (!c || !m || !m->table || aorm_model_pk_count(m) < 1 || aorm__cache_query_region(c, m) || o->ttl <= 0)
        return NULL;
    const char *name = o->name ? o->name : m->table;
    if (!*name || strchr(name, ':')) return NULL;
    aorm_cache_region *rg = calloc(1, sizeof(*rg));
    if (!rg) return NULL;
    rg->cache = c;
    rg->kind = AORM__REGION_QUERY;
    rg->m = m;
    rg->ttl = o->ttl;
    rg->strategy = o->strategy;
    rg->layout = layout_hash(m);
    char hex[24];
    snprintf(hex, sizeof(hex), "%08x:", (unsigned)(uint32_t)rg->layout);
    if (!(rg->name = strdup(name)) || !(rg->table = table_for(c, m)) ||
        aorm__buf_append(&rg->kprefix, c->prefix, c->prefix_len) < 0 || buf_str(&rg->kprefix, "q:") < 0 ||
        buf_str(&rg->kprefix, name) < 0 || buf_str(&rg->kprefix, ":") < 0 || buf_str(&rg->kprefix, hex) < 0) {
        region_free(rg);
        return NULL;
    }
    rg->next = c->regions;
    c->regions = rg;
    c->nqueries++;
    return rg;
}

bool aorm__cache_near_ok(const aorm_cache_region *rg) {
    const aorm_cache *c = rg->cache;
    return rg->near && c->tracker && !c->freeing && aorm__tracker_ready(c->tracker);
}

/* ---- the row encoding ------------------------------------------------------------------
 * [fmt u8][0 u8][layout low 32 bits][stamp u64] then every column in
 * declaration order: a nullable column starts with a presence byte;
 * fixed-width values are their bytes (native order: the layout hash
 * covers the byte order); strings and byte arrays are a u32 length
 * (0xffffffff: NULL) and their bytes. Last, the low 32 bits of the XXH3
 * of everything before. */

#define NULL_LEN 0xffffffffu

static int put_u32(aorm__buf *b, uint32_t v) { return aorm__buf_append(b, &v, 4); }

static int encode_col(const aorm_column *c, const void *obj, aorm__buf *b) {
    const char *f = (const char *)obj + c->offset;
    size_t w = fixed_width(c->type);
    if (w) {
        if (c->flags & AORM_NULLABLE) {
            bool valid = *(const bool *)f; /* aorm_opt_*: valid first, the value last */
            if (aorm__buf_putc(b, valid ? 1 : 0) < 0) return -1;
            if (!valid) return 0;
            return aorm__buf_append(b, f + c->size - w, w);
        }
        return aorm__buf_append(b, f, w);
    }
    if ((int)c->type > (int)AORM_CIDR && c->type != AORM_ENUM) return -1; /* array columns: not cached */
    if (c->type == AORM_BYTEA) {
        const aorm_bytes *v = (const aorm_bytes *)f;
        if (!v->data) return put_u32(b, NULL_LEN);
        if (v->len >= NULL_LEN) return -1;
        return put_u32(b, (uint32_t)v->len) < 0 ? -1 : aorm__buf_append(b, v->data, v->len);
    }
    const char *s = *(char *const *)f;
    if (!s) return put_u32(b, NULL_LEN);
    size_t n = strlen(s);
    if (n >= NULL_LEN) return -1;
    return put_u32(b, (uint32_t)n) < 0 ? -1 : aorm__buf_append(b, s, n);
}

int aorm__cache_key_bytes(const aorm_model *m, const void *obj, aorm__buf *b) {
    for (int i = 0; i < m->ncolumns; i++)
        if ((m->columns[i].flags & AORM_PK) && encode_col(&m->columns[i], obj, b) < 0) return -1;
    return 0;
}

int aorm__cache_row_key(const aorm_cache_region *rg, const void *obj, aorm__buf *b) {
    if (aorm__buf_append(b, rg->kprefix.data, rg->kprefix.len) < 0) return -1;
    return aorm__cache_key_bytes(rg->m, obj, b);
}

int aorm__cache_encode(const aorm_cache_region *rg, const void *obj, uint64_t stamp, aorm__buf *b) {
    size_t start = b->len;
    char head[14] = {AORM__CACHE_VFMT, 0};
    uint32_t lay = (uint32_t)rg->layout;
    memcpy(head + 2, &lay, 4);
    memcpy(head + 6, &stamp, 8);
    if (aorm__buf_append(b, head, sizeof(head)) < 0) return -1;
    const aorm_model *m = rg->m;
    for (int i = 0; i < m->ncolumns; i++)
        if (encode_col(&m->columns[i], obj, b) < 0) {
            b->len = start;
            return -1;
        }
    uint32_t sum = (uint32_t)XXH3_64bits(b->data + start, b->len - start);
    if (put_u32(b, sum) < 0) {
        b->len = start;
        return -1;
    }
    return 0;
}

/* One pass over the columns of a value: checks every length against the
 * bytes there are (write false) or writes the values into obj (write
 * true, after a checking pass). Returns the bytes used or -1. */
static long walk(const aorm_model *m, const char *p, size_t len, void *obj, const aorm_allocator *alloc,
                 bool write) {
    size_t at = 0;
    for (int i = 0; i < m->ncolumns; i++) {
        const aorm_column *c = &m->columns[i];
        char *f = (char *)obj + c->offset;
        size_t w = fixed_width(c->type);
        if (w) {
            bool valid = true;
            if (c->flags & AORM_NULLABLE) {
                if (at >= len) return -1;
                unsigned char flag = (unsigned char)p[at++];
                if (flag > 1) return -1;
                valid = flag == 1;
            }
            if (valid && len - at < w) return -1;
            if (write) {
                if (c->flags & AORM_NULLABLE) {
                    memset(f, 0, c->size);
                    *(bool *)f = valid;
                    if (valid) memcpy(f + c->size - w, p + at, w);
                } else {
                    memcpy(f, p + at, w);
                }
            }
            if (valid) at += w;
            if (!write && c->type == AORM_BOOL && valid && (unsigned char)p[at - 1] > 1) return -1;
            continue;
        }
        if (len - at < 4) return -1;
        uint32_t n;
        memcpy(&n, p + at, 4);
        at += 4;
        bool null = n == NULL_LEN;
        if (!null && len - at < n) return -1;
        if (write) {
            if (c->type == AORM_BYTEA) {
                aorm_bytes *v = (aorm_bytes *)f;
                if (null) {
                    v->data = NULL;
                    v->len = 0;
                } else {
                    v->data = alloc->alloc(alloc->ctx, n ? n : 1);
                    if (!v->data) return -1;
                    memcpy(v->data, p + at, n);
                    v->len = n;
                }
            } else {
                char **sp = (char **)f;
                if (null) {
                    *sp = NULL;
                } else {
                    char *s = alloc->alloc(alloc->ctx, (size_t)n + 1);
                    if (!s) return -1;
                    memcpy(s, p + at, n);
                    s[n] = '\0';
                    *sp = s;
                }
            }
        } else if (!null && c->type != AORM_BYTEA && memchr(p + at, '\0', n)) {
            return -1; /* a C string cannot hold it */
        }
        if (!null) at += n;
    }
    return (long)at;
}

int aorm__cache_decode(const aorm_cache_region *rg, const char *v, size_t len, uint64_t stamp, void *obj,
                       const aorm_allocator *alloc) {
    if (!v || len < 14 + 4 || (unsigned char)v[0] != AORM__CACHE_VFMT || v[1] != 0) return -1;
    uint32_t lay, sum;
    uint64_t st;
    memcpy(&lay, v + 2, 4);
    memcpy(&st, v + 6, 8);
    memcpy(&sum, v + len - 4, 4);
    if (lay != (uint32_t)rg->layout || st != stamp) return -1;
    if ((uint32_t)XXH3_64bits(v, len - 4) != sum) return -1;
    const char *body = v + 14;
    size_t blen = len - 14 - 4;
    long used = walk(rg->m, body, blen, obj, alloc, false);
    if (used < 0 || (size_t)used != blen) return -1;
    return walk(rg->m, body, blen, obj, alloc, true) < 0 ? -1 : 0;
}

uint64_t aorm__cache_value_stamp(const char *v, size_t len) {
    uint64_t st = 0;
    if (v && len >= 14) memcpy(&st, v + 6, 8);
    return st;
}

uint64_t aorm__cache_gen_value(const char *s, size_t len) {
    uint64_t v = 0;
    for (size_t i = 0; s && i < len && s[i] >= '0' && s[i] <= '9'; i++) v = v * 10 + (uint64_t)(s[i] - '0');
    return v;
}

/* ---- invalidation ------------------------------------------------------------------------ */

aorm__inval *aorm__inval_new(aorm_cache *c) {
    aorm__inval *iv = calloc(1, sizeof(*iv));
    if (iv) iv->c = c;
    return iv;
}

void aorm__inval_free(aorm__inval *iv) {
    if (!iv) return;
    free(iv->tables);
    free(iv->all_rows);
    free(iv->klen);
    aorm__buf_free(&iv->keys);
    free(iv);
}

int aorm__inval_table(aorm__inval *iv, aorm__ctable *t, bool all_rows) {
    for (size_t i = 0; i < iv->ntables; i++)
        if (iv->tables[i] == t) {
            iv->all_rows[i] = iv->all_rows[i] || all_rows;
            return 0;
        }
    if (iv->ntables == iv->cap_tables) {
        size_t cap = iv->cap_tables ? iv->cap_tables * 2 : 4;
        aorm__ctable **nt = realloc(iv->tables, cap * sizeof(*nt));
        if (!nt) return -1;
        iv->tables = nt;
        bool *na = realloc(iv->all_rows, cap * sizeof(*na));
        if (!na) return -1;
        iv->all_rows = na;
        iv->cap_tables = cap;
    }
    iv->tables[iv->ntables] = t;
    iv->all_rows[iv->ntables++] = all_rows;
    return 0;
}

int aorm__inval_key(aorm__inval *iv, const char *k, size_t len) {
    if (iv->nkeys == iv->cap_keys) {
        size_t cap = iv->cap_keys ? iv->cap_keys * 2 : 8;
        size_t *nl = realloc(iv->klen, cap * sizeof(*nl));
        if (!nl) return -1;
        iv->klen = nl;
        iv->cap_keys = cap;
    }
    if (aorm__buf_append(&iv->keys, k, len) < 0) return -1;
    iv->klen[iv->nkeys++] = len;
    return 0;
}

static void inval_attempt(aorm__inval *iv);

static void release_tables(aorm__inval *iv) {
    if (iv->recovery) return;
    for (size_t i = 0; i < iv->ntables; i++) iv->tables[i]->unacked--;
}

static void retry_arm(aorm_cache *c) {
    if (!c->freeing && !aorm_timer_active(c->retry_timer)) aorm_timer_start(c->retry_timer, c->retry_interval);
}

/* An attempt failed: keep it for a retry, or, past the bound, disable the
 * cache (every read bypasses it) until a full bump has gone through. */
static void inval_failed(aorm__inval *iv) {
    aorm_cache *c = iv->c;
    if (iv->recovery) {
        c->recovering = false;
        aorm__inval_free(iv);
        retry_arm(c);
        return;
    }
    if (!c->disabled && c->nretry < c->retry_max) {
        iv->queued = true;
        iv->next = NULL;
        if (c->retry_tail) c->retry_tail->next = iv;
        else c->retry_head = iv;
        c->retry_tail = iv;
        c->nretry++;
    } else {
        if (!c->disabled)
            aorm__cache_logf(c, AORM_LOG_WARN,
                             "cache: %zu invalidations wait for Redis; the cache is bypassed until it answers again",
                             c->nretry);
        c->disabled = true;
        release_tables(iv);
        aorm__inval_free(iv);
    }
    retry_arm(c);
}

static void inval_done(aorm__inval *iv) {
    aorm_cache *c = iv->c;
    if (iv->recovery) {
        /* every table bumped: what any queued invalidation would have
         * done is done, and more */
        c->recovering = false;
        c->disabled = false;
        while (c->retry_head) {
            aorm__inval *q = c->retry_head;
            c->retry_head = q->next;
            release_tables(q);
            aorm__inval_free(q);
        }
        c->retry_tail = NULL;
        c->nretry = 0;
        aorm__cache_logf(c, AORM_LOG_WARN, "cache: Redis answers again; every table's generation was bumped");
    } else {
        release_tables(iv);
        c->invalidations += iv->ntables + iv->nkeys;
    }
    aorm__inval_free(iv);
}

static void on_inval_reply(aorm_redis *r, struct redisReply *reply, const aorm_error *err, void *user) {
    (void)r;
    (void)reply;
    aorm__inval *iv = user;
    if (err) {
        iv->failed = true;
        iv->c->errors++;
    }
    if (--iv->out > 0) return;
    if (iv->c->freeing) {
        aorm__inval_free(iv);
        return;
    }
    if (iv->failed) inval_failed(iv);
    else inval_done(iv);
}

static void inval_attempt(aorm__inval *iv) {
    aorm_cache *c = iv->c;
    aorm_redis_cmd_options co = {.deadline = c->deadline};
    iv->failed = false;
    iv->out = 1; /* held while queuing, so that no reply completes it early */
    int rc = 0;
    for (size_t i = 0; i < iv->ntables && rc == 0; i++) {
        aorm__ctable *t = iv->tables[i];
        const char *argv[2] = {"INCR", t->gkey.data};
        size_t lens[2] = {4, t->gkey.len};
        if ((rc = aorm_redis_command_argv(c->r, 2, argv, lens, &co, on_inval_reply, iv)) == 0) iv->out++;
        if (rc == 0 && iv->all_rows[i]) {
            argv[1] = t->hkey.data;
            lens[1] = t->hkey.len;
            if ((rc = aorm_redis_command_argv(c->r, 2, argv, lens, &co, on_inval_reply, iv)) == 0) iv->out++;
        }
    }
    if (rc == 0 && iv->nkeys) {
        const char **argv = malloc((iv->nkeys + 1) * sizeof(char *));
        size_t *lens = malloc((iv->nkeys + 1) * sizeof(size_t));
        if (argv && lens) {
            argv[0] = "DEL";
            lens[0] = 3;
            size_t at = 0;
            for (size_t k = 0; k < iv->nkeys; k++) {
                argv[k + 1] = iv->keys.data + at;
                lens[k + 1] = iv->klen[k];
                at += iv->klen[k];
            }
            if ((rc = aorm_redis_command_argv(c->r, (int)iv->nkeys + 1, argv, lens, &co, on_inval_reply, iv)) == 0)
                iv->out++;
        } else {
            rc = AORM_ENOMEM;
        }
        free(argv);
        free(lens);
    }
    if (rc < 0) {
        iv->failed = true;
        c->errors++;
    }
    if (--iv->out == 0) { /* nothing went out, or everything was refused */
        if (iv->failed) inval_failed(iv);
        else inval_done(iv);
    }
}

/* This process drops its own near copies of what iv invalidates at once:
 * the tracker's message about them may come after the acknowledgement. */
static void near_drop(aorm__inval *iv) {
    aorm_cache *c = iv->c;
    for (aorm_cache_region *rg = c->regions; rg; rg = rg->next) {
        if (!rg->near) continue;
        for (size_t i = 0; i < iv->ntables; i++)
            if (iv->tables[i] == rg->table && iv->all_rows[i]) aorm__near_clear(rg->near);
        size_t at = 0;
        for (size_t k = 0; k < iv->nkeys; k++) {
            const char *key = iv->keys.data + at;
            if (iv->klen[k] >= rg->kprefix.len && memcmp(key, rg->kprefix.data, rg->kprefix.len) == 0)
                aorm__near_del(rg->near, key, iv->klen[k]);
            at += iv->klen[k];
        }
    }
}

void aorm__inval_send(aorm__inval *iv) {
    near_drop(iv);
    if (!iv->recovery)
        for (size_t i = 0; i < iv->ntables; i++) iv->tables[i]->unacked++;
    if (iv->c->disabled && !iv->recovery) {
        /* the recovery bump will cover it */
        release_tables(iv);
        aorm__inval_free(iv);
        return;
    }
    inval_attempt(iv);
}

static void on_retry_timer(aorm_timer *t, void *user) {
    (void)t;
    aorm_cache *c = user;
    if (c->disabled) {
        if (c->recovering) return;
        aorm__inval *iv = aorm__inval_new(c);
        if (!iv) {
            retry_arm(c);
            return;
        }
        iv->recovery = true;
        for (aorm__ctable *tb = c->tables; tb; tb = tb->next)
            if (aorm__inval_table(iv, tb, true) < 0) {
                aorm__inval_free(iv);
                retry_arm(c);
                return;
            }
        c->recovering = true;
        c->retries++;
        inval_attempt(iv);
        return;
    }
    /* the queued invalidations go again, oldest first (a second INCR of a
     * table only costs hit rate) */
    aorm__inval *list = c->retry_head;
    c->retry_head = c->retry_tail = NULL;
    c->nretry = 0;
    while (list) {
        aorm__inval *iv = list;
        list = iv->next;
        iv->queued = false;
        c->retries++;
        inval_attempt(iv);
    }
}

bool aorm__cache_usable(const aorm_cache_region *rg) {
    aorm_cache *c = rg->cache;
    if (c->disabled || c->freeing || rg->table->unacked > 0) return false;
    for (int i = 0; i < rg->ndeps; i++)
        if (rg->deps[i]->unacked > 0) return false;
    aorm_redis_stats rs;
    aorm_redis_stats_get(c->r, &rs);
    return rs.breaker != AORM_REDIS_BREAKER_OPEN;
}

int aorm_cache_invalidate_model(aorm_cache *c, const aorm_model *m) {
    /* a table some region reads (rows, lists, queries: with query regions any table) */
    aorm__ctable *tb = c && m && m->table ? aorm__cache_table_written(c, m) : NULL;
    if (!tb) return AORM_EMISUSE;
    aorm__inval *iv = aorm__inval_new(c);
    if (!iv || aorm__inval_table(iv, tb, true) < 0) {
        aorm__inval_free(iv);
        return AORM_ENOMEM;
    }
    aorm__inval_send(iv);
    return 0;
}

/* ---- statistics --------------------------------------------------------------------------- */

static void add_stats(aorm_cache_stats *o, const aorm_cache_stats *a) {
    o->hits += a->hits;
    o->coalesced += a->coalesced;
    o->near_hits += a->near_hits;
    o->misses += a->misses;
    o->writebacks += a->writebacks;
    o->writebacks_refused += a->writebacks_refused;
    o->invalidations += a->invalidations;
    o->bypasses += a->bypasses;
    o->errors += a->errors;
    o->lease_waits += a->lease_waits;
    o->lease_hits += a->lease_hits;
}

static void state_stats(const aorm_cache *c, aorm_cache_stats *out) {
    aorm_redis_stats rs;
    aorm_redis_stats_get(c->r, &rs);
    out->breaker = rs.breaker;
    out->disabled = c->disabled;
    out->retry_queued = c->nretry;
    out->retries = c->retries;
}

void aorm_cache_region_stats(const aorm_cache_region *r, aorm_cache_stats *out) {
    memset(out, 0, sizeof(*out));
    if (!r) return;
    *out = r->st;
    state_stats(r->cache, out);
}

void aorm_cache_stats_get(const aorm_cache *c, aorm_cache_stats *out) {
    memset(out, 0, sizeof(*out));
    if (!c) return;
    for (const aorm_cache_region *rg = c->regions; rg; rg = rg->next) add_stats(out, &rg->st);
    out->errors += c->errors;
    state_stats(c, out);
}
