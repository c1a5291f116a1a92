package main

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/mdm-authority/mdm/broker"
)

// TestCertCommand issues the certificates an external broker needs and
// checks what they are for, whom they name and who can read their keys.
func TestCertCommand(t *testing.T) {
	data, out := filepath.Join(t.TempDir(), "data"), t.TempDir()
	if err := certCommand([]string{"server", "--data", data, "--tenant", "contoso", "--out", out, "--name", "mqtt.example.net", "--name", "127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	if err := certCommand([]string{"service", "--data", data, "--tenant", "contoso", "--out", out}); err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(filepath.Join(data, "ca.crt"))
	if err != nil {
		t.Fatalf("no CA in the data directory: %v", err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	for _, c := range []struct {
		kind  string
		usage x509.ExtKeyUsage
		check func(*x509.Certificate) bool
	}{
		{"server", x509.ExtKeyUsageServerAuth, func(c *x509.Certificate) bool {
			return slices.Contains(c.DNSNames, "mqtt.example.net") && len(c.IPAddresses) == 1 && c.IPAddresses[0].String() == "127.0.0.1"
		}},
		{"service", x509.ExtKeyUsageClientAuth, func(c *x509.Certificate) bool {
			return c.Subject.CommonName == broker.ServiceIdentity && len(c.URIs) == 0
		}},
	} {
		crt, key := filepath.Join(out, c.kind+".crt"), filepath.Join(out, c.kind+".key")
		pair, err := tls.LoadX509KeyPair(crt, key)
		if err != nil {
			t.Fatalf("%s: %v", c.kind, err)
		}
		if _, err := pair.Leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{c.usage}}); err != nil {
			t.Errorf("%s certificate: %v; want one from the service CA for %v", c.kind, err, c.usage)
		}
		if !c.check(pair.Leaf) {
			t.Errorf("%s certificate: subject %v, names %v %v, URIs %v", c.kind, pair.Leaf.Subject, pair.Leaf.DNSNames, pair.Leaf.IPAddresses, pair.Leaf.URIs)
		}
		if fi, err := os.Stat(key); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s key mode %v, %v; want 0600", c.kind, fi.Mode().Perm(), err)
		}
	}
	for _, args := range [][]string{{}, {"client"}, {"server", "--data", data}, {"server", "--data", data, "--name", "x", "extra"}} {
		if err := certCommand(args); err == nil {
			t.Errorf("cert %q: no error; want one that says what to give", args)
		}
	}
}

// TestServeExternalFlags: the flags of the embedded broker and of an
// external one do not mix.
func TestServeExternalFlags(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--mqtt-url", "tls://127.0.0.1:1", "--mqtt", "127.0.0.1:8883"}, "exclude each other"},
		{[]string{"--mqtt-url", "tls://127.0.0.1:1", "--mqtt-tcp", "127.0.0.1:1883"}, "exclude each other"},
		{[]string{"--mqtt-cert", "service.crt"}, "needs --mqtt-url"},
	} {
		err := serve(append(c.args, "--data", t.TempDir()))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("serve %q = %v; want an error saying %q", c.args, err, c.want)
		}
	}
}
