package fleetsim

import (
	"crypto/ecdsa"
	"sync"
	"sync/atomic"

	"github.com/mdm-authority/mdm/broker"
)

// deviceKey is a device's key pair and the certificate request, signed
// with it, that the device enrolls with.
type deviceKey struct {
	key *ecdsa.PrivateKey
	csr []byte
}

// newDeviceKey makes a device's key and certificate request.
func newDeviceKey() (deviceKey, error) {
	key, csr, err := broker.NewDeviceKeyAndCSR()
	return deviceKey{key: key, csr: csr}, err
}

// keyMaker makes devices' keys ahead of their enrollment, on a goroutine
// of its own, so that the loop, which enrolls one device at a time, does
// not wait for the cryptography: while the fleet enrolls, the loop and
// the service leave part of a second core idle. The keys come from
// crypto/rand, not from the seed, so which goroutine makes them changes
// nothing in the run.
type keyMaker struct {
	keys chan deviceKey
	stop chan struct{}
	left atomic.Int64 // keys still to make, by the maker or by take
	done sync.WaitGroup
}

// keyMakerAhead is how many keys the maker keeps ready.
const keyMakerAhead = 256

// startKeyMaker starts making n keys.
func startKeyMaker(n int) *keyMaker {
	m := &keyMaker{keys: make(chan deviceKey, keyMakerAhead), stop: make(chan struct{})}
	m.left.Store(int64(n))
	m.done.Go(func() {
		for m.left.Add(-1) >= 0 {
			select {
			case <-m.stop:
				return
			default:
			}
			k, err := newDeviceKey()
			if err != nil {
				return // take makes its own, and reports the error
			}
			select {
			case m.keys <- k:
			case <-m.stop:
				return
			}
		}
	})
	return m
}

// take returns a key the maker has ready, or makes one when none is (or
// m is nil); a key take makes is one fewer for the maker.
func (m *keyMaker) take() (deviceKey, error) {
	if m != nil {
		select {
		case k := <-m.keys:
			return k, nil
		default:
		}
		m.left.Add(-1)
	}
	return newDeviceKey()
}

// close stops the maker and waits for it. It is called once.
func (m *keyMaker) close() {
	if m == nil {
		return
	}
	close(m.stop)
	m.done.Wait()
}
