package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/quicprochat/quicprochat/internal/store"
)

// Client calls the admin API of a running qpcd over its Unix socket.
type Client struct {
	socket string
	hc     *http.Client
}

// NewClient returns a client for the socket at path.
func NewClient(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		DisableCompression: true,
	}
	return &Client{socket: socket, hc: &http.Client{Transport: tr}}
}

// Socket is the path the client dials.
func (c *Client) Socket() string { return c.socket }

func (c *Client) dialError(err error) error {
	switch {
	case errors.Is(err, syscall.EACCES) || errors.Is(err, os.ErrPermission):
		return fmt.Errorf("%w: permission denied on %s; run qpcctl as the user qpcd runs as (or with sudo)", ErrNotRunning, c.socket)
	case errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("%w: no qpcd answers on %s; is qpcd running? start it (systemctl start qpcd), or pass --socket / QPC_ADMIN_SOCKET (or --data-dir / --config) to point at its admin socket", ErrNotRunning, c.socket)
	}
	return fmt.Errorf("%w: %s: %v; is qpcd running? start it or pass --socket", ErrNotRunning, c.socket, err)
}

// do sends a request and decodes a JSON answer into out (if not nil).
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	resp, err := c.send(ctx, method, path, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return decodeError(resp)
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("admin: decode %s answer: %w (are qpcctl and qpcd the same version?)", path, err)
	}
	return nil
}

func (c *Client) send(ctx context.Context, method, path string, in any) (*http.Response, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://qpcd"+path, body)
	if err != nil {
		return nil, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	injectTrace(ctx, req.Header)
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("admin: %s %s: %w", method, path, ctx.Err())
		}
		return nil, c.dialError(err)
	}
	return resp, nil
}

func decodeError(resp *http.Response) error {
	var eb ErrorBody
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if json.Unmarshal(b, &eb) != nil || eb.Error == "" {
		return fmt.Errorf("%w: HTTP %d: %s (are qpcctl and qpcd the same version?)", ErrInternal, resp.StatusCode, oneLine(string(b)))
	}
	sentinel, ok := kinds[eb.Kind]
	if !ok {
		sentinel = ErrInternal
	}
	return &APIError{Kind: sentinel, Msg: eb.Error}
}

// APIError is an error answered by qpcd; errors.Is matches its kind.
type APIError struct {
	Kind error
	Msg  string
}

func (e *APIError) Error() string        { return e.Msg }
func (e *APIError) Is(target error) bool { return target == e.Kind }

// Status is GET /v1/status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var st Status
	return st, c.do(ctx, http.MethodGet, PathStatus, nil, &st)
}

// RotateDBKey asks qpcd to re-encrypt its database under a new key.
func (c *Client) RotateDBKey(ctx context.Context) (RotateDBKeyResult, error) {
	var r RotateDBKeyResult
	return r, c.do(ctx, http.MethodPost, PathRotateDBKey, nil, &r)
}

// RotateTLS asks qpcd to reload its certificate and key.
func (c *Client) RotateTLS(ctx context.Context) (RotateTLSResult, error) {
	var r RotateTLSResult
	return r, c.do(ctx, http.MethodPost, PathRotateTLS, nil, &r)
}

// RotateTokenKey asks qpcd for a new token-signing key.
func (c *Client) RotateTokenKey(ctx context.Context) (RotateTokenKeyResult, error) {
	var r RotateTokenKeyResult
	return r, c.do(ctx, http.MethodPost, PathRotateTokenKey, nil, &r)
}

// Drain starts qpcd's graceful shutdown.
func (c *Client) Drain(ctx context.Context) (DrainResult, error) {
	var r DrainResult
	return r, c.do(ctx, http.MethodPost, PathDrain, nil, &r)
}

// Gone reports whether nothing answers on the socket any more.
func (c *Client) Gone(ctx context.Context) bool {
	_, err := c.Status(ctx)
	return errors.Is(err, ErrNotRunning)
}

// ListAccounts lists accounts by name.
func (c *Client) ListAccounts(ctx context.Context, after string, limit int) ([]Account, error) {
	q := url.Values{}
	if after != "" {
		q.Set("after", after)
	}
	if limit > 0 {
		q.Set("limit", fmt.Sprint(limit))
	}
	var r []Account
	return r, c.do(ctx, http.MethodGet, PathAccounts+"?"+q.Encode(), nil, &r)
}

// GetAccount shows one account (by id or name) with its devices.
func (c *Client) GetAccount(ctx context.Context, idOrName string) (Account, error) {
	var r Account
	return r, c.do(ctx, http.MethodGet, PathAccounts+"/"+url.PathEscape(idOrName), nil, &r)
}

// RecountUsage rebuilds an account's usage counters from its stored data
// and returns the account with its usage.
func (c *Client) RecountUsage(ctx context.Context, idOrName string) (Account, error) {
	var r Account
	return r, c.do(ctx, http.MethodPost, PathAccounts+"/"+url.PathEscape(idOrName)+"/recount-usage", nil, &r)
}

// SetAccountDisabled disables or enables an account.
func (c *Client) SetAccountDisabled(ctx context.Context, idOrName string, disabled bool) (Account, error) {
	action := "enable"
	if disabled {
		action = "disable"
	}
	var r Account
	return r, c.do(ctx, http.MethodPost, PathAccounts+"/"+url.PathEscape(idOrName)+"/"+action, nil, &r)
}

// GetChannel returns a channel's state and its latest commits (newest first).
func (c *Client) GetChannel(ctx context.Context, id string, commits int) (Channel, error) {
	var r Channel
	q := url.Values{"commits": {strconv.Itoa(commits)}}
	return r, c.do(ctx, http.MethodGet, PathChannels+"/"+url.PathEscape(id)+"?"+q.Encode(), nil, &r)
}

// RevertEpoch moves a wedged channel back to an earlier epoch.
func (c *Client) RevertEpoch(ctx context.Context, id string, req RevertEpochRequest) (RevertEpochResult, error) {
	var r RevertEpochResult
	return r, c.do(ctx, http.MethodPost, PathChannels+"/"+url.PathEscape(id)+"/revert-epoch", req, &r)
}

// ListDevices lists devices, of one account (id or name) or all.
func (c *Client) ListDevices(ctx context.Context, account string) ([]Device, error) {
	q := url.Values{}
	if account != "" {
		q.Set("account", account)
	}
	var r []Device
	return r, c.do(ctx, http.MethodGet, PathDevices+"?"+q.Encode(), nil, &r)
}

// RevokeDevice revokes a device.
func (c *Client) RevokeDevice(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodPost, PathDevices+"/"+url.PathEscape(id)+"/revoke", nil, nil)
}

// CreateInvite creates a single-use invite.
func (c *Client) CreateInvite(ctx context.Context, ttl time.Duration, by string) (Invite, error) {
	var r Invite
	return r, c.do(ctx, http.MethodPost, PathInvites, CreateInviteRequest{TTLSeconds: ttl.Seconds(), CreatedBy: by}, &r)
}

// ListInvites lists invites, newest first.
func (c *Client) ListInvites(ctx context.Context) ([]Invite, error) {
	var r []Invite
	return r, c.do(ctx, http.MethodGet, PathInvites, nil, &r)
}

// RevokeInvite revokes an unused invite.
func (c *Client) RevokeInvite(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodPost, PathInvites+"/"+url.PathEscape(id)+"/revoke", nil, nil)
}

// BackupResult describes a written backup file.
type BackupResult struct {
	File        string   `json:"file"`
	Bytes       int64    `json:"bytes"`
	Manifest    Manifest `json:"manifest"`
	TookSeconds float64  `json:"took_seconds"`
	Recorded    bool     `json:"recorded_by_qpcd"`
}

// Backup has qpcd take an online snapshot and writes it to out atomically:
// a temporary file in out's directory, fsync, checks (layout, checksums),
// rename, directory fsync. It never replaces an existing file unless force.
// progress (may be nil) is called as bytes arrive, with the total.
func (c *Client) Backup(ctx context.Context, out string, force bool, progress func(done, total int64)) (BackupResult, error) {
	start := time.Now()
	abs, err := filepath.Abs(out)
	if err != nil {
		return BackupResult{}, err
	}
	if _, err := os.Lstat(abs); err == nil && !force {
		return BackupResult{}, fmt.Errorf("%w: %s exists; choose another --out or pass --force to replace it", ErrInvalid, abs)
	}
	dir := filepath.Dir(abs)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(abs)+".tmp-*")
	if store.IsDiskFull(err) {
		return BackupResult{}, fmt.Errorf("%w: no space left in %s to create the backup file: %v; free space there or choose another --out", ErrNoSpace, dir, err)
	}
	if err != nil {
		return BackupResult{}, fmt.Errorf("admin: create a temporary file in %s: %w (check that the directory exists and is writable)", dir, err)
	}
	tmpName := tmp.Name()
	done := false
	defer func() {
		if !done {
			tmp.Close()
			os.Remove(tmpName)
		}
	}()
	if err := tmp.Chmod(0o600); err != nil {
		return BackupResult{}, err
	}
	resp, err := c.send(ctx, http.MethodPost, PathBackup, nil)
	if err != nil {
		return BackupResult{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return BackupResult{}, decodeError(resp)
	}
	total := resp.ContentLength
	var src io.Reader = resp.Body
	if progress != nil {
		src = &progressReader{r: resp.Body, total: total, fn: progress}
	}
	noSpace := func(n int64, err error) error {
		return fmt.Errorf("%w: no space left in %s for the backup (%d bytes written before the disk filled: %v); the partial file was removed and the live database is untouched: free space there or choose another --out", ErrNoSpace, dir, n, err)
	}
	n, err := io.Copy(tmp, src)
	if store.IsDiskFull(err) {
		return BackupResult{}, noSpace(n, err)
	}
	if err != nil {
		return BackupResult{}, fmt.Errorf("admin: receiving the backup: %w (after %d bytes; check free space in %s and qpcd's log)", err, n, dir)
	}
	if total >= 0 && n != total {
		return BackupResult{}, fmt.Errorf("admin: backup transfer ended after %d of %d bytes; check qpcd's log and retry", n, total)
	}
	// Some filesystems report a full disk only when the data is flushed.
	if err := tmp.Sync(); store.IsDiskFull(err) {
		return BackupResult{}, noSpace(n, err)
	} else if err != nil {
		return BackupResult{}, fmt.Errorf("admin: fsync %s: %w (check the disk)", tmpName, err)
	}
	if err := tmp.Close(); store.IsDiskFull(err) {
		return BackupResult{}, noSpace(n, err)
	} else if err != nil {
		return BackupResult{}, fmt.Errorf("admin: close %s: %w (check the disk)", tmpName, err)
	}
	b, err := OpenBackup(tmpName)
	if err != nil {
		return BackupResult{}, fmt.Errorf("admin: the received backup failed its checks, nothing was written to %s: %w", abs, err)
	}
	if err := os.Rename(tmpName, abs); err != nil {
		return BackupResult{}, fmt.Errorf("admin: rename into %s: %w", abs, err)
	}
	done = true
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	res := BackupResult{File: abs, Bytes: b.Size, Manifest: b.Manifest, TookSeconds: time.Since(start).Seconds()}
	err = c.do(ctx, http.MethodPost, PathBackupComplete, BackupComplete{DBSHA256: b.Manifest.DBSHA256, Bytes: b.Size, File: abs}, nil)
	res.Recorded = err == nil
	return res, nil
}

type progressReader struct {
	r     io.Reader
	done  int64
	total int64
	fn    func(done, total int64)
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.done += int64(n)
	p.fn(p.done, p.total)
	return n, err
}

// KeyLogStatus returns the key log's latest signed head.
func (c *Client) KeyLogStatus(ctx context.Context) (KeyLogStatus, error) {
	var r KeyLogStatus
	return r, c.do(ctx, http.MethodGet, PathKeyLog, nil, &r)
}

// KeyLogVerify runs the full re-check of the key log.
func (c *Client) KeyLogVerify(ctx context.Context) (KeyLogReport, error) {
	var r KeyLogReport
	return r, c.do(ctx, http.MethodPost, PathKeyLog+"/verify", nil, &r)
}
