package broker

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/mdm-authority/mdm/protocol"
)

const testAdminToken = "adm-test-token"

// call makes one admin request and decodes the JSON answer into out.
func call(t *testing.T, srv *httptest.Server, method, path, token, body string, out any) int {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: answer %q is not JSON: %v", method, path, b, err)
		}
	}
	return resp.StatusCode
}

func TestAdminAPI(t *testing.T) {
	h := newHarness(t)
	srv := httptest.NewServer(NewAdminHandler(h.svc, testAdminToken, nil))
	defer srv.Close()

	if code := call(t, srv, "GET", "/healthz", "", "", nil); code != 200 {
		t.Errorf("healthz = %d; want 200 without a token", code)
	}
	for _, tok := range []string{"", "wrong", testAdminToken + "x"} {
		var e apiError
		if code := call(t, srv, "GET", "/v1/authority", tok, "", &e); code != 401 || !strings.Contains(e.Error, "Bearer") {
			t.Errorf("token %q: %d %q; want 401 saying how to authenticate", tok, code, e.Error)
		}
	}
	var change struct {
		Change AuthorityChange `json:"change"`
	}
	if code := call(t, srv, "PUT", "/v1/authority", testAdminToken, `{"mode":"office365"}`, &change); code != 200 || change.Change.Epoch != 1 {
		t.Fatalf("set authority = %d %+v", code, change)
	}
	var e apiError
	if code := call(t, srv, "PUT", "/v1/authority", testAdminToken, `{"mode":"unknown"}`, &e); code != 409 || !strings.Contains(e.Error, "never") {
		t.Errorf("set unknown = %d %q; want 409 saying it can never be unknown", code, e.Error)
	}
	if code := call(t, srv, "PUT", "/v1/authority", testAdminToken, `{"mode":"sccm"}`, &e); code != 400 {
		t.Errorf("set sccm = %d %q; want 400", code, e.Error)
	}
	if code := call(t, srv, "PUT", "/v1/authority", testAdminToken, `{"mode":"intune","extra":1}`, &e); code != 400 {
		t.Errorf("unknown field = %d %q; want 400", code, e.Error)
	}
	if code := call(t, srv, "PUT", "/v1/authority", testAdminToken, strings.Repeat(" ", maxAdminBody+1)+"{}", &e); code != 400 {
		t.Errorf("oversized body = %d %q; want 400", code, e.Error)
	}
	if code := call(t, srv, "POST", "/v1/apns", testAdminToken, `{"authority":"office365"}`, &e); code != 409 || !strings.Contains(e.Error, "consent") {
		t.Errorf("APNs without consent = %d %q; want 409 asking for consent", code, e.Error)
	}
	if code := call(t, srv, "POST", "/v1/apns", testAdminToken, `{"authority":"office365","consent":true}`, nil); code != 200 {
		t.Errorf("APNs with consent = %d", code)
	}
	if code := call(t, srv, "PUT", "/v1/profiles/office365/vpn/Corp%20VPN", testAdminToken, `{}`, &e); code != 409 {
		t.Errorf("VPN on office365 = %d %q; want 409", code, e.Error)
	}
	var put struct {
		Profile Profile `json:"profile"`
	}
	if code := call(t, srv, "PUT", "/v1/profiles/office365/email/Corp%20Mail", testAdminToken, `{"settings":{"server":"mail.contoso.example"}}`, &put); code != 200 || put.Profile.Version != 1 || put.Profile.Name != "Corp Mail" {
		t.Errorf("put profile = %d %+v", code, put)
	}
	var profiles []Profile
	if code := call(t, srv, "GET", "/v1/profiles", testAdminToken, "", &profiles); code != 200 || len(profiles) != 1 {
		t.Errorf("profiles = %d %+v", code, profiles)
	}
	if v, _ := profiles[0].Settings.Get("server"); v != "mail.contoso.example" {
		t.Errorf("profile settings = %+v", profiles[0].Settings)
	}

	d := h.mustEnroll(protocol.PlatformIOS, "ada@contoso.example")
	d.checkIn()
	var devices []Device
	if code := call(t, srv, "GET", "/v1/devices?authority=office365&platform=ios", testAdminToken, "", &devices); code != 200 || len(devices) != 1 || devices[0].ID != d.id {
		t.Errorf("devices = %d %+v", code, devices)
	}
	if code := call(t, srv, "GET", "/v1/devices?platform=symbian", testAdminToken, "", &e); code != 400 {
		t.Errorf("bad filter = %d; want 400", code)
	}
	if code := call(t, srv, "GET", "/v1/devices/d-nope", testAdminToken, "", &e); code != 404 {
		t.Errorf("unknown device = %d; want 404", code)
	}
	if code := call(t, srv, "POST", "/v1/devices/"+d.id+"/commands", testAdminToken, `{"action":"remote_lock"}`, &e); code != 409 {
		t.Errorf("remote lock under office365 = %d %q; want 409", code, e.Error)
	}
	var cmd Command
	if code := call(t, srv, "POST", "/v1/devices/"+d.id+"/commands", testAdminToken, `{"action":"wipe"}`, &cmd); code != 200 || cmd.State != CommandPending {
		t.Errorf("wipe = %d %+v", code, cmd)
	}

	call(t, srv, "PUT", "/v1/authority", testAdminToken, `{"mode":"intune"}`, nil)
	var st MigrationStatus
	if code := call(t, srv, "GET", "/v1/migration", testAdminToken, "", &st); code != 200 {
		t.Fatalf("migration = %d", code)
	}
	if st.Devices != 1 || st.Pending != 1 || st.ByAuthority[protocol.AuthorityOffice365] != 1 || st.ComplianceFresh != 1 {
		t.Errorf("migration status = %+v", st)
	}
	var tok map[string]string
	if code := call(t, srv, "POST", "/v1/enrollment-token", testAdminToken, "", &tok); code != 200 || !strings.HasPrefix(tok["enrollment_token"], "enr-") {
		t.Errorf("rotate token = %d %v", code, tok)
	}
	if _, code := h.enroll(protocol.PlatformAndroid, "bob@contoso.example"); code != protocol.CodeInvalidToken {
		t.Errorf("enroll with the rotated-out token = %s; want invalid_token", code)
	}
}

func TestMetrics(t *testing.T) {
	h := newHarness(t)
	srv := httptest.NewServer(NewAdminHandler(h.svc, testAdminToken, nil))
	defer srv.Close()
	mustDo(t, h.svc.SetAuthority, ModeIntune)
	if _, code := h.enroll(protocol.PlatformIOS, "ada@contoso.example"); code != protocol.CodeAPNsCertificateMissing {
		t.Fatalf("iOS enrollment without an APNs certificate = %s", code)
	}
	w := h.mustEnroll(protocol.PlatformWindows, "ada@contoso.example")
	w.checkIn()
	h.svc.HandleMessage(t.Context(), protocol.UplinkTopic("contoso", w.id), []byte("garbage"))
	h.svc.SetAuthority(ModeOffice365)
	h.svc.DuePushes(10)

	if code := call(t, srv, "GET", "/metrics", "", "", nil); code != 401 {
		t.Errorf("metrics without a token = %d; want 401", code)
	}
	req, _ := http.NewRequest("GET", srv.URL+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+testAdminToken)
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, want := range []string{
		`mdm_checkins_total{result="none"} 1`,
		`mdm_enrollments_total{result="none"} 1`,
		`mdm_enrollments_total{result="apns_certificate_missing"} 1`,
		`mdm_messages_dropped_total{reason="malformed"} 1`,
		`mdm_pushes_sent_total 1`,
		`mdm_devices{authority="intune",state="enrolled"} 1`,
		`mdm_push_backlog 1`, // the retry
	} {
		if !strings.Contains(string(body), want+"\n") {
			t.Errorf("metrics lack %q:\n%s", want, body)
		}
	}
}
