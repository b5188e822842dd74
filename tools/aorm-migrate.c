/* aorm-migrate -- the command line over aorm's migrations (migrate.h).
 *
 * A thin program: it parses the arguments, runs one library command on a
 * libev loop and prints the report. Everything it does, a program can do
 * with the library on its own loop.
 *
 * Autogenerate and check need the models: --models names a shared library
 * that exports `aorm_migrate_models`, a NULL-terminated array of
 * `const aorm_model *` (see the guide, "Migrations").
 *
 * Exit status: 0 success, 1 failure, 2 usage, 3 check found drift. */
#include <aorm/aorm.h>
#include <dlfcn.h>
#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: aorm-migrate [options] COMMAND [ARG]\n"
            "\n"
            "commands:\n"
            "  new -m MESSAGE [--autogenerate] [--merge]   write a new revision file\n"
            "  upgrade [TARGET]       apply revisions up to TARGET (head; \"heads\": all heads)\n"
            "  downgrade TARGET       revert revisions TARGET does not need (\"base\": all)\n"
            "  stamp TARGET           record TARGET as applied without running anything\n"
            "  status                 applied and pending revisions, tampered or missing files\n"
            "  history                the revision graph, newest first\n"
            "  heads                  the heads of the graph\n"
            "  check                  exit 3 when the models and the database differ (for CI)\n"
            "  repair                 record the checksums of changed applied files, forget missing ones\n"
            "\n"
            "options:\n"
            "  -d, --dir DIR          revision directory (./migrations)\n"
            "  --dsn CONNINFO         libpq conninfo (default: $AORM_MIGRATE_DSN)\n"
            "  --models LIBRARY.so    shared library exporting aorm_migrate_models (new --autogenerate, check)\n"
            "  --history-table NAME   history table (aorm_migrate_history)\n"
            "  --sql                  offline: print the SQL of upgrade/downgrade/stamp instead of running it\n"
            "  --lock-wait S          seconds to wait for another runner's lock (120)\n"
            "  --lock-timeout S       lock_timeout of each revision (5)\n"
            "  --statement-timeout S  statement_timeout of each revision (300)\n"
            "  -m, --message TEXT     message of a new revision\n"
            "  --autogenerate         new: diff the models against the database\n"
            "  --merge                new: merge the heads\n"
            "  -q, --quiet            no progress lines\n");
}

typedef struct cli {
    struct ev_loop *evl;
    bool done;
    int status;
    bool quiet;
} cli;

static void on_log(aorm_log_level level, const char *msg, void *user) {
    cli *c = user;
    if (!c->quiet) fprintf(stderr, "aorm-migrate: %s\n", msg);
}

static void on_engine_log(aorm_log_level level, const char *msg, void *user) {
    if (level <= AORM_LOG_ERROR) fprintf(stderr, "aorm-migrate: %s\n", msg);
}

static void on_done(aorm_migrate *m, const aorm_migrate_report *r, const aorm_error *err, void *user) {
    cli *c = user;
    if (r->text[0]) {
        fputs(r->text, stdout);
        if (r->text[strlen(r->text) - 1] != '\n') fputc('\n', stdout);
    }
    if (err) {
        fprintf(stderr, "aorm-migrate: %s\n", r->message[0] ? r->message : err->message);
        if (err->detail[0]) fprintf(stderr, "  detail: %s\n", err->detail);
        if (err->hint[0]) fprintf(stderr, "  hint: %s\n", err->hint);
        c->status = 1;
    } else {
        if (r->message[0]) fprintf(stderr, "aorm-migrate: %s\n", r->message);
        if (r->file[0]) printf("%s\n", r->file); /* new: the file written */
        c->status = r->drift ? 3 : (r->problem != AORM_MIGRATE_OK ? 1 : 0);
    }
    c->done = true;
    ev_break(c->evl, EVBREAK_ALL);
}

static bool number(const char *s, double *out) {
    char *end;
    *out = strtod(s, &end);
    return end != s && !*end && *out >= 0;
}

int main(int argc, char **argv) {
    aorm_migrate_options o;
    aorm_migrate_options_init(&o);
    o.directory = "migrations";
    const char *dsn = getenv("AORM_MIGRATE_DSN");
    const char *models_lib = NULL, *message = NULL, *command = NULL, *arg = NULL;
    unsigned flags = 0;
    cli c = {.evl = EV_DEFAULT};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        double d;
#define NEEDS_VALUE()                                                     \
    do {                                                                  \
        if (!v) {                                                         \
            fprintf(stderr, "aorm-migrate: %s needs a value\n", a);       \
            return 2;                                                     \
        }                                                                 \
        i++;                                                              \
    } while (0)
#define NEEDS_NUMBER(field)                                               \
    do {                                                                  \
        NEEDS_VALUE();                                                    \
        if (!number(v, &d)) {                                             \
            fprintf(stderr, "aorm-migrate: %s takes seconds\n", a);       \
            return 2;                                                     \
        }                                                                 \
        field = d;                                                        \
    } while (0)
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "-d") || !strcmp(a, "--dir")) {
            NEEDS_VALUE();
            o.directory = v;
        } else if (!strcmp(a, "--dsn")) {
            NEEDS_VALUE();
            dsn = v;
        } else if (!strcmp(a, "--models")) {
            NEEDS_VALUE();
            models_lib = v;
        } else if (!strcmp(a, "--history-table")) {
            NEEDS_VALUE();
            o.history_table = v;
        } else if (!strcmp(a, "--sql")) {
            o.offline = true;
        } else if (!strcmp(a, "--lock-wait")) {
            NEEDS_NUMBER(o.lock_wait);
        } else if (!strcmp(a, "--lock-timeout")) {
            NEEDS_NUMBER(o.lock_timeout);
        } else if (!strcmp(a, "--statement-timeout")) {
            NEEDS_NUMBER(o.statement_timeout);
        } else if (!strcmp(a, "-m") || !strcmp(a, "--message")) {
            NEEDS_VALUE();
            message = v;
        } else if (!strcmp(a, "--autogenerate")) {
            flags |= AORM_MIGRATE_AUTOGENERATE;
        } else if (!strcmp(a, "--merge")) {
            flags |= AORM_MIGRATE_MERGE;
        } else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) {
            c.quiet = true;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "aorm-migrate: unknown option %s\n", a);
            usage(stderr);
            return 2;
        } else if (!command) {
            command = a;
        } else if (!arg) {
            arg = a;
        } else {
            fprintf(stderr, "aorm-migrate: too many arguments\n");
            return 2;
        }
#undef NEEDS_NUMBER
#undef NEEDS_VALUE
    }
    if (!command) {
        usage(stderr);
        return 2;
    }
    if (models_lib) {
        void *h = dlopen(models_lib, RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            fprintf(stderr, "aorm-migrate: %s\n", dlerror());
            return 1;
        }
        const aorm_model *const *list = dlsym(h, "aorm_migrate_models");
        if (!list) {
            fprintf(stderr, "aorm-migrate: %s exports no aorm_migrate_models\n", models_lib);
            return 1;
        }
        int n = 0;
        while (list[n]) n++;
        o.models = list;
        o.nmodels = n;
    }
    o.log = on_log;
    o.log_user = &c;

    bool files_only = !strcmp(command, "history") || !strcmp(command, "heads") ||
                      (!strcmp(command, "new") && !(flags & AORM_MIGRATE_AUTOGENERATE));
    bool offline_run = o.offline && (!strcmp(command, "upgrade") || !strcmp(command, "downgrade") ||
                                     !strcmp(command, "stamp"));
    if (!files_only && !offline_run && (!dsn || !*dsn)) {
        fprintf(stderr, "aorm-migrate: %s needs a database: --dsn or AORM_MIGRATE_DSN\n", command);
        return 2;
    }
    aorm_loop *loop = aorm_loop_new_ev(c.evl);
    aorm_engine *e = NULL;
    if (loop && dsn && *dsn && !files_only) {
        aorm_engine_options eo;
        aorm_engine_options_init(&eo);
        eo.conninfo = dsn;
        eo.pool_size = 2;
        eo.max_overflow = 1;
        eo.log = on_engine_log;
        e = aorm_engine_new(loop, &eo);
        if (!e) {
            fprintf(stderr, "aorm-migrate: cannot use the conninfo\n");
            aorm_loop_free(loop);
            return 2;
        }
    }
    char why[512] = "";
    aorm_migrate *m = loop ? aorm_migrate_new(loop, e, &o, why, sizeof why) : NULL;
    if (!m) {
        fprintf(stderr, "aorm-migrate: %s\n", why[0] ? why : "out of memory");
        aorm_engine_free(e);
        aorm_loop_free(loop);
        return 1;
    }

    int rc = 0;
    if (!strcmp(command, "history") || !strcmp(command, "heads")) {
        char *text = NULL;
        rc = (!strcmp(command, "history") ? aorm_migrate_history : aorm_migrate_heads)(m, &text, why, sizeof why);
        if (rc == 0) fputs(text, stdout);
        else fprintf(stderr, "aorm-migrate: %s\n", why[0] ? why : aorm_strerror(rc));
        free(text);
        c.status = rc ? 1 : 0;
        c.done = true;
    } else if (!strcmp(command, "new")) {
        if (!message) {
            fprintf(stderr, "aorm-migrate: new needs -m MESSAGE\n");
            c.status = 2;
            c.done = true;
        } else if ((flags & AORM_MIGRATE_AUTOGENERATE) && !o.nmodels) {
            fprintf(stderr, "aorm-migrate: new --autogenerate needs --models LIBRARY.so\n");
            c.status = 2;
            c.done = true;
        } else {
            rc = aorm_migrate_create(m, message, flags, on_done, &c);
        }
    } else if (!strcmp(command, "upgrade")) {
        rc = aorm_migrate_upgrade(m, arg, on_done, &c);
    } else if (!strcmp(command, "downgrade") || !strcmp(command, "stamp")) {
        if (!arg) {
            fprintf(stderr, "aorm-migrate: %s needs a TARGET (a revision, head, heads or base)\n", command);
            c.status = 2;
            c.done = true;
        } else {
            rc = (!strcmp(command, "downgrade") ? aorm_migrate_downgrade : aorm_migrate_stamp)(m, arg, on_done, &c);
        }
    } else if (!strcmp(command, "status")) {
        rc = aorm_migrate_status(m, on_done, &c);
    } else if (!strcmp(command, "check")) {
        if (!o.nmodels) {
            fprintf(stderr, "aorm-migrate: check needs --models LIBRARY.so\n");
            c.status = 2;
            c.done = true;
        } else {
            rc = aorm_migrate_check(m, on_done, &c);
        }
    } else if (!strcmp(command, "repair")) {
        rc = aorm_migrate_repair(m, on_done, &c);
    } else {
        fprintf(stderr, "aorm-migrate: unknown command %s\n", command);
        usage(stderr);
        c.status = 2;
        c.done = true;
    }
    if (rc < 0) {
        fprintf(stderr, "aorm-migrate: %s\n", aorm_strerror(rc));
        c.status = 1;
        c.done = true;
    }
    if (!c.done) ev_run(c.evl, 0);
    if (!c.done) {
        fprintf(stderr, "aorm-migrate: the loop stopped before the command finished\n");
        c.status = 1;
    }
    aorm_migrate_free(m);
    aorm_engine_free(e);
    aorm_loop_free(loop);
    return c.status;
}
