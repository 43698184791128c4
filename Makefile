export GONOSUMDB := buf.build/gen/go

.PHONY: all setup setup-tests demo test unit e2e generate vet bench bench-smoke soak

all: setup

# What kiln needs to run (make demo's part); setup-tests adds what only the
# tests need (versitygw).
setup:
	bash hack/setup.sh

setup-tests:
	bash hack/setup.sh --tests

# The first README command: set up, start kiln serve, run a real build.
demo:
	bash hack/demo.sh

# The second README command: every test, unit and end-to-end (real
# buildkitd + runc). Missing components fail; KILN_SKIP_MISSING=1 lets a
# developer skip end-to-end tests locally instead.
# test/e2e, the longest package, is named first so it starts first and runs
# beside the unit packages and the bench smoke run instead of after them;
# its tests run KILN_E2E_PARALLEL (default 3) at a time.
test: setup-tests vet
	go test -count=1 -timeout 40m -p 2 ./test/e2e ./internal/... ./...

unit:
	go test -count=1 -short ./internal/...

vet:
	go vet ./...

generate:
	bash hack/generate.sh

# Benchmarks against plain buildctl -> buildkitd (bench/RESULTS.md, ~15 min).
# The smoke mode (tiny sizes, one run) also runs in `make test` (bench/bench_test.go).
bench: setup
	go run ./bench -kiln bin/kiln

bench-smoke: setup
	go run ./bench -smoke -kiln bin/kiln

# The soak (not CI; bench/soak.go): SOAK_BUILDS builds over SOAK_PROJECTS
# projects with builders idling in and out, then kiln serve's and the
# builders' fds, goroutines and RSS and the data dir's growth per build.
# A quick check: make soak SOAK_BUILDS=60 SOAK_PROJECTS=5.
SOAK_BUILDS ?= 500
SOAK_PROJECTS ?= 20
soak: setup
	go run ./bench -soak -soak-builds $(SOAK_BUILDS) -soak-projects $(SOAK_PROJECTS) -kiln bin/kiln
