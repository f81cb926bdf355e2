// Tool module for the NATS JetStream peer in `make bench-peers`
// (scripts/bench-peers.sh): nats-server pinned as a Go tool and the load
// generator in this directory, which uses the NATS Go client. Kept apart
// from the main module so neither enters qpcd's dependency graph.
module github.com/quicprochat/quicprochat/tools/nats

go 1.26.0

tool github.com/nats-io/nats-server/v2

require (
	github.com/nats-io/nats-server/v2 v2.15.3
	github.com/nats-io/nats.go v1.56.0
)

require (
	github.com/antithesishq/antithesis-sdk-go v0.9.0-default-no-op // indirect
	github.com/google/go-tpm v0.9.8 // indirect
	github.com/klauspost/compress v1.20.4 // indirect
	github.com/minio/highwayhash v1.0.4 // indirect
	github.com/nats-io/jwt/v2 v2.8.3 // indirect
	github.com/nats-io/nkeys v0.4.17 // indirect
	github.com/nats-io/nuid v1.0.1 // indirect
	golang.org/x/crypto v0.58.0 // indirect
	golang.org/x/sys v0.50.0 // indirect
	golang.org/x/time v0.16.0 // indirect
)
