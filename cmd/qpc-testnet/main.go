// Command qpc-testnet holds the parts of the local multi-node testnet
// (scripts/testnet.sh, `make testnet`) that the shell cannot do well:
//
//	qpc-testnet postgres --dsn-file FILE [--dir-file FILE] [--standby sync|async]
//	qpc-testnet port
//	qpc-testnet cert --dir DIR
//
// postgres starts a throwaway PostgreSQL server with internal/store/pgtest
// (the one the tests use: a fresh directory, loopback only, a free port,
// SCRAM, run as the "postgres" user when started as root), creates the
// database "qpc", writes its connection string to FILE (mode 0600; written
// last, so its presence means ready) and the cluster directory to
// --dir-file, then waits: SIGTERM or SIGINT stops the server and removes
// its directory. port prints a TCP port on 127.0.0.1 that was free a
// moment ago. cert writes DIR/cert.pem and DIR/key.pem, the self-signed
// certificate for localhost that qpcd generates on a first start, unless
// they exist: docker-compose.yml runs it once so that every qpcd replica
// serves the same certificate.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/quicprochat/quicprochat/internal/store/pgtest"
	"github.com/quicprochat/quicprochat/internal/tracing/jaegertest"
	"github.com/quicprochat/quicprochat/internal/transport"
)

const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: qpc-testnet postgres --dsn-file FILE [--dir-file FILE] [--standby sync|async] | qpc-testnet port | qpc-testnet cert --dir DIR | qpc-testnet jaeger-config --otlp-grpc P --otlp-http P --query P --query-grpc P")
		return exitUsage
	}
	switch args[0] {
	case "postgres":
		return runPostgres(args[1:], stderr)
	case "port":
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			fmt.Fprintf(stderr, "qpc-testnet port: %v\n", err)
			return exitFailure
		}
		defer l.Close()
		fmt.Fprintln(stdout, l.Addr().(*net.TCPAddr).Port)
		return exitOK
	case "cert":
		return runCert(args[1:], stdout, stderr)
	case "jaeger-config":
		return runJaegerConfig(args[1:], stdout, stderr)
	default:
		fmt.Fprintf(stderr, "qpc-testnet: unknown command %q (want postgres, port, cert or jaeger-config)\n", args[0])
		return exitUsage
	}
}

func runPostgres(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("qpc-testnet postgres", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dsnFile := fs.String("dsn-file", "", "write the database's connection string here once it is ready (mode 0600)")
	dirFile := fs.String("dir-file", "", "write the cluster directories here, one per line (for cleaning up after a SIGKILL)")
	standby := fs.String("standby", "", "also run a streaming-replication standby: sync (commits wait for it) or async; the connection string then names both hosts")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if *dsnFile == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "qpc-testnet postgres: --dsn-file is required, and no arguments")
		return exitUsage
	}
	if *standby != "" && *standby != "sync" && *standby != "async" {
		fmt.Fprintf(stderr, "qpc-testnet postgres: --standby %q: want sync or async\n", *standby)
		return exitUsage
	}
	// Signals that arrive while the server starts stop it right after.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	srv, err := startPostgres(ctx, *standby)
	if err != nil {
		cancel()
		fmt.Fprintf(stderr, "qpc-testnet postgres: %v\n", err)
		return exitFailure
	}
	dsn, err := srv.primary().CreateDatabase(ctx, "qpc")
	cancel()
	if srv.replicated != nil && err == nil {
		// Both hosts, the read-write one chosen at connect: what qpcd
		// needs to follow a promotion by itself.
		dsn = srv.replicated.DSN("qpc")
	}
	if err == nil && *dirFile != "" {
		err = writeAtomic(*dirFile, strings.Join(srv.dirs(), "\n")+"\n")
	}
	if err == nil {
		err = writeAtomic(*dsnFile, dsn+"\n")
	}
	if err != nil {
		fmt.Fprintf(stderr, "qpc-testnet postgres: %v\n", errors.Join(err, srv.stop()))
		return exitFailure
	}
	fmt.Fprintf(stderr, "qpc-testnet postgres: %s; SIGTERM stops it\n", srv.describe())

	s := <-sig
	fmt.Fprintf(stderr, "qpc-testnet postgres: %v: stopping PostgreSQL\n", s)
	if err := srv.stop(); err != nil {
		fmt.Fprintf(stderr, "qpc-testnet postgres: %v\n", err)
		return exitFailure
	}
	return exitOK
}

func runCert(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("qpc-testnet cert", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "", "directory for cert.pem and key.pem")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if *dir == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "qpc-testnet cert: --dir is required, and no arguments")
		return exitUsage
	}
	cert, key := filepath.Join(*dir, "cert.pem"), filepath.Join(*dir, "key.pem")
	made, err := transport.EnsureDevCertificate(cert, key, time.Now())
	if err != nil {
		fmt.Fprintf(stderr, "qpc-testnet cert: %v\n", err)
		return exitFailure
	}
	if made {
		fmt.Fprintf(stdout, "wrote %s and %s\n", cert, key)
	} else {
		fmt.Fprintf(stdout, "%s exists; kept\n", cert)
	}
	return exitOK
}

// writeAtomic writes a 0600 file through a rename, so a reader never sees
// it half written.
func writeAtomic(path, body string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".qpc-testnet-*")
	if err != nil {
		return err
	}
	_, err = tmp.WriteString(body)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}

// testnetPostgres is the testnet's database: one server, or a primary and
// its standby.
type testnetPostgres struct {
	single     *pgtest.Cluster
	replicated *pgtest.Replicated
}

func startPostgres(ctx context.Context, standby string) (*testnetPostgres, error) {
	if standby == "" {
		c, err := pgtest.Start(ctx, pgtest.Options{})
		return &testnetPostgres{single: c}, err
	}
	r, err := pgtest.StartReplicated(ctx, pgtest.ReplicationOptions{Synchronous: standby == "sync"})
	return &testnetPostgres{replicated: r}, err
}

func (p *testnetPostgres) primary() *pgtest.Cluster {
	if p.replicated != nil {
		return p.replicated.Primary
	}
	return p.single
}

func (p *testnetPostgres) dirs() []string {
	if p.replicated != nil {
		return []string{p.replicated.Primary.Dir, p.replicated.Standby.Dir}
	}
	return []string{p.single.Dir}
}

func (p *testnetPostgres) describe() string {
	if r := p.replicated; r != nil {
		mode := "asynchronous"
		if r.Synchronous {
			mode = "synchronous"
		}
		return fmt.Sprintf("PostgreSQL primary on %s:%d in %s, %s standby on %s:%d in %s, database qpc",
			r.Primary.Host, r.Primary.Port, r.Primary.Dir, mode, r.Standby.Host, r.Standby.Port, r.Standby.Dir)
	}
	c := p.single
	return fmt.Sprintf("PostgreSQL on %s:%d in %s, database qpc", c.Host, c.Port, c.Dir)
}

func (p *testnetPostgres) stop() error {
	if p.replicated != nil {
		return p.replicated.Stop()
	}
	return p.single.Stop()
}

// runJaegerConfig prints the Jaeger all-in-one configuration the tracing
// tests run (jaegertest.Config), for the given loopback ports.
func runJaegerConfig(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("qpc-testnet jaeger-config", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var p jaegertest.Ports
	fs.IntVar(&p.OTLPGRPC, "otlp-grpc", 0, "OTLP/gRPC receiver port")
	fs.IntVar(&p.OTLPHTTP, "otlp-http", 0, "OTLP/HTTP receiver port")
	fs.IntVar(&p.Query, "query", 0, "query API and UI port")
	fs.IntVar(&p.QueryGRPC, "query-grpc", 0, "query gRPC API port")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	for _, port := range []int{p.OTLPGRPC, p.OTLPHTTP, p.Query, p.QueryGRPC} {
		if port <= 0 || port > 65535 || fs.NArg() > 0 {
			fmt.Fprintln(stderr, "qpc-testnet jaeger-config: --otlp-grpc, --otlp-http, --query and --query-grpc are required ports (1-65535), and no arguments")
			return exitUsage
		}
	}
	fmt.Fprint(stdout, jaegertest.Config(p, 100000))
	return exitOK
}
