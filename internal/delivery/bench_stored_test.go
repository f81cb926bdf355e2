package delivery

import (
	"context"
	"crypto/rand"
	"database/sql"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	dt "github.com/quicprochat/quicprochat/internal/delivery/deliverytest"
	"github.com/quicprochat/quicprochat/internal/secret"
	"github.com/quicprochat/quicprochat/internal/store"
	"github.com/quicprochat/quicprochat/internal/store/pgtest"
	"github.com/quicprochat/quicprochat/internal/store/storetest"
)

// BenchmarkEnqueueStoredMessages: one sender's enqueue latency into a
// channel of an empty database and into one of a database already holding
// QPC_BENCH_STORED messages (default 100 000, 10 000 with -short;
// docs/benchmarks.md ran 1 and 10 million), issue 17: no more than 20 %
// slower. Both databases are open at once and the enqueues alternate
// between them, so a change in the machine's load falls on both alike; the
// metrics are each database's mean, median and p99 and the ratios
// stored/empty (ns/op is the mean over both and says little).
//
// The stored log is bulk-loaded in the shape qpcd writes it (preloadLog):
// rows of the messages table spread over many channels with a skewed
// (Zipf) size distribution, per-channel sequence numbers, UUIDv7 message
// ids, created_at spread over the retention window and expires_at one
// retention later, the channels' head_seq and the senders' account_usage
// rows updated to match. The benchmark channel is the busiest one.
// PostgreSQL runs on a cluster of its own on disk with fsync on, like
// SQLCipher's file (synchronous=FULL): both backends are measured durable.
func BenchmarkEnqueueStoredMessages(b *testing.B) {
	stored := 100_000
	if testing.Short() {
		stored = 10_000
	}
	if s := os.Getenv("QPC_BENCH_STORED"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			b.Fatalf("QPC_BENCH_STORED=%q: want a count of at least 1", s)
		}
		stored = n
	}
	open := openStoredBenchSQLCipher(b)
	if storetest.Postgres() {
		open = openStoredBenchPostgres(b)
	}
	empty := newStoredLog(b, open("empty"))
	full := newStoredLog(b, open("stored"))
	took, err := preloadLog(ctx, full, stored)
	if err != nil {
		b.Fatalf("preload %d messages: %v", stored, err)
	}
	size, err := full.e.db.Size()
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("%s: preloaded %d messages in %s (%.0f per s); database %d MiB",
		full.e.db.Backend(), stored, took.Round(time.Millisecond), float64(stored)/took.Seconds(), size>>20)
	// Statement preparation and the first page reads are not what is asked.
	for range 50 {
		empty.enqueue(b)
		full.enqueue(b)
	}
	storedStatements(b, "SELECT pg_stat_statements_reset()")
	defer storedStatements(b, storedStatementsReport)
	b.Run(fmt.Sprintf("stored=%d", stored), func(b *testing.B) {
		logs := [2]*storedLog{empty, full}
		for _, l := range logs {
			l.lat = make([]time.Duration, 0, b.N/2+1)
		}
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			// Pairs in alternating order (empty, stored, stored, empty, ...):
			// neither database always follows the other.
			logs[(i^(i>>1))%2].enqueue(b)
		}
		b.StopTimer()
		if len(full.lat) == 0 {
			return
		}
		e, f := latencyStats(empty.lat), latencyStats(full.lat)
		b.ReportMetric(e.mean, "empty-mean-µs")
		b.ReportMetric(e.p50, "empty-p50-µs")
		b.ReportMetric(e.p99, "empty-p99-µs")
		b.ReportMetric(f.mean, "stored-mean-µs")
		b.ReportMetric(f.p50, "stored-p50-µs")
		b.ReportMetric(f.p99, "stored-p99-µs")
		b.ReportMetric(f.p50/e.p50, "p50-ratio")
		b.ReportMetric(f.p99/e.p99, "p99-ratio")
		b.ReportMetric(float64(took.Milliseconds())/1000, "preload-s")
		b.ReportMetric(float64(size>>20), "db-MiB")
	})
}

type latStats struct{ mean, p50, p99 float64 }

// latencyStats sorts lat and returns its mean, median and p99 in µs.
func latencyStats(lat []time.Duration) latStats {
	slices.Sort(lat)
	var sum time.Duration
	for _, d := range lat {
		sum += d
	}
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
	return latStats{mean: us(sum) / float64(len(lat)), p50: us(lat[len(lat)/2]), p99: us(lat[len(lat)*99/100])}
}

// storedLog is one database of BenchmarkEnqueueStoredMessages with the
// channel the benchmark enqueues into.
type storedLog struct {
	e     *env
	dsn   string // PostgreSQL: for the bulk load's own connection
	owner user
	ch    Channel
	group []byte
	msg   []byte
	n     int // message ids used
	lat   []time.Duration
}

// storedBenchDB is an open database and, on PostgreSQL, its DSN.
type storedBenchDB struct {
	db  *store.DB
	dsn string
}

func openStoredBenchSQLCipher(b *testing.B) func(name string) storedBenchDB {
	dir := b.TempDir()
	return func(name string) storedBenchDB {
		key := make([]byte, store.KeySize)
		if _, err := rand.Read(key); err != nil {
			b.Fatal(err)
		}
		db, err := store.Open(ctx, store.Options{Path: dir + "/" + name + ".db", Key: secret.New(key)})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = db.Close() })
		return storedBenchDB{db: db}
	}
}

// openStoredBenchPostgres starts a cluster of the benchmark's own, on disk
// under TMPDIR (the shared test cluster lives in memory, where ten million
// messages do not fit) with fsync on and the shared_buffers of
// scripts/bench-peers.sh.
func openStoredBenchPostgres(b *testing.B) func(name string) storedBenchDB {
	conf := map[string]string{"shared_buffers": "256MB", "max_wal_size": "4GB", "checkpoint_timeout": "15min"}
	statements := os.Getenv("QPC_BENCH_STORED_STATEMENTS") != ""
	if statements {
		conf["shared_preload_libraries"] = "pg_stat_statements"
		conf["pg_stat_statements.track"] = "all" // inside qpc_enqueue_lock too
		conf["track_io_timing"] = "on"
	}
	c, err := pgtest.Start(ctx, pgtest.Options{Fsync: true, Conf: conf})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := c.Stop(); err != nil {
			b.Error(err)
		}
	})
	return func(name string) storedBenchDB {
		dsn, err := c.CreateDatabase(ctx, "bench_"+name)
		if err != nil {
			b.Fatal(err)
		}
		db, err := store.OpenPostgres(ctx, store.PostgresOptions{DSN: secret.New([]byte(dsn)), MaxConns: 8, MinConns: 1})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = db.Close() })
		if statements && storedStatementsDSN == "" {
			conn, err := pgx.Connect(ctx, dsn)
			if err != nil {
				b.Fatal(err)
			}
			_, err = conn.Exec(ctx, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
			_ = conn.Close(ctx)
			if err != nil {
				b.Fatal(err)
			}
			storedStatementsDSN = dsn
		}
		return storedBenchDB{db: db, dsn: dsn}
	}
}

func newStoredLog(b *testing.B, d storedBenchDB) *storedLog {
	e := &env{db: d.db, dir: &fakeDir{accounts: map[string]Account{}, devices: map[string]Device{}}, clock: newClock(), reg: prometheus.NewRegistry()}
	svc, err := New(Options{DB: d.db, Directory: e.dir, Now: e.clock.Now, EpochsBehind: 2, SweepInterval: -1, Registry: e.reg, MaxPayload: 1 << 20})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = svc.Close() })
	e.svc = svc
	l := &storedLog{e: e, dsn: d.dsn, owner: e.dir.add("owner", "o1"), group: groupID()}
	if l.ch, _, err = svc.CreateGroup(ctx, l.owner.Caller, l.group, 0); err != nil {
		b.Fatal(err)
	}
	l.msg = dt.Application(l.group, 0, 1024)
	return l
}

func (l *storedLog) enqueue(b *testing.B) {
	l.n++
	start := time.Now()
	if _, err := l.e.svc.Enqueue(ctx, l.owner.Caller, l.ch.ID, "m"+strconv.Itoa(l.n), l.msg, nil); err != nil {
		b.Fatal(err)
	}
	l.lat = append(l.lat, time.Since(start))
}

// storedRow is one message row of the preload, as Enqueue writes it.
type storedRow struct {
	channel          []byte
	seq              int64
	messageID        string
	sender, device   string
	created, expires int64
	body             []byte
}

// preloadGen produces the stored log in time order: n messages over
// max(1, n/1000) channels whose sizes follow a Zipf law (s = 1.1; the
// first, l's own channel, is the busiest: about 15 % of ten million), from
// max(1, channels/10) sender accounts, created evenly over the retention
// window that ends at l's clock.
type preloadGen struct {
	n, i      int
	channels  [][]byte
	heads     []int64
	senders   int
	zipf      *mrand.Zipf
	rng       *mrand.Rand
	t0, step  float64 // created_at of row i: t0 + i*step (ms)
	retention int64   // ms
	body      []byte
	usage     map[string]Usage
}

func newPreloadGen(l *storedLog, n int) *preloadGen {
	nch := max(1, n/1000)
	g := &preloadGen{n: n, channels: make([][]byte, nch), heads: make([]int64, nch), senders: max(1, nch/10),
		rng: mrand.New(mrand.NewPCG(1, 2)), retention: l.e.svc.retention.Milliseconds(), body: l.msg, usage: map[string]Usage{}}
	g.channels[0] = l.ch.ID
	g.heads[0] = int64(l.ch.HeadSeq)
	for i := 1; i < nch; i++ {
		g.channels[i] = make([]byte, ChannelIDSize)
		_, _ = rand.Read(g.channels[i])
	}
	if nch > 1 {
		g.zipf = mrand.NewZipf(g.rng, 1.1, 1, uint64(nch-1))
	}
	now := float64(l.e.clock.Now().UnixMilli())
	g.step = float64(g.retention) * 0.99 / float64(n)
	g.t0 = now - float64(n)*g.step
	return g
}

// next returns the next row, or false after n.
func (g *preloadGen) next() (storedRow, bool) {
	if g.i == g.n {
		return storedRow{}, false
	}
	c := 0
	if g.zipf != nil {
		c = int(g.zipf.Uint64())
	}
	g.heads[c]++
	created := int64(g.t0 + float64(g.i)*g.step)
	g.i++
	s := g.rng.IntN(g.senders)
	r := storedRow{channel: g.channels[c], seq: g.heads[c], messageID: uuidV7At(created, g.rng),
		sender: "acct-s" + strconv.Itoa(s), device: "dev-s" + strconv.Itoa(s),
		created: created, expires: created + g.retention, body: g.body}
	u := g.usage[r.sender]
	u.MessageBytes += int64(len(r.body))
	u.Messages++
	g.usage[r.sender] = u
	return r, true
}

// uuidV7At formats a version 7 UUID carrying ms, as clients make message ids.
func uuidV7At(ms int64, rng *mrand.Rand) string {
	a, c := rng.Uint64(), rng.Uint64()
	return fmt.Sprintf("%08x-%04x-7%03x-%04x-%012x", uint64(ms)>>16, uint64(ms)&0xffff, a&0xfff,
		0x8000|(a>>12)&0x3fff, c&0xffffffffffff)
}

// preloadLog bulk-loads n messages into l's database (newPreloadGen)
// straight into the tables in large transactions, then creates the other
// channels with their creators as members and brings head_seq and
// account_usage up to date. It returns the time taken.
func preloadLog(ctx context.Context, l *storedLog, n int) (time.Duration, error) {
	start := time.Now()
	g := newPreloadGen(l, n)
	var err error
	if l.e.db.Backend() == store.BackendPostgres {
		err = preloadPG(ctx, l, g)
	} else {
		err = preloadSQLite(ctx, l, g)
	}
	if err != nil {
		return 0, err
	}
	err = l.e.db.WriteTx(ctx, func(tx *sql.Tx) error {
		for i, id := range g.channels {
			if i == 0 {
				if _, err := tx.ExecContext(ctx, `UPDATE channels SET head_seq = ? WHERE id = ?`, g.heads[0], id); err != nil {
					return err
				}
				continue
			}
			creator := "acct-s" + strconv.Itoa(i%g.senders)
			gid := make([]byte, GroupIDSize)
			_, _ = rand.Read(gid)
			if _, err := tx.ExecContext(ctx, `INSERT INTO channels (id, kind, group_id, epoch, head_seq, ttl_ms, created_by, created_at)
				VALUES (?, 1, ?, 0, ?, 0, ?, ?)`, id, gid, g.heads[i], creator, int64(g.t0)); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO channel_members (channel_id, account_id, device_id, from_seq, added_by, added_at)
				VALUES (?, ?, '', 0, ?, ?)`, id, creator, creator, int64(g.t0)); err != nil {
				return err
			}
		}
		for acct, u := range g.usage {
			if _, err := tx.ExecContext(ctx, `INSERT INTO account_usage (account_id, message_bytes, messages, channels) VALUES (?, ?, ?, 0)
				ON CONFLICT (account_id) DO UPDATE SET message_bytes = account_usage.message_bytes + excluded.message_bytes,
					messages = account_usage.messages + excluded.messages`, acct, u.MessageBytes, u.Messages); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	if l.e.db.Backend() == store.BackendPostgres {
		// What autovacuum would do after a load this size, done now rather
		// than in the middle of the measurement.
		conn, err := pgx.Connect(ctx, l.dsn)
		if err != nil {
			return 0, err
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, `VACUUM (ANALYZE) messages`); err != nil {
			return 0, err
		}
		// The load and the vacuum leave gigabytes of dirty buffers; a
		// server that has held its log for a while has written them back.
		// Without this the measurement ran inside the load's checkpoints.
		if _, err := conn.Exec(ctx, `CHECKPOINT`); err != nil {
			return 0, err
		}
	}
	return time.Since(start), nil
}

// preloadSQLite inserts 100 000 rows per transaction through the store's
// writer, 500 per INSERT statement, with a 256 MiB page cache for the
// load (the default 2 MB one would spill at every channel's index edge)
// set back afterwards. The store's writer keeps synchronous=FULL (it
// cannot change inside a transaction): each commit fsyncs.
func preloadSQLite(ctx context.Context, l *storedLog, g *preloadGen) error {
	const perStmt, perTx, cols = 500, 100_000, 8
	var oldCache int64
	if err := l.e.db.WriteTx(ctx, func(tx *sql.Tx) error {
		if err := tx.QueryRowContext(ctx, `PRAGMA cache_size`).Scan(&oldCache); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `PRAGMA cache_size = -262144`)
		return err
	}); err != nil {
		return err
	}
	defer func() {
		_ = l.e.db.WriteTx(ctx, func(tx *sql.Tx) error {
			_, err := tx.ExecContext(ctx, `PRAGMA cache_size = `+strconv.FormatInt(oldCache, 10))
			return err
		})
	}()
	q := `INSERT INTO messages (channel_id, seq, message_id, sender_account, sender_device, epoch, content_type, created_at, expires_at, body) VALUES `
	one := `(?, ?, ?, ?, ?, 0, 1, ?, ?, ?)`
	stmtFor := func(rows int) string {
		s := q + one
		for range rows - 1 {
			s += ", " + one
		}
		return s
	}
	args := make([]any, 0, perStmt*cols)
	for g.i < g.n {
		ran := false
		err := l.e.db.WriteTx(ctx, func(tx *sql.Tx) error {
			if ran {
				// The rows were drawn from g: a re-run cannot repeat them.
				return errors.New("preload: the store re-ran a bulk insert transaction")
			}
			ran = true
			var full *sql.Stmt
			defer func() {
				if full != nil {
					_ = full.Close()
				}
			}()
			for done := 0; done < perTx && g.i < g.n; {
				args = args[:0]
				rows := 0
				for rows < perStmt {
					r, ok := g.next()
					if !ok {
						break
					}
					args = append(args, r.channel, r.seq, r.messageID, r.sender, r.device, r.created, r.expires, r.body)
					rows++
				}
				done += rows
				if rows == perStmt {
					if full == nil {
						var err error
						if full, err = tx.PrepareContext(ctx, stmtFor(perStmt)); err != nil {
							return err
						}
					}
					if _, err := full.ExecContext(ctx, args...); err != nil {
						return err
					}
					continue
				}
				if _, err := tx.ExecContext(ctx, stmtFor(rows), args...); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// preloadPG copies the rows with COPY on a connection of its own, 500 000
// rows per COPY (each its own transaction).
func preloadPG(ctx context.Context, l *storedLog, g *preloadGen) error {
	conn, err := pgx.Connect(ctx, l.dsn)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	cols := []string{"channel_id", "seq", "message_id", "sender_account", "sender_device", "epoch", "content_type", "created_at", "expires_at", "body"}
	const perCopy = 500_000
	for g.i < g.n {
		left := perCopy
		_, err := conn.CopyFrom(ctx, pgx.Identifier{"messages"}, cols, pgx.CopyFromFunc(func() ([]any, error) {
			if left == 0 {
				return nil, nil
			}
			r, ok := g.next()
			if !ok {
				return nil, nil
			}
			left--
			return []any{r.channel, r.seq, r.messageID, r.sender, r.device, int64(0), int32(1), r.created, r.expires, r.body}, nil
		}))
		if err != nil {
			return err
		}
	}
	return nil
}

// storedStatementsDSN is set, on PostgreSQL with
// QPC_BENCH_STORED_STATEMENTS=1, to a database of the benchmark's cluster
// where pg_stat_statements is installed: the statement counts are reset
// before the timed enqueues and logged per database after them, to show
// which statement an enqueue into the stored database spends its extra
// time in (docs/benchmarks.md, "10 million stored messages").
var storedStatementsDSN string

// storedStatementsReport is each statement's cost per call in both
// databases, the statements inside qpc_enqueue_lock included: time, pages
// found in and read into shared_buffers, pages dirtied, and full-page
// images and bytes written to the WAL.
const storedStatementsReport = `SELECT format('%-12s calls %6s  exec %8s µs  plan %6s µs  hit %6s  read %5s (%6s µs)  dirtied %5s  wal fpi %5s  wal %7s B  %s',
	d.datname, s.calls, round((s.mean_exec_time * 1000)::numeric, 1), round((s.mean_plan_time * 1000)::numeric, 1),
	round(s.shared_blks_hit::numeric / s.calls, 1), round(s.shared_blks_read::numeric / s.calls, 2),
	round((s.blk_read_time * 1000 / s.calls)::numeric, 1), round(s.shared_blks_dirtied::numeric / s.calls, 2),
	round(s.wal_fpi::numeric / s.calls, 2), round(s.wal_bytes / s.calls, 0), left(regexp_replace(s.query, '\s+', ' ', 'g'), 70))
	FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
	WHERE d.datname LIKE 'bench_%' AND s.calls >= 100 ORDER BY left(s.query, 70), d.datname`

// storedStatements runs q on the statements database, if there is one,
// logging each row it returns.
func storedStatements(b *testing.B, q string) {
	if storedStatementsDSN == "" {
		return
	}
	conn, err := pgx.Connect(ctx, storedStatementsDSN)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, q)
	if err != nil {
		b.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var line any
		if err := rows.Scan(&line); err != nil {
			b.Fatal(err)
		}
		if str, ok := line.(string); ok && str != "" {
			b.Log(str)
		}
	}
	if err := rows.Err(); err != nil {
		b.Fatal(err)
	}
}
