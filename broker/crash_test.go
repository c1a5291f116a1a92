package broker

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mdm-authority/mdm/protocol"
)

// TestHelperServe is not a test: TestKillMidFanOut runs the test binary
// with it as the service, in a process of its own, so that it can kill it.
func TestHelperServe(t *testing.T) {
	dir := os.Getenv("MDM_HELPER_SERVE_DIR")
	if dir == "" {
		t.Skip("helper process for TestKillMidFanOut")
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	err := RunServer(context.Background(), ServerConfig{DataDir: dir, Tenant: "contoso", MQTTAddr: "127.0.0.1:0",
		AdminAddr: "127.0.0.1:0", PushRate: 50, Logger: logger, Ready: func(i ServerInfo) {
			json.NewEncoder(os.Stdout).Encode(map[string]string{"admin": i.AdminURL, "token": i.AdminTokenFile})
		}})
	fmt.Fprintln(os.Stderr, "server returned:", err)
	os.Exit(1)
}

// TestKillMidFanOut kills the service process (SIGKILL, no shutdown) in the
// middle of the fan-out of an authority change, then opens its store: the
// acknowledged change is there, and every device that has not checked in
// since is pushed again.
func TestKillMidFanOut(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a service process")
	}
	const devices = 200
	dir := t.TempDir()
	store, err := OpenStore(filepath.Join(dir, "mdm.db"))
	if err != nil {
		t.Fatal(err)
	}
	err = store.Update(func(tx *Tx) error {
		if err := tx.PutTenant(&Tenant{Mode: ModeOffice365, Epoch: 1, Changes: []AuthorityChange{{Epoch: 1, To: ModeOffice365, At: testStart}}}); err != nil {
			return err
		}
		for i := range devices {
			d := &Device{ID: fmt.Sprintf("d-%04d", i), Platform: protocol.PlatformAndroid, User: "ada@contoso.example",
				State: DeviceEnrolled, Authority: protocol.AuthorityOffice365, EnrolledAt: testStart, CertNotAfter: time.Now().AddDate(1, 0, 0)}
			if err := tx.PutDevice(d); err != nil {
				return err
			}
		}
		return nil
	})
	store.Close()
	if err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperServe$")
	cmd.Env = append(os.Environ(), "MDM_HELPER_SERVE_DIR="+dir)
	stdout, _ := cmd.StdoutPipe()
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	var ready map[string]string
	if err := json.NewDecoder(stdout).Decode(&ready); err != nil {
		t.Fatalf("service did not start: %v", err)
	}
	tok, _ := os.ReadFile(ready["token"])
	req, _ := http.NewRequest("PUT", ready["admin"]+"/v1/authority", strings.NewReader(`{"mode":"intune"}`))
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("set authority: %s", resp.Status)
	}
	// Kill it once the fan-out has sent its first pushes (50 per second:
	// a fan-out of 200 takes four seconds).
	lines := bufio.NewScanner(stderr)
	started := false
	for !started && lines.Scan() {
		started = strings.Contains(lines.Text(), "pushes published")
	}
	if !started {
		t.Fatal("the service ended before its fan-out started")
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()

	store, err = OpenStore(filepath.Join(dir, "mdm.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	ca, _, err := LoadOrCreateCA(dir, "contoso", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	svc, err := NewService(store, ca, Options{Tenant: "contoso"})
	if err != nil {
		t.Fatal(err)
	}
	if got := svc.Tenant(); got.Mode != ModeIntune || got.Epoch != 2 {
		t.Fatalf("after the kill the authority is %s epoch %d; want intune epoch 2", got.Mode, got.Epoch)
	}
	n, err := svc.RepushPending()
	if err != nil || n != devices {
		t.Fatalf("RepushPending = %d, %v; want all %d devices, none of which checked in", n, err, devices)
	}
	out, err := svc.DuePushes(2 * devices)
	if err != nil || len(out) != devices {
		t.Errorf("pushes after restart = %d, %v; want %d", len(out), err, devices)
	}
}
