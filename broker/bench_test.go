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
	h := benchFleet(b, devices)
	modes := []Mode{ModeIntune, ModeOffice365}
	var cpu time.Duration
	b.ResetTimer()
	for i := range b.N {
		start := cpuTime()
		_, queued, err := h.svc.SetAuthority(modes[i%2])
		if err != nil || queued != devices {
			b.Fatalf("SetAuthority queued %d, %v", queued, err)
		}
		if sent := drainPushes(b, h, 1000); sent != devices {
			b.Fatalf("sent %d pushes; want %d", sent, devices)
		}
		cpu += cpuTime() - start
		b.StopTimer()
		// Let the devices answer, so the next round starts from no queue.
		h.clock.Advance(24 * time.Hour)
		drainPushes(b, h, 10000)
		b.StartTimer()
	}
	b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/fanout")
}

// BenchmarkAnsweredRetries measures what the queue entries of answered
// pushes cost the fan-out when their first retries come due, as after a
// migration's first pass: 20,000 devices are pushed, every one checks in,
// and the timed part is the fan-out dropping their 20,000 entries. In
// "remembered" the service recorded the answers (answeredPushes); in
// "read" it has forgotten them, as after a restart, and reads each
// device's record. The figure to read is ns/entry. Each iteration also
// sets up 20,000 check-ins, untimed: give -benchtime a count (3x).
func BenchmarkAnsweredRetries(b *testing.B) {
	for _, forget := range []bool{false, true} {
		name := map[bool]string{false: "remembered", true: "read"}[forget]
		b.Run(name, func(b *testing.B) { benchAnsweredRetries(b, forget) })
	}
}

func benchAnsweredRetries(b *testing.B, forget bool) {
	const devices = 20_000
	h := benchFleet(b, devices)
	modes := []Mode{ModeIntune, ModeOffice365}
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		if _, _, err := h.svc.SetAuthority(modes[i%2]); err != nil {
			b.Fatal(err)
		}
		if n := drainPushes(b, h, 1000); n != devices {
			b.Fatalf("first pass sent %d pushes; want %d", n, devices)
		}
		// Every device answers, many at once, as a fleet does: the
		// store batches their commits.
		var wg sync.WaitGroup
		for w := range 256 {
			wg.Go(func() {
				for k := w; k < devices; k += 256 {
					id := fmt.Sprintf("d-%08d", k)
					mid, _ := protocol.NewMessageID(h.rng)
					p, err := protocol.Encode(protocol.Envelope{ID: mid, Sent: protocol.At(h.clock.Now()), Device: id,
						Body: &protocol.CheckIn{Reason: protocol.CheckInPushed, CertificateExpiry: protocol.At(testStart.AddDate(1, 0, 0))}})
					if err == nil {
						_, err = h.svc.HandleMessage(context.Background(), protocol.UplinkTopic("contoso", id), p)
					}
					if err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		if b.Failed() {
			b.FailNow()
		}
		if forget {
			h.svc.answered.reset()
		}
		h.clock.Advance(PushRetryDelays[0])
		b.StartTimer()
		if n := drainPushes(b, h, 1000); n != 0 {
			b.Fatalf("retried %d answered pushes", n)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*devices), "ns/entry")
}

// benchFleet returns a harness whose store holds n enrolled Android
// devices on office365, the tenant's authority.
func benchFleet(b *testing.B, n int) *harness {
	h := newHarness(b)
	if _, _, err := h.svc.SetAuthority(ModeOffice365); err != nil {
		b.Fatal(err)
	}
	err := h.store.Update(func(tx *Tx) error {
		for i := range n {
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
	return h
}

// drainPushes takes the due pushes off the queue, max at a time, until
// none is due, and returns how many there were.
func drainPushes(b *testing.B, h *harness, max int) int {
	n := 0
	for {
		out, err := h.svc.DuePushes(max)
		if err != nil {
			b.Fatal(err)
		}
		if len(out) == 0 {
			return n
		}
		n += len(out)
	}
}

// cpuTime returns the CPU time the process has used, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
