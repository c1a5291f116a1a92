package protocol

import (
	"errors"
	"strings"
	"testing"
)

func TestTopicBuildersAndParse(t *testing.T) {
	tests := []struct {
		topic string
		want  Topic
	}{
		{UplinkTopic("contoso", "d-1"), Topic{TopicUplink, "contoso", "d-1"}},
		{DownlinkTopic("contoso", "d-1"), Topic{TopicDownlink, "contoso", "d-1"}},
		{EnrollRequestTopic("contoso", "r.9"), Topic{TopicEnrollRequest, "contoso", "r.9"}},
		{EnrollResponseTopic("contoso", "r_9"), Topic{TopicEnrollResponse, "contoso", "r_9"}},
	}
	for _, tt := range tests {
		got, err := ParseTopic(tt.topic)
		if err != nil || got != tt.want {
			t.Errorf("ParseTopic(%q) = %+v, %v; want %+v", tt.topic, got, err, tt.want)
		}
		if s := tt.want.String(); s != tt.topic {
			t.Errorf("%+v.String() = %q; want %q", tt.want, s, tt.topic)
		}
	}
	if got := UplinkTopic("contoso", "d-1"); got != "mdm/v1/contoso/dev/d-1/up" {
		t.Errorf("UplinkTopic = %q; the scheme changed", got)
	}
}

func TestParseTopicRejects(t *testing.T) {
	for _, topic := range []string{
		"",
		"mdm/v1",
		"mdm/v2/contoso/dev/d-1/up",
		"mdm/v1/contoso/dev/d-1",
		"mdm/v1/contoso/dev/d-1/up/extra",
		"mdm/v1/contoso/dev/d-1/sideways",
		"mdm/v1/contoso/enroll/r-1/up",
		"mdm/v1/contoso/dev/+/up",
		"mdm/v1/+/dev/d-1/up",
		"mdm/v1/contoso/dev/#",
		"mdm/v1/contoso/dev//up",
		"mdm/v1//dev/d-1/up",
		"mdm/v1/contoso/dev/-d/up",
		"mdm/v1/contoso/dev/d 1/up",
		"mdm/v1/contoso/dev/" + strings.Repeat("d", MaxIDLen+1) + "/up",
		"/mdm/v1/contoso/dev/d-1/up",
	} {
		if got, err := ParseTopic(topic); !errors.Is(err, ErrTopic) {
			t.Errorf("ParseTopic(%q) = %+v, %v; want ErrTopic", topic, got, err)
		}
	}
	if s := (Topic{TopicUplink, "contoso", "+"}).String(); s != "" {
		t.Errorf("String of a topic with a wildcard id = %q; want \"\"", s)
	}
}

func TestServiceFiltersMatchDeviceTopics(t *testing.T) {
	filters := ServiceFilters("+")
	for _, topic := range []string{UplinkTopic("a", "d"), EnrollRequestTopic("b", "r")} {
		matched := false
		for _, f := range filters {
			matched = matched || filterMatches(f, topic)
		}
		if !matched {
			t.Errorf("ServiceFilters(\"+\") = %q does not match %q", filters, topic)
		}
	}
	for _, topic := range []string{DownlinkTopic("a", "d"), EnrollResponseTopic("b", "r")} {
		for _, f := range filters {
			if filterMatches(f, topic) {
				t.Errorf("service filter %q matches %q, a topic the service publishes to", f, topic)
			}
		}
	}
}

// filterMatches implements MQTT's single-level wildcard, enough for the
// service's filters.
func filterMatches(filter, topic string) bool {
	f, tp := strings.Split(filter, "/"), strings.Split(topic, "/")
	if len(f) != len(tp) {
		return false
	}
	for i := range f {
		if f[i] != "+" && f[i] != tp[i] {
			return false
		}
	}
	return true
}

func TestTopicAdmits(t *testing.T) {
	g := golden()
	up := Topic{TopicUplink, "contoso", fixtureDevice}
	checkin := g["checkin"]
	if err := up.Admits(&checkin); err != nil {
		t.Errorf("uplink topic refuses its device's check-in: %v", err)
	}
	other := Topic{TopicUplink, "contoso", "d-other"}
	if err := other.Admits(&checkin); !errors.Is(err, ErrDeviceMismatch) {
		t.Errorf("Admits(check-in of another device) = %v; want ErrDeviceMismatch", err)
	}
	push := g["push"]
	if err := up.Admits(&push); !errors.Is(err, ErrWrongTopic) {
		t.Errorf("uplink Admits(push) = %v; want ErrWrongTopic", err)
	}
	enroll := g["enroll_request"]
	if err := (Topic{TopicEnrollRequest, "contoso", "r-1"}).Admits(&enroll); err != nil {
		t.Errorf("enroll topic refuses an enrollment request: %v", err)
	}
	for _, k := range Kinds {
		if k.Topic() == 0 {
			t.Errorf("kind %s has no topic", k)
		}
	}
}

func TestValidID(t *testing.T) {
	for _, id := range []string{"a", "Z9", "d-7f3a9c21", "a.b_c-d", strings.Repeat("x", MaxIDLen)} {
		if err := ValidID(id); err != nil {
			t.Errorf("ValidID(%q) = %v; want nil", id, err)
		}
	}
	for _, id := range []string{"", "-a", ".a", "a/b", "a+b", "a#", "a b", "é", strings.Repeat("x", MaxIDLen+1)} {
		if err := ValidID(id); err == nil {
			t.Errorf("ValidID(%q) = nil; want an error", id)
		}
	}
}
