package broker

import (
	"fmt"
	"time"

	"github.com/mdm-authority/mdm/protocol"
)

// CommandState is where a command is between the admin and the device.
type CommandState uint8

// Command states: pending until a check-in response carries it (a push
// asks the device to check in), delivered until the device reports, then
// acknowledged or failed; expired when it was still open 30 days after it
// was issued, found so at the device's next check-in.
const (
	CommandPending      CommandState = 1
	CommandDelivered    CommandState = 2
	CommandAcknowledged CommandState = 3
	CommandFailed       CommandState = 4
	CommandExpired      CommandState = 5
)

var commandStateNames = [...]string{"", "pending", "delivered", "acknowledged", "failed", "expired"}

// String returns the state's name.
func (s CommandState) String() string {
	if int(s) < len(commandStateNames) && s > 0 {
		return commandStateNames[s]
	}
	return fmt.Sprintf("command state(%d)", s)
}

// MarshalText implements encoding.TextMarshaler for JSON.
func (s CommandState) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler for JSON.
func (s *CommandState) UnmarshalText(b []byte) error {
	for i, name := range commandStateNames {
		if i > 0 && name == string(b) {
			*s = CommandState(i)
			return nil
		}
	}
	return fmt.Errorf("unknown command state %q", b)
}

// Open reports whether the command still waits for the device.
func (s CommandState) Open() bool { return s == CommandPending || s == CommandDelivered }

// CommandTTL is how long a command waits for its device before it expires.
const CommandTTL = 30 * 24 * time.Hour

// Command is one remote action queued for a device.
type Command struct {
	ID          string               `json:"id"`
	Device      string               `json:"device"`
	Action      protocol.CommandKind `json:"action"`
	Message     string               `json:"message"`
	Issued      time.Time            `json:"issued,omitzero"`
	State       CommandState         `json:"state"`
	DeliveredAt time.Time            `json:"delivered_at,omitzero"`
	CompletedAt time.Time            `json:"completed_at,omitzero"`
	Error       string               `json:"error"`
}

// wire returns the command as the protocol carries it.
func (c *Command) wire() protocol.Command {
	return protocol.Command{ID: c.ID, Action: c.Action, Issued: protocol.At(c.Issued), Message: c.Message}
}

// deliver marks an open command as delivered and reports whether it is
// still to be sent; an open command past its time expires instead.
func (c *Command) deliver(now time.Time) bool {
	if !c.State.Open() {
		return false
	}
	if now.Sub(c.Issued) > CommandTTL {
		c.State = CommandExpired
		return false
	}
	if c.State == CommandPending {
		c.State, c.DeliveredAt = CommandDelivered, now
	}
	return true
}

// complete applies the device's result once. It reports false for a result
// of a command that is already closed: a replay, which changes nothing.
func (c *Command) complete(r *protocol.CommandResult, now time.Time) bool {
	if !c.State.Open() {
		return false
	}
	c.CompletedAt = now
	if r.Status == protocol.CommandDone {
		c.State = CommandAcknowledged
	} else {
		c.State = CommandFailed
		c.Error = fmt.Sprintf("%s: %s", r.Status, r.Error)
	}
	return true
}
