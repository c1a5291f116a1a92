package broker

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mdm-authority/mdm/protocol"
)

// Clock tells the service the time. Tests and the simulator pass their own;
// nil means the real clock.
type Clock interface {
	Now() time.Time
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

// PushRetryDelays are the waits before the retries of a push a device did
// not answer with a check-in: three more tries, spaced out. Each must be
// positive: a retry due at once would be sent again by the same
// DuePushes call.
var PushRetryDelays = []time.Duration{5 * time.Minute, 30 * time.Minute, 2 * time.Hour}

// Options configure a Service. Zero values take the defaults.
type Options struct {
	// Tenant is the tenant id in the topics; default "default".
	Tenant string
	// Clock is the time source; default the real clock.
	Clock Clock
	// Logger receives the service's log; default discards it.
	Logger *slog.Logger
	// Rand is the source of ids and tokens, safe for concurrent use;
	// default crypto/rand.
	Rand io.Reader
	// CertValidity is the lifetime of device certificates; default 1 year.
	CertValidity time.Duration
	// RetentionPeriod is how long the previous authority's profiles stay on
	// a device after it moves; default RetentionPeriod (7 days). Shorter
	// periods are for trying a migration out.
	RetentionPeriod time.Duration
	// RenewalWindow is how long before expiry a device may renew its
	// certificate; default 30 days.
	RenewalWindow time.Duration
	// EnrollmentTokenFile, when set, receives the enrollment token (mode
	// 0600) each time it is created or rotated: the store keeps only its
	// hash.
	EnrollmentTokenFile string
}

// Outgoing is a message the service publishes.
type Outgoing struct {
	Topic   string
	QoS     byte
	Payload []byte
}

// Service is the management service: the tenant's authority, devices,
// profiles, commands and pushes, on a durable store. Its message handling
// is safe for concurrent use.
type Service struct {
	opts  Options
	store *Store
	ca    *CA

	// testHookDecided, when set by a test, runs after a check-in has taken
	// its snapshot and before it writes.
	testHookDecided func()

	metrics  metrics
	enrolled recentEnrollments
	answered answeredPushes

	// disconnect, set by the broker serving the service, ends a device's
	// MQTT session.
	disconnect atomic.Pointer[func(device string)]

	mu       sync.RWMutex
	tenant   *Tenant   // cached: read on every check-in, written by admin operations
	profiles []Profile // cached catalogs; nil when not loaded since the last change
}

// NewService returns a service on store, issuing certificates with ca.
func NewService(store *Store, ca *CA, opts Options) (*Service, error) {
	if opts.Tenant == "" {
		opts.Tenant = "default"
	}
	if err := protocol.ValidID(opts.Tenant); err != nil {
		return nil, fmt.Errorf("tenant id: %w", err)
	}
	if opts.Clock == nil {
		opts.Clock = realClock{}
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Rand == nil {
		opts.Rand = rand.Reader
	}
	if opts.CertValidity == 0 {
		opts.CertValidity = 365 * 24 * time.Hour
	}
	if opts.RenewalWindow == 0 {
		opts.RenewalWindow = 30 * 24 * time.Hour
	}
	if opts.RetentionPeriod == 0 {
		opts.RetentionPeriod = RetentionPeriod
	}
	s := &Service{opts: opts, store: store, ca: ca}
	err := store.View(func(tx *Tx) error {
		t, err := tx.Tenant()
		s.tenant = t
		return err
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// Tenant returns a copy of the tenant's authority state. Its maps and
// slices are shared with the service: read them, do not change them.
func (s *Service) Tenant() Tenant {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return *s.tenant
}

// updateTenant runs fn on a copy of the tenant state inside a store
// transaction and, when both succeed, makes the copy current.
func (s *Service) updateTenant(fn func(tx *Tx, t *Tenant) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, err := cloneTenant(s.tenant)
	if err != nil {
		return err
	}
	err = s.store.Update(func(tx *Tx) error {
		if err := fn(tx, t); err != nil {
			return err
		}
		return tx.PutTenant(t)
	})
	if err != nil {
		return err
	}
	s.tenant = t
	s.profiles = nil // catalog changes happen only in here
	return nil
}

func cloneTenant(t *Tenant) (*Tenant, error) {
	b, err := storeEnc.Marshal(t)
	if err != nil {
		return nil, err
	}
	var c Tenant
	return &c, storeDec.Unmarshal(b, &c)
}

// RotateEnrollmentToken creates a new enrollment token, which replaces the
// previous one, and returns it. Only its hash is stored, and the token
// itself is written to Options.EnrollmentTokenFile when set.
func (s *Service) RotateEnrollmentToken() (string, error) {
	var b [18]byte
	if _, err := io.ReadFull(s.opts.Rand, b[:]); err != nil {
		return "", fmt.Errorf("enrollment token: %w", err)
	}
	token := "enr-" + hex.EncodeToString(b[:])
	sum := sha256.Sum256([]byte(token))
	if s.opts.EnrollmentTokenFile != "" {
		// The file first: a token only in the store could never be read.
		if err := writeFileAtomic(s.opts.EnrollmentTokenFile, []byte(token+"\n"), 0o600); err != nil {
			return "", fmt.Errorf("enrollment token: %w", err)
		}
	}
	err := s.store.Update(func(tx *Tx) error { return tx.PutTokenHash(sum[:]) })
	if err != nil {
		return "", fmt.Errorf("enrollment token: %w", err)
	}
	return token, nil
}

// checkToken reports whether token is the current enrollment token,
// comparing hashes in constant time.
func (s *Service) checkToken(token string) bool {
	var hash []byte
	if err := s.store.View(func(tx *Tx) error { hash = tx.TokenHash(); return nil }); err != nil {
		return false
	}
	sum := sha256.Sum256([]byte(token))
	return hash != nil && subtle.ConstantTimeCompare(hash, sum[:]) == 1
}

func (s *Service) newID(prefix string) (string, error) {
	var b [8]byte
	if _, err := io.ReadFull(s.opts.Rand, b[:]); err != nil {
		return "", fmt.Errorf("new id: %w", err)
	}
	return prefix + hex.EncodeToString(b[:]), nil
}

// SetAuthority changes the tenant's MDM authority and asks every enrolled
// device to check in: at once, through the push queue. iOS and iPadOS
// devices whose new authority has no APNs certificate are not pushed; the
// upload pushes them. It returns the change and the number of pushes queued.
func (s *Service) SetAuthority(m Mode) (AuthorityChange, int, error) {
	now := s.opts.Clock.Now()
	var change AuthorityChange
	queued := 0
	err := s.updateTenant(func(tx *Tx, t *Tenant) error {
		c, err := t.SetMode(m, now)
		if err != nil {
			return err
		}
		change = c
		return tx.Devices(func(d *Device) error {
			if !d.Managed() {
				return nil
			}
			target, stranded := d.target(t)
			if d.NeedsSupport != stranded {
				// Listed as needing support from the change on, not from
				// its next check-in.
				d.NeedsSupport = stranded
				if err := tx.PutDevice(d); err != nil {
					return err
				}
			}
			if d.Platform.NeedsAPNs() && !t.HasAPNs(target) {
				return nil
			}
			queued++
			return s.schedulePush(tx, d, protocol.PushAuthorityChange, now)
		})
	})
	if err != nil {
		return AuthorityChange{}, 0, fmt.Errorf("set authority: %w", err)
	}
	s.opts.Logger.Info("authority changed", "from", change.From, "to", change.To, "epoch", change.Epoch, "pushes", queued)
	return change, queued, nil
}

// UploadAPNs records the APNs certificate of authority a, with the admin's
// consent, and pushes the iOS and iPadOS devices that have not checked in
// since the last change and now can.
func (s *Service) UploadAPNs(a protocol.Authority, consent bool) (int, error) {
	now := s.opts.Clock.Now()
	queued := 0
	err := s.updateTenant(func(tx *Tx, t *Tenant) error {
		if err := t.UploadAPNs(a, consent, now); err != nil {
			return err
		}
		return tx.Devices(func(d *Device) error {
			target, _ := d.target(t)
			if !d.Managed() || !d.Platform.NeedsAPNs() || target != a || d.LastCheckIn.After(t.SinceFor(d.User)) {
				return nil
			}
			queued++
			return s.schedulePush(tx, d, protocol.PushAuthorityChange, now)
		})
	})
	if err != nil {
		return 0, fmt.Errorf("upload APNs certificate: %w", err)
	}
	return queued, nil
}

// schedulePush queues a push to d due now, in place of any queued one
// (left behind in the queue: see pushEntry).
func (s *Service) schedulePush(tx *Tx, d *Device, reason protocol.PushReason, now time.Time) error {
	d.Push.owe(reason, now)
	if err := tx.queuePush(d, now, 0); err != nil {
		return err
	}
	return tx.PutDevice(d)
}

// DuePushes takes up to max pushes that are due and returns them as
// messages to publish. Each is requeued for its next retry, or dropped after
// the last, before it is returned: a push lost in a crash is retried.
// Queue entries left behind (see pushEntry) are dropped on the way and do
// not count: each is read once, when it comes due. A change that pushes a
// fleet again before its last push was sent leaves an entry per device
// due first; the next call drops them all in its one transaction, as the
// change's own transaction deleted them before entries were left behind.
func (s *Service) DuePushes(max int) ([]Outgoing, error) {
	if max <= 0 {
		return nil, nil
	}
	now := s.opts.Clock.Now()
	t := s.Tenant()
	// The due devices' records are read and decoded here, on every core;
	// the write transaction takes those that are unchanged.
	read := map[string]*deviceRead{}
	if due, err := s.store.readDuePushes(now, max, &s.answered, read); err != nil || !due {
		return nil, err // nothing due: no write transaction
	}
	var out []Outgoing
	retries := 0
	err := s.store.Update(func(tx *Tx) error {
		out, retries = out[:0], 0
		taken := 0
		for e, err := range tx.takeDue(now, max) {
			if err != nil {
				return err
			}
			if s.answered.drop(&e) {
				continue // answered: left behind
			}
			d, err := tx.deviceFrom(e.device, read[e.device])
			if errors.Is(err, ErrNotFound) {
				continue // a device removed since: left behind
			} else if err != nil {
				return err
			}
			if !e.current(d) {
				continue // it checked in or was pushed again since
			}
			taken++
			sent := e.sent(d)
			o, err := s.takePush(tx, &t, d, sent, now)
			if err != nil {
				return err
			}
			if o != nil {
				out = append(out, *o)
				if sent > 0 {
					retries++
				}
			}
			if taken == max {
				break // not before: takeDue has deleted the entry it yields
			}
		}
		return nil
	})
	if err == nil {
		s.metrics.pushesSent.Add(uint64(len(out)))
		s.metrics.pushRetries.Add(uint64(retries))
	}
	return out, err
}

// takePush sends the push d is owed, sent sent times before, and queues
// its next retry (the device record does not change: the queue entry
// keeps the sends and the retry's time), or ends it after the last retry.
// It returns nil instead of a push when d is not managed or no push can
// reach it: the APNs upload pushes iOS and iPadOS devices when it can.
func (s *Service) takePush(tx *Tx, t *Tenant, d *Device, sent int, now time.Time) (*Outgoing, error) {
	target, _ := d.target(t)
	if !d.Managed() || (d.Platform.NeedsAPNs() && !t.HasAPNs(target)) {
		d.Push.clear()
		return nil, tx.PutDevice(d)
	}
	msg, err := s.encode(d.ID, protocol.MessageID{}, &protocol.Push{Epoch: t.Epoch, Reason: d.Push.Reason})
	if err != nil {
		return nil, err
	}
	o := &Outgoing{Topic: protocol.DownlinkTopic(s.opts.Tenant, d.ID), QoS: 0, Payload: msg}
	if sent < len(PushRetryDelays) {
		return o, tx.queuePush(d, now.Add(PushRetryDelays[sent]), sent+1)
	}
	d.Push.clear()
	return o, tx.PutDevice(d)
}

// encode builds one outgoing message with a fresh id.
func (s *Service) encode(device string, replyTo protocol.MessageID, body protocol.Body) ([]byte, error) {
	id, err := protocol.NewMessageID(s.opts.Rand)
	if err != nil {
		return nil, err
	}
	env := protocol.Envelope{ID: id, Sent: protocol.At(s.opts.Clock.Now()), Device: device, ReplyTo: replyTo, Body: body}
	// Devices refuse what breaks the protocol's rules: better to fail here,
	// loudly, than to send a device something it will drop every time.
	if err := env.Validate(); err != nil {
		return nil, fmt.Errorf("service message to %s breaks the protocol: %w", device, err)
	}
	// Encoded into a reused buffer and copied out at its size: most
	// messages are pushes of a few dozen bytes, and at a fan-out's rate a
	// buffer of Encode's usual kilobyte each is garbage the collector must
	// keep up with.
	buf := encodeBuffers.Get().(*[]byte)
	b, err := protocol.Append((*buf)[:0], env)
	var msg []byte
	if err == nil {
		msg = bytes.Clone(b)
	}
	if cap(b) <= maxPooledBuffer {
		*buf = b[:0]
		encodeBuffers.Put(buf)
	}
	return msg, err
}

// encodeBuffers are Service.encode's buffers.
var encodeBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// maxPooledBuffer is the largest buffer kept for reuse: rare large
// messages do not pin their memory.
const maxPooledBuffer = 16 << 10

// Errors of message handling, for the caller's counters and logs. The
// device gets an error code in a response where the protocol has one.
var (
	ErrWrongTenant = errors.New("message for another tenant")
	ErrUnexpected  = errors.New("message kind the service does not accept")
)

// HandleMessage processes one MQTT message a device published and returns
// the messages to publish in answer. An error means the message was
// dropped; it says why, for counting and logging.
func (s *Service) HandleMessage(ctx context.Context, topic string, payload []byte) ([]Outgoing, error) {
	out, err := s.handle(ctx, topic, payload)
	if err != nil {
		s.metrics.dropped[dropReason(err)].Add(1)
	}
	return out, err
}

func (s *Service) handle(ctx context.Context, topic string, payload []byte) ([]Outgoing, error) {
	tp, err := protocol.ParseTopic(topic)
	if err != nil {
		return nil, err
	}
	if tp.Tenant != s.opts.Tenant {
		return nil, fmt.Errorf("%s: %w", topic, ErrWrongTenant)
	}
	env, err := protocol.Decode(payload)
	if err != nil {
		return nil, err
	}
	if err := tp.Admits(&env); err != nil {
		return nil, err
	}
	if ahead := env.Sent.Time().Sub(s.opts.Clock.Now()); ahead > MaxClockSkew {
		err := fmt.Errorf("%s on %s sent %s ahead of the service's clock: %w", env.Kind(), topic, ahead.Round(time.Second), ErrClockSkew)
		if _, ok := env.Body.(*protocol.CheckIn); ok {
			// Answered, so that the device can say what is wrong;
			// nothing is recorded.
			out, rerr := s.reply(protocol.DownlinkTopic(s.opts.Tenant, tp.ID), tp.ID, env.ID,
				&protocol.CheckInResponse{Error: protocol.CodeBadRequest, Message: "the device clock is more than 24 hours ahead of the service; set the device's date and time"})
			return out, errors.Join(err, rerr)
		}
		return nil, err
	}
	switch m := env.Body.(type) {
	case *protocol.EnrollRequest:
		key := enrollKey{request: tp.ID, id: env.ID}
		resp, seen := s.enrolled.get(key)
		if !seen {
			// A redelivered request (MQTT QoS 1) gets the first answer
			// again instead of making a second device.
			resp = s.enroll(m)
			s.metrics.enrollments[resp.Error].Add(1)
			s.enrolled.put(key, resp)
		}
		return s.reply(protocol.EnrollResponseTopic(s.opts.Tenant, tp.ID), "", env.ID, resp)
	case *protocol.CheckIn:
		resp, err := s.checkIn(tp.ID, &env, m)
		if err != nil && resp == nil {
			return nil, err
		}
		if err == nil {
			s.metrics.checkIns[resp.Error].Add(1)
		}
		out, rerr := s.reply(protocol.DownlinkTopic(s.opts.Tenant, tp.ID), tp.ID, env.ID, resp)
		return out, errors.Join(err, rerr)
	case *protocol.CommandResult:
		return nil, s.commandResult(tp.ID, m)
	case *protocol.ComplianceReport:
		return nil, s.complianceReport(tp.ID, &env, m)
	case *protocol.Unenroll:
		return nil, s.unenroll(tp.ID)
	}
	return nil, fmt.Errorf("%s on %s: %w", env.Kind(), topic, ErrUnexpected)
}

func (s *Service) reply(topic, device string, replyTo protocol.MessageID, body protocol.Body) ([]Outgoing, error) {
	b, err := s.encode(device, replyTo, body)
	if err != nil {
		return nil, err
	}
	return []Outgoing{{Topic: topic, QoS: 1, Payload: b}}, nil
}

func refuseEnroll(code protocol.ErrorCode) *protocol.EnrollResponse {
	return &protocol.EnrollResponse{Error: code, Message: code.Hint()}
}

// enroll answers an enrollment request.
func (s *Service) enroll(m *protocol.EnrollRequest) *protocol.EnrollResponse {
	now := s.opts.Clock.Now()
	t, _, release, err := s.snapshot()
	if err != nil {
		s.opts.Logger.Error("enroll", "err", err)
		return refuseEnroll(protocol.CodeInternal)
	}
	defer release()
	if t.Mode == ModeUnknown {
		return refuseEnroll(protocol.CodeAuthorityNotSet)
	}
	if !s.checkToken(m.Token) {
		return refuseEnroll(protocol.CodeInvalidToken)
	}
	authority := t.AuthorityFor(m.User)
	if m.Platform.NeedsAPNs() && !t.HasAPNs(authority) {
		return refuseEnroll(protocol.CodeAPNsCertificateMissing)
	}
	id, err := s.newID("d-")
	if err != nil {
		s.opts.Logger.Error("enroll", "err", err)
		return refuseEnroll(protocol.CodeInternal)
	}
	der, cert, err := s.ca.SignDevice(m.CSR, s.opts.Tenant, id, now, s.opts.CertValidity)
	if err != nil {
		return &protocol.EnrollResponse{Error: protocol.CodeBadRequest, Message: "certificate signing request refused: " + err.Error()}
	}
	d := &Device{
		ID: id, Platform: m.Platform, OSVersion: m.OSVersion, User: m.User, Name: m.Name,
		EnrollType: m.Type, State: DeviceEnrolled, EnrolledAt: now, Authority: authority,
		CertSerial: cert.SerialNumber.Text(16), CertNotAfter: cert.NotAfter,
	}
	if err := s.store.Update(func(tx *Tx) error { return tx.PutDevice(d) }); err != nil {
		s.opts.Logger.Error("enroll", "err", err)
		return refuseEnroll(protocol.CodeInternal)
	}
	s.opts.Logger.Info("device enrolled", "device", id, "platform", m.Platform, "authority", authority, "user", m.User != "")
	return &protocol.EnrollResponse{Device: id, Certificate: der, Authority: authority, Epoch: t.Epoch,
		CACertificate: s.ca.CertificateDER(), ConnectToken: s.ca.ConnectToken(s.opts.Tenant, id, d.CertSerial)}
}

func refuseCheckIn(code protocol.ErrorCode) *protocol.CheckInResponse {
	return &protocol.CheckInResponse{Error: code, Message: code.Hint()}
}

// checkIn applies a device's check-in and answers it. A refusal is an
// answer too. The error is for failures of the service itself (with no
// answer), or for a check-in older than one already applied, which is
// answered with a refusal and changes nothing.
func (s *Service) checkIn(id string, env *protocol.Envelope, m *protocol.CheckIn) (*protocol.CheckInResponse, error) {
	now := s.opts.Clock.Now()
	read := s.store.readDevice(id) // decoded here, while other commits run
	t, catalog, release, err := s.snapshot()
	if err != nil {
		return nil, err
	}
	defer release()
	if s.testHookDecided != nil {
		s.testHookDecided()
	}
	var resp *protocol.CheckInResponse
	var renewCSR []byte
	var replay error
	var answered uint64 // the generation of the push the check-in answers
	err = s.store.Batch(func(tx *Tx) error {
		renewCSR, replay, answered = nil, nil, 0
		d, err := tx.deviceFrom(id, read)
		if errors.Is(err, ErrNotFound) {
			resp = refuseCheckIn(protocol.CodeNotEnrolled)
			return nil
		} else if err != nil {
			return err
		}
		if replay = d.replayed(env); replay != nil {
			// The same message again was answered the first time; an
			// older one is answered, so that a device whose clock went
			// back can say why it is refused.
			resp = nil
			if env.ID != d.LastMessage {
				resp = &protocol.CheckInResponse{Error: protocol.CodeReplayed,
					Message: "the service has applied a newer message from this device; if this repeats, check the device's date and time"}
			}
			return nil
		}
		d.LastMessage, d.LastMessageSent = env.ID, env.Sent.Time()
		// A push it was owed, if it checks in, is left in the queue
		// (see pushEntry); if it is refused, it is still owed.
		owed := d.Push
		if code := d.checkIn(&t, m, now); code != protocol.CodeNone {
			resp = refuseCheckIn(code)
			return tx.PutDevice(d)
		}
		if owed.Pending {
			answered = owed.Gen
		}
		resp = &protocol.CheckInResponse{
			Authority: d.Authority, Epoch: t.Epoch, ChangedAt: protocol.At(t.ChangedAt()),
			DesiredVersion: t.Revision, RetainUntil: protocol.At(d.RetainUntil(now, s.opts.RetentionPeriod)),
		}
		if m.DesiredVersion < t.Revision {
			resp.Profiles = desired(catalog, d.Authority)
		}
		cmds, err := tx.Commands(id)
		if err != nil {
			return err
		}
		for _, c := range cmds {
			if c.State.Open() {
				if c.deliver(now) {
					resp.Commands = append(resp.Commands, c.wire())
				}
				if err := tx.PutCommand(c); err != nil {
					return err
				}
			}
		}
		if len(m.RenewalCSR) > 0 && d.CertNotAfter.Sub(now) <= s.opts.RenewalWindow {
			renewCSR = m.RenewalCSR
		}
		return tx.PutDevice(d)
	})
	if err != nil {
		return nil, fmt.Errorf("check-in of %s: %w", id, err)
	}
	s.answered.add(id, answered)
	if replay != nil {
		return resp, fmt.Errorf("check-in of %s: %w", id, replay)
	}
	if resp == nil {
		return nil, fmt.Errorf("check-in of %s: no answer", id) // unreachable
	}
	if renewCSR != nil {
		if err := s.renew(id, renewCSR, resp, now); err != nil {
			s.opts.Logger.Warn("certificate renewal refused", "device", id, "err", err)
		}
	}
	return resp, nil
}

// snapshot returns the tenant state and the catalogs, and holds them: no
// admin change commits until release is called. A check-in or an
// enrollment decides on this snapshot and commits before releasing it, so
// it never answers with an authority or profiles that a concurrent change
// has replaced (which would also clear the push that change queued).
func (s *Service) snapshot() (Tenant, []Profile, func(), error) {
	for {
		if _, err := s.catalog(); err != nil { // load outside the read lock
			return Tenant{}, nil, nil, err
		}
		s.mu.RLock()
		if s.profiles != nil {
			return *s.tenant, s.profiles, s.mu.RUnlock, nil
		}
		s.mu.RUnlock() // a change came in between: load again
	}
}

// renew issues a renewed certificate into resp and records its expiry.
func (s *Service) renew(id string, csr []byte, resp *protocol.CheckInResponse, now time.Time) error {
	der, cert, err := s.ca.SignDevice(csr, s.opts.Tenant, id, now, s.opts.CertValidity)
	if err != nil {
		return err
	}
	err = s.store.Update(func(tx *Tx) error {
		d, err := tx.Device(id)
		if err != nil {
			return err
		}
		d.PrevCertSerial, d.PrevCertNotAfter = d.CertSerial, d.CertNotAfter
		d.CertSerial, d.CertNotAfter = cert.SerialNumber.Text(16), cert.NotAfter
		return tx.PutDevice(d)
	})
	if err != nil {
		return err
	}
	resp.Certificate = der
	resp.ConnectToken = s.ca.ConnectToken(s.opts.Tenant, id, cert.SerialNumber.Text(16))
	return nil
}

// catalog returns both authorities' catalogs, from memory after the first
// read: every check-in needs them and they change only on admin requests.
func (s *Service) catalog() ([]Profile, error) {
	s.mu.RLock()
	ps := s.profiles
	s.mu.RUnlock()
	if ps != nil {
		return ps, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.profiles != nil {
		return s.profiles, nil
	}
	err := s.store.View(func(tx *Tx) error {
		var err error
		ps, err = tx.Profiles()
		return err
	})
	if err != nil {
		return nil, err
	}
	if ps == nil {
		ps = []Profile{}
	}
	s.profiles = ps
	return ps, nil
}

// commandResult applies a device's command result once.
func (s *Service) commandResult(id string, r *protocol.CommandResult) error {
	now := s.opts.Clock.Now()
	replayed := false
	err := s.store.Update(func(tx *Tx) error {
		if d, err := tx.Device(id); err != nil {
			return err
		} else if !d.Managed() {
			return fmt.Errorf("device is %s: %w", d.State, ErrConflict)
		}
		c, err := tx.Command(id, r.ID)
		if err != nil {
			return err
		}
		if replayed = !c.complete(r, now); replayed {
			return nil
		}
		if c.State == CommandAcknowledged && (c.Action == protocol.CommandWipe || c.Action == protocol.CommandRetire) {
			d, err := tx.Device(id)
			if err != nil {
				return err
			}
			d.State = DeviceWiped
			if c.Action == protocol.CommandRetire {
				d.State = DeviceRetired
			}
			d.Push.clear()
			if err := tx.PutDevice(d); err != nil {
				return err
			}
		}
		return tx.PutCommand(c)
	})
	if err != nil {
		return fmt.Errorf("command result of %s: %w", id, err)
	}
	if replayed {
		return fmt.Errorf("command result %s of %s: %w", r.ID, id, ErrReplayed)
	}
	s.metrics.results.Add(1)
	return nil
}

// enrollKey names one enrollment request: its request id (which only its
// own client may publish under) and its message id.
type enrollKey struct {
	request string
	id      protocol.MessageID
}

// recentEnrollments remembers the answers to the last enrollment requests,
// so that a request delivered twice is answered twice the same way. It
// keeps at most recentEnrollmentsMax answers, forgetting the oldest.
type recentEnrollments struct {
	mu    sync.Mutex
	byKey map[enrollKey]*protocol.EnrollResponse
	order []enrollKey
}

const recentEnrollmentsMax = 4096

func (r *recentEnrollments) get(k enrollKey) (*protocol.EnrollResponse, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	resp, ok := r.byKey[k]
	return resp, ok
}

func (r *recentEnrollments) put(k enrollKey, resp *protocol.EnrollResponse) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.byKey == nil {
		r.byKey = map[enrollKey]*protocol.EnrollResponse{}
	}
	if len(r.order) >= recentEnrollmentsMax {
		delete(r.byKey, r.order[0])
		r.order = r.order[1:]
	}
	r.byKey[k] = resp
	r.order = append(r.order, k)
}

// ErrReplayed is returned for a message the service had already applied,
// or one older than a message it applied.
var ErrReplayed = errors.New("already applied")

// MaxClockSkew is how far ahead of the service's clock a device's message
// may be sent. One sent later is refused with ErrClockSkew: it is forged
// or its device's clock is wrong, and accepting it would make the device's
// next honest messages look older than it.
const MaxClockSkew = 24 * time.Hour

// ErrClockSkew is returned for a message sent more than MaxClockSkew
// ahead of the service's clock.
var ErrClockSkew = errors.New("sent too far in the future")

func (s *Service) complianceReport(id string, env *protocol.Envelope, r *protocol.ComplianceReport) error {
	now := s.opts.Clock.Now()
	// Batched: every device that moves reports its compliance under the
	// new authority right after its check-in, as many at once as check in.
	// A refusal is not an error of the transaction, which would roll back
	// the whole batch and run the others again: it is returned after.
	var refused error
	read := s.store.readDevice(id) // decoded here, while other commits run
	err := s.store.Batch(func(tx *Tx) error {
		refused = nil
		d, err := tx.deviceFrom(id, read)
		if errors.Is(err, ErrNotFound) {
			refused = err
			return nil
		} else if err != nil {
			return err
		}
		if !d.Managed() {
			refused = fmt.Errorf("compliance report of %s device %s: %w", d.State, id, ErrUnexpected)
			return nil
		}
		if err := d.replayed(env); err != nil {
			refused = fmt.Errorf("compliance report of %s: %w", id, err)
			return nil
		}
		d.LastMessage, d.LastMessageSent = env.ID, env.Sent.Time()
		d.Compliance, d.ComplianceReportedAt = r.Compliance, now
		if r.OSVersion != "" {
			d.OSVersion = r.OSVersion
		}
		return tx.PutDevice(d)
	})
	if err != nil {
		return fmt.Errorf("compliance report of %s: %w", id, err)
	}
	return refused
}

func (s *Service) unenroll(id string) error {
	return s.store.Update(func(tx *Tx) error {
		d, err := tx.Device(id)
		if err != nil {
			return err
		}
		if !d.Managed() {
			return fmt.Errorf("unenroll of %s device %s: %w", d.State, id, ErrConflict)
		}
		d.State = DeviceUnenrolled
		d.Push.clear()
		return tx.PutDevice(d)
	})
}
