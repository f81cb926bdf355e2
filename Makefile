# quicprochat build entry points. `make run` and `make test` are all a fresh
# machine with Go and gcc needs: missing Debian tools are installed on demand.

GO        ?= go
BIN       := bin
PKG       := github.com/quicprochat/quicprochat
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo 0.0.0-dev)
COMMIT    ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
DATE      ?= $(shell date -u -d @$${SOURCE_DATE_EPOCH:-$$(git log -1 --format=%ct 2>/dev/null || date +%s)} +%Y-%m-%dT%H:%M:%SZ)
LDFLAGS   := -X $(PKG)/internal/version.Version=$(VERSION) -X $(PKG)/internal/version.Commit=$(COMMIT) -X $(PKG)/internal/version.Date=$(DATE)
GOFLAGS_BUILD := -trimpath -ldflags "$(LDFLAGS)"
# Pinned code generators: protoc from Debian bookworm, protoc-gen-go from go.mod's tool directive.
PROTOC_VERSION := 3.21.12
SUDO      := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_INSTALL = DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends

.PHONY: all build run test test-go test-tools jaeger trace-e2e vet fmt-check ops-check proto proto-interop interop interop-wg mlswg-runner test-mlswg fuzz deps-test clean chaos chaos-short soak compat package-upgrade-test bench-peers bench-half bench-compare testnet testnet-down bench-mls-peers

all: build

build:
	$(GO) build $(GOFLAGS_BUILD) -o $(BIN)/ ./cmd/...

# The server on its embedded default: ./data, a generated dev key and
# certificate, 127.0.0.1:7443/udp (QUIC) and 127.0.0.1:7444 (metrics, health).
run: build
	./$(BIN)/qpcd

test: deps-test vet fmt-check lint-actions ops-check test-go test-tools test-mlswg chaos-short

# internal/mls runs verbosely so the per-file MLS vector counts are printed
# (go test hides a passing package's output); a failure prints its log.
# The chaos suite runs on its own afterwards (chaos-short), not beside the
# other packages: its figures are timings.
test-go:
	$(GO) test -count=1 -timeout 30m $$($(GO) list ./... | grep -v -e '/internal/mls$$' -e '/internal/chaos$$')
	@mkdir -p $(BIN); rc=0; $(GO) test -count=1 -timeout 15m -v ./internal/mls/ > $(BIN)/mls-test.log 2>&1 || rc=$$?; \
	grep -E '^(mls vectors:|ok|FAIL)' $(BIN)/mls-test.log; \
	if [ $$rc != 0 ]; then grep -vE '^(=== |--- PASS|    --- PASS)' $(BIN)/mls-test.log; exit $$rc; fi

# Jaeger all-in-one, pinned as a Go tool in tools/jaeger: the real trace
# backend of the tracing tests (TestJaegerEndToEnd and the qpc/qpcctl
# ones, which find it in $(BIN)/jaeger, or QPC_JAEGER_BIN). Built once, when
# missing. It is some 2 300 packages, so `make test` does not build it (the
# tests skip without it); `make trace-e2e` builds it and runs them, and the
# nightly workflow runs that.
jaeger: $(BIN)/jaeger
trace-e2e: deps-test $(BIN)/jaeger
	QPC_JAEGER_BUILD=1 $(GO) test -count=1 -timeout 20m -run 'Jaeger|TestTracingLongCommandsAndShutdownFlush|TestQPCTracing|TestTestnetUpDown' ./internal/tracing/ ./cmd/qpcctl/ ./cmd/qpc/ ./cmd/qpc-testnet/
$(BIN)/jaeger: tools/jaeger/go.mod
	@mkdir -p $(BIN)
	cd tools/jaeger && $(GO) build -o $(abspath $(BIN))/jaeger github.com/jaegertracing/jaeger/cmd/jaeger

# The tool modules' own tests (tools/nats: the NATS peer of bench-peers,
# against a real nats-server), vetted in their own modules.
test-tools:
	cd tools/nats && $(GO) vet ./... && $(GO) test -count=1 ./...

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

# Debian tools the tests use, installed only when missing: promtool,
# PostgreSQL's server for internal/store/pgtest, and the third-party
# verifiers of release artefacts (minisign, lintian, rpmlint with rpm) and
# the repository tools (apt-ftparchive, createrepo_c, gpg).
deps-test:
	@command -v promtool >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(APT_INSTALL) prometheus; }
	@missing=""; for t in minisign:minisign lintian:lintian rpmlint:rpmlint rpm:rpm apt-ftparchive:apt-utils createrepo_c:createrepo-c gpg:gpg gpgv:gpgv; do \
		command -v $${t%%:*} >/dev/null 2>&1 || missing="$$missing $${t#*:}"; done; \
	[ -z "$$missing" ] || { $(SUDO) apt-get update -qq && $(APT_INSTALL) $$missing; }
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(APT_INSTALL) postgresql; }

# The ops bundle's static checks; the rule unit tests, promlint and the live
# Prometheus run are Go tests in ops/ (test-go).
ops-check: deps-test
	promtool check config ops/prometheus/prometheus.yml
	promtool check config --syntax-only ops/prometheus/prometheus.compose.yml
	promtool check rules ops/alerts/qpcd.rules.yml

proto:
	@command -v protoc >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(APT_INSTALL) protobuf-compiler libprotobuf-dev; }
	@protoc --version | grep -q "$(PROTOC_VERSION)" || { echo "make proto: need protoc $(PROTOC_VERSION) (Debian bookworm), have $$(protoc --version)"; exit 1; }
	protoc -I proto -I /usr/include --plugin=protoc-gen-go="$$($(GO) tool -n protoc-gen-go)" \
		--go_out=. --go_opt=module=$(PKG) proto/qpc/v1/*.proto

# Go code for the MLS interop harness's MLSClient service (cmd/qpc-mls-interop).
INTEROP_PB = $(PKG)/internal/mlsinterop/mlsclientpb
proto-interop:
	@protoc --version | grep -q "$(PROTOC_VERSION)" || { echo "make proto-interop: need protoc $(PROTOC_VERSION), have $$(protoc --version)"; exit 1; }
	protoc -I proto --plugin=protoc-gen-go="$$($(GO) tool -n protoc-gen-go)" \
		--plugin=protoc-gen-go-grpc="$$($(GO) tool -n protoc-gen-go-grpc)" \
		--go_out=. --go_opt=module=$(PKG) "--go_opt=Mmlsinterop/mls_client.proto=$(INTEROP_PB);mlsclientpb" \
		--go-grpc_out=. --go-grpc_opt=module=$(PKG) "--go-grpc_opt=Mmlsinterop/mls_client.proto=$(INTEROP_PB);mlsclientpb" \
		proto/mlsinterop/mls_client.proto

# The chaos suite (internal/chaos, docs/reliability.md): crash, client crash,
# network faults, database partition and bad input, on both backends
# (QPC_TEST_BACKENDS narrows). chaos-short is part of make test; chaos is the
# long mode for the nightly workflow. Each scenario prints a "chaos:" figures
# line; a failure prints the whole log.
CHAOS_RUN = rc=0; $(GO) test -count=1 -v -run '^TestChaos' $(1) ./internal/chaos/ > $(BIN)/$(2).log 2>&1 || rc=$$?; \
	grep -E '^(chaos:|ok|FAIL|--- FAIL)' $(BIN)/$(2).log; \
	if [ $$rc != 0 ]; then grep -vE '^(=== |--- PASS|    --- PASS)' $(BIN)/$(2).log; exit $$rc; fi
chaos-short: deps-test
	@mkdir -p $(BIN); $(call CHAOS_RUN,-timeout 15m,chaos-short)
chaos: deps-test
	@mkdir -p $(BIN); QPC_CHAOS=long; export QPC_CHAOS; $(call CHAOS_RUN,-timeout 3h,chaos-long)

# A local multi-node testnet (scripts/testnet.sh, docs/operations.md "A
# local testnet"): a throwaway PostgreSQL, NODES qpcd nodes on it on
# loopback ports, Prometheus scraping them with the shipped rules, and
# chatting qpc clients spread over the nodes. It prints the addresses;
# testnet-down stops all of it and removes its state (TESTNET_STATE,
# default bin/testnet). go test ./cmd/qpc-testnet runs both with two nodes.
NODES ?= 3
testnet: build deps-test $(if $(TRACING),$(BIN)/jaeger)
	NODES=$(NODES) STANDBY=$(STANDBY) TRACING=$(TRACING) scripts/testnet.sh up
testnet-down:
	scripts/testnet.sh down

# Soak (internal/chaos TestSoak): a steady mixed workload against one qpcd
# for DURATION, sampled into $(BIN)/soak-<backend>.csv and plotted to .png
# with gnuplot (Debian's, installed when missing); fails when a resource
# trends upward. SOAK_BACKENDS=sqlcipher,postgres for both.
DURATION ?= 10m
SOAK_BACKENDS ?= sqlcipher
soak: deps-test
	@command -v gnuplot >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(APT_INSTALL) gnuplot-nox; }
	@mkdir -p $(BIN); rc=0; QPC_TEST_BACKENDS=$(SOAK_BACKENDS) QPC_SOAK_DURATION=$(DURATION) QPC_SOAK_CSV=$(abspath $(BIN))/soak \
		$(GO) test -count=1 -v -timeout 0 -run '^TestSoak$$' ./internal/chaos/ > $(BIN)/soak.log 2>&1 || rc=$$?; \
	grep -E '^(chaos:|ok|FAIL|--- FAIL)' $(BIN)/soak.log; \
	for csv in $(BIN)/soak-*.csv; do [ -f "$$csv" ] || continue; \
		gnuplot -e "csv='$$csv'; png='$${csv%.csv}.png'" scripts/soak.gp && echo "plot: $${csv%.csv}.png"; done; \
	if [ $$rc != 0 ]; then grep -vE '^(=== |--- PASS|    --- PASS)' $(BIN)/soak.log; exit $$rc; fi

# internal/mls against ts-mls and OpenMLS (Wire's core-crypto, WebAssembly)
# (interop/): installs the peers exactly as
# their lockfiles pin them, then runs the Go test that drives both sides.
# Needs Node.js 20+ and npm; every exchanged message is kept under
# INTEROP_ARTIFACTS.
INTEROP_ARTIFACTS ?= $(BIN)/interop-artifacts
# It also runs the MLS working group's test-runner (TestMLSWGHarness) in
# its short mode: all eight configs, every implemented suite, one random
# assignment of the two qpc-mls-interop clients to the actors.
interop: mlswg-runner
	cd interop/ts-mls && npm ci --no-audit --no-fund
	cd interop/ts-mls-rc10 && npm ci --no-audit --no-fund
	cd interop/openmls && npm ci --no-audit --no-fund
	@mkdir -p $(INTEROP_ARTIFACTS)
	QPC_INTEROP_ARTIFACTS=$(abspath $(INTEROP_ARTIFACTS)) QPC_MLSWG_RUNNER=$(abspath $(MLSWG))/test-runner \
		$(GO) test -tags interop -count=1 -timeout 30m -v ./interop/

# The MLS working group's interop test-runner (mlswg/mls-implementations,
# pinned; scripts/mlswg-runner.sh generates its gRPC code and builds it in
# $(MLSWG)/src, a scratch copy) against two cmd/qpc-mls-interop processes,
# in full: every assignment of the clients to the actors, all eight
# configs, every implemented suite, PrivateMessage and PublicMessage.
MLSWG ?= $(BIN)/mlswg
mlswg-runner:
	@command -v protoc >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(APT_INSTALL) protobuf-compiler libprotobuf-dev; }
	GO=$(GO) scripts/mlswg-runner.sh $(MLSWG)
# The quick mode, part of make test (about a minute): every config but
# deep_random, every suite, one random client assignment; needs no Node.
test-mlswg: mlswg-runner
	@mkdir -p $(BIN); rc=0; QPC_MLSWG_RUNNER=$(abspath $(MLSWG))/test-runner QPC_MLSWG_MODE=quick \
		$(GO) test -tags interop -count=1 -timeout 20m -v -run '^TestMLSWGHarness$$' ./interop/ > $(BIN)/mlswg-test.log 2>&1 || rc=$$?; \
	grep -E '(mlswg:|^ok|^FAIL)' $(BIN)/mlswg-test.log; \
	if [ $$rc != 0 ]; then grep -vE '^(=== |--- PASS|    --- PASS)' $(BIN)/mlswg-test.log; exit $$rc; fi
interop-wg: mlswg-runner
	@mkdir -p $(INTEROP_ARTIFACTS)
	QPC_INTEROP_ARTIFACTS=$(abspath $(INTEROP_ARTIFACTS)) QPC_MLSWG_RUNNER=$(abspath $(MLSWG))/test-runner QPC_MLSWG_MODE=full \
		$(GO) test -tags interop -count=1 -timeout 90m -v -run '^TestMLSWGHarness$$' ./interop/

# N-1 compatibility (internal/compat, docs/release.md "Compatibility with
# the previous release"): the previous release (scripts/previous-release.sh)
# is built once with its own release script into bin/compat/<commit>/, then
# old qpc <-> new qpcd, new qpc <-> old qpcd and a mixed group run the client
# lifecycle, and the new qpcd migrates a database of the old one, on both
# backends (QPC_TEST_BACKENDS narrows). `make test` runs a short form
# (SQLCipher, two directions) only once the cache exists.
COMPAT_RUN = rc=0; $(GO) test -count=1 -v $(1) ./internal/compat/ > $(BIN)/$(2).log 2>&1 || rc=$$?; \
	grep -E '^(compat:|ok|FAIL|--- FAIL|--- SKIP|    --- SKIP)' $(BIN)/$(2).log; \
	if [ $$rc != 0 ]; then grep -vE '^(=== |--- PASS|    --- PASS)' $(BIN)/$(2).log; exit $$rc; fi
compat: deps-test
	@mkdir -p $(BIN); scripts/compat-build.sh >/dev/null
	@QPC_COMPAT=1; export QPC_COMPAT; $(call COMPAT_RUN,-timeout 30m -run '^TestCompat',compat)

# Package upgrade (internal/compat TestPackageUpgrade, docs/release.md
# "Upgrading and downgrading the package"): the previous release's .deb,
# then this commit's, with dpkg in a debootstrapped Debian bookworm root
# (cached as bin/debootstrap/bookworm-minbase.tar.gz). Needs root. Slow: not
# part of make test. Both .debs come from each version's own release build.
package-upgrade-test:
	@mkdir -p $(BIN); scripts/compat-build.sh >/dev/null; scripts/compat-build.sh HEAD >/dev/null; scripts/debian-root.sh >/dev/null
	@QPC_PACKAGE_UPGRADE=1; export QPC_PACKAGE_UPGRADE; $(call COMPAT_RUN,-timeout 30m -run '^TestPackageUpgrade$$',package-upgrade)

# qpcd's durable enqueue next to NATS JetStream, pgbench and the bare QUIC
# loop in one interleaved run (scripts/bench-peers.sh, docs/benchmarks.md):
# bench-out/bench-peers.json, .md and .png (BENCH_OUT=dir). BENCH_QUICK=1
# runs one short round of each as a smoke check. Needs PostgreSQL's server
# (with pgbench) and gnuplot, installed from Debian when missing.
# The nightly benchmark comparison (scripts/bench-compare.sh): MLS, store
# and delivery benchmarks COUNT times, compared with benchstat (a Go tool in
# tools/benchstat) against the last run's kept in BENCH_OUT.
bench-compare:
	scripts/bench-compare.sh

bench-peers:
	@ls /usr/lib/postgresql/*/bin/pgbench >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(APT_INSTALL) postgresql; }
	@command -v gnuplot >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(APT_INSTALL) gnuplot-nox; }
	@missing=""; for t in jq:jq curl:curl /usr/bin/time:time; do command -v $${t%%:*} >/dev/null 2>&1 || missing="$$missing $${t#*:}"; done; \
	[ -z "$$missing" ] || { $(SUDO) apt-get update -qq && $(APT_INSTALL) $$missing; }
	scripts/bench-peers.sh

# Issue 17's half-load aim (scripts/bench-half.sh, docs/benchmarks.md): per
# run a fresh qpcd on SQLCipher, the closed loop and then half its rate
# paced; BASE=rev alternates with a build of rev.
bench-half:
	@missing=""; for t in jq:jq curl:curl; do command -v $${t%%:*} >/dev/null 2>&1 || missing="$$missing $${t#*:}"; done; \
	[ -z "$$missing" ] || { $(SUDO) apt-get update -qq && $(APT_INSTALL) $$missing; }
	scripts/bench-half.sh

# internal/mls against ts-mls from npm (bench/ts-mls, pinned by its
# package-lock.json, installed with npm ci when missing): the fresh-tree
# commit at 100 and 1 000 members, interleaved, 3 rounds
# (scripts/bench-mls-peers.sh, docs/benchmarks.md "Against ts-mls"):
# bench-out/mls-peers.json and .md. BENCH_QUICK=1: 10 and 100 members, one
# short round. Needs Node.js 20+ and npm, so not part of make test.
bench-mls-peers:
	scripts/bench-mls-peers.sh

# Enqueue latency with STORED messages in the log against an empty
# database, alternating between the two, on STORED_BACKENDS (default both):
# BenchmarkEnqueueStoredMessages (internal/delivery, docs/benchmarks.md
# "Stored data"). The log is bulk-loaded in qpcd's shape; PostgreSQL runs on
# its own on-disk cluster with fsync on. STORED=10000000 needs about 16 GiB
# free under TMPDIR per backend (removed at the end) and tens of minutes on
# 2 cores. BENCH_QUICK=1: 10 000 messages, 400 enqueues, a smoke check.
STORED ?= 1000000
STORED_BACKENDS ?= sqlcipher,postgres
STORED_ENQUEUES ?= 6000
.PHONY: bench-stored
bench-stored:
	@if [ -n "$(BENCH_QUICK)" ]; then stored=10000; n=400; else stored=$(STORED); n=$(STORED_ENQUEUES); fi; \
	QPC_TEST_BACKENDS=$(STORED_BACKENDS) QPC_BENCH_STORED=$$stored $(GO) test -run '^$$' -bench '^BenchmarkEnqueueStoredMessages$$' \
		-benchtime $${n}x -timeout 3h -v ./internal/delivery | grep -v '^=== RUN'


# Fuzzing of every fuzz target, one after another: FUZZTIME per target
# (10s; the nightly workflow uses 2m), FUZZPARALLEL workers each (default:
# one per core). A long run, e.g. FUZZTIME=130s FUZZPARALLEL=1 over the ~30
# targets, totals a CPU-hour. Every target runs even after a failure; the
# summary names the failures and their inputs stay in testdata/fuzz/ as
# regression cases. Server fuzzing uses the SQLCipher backend.
FUZZTIME ?= 10s
FUZZPARALLEL ?= $(shell nproc 2>/dev/null || echo 1)
fuzz:
	@mkdir -p $(BIN); failed=""; n=0; for pkg in $$($(GO) list ./... ); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz'); do \
			n=$$((n+1)); echo "== $$pkg $$f"; \
			rc=0; QPC_TEST_BACKENDS=sqlcipher $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) -parallel $(FUZZPARALLEL) $$pkg \
				> $(BIN)/fuzz-last.log 2>&1 || rc=$$?; \
			grep -E '^(--- FAIL|    |ok|FAIL)' $(BIN)/fuzz-last.log; grep -E '^fuzz: elapsed' $(BIN)/fuzz-last.log | tail -1; \
			[ $$rc = 0 ] || failed="$$failed $$pkg.$$f"; \
		done; \
	done; echo "fuzz: $$n targets, $(FUZZTIME) each, $(FUZZPARALLEL) worker(s); failed:$${failed:- none}"; [ -z "$$failed" ]

# --- Release (docs/release.md) ---------------------------------------------
# Static binaries for RELEASE_ARCHES, SBOMs, .deb/.rpm/.ipk, SHA256SUMS and
# minisign signatures in dist/. Sign with QPC_RELEASE_KEY=/path/to/minisign.key
# (QPC_RELEASE_KEY_PASSWORD if encrypted); without it a throwaway key is used.
RELEASE_ARCHES ?= amd64 arm64
HOST_ARCH := $(shell $(GO) env GOHOSTARCH 2>/dev/null)
CROSS_CC_arm64   := aarch64-linux-gnu-gcc
CROSS_DEBS_arm64 := gcc-aarch64-linux-gnu libc6-dev-arm64-cross
CROSS_CC_amd64   := x86_64-linux-gnu-gcc
CROSS_DEBS_amd64 := gcc-x86-64-linux-gnu libc6-dev-amd64-cross

.PHONY: release release-check container-test sbom lint-actions deps-release

release: deps-release
	RELEASE_ARCHES="$(RELEASE_ARCHES)" packaging/release/build.sh release

sbom:
	RELEASE_ARCHES="$(RELEASE_ARCHES)" packaging/release/build.sh sbom

# The release image (packaging/docker/Containerfile.release: static binaries
# on scratch) built with buildah and run with podman as non-root: health
# check, a chat through it, restart on the same volume, SIGTERM. Needs root.
container-test:
	@command -v buildah >/dev/null 2>&1 && command -v podman >/dev/null 2>&1 && command -v runc >/dev/null 2>&1 || \
		{ $(SUDO) apt-get update -qq && $(APT_INSTALL) buildah podman runc; }
	QPC_CONTAINER_TEST=1 $(GO) test -count=1 -timeout 20m -run '^TestContainerImage$$' -v ./packaging

# The third-party verifiers (minisign, the CycloneDX schema, lintian,
# rpmlint) on a `make release` output: DIST=dir (default dist).
release-check: deps-test
	QPC_RELEASE_DIST="$(abspath $(or $(DIST),dist))" $(GO) test -count=1 -run '^TestReleaseArtefacts$$' -v ./packaging

# C cross compilers from Debian for the non-host arches, and the repository
# tools (apt-ftparchive, createrepo_c, gpg), installed only when missing.
deps-release:
	@for a in $(filter-out $(HOST_ARCH),$(RELEASE_ARCHES)); do \
		case $$a in \
		arm64) cc="$(CROSS_CC_arm64)"; debs="$(CROSS_DEBS_arm64)" ;; \
		amd64) cc="$(CROSS_CC_amd64)"; debs="$(CROSS_DEBS_amd64)" ;; \
		*) echo "deps-release: no cross compiler known for $$a"; exit 1 ;; \
		esac; \
		command -v $$cc >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(APT_INSTALL) $$debs; } || exit 1; \
	done
	@missing=""; for t in apt-ftparchive:apt-utils createrepo_c:createrepo-c gpg:gpg; do \
		command -v $${t%%:*} >/dev/null 2>&1 || missing="$$missing $${t#*:}"; done; \
	[ -z "$$missing" ] || { $(SUDO) apt-get update -qq && $(APT_INSTALL) $$missing; }

# GitHub Actions workflows, checked by actionlint (a Go tool dependency).
lint-actions:
	$(GO) tool -modfile=tools/actionlint/go.mod actionlint -color=false .github/workflows/*.yml

clean:
	rm -rf $(BIN) dist
