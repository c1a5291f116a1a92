package fleetsim

import (
	"crypto/x509"
	"testing"
)

// TestKeyMaker: the maker makes its keys ahead and no more; keys made
// ahead, and made at once when none is ready (or there is no maker), are
// each a fresh key with a request signed by it; close stops the maker
// though it has keys left to make.
func TestKeyMaker(t *testing.T) {
	m := startKeyMaker(3)
	m.done.Wait() // it stops once it has made its three
	if n := len(m.keys); n != 3 {
		t.Fatalf("%d keys made ahead; want 3", n)
	}
	var nilMaker *keyMaker
	seen := map[string]bool{}
	for i, maker := range []*keyMaker{m, m, m, m, m, nilMaker} {
		k, err := maker.take()
		if err != nil {
			t.Fatal(err)
		}
		req, err := x509.ParseCertificateRequest(k.csr)
		if err != nil {
			t.Fatalf("key %d: %v", i, err)
		}
		if err := req.CheckSignature(); err != nil {
			t.Fatalf("key %d: %v", i, err)
		}
		if !k.key.PublicKey.Equal(req.PublicKey) {
			t.Fatalf("key %d: the request is not for the key", i)
		}
		der, err := x509.MarshalPKIXPublicKey(req.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		if seen[string(der)] {
			t.Fatalf("key %d: made twice", i)
		}
		seen[string(der)] = true
	}
	m.close()
	nilMaker.close()

	fewer := startKeyMaker(2)
	if _, err := fewer.take(); err != nil { // made by take, or by the maker
		t.Fatal(err)
	}
	fewer.done.Wait()
	if n := len(fewer.keys); n != 1 {
		t.Errorf("%d keys ready after one of two taken; want 1: a key take makes is one fewer for the maker", n)
	}
	fewer.close()

	busy := startKeyMaker(1_000_000)
	busy.close() // returns: the maker stops though a million keys are due
}
