package main

import (
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mdm-authority/mdm/broker"
	"github.com/mdm-authority/mdm/protocol"
)

func TestAdminCommands(t *testing.T) {
	dir := t.TempDir()
	store, err := broker.OpenStore(filepath.Join(dir, "mdm.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	ca, _, err := broker.LoadOrCreateCA(dir, "default", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	svc, err := broker.NewService(store, ca, broker.Options{})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(broker.NewAdminHandler(svc, "adm-secret", nil))
	defer srv.Close()
	tokenFile := filepath.Join(dir, "admin.token")
	os.WriteFile(tokenFile, []byte("adm-secret\n"), 0o600)
	common := []string{"--admin", srv.URL, "--admin-token", tokenFile}

	run := func(args ...string) error {
		t.Helper()
		ran, err := runAdmin(append(args, common...))
		if !ran {
			t.Fatalf("runAdmin(%q) did not recognize the command", args)
		}
		return err
	}
	if err := run("authority", "set", "office365"); err != nil {
		t.Fatal(err)
	}
	if svc.Tenant().Mode != broker.ModeOffice365 {
		t.Errorf("authority after 'authority set office365' = %s", svc.Tenant().Mode)
	}
	if err := run("authority", "set", "unknown"); err == nil || !strings.Contains(err.Error(), "never") {
		t.Errorf("authority set unknown = %v; want the service's explanation", err)
	}
	if err := run("profile", "add", "office365", "email", "Corp Mail", "--set", "server=mail.contoso.example"); err != nil {
		t.Fatal(err)
	}
	if ps, _ := svc.Profiles(); len(ps) != 1 || ps[0].Name != "Corp Mail" {
		t.Errorf("profiles after 'profile add' = %+v", ps)
	}
	if err := run("profile", "add", "office365", "email"); err == nil {
		t.Error("profile add with two arguments succeeded")
	}
	if err := run("profile", "add", "office365", "email", "x", "--set", "novalue"); err == nil {
		t.Error("--set without '=' succeeded")
	}
	for _, cmd := range [][]string{{"authority", "show"}, {"profile", "list"}, {"devices", "list"}, {"migration", "status"}, {"devices", "list", "--json"}} {
		if err := run(cmd...); err != nil {
			t.Errorf("%q: %v", cmd, err)
		}
	}
	// device remove: an enrolled device is gone afterwards; an unknown one
	// is an error.
	token, err := svc.RotateEnrollmentToken()
	if err != nil {
		t.Fatal(err)
	}
	_, csr, _ := broker.NewDeviceKeyAndCSR()
	req, _ := protocol.Encode(protocol.Envelope{ID: protocol.MessageID{1}, Sent: protocol.At(time.Now()),
		Body: &protocol.EnrollRequest{CSR: csr, Token: token, Platform: protocol.PlatformAndroid, Type: protocol.EnrollUser, User: "ada@contoso.example"}})
	out, err := svc.HandleMessage(t.Context(), protocol.EnrollRequestTopic("default", "r-1"), req)
	if err != nil || len(out) != 1 {
		t.Fatalf("enroll: %v", err)
	}
	env, _ := protocol.Decode(out[0].Payload)
	id := env.Body.(*protocol.EnrollResponse).Device
	if err := run("device", "remove", id); err != nil {
		t.Fatalf("device remove: %v", err)
	}
	if _, _, err := svc.Device(id); err == nil {
		t.Error("the device is still there after 'device remove'")
	}
	if err := run("device", "remove", id); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("removing it again = %v; want not found", err)
	}
	os.WriteFile(tokenFile, []byte("adm-wrong\n"), 0o600)
	if err := run("authority", "show"); err == nil || !strings.Contains(err.Error(), "admin token") {
		t.Errorf("wrong token = %v; want an error about the admin token", err)
	}
	if ran, _ := runAdmin([]string{"frobnicate", "now"}); ran {
		t.Error("an unknown command was run")
	}
}
