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

demo:
	scripts/bootstrap
	$(CMAKE) -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
	$(CMAKE) --build build -j$(JOBS)
	scripts/sandbox run --schema -- build/examples/aorm-demo

test:
	scripts/bootstrap
	$(CMAKE) -S . -B build-test -DAORM_SANITIZE=ON -DAORM_WERROR=ON -DCMAKE_BUILD_TYPE=Debug
	$(CMAKE) --build build-test -j$(JOBS)
	scripts/sandbox run -- ctest --test-dir build-test --output-on-failure -V --timeout 600

bench:
	scripts/bootstrap --bench
	$(CMAKE) -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
	$(CMAKE) --build build -j$(JOBS)
	scripts/sandbox run --schema -- build/bench/aorm-bench

clean:
	rm -rf build build-test
