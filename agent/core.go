package agent

import (
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/mdm-authority/mdm/protocol"
)

// DefaultRenewalWindow is how long before its certificate expires the
// device asks for a renewed one; the service's default window.
const DefaultRenewalWindow = 30 * 24 * time.Hour

// Errors of a manual sync that cannot start.
var (
	ErrOffline            = errors.New("the agent is not connected to the service; it keeps trying and checks in once it is")
	ErrCertificateExpired = errors.New("the device's MDM certificate has expired; unenroll and enroll the device again")
	ErrStopped            = errors.New("the device is no longer managed")
)

// Config configures a Core.
type Config struct {
	// Rand supplies jitter and message ids. The simulator seeds it so that a
	// seed reproduces a schedule; the agent seeds it from crypto/rand.
	Rand *rand.Rand
	// Facts are what compliance rules check; SetFacts updates them.
	Facts Facts
	// RenewalWindow is how long before expiry the certificate is renewed;
	// zero means DefaultRenewalWindow.
	RenewalWindow time.Duration
}

// Output is what a step of the core asks the runner to do, in this order:
// persist the state, send the messages, apply the profile changes, run the
// lock hook, and stop if asked.
type Output struct {
	// Persist means the state changed and must be written before anything
	// else happens.
	Persist bool
	// Send lists the envelopes to publish on the device's uplink topic.
	Send []protocol.Envelope
	// Changes lists the profile changes to apply: install Profile for
	// Installed, Updated and Overwritten (and remove Replaced), remove
	// Profile for Removed and Expired; Retained changes only the deadline.
	Changes []Change
	// Locks asks the runner to lock the device, then to call Finish with
	// each command's id.
	Locks []protocol.Command
	// Stop is set when a wipe or retire ended management: the runner sends
	// what is in Send, removes the identity (and for a wipe the state) and
	// stops communicating.
	Stop string
	// Renewed is set when the service renewed the certificate: new
	// connections use it.
	Renewed bool
	// Synced is the outcome of a manual sync, when one finished.
	Synced *SyncResult
	// Ignored says why Receive did nothing with a message, if it did
	// nothing: one of the Ignored... reasons. The runner counts them.
	Ignored string
}

// Why Receive ignores a message.
const (
	IgnoredStale   = "stale_response"  // an answer to a check-in no longer awaited
	IgnoredKind    = "unexpected_kind" // a kind the service does not send a device
	IgnoredStopped = "stopped"         // the device is no longer managed
)

func (o *Output) merge(x Output) {
	o.Persist = o.Persist || x.Persist
	o.Send = append(o.Send, x.Send...)
	o.Changes = append(o.Changes, x.Changes...)
	o.Locks = append(o.Locks, x.Locks...)
	if x.Stop != "" {
		o.Stop = x.Stop
	}
	o.Renewed = o.Renewed || x.Renewed
	if x.Synced != nil {
		o.Synced = x.Synced
	}
}

// SyncResult is the outcome of a manual sync.
type SyncResult struct {
	Started   time.Time          `json:"started"`
	Duration  time.Duration      `json:"duration_ns"`
	Authority protocol.Authority `json:"authority"`
	// AuthorityChanged reports whether this check-in moved the device.
	AuthorityChanged bool                `json:"authority_changed"`
	Changes          []Change            `json:"changes,omitempty"`
	Commands         []CommandRecord     `json:"commands,omitempty"`
	Compliance       protocol.Compliance `json:"compliance"`
	Error            protocol.ErrorCode  `json:"error,omitempty"`
	Message          string              `json:"message,omitempty"`
}

// Core is the agent's state machine. It is single-threaded and does no I/O:
// the runner (or the simulator) feeds it messages and clock readings and
// carries out the Output it returns. It must not be used concurrently.
type Core struct {
	st    *State
	cfg   Config
	facts Facts

	online bool
	// The check-in awaiting its answer, if any.
	inflight       protocol.MessageID
	inflightAt     time.Time
	inflightReason protocol.CheckInReason
	// want is a check-in asked for by a push, a sync or a command, sent at
	// wantAt (or when the device is next online).
	want   protocol.CheckInReason
	wantAt time.Time
	// pushedInFlight records a push that arrived while a check-in was in
	// flight: its answer may predate what the push announces.
	pushedInFlight bool
	lastPushed     time.Time
	// Manual sync bookkeeping.
	syncWanted  bool
	syncStarted time.Time
	syncID      protocol.MessageID
	syncLog     []Change
	syncCmds    []CommandRecord
}

// New returns a core for an enrolled device's state. The core owns st from
// now on; State returns it for persisting.
func New(st *State, cfg Config) *Core {
	if cfg.Rand == nil {
		panic("agent: Config.Rand is required")
	}
	if cfg.RenewalWindow == 0 {
		cfg.RenewalWindow = DefaultRenewalWindow
	}
	return &Core{st: st, cfg: cfg, facts: cfg.Facts}
}

// State returns the state to persist. The caller must not modify it.
func (c *Core) State() *State { return c.st }

// SetFacts updates the device facts used by the next evaluation.
func (c *Core) SetFacts(f Facts) { c.facts = f }

// Facts returns the device facts in use.
func (c *Core) Facts() Facts { return c.facts }

// Start is called once after New: it expires what expired while the agent
// was not running and schedules the first check-in of a new enrollment.
func (c *Core) Start(now time.Time) Output {
	var out Output
	if c.st.Stopped != "" {
		return out
	}
	if c.st.CheckIns == 0 && c.st.LastAttempt.IsZero() {
		c.want, c.wantAt = protocol.CheckInEnrollment, now
	}
	if c.st.NextCheckIn.IsZero() {
		c.st.NextCheckIn = now
		out.Persist = true
	}
	// A lock whose hook a restart interrupted runs again: locking twice
	// is harmless, never reporting it is not.
	for _, r := range c.st.Commands {
		if r.Status == 0 && r.Action == protocol.CommandRemoteLock {
			out.Locks = append(out.Locks, protocol.Command{ID: r.ID, Action: r.Action, Message: r.Message})
		}
	}
	out.merge(c.expire(now))
	return out
}

// Connected tells the core that the MQTT session is up: it sends the
// command results not yet acknowledged and any check-in that came due.
func (c *Core) Connected(now time.Time) Output {
	c.online = true
	var out Output
	for _, r := range c.st.Commands {
		if r.Status != 0 && !r.Sent {
			out.Send = append(out.Send, c.envelope(now, c.result(r)))
		}
	}
	out.merge(c.Tick(now))
	return out
}

// Disconnected tells the core that the session is down. A check-in in
// flight is abandoned and sent again once the device is back; a lost
// connection is the runner's to retry, not a failed check-in.
func (c *Core) Disconnected(now time.Time) {
	c.online = false
	if c.inflight != (protocol.MessageID{}) {
		if c.want == 0 {
			c.want, c.wantAt = c.inflightReason, now
		}
		c.inflight = protocol.MessageID{}
	}
}

// Tick advances the core to now: retained profiles expire, a check-in in
// flight times out, and a check-in due is sent.
func (c *Core) Tick(now time.Time) Output {
	var out Output
	if c.st.Stopped != "" {
		return out
	}
	out.merge(c.expire(now))
	if c.inflight != (protocol.MessageID{}) {
		if now.Sub(c.inflightAt) < ResponseTimeout {
			return out
		}
		manual := c.syncWanted && c.inflight == c.syncID
		out.merge(c.failed(now, 0, fmt.Sprintf("no answer within %s", ResponseTimeout), manual))
	}
	if !now.Before(c.st.CertNotAfter) {
		// Expired: no more check-ins, and nothing for NextWake to wake for
		// but the retention deadlines.
		if c.st.NextCheckIn.Before(c.st.CertNotAfter) || c.want != 0 {
			c.st.NextCheckIn, c.want = c.st.CertNotAfter, 0
			out.Persist = true
		}
		return out
	}
	if !c.online {
		return out
	}
	switch {
	case c.want != 0 && !now.Before(c.wantAt):
		out.merge(c.checkIn(now, c.want))
	case !now.Before(c.st.NextCheckIn):
		reason := protocol.CheckInScheduled
		if c.st.Failures > 0 {
			reason = protocol.CheckInRetry
		}
		out.merge(c.checkIn(now, reason))
	}
	return out
}

// NextWake returns when Tick next has work to do, or the zero time when
// nothing is scheduled. Messages and connection changes may bring it
// forward; the caller asks again after each step.
func (c *Core) NextWake() time.Time {
	if c.st.Stopped != "" {
		return time.Time{}
	}
	next := nextExpiry(c.st.Profiles)
	earliest := func(t time.Time) {
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	if c.inflight != (protocol.MessageID{}) {
		earliest(c.inflightAt.Add(ResponseTimeout))
	} else if c.online {
		if c.st.NextCheckIn.Before(c.st.CertNotAfter) {
			earliest(c.st.NextCheckIn)
		}
		if c.want != 0 && c.wantAt.Before(c.st.CertNotAfter) {
			earliest(c.wantAt)
		}
	}
	return next
}

// Sync starts a manual (Company Portal) check-in. The outcome arrives as
// Output.Synced of a later step.
func (c *Core) Sync(now time.Time) (Output, error) {
	switch {
	case c.st.Stopped != "":
		return Output{}, fmt.Errorf("%w: it was %s", ErrStopped, c.st.Stopped)
	case !now.Before(c.st.CertNotAfter):
		return Output{}, ErrCertificateExpired
	case !c.online:
		return Output{}, ErrOffline
	}
	if !c.syncWanted {
		c.syncWanted, c.syncStarted = true, now
		c.syncLog, c.syncCmds = nil, nil
	}
	if c.inflight != (protocol.MessageID{}) {
		if c.inflightReason == protocol.CheckInManual {
			return Output{}, nil // this sync joins the one in flight
		}
		c.want, c.wantAt = protocol.CheckInManual, now
		return Output{}, nil
	}
	c.want, c.wantAt = protocol.CheckInManual, now
	return c.Tick(now), nil
}

// Published tells the core that the broker acknowledged an envelope the
// core asked to send. A command result is then never sent again.
func (c *Core) Published(env protocol.Envelope) Output {
	r, ok := env.Body.(*protocol.CommandResult)
	if !ok {
		return Output{}
	}
	for i := range c.st.Commands {
		if rec := &c.st.Commands[i]; rec.ID == r.ID && !rec.Sent {
			rec.Sent = true
			return Output{Persist: true}
		}
	}
	return Output{}
}

// Finish records the outcome of a command the runner carried out (a
// remote lock's hook) and sends its result.
func (c *Core) Finish(now time.Time, id string, status protocol.CommandStatus, errText string) Output {
	for i := range c.st.Commands {
		rec := &c.st.Commands[i]
		if rec.ID != id || rec.Status != 0 {
			continue
		}
		rec.Status, rec.Completed, rec.Error = status, now, errText
		return Output{Persist: true, Send: []protocol.Envelope{c.envelope(now, c.result(*rec))}}
	}
	return Output{}
}

// Receive handles an envelope from the device's downlink topic. The
// caller has decoded and checked it against the topic.
func (c *Core) Receive(now time.Time, env protocol.Envelope) Output {
	if c.st.Stopped != "" {
		return Output{Ignored: IgnoredStopped}
	}
	switch m := env.Body.(type) {
	case *protocol.Push:
		return c.push(now)
	case *protocol.Command:
		return c.commands(now, []protocol.Command{*m})
	case *protocol.CheckInResponse:
		if env.ReplyTo != c.inflight || c.inflight == (protocol.MessageID{}) {
			return Output{Ignored: IgnoredStale}
		}
		return c.response(now, m)
	}
	return Output{Ignored: IgnoredKind}
}

func (c *Core) push(now time.Time) Output {
	if c.inflight != (protocol.MessageID{}) {
		c.pushedInFlight = true
		return Output{}
	}
	at := later(now, c.lastPushed.Add(pushGap))
	if c.want == 0 || at.Before(c.wantAt) {
		c.want, c.wantAt = protocol.CheckInPushed, at
	}
	return c.Tick(now)
}

// checkIn sends a check-in now.
func (c *Core) checkIn(now time.Time, reason protocol.CheckInReason) Output {
	c.st.Compliance = Evaluate(c.st.Profiles, c.facts, now)
	c.st.OSVersion = c.facts.OSVersion
	m := &protocol.CheckIn{
		Reason:            reason,
		Profiles:          make([]protocol.InstalledProfile, len(c.st.Profiles)),
		Compliance:        c.st.Compliance,
		CertificateExpiry: protocol.At(c.st.CertNotAfter),
		DesiredVersion:    c.st.DesiredVersion,
		Epoch:             c.st.Epoch,
		OSVersion:         c.facts.OSVersion,
	}
	for i, p := range c.st.Profiles {
		m.Profiles[i] = protocol.InstalledProfile{Type: p.Type, Name: p.Name, Authority: p.Authority, Version: p.Version, RetainUntil: protocol.At(p.RetainUntil)}
	}
	if c.st.CertNotAfter.Sub(now) <= c.cfg.RenewalWindow {
		m.RenewalCSR = c.st.RenewalCSR
	}
	env := c.envelope(now, m)
	c.inflight, c.inflightAt, c.inflightReason = env.ID, now, reason
	if reason == protocol.CheckInPushed {
		c.lastPushed = now
	}
	if c.syncWanted && reason == protocol.CheckInManual {
		c.syncID = env.ID
	}
	c.want, c.wantAt = 0, time.Time{}
	c.st.LastAttempt = now
	return Output{Persist: true, Send: []protocol.Envelope{env}}
}

// response handles the answer to the check-in in flight.
func (c *Core) response(now time.Time, m *protocol.CheckInResponse) Output {
	manual := c.syncWanted && c.inflight == c.syncID
	c.inflight = protocol.MessageID{}
	if m.Error != protocol.CodeNone {
		return c.failed(now, m.Error, m.Message, manual)
	}
	out := Output{Persist: true}
	st := c.st
	moved := false
	if m.Authority != st.Authority && m.DesiredVersion >= st.DesiredVersion {
		st.PreviousAuthority, st.Authority, st.AuthoritySince = st.Authority, m.Authority, now
		moved = true
	}
	if m.Epoch > st.Epoch {
		st.Epoch = m.Epoch
	}
	if !m.ChangedAt.IsZero() {
		st.ChangedAt = m.ChangedAt.Time()
	}
	if m.DesiredVersion > st.DesiredVersion {
		var changes []Change
		st.Profiles, changes = applyDesired(st.Profiles, st.Authority, m.Profiles, m.RetainUntil.Time(), now)
		st.DesiredVersion = m.DesiredVersion
		out.Changes = append(out.Changes, changes...)
		if len(changes) > 0 {
			st.LastChangeLog = changes
		}
	}
	if len(m.Certificate) > 0 {
		if cert, err := x509.ParseCertificate(m.Certificate); err == nil && cert.NotAfter.After(st.CertNotAfter) {
			st.Certificate, st.CertNotAfter, st.ConnectToken = m.Certificate, cert.NotAfter, m.ConnectToken
			out.Renewed = true
		}
	}
	st.LastCheckIn, st.LastError, st.LastMessage, st.Failures = now, 0, "", 0
	st.CheckIns++
	interval := Interval(st.Platform, now.Sub(st.EnrolledAt))
	if m.NextCheckIn > 0 {
		st.NextCheckIn = now.Add(time.Duration(m.NextCheckIn) * time.Second)
	} else {
		st.NextCheckIn = now.Add(jittered(c.cfg.Rand, interval))
	}
	cmds := c.commands(now, m.Commands)
	out.merge(cmds)
	if out.Stop == "" {
		out.Send = append(out.Send, c.reportCompliance(now)...)
	}
	if c.pushedInFlight {
		c.pushedInFlight = false
		if c.want == 0 {
			c.want, c.wantAt = protocol.CheckInPushed, later(now, c.lastPushed.Add(pushGap))
		}
	}
	if c.syncWanted {
		c.syncLog = append(c.syncLog, out.Changes...)
		c.syncCmds = append(c.syncCmds, c.newRecords(cmds)...)
	}
	if manual {
		out.Synced = &SyncResult{
			Started: c.syncStarted, Duration: now.Sub(c.syncStarted), Authority: st.Authority,
			AuthorityChanged: moved, Changes: c.syncLog, Commands: c.syncCmds, Compliance: st.Compliance,
		}
		c.syncWanted, c.syncLog, c.syncCmds = false, nil, nil
	}
	if out.Stop == "" {
		out.merge(c.Tick(now))
	}
	return out
}

// newRecords returns the command records of the results in o.
func (c *Core) newRecords(o Output) []CommandRecord {
	var recs []CommandRecord
	for _, env := range o.Send {
		if r, ok := env.Body.(*protocol.CommandResult); ok {
			for _, rec := range c.st.Commands {
				if rec.ID == r.ID {
					recs = append(recs, rec)
				}
			}
		}
	}
	for _, l := range o.Locks {
		for _, rec := range c.st.Commands {
			if rec.ID == l.ID {
				recs = append(recs, rec)
			}
		}
	}
	return recs
}

// failed records a failed check-in: refused with code, or unanswered when
// code is zero, and schedules the retry. manual says the check-in was a
// manual sync's, whose caller is told.
func (c *Core) failed(now time.Time, code protocol.ErrorCode, msg string, manual bool) Output {
	st := c.st
	c.inflight = protocol.MessageID{}
	st.LastError, st.LastMessage = code, msg
	st.Failures++
	st.FailedChecks++
	interval := Interval(st.Platform, now.Sub(st.EnrolledAt))
	switch code {
	case protocol.CodeAPNsCertificateMissing, protocol.CodeUnsupportedByAuthority, protocol.CodeNotEnrolled,
		protocol.CodeCertificateExpired, protocol.CodeInvalidToken, protocol.CodeConsentRequired, protocol.CodeAuthorityNotSet:
		// Conditions only an admin can end: retry at the schedule, which
		// a push brings forward once they end.
		st.NextCheckIn = now.Add(jittered(c.cfg.Rand, interval))
	default:
		st.NextCheckIn = now.Add(Backoff(c.cfg.Rand, st.Failures, backoffBase, interval))
	}
	out := Output{Persist: true}
	if c.pushedInFlight {
		// The push may announce the end of the refusal (an APNs
		// certificate uploaded): check in again rather than wait.
		c.pushedInFlight = false
		if c.want == 0 {
			c.want, c.wantAt = protocol.CheckInPushed, later(now, c.lastPushed.Add(pushGap))
		}
	}
	if manual {
		if code == 0 {
			code = protocol.CodeInternal
		}
		out.Synced = &SyncResult{
			Started: c.syncStarted, Duration: now.Sub(c.syncStarted), Authority: st.Authority,
			Changes: c.syncLog, Commands: c.syncCmds, Compliance: st.Compliance, Error: code, Message: msg,
		}
		c.syncWanted, c.syncLog, c.syncCmds = false, nil, nil
	}
	return out
}

// expire removes the retained profiles whose deadline came.
func (c *Core) expire(now time.Time) Output {
	ps, changes := expire(c.st.Profiles, now)
	if len(changes) == 0 {
		return Output{}
	}
	c.st.Profiles = ps
	c.st.LastChangeLog = changes
	out := Output{Persist: true, Changes: changes}
	if c.online && c.inflight == (protocol.MessageID{}) && now.Before(c.st.CertNotAfter) {
		out.Send = c.reportCompliance(now)
	}
	return out
}

// reportCompliance re-evaluates compliance after the profiles changed and
// reports a changed result at once rather than at the next check-in.
func (c *Core) reportCompliance(now time.Time) []protocol.Envelope {
	st := c.st
	after := Evaluate(st.Profiles, c.facts, now)
	if after.State == st.Compliance.State && slices.Equal(after.Failures, st.Compliance.Failures) {
		return nil
	}
	st.Compliance = after
	return []protocol.Envelope{c.envelope(now, &protocol.ComplianceReport{Compliance: after, OSVersion: c.facts.OSVersion})}
}

// maxCommandRecords bounds the command history kept in the state; a
// response carries at most protocol.MaxCommands.
const maxCommandRecords = 4 * protocol.MaxCommands

// commandMemory is how long a finished command is remembered, longer than
// the service keeps offering it.
const commandMemory = 60 * 24 * time.Hour

// commands carries out the commands not seen before.
func (c *Core) commands(now time.Time, cmds []protocol.Command) Output {
	var out Output
	for _, cmd := range cmds {
		if out.Stop != "" {
			break
		}
		if slices.ContainsFunc(c.st.Commands, func(r CommandRecord) bool { return r.ID == cmd.ID }) {
			continue // carried out once already
		}
		rec := CommandRecord{ID: cmd.ID, Action: cmd.Action, Message: cmd.Message, Received: now}
		out.Persist = true
		switch cmd.Action {
		case protocol.CommandRemoteLock:
			c.st.Lock = &Lock{At: now, Message: cmd.Message, Command: cmd.ID}
			out.Locks = append(out.Locks, cmd)
			c.st.Commands = append(c.st.Commands, rec)
			continue // Finish sends the result
		case protocol.CommandSync:
			if c.want == 0 {
				c.want, c.wantAt = protocol.CheckInPushed, now
			}
			rec.Status = protocol.CommandDone
		case protocol.CommandWipe, protocol.CommandRetire:
			rec.Status = protocol.CommandDone
			for _, p := range c.st.Profiles {
				out.Changes = append(out.Changes, Change{Kind: Removed, Profile: p})
			}
			c.st.Profiles = nil
			out.Stop = StoppedWiped
			if cmd.Action == protocol.CommandRetire {
				out.Stop = StoppedRetired
			}
			c.st.Stopped = out.Stop
		default:
			rec.Status, rec.Error = protocol.CommandRejected, "unknown action "+cmd.Action.String()
		}
		rec.Completed = now
		c.st.Commands = append(c.st.Commands, rec)
		out.Send = append(out.Send, c.envelope(now, c.result(rec)))
	}
	if out.Persist {
		c.pruneCommands(now)
	}
	return out
}

// pruneCommands forgets old finished commands.
func (c *Core) pruneCommands(now time.Time) {
	keep := c.st.Commands[:0]
	for _, r := range c.st.Commands {
		if r.Status == 0 || !r.Sent || now.Sub(r.Received) < commandMemory {
			keep = append(keep, r)
		}
	}
	if over := len(keep) - maxCommandRecords; over > 0 {
		keep = slices.Delete(keep, 0, over)
	}
	c.st.Commands = keep
}

func (c *Core) result(r CommandRecord) *protocol.CommandResult {
	return &protocol.CommandResult{ID: r.ID, Status: r.Status, Completed: protocol.At(r.Completed), Error: r.Error}
}

// envelope wraps body for sending from this device.
func (c *Core) envelope(now time.Time, body protocol.Body) protocol.Envelope {
	var id protocol.MessageID
	binary.LittleEndian.PutUint64(id[:8], c.cfg.Rand.Uint64())
	binary.LittleEndian.PutUint64(id[8:], c.cfg.Rand.Uint64())
	return protocol.Envelope{ID: id, Sent: protocol.At(now), Device: c.st.Device, Body: body}
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// Unenroll takes the device out of management at its user's request: it
// tells the service, removes every MDM profile and stops.
func (c *Core) Unenroll(now time.Time, reason string) Output {
	out := Output{Persist: true, Stop: StoppedUnenrolled}
	if c.st.Stopped == "" {
		out.Send = append(out.Send, c.envelope(now, &protocol.Unenroll{Reason: reason}))
	}
	for _, p := range c.st.Profiles {
		out.Changes = append(out.Changes, Change{Kind: Removed, Profile: p})
	}
	c.st.Profiles = nil
	c.st.Stopped = StoppedUnenrolled
	return out
}
