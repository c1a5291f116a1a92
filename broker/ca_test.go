package broker

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

var caTestNow = time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)

const caTestValidity = 90 * 24 * time.Hour

// caForTest creates a CA for tenant in a fresh directory.
func caForTest(t testing.TB, tenant string) (*CA, string) {
	t.Helper()
	dir := t.TempDir()
	ca, created, err := LoadOrCreateCA(dir, tenant, caTestNow)
	if err != nil || !created {
		t.Fatalf("LoadOrCreateCA(%q, %q) = %v, %v; want a new CA", dir, tenant, created, err)
	}
	return ca, dir
}

// csrForTest makes a CSR for key with a subject the service must ignore.
func csrForTest(t testing.TB, key crypto.Signer) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:  pkix.Name{CommonName: "someone-else", Organization: []string{"other-tenant"}},
		DNSNames: []string{"evil.example.test"},
	}, key)
	if err != nil {
		t.Fatalf("CreateCertificateRequest: %v", err)
	}
	return der
}

// deviceCertForTest issues a certificate for device d-1 of contoso.
func deviceCertForTest(t testing.TB, ca *CA) (*ecdsa.PrivateKey, *x509.Certificate) {
	t.Helper()
	key, csr, err := NewDeviceKeyAndCSR()
	if err != nil {
		t.Fatalf("NewDeviceKeyAndCSR: %v", err)
	}
	_, cert, err := ca.SignDevice(csr, "contoso", "d-1", caTestNow, caTestValidity)
	if err != nil {
		t.Fatalf("SignDevice: %v", err)
	}
	return key, cert
}

func TestLoadOrCreateCACreateThenReload(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state", "ca") // created on demand
	ca, created, err := LoadOrCreateCA(dir, "contoso", caTestNow)
	if err != nil || !created {
		t.Fatalf("LoadOrCreateCA(new dir) = %v, %v; want created, nil", created, err)
	}
	c := ca.Certificate()
	if got, want := c.Subject.CommonName, "mdm-authority CA contoso"; got != want {
		t.Errorf("CA CN = %q; want %q", got, want)
	}
	if !c.IsCA || c.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("CA certificate IsCA = %v, KeyUsage = %v; want a CA that signs certificates", c.IsCA, c.KeyUsage)
	}
	if got, want := c.NotAfter, caTestNow.AddDate(10, 0, 0); !got.Equal(want) {
		t.Errorf("CA NotAfter = %v; want %v", got, want)
	}
	if got := c.NotBefore; got.After(caTestNow) {
		t.Errorf("CA NotBefore = %v; want at or before %v", got, caTestNow)
	}
	if _, ok := c.PublicKey.(*ecdsa.PublicKey); !ok || c.PublicKey.(*ecdsa.PublicKey).Curve != elliptic.P256() {
		t.Errorf("CA key = %T; want ECDSA P-256", c.PublicKey)
	}
	if !bytes.Equal(ca.CertificateDER(), c.Raw) {
		t.Errorf("CertificateDER() differs from Certificate().Raw")
	}

	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if want := []string{"ca.crt", "ca.key"}; !slices.Equal(names, want) {
		t.Errorf("files in CA dir = %q; want %q (no temp files left)", names, want)
	}
	if runtime.GOOS != "windows" {
		for name, want := range map[string]os.FileMode{"ca.key": 0o600, "ca.crt": 0o644} {
			fi, err := os.Stat(filepath.Join(dir, name))
			if err != nil {
				t.Fatal(err)
			}
			if got := fi.Mode().Perm(); got != want {
				t.Errorf("mode of %s = %04o; want %04o", name, got, want)
			}
		}
	}

	later := caTestNow.Add(30 * 24 * time.Hour)
	again, created, err := LoadOrCreateCA(dir, "contoso", later)
	if err != nil || created {
		t.Fatalf("LoadOrCreateCA(existing dir) = %v, %v; want loaded, nil", created, err)
	}
	if !bytes.Equal(again.CertificateDER(), ca.CertificateDER()) {
		t.Errorf("reloaded CA certificate differs from the created one")
	}
	// The reloaded key is the same key: what it signs verifies against the
	// first instance's pool.
	_, csr, err := NewDeviceKeyAndCSR()
	if err != nil {
		t.Fatal(err)
	}
	_, cert, err := again.SignDevice(csr, "contoso", "d-1", later, caTestValidity)
	if err != nil {
		t.Fatalf("SignDevice with reloaded CA: %v", err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), CurrentTime: later, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("certificate from reloaded CA does not verify against the original CA: %v", err)
	}
}

func TestLoadOrCreateCAKeyFormats(t *testing.T) {
	ca, dir := caForTest(t, "contoso")
	keyPath := filepath.Join(dir, "ca.key")
	sec1, err := os.ReadFile(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(sec1)
	key, err := x509.ParseECPrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	oid, err := asn1.Marshal(asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7}) // P-256
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name string
		pem  []byte
	}{
		{"SEC 1 as written", sec1},
		{"PKCS#8", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8})},
		{"openssl ecparam -genkey output", append(pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: oid}), sec1...)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := os.WriteFile(keyPath, tt.pem, 0o600); err != nil {
				t.Fatal(err)
			}
			got, created, err := LoadOrCreateCA(dir, "contoso", caTestNow)
			if err != nil || created {
				t.Fatalf("LoadOrCreateCA = %v, %v; want loaded, nil", created, err)
			}
			if !bytes.Equal(got.CertificateDER(), ca.CertificateDER()) {
				t.Errorf("loaded a different CA certificate")
			}
		})
	}
}

func TestLoadOrCreateCARefuses(t *testing.T) {
	// writeFile replaces dir/name with data, keeping mode.
	writeFile := func(t *testing.T, dir, name string, data []byte, mode os.FileMode) {
		t.Helper()
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, data, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
	}
	keyOf := func(t *testing.T, dir string) *ecdsa.PrivateKey {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(dir, "ca.key"))
		if err != nil {
			t.Fatal(err)
		}
		k, err := parseCAKey(b)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}

	tests := []struct {
		name string
		// setup prepares dir, which holds a CA created at caTestNow.
		setup    func(t *testing.T, dir string)
		tenant   string
		now      time.Time // zero: caTestNow
		want     string    // substring of the error
		unixOnly bool
	}{
		{
			name:  "only ca.key",
			setup: func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, "ca.crt")) },
			want:  "ca.key but not ca.crt; restore ca.crt",
		},
		{
			name:  "only ca.crt",
			setup: func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, "ca.key")) },
			want:  "ca.crt but not ca.key; restore ca.key",
		},
		{
			name:     "key readable by others",
			setup:    func(t *testing.T, dir string) { os.Chmod(filepath.Join(dir, "ca.key"), 0o644) },
			want:     "ca.key is readable by others (mode 0644); run chmod 600 ",
			unixOnly: true,
		},
		{
			name:     "key readable by group",
			setup:    func(t *testing.T, dir string) { os.Chmod(filepath.Join(dir, "ca.key"), 0o640) },
			want:     "ca.key is readable by others (mode 0640); run chmod 600 ",
			unixOnly: true,
		},
		{
			name: "key of another CA",
			setup: func(t *testing.T, dir string) {
				_, other := caForTest(t, "contoso")
				b, err := os.ReadFile(filepath.Join(other, "ca.key"))
				if err != nil {
					t.Fatal(err)
				}
				writeFile(t, dir, "ca.key", b, 0o600)
			},
			want: "ca.key does not match",
		},
		{
			name: "P-384 key",
			setup: func(t *testing.T, dir string) {
				k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
				if err != nil {
					t.Fatal(err)
				}
				der, err := x509.MarshalPKCS8PrivateKey(k)
				if err != nil {
					t.Fatal(err)
				}
				writeFile(t, dir, "ca.key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
			},
			want: "must be ECDSA P-256",
		},
		{
			name:  "key not PEM",
			setup: func(t *testing.T, dir string) { writeFile(t, dir, "ca.key", []byte("not a key"), 0o600) },
			want:  "no PEM",
		},
		{
			name:  "certificate not PEM",
			setup: func(t *testing.T, dir string) { writeFile(t, dir, "ca.crt", []byte("not a certificate"), 0o644) },
			want:  "no PEM CERTIFICATE block",
		},
		{
			name: "certificate not a CA",
			setup: func(t *testing.T, dir string) {
				k := keyOf(t, dir)
				tmpl := &x509.Certificate{
					SerialNumber: big.NewInt(1),
					Subject:      pkix.Name{CommonName: "not a CA"},
					NotBefore:    caTestNow,
					NotAfter:     caTestNow.AddDate(1, 0, 0),
				}
				der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
				if err != nil {
					t.Fatal(err)
				}
				writeFile(t, dir, "ca.crt", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
			},
			want: "is not a CA certificate",
		},
		{
			name:  "certificate expired",
			setup: func(t *testing.T, dir string) {},
			now:   caTestNow.AddDate(10, 0, 1),
			want:  "expired on 2036-03-02T09:00:00Z",
		},
		{
			name: "invalid tenant on creation",
			setup: func(t *testing.T, dir string) {
				os.Remove(filepath.Join(dir, "ca.key"))
				os.Remove(filepath.Join(dir, "ca.crt"))
			},
			tenant: "a/b",
			want:   "tenant:",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.unixOnly && runtime.GOOS == "windows" {
				t.Skip("no Unix permission bits")
			}
			_, dir := caForTest(t, "contoso")
			tt.setup(t, dir)
			tenant, now := "contoso", caTestNow
			if tt.tenant != "" {
				tenant = tt.tenant
			}
			if !tt.now.IsZero() {
				now = tt.now
			}
			ca, created, err := LoadOrCreateCA(dir, tenant, now)
			if err == nil || ca != nil || created {
				t.Fatalf("LoadOrCreateCA(%q, %q) = %v, %v, %v; want an error containing %q", dir, tenant, ca, created, err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("LoadOrCreateCA(%q, %q) error = %q; want it to contain %q", dir, tenant, err, tt.want)
			}
		})
	}
}

func TestLoadOrCreateCAKeyModeMessage(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no Unix permission bits")
	}
	_, dir := caForTest(t, "contoso")
	path := filepath.Join(dir, "ca.key")
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	_, _, err := LoadOrCreateCA(dir, "contoso", caTestNow)
	want := "ca.key is readable by others (mode 0644); run chmod 600 " + path
	if err == nil || !strings.HasSuffix(err.Error(), want) {
		t.Errorf("LoadOrCreateCA(%q) error = %v; want it to end with %q", dir, err, want)
	}
}

func TestSignDevice(t *testing.T) {
	ca, _ := caForTest(t, "contoso")
	key, csr, err := NewDeviceKeyAndCSR()
	if err != nil {
		t.Fatal(err)
	}
	der, cert, err := ca.SignDevice(csr, "contoso", "d-7f3a9c21", caTestNow, caTestValidity)
	if err != nil {
		t.Fatalf("SignDevice = %v; want nil", err)
	}
	if !bytes.Equal(der, cert.Raw) {
		t.Errorf("SignDevice DER differs from the parsed certificate's Raw")
	}
	if got, want := cert.Subject.CommonName, "d-7f3a9c21"; got != want {
		t.Errorf("CN = %q; want %q", got, want)
	}
	if got, want := cert.Subject.Organization, []string{"contoso"}; !slices.Equal(got, want) {
		t.Errorf("O = %q; want %q", got, want)
	}
	var uris []string
	for _, u := range cert.URIs {
		uris = append(uris, u.String())
	}
	if want := []string{"mdm://contoso/d-7f3a9c21"}; !slices.Equal(uris, want) {
		t.Errorf("URI SANs = %q; want %q", uris, want)
	}
	if got, want := cert.NotBefore, caTestNow.Add(-5*time.Minute); !got.Equal(want) {
		t.Errorf("NotBefore = %v; want %v", got, want)
	}
	if got, want := cert.NotAfter, caTestNow.Add(caTestValidity); !got.Equal(want) {
		t.Errorf("NotAfter = %v; want %v", got, want)
	}
	if got, want := cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}; !slices.Equal(got, want) {
		t.Errorf("ExtKeyUsage = %v; want %v", got, want)
	}
	if got, want := cert.KeyUsage, x509.KeyUsageDigitalSignature; got != want {
		t.Errorf("KeyUsage = %v; want %v", got, want)
	}
	if cert.IsCA {
		t.Errorf("device certificate IsCA = true; want false")
	}
	if len(cert.DNSNames) != 0 {
		t.Errorf("DNSNames = %q; want none (the CSR's are ignored)", cert.DNSNames)
	}
	if s := cert.SerialNumber; s.Sign() <= 0 || s.BitLen() > 128 {
		t.Errorf("serial = %x; want positive, at most 128 bits", s)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		t.Errorf("certificate key is not the CSR's key")
	}
	if _, err := cert.Verify(x509.VerifyOptions{
		Roots:       ca.Pool(),
		CurrentTime: caTestNow,
		KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		t.Errorf("device certificate does not chain to Pool(): %v", err)
	}

	_, second, err := ca.SignDevice(csr, "contoso", "d-7f3a9c21", caTestNow, caTestValidity)
	if err != nil {
		t.Fatal(err)
	}
	if second.SerialNumber.Cmp(cert.SerialNumber) == 0 {
		t.Errorf("two certificates share serial %x", cert.SerialNumber)
	}
}

func TestSignDeviceKeyTypes(t *testing.T) {
	ca, _ := caForTest(t, "contoso")
	ecKey := func(c elliptic.Curve) func(*testing.T) crypto.Signer {
		return func(t *testing.T) crypto.Signer {
			k, err := ecdsa.GenerateKey(c, rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			return k
		}
	}
	rsaKey := func(bits int) func(*testing.T) crypto.Signer {
		return func(t *testing.T) crypto.Signer {
			k, err := rsa.GenerateKey(rand.Reader, bits)
			if err != nil {
				t.Fatal(err)
			}
			return k
		}
	}
	tests := []struct {
		name string
		key  func(*testing.T) crypto.Signer
		want string // substring of the error; "" for success
	}{
		{"ECDSA P-256", ecKey(elliptic.P256()), ""},
		{"ECDSA P-384", ecKey(elliptic.P384()), ""},
		{"Ed25519", func(t *testing.T) crypto.Signer {
			_, k, err := ed25519.GenerateKey(rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			return k
		}, ""},
		{"RSA 2048", rsaKey(2048), ""},
		{"RSA 1024", rsaKey(1024), "RSA key of 1024 bits is too weak"},
		{"ECDSA P-521", ecKey(elliptic.P521()), "ECDSA P-521 is not accepted"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key := tt.key(t)
			_, cert, err := ca.SignDevice(csrForTest(t, key), "contoso", "d-1", caTestNow, caTestValidity)
			if tt.want != "" {
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("SignDevice(%s CSR) = %v; want an error containing %q", tt.name, err, tt.want)
				}
				return
			}
			if err != nil {
				t.Fatalf("SignDevice(%s CSR) = %v; want nil", tt.name, err)
			}
			if got := cert.Subject.CommonName; got != "d-1" {
				t.Errorf("SignDevice(%s CSR) CN = %q; want %q (the CSR's subject is ignored)", tt.name, got, "d-1")
			}
			type equaler interface{ Equal(crypto.PublicKey) bool }
			if !key.Public().(equaler).Equal(cert.PublicKey) {
				t.Errorf("SignDevice(%s CSR): certificate key is not the CSR's key", tt.name)
			}
		})
	}
}

func TestSignDeviceRefuses(t *testing.T) {
	ca, _ := caForTest(t, "contoso")
	_, good, err := NewDeviceKeyAndCSR()
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := x509.ParseCertificateRequest(good)
	if err != nil {
		t.Fatal(err)
	}
	badSig := slices.Clone(good)
	i := bytes.LastIndex(badSig, parsed.Signature)
	if i < 0 {
		t.Fatal("signature not found in CSR")
	}
	// The last byte of the signature's s: the CSR still parses, the
	// signature no longer verifies.
	badSig[i+len(parsed.Signature)-1] ^= 0x01

	tests := []struct {
		name     string
		csr      []byte
		tenant   string
		device   string
		validity time.Duration
		want     string
	}{
		{"bad signature", badSig, "contoso", "d-1", caTestValidity, "csr signature"},
		{"garbage", []byte("this is not a CSR"), "contoso", "d-1", caTestValidity, "parse csr"},
		{"empty", nil, "contoso", "d-1", caTestValidity, "parse csr"},
		{"truncated", good[:len(good)/2], "contoso", "d-1", caTestValidity, "parse csr"},
		{"device id with slash", good, "contoso", "d/1", caTestValidity, "device:"},
		{"empty tenant", good, "", "d-1", caTestValidity, "tenant:"},
		{"zero validity", good, "contoso", "d-1", 0, "validity"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			der, cert, err := ca.SignDevice(tt.csr, tt.tenant, tt.device, caTestNow, tt.validity)
			if err == nil || der != nil || cert != nil {
				t.Fatalf("SignDevice(%s) = %d bytes, %v; want an error containing %q", tt.name, len(der), err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("SignDevice(%s) error = %q; want it to contain %q", tt.name, err, tt.want)
			}
			if !strings.HasPrefix(err.Error(), "sign device certificate: ") {
				t.Errorf("SignDevice(%s) error = %q; want it to name the operation", tt.name, err)
			}
		})
	}
}

func TestDeviceIdentity(t *testing.T) {
	ca, _ := caForTest(t, "contoso")
	devKey, devCert := deviceCertForTest(t, ca)
	sameName, _ := caForTest(t, "contoso")   // another CA with the same subject
	otherName, _ := caForTest(t, "fabrikam") // another CA
	_, sameNameCert := deviceCertForTest(t, sameName)
	_, otherNameCert := deviceCertForTest(t, otherName)
	server, err := ca.ServerCertificate([]string{"mdm.example.test"}, nil, caTestNow, caTestValidity)
	if err != nil {
		t.Fatal(err)
	}

	// forge makes a device-looking certificate signed by the device's own
	// key, with issuer as its issuer name.
	forge := func(issuer pkix.Name) *x509.Certificate {
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(42),
			Subject:      pkix.Name{CommonName: "d-1", Organization: []string{"contoso"}},
			URIs:         []*url.URL{{Scheme: "mdm", Host: "contoso", Path: "/d-1"}},
			NotBefore:    caTestNow.Add(-time.Hour),
			NotAfter:     caTestNow.Add(caTestValidity),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}
		parent := tmpl
		if issuer.CommonName != "" {
			parent = &x509.Certificate{Subject: issuer}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &devKey.PublicKey, devKey)
		if err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}

	expiry := devCert.NotAfter
	tests := []struct {
		name        string
		cert        *x509.Certificate
		now         time.Time
		wantDevice  string // "" when an error is expected
		wantExpired bool
	}{
		{"valid", devCert, caTestNow.Add(time.Hour), "d-1", false},
		{"inside the clock skew allowance", devCert, caTestNow.Add(-4 * time.Minute), "d-1", false},
		{"at NotAfter", devCert, expiry, "d-1", false},
		{"expired", devCert, expiry.Add(time.Second), "", true},
		{"not yet valid", devCert, caTestNow.Add(-time.Hour), "", false},
		{"foreign CA with the same name", sameNameCert, caTestNow.Add(time.Hour), "", false},
		{"foreign CA with the same name, expired", sameNameCert, expiry.Add(time.Second), "", false},
		{"foreign CA", otherNameCert, caTestNow.Add(time.Hour), "", false},
		{"foreign CA, expired", otherNameCert, expiry.Add(time.Second), "", false},
		{"self-signed", forge(pkix.Name{}), caTestNow.Add(time.Hour), "", false},
		{"self-signed naming the CA as issuer", forge(ca.Certificate().Subject), caTestNow.Add(time.Hour), "", false},
		{"self-signed naming the CA as issuer, expired", forge(ca.Certificate().Subject), expiry.Add(time.Second), "", false},
		{"server certificate", server.Leaf, caTestNow.Add(time.Hour), "", false},
		{"the CA certificate", ca.Certificate(), caTestNow.Add(time.Hour), "", false},
		{"nil", nil, caTestNow, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tenant, device, err := ca.DeviceIdentity(tt.cert, tt.now)
			if tt.wantDevice != "" {
				if err != nil || tenant != "contoso" || device != tt.wantDevice {
					t.Errorf("DeviceIdentity(%s) = %q, %q, %v; want %q, %q, nil", tt.name, tenant, device, err, "contoso", tt.wantDevice)
				}
				return
			}
			if err == nil {
				t.Fatalf("DeviceIdentity(%s) = %q, %q, nil; want an error", tt.name, tenant, device)
			}
			if got := errors.Is(err, ErrCertificateExpired); got != tt.wantExpired {
				t.Errorf("DeviceIdentity(%s) = %v; errors.Is(ErrCertificateExpired) = %v, want %v", tt.name, err, got, tt.wantExpired)
			}
			if tenant != "" || device != "" {
				t.Errorf("DeviceIdentity(%s) = %q, %q with an error; want empty ids", tt.name, tenant, device)
			}
		})
	}
}

func TestServerCertificate(t *testing.T) {
	ca, _ := caForTest(t, "contoso")
	names := []string{"mdm.example.test", "localhost"}
	ips := []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")}
	tc, err := ca.ServerCertificate(names, ips, caTestNow, caTestValidity)
	if err != nil {
		t.Fatalf("ServerCertificate = %v; want nil", err)
	}
	if len(tc.Certificate) != 2 || !bytes.Equal(tc.Certificate[1], ca.CertificateDER()) {
		t.Fatalf("ServerCertificate chain has %d certificates; want leaf and CA", len(tc.Certificate))
	}
	if tc.Leaf == nil || !bytes.Equal(tc.Leaf.Raw, tc.Certificate[0]) {
		t.Fatalf("ServerCertificate Leaf is not the chain's leaf")
	}
	if k, ok := tc.PrivateKey.(*ecdsa.PrivateKey); !ok || k.Curve != elliptic.P256() || !k.PublicKey.Equal(tc.Leaf.PublicKey) {
		t.Fatalf("ServerCertificate key = %T; want the leaf's ECDSA P-256 key", tc.PrivateKey)
	}
	if got, want := tc.Leaf.NotAfter, caTestNow.Add(caTestValidity); !got.Equal(want) {
		t.Errorf("NotAfter = %v; want %v", got, want)
	}

	tests := []struct {
		host string
		ok   bool
	}{
		{"mdm.example.test", true},
		{"localhost", true},
		{"127.0.0.1", true},
		{"::1", true},
		{"other.example.test", false},
		{"10.0.0.1", false},
	}
	for _, tt := range tests {
		_, err := tc.Leaf.Verify(x509.VerifyOptions{
			Roots:       ca.Pool(),
			DNSName:     tt.host,
			CurrentTime: caTestNow,
			KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		})
		if (err == nil) != tt.ok {
			t.Errorf("Verify(DNSName %q) = %v; want ok = %v", tt.host, err, tt.ok)
		}
	}

	for _, bad := range []struct {
		name     string
		names    []string
		ips      []net.IP
		validity time.Duration
	}{
		{"no names", nil, nil, caTestValidity},
		{"empty name", []string{""}, nil, caTestValidity},
		{"zero validity", names, nil, 0},
	} {
		if _, err := ca.ServerCertificate(bad.names, bad.ips, caTestNow, bad.validity); err == nil {
			t.Errorf("ServerCertificate(%s) = nil; want an error", bad.name)
		}
	}
}

// TestMutualTLS runs a TLS handshake with the device and server
// certificates, as the broker's listener will, and reads the device's
// identity from the verified peer certificate.
func TestMutualTLS(t *testing.T) {
	ca, _ := caForTest(t, "contoso")
	devKey, devCert := deviceCertForTest(t, ca)
	srvCert, err := ca.ServerCertificate([]string{"mdm.example.test"}, nil, caTestNow, caTestValidity)
	if err != nil {
		t.Fatal(err)
	}
	now := func() time.Time { return caTestNow.Add(time.Hour) }
	c, s := net.Pipe()
	client := tls.Client(c, &tls.Config{
		RootCAs:      ca.Pool(),
		ServerName:   "mdm.example.test",
		Certificates: []tls.Certificate{{Certificate: [][]byte{devCert.Raw}, PrivateKey: devKey}},
		Time:         now,
	})
	server := tls.Server(s, &tls.Config{
		Certificates: []tls.Certificate{srvCert},
		ClientCAs:    ca.Pool(),
		ClientAuth:   tls.RequireAndVerifyClientCert,
		Time:         now,
	})
	// Close the pipe ends, not the TLS conns: their close_notify would
	// wait on a pipe nobody reads any more.
	defer c.Close()
	defer s.Close()
	clientErr := make(chan error, 1)
	go func() { clientErr <- client.Handshake() }()
	if err := server.Handshake(); err != nil {
		t.Fatalf("server handshake: %v", err)
	}
	if err := <-clientErr; err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	peers := server.ConnectionState().PeerCertificates
	if len(peers) == 0 {
		t.Fatal("no peer certificate")
	}
	tenant, device, err := ca.DeviceIdentity(peers[0], now())
	if err != nil || tenant != "contoso" || device != "d-1" {
		t.Errorf("DeviceIdentity(peer) = %q, %q, %v; want %q, %q, nil", tenant, device, err, "contoso", "d-1")
	}
}

// FuzzSignDevice checks that no CSR makes SignDevice panic, and that any
// certificate it issues names exactly the device it was asked for.
func FuzzSignDevice(f *testing.F) {
	ca, _ := caForTest(f, "contoso")
	_, csr, err := NewDeviceKeyAndCSR()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(csr)
	f.Add([]byte("not a CSR"))
	f.Add([]byte{0x30, 0x82, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		_, cert, err := ca.SignDevice(b, "contoso", "d-1", caTestNow, caTestValidity)
		if err != nil {
			return
		}
		tenant, device, err := ca.DeviceIdentity(cert, caTestNow)
		if err != nil || tenant != "contoso" || device != "d-1" {
			t.Errorf("DeviceIdentity(issued) = %q, %q, %v; want contoso, d-1, nil", tenant, device, err)
		}
	})
}
