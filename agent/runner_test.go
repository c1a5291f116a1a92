package agent

import (
	"bytes"
	"log/slog"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/mdm-authority/mdm/protocol"
)

// fixedClock is a clock that stands still.
type fixedClock struct{ now time.Time }

func (c fixedClock) Now() time.Time { return c.now }

func (c fixedClock) NewTimer(time.Duration) (<-chan time.Time, func()) { return nil, func() {} }

// TestRunnerRejectedMessages checks that messages the runner or the core
// drop are counted by reason, shown in the status, and logged at the 1st,
// 2nd, 4th, 8th … of each reason only.
func TestRunnerRejectedMessages(t *testing.T) {
	var logs bytes.Buffer
	st := enrolledState(protocol.PlatformIOS)
	r := &runner{
		opts: Options{Clock: fixedClock{t0}}, log: slog.New(slog.NewTextHandler(&logs, nil)),
		core: newCore(t, st), rejected: map[string]uint64{},
	}
	encode := func(device string, replyTo protocol.MessageID, body protocol.Body) []byte {
		t.Helper()
		b, err := protocol.Encode(protocol.Envelope{ID: protocol.MessageID{1}, Sent: protocol.At(t0), Device: device, ReplyTo: replyTo, Body: body})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	ours := protocol.DownlinkTopic(st.Tenant, st.Device)
	push := encode(st.Device, protocol.MessageID{}, &protocol.Push{Epoch: 2, Reason: protocol.PushAuthorityChange})

	for range 20 {
		r.receive(ours, []byte("garbage"))
	}
	r.receive(protocol.DownlinkTopic(st.Tenant, "d-2"), push)
	r.receive(protocol.UplinkTopic(st.Tenant, st.Device), push)
	r.receive(ours, encode("d-2", protocol.MessageID{}, &protocol.Push{Epoch: 2, Reason: protocol.PushAuthorityChange}))
	r.receive(ours, encode(st.Device, protocol.MessageID{9}, &protocol.CheckInResponse{Error: protocol.CodeAPNsCertificateMissing, Message: "no APNs"}))
	r.receive(ours, push) // admitted: not counted

	want := map[string]uint64{"malformed": 20, "wrong_topic": 2, "device_mismatch": 1, IgnoredStale: 1}
	if !maps.Equal(r.rejected, want) {
		t.Errorf("rejected = %v; want %v", r.rejected, want)
	}
	logged := strings.Count(logs.String(), "reason=malformed")
	if logged != 5 || !strings.Contains(logs.String(), "count=16") || strings.Contains(logs.String(), "count=3 ") {
		t.Errorf("logged %d of 20 malformed messages; want the 1st, 2nd, 4th, 8th and 16th:\n%s", logged, logs.String())
	}
	for _, reason := range []string{"wrong_topic", "device_mismatch", IgnoredStale} {
		if !strings.Contains(logs.String(), "reason="+reason) {
			t.Errorf("the log lacks the first %s:\n%s", reason, logs.String())
		}
	}

	reply := make(chan localReply, 1)
	r.serveLocal(localRequest{kind: "status", reply: reply})
	s := (<-reply).body.(Status)
	if !maps.Equal(s.RejectedMessages, want) {
		t.Errorf("status rejected_messages = %v; want %v", s.RejectedMessages, want)
	}
	r.receive(ours, []byte("garbage"))
	if s.RejectedMessages["malformed"] != 20 {
		t.Errorf("the status shares the runner's counters; want a copy")
	}
}
