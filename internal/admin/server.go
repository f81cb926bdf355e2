package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Server serves the admin API on a Unix socket.
type Server struct {
	b    Backend
	log  *slog.Logger
	ln   net.Listener
	http *http.Server
	path string
}

// Listen creates the admin socket at path (mode 0600; the parent directory
// is created 0700 when missing) and returns a Server ready to Serve. A stale
// socket file (nothing listening) is replaced; a live one is an error.
func Listen(path string, b Backend, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dir := filepath.Dir(path)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("admin: create socket directory %s: %w (set admin.socket / QPC_ADMIN_SOCKET to a writable path)", dir, err)
		}
	}
	if st, err := os.Stat(dir); err == nil && st.Mode().Perm()&0o077 != 0 {
		log.Warn("admin: socket directory is accessible to group or others; the socket itself is 0600, chmod 700 the directory", "dir", dir, "mode", st.Mode().Perm().String())
	}
	if st, err := os.Lstat(path); err == nil {
		if st.Mode()&fs.ModeSocket == 0 {
			return nil, fmt.Errorf("admin: %s exists and is not a socket; remove it or set admin.socket / QPC_ADMIN_SOCKET elsewhere", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("admin: another process serves the admin socket %s; stop it or set admin.socket / QPC_ADMIN_SOCKET elsewhere", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("admin: remove stale socket %s: %w", path, err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("admin: listen on %s: %w (set admin.socket / QPC_ADMIN_SOCKET to a writable path)", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("admin: chmod 600 %s: %w", path, err)
	}
	s := &Server{b: b, log: log, ln: ln, path: path}
	s.http = &http.Server{
		Handler:           s.handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ConnContext:       peerContext,
	}
	return s, nil
}

// Path is the socket's path.
func (s *Server) Path() string { return s.path }

// Serve serves until Shutdown; it returns nil after Shutdown.
func (s *Server) Serve() error {
	if err := s.http.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("admin: serve %s: %w", s.path, err)
	}
	return nil
}

// Shutdown stops accepting, waits (up to ctx) for running requests and
// removes the socket file.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.http.Shutdown(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		err = s.http.Close()
	}
	_ = os.Remove(s.path)
	return err
}

type peerKey struct{}

// peerContext records the connecting process's uid (SO_PEERCRED).
func peerContext(ctx context.Context, c net.Conn) context.Context {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return ctx
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return ctx
	}
	var cred *syscall.Ucred
	_ = raw.Control(func(fd uintptr) {
		cred, _ = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	})
	if cred == nil {
		return ctx
	}
	return context.WithValue(ctx, peerKey{}, cred.Uid)
}

// allowed: the socket is 0600 already; this also refuses a peer of another
// uid (other than root) if the file mode was loosened by hand, and a peer
// whose credentials cannot be read.
func allowed(r *http.Request) bool {
	uid, ok := r.Context().Value(peerKey{}).(uint32)
	return ok && (uid == 0 || int(uid) == os.Getuid())
}

func (s *Server) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+PathStatus, s.status)
	mux.HandleFunc("POST "+PathBackup, s.backup)
	mux.HandleFunc("POST "+PathBackupComplete, s.backupComplete)
	mux.HandleFunc("POST "+PathRotateDBKey, func(w http.ResponseWriter, r *http.Request) {
		res, err := s.b.RotateDBKey(r.Context())
		s.reply(w, r, res, err)
	})
	mux.HandleFunc("POST "+PathRotateTLS, func(w http.ResponseWriter, r *http.Request) {
		res, err := s.b.RotateTLS(r.Context())
		s.reply(w, r, res, err)
	})
	mux.HandleFunc("POST "+PathRotateTokenKey, func(w http.ResponseWriter, r *http.Request) {
		res, err := s.b.RotateTokenKey(r.Context())
		s.reply(w, r, res, err)
	})
	mux.HandleFunc("POST "+PathDrain, func(w http.ResponseWriter, r *http.Request) {
		res, err := s.b.Drain(r.Context())
		s.reply(w, r, res, err)
	})
	mux.HandleFunc("GET "+PathAccounts, func(w http.ResponseWriter, r *http.Request) {
		limit := 0
		if l := r.URL.Query().Get("limit"); l != "" {
			n, err := strconv.Atoi(l)
			if err != nil || n < 0 {
				s.reply(w, r, nil, fmt.Errorf("%w: limit %q is not a non-negative number", ErrInvalid, l))
				return
			}
			limit = n
		}
		res, err := s.b.ListAccounts(r.Context(), r.URL.Query().Get("after"), limit)
		s.reply(w, r, res, err)
	})
	mux.HandleFunc("GET "+PathAccounts+"/{id}", func(w http.ResponseWriter, r *http.Request) {
		res, err := s.b.GetAccount(r.Context(), r.PathValue("id"))
		s.reply(w, r, res, err)
	})
	mux.HandleFunc("POST "+PathAccounts+"/{id}/{action}", func(w http.ResponseWriter, r *http.Request) {
		var disabled bool
		switch r.PathValue("action") {
		case "disable":
			disabled = true
		case "enable":
		case "recount-usage":
			res, err := s.b.RecountUsage(r.Context(), r.PathValue("id"))
			s.reply(w, r, res, err)
			return
		default:
			s.reply(w, r, nil, fmt.Errorf("%w: unknown action %q (disable, enable, recount-usage)", ErrNotFound, r.PathValue("action")))
			return
		}
		res, err := s.b.SetAccountDisabled(r.Context(), r.PathValue("id"), disabled)
		s.reply(w, r, res, err)
	})
	mux.HandleFunc("GET "+PathDevices, func(w http.ResponseWriter, r *http.Request) {
		res, err := s.b.ListDevices(r.Context(), r.URL.Query().Get("account"))
		s.reply(w, r, res, err)
	})
	mux.HandleFunc("POST "+PathDevices+"/{id}/revoke", func(w http.ResponseWriter, r *http.Request) {
		err := s.b.RevokeDevice(r.Context(), r.PathValue("id"))
		s.reply(w, r, map[string]string{"revoked": r.PathValue("id")}, err)
	})
	mux.HandleFunc("POST "+PathInvites, func(w http.ResponseWriter, r *http.Request) {
		var req CreateInviteRequest
		if err := decode(r, &req); err != nil {
			s.reply(w, r, nil, err)
			return
		}
		res, err := s.b.CreateInvite(r.Context(), req)
		s.reply(w, r, res, err)
	})
	mux.HandleFunc("GET "+PathInvites, func(w http.ResponseWriter, r *http.Request) {
		res, err := s.b.ListInvites(r.Context())
		s.reply(w, r, res, err)
	})
	mux.HandleFunc("POST "+PathInvites+"/{id}/revoke", func(w http.ResponseWriter, r *http.Request) {
		err := s.b.RevokeInvite(r.Context(), r.PathValue("id"))
		s.reply(w, r, map[string]string{"revoked": r.PathValue("id")}, err)
	})
	mux.HandleFunc("GET "+PathChannels+"/{id}", func(w http.ResponseWriter, r *http.Request) {
		commits := 20
		if c := r.URL.Query().Get("commits"); c != "" {
			n, err := strconv.Atoi(c)
			if err != nil || n < 0 || n > 1000 {
				s.reply(w, r, nil, fmt.Errorf("%w: commits %q is not a number from 0 to 1000", ErrInvalid, c))
				return
			}
			commits = n
		}
		res, err := s.b.GetChannel(r.Context(), r.PathValue("id"), commits)
		s.reply(w, r, res, err)
	})
	mux.HandleFunc("POST "+PathChannels+"/{id}/revert-epoch", func(w http.ResponseWriter, r *http.Request) {
		var req RevertEpochRequest
		if err := decode(r, &req); err != nil {
			s.reply(w, r, nil, err)
			return
		}
		res, err := s.b.RevertEpoch(r.Context(), r.PathValue("id"), req)
		s.reply(w, r, res, err)
	})
	mux.HandleFunc("GET "+PathKeyLog, func(w http.ResponseWriter, r *http.Request) {
		res, err := s.b.KeyLogStatus(r.Context())
		s.reply(w, r, res, err)
	})
	mux.HandleFunc("POST "+PathKeyLog+"/verify", func(w http.ResponseWriter, r *http.Request) {
		res, err := s.b.KeyLogVerify(r.Context())
		s.reply(w, r, res, err)
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !allowed(r) {
			writeJSON(w, http.StatusForbidden, ErrorBody{Error: "admin API: your uid may not use this socket; run qpcctl as the user qpcd runs as (or root)", Kind: "invalid"})
			return
		}
		mux.ServeHTTP(w, r)
	})
}

func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: request body: %v", ErrInvalid, err)
	}
	return nil
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	st, err := s.b.Status(r.Context())
	s.reply(w, r, st, err)
}

// backup streams a backup file: the header (manifest) then the snapshot.
func (s *Server) backup(w http.ResponseWriter, r *http.Request) {
	snap, err := s.b.Snapshot(r.Context())
	if err != nil {
		s.reply(w, r, nil, err)
		return
	}
	defer snap.Release()
	hdr, err := BackupHeader(snap.Manifest)
	if err != nil {
		s.reply(w, r, nil, err)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(int64(len(hdr))+snap.Manifest.DBBytes, 10))
	w.Header().Set("X-Qpcd-Db-Sha256", snap.Manifest.DBSHA256)
	w.WriteHeader(http.StatusOK)
	if err := WriteBackup(w, snap.Manifest, snap.Path); err != nil {
		// The client sees a short body and reports a truncated transfer.
		s.log.Error("admin: sending backup failed", "err", err)
	}
}

func (s *Server) backupComplete(w http.ResponseWriter, r *http.Request) {
	var c BackupComplete
	if err := decode(r, &c); err != nil {
		s.reply(w, r, nil, err)
		return
	}
	err := s.b.BackupCompleted(r.Context(), c)
	s.reply(w, r, map[string]bool{"recorded": err == nil}, err)
}

func (s *Server) reply(w http.ResponseWriter, r *http.Request, v any, err error) {
	if err != nil {
		kind, code := "internal", http.StatusInternalServerError
		for k, sentinel := range kinds {
			if errors.Is(err, sentinel) {
				kind = k
				break
			}
		}
		switch kind {
		case "not_found":
			code = http.StatusNotFound
		case "invalid":
			code = http.StatusBadRequest
		case "conflict":
			code = http.StatusConflict
		case "unavailable":
			code = http.StatusServiceUnavailable
		case "no_space":
			code = http.StatusInsufficientStorage
		}
		s.log.Warn("admin: request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		writeJSON(w, code, ErrorBody{Error: oneLine(err.Error()), Kind: kind})
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
