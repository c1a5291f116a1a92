package broker

import (
	"strings"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
)

func TestSlowHousekeeping(t *testing.T) {
	s := mqtt.New(nil)
	defer s.Close()
	if err := slowHousekeeping(s, time.Minute); err != nil {
		t.Fatalf("this mochi version: %v", err)
	}
	// A server whose event loop is not where slowHousekeeping looks is
	// an error that says what to do, not a silent no-op.
	err := slowHousekeeping(&mqtt.Server{}, time.Minute)
	if err == nil || !strings.Contains(err.Error(), "update slowHousekeeping") {
		t.Fatalf("server without an event loop: err = %v, want one naming slowHousekeeping", err)
	}
}
