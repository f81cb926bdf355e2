package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"runtime/pprof"
	"time"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// options are the command line.
type options struct {
	mode       string
	clients    int
	receivers  int
	duration   time.Duration
	messages   int
	size       int
	rate       float64
	addr       string
	pin        string
	dataDir    string
	serve      bool
	serveDir   string
	jsonOut    string
	cpuProfile string
	serverPID  int
	warmup     time.Duration
	channels   int
	batch      int
	keepStream bool
	cpuComm    string
	cpuTree    int
	ops        string
	after      time.Duration
	profileDir string

	pollTimeout    time.Duration
	keepAlive      time.Duration
	fanout         int
	fanoutMessages int
}

func parse(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("qpc-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.mode, "mode", "both", "baseline | enqueue | both (baseline then enqueue, same concurrency) | idle (-n devices long-poll an idle qpcd for -duration: its memory, goroutines and CPU)")
	fs.IntVar(&o.clients, "n", 32, "concurrent clients (each its own QUIC connection): senders in enqueue mode")
	fs.IntVar(&o.receivers, "receivers", 4, "enqueue mode: receiving devices long-polling with FetchWait")
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "how long each mode runs (after warm-up)")
	fs.DurationVar(&o.warmup, "warmup", 2*time.Second, "run this long before measuring")
	fs.IntVar(&o.messages, "messages", 0, "stop after this many requests per mode (0: only -duration)")
	fs.IntVar(&o.size, "size", 1024, "request / MLS ciphertext size in bytes")
	fs.Float64Var(&o.rate, "rate", 0, "total request rate per second, paced across clients (0: closed loop, as fast as possible)")
	fs.StringVar(&o.addr, "addr", "127.0.0.1:7443", "qpcd QUIC address (loopback only)")
	fs.StringVar(&o.pin, "pin", "", "qpcd certificate SHA-256 pin (hex); default: from -data-dir's tls/cert.pem")
	fs.StringVar(&o.dataDir, "data-dir", "./data", "qpcd data directory, to read the dev certificate's pin")
	fs.BoolVar(&o.serve, "serve", false, "start an in-process qpcd on a temporary data dir instead of -addr")
	fs.StringVar(&o.serveDir, "serve-dir", "", "with -serve: data dir to use (default: a temporary one, removed after)")
	fs.StringVar(&o.jsonOut, "json", "", "also write the results as JSON to this file")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of this process (with -serve: client and server)")
	fs.IntVar(&o.serverPID, "server-pid", 0, "qpcd's process id, to add its CPU time to the per-request CPU figure (Linux)")
	fs.IntVar(&o.channels, "channels", 1, "enqueue mode: group channels the senders are spread over (sender i uses channel i%N; every receiver is in all of them)")
	fs.IntVar(&o.batch, "batch", 1, "enqueue mode: messages per RPC; above 1 each sender sends EnqueueBatch with this many (up to 64), and rates and CPU are counted per message")
	fs.BoolVar(&o.keepStream, "keep-stream", false, "baseline mode: each client sends all its requests on one long-lived stream instead of one stream per request")
	fs.StringVar(&o.cpuComm, "cpu-comm", "", "also report the CPU time of every process with this command name (e.g. postgres) per request (Linux)")
	fs.IntVar(&o.cpuTree, "cpu-tree", 0, "also report the CPU time of this process and all its descendants, exited ones included (e.g. PostgreSQL's postmaster), per request (Linux)")
	fs.StringVar(&o.ops, "ops", "", "idle mode: qpcd's ops_listen address (its /metrics, and /debug/pprof with ops_pprof=on)")
	fs.DurationVar(&o.after, "after", 30*time.Second, "idle mode: how long to watch qpcd's memory after every device has left")
	fs.StringVar(&o.profileDir, "profile-dir", "", "idle mode: save qpcd's heap profile and goroutine dump here while the devices wait (needs ops_pprof=on)")
	fs.DurationVar(&o.pollTimeout, "poll-timeout", time.Hour, "idle mode: the wait each FetchWait asks for, as qpc's client does (qpcd clips it to limits.long_poll_max)")
	fs.DurationVar(&o.keepAlive, "keepalive", 0, "idle mode: each device's QUIC keep-alive period (0: the transport's default, 15 s; quic-go sends at most every half of the idle timeout)")
	fs.IntVar(&o.fanout, "fanout", 0, "idle mode: this many of the -n devices join one group channel before they poll; once all wait, a sender enqueues -fanout-messages messages one at a time (each after every receiver got the previous one): time from the send to each receipt")
	fs.IntVar(&o.fanoutMessages, "fanout-messages", 20, "idle mode with -fanout: messages sent")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	switch {
	case fs.NArg() > 0:
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	case o.mode != "baseline" && o.mode != "enqueue" && o.mode != "both" && o.mode != "idle":
		return o, fmt.Errorf("-mode %q: want baseline, enqueue, both or idle", o.mode)
	case o.mode == "idle" && (o.clients < 1 || o.clients > 20000):
		return o, fmt.Errorf("-n %d: want 1..20000 idle devices", o.clients)
	case o.mode == "idle" && !o.serve && o.ops == "":
		return o, errors.New("-mode idle reads qpcd's metrics: set -ops to its ops_listen address (or -serve)")
	case o.pollTimeout < time.Second || o.pollTimeout > time.Hour:
		return o, fmt.Errorf("-poll-timeout %v: want 1s..1h", o.pollTimeout)
	case o.keepAlive < 0:
		return o, fmt.Errorf("-keepalive %v: must not be negative", o.keepAlive)
	case o.fanout < 0 || o.fanout > 0 && (o.mode != "idle" || o.fanout > o.clients):
		return o, fmt.Errorf("-fanout %d: want 0..-n, in idle mode", o.fanout)
	case o.fanout > 0 && (o.fanoutMessages < 1 || o.fanoutMessages > 100000):
		return o, fmt.Errorf("-fanout-messages %d: want 1..100000", o.fanoutMessages)
	case o.mode != "idle" && (o.clients < 1 || o.clients > 4096):
		return o, fmt.Errorf("-n %d: want 1..4096", o.clients)
	case o.receivers < 1 || o.receivers > 256:
		return o, fmt.Errorf("-receivers %d: want 1..256", o.receivers)
	case o.duration <= 0 && o.messages <= 0:
		return o, errors.New("set -duration or -messages")
	case o.size < 64 || o.size > 1<<20:
		return o, fmt.Errorf("-size %d: want 64..1048576", o.size)
	case o.channels < 1 || o.channels > 1024:
		return o, fmt.Errorf("-channels %d: want 1..1024", o.channels)
	case o.batch < 1 || o.batch > 64:
		return o, fmt.Errorf("-batch %d: want 1..64 (EnqueueBatch carries at most 64)", o.batch)
	case o.cpuTree < 0:
		return o, fmt.Errorf("-cpu-tree %d: want a process id", o.cpuTree)
	case o.rate < 0:
		return o, fmt.Errorf("-rate %v: must not be negative", o.rate)
	}
	if !o.serve {
		host, _, err := net.SplitHostPort(o.addr)
		if err != nil {
			return o, fmt.Errorf("-addr %q: %w", o.addr, err)
		}
		if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return o, fmt.Errorf("-addr %q: load is only generated against loopback", o.addr)
		}
	}
	return o, nil
}

// report is one mode's result.
type report struct {
	Mode       string  `json:"mode"`
	Clients    int     `json:"clients"`
	Receivers  int     `json:"receivers,omitempty"`
	Size       int     `json:"size_bytes"`
	TargetRate float64 `json:"target_rate,omitempty"`
	Seconds    float64 `json:"seconds"`
	Requests   int64   `json:"requests"`
	Errors     int64   `json:"errors"`
	Throughput float64 `json:"throughput_per_s"`
	RPC        summary `json:"rpc_latency"`
	Delivered  int64   `json:"delivered,omitempty"`
	Delivery   summary `json:"delivery_latency,omitempty"`
	FirstError string  `json:"first_error,omitempty"`
	// CPU microseconds per request, client and server together (with
	// -serve or -server-pid; 0 when unknown), and the request rate that
	// would fill every core at that cost.
	CPUPerReq   float64 `json:"cpu_us_per_request,omitempty"`
	CPUCapacity float64 `json:"cpu_bound_per_s,omitempty"`
	// Channels is how many group channels the senders were spread over.
	Channels int `json:"channels,omitempty"`
	// Batch is the messages per RPC (-batch; EnqueueBatch above 1).
	// Requests, Throughput, Sent and the CPU figures count messages;
	// rpc_latency is per RPC (every message of a batch is acknowledged
	// with it).
	Batch int `json:"batch,omitempty"`
	// Sent is every acknowledged enqueue while the CPU was metered
	// (warm-up included), the divisor of the CPU figures.
	Sent int64 `json:"sent,omitempty"`
	// ServerCPU and CommCPU are the CPU microseconds qpcd (-server-pid)
	// and the -cpu-comm processes used over the same span.
	ServerCPU       float64 `json:"server_cpu_us,omitempty"`
	ServerCPUPerReq float64 `json:"server_cpu_us_per_request,omitempty"`
	CommCPU         float64 `json:"comm_cpu_us,omitempty"`
	CommCPUPerReq   float64 `json:"comm_cpu_us_per_request,omitempty"`
	// TreeCPU is the CPU microseconds the -cpu-tree process tree used.
	TreeCPU       float64 `json:"tree_cpu_us,omitempty"`
	TreeCPUPerReq float64 `json:"tree_cpu_us_per_request,omitempty"`
	GOMAXPROCS    int     `json:"gomaxprocs"`
	ServerInPro   bool    `json:"server_in_process"`
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parse(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintln(stderr, "qpc-bench:", err)
		return exitUsage
	}
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			fmt.Fprintln(stderr, "qpc-bench:", err)
			return exitFailure
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(stderr, "qpc-bench:", err)
			return exitFailure
		}
		defer pprof.StopCPUProfile()
	}
	if o.mode == "idle" {
		r, err := runIdle(ctx, o, stdout)
		if err != nil {
			fmt.Fprintln(stderr, "qpc-bench: idle:", err)
			return exitFailure
		}
		printIdle(stdout, r)
		if o.jsonOut != "" {
			b, _ := json.MarshalIndent(r, "", "  ")
			if err := os.WriteFile(o.jsonOut, append(b, '\n'), 0o644); err != nil {
				fmt.Fprintln(stderr, "qpc-bench:", err)
				return exitFailure
			}
		}
		return exitOK
	}
	var reports []report
	if o.mode == "baseline" || o.mode == "both" {
		r, err := runBaseline(ctx, o)
		if err != nil {
			fmt.Fprintln(stderr, "qpc-bench: baseline:", err)
			return exitFailure
		}
		reports = append(reports, r)
	}
	if o.mode == "enqueue" || o.mode == "both" {
		r, err := runEnqueue(ctx, o, stderr)
		if err != nil {
			fmt.Fprintln(stderr, "qpc-bench: enqueue:", err)
			return exitFailure
		}
		reports = append(reports, r)
	}
	printTable(stdout, reports)
	if o.jsonOut != "" {
		b, _ := json.MarshalIndent(reports, "", "  ")
		if err := os.WriteFile(o.jsonOut, append(b, '\n'), 0o644); err != nil {
			fmt.Fprintln(stderr, "qpc-bench:", err)
			return exitFailure
		}
	}
	for _, r := range reports {
		if r.Requests == 0 {
			fmt.Fprintf(stderr, "qpc-bench: %s: no request succeeded (first error: %s)\n", r.Mode, r.FirstError)
			return exitFailure
		}
	}
	return exitOK
}

func printTable(w io.Writer, rs []report) {
	fmt.Fprintf(w, "GOMAXPROCS=%d NumCPU=%d\n", runtime.GOMAXPROCS(0), runtime.NumCPU())
	fmt.Fprintf(w, "%-9s %7s %6s %9s %8s %10s | %-26s | %-26s | %s\n", "mode", "clients", "size", "requests", "errors", "req/s",
		"rpc p50/p99/p999 ms", "delivery p50/p99/p999 ms", "cpu µs/req (all cores: req/s)")
	for _, r := range rs {
		del := "-"
		if r.Delivered > 0 {
			del = r.Delivery.String()
		}
		cpu := "-"
		if r.CPUPerReq > 0 {
			cpu = fmt.Sprintf("%.0f (%.0f)", r.CPUPerReq, r.CPUCapacity)
		}
		fmt.Fprintf(w, "%-9s %7d %6d %9d %8d %10.0f | %-26s | %-26s | %s\n", r.Mode, r.Clients, r.Size, r.Requests, r.Errors, r.Throughput, r.RPC.String(), del, cpu)
		if r.ServerCPUPerReq > 0 || r.CommCPUPerReq > 0 || r.TreeCPUPerReq > 0 {
			fmt.Fprintf(w, "  %s: channels %d, cpu µs/req: qpcd %.0f, -cpu-comm processes %.0f, -cpu-tree processes %.0f\n",
				r.Mode, r.Channels, r.ServerCPUPerReq, r.CommCPUPerReq, r.TreeCPUPerReq)
		}
		if r.Batch > 1 {
			fmt.Fprintf(w, "  %s: %d messages per EnqueueBatch; requests, req/s and cpu µs/req count messages, rpc latency is per batch\n", r.Mode, r.Batch)
		}
	}
	var base, enq float64
	for _, r := range rs {
		switch r.Mode {
		case "baseline":
			base = r.Throughput
		case "enqueue":
			enq = r.Throughput
		}
	}
	if base > 0 && enq > 0 {
		fmt.Fprintf(w, "enqueue/baseline throughput: %.2f\n", enq/base)
	}
}
