package canary

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
)

// Service restarts, stops and starts qpcd through the host's service
// manager. Restart and Stop return when the manager has done the work
// (systemctl and procd's init script are synchronous; the exec manager's
// command must be too, as `qpc-supervise ctl` is).
type Service interface {
	Name() string
	Restart(ctx context.Context) error
	Stop(ctx context.Context) error
	Start(ctx context.Context) error
}

// ErrService: the service manager's command failed.
var ErrService = errors.New("canary: service manager command failed")

// CommandService runs one command per action. Argv returns the command
// line for "restart", "stop" or "start".
type CommandService struct {
	Kind string // systemd, procd, exec: for messages
	Argv func(action string) []string
}

// Systemd manages the systemd unit (default "qpcd") with systemctl.
func Systemd(unit string) *CommandService {
	if unit == "" {
		unit = "qpcd"
	}
	return &CommandService{Kind: "systemd", Argv: func(a string) []string { return []string{"systemctl", a, unit} }}
}

// Procd manages OpenWrt's init script /etc/init.d/NAME (default "qpcd").
func Procd(name string) *CommandService {
	if name == "" {
		name = "qpcd"
	}
	return &CommandService{Kind: "procd", Argv: func(a string) []string { return []string{"/etc/init.d/" + name, a} }}
}

// Exec runs the given command with the action appended as its last
// argument ("restart", "stop", "start"). The command line is split on
// white space; there is no shell quoting.
func Exec(command string) (*CommandService, error) {
	f := strings.Fields(command)
	if len(f) == 0 {
		return nil, fmt.Errorf("%w: the exec service manager needs a command (--service-cmd)", ErrInvalidConfig)
	}
	return &CommandService{Kind: "exec", Argv: func(a string) []string { return append(append([]string(nil), f...), a) }}, nil
}

// NewService returns the service manager kind ("systemd", "procd", "exec")
// for unit (systemd unit or init script name) or command (exec).
func NewService(kind, unit, command string) (Service, error) {
	switch kind {
	case "", "systemd":
		return Systemd(unit), nil
	case "procd":
		return Procd(unit), nil
	case "exec":
		return Exec(command)
	}
	return nil, fmt.Errorf("%w: unknown service manager %q (use systemd, procd or exec)", ErrInvalidConfig, kind)
}

// Name is the manager's kind.
func (c *CommandService) Name() string { return c.Kind }

// Restart restarts qpcd.
func (c *CommandService) Restart(ctx context.Context) error { return c.run(ctx, "restart") }

// Stop stops qpcd.
func (c *CommandService) Stop(ctx context.Context) error { return c.run(ctx, "stop") }

// Start starts qpcd.
func (c *CommandService) Start(ctx context.Context) error { return c.run(ctx, "start") }

func (c *CommandService) run(ctx context.Context, action string) error {
	argv := c.Argv(action)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%w: %s: %v: %s (check the %s service by hand: %s)", ErrService, strings.Join(argv, " "), err,
			oneLine(out.String()), c.Kind, strings.Join(c.Argv("status"), " "))
	}
	return nil
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}
