#!/bin/sh
# Builds the MLS working group's interop test-runner (mlswg/mls-implementations
# at MLSWG_COMMIT) into OUT/test-runner, from a scratch copy in OUT/src:
# the harness is taken from MLSWG_SRC (default ../shared/mls-interop, a copy
# of that commit) or cloned from GitHub, its gRPC code is generated there
# with the project's pinned protoc-gen-go and protoc-gen-go-grpc, and it is
# built against interop/mlswg/runner.go.{mod,sum} (grpc 1.78, protobuf
# 1.36: the upstream go.mod's grpc 1.56 cannot build current generator
# output). Nothing is written into MLSWG_SRC or copied into the project.
set -eu
OUT=${1:-bin/mlswg}
MLSWG_COMMIT=${MLSWG_COMMIT:-cfd4502}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SRC=${MLSWG_SRC:-$ROOT/../shared/mls-interop}
GO=${GO:-go}
PROTOC_VERSION=3.21.12

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
if [ -x "$OUT/test-runner" ] && [ "$OUT/test-runner" -nt "$0" ] && [ "$OUT/test-runner" -nt "$ROOT/interop/mlswg/runner.go.mod" ]; then
	exit 0
fi
protoc --version | grep -q "$PROTOC_VERSION" || { echo "mlswg-runner: need protoc $PROTOC_VERSION" >&2; exit 1; }
rm -rf "$OUT/src"
if [ -f "$SRC/interop/test-runner/main.go" ]; then
	cp -R "$SRC" "$OUT/src"
else
	git clone -q https://github.com/mlswg/mls-implementations "$OUT/src"
	git -C "$OUT/src" checkout -q "$MLSWG_COMMIT"
fi
chmod -R u+w "$OUT/src"
cp "$ROOT/interop/mlswg/runner.go.mod" "$OUT/src/go.mod"
cp "$ROOT/interop/mlswg/runner.go.sum" "$OUT/src/go.sum"
GEN=$(cd "$ROOT" && $GO tool -n protoc-gen-go)
GRPC=$(cd "$ROOT" && $GO tool -n protoc-gen-go-grpc)
cd "$OUT/src/interop"
protoc --plugin=protoc-gen-go="$GEN" --plugin=protoc-gen-go-grpc="$GRPC" \
	--go_out=proto --go_opt=paths=source_relative \
	--go-grpc_out=proto --go-grpc_opt=paths=source_relative \
	-I proto proto/mls_client.proto
cd test-runner
$GO build -mod=readonly -o "$OUT/test-runner" .
echo "mlswg-runner: $OUT/test-runner"
