package broker

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/mdm-authority/mdm/protocol"
)

// BenchmarkCheckIn measures check-in handling end to end through the
// store: decode, device record read and durable write (batched), response
// encode. It runs 1,024 concurrent senders, as many devices do through the MQTT layer. The
// figure to read is checkins/s.
func BenchmarkCheckIn(b *testing.B) {
	h := newHarness(b)
	if _, _, err := h.svc.SetAuthority(ModeIntune); err != nil {
		b.Fatal(err)
	}
	for _, typ := range []protocol.ProfileType{protocol.ProfileEmail, protocol.ProfileWiFi, protocol.ProfileVPN} {
		for i := range 3 {
			if _, _, err := h.svc.PutProfile(protocol.AuthorityIntune, typ, fmt.Sprintf("%s %d", typ, i), nil); err != nil {
				b.Fatal(err)
			}
		}
	}
	const devices = 1000
	payloads := make([][]byte, devices)
	topics := make([]string, devices)
	for i := range devices {
		d := h.mustEnroll(protocol.PlatformWindows, fmt.Sprintf("user%d@contoso.example", i))
		d.checkIn()
		id, _ := protocol.NewMessageID(h.rng)
		m := &protocol.CheckIn{Reason: protocol.CheckInScheduled, Profiles: d.profiles,
			CertificateExpiry: protocol.At(d.expiry), DesiredVersion: d.version}
		payloads[i], _ = protocol.Encode(protocol.Envelope{ID: id, Sent: protocol.At(testStart), Device: d.id, Body: m})
		topics[i] = protocol.UplinkTopic("contoso", d.id)
	}
	var next atomic.Int64
	b.SetParallelism(512) // 512 × GOMAXPROCS senders: devices check in concurrently
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := int(next.Add(1)) % devices
			out, err := h.svc.HandleMessage(context.Background(), topics[i], payloads[i])
			if err != nil || len(out) != 1 {
				b.Errorf("check-in: %d answers, %v", len(out), err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "checkins/s")
}
