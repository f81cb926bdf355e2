// Command qpc-bench is qpc's load generator: it drives N concurrent clients
// over real QUIC against qpcd on loopback and reports throughput and
// enqueue-to-delivery latency, next to a bare quic-go request/response
// baseline measured in the same run.
//
//	qpc-bench -mode both -n 64 -duration 20s -serve        # in-process qpcd
//	qpc-bench -mode enqueue -addr 127.0.0.1:7443 -data-dir ./data -n 64
//	qpc-bench -mode idle -addr 127.0.0.1:7443 -data-dir ./data -ops 127.0.0.1:7444 -n 1000
//	qpc-bench -mode idle -serve -n 1000 -fanout 1000 -fanout-messages 20
//
// Modes: baseline (quic-go echo, one stream per RPC, 1 KiB requests, no
// storage), enqueue (register, shared group channel, senders Enqueue 1 KiB
// MLS messages, receivers FetchWait), both (baseline, then enqueue), idle
// (N devices long-poll while nothing is sent: qpcd's memory, goroutines and
// CPU per device from its metrics, and its memory after they leave; with
// -fanout, one message at a time to a channel of N of them: the time from
// its send to each receipt).
// scripts/bench-peers.sh and scripts/bench-idle.sh drive it.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
