package broker

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRunServer starts the whole service on free loopback ports, checks
// its files and its admin API, and stops it.
func TestRunServer(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	ctx, cancel := context.WithCancel(t.Context())
	ready := make(chan ServerInfo, 1)
	done := make(chan error, 1)
	go func() {
		done <- RunServer(ctx, ServerConfig{DataDir: dir, Tenant: "contoso", MQTTAddr: "127.0.0.1:0",
			AdminAddr: "127.0.0.1:0", PushRate: 100, Ready: func(i ServerInfo) { ready <- i }})
	}()
	var info ServerInfo
	select {
	case info = <-ready:
	case err := <-done:
		t.Fatalf("RunServer: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("server not ready")
	}
	for _, f := range []string{info.AdminTokenFile, info.EnrollmentTokenFile, filepath.Join(dir, "ca.key"), filepath.Join(dir, "mdm.db")} {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s has mode %v; want owner only", f, fi.Mode().Perm())
		}
	}
	tok, _ := os.ReadFile(info.AdminTokenFile)
	req, _ := http.NewRequest("GET", info.AdminURL+"/v1/authority", nil)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("GET /v1/authority with the admin token = %d", resp.StatusCode)
	}
	enr, _ := os.ReadFile(info.EnrollmentTokenFile)
	if !strings.HasPrefix(string(enr), "enr-") {
		t.Errorf("enrollment token file holds %q", enr)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("RunServer after cancel = %v; want nil (clean shutdown)", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("server did not stop")
	}
}
