# syntax=docker/dockerfile:1
# quicprochat server image: static qpcd, qpcctl and qpc on a distroless base,
# running as the non-root user 65532. The stage testnet-client is the scripted
# chat client of docker-compose.yml.
#
#   docker build -t quicprochat/qpcd .
#   docker run -p 7443:7443/udp -v qpcd-data:/var/lib/qpcd quicprochat/qpcd
#
# No Docker engine runs where this project is developed: `make test` checks
# this file statically (packaging/docker_test.go); see docs/release.md.

ARG GO_VERSION=1.26.8

# --- build: the same static, reproducible build as `make release` -----------
FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
# Only the modules the binaries need are downloaded (not the tool dependencies).
COPY . .
ARG VERSION=0.0.0-dev
ARG COMMIT=unknown
ARG SOURCE_DATE_EPOCH=0
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    set -eu; \
    date=$(date -u -d "@${SOURCE_DATE_EPOCH}" +%Y-%m-%dT%H:%M:%SZ); \
    pkg=github.com/quicprochat/quicprochat/internal/version; \
    mkdir -p /out/bin /out/data; \
    for c in qpcd qpcctl qpc; do \
      [ -d "cmd/$c" ] || continue; \
      CGO_ENABLED=1 go build -trimpath -buildvcs=false \
        -tags netgo,osusergo,sqlite_omit_load_extension \
        -ldflags "-s -w -X $pkg.Version=${VERSION} -X $pkg.Commit=${COMMIT} -X $pkg.Date=$date -linkmode external -extldflags=-static" \
        -o "/out/bin/$c" "./cmd/$c"; \
    done; \
    CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags "-s -w" \
      -o /out/bin/qpc-healthcheck ./packaging/docker/healthcheck; \
    CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags "-s -w" \
      -o /out/testnet/qpc-testnet ./cmd/qpc-testnet

# --- testnet-client: qpc and a scripted chat for docker-compose.yml ---------
# busybox supplies the shell for the script; the server image has none.
# qpc-testnet writes the certificate every qpcd replica shares (tls-init);
# /tls is the non-root mount point of that volume.
FROM busybox:1.37.0-musl AS testnet-client
COPY --from=build /out/bin/qpc /usr/local/bin/qpc
COPY --from=build /out/testnet/qpc-testnet /usr/local/bin/qpc-testnet
COPY packaging/docker/testnet-chat.sh /usr/local/bin/testnet-chat.sh
COPY --from=build --chown=65532:65532 /out/data /home/qpc
COPY --from=build --chown=65532:65532 /out/data /tls
USER 65532:65532
ENV QPC_HOME=/home/qpc
VOLUME ["/home/qpc"]
ENTRYPOINT ["/bin/sh", "/usr/local/bin/testnet-chat.sh"]

# --- final: no shell, no package manager, only the binaries -------------------
FROM gcr.io/distroless/static-debian12:nonroot AS final
COPY --from=build /out/bin/ /usr/local/bin/
COPY --from=build --chown=65532:65532 /out/data /var/lib/qpcd
USER 65532:65532
# Inside the container qpcd binds all interfaces; publish only what you need.
ENV QPC_LISTEN=0.0.0.0:7443 \
    QPC_OPS_LISTEN=0.0.0.0:7444 \
    QPC_DATA_DIR=/var/lib/qpcd \
    QPC_LOG_FORMAT=json
VOLUME ["/var/lib/qpcd"]
EXPOSE 7443/udp 7444/tcp
# /readyz on the ops port: 200 when serving, 503 while starting or draining.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["/usr/local/bin/qpc-healthcheck", "http://127.0.0.1:7444/readyz"]
ENTRYPOINT ["/usr/local/bin/qpcd"]
