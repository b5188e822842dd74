// linkage.cpp -- the C++ side of header_check: a C++ program that refers
// to functions of every layer. Each declaration must sit inside its
// header's extern "C" block, or the C++-mangled name does not link against
// libaorm. Only addresses are taken: nothing here runs against a server.
#include <aorm/aorm.h>

#include <cstdio>

namespace {
typedef void (*any_fn)();
template <typename F> any_fn erase(F f) { return reinterpret_cast<any_fn>(f); }
} // namespace

int main() {
    const any_fn fns[] = {
        erase(&aorm_errname),               // error.h
        erase(&aorm_loop_new_ev),           // loop.h
        erase(&aorm_params_init),           // result.h
        erase(&aorm_engine_options_init),   // engine.h
        erase(&aorm_model_pk_count),        // model.h
        erase(&aorm_stmt_free),             // sql.h
        erase(&aorm_session_options_init),  // session.h
        erase(&aorm_advisor_count),         // loaders.h
        erase(&aorm_redis_options_init),    // redis.h
    };
    int n = 0;
    for (any_fn f : fns) n += f != nullptr;
    std::printf("%d functions of aorm linked from C++; %s\n", n, aorm_errname(AORM_EMISUSE));
    return n == static_cast<int>(sizeof fns / sizeof fns[0]) ? 0 : 1;
}
