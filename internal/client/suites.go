package client

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/quicprochat/quicprochat/internal/mls"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// Cipher-suite negotiation (docs/mls.md, "Negotiation"): the server
// advertises its allowlist in preference order and its minimum
// (PingResponse.mls_policy); the device stocks KeyPackages of every suite
// both allow; a new group or DM takes the first suite of the server's list
// that this device and every invited device have; a group never changes
// suite.

// SupportedSuites are the suites a device can use: those that sign with
// Ed25519, the device key. Most preferred first among equals does not
// matter here: the server's order decides.
var SupportedSuites = []mls.CipherSuiteID{
	mls.MLS128DHKEMX25519AES128GCMSHA256Ed25519,
	mls.MLS256XWingAES256GCMSHA512Ed25519,
	mls.MLS256XWingChaCha20Poly1305SHA512Ed25519,
	mls.MLS128DHKEMX25519ChaCha20Poly1305SHA256Ed25519,
}

var (
	// ErrSuiteDowngrade: a KeyPackage, Welcome or GroupInfo is of a cipher
	// suite other than the group's, outside the server's allowlist, or
	// weaker than the server's minimum.
	ErrSuiteDowngrade = errors.New("client: cipher suite downgrade")
	// ErrSuiteUnavailable: no suite satisfies the request: the suite asked
	// for is not allowed by the server or not supported here, or the
	// devices to add have no KeyPackage of the group's suite.
	ErrSuiteUnavailable = errors.New("client: cipher suite unavailable")
)

// SuitePolicy is the server's MLS policy as this device applies it.
type SuitePolicy struct {
	Allowed []mls.CipherSuiteID // the server's allowlist, most preferred first
	Minimum mls.CipherSuiteID   // the weakest suite the server accepts
}

// legacyPolicy is what a server that advertises no policy accepts: suite 1.
var legacyPolicy = SuitePolicy{Allowed: []mls.CipherSuiteID{mls.MLS128DHKEMX25519AES128GCMSHA256Ed25519}, Minimum: mls.MLS128DHKEMX25519AES128GCMSHA256Ed25519}

// policyCache holds the policy learnt from the server, once per Client.
type policyCache struct {
	mu  sync.Mutex
	got *SuitePolicy
	// features the server announced in the same Ping (ratchettree.go).
	features []string
	// treeDropped: an Enqueue showed a server that did not store a tree.
	treeDropped bool
}

// SuitePolicy returns the server's cipher-suite policy (asked once per
// Client with Ping; a server that sends none allows suite 1 only).
func (c *Client) SuitePolicy(ctx context.Context) (SuitePolicy, error) {
	c.policy.mu.Lock()
	defer c.policy.mu.Unlock()
	if c.policy.got != nil {
		return *c.policy.got, nil
	}
	resp, err := c.Ping(ctx)
	if err != nil {
		return SuitePolicy{}, err
	}
	p := policyFromWire(resp.GetMlsPolicy())
	c.policy.got = &p
	c.policy.features = resp.GetFeatures()
	return p, nil
}

func policyFromWire(w *qpcv1.MLSPolicy) SuitePolicy {
	if w == nil || len(w.GetAllowedSuites()) == 0 {
		return legacyPolicy
	}
	var p SuitePolicy
	for _, id := range w.GetAllowedSuites() {
		if id <= 0xffff {
			p.Allowed = append(p.Allowed, mls.CipherSuiteID(id))
		}
	}
	p.Minimum = mls.CipherSuiteID(w.GetMinimumSuite())
	if mls.SuiteStrength(p.Minimum) == 0 {
		// No usable minimum: the weakest allowed one.
		for _, s := range p.Allowed {
			if p.Minimum == 0 || mls.SuiteStrength(s) < mls.SuiteStrength(p.Minimum) {
				p.Minimum = s
			}
		}
	}
	return p
}

// usable returns the suites both the server and this device accept, in
// the server's order.
func (p SuitePolicy) usable(mine []mls.CipherSuiteID) []mls.CipherSuiteID {
	var out []mls.CipherSuiteID
	for _, s := range p.Allowed {
		if slices.Contains(mine, s) && p.admits(s) == nil {
			out = append(out, s)
		}
	}
	return out
}

// admits refuses a suite the server does not allow or that is weaker than
// its minimum.
func (p SuitePolicy) admits(s mls.CipherSuiteID) error {
	if !slices.Contains(p.Allowed, s) {
		return fmt.Errorf("%w: %v is not allowed by the server (allowed: %v)", ErrSuiteDowngrade, s, p.Allowed)
	}
	if mls.SuiteStrength(s) < mls.SuiteStrength(p.Minimum) {
		return fmt.Errorf("%w: %v is weaker than the server's minimum %v", ErrSuiteDowngrade, s, p.Minimum)
	}
	return nil
}

// checkGroupSuite is the client's downgrade guard for anything that brings
// a group's suite in (a Welcome, a GroupInfo for an external join, a
// fetched KeyPackage): the suite must be the one expected (when want is
// not 0), supported here, and admitted by the server's policy.
func (c *Client) checkGroupSuite(ctx context.Context, got, want mls.CipherSuiteID) error {
	if want != 0 && got != want {
		return fmt.Errorf("%w: %v where the group uses %v", ErrSuiteDowngrade, got, want)
	}
	if !slices.Contains(c.opts.Suites, got) {
		return fmt.Errorf("%w: %v is not supported by this device", ErrSuiteDowngrade, got)
	}
	p, err := c.SuitePolicy(ctx)
	if err != nil {
		return err
	}
	return p.admits(got)
}

// stockSuites are the suites this device keeps KeyPackages of.
func (c *Client) stockSuites(ctx context.Context) ([]mls.CipherSuiteID, error) {
	p, err := c.SuitePolicy(ctx)
	if err != nil {
		return nil, err
	}
	out := p.usable(c.opts.Suites)
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: the server allows %v, this device supports %v", ErrSuiteUnavailable, p.Allowed, c.opts.Suites)
	}
	return out, nil
}

// newGroupSuites returns the suites a new group may use, most preferred
// first: want alone when given (it must be usable), else every usable one.
func (c *Client) newGroupSuites(ctx context.Context, want mls.CipherSuiteID) ([]mls.CipherSuiteID, error) {
	usable, err := c.stockSuites(ctx)
	if err != nil {
		return nil, err
	}
	if want == 0 {
		return usable, nil
	}
	if !slices.Contains(usable, want) {
		p, _ := c.SuitePolicy(ctx)
		return nil, fmt.Errorf("%w: %v (the server allows %v; this device supports %v)", ErrSuiteUnavailable, want, p.Allowed, c.opts.Suites)
	}
	return []mls.CipherSuiteID{want}, nil
}

// signerFor returns the device key bound to suite (every supported suite
// signs with Ed25519: the same key, imported for that suite).
func (c *Client) signerFor(ctx context.Context, suite mls.CipherSuiteID) (*Identity, mls.SignaturePrivateKey, error) {
	id, err := c.Identity(ctx)
	if err != nil {
		return nil, mls.SignaturePrivateKey{}, err
	}
	s, err := mls.Suite(suite)
	if err != nil {
		id.key.Wipe()
		return nil, mls.SignaturePrivateKey{}, err
	}
	sk, _, err := s.SignaturePrivateKeyFromBytes(id.key.Reveal())
	if err != nil {
		id.key.Wipe()
		return nil, mls.SignaturePrivateKey{}, fmt.Errorf("client: device key for %v: %w", suite, err)
	}
	return id, sk, nil
}

// GroupSuite returns the cipher suite of a group or DM.
func (c *Client) GroupSuite(ctx context.Context, name string) (mls.CipherSuiteID, error) {
	var suite mls.CipherSuiteID
	err := c.db.ReadTx(ctx, func(tx *sql.Tx) error {
		_, g, err := openGroup(ctx, tx, name, nil)
		if err != nil {
			return err
		}
		suite = g.CipherSuite()
		return nil
	})
	return suite, err
}

// fetchRequest asks for one KeyPackage per device of account, of the first
// of suites that every device has.
func fetchRequest(account string, suites []mls.CipherSuiteID) *qpcv1.FetchKeyPackagesRequest {
	req := &qpcv1.FetchKeyPackagesRequest{AccountName: account}
	for _, s := range suites {
		req.CipherSuites = append(req.CipherSuites, uint32(s))
	}
	return req
}

// fetchedSuite is the suite a fetch returned: the server's choice, which
// must be one of those asked for. (A server without negotiation answers 0:
// its KeyPackages are then checked against the first suite asked for.)
func (c *Client) fetchedSuite(ctx context.Context, resp *qpcv1.FetchKeyPackagesResponse, asked []mls.CipherSuiteID) (mls.CipherSuiteID, error) {
	if len(asked) == 0 {
		return 0, fmt.Errorf("%w: no suite to fetch", ErrSuiteUnavailable)
	}
	got := mls.CipherSuiteID(resp.GetCipherSuite())
	if got == 0 {
		got = asked[0]
	}
	if !slices.Contains(asked, got) {
		return 0, fmt.Errorf("%w: the server chose %v, not one of %v", ErrSuiteDowngrade, got, asked)
	}
	return got, nil
}

// rejoinSuite is the downgrade guard of an external rejoin: the GroupInfo
// the server hands out must be of the suite this device knew the group by
// (when it still has the state) and admitted by the policy.
func (c *Client) rejoinSuite(ctx context.Context, channelID, groupInfo []byte) (mls.CipherSuiteID, error) {
	gi := new(mls.GroupInfo)
	var m mls.MLSMessage
	if err := m.Unmarshal(groupInfo); err == nil && m.GroupInfo != nil {
		gi = m.GroupInfo
	} else if err := gi.Unmarshal(groupInfo); err != nil {
		return 0, fmt.Errorf("client: GroupInfo from the server does not decode: %w", err)
	}
	got := gi.GroupContext.CipherSuite
	var known mls.CipherSuiteID
	err := c.db.ReadTx(ctx, func(tx *sql.Tx) error {
		_, state, err := loadGroupRow(ctx, tx, "channel_id = ?", channelID)
		if err != nil || state == nil {
			return err
		}
		g, err := mls.ImportGroup(mlsConfig, state)
		if err != nil {
			return nil // unreadable old state: the policy check still applies
		}
		known = g.CipherSuite()
		return nil
	})
	if err != nil {
		return 0, err
	}
	return got, c.checkGroupSuite(ctx, got, known)
}
