export GONOSUMDB := buf.build/gen/go

.PHONY: all setup demo test unit e2e generate vet

all: setup

setup:
	bash hack/setup.sh

# The first README command: set up, start kiln serve, run a real build.
demo:
	bash hack/demo.sh

# The second README command: every test, unit and end-to-end (real
# buildkitd + runc). Missing components fail; KILN_SKIP_MISSING=1 lets a
# developer skip end-to-end tests locally instead.
test: setup vet
	go test -count=1 -timeout 40m -p 2 ./...

unit:
	go test -count=1 -short ./internal/...

vet:
	go vet ./...

generate:
	bash hack/generate.sh
