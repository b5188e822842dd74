/* test_options.c -- every options struct of the public API has an _init
 * that fills the defaults its header documents, and a zeroed struct of a
 * per-operation kind means what NULL options mean (the convention of
 * engine.h: a per-operation deadline of 0 inherits the default above it).
 * No server is contacted. */
#include <string.h>

#include "support.h"

/* Poisons the struct first, so that a field _init forgot shows. */
#define POISON(o) memset(&(o), 0x5a, sizeof(o))

Test(options, exec_options_init_is_the_default_statement, .timeout = 10) {
    aorm_exec_options o;
    POISON(o);
    aorm_exec_options_init(&o);
    cr_expect_eq(o.flags, 0u);
    cr_expect_eq(o.deadline, 0.0, "deadline 0: the engine's statement_timeout");
    cr_expect_null(o.owner);
    aorm_exec_options zero = {0};
    cr_expect_eq(memcmp(&o, &zero, sizeof(o)), 0, "_init and a zeroed struct differ");
    aorm_exec_options_init(NULL); /* accepted */
}

Test(options, tx_options_init_is_the_server_default, .timeout = 10) {
    aorm_tx_options o;
    POISON(o);
    aorm_tx_options_init(&o);
    cr_expect_eq(o.isolation, AORM_ISO_DEFAULT);
    cr_expect_not(o.read_only);
    cr_expect_not(o.deferrable);
    aorm_tx_options_init(NULL);
}

Test(options, query_options_init_loads_nothing, .timeout = 10) {
    aorm_query_options o;
    POISON(o);
    aorm_query_options_init(&o);
    cr_expect_null(o.load);
    cr_expect_not(o.populate_existing);
    cr_expect_eq(o.deadline, 0.0, "deadline 0: the session's statement_timeout");
    aorm_query_options_init(NULL);
}

Test(options, redis_cmd_options_init_inherits_the_command_timeout, .timeout = 10) {
    aorm_redis_cmd_options o;
    POISON(o);
    aorm_redis_cmd_options_init(&o);
    cr_expect_eq(o.deadline, 0.0);
    aorm_redis_cmd_options_init(NULL);
}

/* The long-lived options: their documented defaults. */
Test(options, engine_and_session_defaults, .timeout = 10) {
    aorm_engine_options e;
    POISON(e);
    aorm_engine_options_init(&e);
    cr_expect_null(e.conninfo);
    cr_expect_eq(e.pool_size, 10);
    cr_expect_eq(e.max_overflow, 10);
    cr_expect_eq(e.statement_timeout, 0.0, "an engine-wide default of 0 is no deadline");
    aorm_session_options s;
    POISON(s);
    aorm_session_options_init(&s);
    cr_expect(s.autoflush);
    cr_expect_not(s.expire_on_commit);
    cr_expect_eq(s.statement_timeout, 0.0);
    cr_expect_eq(s.arena_block, (size_t)65536);
    /* both are what the constructors take (an engine opens no connection
     * before its first statement, so nothing is contacted here) */
    struct ev_loop *evl;
    aorm_loop *loop;
    t_loop_open(&evl, &loop);
    aorm_engine *eng = t_engine(loop, &e);
    aorm_session *ses = aorm_session_new(eng, &s);
    cr_expect_not_null(ses);
    aorm_session_free(ses);
    aorm_engine_free(eng);
    t_loop_close(&evl, &loop);
    aorm_redis_options r;
    POISON(r);
    aorm_redis_options_init(&r);
    cr_expect_str_eq(r.host, "127.0.0.1");
    cr_expect_eq(r.port, 6379);
}
