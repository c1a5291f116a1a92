package broker

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"time"

	"github.com/mdm-authority/mdm/protocol"
)

// File names of the CA inside its directory.
const (
	caKeyFile  = "ca.key"
	caCertFile = "ca.crt"
)

const (
	// caValidityYears is how long a new CA certificate is valid. Long,
	// because replacing the CA means re-enrolling every device.
	caValidityYears = 10
	// caClockSkew backdates NotBefore so that a device whose clock is a
	// little behind the service's still accepts a certificate issued just
	// now.
	caClockSkew = 5 * time.Minute
	// caMinRSABits is the smallest RSA key accepted in a device CSR.
	caMinRSABits = 2048
	// deviceURIScheme is the scheme of the URI SAN naming a device:
	// mdm://<tenant>/<device>.
	deviceURIScheme = "mdm"
)

// ErrCertificateExpired means a device certificate issued by the CA is past
// its NotAfter. The device must enroll again: an expired certificate is
// never renewed.
var ErrCertificateExpired = errors.New("certificate expired")

// CA is the service's certificate authority (ECDSA P-256). It issues the
// devices' MDM certificates and the service's TLS certificate. A CA is
// immutable once loaded and safe for concurrent use.
type CA struct {
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
	// roots holds only cert; it is private so that callers adding to the
	// pool returned by Pool cannot widen what DeviceIdentity trusts.
	roots *x509.CertPool
	// tokenKey makes connect tokens; it is derived from the CA key, so
	// rotating the CA revokes every token with every certificate.
	tokenKey []byte
}

// LoadOrCreateCA loads the CA key and certificate from dir, or creates them
// on first start.
//
// The key is the file "ca.key" (PEM, "EC PRIVATE KEY" or PKCS#8 "PRIVATE
// KEY", ECDSA P-256), which must not be accessible to group or others; the
// certificate is "ca.crt" (PEM). When neither exists, LoadOrCreateCA creates
// dir if needed, a new key and a self-signed certificate with subject
// "mdm-authority CA <tenant>" valid for 10 years from now, writes both
// atomically (ca.key mode 0600, ca.crt mode 0644) and returns created=true.
// tenant is used only to name a new CA, and must then be a valid id.
//
// It refuses, saying what to do, when only one of the two files exists, when
// the key does not match the certificate, when the key file is readable by
// others, or when the certificate is not a CA certificate or has expired at
// now: carrying on would issue certificates that no device or peer accepts.
func LoadOrCreateCA(dir, tenant string, now time.Time) (ca *CA, created bool, err error) {
	keyPath := filepath.Join(dir, caKeyFile)
	certPath := filepath.Join(dir, caCertFile)
	keyExists, err := caFileExists(keyPath)
	if err != nil {
		return nil, false, fmt.Errorf("load ca: %w", err)
	}
	certExists, err := caFileExists(certPath)
	if err != nil {
		return nil, false, fmt.Errorf("load ca: %w", err)
	}
	switch {
	case !keyExists && !certExists:
		ca, err := createCA(dir, tenant, now)
		if err != nil {
			return nil, false, fmt.Errorf("create ca in %s: %w", dir, err)
		}
		return ca, true, nil
	case keyExists && !certExists:
		return nil, false, fmt.Errorf("load ca: found %s but not %s; restore %s from the backup of this CA, or move %s away to create a new CA (every enrolled device must then enroll again)",
			keyPath, caCertFile, caCertFile, caKeyFile)
	case !keyExists && certExists:
		return nil, false, fmt.Errorf("load ca: found %s but not %s; restore %s from the backup of this CA, or move %s away to create a new CA (every enrolled device must then enroll again)",
			certPath, caKeyFile, caKeyFile, caCertFile)
	}
	ca, err = loadCA(keyPath, certPath, now)
	if err != nil {
		return nil, false, fmt.Errorf("load ca: %w", err)
	}
	return ca, false, nil
}

// caFileExists reports whether path exists; errors other than "does not
// exist" (permissions, I/O) are returned rather than taken as absence, so
// that an unreadable CA is never silently replaced by a new one.
func caFileExists(path string) (bool, error) {
	_, err := os.Stat(path)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	default:
		return false, err
	}
}

func loadCA(keyPath, certPath string, now time.Time) (*CA, error) {
	keyPEM, err := readCAKeyFile(keyPath)
	if err != nil {
		return nil, err
	}
	key, err := parseCAKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", keyPath, err)
	}
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s: no PEM CERTIFICATE block", certPath)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", certPath, err)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("%s does not match %s; restore both files from the same backup, or move both away to create a new CA (every enrolled device must then enroll again)",
			caKeyFile, certPath)
	}
	if !cert.BasicConstraintsValid || !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("%s is not a CA certificate (it cannot sign certificates); restore the CA's own certificate", certPath)
	}
	if now.After(cert.NotAfter) {
		return nil, fmt.Errorf("%s expired on %s, so nothing it signs is valid; move %s and %s away to create a new CA (every enrolled device must then enroll again)",
			certPath, cert.NotAfter.UTC().Format(time.RFC3339), caKeyFile, caCertFile)
	}
	return newCA(key, cert)
}

// readCAKeyFile reads the key file after checking, on the open file, that
// only its owner can access it.
func readCAKeyFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// Windows has no Unix permission bits; its ACLs are the operator's job.
	if runtime.GOOS != "windows" {
		fi, err := f.Stat()
		if err != nil {
			return nil, err
		}
		if mode := fi.Mode().Perm(); mode&0o077 != 0 {
			return nil, fmt.Errorf("%s is readable by others (mode %04o); run chmod 600 %s", caKeyFile, mode, path)
		}
	}
	return io.ReadAll(f)
}

// parseCAKey finds the private key in a PEM file: SEC 1 "EC PRIVATE KEY"
// (possibly after the "EC PARAMETERS" block that openssl ecparam writes) or
// PKCS#8 "PRIVATE KEY". The key must be ECDSA P-256.
func parseCAKey(data []byte) (*ecdsa.PrivateKey, error) {
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, errors.New(`no PEM "EC PRIVATE KEY" or "PRIVATE KEY" block`)
		}
		var key *ecdsa.PrivateKey
		switch block.Type {
		case "EC PARAMETERS":
			continue
		case "EC PRIVATE KEY":
			k, err := x509.ParseECPrivateKey(block.Bytes)
			if err != nil {
				return nil, err
			}
			key = k
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
			if err != nil {
				return nil, err
			}
			ek, ok := k.(*ecdsa.PrivateKey)
			if !ok {
				return nil, fmt.Errorf("key is %T; the CA key must be ECDSA P-256", k)
			}
			key = ek
		default:
			return nil, fmt.Errorf(`PEM block %q; want "EC PRIVATE KEY" or "PRIVATE KEY"`, block.Type)
		}
		if key.Curve != elliptic.P256() {
			return nil, fmt.Errorf("key is ECDSA %s; the CA key must be ECDSA P-256", key.Curve.Params().Name)
		}
		return key, nil
	}
}

func createCA(dir, tenant string, now time.Time) (*CA, error) {
	if err := protocol.ValidID(tenant); err != nil {
		return nil, fmt.Errorf("tenant: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := caSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "mdm-authority CA " + tenant},
		NotBefore:             now.Add(-caClockSkew),
		NotAfter:              now.AddDate(caValidityYears, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		// The CA signs only end-entity certificates.
		MaxPathLen:     0,
		MaxPathLenZero: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	// The key goes first: a crash between the two renames leaves ca.key
	// alone, which the next start refuses instead of creating a second CA.
	if err := writeCAFile(dir, caKeyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, err
	}
	if err := writeCAFile(dir, caCertFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return nil, err
	}
	return newCA(key, cert)
}

// writeCAFile writes dir/name atomically: a temp file in dir, fsync,
// rename, then fsync of dir so that the rename itself survives a crash.
func writeCAFile(dir, name string, data []byte, mode os.FileMode) (err error) {
	f, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	// Chmod, unlike the mode given at creation, is not reduced by the umask.
	if err := f.Chmod(mode); err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		return err
	}
	return syncCADir(dir)
}

func syncCADir(dir string) error {
	// Windows cannot open a directory for syncing, and its renames do not
	// need it.
	if runtime.GOOS == "windows" {
		return nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func newCA(key *ecdsa.PrivateKey, cert *x509.Certificate) (*CA, error) {
	roots := x509.NewCertPool()
	roots.AddCert(cert)
	secret, err := key.Bytes()
	if err != nil {
		return nil, fmt.Errorf("CA key: %w", err)
	}
	tokenKey, err := hkdf.Key(sha256.New, secret, nil, "mdm connect token v1", 32)
	if err != nil {
		return nil, fmt.Errorf("CA key: %w", err)
	}
	return &CA{key: key, cert: cert, roots: roots, tokenKey: tokenKey}, nil
}

// connectTokenPrefix starts every connect token, so that one is easy to
// recognise in a configuration or a leak report.
const connectTokenPrefix = "dct-"

// ConnectToken returns the MQTT password of a device on connections
// without a client certificate: an HMAC-SHA256, under a key derived from
// the CA key, of the tenant, the device and the serial number of its
// certificate. It is as good as a password bound to that certificate: a
// renewal, or a new CA, gives another token, and the service admits a
// token only for a device it manages whose certificate has that serial.
func (ca *CA) ConnectToken(tenant, device, serial string) string {
	mac := hmac.New(sha256.New, ca.tokenKey)
	for _, s := range []string{tenant, device, serial} {
		mac.Write([]byte(s))
		mac.Write([]byte{0})
	}
	return connectTokenPrefix + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

// CheckConnectToken reports, in constant time, whether token is the
// connect token of the device's certificate with that serial.
func (ca *CA) CheckConnectToken(tenant, device, serial, token string) bool {
	want := ca.ConnectToken(tenant, device, serial)
	return subtle.ConstantTimeCompare([]byte(want), []byte(token)) == 1
}

// caSerial returns a random positive serial number of up to 128 bits.
func caSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("serial number: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

// Certificate returns the CA certificate. It is shared: callers must not
// modify it.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// CertificateDER returns the CA certificate, DER, as sent to devices at
// enrollment.
func (ca *CA) CertificateDER() []byte { return slices.Clone(ca.cert.Raw) }

// Pool returns a new pool holding only the CA certificate, for verifying
// device certificates (tls.Config.ClientCAs) or the service's TLS
// certificate (tls.Config.RootCAs).
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// SignDevice issues a device's MDM certificate from its PKCS#10 CSR (DER).
//
// The CSR's signature must be valid and its key ECDSA P-256 or P-384,
// Ed25519, or RSA of at least 2048 bits. Everything else in the CSR, the
// subject included, is ignored: the service decides the identity. The
// certificate is for TLS client authentication, with subject CN=device,
// O=tenant and the URI SAN mdm://<tenant>/<device> that DeviceIdentity
// reads back; it is valid from 5 minutes before now (clock skew) until
// now+validity and has a random 128-bit serial.
func (ca *CA) SignDevice(csrDER []byte, tenant, device string, now time.Time, validity time.Duration) (der []byte, cert *x509.Certificate, err error) {
	if err := protocol.ValidID(tenant); err != nil {
		return nil, nil, fmt.Errorf("sign device certificate: tenant: %w", err)
	}
	if err := protocol.ValidID(device); err != nil {
		return nil, nil, fmt.Errorf("sign device certificate: device: %w", err)
	}
	if validity <= 0 {
		return nil, nil, fmt.Errorf("sign device certificate: validity %v is not positive", validity)
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, nil, fmt.Errorf("sign device certificate: parse csr: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, nil, fmt.Errorf("sign device certificate: csr signature: %w", err)
	}
	if err := checkCSRKey(csr.PublicKey); err != nil {
		return nil, nil, fmt.Errorf("sign device certificate: csr key: %w", err)
	}
	serial, err := caSerial()
	if err != nil {
		return nil, nil, fmt.Errorf("sign device certificate: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: device, Organization: []string{tenant}},
		URIs:                  []*url.URL{deviceURI(tenant, device)},
		NotBefore:             now.Add(-caClockSkew),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, cert, err = ca.issue(tmpl, csr.PublicKey)
	if err != nil {
		return nil, nil, fmt.Errorf("sign device certificate: %w", err)
	}
	return der, cert, nil
}

// checkCSRKey accepts the key types devices are expected to have and
// refuses weak or unknown ones.
func checkCSRKey(pub any) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() || k.Curve == elliptic.P384() {
			return nil
		}
		return fmt.Errorf("ECDSA %s is not accepted; use ECDSA P-256 or P-384, Ed25519, or RSA of at least %d bits", k.Curve.Params().Name, caMinRSABits)
	case ed25519.PublicKey:
		return nil
	case *rsa.PublicKey:
		if k.N.BitLen() >= caMinRSABits {
			return nil
		}
		return fmt.Errorf("RSA key of %d bits is too weak; use ECDSA P-256 or RSA of at least %d bits", k.N.BitLen(), caMinRSABits)
	default:
		return fmt.Errorf("key type %T is not accepted; use ECDSA P-256 or P-384, Ed25519, or RSA of at least %d bits", pub, caMinRSABits)
	}
}

func deviceURI(tenant, device string) *url.URL {
	return &url.URL{Scheme: deviceURIScheme, Host: tenant, Path: "/" + device}
}

func (ca *CA) issue(tmpl *x509.Certificate, pub any) ([]byte, *x509.Certificate, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	return der, cert, nil
}

// splitHosts splits a server certificate's names into DNS names and IP
// addresses.
func splitHosts(names []string) (dns []string, ips []net.IP) {
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			ips = append(ips, ip)
		} else {
			dns = append(dns, n)
		}
	}
	return dns, ips
}

// ServerCertificate issues a TLS server certificate for the given DNS names
// and IPs, valid from 5 minutes before now until now+validity, with a fresh
// ECDSA P-256 key. The result carries the leaf and the CA certificate as its
// chain, and Leaf is set.
func (ca *CA) ServerCertificate(names []string, ips []net.IP, now time.Time, validity time.Duration) (tls.Certificate, error) {
	if len(names) == 0 && len(ips) == 0 {
		return tls.Certificate{}, errors.New("issue server certificate: no DNS name or IP address given")
	}
	for _, n := range names {
		if n == "" {
			return tls.Certificate{}, errors.New("issue server certificate: empty DNS name")
		}
	}
	// Clients match SANs only; the CN is for people reading the
	// certificate.
	var cn string
	if len(names) > 0 {
		cn = names[0]
	} else {
		cn = ips[0].String()
	}
	return ca.leafCertificate("server", &x509.Certificate{
		Subject:     pkix.Name{CommonName: cn},
		DNSNames:    slices.Clone(names),
		IPAddresses: slices.Clone(ips),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, now, validity)
}

// leafCertificate issues tmpl (its subject, names and extended key usage)
// with a fresh ECDSA P-256 key, a serial, and a validity from a little
// before now until now+validity. The result carries the leaf and the CA
// certificate as its chain, and Leaf is set. what names the kind in
// errors.
func (ca *CA) leafCertificate(what string, tmpl *x509.Certificate, now time.Time, validity time.Duration) (tls.Certificate, error) {
	if validity <= 0 {
		return tls.Certificate{}, fmt.Errorf("issue %s certificate: validity %v is not positive", what, validity)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("issue %s certificate: %w", what, err)
	}
	if tmpl.SerialNumber, err = caSerial(); err != nil {
		return tls.Certificate{}, fmt.Errorf("issue %s certificate: %w", what, err)
	}
	tmpl.NotBefore, tmpl.NotAfter = now.Add(-caClockSkew), now.Add(validity)
	tmpl.KeyUsage, tmpl.BasicConstraintsValid = x509.KeyUsageDigitalSignature, true
	der, cert, err := ca.issue(tmpl, &key.PublicKey)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("issue %s certificate: %w", what, err)
	}
	return tls.Certificate{Certificate: [][]byte{der, ca.CertificateDER()}, PrivateKey: key, Leaf: cert}, nil
}

// DeviceIdentity returns the tenant and device named by a certificate that
// SignDevice issued, read from its URI SAN, after checking that the
// certificate was signed by this CA and is valid at now for client
// authentication.
//
// A certificate of this CA that is past its NotAfter gives an error wrapping
// ErrCertificateExpired; a certificate of another issuer gives another error
// even when it is also expired, since "expired" tells a device to enroll
// again.
func (ca *CA) DeviceIdentity(cert *x509.Certificate, now time.Time) (tenant, device string, err error) {
	if cert == nil {
		return "", "", errors.New("device identity: no certificate")
	}
	// Issuer first, so that the expiry verdict is only given about our own
	// certificates.
	if !bytes.Equal(cert.RawIssuer, ca.cert.RawSubject) {
		return "", "", errors.New("device identity: certificate not issued by this service's CA")
	}
	if err := cert.CheckSignatureFrom(ca.cert); err != nil {
		return "", "", fmt.Errorf("device identity: certificate not signed by this service's CA: %w", err)
	}
	if now.After(cert.NotAfter) {
		return "", "", fmt.Errorf("device identity: device certificate serial %x expired on %s: %w",
			cert.SerialNumber, cert.NotAfter.UTC().Format(time.RFC3339), ErrCertificateExpired)
	}
	// Full verification for everything else: not yet valid, CA expired,
	// key usages.
	if _, err := cert.Verify(x509.VerifyOptions{
		Roots:       ca.roots,
		CurrentTime: now,
		KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return "", "", fmt.Errorf("device identity: %w", err)
	}
	tenant, device, err = parseDeviceURI(cert.URIs)
	if err != nil {
		return "", "", fmt.Errorf("device identity: %w", err)
	}
	return tenant, device, nil
}

// parseDeviceURI reads the one mdm://<tenant>/<device> URI SAN.
func parseDeviceURI(uris []*url.URL) (tenant, device string, err error) {
	var found *url.URL
	for _, u := range uris {
		if u.Scheme != deviceURIScheme {
			continue
		}
		if found != nil {
			return "", "", errors.New("more than one mdm:// URI SAN")
		}
		found = u
	}
	if found == nil {
		return "", "", errors.New("no mdm://<tenant>/<device> URI SAN; not a device certificate")
	}
	u := found
	if u.Opaque != "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Port() != "" || len(u.Path) < 2 || u.Path[0] != '/' {
		return "", "", fmt.Errorf("URI SAN %q is not mdm://<tenant>/<device>", u)
	}
	tenant, device = u.Hostname(), u.Path[1:]
	if err := protocol.ValidID(tenant); err != nil {
		return "", "", fmt.Errorf("URI SAN %q: tenant: %w", u, err)
	}
	if err := protocol.ValidID(device); err != nil {
		return "", "", fmt.Errorf("URI SAN %q: device: %w", u, err)
	}
	return tenant, device, nil
}

// NewDeviceKeyAndCSR generates an ECDSA P-256 key and a CSR (DER) for it,
// as a device does at enrollment. The CSR has an empty subject: the service
// decides the identity.
func NewDeviceKeyAndCSR() (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("new device csr: %w", err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("new device csr: %w", err)
	}
	return key, csr, nil
}
