package client

import (
	"context"
	"fmt"
)

// The group layer (create, add, remove, leave, DMs, send, history of
// decrypted messages) needs the MLS group state machine of internal/mls
// part 2. Until it is in the tree these return ErrNotAvailable; nothing is
// faked.

func notAvailable(what string) error {
	return fmt.Errorf("%w: %s needs the MLS group state machine (internal/mls part 2), which this build does not include yet", ErrNotAvailable, what)
}

// Member is one device in a group.
type Member struct {
	Account string `json:"account"`
	Device  string `json:"device"`
}

// Message is one decrypted message of a channel's history.
type Message struct {
	Channel     string `json:"channel"`
	MessageID   string `json:"message_id"`
	Seq         uint64 `json:"seq"`
	Sender      string `json:"sender"` // "<account_name>/<device_id>"
	DisplayName string `json:"display_name"`
	Text        string `json:"text"`
	ReplyTo     string `json:"reply_to,omitempty"`
	SentUnixMs  int64  `json:"sent_unix_ms"`
	Outgoing    bool   `json:"outgoing"`
}

// CreateGroup creates an MLS group and its channel under a local name.
func (c *Client) CreateGroup(ctx context.Context, name string) error {
	return notAvailable("group create")
}

// AddMembers adds every active device of each account to the group.
func (c *Client) AddMembers(ctx context.Context, group string, accounts []string) error {
	return notAvailable("group add")
}

// RemoveMember removes every device of an account from the group.
func (c *Client) RemoveMember(ctx context.Context, group, account string) error {
	return notAvailable("group remove")
}

// Leave removes this device from the group.
func (c *Client) Leave(ctx context.Context, group string) error {
	return notAvailable("group leave")
}

// Members lists the group's members as this device's group state has them.
func (c *Client) Members(ctx context.Context, group string) ([]Member, error) {
	return nil, notAvailable("group members")
}

// DM opens (or finds) the direct-message channel with an account.
func (c *Client) DM(ctx context.Context, account string) (string, error) {
	return "", notAvailable("dm")
}

// Send encrypts text for a channel and sends it through the outbox.
func (c *Client) Send(ctx context.Context, channel, text, replyTo string) (string, error) {
	return "", notAvailable("send")
}

// History returns a channel's decrypted messages, oldest first.
func (c *Client) History(ctx context.Context, channel string, limit int) ([]Message, error) {
	return nil, notAvailable("history")
}

// Messages returns decrypted messages newer than the given (per channel)
// point; Recv and Watch print these.
func (c *Client) Received(ctx context.Context) ([]Message, error) {
	return nil, nil
}
