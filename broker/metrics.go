package broker

import (
	"errors"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/mdm-authority/mdm/protocol"
)

// metrics are the service's counters. Each is an atomic: the hot path adds
// without locking, and a scrape reads them while check-ins go on.
type metrics struct {
	checkIns    [256]atomic.Uint64 // by result: protocol.ErrorCode
	enrollments [256]atomic.Uint64 // by result
	dropped     [dropReasons]atomic.Uint64
	pushesSent  atomic.Uint64
	pushRetries atomic.Uint64
	results     atomic.Uint64 // command results applied
	connects    [connResults]atomic.Uint64
	aclDenied   atomic.Uint64 // publishes, subscriptions and retained messages refused
}

// Reasons a device message is dropped without an answer.
const (
	dropMalformed = iota // not CBOR, too large, limits
	dropInvalid          // breaks a field rule
	dropVersion          // unknown protocol version
	dropTopic            // outside the topic scheme, wrong tenant or wrong kind for the topic
	dropDevice           // names another device than its topic
	dropReplayed         // a command result already applied
	dropConflict         // from a device no longer managed, or unknown
	dropClockSkew        // sent more than MaxClockSkew ahead of the service
	dropOther
	dropReasons
)

var dropNames = [dropReasons]string{"malformed", "invalid", "unsupported_version", "wrong_topic", "device_mismatch", "replayed", "not_managed", "clock_skew", "other"}

func dropReason(err error) int {
	switch {
	case errors.Is(err, protocol.ErrTooLarge), errors.Is(err, protocol.ErrMalformed), errors.Is(err, protocol.ErrKind):
		return dropMalformed
	case errors.Is(err, protocol.ErrInvalid):
		return dropInvalid
	case errors.Is(err, protocol.ErrVersion):
		return dropVersion
	case errors.Is(err, protocol.ErrTopic), errors.Is(err, protocol.ErrWrongTopic), errors.Is(err, ErrWrongTenant), errors.Is(err, ErrUnexpected):
		return dropTopic
	case errors.Is(err, protocol.ErrDeviceMismatch):
		return dropDevice
	case errors.Is(err, ErrReplayed):
		return dropReplayed
	case errors.Is(err, ErrConflict), errors.Is(err, ErrNotFound):
		return dropConflict
	case errors.Is(err, ErrClockSkew):
		return dropClockSkew
	}
	return dropOther
}

// Counters are some of the service's counters, for a caller in the same
// process (the simulator's report).
type Counters struct {
	PushesSent  uint64
	PushRetries uint64
	CheckIns    uint64 // answered, refusals included
}

// Counters returns the service's counters now.
func (s *Service) Counters() Counters {
	c := Counters{PushesSent: s.metrics.pushesSent.Load(), PushRetries: s.metrics.pushRetries.Load()}
	for i := range s.metrics.checkIns {
		c.CheckIns += s.metrics.checkIns[i].Load()
	}
	return c
}

// WriteMetrics writes the service's metrics in the Prometheus text format:
// counters of check-ins by result, enrollments by result, dropped messages
// by reason, pushes and retries, command results; and, read from the store
// at the time of the call, devices by authority and state and the push
// backlog.
func (s *Service) WriteMetrics(w io.Writer) error {
	m := &s.metrics
	var err error
	p := func(format string, args ...any) {
		if err == nil {
			_, err = fmt.Fprintf(w, format, args...)
		}
	}
	p("# HELP mdm_checkins_total Check-ins handled, by result (none is success).\n# TYPE mdm_checkins_total counter\n")
	for c := range m.checkIns {
		if n := m.checkIns[c].Load(); n > 0 || c == 0 {
			p("mdm_checkins_total{result=%q} %d\n", protocol.ErrorCode(c).String(), n)
		}
	}
	p("# HELP mdm_enrollments_total Enrollment requests answered, by result.\n# TYPE mdm_enrollments_total counter\n")
	for c := range m.enrollments {
		if n := m.enrollments[c].Load(); n > 0 || c == 0 {
			p("mdm_enrollments_total{result=%q} %d\n", protocol.ErrorCode(c).String(), n)
		}
	}
	p("# HELP mdm_messages_dropped_total Device messages dropped without an answer, by reason.\n# TYPE mdm_messages_dropped_total counter\n")
	for r, name := range dropNames {
		p("mdm_messages_dropped_total{reason=%q} %d\n", name, m.dropped[r].Load())
	}
	p("# HELP mdm_pushes_sent_total Check-in requests pushed to devices, retries included.\n# TYPE mdm_pushes_sent_total counter\nmdm_pushes_sent_total %d\n", m.pushesSent.Load())
	p("# HELP mdm_push_retries_total Pushes that repeated an unanswered one.\n# TYPE mdm_push_retries_total counter\nmdm_push_retries_total %d\n", m.pushRetries.Load())
	p("# HELP mdm_command_results_total Command results applied.\n# TYPE mdm_command_results_total counter\nmdm_command_results_total %d\n", m.results.Load())
	p("# HELP mdm_connections_total MQTT connections, by result: accepted or the reason of the refusal.\n# TYPE mdm_connections_total counter\n")
	for r, name := range connNames {
		p("mdm_connections_total{result=%q} %d\n", name, m.connects[r].Load())
	}
	p("# HELP mdm_acl_denied_total Publishes, subscriptions and retained messages refused by the topic rules.\n# TYPE mdm_acl_denied_total counter\nmdm_acl_denied_total %d\n", m.aclDenied.Load())
	if err != nil {
		return err
	}

	type key struct {
		a protocol.Authority
		s DeviceState
	}
	devices := map[key]int{}
	backlog := 0
	verr := s.store.View(func(tx *Tx) error {
		return tx.Devices(func(d *Device) error {
			devices[key{d.Authority, d.State}]++
			if d.Push.Pending {
				backlog++ // each has one current entry in the queue
			}
			return nil
		})
	})
	if verr != nil {
		return verr
	}
	p("# HELP mdm_devices Devices, by authority and state.\n# TYPE mdm_devices gauge\n")
	for _, a := range []protocol.Authority{protocol.AuthorityIntune, protocol.AuthorityOffice365} {
		for st := DeviceEnrolled; st <= DeviceUnenrolled; st++ {
			p("mdm_devices{authority=%q,state=%q} %d\n", a.String(), st.String(), devices[key{a, st}])
		}
	}
	p("# HELP mdm_push_backlog Pushes queued, due or waiting for their retry time.\n# TYPE mdm_push_backlog gauge\nmdm_push_backlog %d\n", backlog)
	return err
}
