package server

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quicprochat/quicprochat/internal/admin"
	"github.com/quicprochat/quicprochat/internal/auth"
	"github.com/quicprochat/quicprochat/internal/config"
	"github.com/quicprochat/quicprochat/internal/delivery"
	"github.com/quicprochat/quicprochat/internal/keylog/logstore"
	"github.com/quicprochat/quicprochat/internal/secret"
	"github.com/quicprochat/quicprochat/internal/store"
	"github.com/quicprochat/quicprochat/internal/version"
)

// adminPart holds the admin service's state inside Server.
type adminPart struct {
	adminSrv *admin.Server
	dirLock  *admin.DirLock

	drainReq  chan struct{} // closed by requestDrain; Run drains as on SIGTERM
	drainOnce sync.Once

	backupMu       sync.Mutex
	pendingBackups map[string]admin.Manifest // db SHA-256 -> manifest, until qpcctl confirms
	rotateMu       sync.Mutex                // one key rotation at a time

	backupLast    prometheus.Gauge       // qpcd_backup_last_success_timestamp_seconds
	backupsTotal  *prometheus.CounterVec // qpcd_backups_total{result}
	dbKeyRotated  prometheus.Gauge       // qpcd_db_key_rotated_timestamp_seconds
	adminRequests *prometheus.CounterVec // qpcd_admin_operations_total{op,result}
}

// meta keys the admin service keeps in the database.
const (
	metaLastBackup   = admin.MetaLastBackup
	metaDBKeyRotated = "admin.db_key_rotated_at"
)

// lockDataDir takes the data-directory lock for the life of the process,
// so a second qpcd or a qpcctl restore cannot work on the same files.
func (s *Server) lockDataDir() error {
	l, err := admin.LockDataDir(s.cfg.DataDir, "qpcd")
	if err != nil {
		if errors.Is(err, admin.ErrLocked) {
			return fmt.Errorf("server: %w; another qpcd (or a qpcctl restore) uses data_dir %s: stop it, or give this qpcd its own data_dir / QPC_DATA_DIR", err, s.cfg.DataDir)
		}
		return fmt.Errorf("server: %w", err)
	}
	s.dirLock = l
	return nil
}

func (s *Server) unlockDataDir() error {
	err := s.dirLock.Unlock()
	s.dirLock = nil
	return err
}

// requestDrain starts the same graceful shutdown as SIGTERM.
func (s *Server) requestDrain() bool {
	first := false
	s.drainOnce.Do(func() {
		first = true
		if s.drainReq != nil {
			close(s.drainReq)
		}
	})
	return first
}

func (s *Server) initAdmin(ctx context.Context) error {
	s.drainReq = make(chan struct{})
	s.pendingBackups = map[string]admin.Manifest{}
	// Snapshots of backups cut short by a crash; we hold the data-dir lock,
	// so nobody else is using them.
	if left, _ := filepath.Glob(filepath.Join(s.cfg.DataDir, "backup-*.tmp")); len(left) > 0 {
		for _, f := range left {
			_ = os.Remove(f)
		}
		s.log.Info("removed backup snapshots left by an earlier run", "files", len(left))
	}
	if err := s.registerAdminMetrics(ctx); err != nil {
		return err
	}
	srv, err := admin.Listen(s.cfg.Admin.Socket, adminBackend{s}, s.log)
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	if s.tracing.Enabled() {
		srv.Trace(s.tracing.Tracer())
	}
	s.adminSrv = srv
	return nil
}

// serveAdmin starts answering on the admin socket (called by Run).
func (s *Server) serveAdmin() {
	if s.adminSrv == nil {
		return
	}
	go func() {
		if err := s.adminSrv.Serve(); err != nil {
			s.log.Error("admin socket failed; qpcctl cannot reach this qpcd", "err", err)
		}
	}()
}

func (s *Server) closeAdmin() error {
	if s.adminSrv == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.adminSrv.Shutdown(ctx)
	s.adminSrv = nil
	return err
}

func (s *Server) registerAdminMetrics(ctx context.Context) error {
	s.backupLast = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "qpcd_backup_last_success_timestamp_seconds",
		Help: "Time of the last backup qpcctl confirmed as written, in seconds since the Unix epoch; 0 if none.",
	})
	s.backupsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "qpcd_backups_total", Help: "Backup snapshots attempted through the admin API, by result (success, failure).",
	}, []string{"result"})
	s.dbKeyRotated = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "qpcd_db_key_rotated_timestamp_seconds",
		Help: "Time of the last database key rotation, in seconds since the Unix epoch; 0 if never rotated.",
	})
	s.adminRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "qpcd_admin_operations_total", Help: "Admin API operations that change state, by operation and result (success, failure).",
	}, []string{"op", "result"})
	tlsExpiry := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "qpcd_tls_cert_expiry_timestamp_seconds",
		Help: "NotAfter of the serving TLS certificate, in seconds since the Unix epoch.",
	}, func() float64 { return float64(s.certs.NotAfter().Unix()) })
	tokenAge := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "qpcd_token_key_age_seconds",
		Help: "Age of the active access-token signing key, in seconds.",
	}, func() float64 {
		_, created, err := s.activeTokenKey(context.Background())
		if err != nil || created.IsZero() {
			return 0
		}
		return s.now().Sub(created).Seconds()
	})
	fsAvail := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "qpcd_datadir_filesystem_avail_bytes",
		Help: "Bytes available to qpcd on the filesystem holding the data directory.",
	}, func() float64 { avail, _ := s.dataDirFS(); return avail })
	fsSize := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "qpcd_datadir_filesystem_size_bytes",
		Help: "Size of the filesystem holding the data directory, in bytes.",
	}, func() float64 { _, size := s.dataDirFS(); return size })
	connLimit := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "qpcd_connections_limit", Help: "Configured maximum of open QUIC connections (limits.max_connections).",
	})
	connLimit.Set(float64(s.cfg.Limits.MaxConnections))
	for _, r := range []string{"success", "failure"} {
		s.backupsTotal.WithLabelValues(r)
		for _, op := range []string{"backup", "rotate_db_key", "rotate_tls", "rotate_token_key", "drain"} {
			s.adminRequests.WithLabelValues(op, r)
		}
	}
	var errs []error
	for _, c := range []prometheus.Collector{s.backupLast, s.backupsTotal, s.dbKeyRotated, s.adminRequests, tlsExpiry, tokenAge, fsAvail, fsSize, connLimit} {
		if err := s.metrics.Registry.Register(c); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("server: registering admin metrics: %w", errors.Join(errs...))
	}
	if rec, err := s.lastBackup(ctx); err == nil && rec != nil {
		s.backupLast.Set(float64(rec.At.UnixNano()) / 1e9)
	}
	if v, err := s.metaGet(ctx, metaDBKeyRotated); err == nil && v != "" {
		if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
			s.dbKeyRotated.Set(float64(t.UnixNano()) / 1e9)
		}
	}
	return nil
}

// dataDirFS reports the data directory's filesystem: bytes available to
// an unprivileged user, and total size.
func (s *Server) dataDirFS() (avail, size float64) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(s.cfg.DataDir, &st); err != nil {
		return 0, 0
	}
	return float64(st.Bavail) * float64(st.Bsize), float64(st.Blocks) * float64(st.Bsize)
}

func (s *Server) countOp(op string, err error) {
	r := "success"
	if err != nil {
		r = "failure"
	}
	s.adminRequests.WithLabelValues(op, r).Inc()
}

// metaGet reads a value of the meta table ("" if absent).
func (s *Server) metaGet(ctx context.Context, key string) (string, error) {
	var v sql.NullString
	err := s.db.ReadTx(ctx, func(tx *sql.Tx) error {
		err := tx.QueryRowContext(ctx, "SELECT value FROM meta WHERE key = ?", key).Scan(&v)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		return err
	})
	return v.String, err
}

func (s *Server) metaSet(ctx context.Context, key, value string) error {
	return s.db.WriteTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value", key, value)
		return err
	})
}

func (s *Server) lastBackup(ctx context.Context) (*admin.BackupRecord, error) {
	v, err := s.metaGet(ctx, metaLastBackup)
	if err != nil || v == "" {
		return nil, err
	}
	var rec admin.BackupRecord
	if err := json.Unmarshal([]byte(v), &rec); err != nil {
		return nil, err
	}
	return &rec, nil
}

// activeTokenKey reads the active token-signing key's id and creation time.
func (s *Server) activeTokenKey(ctx context.Context) (string, time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var id string
	var created int64
	err := s.db.ReadTx(ctx, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, "SELECT id, created_at FROM token_keys WHERE active = 1 ORDER BY created_at DESC LIMIT 1").Scan(&id, &created)
	})
	if err != nil {
		return "", time.Time{}, err
	}
	return id, time.UnixMilli(created), nil
}

// adminBackend implements admin.Backend on the server.
type adminBackend struct{ s *Server }

var _ admin.Backend = adminBackend{}

func (b adminBackend) Status(ctx context.Context) (admin.Status, error) {
	s := b.s
	st := admin.Status{
		Version:        version.Version,
		Commit:         version.Commit,
		StartedAt:      s.started,
		Ready:          s.readiness() == nil,
		Readiness:      "ready",
		Connections:    s.ln.Connections(),
		DBPath:         s.db.Path(),
		Backend:        s.db.Backend(),
		DBKeyID:        s.db.KeyID(),
		TLSNotAfter:    s.certs.NotAfter(),
		TLSFingerprint: s.certs.Fingerprint(),
	}
	if !s.started.IsZero() {
		st.UptimeSeconds = s.now().Sub(s.started).Seconds()
	}
	if err := s.readiness(); err != nil {
		st.Readiness = err.Error()
	}
	st.DBBytes, _ = s.db.Size()
	nowMS := s.now().UnixMilli()
	err := s.db.ReadTx(ctx, func(tx *sql.Tx) error {
		count := func(q string, args ...any) int64 {
			var n int64
			if err := tx.QueryRowContext(ctx, q, args...).Scan(&n); err != nil {
				return -1 // table absent in this build
			}
			return n
		}
		st.Counts = admin.Counts{
			Accounts:       count("SELECT count(*) FROM accounts"),
			ActiveAccounts: count("SELECT count(*) FROM accounts WHERE status = 'active'"),
			Devices:        count("SELECT count(*) FROM devices"),
			ActiveDevices:  count("SELECT count(*) FROM devices WHERE status = 'active'"),
			Channels:       count("SELECT count(*) FROM channels"),
			Invites:        count("SELECT count(*) FROM invites WHERE used_by IS NULL AND revoked = 0 AND expires_at > ?", nowMS),
		}
		st.KeyPackages = admin.KeyPackageInfo{
			Pool:       count("SELECT count(*) FROM keypackages WHERE last_resort = 0 AND expires_at > ?", nowMS),
			LastResort: count("SELECT count(*) FROM keypackages WHERE last_resort = 1 AND expires_at > ?", nowMS),
		}
		return tx.QueryRowContext(ctx, "SELECT COALESCE(MAX(version), 0) FROM schema_migrations").Scan(&st.SchemaVersion)
	})
	if err != nil {
		return st, fmt.Errorf("%w: read counts: %v", admin.ErrUnavailable, err)
	}
	if suites, err := s.keydir.StockBySuite(ctx); err == nil {
		for _, x := range suites {
			st.KeyPackages.Suites = append(st.KeyPackages.Suites, admin.KeyPackageSuite{
				Suite: x.Suite.String(), ID: uint16(x.Suite), Allowed: x.Allowed, Pool: x.Pool, LastResort: x.LastResort})
		}
	}
	if rec, err := s.lastBackup(ctx); err == nil {
		st.LastBackup = rec
	}
	if id, created, err := s.activeTokenKey(ctx); err == nil {
		st.TokenKeyID, st.TokenKeySince = id, created.UTC()
	}
	st.SigningKeyID = s.auth.ActiveKeyID()
	st.NodeID = s.nodeID
	if nodes, err := s.nodes(ctx); err == nil {
		st.Nodes = nodes
	}
	return st, nil
}

// Snapshot takes an online snapshot into a temporary file in the data
// directory (same filesystem; removed by Release).
func (b adminBackend) Snapshot(ctx context.Context) (admin.Snapshot, error) {
	s := b.s
	snap, err := b.snapshot(ctx)
	s.countOp("backup", err)
	if err != nil {
		s.backupsTotal.WithLabelValues("failure").Inc()
		s.log.Error("backup snapshot failed", "err", err)
		return admin.Snapshot{}, err
	}
	s.backupsTotal.WithLabelValues("success").Inc()
	return snap, nil
}

func (b adminBackend) snapshot(ctx context.Context) (admin.Snapshot, error) {
	s := b.s
	rnd := make([]byte, 6)
	if _, err := rand.Read(rnd); err != nil {
		return admin.Snapshot{}, err
	}
	tmp := filepath.Join(s.cfg.DataDir, "backup-"+hex.EncodeToString(rnd)+".tmp")
	created := s.now().UTC()
	fr, err := s.db.Snapshot(ctx, tmp)
	if store.IsDiskFull(err) {
		return admin.Snapshot{}, fmt.Errorf("%w: not enough disk space for the backup snapshot: %v; the live database is unchanged and the partial snapshot was removed; qpcd writes the snapshot (about the database's size, %s) into its data directory %s before sending it: free space there and retry",
			admin.ErrNoSpace, err, sizeText(s.db), s.cfg.DataDir)
	}
	if err != nil {
		return admin.Snapshot{}, fmt.Errorf("%w: snapshot: %v (check free space in %s)", admin.ErrInternal, err, s.cfg.DataDir)
	}
	release := func() { _ = os.Remove(tmp) }
	sum, n, err := admin.FileSHA256(tmp)
	if err != nil {
		release()
		return admin.Snapshot{}, fmt.Errorf("%w: hash snapshot: %v", admin.ErrInternal, err)
	}
	m := admin.Manifest{
		Format:        admin.BackupFormat,
		QPCDVersion:   version.Version,
		SchemaVersion: fr.SchemaVersion,
		CreatedAt:     created,
		DBBytes:       n,
		DBSHA256:      sum,
		KeyID:         s.db.KeyID(),
		Tables:        fr.Tables,
	}
	s.backupMu.Lock()
	s.pendingBackups[sum] = m
	s.backupMu.Unlock()
	s.log.Info("backup snapshot taken", "bytes", n, "db_sha256", sum, "took", fr.Took.Round(time.Millisecond).String())
	return admin.Snapshot{Manifest: m, Path: tmp, Release: release}, nil
}

func (b adminBackend) BackupCompleted(ctx context.Context, c admin.BackupComplete) error {
	s := b.s
	s.backupMu.Lock()
	m, ok := s.pendingBackups[c.DBSHA256]
	delete(s.pendingBackups, c.DBSHA256)
	s.backupMu.Unlock()
	if !ok {
		return fmt.Errorf("%w: no backup with database SHA-256 %q was sent by this qpcd process; take a new backup", admin.ErrInvalid, c.DBSHA256)
	}
	rec := admin.BackupRecord{At: m.CreatedAt, Bytes: c.Bytes, DBSHA256: c.DBSHA256, File: c.File}
	js, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if err := s.metaSet(ctx, metaLastBackup, string(js)); err != nil {
		return fmt.Errorf("%w: record the backup: %v", admin.ErrUnavailable, err)
	}
	s.backupLast.Set(float64(m.CreatedAt.UnixNano()) / 1e9)
	s.audit.Event(ctx, "backup.created", slog.String("file", c.File), slog.Int64("bytes", c.Bytes), slog.String("db_sha256", c.DBSHA256))
	return nil
}

func (b adminBackend) RotateDBKey(ctx context.Context) (admin.RotateDBKeyResult, error) {
	s := b.s
	res, err := b.rotateDBKey(ctx)
	s.countOp("rotate_db_key", err)
	return res, err
}

func (b adminBackend) rotateDBKey(ctx context.Context) (admin.RotateDBKeyResult, error) {
	s := b.s
	if !s.cfg.DB.Key.IsZero() {
		return admin.RotateDBKeyResult{}, fmt.Errorf("%w: the database key is configured inline (db.key / QPC_DB_KEY); qpcctl can only rotate a key kept in db.key_file: move the key into a file, point db.key_file at it, restart qpcd, then rotate", admin.ErrConflict)
	}
	s.rotateMu.Lock()
	defer s.rotateMu.Unlock()
	start := s.now()
	keyFile := s.cfg.DB.KeyFile
	newFile := keyFile + ".new"
	raw := make([]byte, store.KeySize)
	if _, err := rand.Read(raw); err != nil {
		return admin.RotateDBKeyResult{}, fmt.Errorf("%w: random: %v", admin.ErrInternal, err)
	}
	newKey := secret.New(raw)
	defer newKey.Wipe()
	dir := filepath.Dir(keyFile)
	rep, err := s.db.Rekey(ctx, store.RekeyOptions{
		NewKey: newKey,
		Prepare: func() error {
			_ = os.Remove(newFile) // left by an interrupted rotation; never the live key
			if err := writeKeyFile(newFile, newKey); err != nil {
				return err
			}
			return store.SyncDir(dir)
		},
		Commit: func() error {
			if err := os.Rename(newFile, keyFile); err != nil {
				return fmt.Errorf("rename %s to %s: %w", newFile, keyFile, err)
			}
			return store.SyncDir(dir)
		},
	})
	if err != nil && store.IsDiskFull(err) && !strings.Contains(err.Error(), "now encrypted under the new key") {
		_ = os.Remove(newFile)
		dbDir := filepath.Dir(s.db.Path())
		return admin.RotateDBKeyResult{}, fmt.Errorf("%w: not enough disk space to rotate the database key: %v; the live database and its key are unchanged and the partial files were removed; the rotation writes a re-encrypted copy of the database (%s) into %s: free space there and retry",
			admin.ErrNoSpace, err, sizeText(s.db), dbDir)
	}
	if err != nil {
		_ = os.Remove(newFile)
		if errors.Is(err, store.ErrRekey) && strings.Contains(err.Error(), "now encrypted under the new key") {
			s.log.Error("database key rotation half done", "err", err)
		}
		return admin.RotateDBKeyResult{}, fmt.Errorf("%w: %v; the database is unchanged unless the message says otherwise, see qpcd's log", admin.ErrInternal, err)
	}
	at := s.now().UTC()
	_ = s.metaSet(ctx, metaDBKeyRotated, at.Format(time.RFC3339Nano))
	s.dbKeyRotated.Set(float64(at.UnixNano()) / 1e9)
	s.log.Info("database key rotated", "old_key_id", rep.OldKeyID, "new_key_id", rep.NewKeyID, "key_file", keyFile,
		"writes_paused", rep.Paused.Round(time.Millisecond).String())
	s.audit.Event(ctx, "db_key.rotate", slog.String("old_key_id", rep.OldKeyID), slog.String("new_key_id", rep.NewKeyID))
	return admin.RotateDBKeyResult{
		OldKeyID: rep.OldKeyID, NewKeyID: rep.NewKeyID, KeyFile: keyFile,
		DBBytes: rep.Bytes, Tables: rep.Tables,
		TookSeconds: s.now().Sub(start).Seconds(), PausedSeconds: rep.Paused.Seconds(),
	}, nil
}

func (b adminBackend) RotateTLS(ctx context.Context) (admin.RotateTLSResult, error) {
	s := b.s
	old := s.certs.Fingerprint()
	err := s.ReloadTLS()
	s.countOp("rotate_tls", err)
	if err != nil {
		return admin.RotateTLSResult{}, fmt.Errorf("%w: %v; qpcd keeps serving the current certificate: fix the files (PEM certificate chain and matching key) and retry", admin.ErrInvalid, err)
	}
	return admin.RotateTLSResult{
		OldFingerprint: old, Fingerprint: s.certs.Fingerprint(), NotAfter: s.certs.NotAfter(),
		CertFile: s.cfg.TLS.CertFile, Connections: s.ln.Connections(),
	}, nil
}

func (b adminBackend) RotateTokenKey(ctx context.Context) (admin.RotateTokenKeyResult, error) {
	s := b.s
	id, err := s.auth.RotateSigningKey(ctx)
	s.countOp("rotate_token_key", err)
	if err != nil {
		return admin.RotateTokenKeyResult{}, fmt.Errorf("%w: %v; the previous key stays active, see qpcd's log", admin.ErrInternal, err)
	}
	return admin.RotateTokenKeyResult{KeyID: id, OldKeysUntil: s.now().Add(s.cfg.Auth.AccessTokenTTL).UTC()}, nil
}

func (b adminBackend) Drain(ctx context.Context) (admin.DrainResult, error) {
	s := b.s
	first := s.requestDrain()
	s.countOp("drain", nil)
	if first {
		s.audit.Event(ctx, "admin.drain")
	}
	return admin.DrainResult{Connections: s.ln.Connections(), TimeoutSecs: s.cfg.Limits.DrainTimeout.Seconds(), AlreadyGoing: !first}, nil
}

// authErr maps auth's sentinels to the admin API's kinds.
func authErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, auth.ErrNotFound):
		return fmt.Errorf("%w: %v (list them with `qpcctl accounts list` / `qpcctl devices list`)", admin.ErrNotFound, err)
	case errors.Is(err, auth.ErrInvalidID):
		return fmt.Errorf("%w: %v (an id is 32 hex characters, as `qpcctl accounts list` / `qpcctl devices list` show them)", admin.ErrInvalid, err)
	case errors.Is(err, auth.ErrInvalidName):
		return fmt.Errorf("%w: %v", admin.ErrInvalid, err)
	}
	if strings.Contains(err.Error(), "want more than 0") {
		return fmt.Errorf("%w: %v", admin.ErrInvalid, err)
	}
	return fmt.Errorf("%w: %v; see qpcd's log", admin.ErrInternal, err)
}

func accountOut(a auth.Account) admin.Account {
	return admin.Account{ID: a.ID, Name: a.Name, Status: a.Status, CreatedAt: a.CreatedAt.UTC()}
}

func deviceOut(d auth.Device) admin.Device {
	out := admin.Device{ID: d.ID, AccountID: d.AccountID, AccountName: d.AccountName, Name: d.Name, Status: d.Status,
		SignatureKey: hex.EncodeToString(d.SignatureKey), CreatedAt: d.CreatedAt.UTC()}
	if !d.LastSeen.IsZero() {
		out.LastSeen = d.LastSeen.UTC()
	}
	return out
}

// resolveAccount finds an account by id or by name.
func (b adminBackend) resolveAccount(ctx context.Context, idOrName string) (auth.Account, error) {
	if idOrName == "" {
		return auth.Account{}, fmt.Errorf("%w: name an account (id or name)", admin.ErrInvalid)
	}
	if auth.ValidID(idOrName) {
		a, err := b.s.auth.GetAccount(ctx, idOrName)
		if err == nil || !errors.Is(err, auth.ErrNotFound) {
			return a, authErr(err)
		}
	}
	a, _, err := b.s.auth.LookupAccount(ctx, idOrName)
	return a, authErr(err)
}

func (b adminBackend) ListAccounts(ctx context.Context, after string, limit int) ([]admin.Account, error) {
	as, err := b.s.auth.ListAccounts(ctx, after, limit)
	if err != nil {
		return nil, authErr(err)
	}
	out := make([]admin.Account, 0, len(as))
	for _, a := range as {
		out = append(out, accountOut(a))
	}
	return out, nil
}

func (b adminBackend) GetAccount(ctx context.Context, idOrName string) (admin.Account, error) {
	a, err := b.resolveAccount(ctx, idOrName)
	if err != nil {
		return admin.Account{}, err
	}
	out := accountOut(a)
	devs, err := b.s.auth.ListDevices(ctx, a.ID)
	if err != nil {
		return admin.Account{}, authErr(err)
	}
	for _, d := range devs {
		out.Devices = append(out.Devices, deviceOut(d))
	}
	u, err := b.s.delivery.Usage(ctx, a.ID)
	if err != nil {
		return admin.Account{}, err
	}
	out.Usage = usageOut(u)
	return out, nil
}

// RecountUsage rebuilds the account's usage row from its stored data.
func (b adminBackend) RecountUsage(ctx context.Context, idOrName string) (admin.Account, error) {
	a, err := b.resolveAccount(ctx, idOrName)
	if err != nil {
		return admin.Account{}, err
	}
	if _, _, err := b.s.delivery.RecountUsage(ctx, a.ID); err != nil {
		return admin.Account{}, err
	}
	return b.GetAccount(ctx, a.ID)
}

// usageOut lists an account's usage against each quota.
func usageOut(au delivery.AccountUsage) []admin.UsageLimit {
	u, q := au.Usage, au.Quota
	row := func(limit string, bytes bool, used, quota int64) admin.UsageLimit {
		unit := "count"
		if bytes {
			unit = "bytes"
		}
		return admin.UsageLimit{Limit: limit, Unit: unit, Used: max(used, 0), Quota: quota, Option: delivery.QuotaOption(limit)}
	}
	return []admin.UsageLimit{
		row(delivery.LimitMessageBytes, true, u.MessageBytes, q.MessageBytes),
		row(delivery.LimitMessages, false, u.Messages, q.Messages),
		row(delivery.LimitInboxBytes, true, u.InboxBytes, q.InboxBytes),
		row(delivery.LimitInboxItems, false, u.InboxItems, q.InboxItems),
		row(delivery.LimitChannels, false, u.Channels, q.Channels),
	}
}

func (b adminBackend) SetAccountDisabled(ctx context.Context, idOrName string, disabled bool) (admin.Account, error) {
	a, err := b.resolveAccount(ctx, idOrName)
	if err != nil {
		return admin.Account{}, err
	}
	if disabled {
		err = b.s.auth.DisableAccount(ctx, a.ID)
	} else {
		err = b.s.auth.EnableAccount(ctx, a.ID)
	}
	if err != nil {
		return admin.Account{}, authErr(err)
	}
	return b.GetAccount(ctx, a.ID)
}

func (b adminBackend) ListDevices(ctx context.Context, account string) ([]admin.Device, error) {
	var accounts []auth.Account
	if account != "" {
		a, err := b.resolveAccount(ctx, account)
		if err != nil {
			return nil, err
		}
		accounts = []auth.Account{a}
	} else {
		as, err := b.s.auth.ListAccounts(ctx, "", 0)
		if err != nil {
			return nil, authErr(err)
		}
		accounts = as
	}
	out := []admin.Device{}
	for _, a := range accounts {
		devs, err := b.s.auth.ListDevices(ctx, a.ID)
		if err != nil {
			return nil, authErr(err)
		}
		for _, d := range devs {
			out = append(out, deviceOut(d))
		}
	}
	return out, nil
}

func (b adminBackend) RevokeDevice(ctx context.Context, deviceID string) error {
	return authErr(b.s.auth.AdminRevokeDevice(ctx, deviceID))
}

func inviteOut(inv auth.Invite, now time.Time) admin.Invite {
	out := admin.Invite{ID: inv.ID, CreatedBy: inv.CreatedBy, CreatedAt: inv.CreatedAt.UTC(), ExpiresAt: inv.ExpiresAt.UTC(),
		UsedBy: inv.UsedBy, Revoked: inv.Revoked}
	if !inv.UsedAt.IsZero() {
		out.UsedAt = inv.UsedAt.UTC()
	}
	switch {
	case inv.UsedBy != "":
		out.State = "used"
	case inv.Revoked:
		out.State = "revoked"
	case !now.Before(inv.ExpiresAt):
		out.State = "expired"
	default:
		out.State = "open"
	}
	return out
}

func (b adminBackend) CreateInvite(ctx context.Context, r admin.CreateInviteRequest) (admin.Invite, error) {
	by := r.CreatedBy
	if by == "" {
		by = "qpcctl"
	}
	ttl := time.Duration(r.TTLSeconds * float64(time.Second))
	code, inv, err := b.s.auth.CreateInvite(ctx, by, ttl)
	if err != nil {
		return admin.Invite{}, authErr(err)
	}
	out := inviteOut(inv, b.s.now())
	out.Code = code
	switch b.s.auth.Registration() {
	case config.RegistrationOpen:
		out.Warning = "auth.registration is open: anyone may register without this code, and it will not be used; set auth.registration: invite (QPC_AUTH_REGISTRATION=invite) to require invites"
	case config.RegistrationClosed:
		out.Warning = "auth.registration is closed: no one can register, with or without this code; set auth.registration: invite (QPC_AUTH_REGISTRATION=invite) for invites to work"
	}
	return out, nil
}

func (b adminBackend) ListInvites(ctx context.Context) ([]admin.Invite, error) {
	invs, err := b.s.auth.ListInvites(ctx)
	if err != nil {
		return nil, authErr(err)
	}
	out := make([]admin.Invite, 0, len(invs))
	names := map[string]string{}
	for _, inv := range invs {
		o := inviteOut(inv, b.s.now())
		if o.UsedBy != "" {
			o.UsedByName = b.accountName(ctx, o.UsedBy, names)
		}
		out = append(out, o)
	}
	return out, nil
}

func (b adminBackend) RevokeInvite(ctx context.Context, id string) error {
	err := b.s.auth.RevokeInvite(ctx, id)
	if errors.Is(err, auth.ErrNotFound) {
		return fmt.Errorf("%w: %v (list invites with `qpcctl invites list`)", admin.ErrNotFound, err)
	}
	return authErr(err)
}

// finishKeyRotation completes or rolls back a `rotate db-key` that a crash
// interrupted between replacing the database and replacing the key file:
// then <db.key_file>.new exists. If the database opens under that key, it
// becomes the key file; if it still opens under the old key, the new one is
// dropped. It runs in New before the key is loaded, with the data dir locked.
func (s *Server) finishKeyRotation(ctx context.Context, cfg config.Config) error {
	if !cfg.DB.Key.IsZero() || cfg.DB.KeyFile == "" {
		return nil
	}
	newFile := cfg.DB.KeyFile + ".new"
	if _, err := os.Stat(newFile); err != nil {
		return nil
	}
	dbPath := filepath.Join(cfg.DataDir, "qpcd.db")
	newKey, err := config.ReadKeyFile(newFile)
	if err != nil {
		return fmt.Errorf("server: %s is left from an interrupted database key rotation and unreadable: %w; if qpcd.db opens with %s, remove %s", newFile, err, cfg.DB.KeyFile, newFile)
	}
	defer newKey.Wipe()
	_, errNew := store.VerifyFile(ctx, dbPath, newKey)
	if errNew == nil {
		if err := os.Rename(newFile, cfg.DB.KeyFile); err != nil {
			return fmt.Errorf("server: finish the interrupted database key rotation: %w; rename %s to %s by hand", err, newFile, cfg.DB.KeyFile)
		}
		_ = store.SyncDir(filepath.Dir(cfg.DB.KeyFile))
		s.log.Warn("finished a database key rotation interrupted by a crash: the database is under the new key, now in the key file; back it up",
			"key_file", cfg.DB.KeyFile, "key_id", store.KeyID(newKey))
		return nil
	}
	oldKey, err := config.ReadKeyFile(cfg.DB.KeyFile)
	if err != nil {
		return fmt.Errorf("server: %w (a key rotation was interrupted; %s holds the new key)", err, newFile)
	}
	defer oldKey.Wipe()
	if _, errOld := store.VerifyFile(ctx, dbPath, oldKey); errOld != nil {
		// Neither key proves itself: keep both files for the operator.
		return fmt.Errorf("server: a database key rotation was interrupted and %s opens under neither %s (%v) nor %s (%v); keep both key files, and restore the last backup if the database is damaged", dbPath, cfg.DB.KeyFile, errOld, newFile, errNew)
	}
	s.log.Warn("dropping the new key of a database key rotation interrupted before the swap; the database is still under the old key",
		"file", newFile)
	if err := os.Remove(newFile); err != nil {
		return fmt.Errorf("server: remove %s: %w", newFile, err)
	}
	return nil
}

// deliveryErr maps delivery's sentinels to the admin API's kinds.
func deliveryErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, delivery.ErrNotFound):
		return fmt.Errorf("%w: no such channel (its id is the 32 hex characters qpc shows with `group members`)", admin.ErrNotFound)
	case errors.Is(err, delivery.ErrUnknownAccount):
		return fmt.Errorf("%w: %v (list accounts with `qpcctl accounts list`)", admin.ErrNotFound, err)
	case errors.Is(err, delivery.ErrInvalidRequest):
		return fmt.Errorf("%w: %v", admin.ErrInvalid, err)
	}
	return fmt.Errorf("%w: %v; see qpcd's log", admin.ErrInternal, err)
}

func channelID(hexID string) ([]byte, error) {
	id, err := hex.DecodeString(hexID)
	if err != nil || len(id) != delivery.ChannelIDSize {
		return nil, fmt.Errorf("%w: channel id %q is not %d hex characters", admin.ErrInvalid, hexID, 2*delivery.ChannelIDSize)
	}
	return id, nil
}

// accountName is an account id's name, or "" if it has none (any more).
func (b adminBackend) accountName(ctx context.Context, id string, cache map[string]string) string {
	if n, ok := cache[id]; ok {
		return n
	}
	a, err := b.s.auth.GetAccount(ctx, id)
	if err != nil {
		a.Name = ""
	}
	cache[id] = a.Name
	return a.Name
}

func (b adminBackend) GetChannel(ctx context.Context, hexID string, commits int) (admin.Channel, error) {
	id, err := channelID(hexID)
	if err != nil {
		return admin.Channel{}, err
	}
	ch, err := b.s.delivery.ChannelForAdmin(ctx, id, commits)
	if err != nil {
		return admin.Channel{}, deliveryErr(err)
	}
	names := map[string]string{}
	out := admin.Channel{ID: hex.EncodeToString(ch.ID), Kind: "group", GroupID: hex.EncodeToString(ch.GroupID),
		Epoch: ch.Epoch, HeadSeq: ch.HeadSeq, GroupInfoEpoch: ch.GroupInfoEpoch,
		Members: []admin.ChannelMember{}, Commits: []admin.ChannelCommit{}}
	if ch.Kind == delivery.KindDM {
		out.Kind = "dm"
	}
	for _, m := range ch.Members {
		out.Members = append(out.Members, admin.ChannelMember{AccountID: m.AccountID, AccountName: b.accountName(ctx, m.AccountID, names), DeviceID: m.DeviceID})
	}
	for _, c := range ch.Commits {
		out.Commits = append(out.Commits, admin.ChannelCommit{Seq: c.Seq, Epoch: c.Epoch, AccountID: c.SenderAccount,
			AccountName: b.accountName(ctx, c.SenderAccount, names), DeviceID: c.SenderDevice, Time: c.Time.UTC()})
	}
	return out, nil
}

func (b adminBackend) RevertEpoch(ctx context.Context, hexID string, r admin.RevertEpochRequest) (admin.RevertEpochResult, error) {
	id, err := channelID(hexID)
	if err != nil {
		return admin.RevertEpochResult{}, err
	}
	var remove auth.Account
	if r.RemoveAccount != "" {
		if remove, err = b.resolveAccount(ctx, r.RemoveAccount); err != nil {
			return admin.RevertEpochResult{}, err
		}
	}
	res, err := b.s.delivery.RevertEpoch(ctx, id, r.To, remove.ID, "admin")
	if err != nil {
		return admin.RevertEpochResult{}, deliveryErr(err)
	}
	return admin.RevertEpochResult{ChannelID: hex.EncodeToString(id), From: res.From, To: res.To,
		GroupInfoCleared: res.GroupInfoCleared, RemovedAccount: remove.Name, RemovedMemberships: res.Removed}, nil
}

// sizeText is the database's size on disk for messages ("unknown" if it
// cannot be read).
func sizeText(db *store.DB) string {
	n, err := db.Size()
	if err != nil {
		return "unknown"
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}

func (b adminBackend) KeyLogStatus(ctx context.Context) (admin.KeyLogStatus, error) {
	st, err := logstore.ReadStatus(ctx, b.s.db)
	if err != nil {
		return admin.KeyLogStatus{}, err
	}
	return admin.KeyLogStatus(st), nil
}

func (b adminBackend) KeyLogVerify(ctx context.Context) (admin.KeyLogReport, error) {
	rep, err := logstore.Verify(ctx, b.s.db)
	if err != nil {
		return admin.KeyLogReport{}, err
	}
	// The operator's check feeds the same metric as the periodic one.
	g := &b.s.keyLogGauge
	g.checked.Set(float64(b.s.now().Unix()))
	g.entries.Set(float64(rep.Entries))
	if rep.OK {
		g.consistent.Set(1)
	} else {
		g.consistent.Set(0)
		g.failures.Inc()
	}
	return admin.KeyLogReport(rep), nil
}
