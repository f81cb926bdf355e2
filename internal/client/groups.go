package client

import (
	"context"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/quicprochat/quicprochat/internal/identity"
	"github.com/quicprochat/quicprochat/internal/mls"
	"github.com/quicprochat/quicprochat/internal/safetext"
	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// The group layer: MLS groups (internal/mls) bound to delivery channels.
// Every change of a group's state is saved in the same transaction as what
// caused it: the outbox entry it produced, or the inbound message (and the
// channel's processed cursor) it consumed.

// mlsConfig is the MLS configuration of every group (the suites a device
// can use; handshake messages encrypted, three past epochs kept). Which of
// them a group may use is the server's policy (suites.go).
var mlsConfig = mls.Config{AllowedSuites: SupportedSuites}

// ErrNoGroup: no group or DM by that name on this device.
var ErrNoGroup = errors.New("client: no such group")

// noGroup is ErrNoGroup for name with what to do about it, the same for
// every command that names a group.
func noGroup(name string) error {
	if peer, ok := strings.CutPrefix(name, "@"); ok {
		return fmt.Errorf("%w %q; open the DM first with qpc dm %s", ErrNoGroup, name, peer)
	}
	return fmt.Errorf("%w %q; see qpc group list, or create it with qpc group create", ErrNoGroup, name)
}

// ErrNotMember: the account is not in the group.
var ErrNotMember = errors.New("client: not a member")

// Group kinds and statuses.
const (
	kindGroup = "group"
	kindDM    = "dm"

	statusActive  = "active"
	statusLeft    = "left"
	statusRemoved = "removed"
)

// Member is one device in a group.
type Member struct {
	Account string `json:"account"`
	Device  string `json:"device"`
}

// GroupSummary is one row of Groups.
type GroupSummary struct {
	Name      string `json:"name"`
	Kind      string `json:"kind"`
	Status    string `json:"status"`
	Epoch     uint64 `json:"epoch"`
	ChannelID string `json:"channel_id"`
}

type groupRow struct {
	channelID, groupID []byte
	name, kind, peer   string
	status             string
}

// commitIntent is what a queued commit was for, so it can be redone after
// STALE_EPOCH (or followed up once accepted).
type commitIntent struct {
	Op       string   `json:"op"` // add, remove, drop, drop-devices, leave, commit
	Accounts []string `json:"accounts,omitempty"`
	// Devices (drop-devices) are the MLS identities (account/device) of
	// leaves to remove: this account's revoked devices.
	Devices     []string       `json:"devices,omitempty"`
	KeyPackages []intentKP     `json:"key_packages,omitempty"`
	ServerAdd   bool           `json:"server_add,omitempty"`
	Recipients  []inboxAddress `json:"-"`
}

type intentKP struct {
	Account string `json:"account"`
	Device  string `json:"device"`
	KP      []byte `json:"kp"`
}

type inboxAddress struct {
	Account string `json:"account_name"`
	Device  string `json:"device_id"`
}

func validGroupName(name string) error {
	if err := safetext.Check("group name", name); err != nil {
		return fmt.Errorf("client: %w", err)
	}
	if name == "" || len(name) > 64 || strings.ContainsAny(name, " \t\n/") || strings.HasPrefix(name, "@") || strings.HasPrefix(name, "#") {
		return fmt.Errorf("client: group name %q: use 1-64 characters without spaces or '/', not starting with @ or #", name)
	}
	return nil
}

func loadGroupRow(ctx context.Context, tx *sql.Tx, where string, arg any) (*groupRow, []byte, error) {
	var r groupRow
	var state []byte
	err := tx.QueryRowContext(ctx, `SELECT channel_id, group_id, name, kind, peer, status, state FROM groups WHERE `+where, arg).
		Scan(&r.channelID, &r.groupID, &r.name, &r.kind, &r.peer, &r.status, &state)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	return &r, state, nil
}

// openGroup loads a group by name (or channel id) with its MLS state.
func openGroup(ctx context.Context, tx *sql.Tx, name string, channelID []byte) (*groupRow, *mls.Group, error) {
	var r *groupRow
	var state []byte
	var err error
	if channelID != nil {
		r, state, err = loadGroupRow(ctx, tx, "channel_id = ?", channelID)
	} else {
		r, state, err = loadGroupRow(ctx, tx, "name = ?", name)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("client: read group: %w", err)
	}
	if r == nil {
		return nil, nil, noGroup(name)
	}
	if r.status != statusActive || state == nil {
		how := map[string]string{statusLeft: "left", statusRemoved: "was removed from"}[r.status]
		if how == "" {
			how = "is not an active member of (" + r.status + ")"
		}
		return r, nil, fmt.Errorf("%w: this device %s %s", ErrNotMember, how, r.name)
	}
	g, err := mls.ImportGroup(mlsConfig, state)
	if err != nil {
		return nil, nil, fmt.Errorf("client: group state of %s: %w", r.name, err)
	}
	return r, g, nil
}

func saveGroup(ctx context.Context, tx *sql.Tx, channelID []byte, g *mls.Group, nowMs int64) error {
	state, err := g.Export()
	if err != nil {
		return fmt.Errorf("client: export group state: %w", err)
	}
	_, err = tx.ExecContext(ctx, `UPDATE groups SET state = ?, epoch = ?, updated_ms = ? WHERE channel_id = ?`, state, int64(g.Epoch()), nowMs, channelID)
	return err
}

// Groups lists this device's groups and DMs.
func (c *Client) Groups(ctx context.Context) ([]GroupSummary, error) {
	var out []GroupSummary
	err := c.db.ReadTx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT name, kind, status, epoch, channel_id FROM groups ORDER BY name`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var s GroupSummary
			var e int64
			var ch []byte
			if err := rows.Scan(&s.Name, &s.Kind, &s.Status, &e, &ch); err != nil {
				return err
			}
			s.Epoch, s.ChannelID = uint64(e), hex.EncodeToString(ch)
			out = append(out, s)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("client: list groups: %w", err)
	}
	return out, nil
}

// CreateGroup creates an MLS group (this device its only member) and its
// channel, under a local name, on the server's most preferred suite this
// device supports.
func (c *Client) CreateGroup(ctx context.Context, name string) error {
	return c.CreateGroupWithSuite(ctx, name, 0)
}

// CreateGroupWithSuite is CreateGroup on the given suite (0: the most
// preferred); a suite the server or this device does not allow wraps
// ErrSuiteUnavailable.
func (c *Client) CreateGroupWithSuite(ctx context.Context, name string, suite mls.CipherSuiteID) error {
	if err := validGroupName(name); err != nil {
		return err
	}
	suites, err := c.newGroupSuites(ctx, suite)
	if err != nil {
		return err
	}
	_, err = c.createGroup(ctx, name, kindGroup, "", suites[0])
	return err
}

func (c *Client) createGroup(ctx context.Context, name, kind, peer string, suite mls.CipherSuiteID) ([]byte, error) {
	c.groupMu.Lock()
	defer c.groupMu.Unlock()
	var exists bool
	if err := c.db.ReadTx(ctx, func(tx *sql.Tx) error {
		r, _, err := loadGroupRow(ctx, tx, "name = ?", name)
		exists = r != nil
		return err
	}); err != nil {
		return nil, err
	}
	if exists {
		return nil, fmt.Errorf("client: a group named %q exists on this device; choose another name", name)
	}
	id, sk, err := c.signerFor(ctx, suite)
	if err != nil {
		return nil, err
	}
	defer id.key.Wipe()
	g, err := mls.CreateGroup(mlsConfig, mls.NewGroupID(), suite, mls.BasicIdentity(id.AccountName, id.DeviceID), sk, mls.GroupOptions{LeafExtensions: id.leafExtensions(), Capabilities: leafCapabilities()})
	if err != nil {
		sk.Wipe()
		return nil, fmt.Errorf("client: create MLS group: %w", err)
	}
	var ch *qpcv1.Channel
	if kind == kindDM {
		var resp qpcv1.CreateDMChannelResponse
		if err := c.call(ctx, "CreateDMChannel", &qpcv1.CreateDMChannelRequest{PeerAccountName: peer, GroupId: g.GroupID()}, &resp); err != nil {
			return nil, fmt.Errorf("client: create DM channel with %s: %w", peer, explainLookup(err, peer))
		}
		if !resp.GetCreated() {
			return nil, fmt.Errorf("client: a DM with %s exists on the server but not on this device; run qpc recv to join it", peer)
		}
		ch = resp.GetChannel()
	} else {
		var resp qpcv1.CreateGroupChannelResponse
		if err := c.call(ctx, "CreateGroupChannel", &qpcv1.CreateGroupChannelRequest{GroupId: g.GroupID(), Epoch: g.Epoch()}, &resp); err != nil {
			return nil, fmt.Errorf("client: create channel: %w", err)
		}
		ch = resp.GetChannel()
	}
	state, err := g.Export()
	if err != nil {
		return nil, fmt.Errorf("client: export group state: %w", err)
	}
	err = c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO groups (channel_id, group_id, name, kind, peer, epoch, state, updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
			ch.GetChannelId(), g.GroupID(), name, kind, peer, int64(g.Epoch()), state, c.now().UnixMilli()); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO cursors (channel_id, seq, processed) VALUES (?, ?, ?) ON CONFLICT DO NOTHING`,
			ch.GetChannelId(), int64(ch.GetHeadSeq()), int64(ch.GetHeadSeq()))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("client: save group: %w", err)
	}
	return ch.GetChannelId(), nil
}

func explainLookup(err error, account string) error {
	var se *wire.StatusError
	if errors.As(err, &se) && se.Code == qpcv1.Status_STATUS_NOT_FOUND {
		return fmt.Errorf("%w (is %q the right account name?)", err, account)
	}
	return err
}

// fetchKeyPackages consumes one KeyPackage per active device of account,
// of the first of suites (preference order) that all of them have, and
// checks each: valid, of that suite, with the credential
// "<account>/<device_id>". It returns the suite.
func (c *Client) fetchKeyPackages(ctx context.Context, account string, suites ...mls.CipherSuiteID) ([]intentKP, mls.CipherSuiteID, error) {
	var resp qpcv1.FetchKeyPackagesResponse
	if err := c.call(ctx, "FetchKeyPackages", fetchRequest(account, suites), &resp); err != nil {
		return nil, 0, fmt.Errorf("client: KeyPackages of %s: %w", account, explainLookup(err, account))
	}
	suite, err := c.fetchedSuite(ctx, &resp, suites)
	if err != nil {
		return nil, 0, fmt.Errorf("client: KeyPackages of %s: %w", account, err)
	}
	var out []intentKP
	kps := make([]*mls.KeyPackage, len(resp.GetKeyPackages()))
	certs := map[string][]byte{}
	idKeys := map[identity.PublicKey]bool{}
	for i, f := range resp.GetKeyPackages() {
		kp, err := parseKeyPackage(f.GetKeyPackage())
		if err != nil {
			return nil, 0, fmt.Errorf("client: KeyPackage of %s/%s: %w", account, f.GetDeviceId(), err)
		}
		kps[i] = kp
		if raw := certificateOf(&kp.LeafNode); raw != nil {
			certs[f.GetDeviceId()] = raw
			if cert, err := identity.Parse(raw); err == nil {
				idKeys[cert.IdentityKey] = true
			}
		}
	}
	// Every certificate, and the identity key it names, must be an entry
	// of the key log before anything of it is pinned (keylog.go).
	if len(idKeys) == 0 && len(certs) > 0 {
		idKeys[identity.PublicKey{}] = true // certificates that do not parse: proven or refused below
	}
	for k := range idKeys {
		var ik []byte
		if !k.IsZero() {
			ik = k.Bytes()
		}
		if err := c.proveKeys(ctx, resp.GetKeyLog(), account, ik, certs); err != nil {
			return nil, 0, err
		}
	}
	for i, f := range resp.GetKeyPackages() {
		kp := kps[i]
		if want := string(mls.BasicIdentity(account, f.GetDeviceId())); string(kp.LeafNode.Credential.Identity) != want {
			return nil, 0, fmt.Errorf("client: KeyPackage of %s/%s carries the credential %q", account, f.GetDeviceId(), kp.LeafNode.Credential.Identity)
		}
		if err := c.checkGroupSuite(ctx, kp.CipherSuite, suite); err != nil {
			return nil, 0, fmt.Errorf("client: KeyPackage of %s/%s: %w", account, f.GetDeviceId(), err)
		}
		if err := mls.ValidateKeyPackage(kp, mls.KeyPackagePolicy{Now: c.now(), GroupSuite: suite, AllowedSuites: c.opts.Suites}); err != nil {
			return nil, 0, fmt.Errorf("client: KeyPackage of %s/%s: %w", account, f.GetDeviceId(), err)
		}
		// Never trust the server's word for whose device this is (trust.go).
		if err := c.checkKeyPackageTrust(ctx, account, f.GetDeviceId(), &kp.LeafNode); err != nil {
			return nil, 0, err
		}
		out = append(out, intentKP{Account: account, Device: f.GetDeviceId(), KP: f.GetKeyPackage()})
	}
	if len(out) == 0 {
		if len(suites) == 1 && len(resp.GetMissingDeviceIds()) > 0 {
			return nil, 0, fmt.Errorf("%w: %s has no KeyPackage of %v, the group's cipher suite, on %d device(s) (their qpc may not support it, or has not uploaded one yet: qpc keys --upload)",
				ErrSuiteUnavailable, account, suites[0], len(resp.GetMissingDeviceIds()))
		}
		return nil, 0, fmt.Errorf("client: %s has no KeyPackages on the server (missing for %d device(s)); ask them to run qpc keys --upload", account, len(resp.GetMissingDeviceIds()))
	}
	return out, suite, nil
}

func parseKeyPackage(raw []byte) (*mls.KeyPackage, error) {
	var m mls.MLSMessage
	if err := m.Unmarshal(raw); err == nil && m.WireFormat == mls.WireFormatKeyPackage && m.KeyPackage != nil {
		return m.KeyPackage, nil
	}
	var kp mls.KeyPackage
	if err := kp.Unmarshal(raw); err != nil {
		return nil, err
	}
	return &kp, nil
}

// AddMembers adds every active device of each account to the group: it
// fetches their KeyPackages, commits the Add, and sends the Welcome only
// after the server accepted the commit.
func (c *Client) AddMembers(ctx context.Context, name string, accounts []string) error {
	suite, err := c.GroupSuite(ctx, name)
	if err != nil {
		return err
	}
	var kps []intentKP
	for _, a := range accounts {
		k, _, err := c.fetchKeyPackages(ctx, a, suite)
		if err != nil {
			return err
		}
		kps = append(kps, k...)
	}
	var ch []byte
	if err := c.db.ReadTx(ctx, func(tx *sql.Tx) error {
		r, _, err := loadGroupRow(ctx, tx, "name = ?", name)
		if r != nil {
			ch = r.channelID
		}
		return err
	}); err != nil {
		return err
	}
	if ch == nil {
		return noGroup(name)
	}
	refs := make([]*qpcv1.MemberRef, 0, len(accounts))
	for _, a := range accounts {
		refs = append(refs, &qpcv1.MemberRef{AccountName: a})
	}
	if err := c.call(ctx, "AddMembers", &qpcv1.AddMembersRequest{ChannelId: ch, Members: refs}, &qpcv1.AddMembersResponse{}); err != nil {
		return fmt.Errorf("client: add to channel: %w", err)
	}
	err = c.queueCommit(ctx, ch, commitIntent{Op: "add", Accounts: accounts, KeyPackages: kps})
	if errors.Is(err, errNothingToAdd) {
		return fmt.Errorf("%w: every device of %s is in %s already (qpc group members %s)", ErrAlreadyMember, strings.Join(accounts, ", "), name, name)
	}
	if err != nil {
		return err
	}
	_, err = c.Flush(ctx)
	return err
}

// ErrAlreadyMember: every device of the accounts to add is in the group
// already; adding them changed nothing.
var ErrAlreadyMember = errors.New("client: already a member")

// errNothingToAdd: an add commit found every device in the group already.
var errNothingToAdd = errors.New("client: nothing to add")

// RemoveMember removes every device of an account from the group. The
// channel comes first: the server refuses a removal the caller may not
// make (only the member itself or the channel's admin may remove; see
// docs/protocol.md) and announces the one it makes to every member; then
// the MLS commit drops the account's leaves.
func (c *Client) RemoveMember(ctx context.Context, name, account string) error {
	ch, err := c.channelOf(ctx, name)
	if err != nil {
		return err
	}
	ms, err := c.Members(ctx, name)
	if err != nil {
		return err
	}
	inGroup := false
	for _, m := range ms {
		inGroup = inGroup || m.Account == account
	}
	err = c.call(ctx, "RemoveMembers", &qpcv1.RemoveMembersRequest{ChannelId: ch, Members: []*qpcv1.MemberRef{{AccountName: account}}}, &qpcv1.RemoveMembersResponse{})
	var se *wire.StatusError
	switch {
	case err == nil:
	case errors.As(err, &se) && se.Code == qpcv1.Status_STATUS_NOT_FOUND && inGroup:
		// No longer on the channel (it declined, or left): only its leaves remain.
	case errors.As(err, &se) && se.Code == qpcv1.Status_STATUS_NOT_FOUND:
		return fmt.Errorf("%w: %s is not in %s", ErrNotMember, account, name)
	default:
		return fmt.Errorf("client: remove %s from %s: %w", account, name, err)
	}
	if !inGroup {
		return nil // a pending invitation, withdrawn: no leaves to drop
	}
	if err := c.queueCommit(ctx, ch, commitIntent{Op: "drop", Accounts: []string{account}}); err != nil {
		return err
	}
	_, err = c.Flush(ctx)
	return err
}

func (c *Client) channelOf(ctx context.Context, name string) ([]byte, error) {
	var ch []byte
	err := c.db.ReadTx(ctx, func(tx *sql.Tx) error {
		r, _, err := loadGroupRow(ctx, tx, "name = ?", name)
		if r != nil {
			ch = r.channelID
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("client: read group: %w", err)
	}
	if ch == nil {
		return nil, noGroup(name)
	}
	return ch, nil
}

// queueCommit builds the commit for an intent and queues it, with the new
// group state (pending commit included), in one transaction. A commit with
// nothing left to do (everyone already added or removed) queues nothing.
func (c *Client) queueCommit(ctx context.Context, channelID []byte, in commitIntent) error {
	c.groupMu.Lock()
	defer c.groupMu.Unlock()
	return c.queueCommitLocked(ctx, channelID, in)
}

func (c *Client) queueCommitLocked(ctx context.Context, channelID []byte, in commitIntent) error {
	var treeOpts mls.CommitOptions
	c.commitTreeOptions(ctx, &treeOpts)
	return c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		r, g, err := openGroup(ctx, tx, "", channelID)
		if err != nil {
			return err
		}
		if g.Pending() != nil {
			return fmt.Errorf("client: %s has a commit waiting to be sent; run qpc recv (it sends the outbox) and try again", r.name)
		}
		opts := treeOpts
		var to []inboxAddress
		switch in.Op {
		case "add":
			for _, k := range in.KeyPackages {
				if _, in := g.MemberByIdentity(mls.BasicIdentity(k.Account, k.Device)); in {
					continue
				}
				kp, err := parseKeyPackage(k.KP)
				if err != nil {
					return err
				}
				opts.Add = append(opts.Add, kp)
				to = append(to, inboxAddress{Account: k.Account, Device: k.Device})
			}
			if len(opts.Add) == 0 {
				return errNothingToAdd
			}
		case "remove", "drop":
			// drop: the account's channel membership is already gone (the
			// server removed it first, or it declined); only the MLS leaves
			// remain, and a drop with nothing left to do is done.
			for _, m := range g.Members() {
				for _, a := range in.Accounts {
					if strings.HasPrefix(string(m.Identity), a+"/") && m.Leaf != g.OwnLeaf() {
						opts.Remove = append(opts.Remove, m.Leaf)
					}
				}
			}
			if len(opts.Remove) == 0 && in.Op == "drop" {
				return nil
			}
			if len(opts.Remove) == 0 {
				return fmt.Errorf("%w: %s is not in %s", ErrNotMember, strings.Join(in.Accounts, ", "), r.name)
			}
		case "drop-devices":
			for _, m := range g.Members() {
				if slices.Contains(in.Devices, string(m.Identity)) && m.Leaf != g.OwnLeaf() {
					opts.Remove = append(opts.Remove, m.Leaf)
				}
			}
			if len(opts.Remove) == 0 {
				return nil
			}
		case "commit":
		default:
			return fmt.Errorf("client: unknown commit intent %q", in.Op)
		}
		pc, err := g.Commit(opts)
		if err != nil {
			return fmt.Errorf("client: commit: %w", err)
		}
		if err := saveGroup(ctx, tx, channelID, g, c.now().UnixMilli()); err != nil {
			return err
		}
		intent, err := json.Marshal(in)
		if err != nil {
			return err
		}
		id, err := c.newMessageID()
		if err != nil {
			return err
		}
		var toJSON any
		if len(to) > 0 && pc.Welcome != nil {
			b, err := json.Marshal(to)
			if err != nil {
				return err
			}
			toJSON = string(b)
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO outbox (message_id, channel_id, mls_message, group_info, kind, intent, welcome, welcome_to, created_ms)
			VALUES (?, ?, ?, ?, 'commit', ?, ?, ?, ?)`, id, channelID, pc.Message, packOutboxGroupInfo(pc.GroupInfo, pc.Tree), intent, pc.Welcome, toJSON, c.now().UnixMilli())
		return err
	})
}

// Leave removes this device from the group. MLS does not let a member
// commit its own removal, so the device sends a Remove proposal for its
// own leaf (another member commits it; see docs/client.md), leaves the
// channel on the server, and forgets the group's keys.
func (c *Client) Leave(ctx context.Context, name string) error {
	ch, err := c.channelOf(ctx, name)
	if err != nil {
		return err
	}
	c.groupMu.Lock()
	err = c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		r, g, err := openGroup(ctx, tx, "", ch)
		if err != nil {
			return err
		}
		if r.kind == kindDM {
			// The server keeps a DM's two members fixed (a left DM could
			// not be opened again: its id is derived from the accounts).
			return fmt.Errorf("client: a DM cannot be left; to refuse its new messages' sender elsewhere, qpc block %s", r.peer)
		}
		raw, err := g.Propose(&mls.Proposal{Type: mls.ProposalTypeRemove, Remove: &mls.Remove{Removed: g.OwnLeaf()}}, nil)
		if err != nil {
			return fmt.Errorf("client: propose own removal: %w", err)
		}
		id, err := c.newMessageID()
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO outbox (message_id, channel_id, mls_message, kind, intent, created_ms) VALUES (?, ?, ?, 'proposal', ?, ?)`,
			id, ch, raw, []byte(`{"op":"leave"}`), c.now().UnixMilli()); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `UPDATE groups SET status = ?, state = NULL, updated_ms = ? WHERE channel_id = ?`, statusLeft, c.now().UnixMilli(), ch)
		return err
	})
	c.groupMu.Unlock()
	if err != nil {
		return err
	}
	_, err = c.Flush(ctx)
	return err
}

// Members lists the group's members as this device's group state has them.
func (c *Client) Members(ctx context.Context, name string) ([]Member, error) {
	var out []Member
	err := c.db.ReadTx(ctx, func(tx *sql.Tx) error {
		_, g, err := openGroup(ctx, tx, name, nil)
		if err != nil {
			return err
		}
		for _, m := range g.Members() {
			acc, dev, _ := strings.Cut(string(m.Identity), "/")
			out = append(out, Member{Account: acc, Device: dev})
		}
		return nil
	})
	return out, err
}

// DM opens the direct-message channel with an account and returns its
// local name ("@account"). If the peer opened it first, its Welcome is
// fetched and processed instead.
func (c *Client) DM(ctx context.Context, peer string) (string, error) {
	name := "@" + peer
	if _, err := c.Sync(ctx, 0); err != nil {
		return "", err
	}
	var exists bool
	if err := c.db.ReadTx(ctx, func(tx *sql.Tx) error {
		r, _, err := loadGroupRow(ctx, tx, "name = ?", name)
		exists = r != nil
		return err
	}); err != nil {
		return "", err
	}
	if exists {
		return name, nil
	}
	id, err := c.Identity(ctx)
	if err != nil {
		return "", err
	}
	id.key.Wipe()
	if peer == id.AccountName {
		return "", errors.New("client: a DM needs another account")
	}
	// The peer opened the DM first: asking for it is consent; accept.
	if inv, err := c.pendingDMInvitation(ctx, peer); err != nil {
		return "", err
	} else if inv != "" {
		joined, err := c.AcceptInvitation(ctx, inv)
		if err != nil {
			return "", err
		}
		if joined == "" {
			return "", fmt.Errorf("client: accepted %s's DM invitation; its Welcome has not arrived yet, run qpc recv in a moment", peer)
		}
		return joined, nil
	}
	suites, err := c.newGroupSuites(ctx, 0)
	if err != nil {
		return "", err
	}
	kps, suite, err := c.fetchKeyPackages(ctx, peer, suites...)
	if err != nil {
		return "", err
	}
	ch, err := c.createGroup(ctx, name, kindDM, peer, suite)
	if err != nil {
		return "", err
	}
	if err := c.queueCommit(ctx, ch, commitIntent{Op: "add", Accounts: []string{peer}, KeyPackages: kps}); err != nil {
		return "", err
	}
	_, err = c.Flush(ctx)
	return name, err
}

// sendFlushTimeout bounds how long Send tries to deliver at once.
const sendFlushTimeout = 15 * time.Second

// Send encrypts text for a group or DM and sends it through the outbox. A
// returned id with an error means the message is queued but not yet
// delivered (the next Flush, recv or watch sends it).
func (c *Client) Send(ctx context.Context, channel, text, replyTo string) (_ string, err error) {
	ctx, span := c.span(ctx, "client.send")
	defer endSpan(span, &err)
	id, err := c.Identity(ctx)
	if err != nil {
		return "", err
	}
	id.key.Wipe()
	mid, err := c.newMessageID()
	if err != nil {
		return "", err
	}
	now := c.now()
	c.groupMu.Lock()
	err = c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		r, g, err := openGroup(ctx, tx, channel, nil)
		if err != nil {
			return err
		}
		am := &qpcv1.AppMessage{Version: 1, MessageId: mid, Text: text, SenderDisplayName: id.DisplayName, SentUnixMs: now.UnixMilli(), ReplyTo: replyTo}
		if r.kind == kindGroup {
			am.GroupName = r.name
		}
		// Every message carries the newest key log head this device holds,
		// so members compare what the server showed each of them.
		if head := newestHeadRaw(ctx, tx); head != nil {
			am.KeyLog = &qpcv1.KeyLogGossip{TreeHead: head}
		}
		payload, err := proto.Marshal(am)
		if err != nil {
			return err
		}
		ct, err := g.Protect(payload, nil)
		if err != nil {
			return fmt.Errorf("client: encrypt: %w", err)
		}
		if err := saveGroup(ctx, tx, r.channelID, g, now.UnixMilli()); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO outbox (message_id, channel_id, mls_message, kind, intent, created_ms) VALUES (?, ?, ?, 'app', ?, ?)`,
			mid, r.channelID, ct, payload, now.UnixMilli()); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO messages (channel_id, message_id, sender, display, text, reply_to, sent_ms, outgoing, shown) VALUES (?, ?, ?, ?, ?, ?, ?, 1, 1)`,
			r.channelID, mid, id.Credential(), id.DisplayName, text, replyTo, now.UnixMilli())
		return err
	})
	c.groupMu.Unlock()
	if err != nil {
		return "", err
	}
	// The message is safe in the outbox; do not keep the sender waiting
	// long for a server that is down (the next Flush sends it).
	fctx, cancel := context.WithTimeout(ctx, sendFlushTimeout)
	defer cancel()
	if _, err := c.Flush(fctx); err != nil {
		return mid, err
	}
	return mid, c.outcome(ctx, mid, channel)
}

// outcome turns a refused outbox entry into an error.
func (c *Client) outcome(ctx context.Context, messageID, channel string) error {
	var status, lastErr string
	err := c.db.ReadTx(ctx, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, `SELECT status, last_error FROM outbox WHERE message_id = ?`, messageID).Scan(&status, &lastErr)
	})
	if err != nil {
		return fmt.Errorf("client: read outbox: %w", err)
	}
	if status != OutboxFailed {
		return nil
	}
	if strings.Contains(lastErr, "permission_denied") {
		return fmt.Errorf("%w: %w (%s): this device was removed from %s; the message is not delivered", ErrNotMember, ErrRefused, lastErr, channel)
	}
	return fmt.Errorf("%w (%s): it is not delivered; qpc outbox shows it (retry or discard)", ErrRefused, lastErr)
}
