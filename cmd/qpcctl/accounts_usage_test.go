package main

import (
	"crypto/rand"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/quicprochat/quicprochat/internal/admin"
	dt "github.com/quicprochat/quicprochat/internal/delivery/deliverytest"
	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// `qpcctl accounts show` puts an account's usage beside its quotas, in
// text and JSON, against a real qpcd whose quota is set through QPC_*; the
// refusal the client sees names the same option.
func TestAccountsShowUsageAgainstQuota(t *testing.T) {
	dataDir := filepath.Join(shortDir(t), "data")
	d := startQPCD(t, dataDir, "QPC_QUOTA_MESSAGES=3")
	c := d.mustDial(t)
	dev, key, err := register(c, "alice")
	if err != nil {
		t.Fatal(err)
	}
	tok, err := login(c, dev, key)
	if err != nil {
		t.Fatal(err)
	}
	group := make([]byte, 32)
	_, _ = rand.Read(group)
	ctx, cancel := rpcCtx()
	defer cancel()
	var created qpcv1.CreateGroupChannelResponse
	if err := c.Call(ctx, "CreateGroupChannel", tok.GetAccessToken(), &qpcv1.CreateGroupChannelRequest{GroupId: group}, &created); err != nil {
		t.Fatal(err)
	}
	body := dt.Application(group, 0, 1000)
	send := func(i int) error {
		return c.Call(ctx, "Enqueue", tok.GetAccessToken(), &qpcv1.EnqueueRequest{ChannelId: created.GetChannel().GetChannelId(),
			MessageId: fmt.Sprintf("usage-%d", i), MlsMessage: body}, &qpcv1.EnqueueResponse{})
	}
	for i := range 3 {
		if err := send(i); err != nil {
			t.Fatal(err)
		}
	}
	var se *wire.StatusError
	if err := send(3); !errors.As(err, &se) || se.Code != qpcv1.Status_STATUS_RESOURCE_EXHAUSTED || !strings.Contains(se.Message, "QPC_QUOTA_MESSAGES") {
		t.Fatalf("fourth message: %v", err)
	}

	check := func(args ...string) {
		t.Helper()
		var acc admin.Account
		ctlOK(t, dataDir, &acc, args...)
		want := map[string]admin.UsageLimit{
			"message_bytes": {Limit: "message_bytes", Unit: "bytes", Used: int64(3 * len(body)), Quota: 1 << 30, Option: "quota.message_bytes"},
			"messages":      {Limit: "messages", Unit: "count", Used: 3, Quota: 3, Option: "quota.messages"},
			"inbox_bytes":   {Limit: "inbox_bytes", Unit: "bytes", Used: 0, Quota: 64 << 20, Option: "quota.inbox_bytes"},
			"inbox_items":   {Limit: "inbox_items", Unit: "count", Used: 0, Quota: 10000, Option: "quota.inbox_items"},
			"channels":      {Limit: "channels", Unit: "count", Used: 1, Quota: 500, Option: "quota.channels"},
		}
		if len(acc.Usage) != len(want) {
			t.Fatalf("%v: usage %+v", args, acc.Usage)
		}
		for _, u := range acc.Usage {
			if u != want[u.Limit] {
				t.Errorf("%v: %+v, want %+v", args, u, want[u.Limit])
			}
		}
	}
	check("accounts", "show", "alice")
	check("accounts", "show", "alice", "--recount")

	r := ctl(t, dataDir, "accounts", "show", "alice")
	if r.code != 0 {
		t.Fatalf("show: %+v", r)
	}
	for _, re := range []string{`(?m)^usage:$`, `(?m)^LIMIT\s+USED\s+QUOTA\s+USE\s+OPTION$`, `(?m)^messages\s+3\s+3\s+100%\s+quota\.messages$`,
		`(?m)^message_bytes\s+\d+\.\d KiB\s+1\.0 GiB\s+0%\s+quota\.message_bytes$`, `(?m)^channels\s+1\s+500\s+0%\s+quota\.channels$`} {
		if !regexp.MustCompile(re).MatchString(r.stdout) {
			t.Errorf("accounts show output does not match %s:\n%s", re, r.stdout)
		}
	}
}
