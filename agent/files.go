package agent

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// Clock tells the time and makes timers; the agent never reads the time
// otherwise. Tests pass a fake one that they advance.
type Clock interface {
	Now() time.Time
	// NewTimer returns a channel that receives the time once d has passed
	// on this clock, and a function that stops the timer.
	NewTimer(d time.Duration) (<-chan time.Time, func())
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) NewTimer(d time.Duration) (<-chan time.Time, func()) {
	t := time.NewTimer(d)
	return t.C, func() { t.Stop() }
}

// ErrNotEnrolled means the state directory holds no enrolled device.
var ErrNotEnrolled = errors.New("this device is not enrolled: run mdm-agent enroll first")

// files names the files of a state directory.
type files struct {
	dir, state, key, socket, profiles string
}

func layout(dir string) files {
	return files{
		dir:      dir,
		state:    filepath.Join(dir, "state.json"),
		key:      filepath.Join(dir, "device.key"),
		socket:   filepath.Join(dir, "agent.sock"),
		profiles: filepath.Join(dir, "profiles"),
	}
}

// SocketPath returns the local control socket of the agent whose state
// directory is dir.
func SocketPath(dir string) string { return layout(dir).socket }

// ProfileDir returns where the default applier writes profiles.
func ProfileDir(dir string) string { return layout(dir).profiles }

// LoadState reads the state of the agent whose state directory is dir.
func LoadState(dir string) (*State, error) { return layout(dir).load() }

func (f files) load() (*State, error) {
	b, err := readBounded(f.state, maxStateSize)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w (no %s)", ErrNotEnrolled, f.state)
	}
	if err != nil {
		return nil, err
	}
	st, err := DecodeState(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.state, err)
	}
	return st, nil
}

func (f files) save(st *State) error {
	b, err := st.Encode()
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	if err := WriteFileAtomic(f.state, b, 0o600); err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	return nil
}

// identity returns the TLS configuration of the device: its certificate
// and key, and the service's CA.
func (f files) identity(st *State) (*tls.Config, error) {
	pemKey, err := readBounded(f.key, 64<<10)
	if err != nil {
		return nil, fmt.Errorf("device key: %w (enroll again)", err)
	}
	block, _ := pem.Decode(pemKey)
	if block == nil {
		return nil, fmt.Errorf("device key %s holds no PEM block (enroll again)", f.key)
	}
	key, err := x509.ParseECPrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("device key %s: %w (enroll again)", f.key, err)
	}
	roots := x509.NewCertPool()
	if len(st.CACertificate) > 0 {
		ca, err := x509.ParseCertificate(st.CACertificate)
		if err != nil {
			return nil, fmt.Errorf("CA certificate in %s: %w (enroll again)", f.state, err)
		}
		roots.AddCert(ca)
	}
	return &tls.Config{
		RootCAs:      roots,
		Certificates: []tls.Certificate{{Certificate: [][]byte{st.Certificate}, PrivateKey: key}},
	}, nil
}

// erase removes the identity and the profiles; the state file stays as a
// record of why management ended.
func (f files) erase(st *State) error {
	tomb := &State{
		Version: StateVersion, Tenant: st.Tenant, Device: st.Device, Platform: st.Platform, User: st.User,
		EnrollmentType: st.EnrollmentType, Name: st.Name, Broker: st.Broker, EnrolledAt: st.EnrolledAt,
		Authority: st.Authority, Epoch: st.Epoch, Stopped: st.Stopped, Profiles: []Profile{},
	}
	if st.Stopped != StoppedWiped {
		tomb.Commands, tomb.Lock = st.Commands, st.Lock
	}
	var errs []error
	if err := os.Remove(f.key); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(f.profiles); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, f.save(tomb))
	return errors.Join(errs...)
}

// readBounded reads a file of at most limit bytes.
func readBounded(path string, limit int64) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	info, err := fh.Stat()
	if err != nil {
		return nil, err
	}
	if info.Size() > limit {
		return nil, fmt.Errorf("%s is %d bytes, more than %d: not a file the agent wrote", path, info.Size(), limit)
	}
	b := make([]byte, info.Size())
	_, err = io.ReadFull(fh, b)
	return b, err
}
