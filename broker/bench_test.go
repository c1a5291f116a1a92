package broker

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mdm-authority/mdm/protocol"
)

// BenchmarkCheckIn measures check-in handling end to end through the
// store: decode, device record read and durable write (batched), response
// encode. It runs 1,024 concurrent senders, as many devices do through the
// MQTT layer; each device has one check-in in flight at a time, as its
// connection goroutine gives it, and each check-in is a new message (the
// service refuses one it has applied). The figure to read is checkins/s.
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
	type benchDevice struct {
		mu       sync.Mutex
		topic    string
		payloads [][]byte // one per check-in, sent a millisecond apart
		next     int
	}
	devs := make([]benchDevice, devices)
	for i := range devs {
		d := h.mustEnroll(protocol.PlatformWindows, fmt.Sprintf("user%d@contoso.example", i))
		d.checkIn()
		m := &protocol.CheckIn{Reason: protocol.CheckInScheduled, Profiles: d.profiles,
			CertificateExpiry: protocol.At(d.expiry), DesiredVersion: d.version}
		devs[i].topic = protocol.UplinkTopic("contoso", d.id)
		for k := range b.N/devices + 1 {
			id, _ := protocol.NewMessageID(h.rng)
			sent := h.clock.Now().Add(time.Duration(k+1) * time.Millisecond)
			p, err := protocol.Encode(protocol.Envelope{ID: id, Sent: protocol.At(sent), Device: d.id, Body: m})
			if err != nil {
				b.Fatal(err)
			}
			devs[i].payloads = append(devs[i].payloads, p)
		}
	}
	var next atomic.Int64
	b.SetParallelism(512) // 512 × GOMAXPROCS senders: devices check in concurrently
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			d := &devs[int(next.Add(1))%devices]
			d.mu.Lock()
			p := d.payloads[d.next]
			d.next++
			out, err := h.svc.HandleMessage(context.Background(), d.topic, p)
			d.mu.Unlock()
			if err != nil || len(out) != 1 {
				b.Errorf("check-in: %d answers, %v", len(out), err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "checkins/s")
}

// BenchmarkFanOut measures an authority change over 100,000 enrolled
// devices: queuing a push to each, then taking every push off the queue as
// messages to publish, 1,000 at a time, as the fan-out does. The figure to
// read is cpu-s/fanout: CPU seconds per 100,000 pushes.
func BenchmarkFanOut(b *testing.B) {
	const devices = 100_000
	h := newHarness(b)
	if _, _, err := h.svc.SetAuthority(ModeOffice365); err != nil {
		b.Fatal(err)
	}
	err := h.store.Update(func(tx *Tx) error {
		for i := range devices {
			d := &Device{ID: fmt.Sprintf("d-%08d", i), Platform: protocol.PlatformAndroid, User: fmt.Sprintf("u%d", i),
				State: DeviceEnrolled, Authority: protocol.AuthorityOffice365, EnrolledAt: testStart,
				CertNotAfter: testStart.AddDate(1, 0, 0)}
			if err := tx.PutDevice(d); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	modes := []Mode{ModeIntune, ModeOffice365}
	var cpu time.Duration
	b.ResetTimer()
	for i := range b.N {
		start := cpuTime()
		_, queued, err := h.svc.SetAuthority(modes[i%2])
		if err != nil || queued != devices {
			b.Fatalf("SetAuthority queued %d, %v", queued, err)
		}
		sent := 0
		for {
			out, err := h.svc.DuePushes(1000)
			if err != nil {
				b.Fatal(err)
			}
			if len(out) == 0 {
				break
			}
			sent += len(out)
		}
		if sent != devices {
			b.Fatalf("sent %d pushes; want %d", sent, devices)
		}
		cpu += cpuTime() - start
		b.StopTimer()
		// Let the devices answer, so the next round starts from no queue.
		h.clock.Advance(24 * time.Hour)
		for {
			out, _ := h.svc.DuePushes(10000)
			if len(out) == 0 {
				break
			}
		}
		b.StartTimer()
	}
	b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/fanout")
}

// cpuTime returns the CPU time the process has used, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
