#!/usr/bin/env bash
# Regenerates gen/ from api/proto offline: protoc (Debian's protobuf-compiler)
# with protoc-gen-go and protoc-gen-connect-go run as Go tools of this module.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v protoc >/dev/null || { echo "protoc missing: apt-get install protobuf-compiler" >&2; exit 1; }
inc=$(mktemp -d); trap 'rm -rf "$inc"' EXIT
bin="$inc/bin"; mkdir -p "$bin"
go build -o "$bin/protoc-gen-go" google.golang.org/protobuf/cmd/protoc-gen-go
go build -o "$bin/protoc-gen-connect-go" connectrpc.com/connect/cmd/protoc-gen-connect-go
# BuildKit's protos import each other by their github.com paths.
bk=$(go list -m -f '{{.Dir}}' github.com/moby/buildkit)
mkdir -p "$inc/github.com/moby" "$inc/google/rpc" "$inc/depot/cli"
# depot-go ships depot/cli/v1/build.proto; import it (not generate it) so
# kiln's additions to depot.cli.v1 reuse its messages.
ln -s "$(go list -m -f '{{.Dir}}' github.com/depot/depot-go)/proto/depot/cli/v1" "$inc/depot/cli/v1"
ln -s "$bk" "$inc/github.com/moby/buildkit"
# google/rpc/status.proto is not shipped by Debian's protoc; only its shape is
# needed to resolve BuildKit's imports (the Go package comes from genproto).
cat > "$inc/google/rpc/status.proto" <<'P'
syntax = "proto3";
package google.rpc;
import "google/protobuf/any.proto";
option go_package = "google.golang.org/genproto/googleapis/rpc/status;status";
message Status { int32 code = 1; string message = 2; repeated google.protobuf.Any details = 3; }
P
depotgo=Mdepot/cli/v1/build.proto=github.com/depot/depot-go/proto/depot/cli/v1
rm -rf gen && mkdir gen
protos=$(cd api/proto && find . -name '*.proto' | sed 's#^\./##' | sort)
(cd api/proto && PATH="$bin:$PATH" protoc -I . -I "$inc" -I /usr/include \
  --go_out="$OLDPWD/gen" --go_opt=module=github.com/kiln-dev/kiln/gen --go_opt="$depotgo" \
  --connect-go_out="$OLDPWD/gen" --connect-go_opt=module=github.com/kiln-dev/kiln/gen --connect-go_opt="$depotgo" \
  $protos)
echo "generated: $(find gen -name '*.go' | wc -l) files"
