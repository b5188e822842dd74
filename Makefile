# Thin wrappers around CMake and scripts/; the logic lives in the scripts.
#   make demo    build and run the demo against a throw-away database
#   make test    sanitizer build + full test suite (what CI runs)
#   make bench   build and run all benchmark workloads
#   make clean   remove the build directories

CMAKE ?= cmake
JOBS  ?= 2

.PHONY: help demo test bench clean

help:
	@echo "targets: demo test bench clean"

# The bookstore tour creates its own schema from its models: no --schema.
demo:
	scripts/bootstrap
	$(CMAKE) -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
	$(CMAKE) --build build -j$(JOBS) --target aorm-bookstore
	scripts/sandbox run -- build/examples/aorm-bookstore

test:
	scripts/bootstrap --docs
	$(CMAKE) -S . -B build-test -DAORM_SANITIZE=ON -DAORM_WERROR=ON -DCMAKE_BUILD_TYPE=Debug
	$(CMAKE) --build build-test -j$(JOBS)
	$(CMAKE) --build build-test --target docs
	scripts/sandbox run --schema -- ctest --test-dir build-test --output-on-failure -V --timeout 900

bench:
	scripts/bootstrap --bench
	$(CMAKE) -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
	$(CMAKE) --build build -j$(JOBS)
	scripts/sandbox run --schema -- build/bench/aorm-bench

clean:
	rm -rf build build-test build-bench

# make compare   aorm against SQLAlchemy asyncio on the reference data, with
#                the plain-libpq ceilings (bench/README.md); Release build in
#                build-bench/
.PHONY: compare
compare:
	bench/compare
