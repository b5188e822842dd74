# Thin wrappers around CMake and scripts/; the logic lives in the scripts.
#   make demo    build and run the demo against a throw-away database
#   make test    sanitizer build + full test suite + 60 s of each fuzzer (what CI runs)
#   make fuzz    the libFuzzer targets only (FUZZ_SECONDS=N each; build-fuzz/)
#   make bench   build and run all benchmark workloads
#   make clean   remove the build directories
#   make soak    the bounded soak: 120 s of mixed work with faults injected
#                (SOAK_SECONDS=N to change; build-soak/, not in `make test`)
#   make valgrind  memcheck over the session and loaders suites (build-valgrind/)
#   make bench-httpd  aorm-httpd against its FastAPI peer with wrk (scripts/bench-httpd)
#   make httpd   run aorm-httpd (examples/httpd) on 127.0.0.1:8080 against a
#                throw-away PostgreSQL + Redis; Ctrl-C stops it all

CMAKE ?= cmake
JOBS  ?= 2

.PHONY: help demo test bench clean soak valgrind

help:
	@echo "targets: demo test bench clean soak valgrind fuzz compare bench-httpd httpd"

# The bookstore tour creates its own schema through its migrations
# (examples/bookstore/migrations): no --schema;
# it uses no Redis: --no-redis. The build's output goes to
# build/demo-build.log (shown only when the build fails), so what the user
# reads is the tour.
# $(call quiet_build,NAME,TARGET): configures build/ (RelWithDebInfo) and
# builds TARGET, its output in build/NAME-build.log, shown only when the
# build fails -- what the user reads is the program, not the compiler.
define quiet_build
	@mkdir -p build
	@echo "$(1): building $(2) (output in build/$(1)-build.log)"
	@{ $(CMAKE) -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo && \
	   $(CMAKE) --build build -j$(JOBS) --target $(2); } >build/$(1)-build.log 2>&1 || \
	 { tail -n 40 build/$(1)-build.log; echo "$(1): the build failed (build/$(1)-build.log)" >&2; exit 1; }
endef

demo:
	@scripts/bootstrap
	$(call quiet_build,demo,aorm-bookstore)
	@scripts/sandbox run --no-redis -- build/examples/aorm-bookstore

test:
	scripts/bootstrap --docs --fuzz
	$(CMAKE) -S . -B build-test -DAORM_SANITIZE=ON -DAORM_WERROR=ON -DCMAKE_BUILD_TYPE=Debug
	$(CMAKE) --build build-test -j$(JOBS)
	$(CMAKE) --build build-test --target docs
	scripts/sandbox run --schema -- ctest --test-dir build-test --output-on-failure -V --timeout 900
	scripts/fuzz -t 60

# libFuzzer targets of tests/fuzz (clang, ASan + UBSan), each run for
# FUZZ_SECONDS over its committed seeds; scripts/fuzz says more.
FUZZ_SECONDS ?= 60
.PHONY: fuzz
fuzz:
	scripts/bootstrap --fuzz
	scripts/fuzz -t $(FUZZ_SECONDS)

bench:
	scripts/bootstrap --bench
	$(CMAKE) -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
	$(CMAKE) --build build -j$(JOBS)
	scripts/sandbox run --schema -- build/bench/aorm-bench

clean:
	rm -rf build build-test build-bench build-soak build-valgrind build-fuzz build-httpd-bench

# An optimized build without sanitizers, so that the resident size it
# reports is the library's own; tests/soak.c says what it checks.
SOAK_SECONDS ?= 120
soak:
	scripts/bootstrap
	$(CMAKE) -S . -B build-soak -DCMAKE_BUILD_TYPE=RelWithDebInfo -DAORM_BUILD_BENCH=OFF
	$(CMAKE) --build build-soak -j$(JOBS) --target aorm-soak
	scripts/sandbox run --schema -- build-soak/tests/aorm-soak --seconds $(SOAK_SECONDS)

# A Debug build without sanitizers (valgrind and ASan do not mix); the
# logic (children followed, logs checked) is in scripts/valgrind.
VALGRIND_SUITES ?= session loaders
valgrind:
	scripts/bootstrap --valgrind
	$(CMAKE) -S . -B build-valgrind -DCMAKE_BUILD_TYPE=Debug -DAORM_SANITIZE=OFF -DAORM_BUILD_BENCH=OFF
	$(CMAKE) --build build-valgrind -j$(JOBS) $(addprefix --target test_,$(VALGRIND_SUITES))
	scripts/sandbox run --schema -- scripts/valgrind build-valgrind $(VALGRIND_SUITES)

# make compare   aorm against SQLAlchemy asyncio on the reference data, with
#                the plain-libpq ceilings (bench/README.md); Release build in
#                build-bench/
.PHONY: compare
compare:
	bench/compare

# make httpd   the HTTP server of examples/httpd (bookstore API and the
#              TechEmpower tests) in the foreground, on a sandbox loaded with
#              bench/schema.sql and bench/techempower.sql; HTTPD_ARGS="--port 9000 --workers 1" passes
#              options (examples/httpd/README.md). Release build in build/.
HTTPD_ARGS ?=
.PHONY: httpd
httpd:
	@scripts/bootstrap
	$(call quiet_build,httpd,aorm-httpd)
	@scripts/sandbox run --schema -- build/examples/httpd/aorm-httpd $(HTTPD_ARGS)

# make bench-httpd   aorm-httpd against its FastAPI + SQLAlchemy peer over HTTP
#                    with wrk, and the engine-only ceiling of /db and /queries
#                    (scripts/bench-httpd; BENCH_HTTPD_ARGS="--seconds 10 ..."
#                    passes options); Release build in build-httpd-bench/
BENCH_HTTPD_ARGS ?=
.PHONY: bench-httpd
bench-httpd:
	scripts/bench-httpd $(BENCH_HTTPD_ARGS)
