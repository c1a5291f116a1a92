package protocol

import (
	"errors"
	"fmt"
	"strings"
)

// TopicRoot is the first level of every topic; the second is the protocol
// version, so that two major versions can run side by side on one broker.
const TopicRoot = "mdm/v1"

// EnrollClientPrefix starts the MQTT client id of an enrolling client,
// followed by its enrollment request id; an enrolled device's client id is
// its device id.
const EnrollClientPrefix = "enroll-"

// MaxIDLen is the longest tenant, device, enrollment request or command id.
const MaxIDLen = 64

// TopicKind tells which of the four topic shapes a topic has.
type TopicKind uint8

// Topic kinds.
const (
	// TopicUplink carries a device's messages to the service:
	// mdm/v1/{tenant}/dev/{device}/up.
	TopicUplink TopicKind = 1
	// TopicDownlink carries the service's messages to one device:
	// mdm/v1/{tenant}/dev/{device}/down.
	TopicDownlink TopicKind = 2
	// TopicEnrollRequest carries an enrollment request from a device that
	// has no identity yet: mdm/v1/{tenant}/enroll/{request}/req.
	TopicEnrollRequest TopicKind = 3
	// TopicEnrollResponse carries the answer to that request:
	// mdm/v1/{tenant}/enroll/{request}/resp.
	TopicEnrollResponse TopicKind = 4
)

var topicKindNames = names{"", "uplink", "downlink", "enroll_request", "enroll_response"}

// String returns the topic kind's name.
func (k TopicKind) String() string { return topicKindNames.format(uint8(k), "topic kind") }

// Topic is a parsed MQTT topic of the scheme. ID is the device id for
// uplink and downlink topics and the enrollment request id for enrollment
// topics.
type Topic struct {
	Kind   TopicKind
	Tenant string
	ID     string
}

// ErrTopic is returned (wrapped) for any topic outside the scheme.
var ErrTopic = errors.New("not a topic of the mdm/v1 scheme")

// UplinkTopic returns the topic a device publishes its messages to.
func UplinkTopic(tenant, device string) string {
	return TopicRoot + "/" + tenant + "/dev/" + device + "/up"
}

// DownlinkTopic returns the topic a device subscribes to.
func DownlinkTopic(tenant, device string) string {
	return TopicRoot + "/" + tenant + "/dev/" + device + "/down"
}

// EnrollRequestTopic returns the topic an enrolling device publishes its
// request to. request is a random id the device chose for this attempt.
func EnrollRequestTopic(tenant, request string) string {
	return TopicRoot + "/" + tenant + "/enroll/" + request + "/req"
}

// EnrollResponseTopic returns the topic an enrolling device subscribes to
// before it publishes its request.
func EnrollResponseTopic(tenant, request string) string {
	return TopicRoot + "/" + tenant + "/enroll/" + request + "/resp"
}

// ServiceFilters returns the subscription filters of the management
// service for tenant, or for every tenant when tenant is "+".
func ServiceFilters(tenant string) []string {
	return []string{
		TopicRoot + "/" + tenant + "/dev/+/up",
		TopicRoot + "/" + tenant + "/enroll/+/req",
	}
}

// String builds the topic. It returns "" when t is not a valid topic.
func (t Topic) String() string {
	if ValidID(t.Tenant) != nil || ValidID(t.ID) != nil {
		return ""
	}
	switch t.Kind {
	case TopicUplink:
		return UplinkTopic(t.Tenant, t.ID)
	case TopicDownlink:
		return DownlinkTopic(t.Tenant, t.ID)
	case TopicEnrollRequest:
		return EnrollRequestTopic(t.Tenant, t.ID)
	case TopicEnrollResponse:
		return EnrollResponseTopic(t.Tenant, t.ID)
	}
	return ""
}

// ParseTopic parses a topic of the scheme and returns its kind, tenant and
// id. Anything else, including filters with wildcards, is an error.
func ParseTopic(topic string) (Topic, error) {
	rest, ok := strings.CutPrefix(topic, TopicRoot+"/")
	if !ok {
		return Topic{}, fmt.Errorf("topic %q: %w", topic, ErrTopic)
	}
	// tenant / area / id / direction: exactly four levels.
	var level [4]string
	for i := range level {
		if i == len(level)-1 {
			level[i] = rest
			break
		}
		var found bool
		level[i], rest, found = strings.Cut(rest, "/")
		if !found {
			return Topic{}, fmt.Errorf("topic %q: too few levels: %w", topic, ErrTopic)
		}
	}
	t := Topic{Tenant: level[0], ID: level[2]}
	switch level[1] + "/" + level[3] {
	case "dev/up":
		t.Kind = TopicUplink
	case "dev/down":
		t.Kind = TopicDownlink
	case "enroll/req":
		t.Kind = TopicEnrollRequest
	case "enroll/resp":
		t.Kind = TopicEnrollResponse
	default:
		return Topic{}, fmt.Errorf("topic %q: unknown shape: %w", topic, ErrTopic)
	}
	if err := ValidID(t.Tenant); err != nil {
		return Topic{}, fmt.Errorf("topic %q: tenant: %w", topic, errors.Join(err, ErrTopic))
	}
	if err := ValidID(t.ID); err != nil {
		return Topic{}, fmt.Errorf("topic %q: id: %w", topic, errors.Join(err, ErrTopic))
	}
	return t, nil
}

// ValidID checks a tenant, device, request or command id: 1 to 64
// characters from [A-Za-z0-9._-], starting with a letter or digit. The rule
// keeps ids safe as MQTT topic levels (no "/", "+", "#"), as MQTT client ids
// and as file names.
func ValidID(id string) error {
	if id == "" {
		return errors.New("empty id")
	}
	if len(id) > MaxIDLen {
		return fmt.Errorf("id longer than %d characters", MaxIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '.' || c == '_' || c == '-':
			if i == 0 {
				return fmt.Errorf("id %q: must start with a letter or digit", id)
			}
		default:
			return fmt.Errorf("id %q: character %q not allowed (use A-Z a-z 0-9 . _ -)", id, c)
		}
	}
	return nil
}

// Errors of Topic.Admits.
var (
	// ErrWrongTopic means the message's kind does not travel on the topic.
	ErrWrongTopic = errors.New("message kind not allowed on this topic")
	// ErrDeviceMismatch means the message names another device than its
	// topic.
	ErrDeviceMismatch = errors.New("message device differs from topic device")
)

// Admits checks that a decoded message may travel on topic t: its kind
// belongs to the topic's kind and, on device topics, its device is the
// topic's device. Receivers call it after Decode; the broker's access
// rules already keep a device to its own topics, and this keeps a device
// to its own identity inside them.
func (t Topic) Admits(e *Envelope) error {
	if e.Kind().Topic() != t.Kind {
		return fmt.Errorf("%s on %s topic: %w", e.Kind(), t.Kind, ErrWrongTopic)
	}
	if (t.Kind == TopicUplink || t.Kind == TopicDownlink) && e.Device != t.ID {
		return fmt.Errorf("message for device %q on topic of %q: %w", e.Device, t.ID, ErrDeviceMismatch)
	}
	return nil
}
