package broker

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/mdm-authority/mdm/protocol"
)

const testAdminToken = "adm-test-token"

// call makes one admin request and decodes the JSON answer into out.
func call(t *testing.T, srv *httptest.Server, method, path, token, body string, out any) int {
	t.Helper()
	auth := ""
	if token != "" {
		auth = "Bearer " + token
	}
	return callAuth(t, srv, method, path, auth, body, out)
}

// callAuth is call with the whole Authorization header, none if empty.
func callAuth(t *testing.T, srv *httptest.Server, method, path, auth, body string, out any) int {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
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
	if code := call(t, srv, "PUT", "/v1/authority", testAdminToken, strings.Repeat(" ", maxAdminBody+1)+"{}", &e); code != 413 || e.Code != "too_large" {
		t.Errorf("oversized body = %d %+v; want 413 too_large", code, e)
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

// logBuffer collects a logger's output; the server's goroutines write it
// while the test reads.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// rejectedMetric reads mdm_admin_requests_rejected_total for code from
// GET /metrics.
func rejectedMetric(t *testing.T, srv *httptest.Server, code string) int {
	t.Helper()
	req, _ := http.NewRequest("GET", srv.URL+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+testAdminToken)
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	prefix := fmt.Sprintf("mdm_admin_requests_rejected_total{code=%q} ", code)
	for line := range strings.Lines(string(body)) {
		if rest, ok := strings.CutPrefix(line, prefix); ok {
			n, err := strconv.Atoi(strings.TrimSpace(rest))
			if err != nil {
				t.Fatalf("metric line %q: %v", line, err)
			}
			return n
		}
	}
	t.Fatalf("metrics lack %s:\n%s", prefix, body)
	return 0
}

// adminState is what the admin API can change, for checking that a
// refused request changed nothing.
func adminState(t *testing.T, svc *Service) string {
	t.Helper()
	profiles, err := svc.Profiles()
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal([]any{svc.Tenant(), profiles})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestAdminHostileBodies sends bodies that would change the authority or
// a profile if the decoder let them through: each is refused with its
// status and code, counted, and changes nothing.
func TestAdminHostileBodies(t *testing.T) {
	h := newHarness(t)
	var logs logBuffer
	srv := httptest.NewServer(NewAdminHandler(h.svc, testAdminToken, slog.New(slog.NewTextHandler(&logs, nil))))
	defer srv.Close()
	mustDo(t, h.svc.SetAuthority, ModeOffice365)
	if _, _, err := h.svc.PutProfile(protocol.AuthorityOffice365, protocol.ProfileEmail, "Corp Mail", protocol.Settings{{Key: "server", Value: "mail.contoso.example"}}); err != nil {
		t.Fatal(err)
	}
	const authority, profile = "/v1/authority", "/v1/profiles/office365/email/Corp%20Mail"
	tests := []struct {
		name, path, body string
		status           int
		code, text       string
	}{
		{"oversized", authority, `{"mode":"intune"}` + strings.Repeat(" ", maxAdminBody), 413, "too_large", "more than 65536 bytes"},
		{"100-deep nesting", authority, `{"mode":"intune","x":` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `}`, 400, "bad_request", "deeper than 32"},
		{"100-deep nesting in settings", profile, `{"settings":` + strings.Repeat(`{"a":`, 100) + `"b"` + strings.Repeat("}", 100) + `}`, 400, "bad_request", "deeper than 32"},
		{"duplicate key", authority, `{"mode":"office365","mode":"intune"}`, 400, "bad_request", "key mode repeated"},
		{"case-folded duplicate key", authority, `{"mode":"office365","MODE":"intune"}`, 400, "bad_request", "key MODE repeated"},
		{"case-folded duplicate field", profile, `{"settings":{"server":"mail.contoso.example"},"Settings":{"server":"evil.example"}}`, 400, "bad_request", "key Settings repeated"},
		{"duplicate setting", profile, `{"settings":{"server":"mail.contoso.example","server":"evil.example"}}`, 400, "bad_request", "key settings.server repeated"},
		{"unknown field", authority, `{"mode":"intune","extra":1}`, 400, "bad_request", `unknown field "extra"`},
		{"trailing garbage", authority, `{"mode":"intune"} x`, 400, "bad_request", "data after its value"},
		{"second value", profile, `{"settings":{"server":"a.example"}}{"settings":{}}`, 400, "bad_request", "data after its value"},
		{"empty", authority, ``, 400, "bad_request", "empty"},
		{"not JSON", authority, `mode=intune`, 400, "bad_request", "syntax error"},
		{"invalid UTF-8", authority, "{\"mode\":\"intune\xff\"}", 400, "bad_request", "UTF-8"},
		{"number for text", authority, `{"mode":1}`, 400, "bad_request", "number at mode"},
		{"array for text", authority, `{"mode":["intune"]}`, 400, "bad_request", "array at mode"},
		{"string for object", authority, `"intune"`, 400, "bad_request", "string at the document"},
		{"number for setting", profile, `{"settings":{"server":1}}`, 400, "bad_request", "want an object of text values"},
		{"array for settings", profile, `{"settings":["server"]}`, 400, "bad_request", "want an object of text values"},
		{"invalid enum text", authority, `{"mode":"sccm"}`, 400, "bad_request", `unknown MDM authority "sccm"`},
	}
	before := adminState(t, h.svc)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n := rejectedMetric(t, srv, tc.code)
			var e apiError
			code := call(t, srv, "PUT", tc.path, testAdminToken, tc.body, &e)
			if code != tc.status || e.Code != tc.code || !strings.Contains(e.Error, tc.text) {
				t.Errorf("PUT %s %.40q = %d %+v; want %d %s saying %q", tc.path, tc.body, code, e, tc.status, tc.code, tc.text)
			}
			if got := rejectedMetric(t, srv, tc.code); got != n+1 {
				t.Errorf("rejected{code=%q} went from %d to %d; want %d", tc.code, n, got, n+1)
			}
			if after := adminState(t, h.svc); after != before {
				t.Errorf("the request changed the state:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
	if !strings.Contains(logs.String(), "admin request rejected") || !strings.Contains(logs.String(), "code=bad_request") {
		t.Errorf("rejections not logged:\n%s", logs.String())
	}

	// The same requests, well formed, do change the state: the cases
	// above are refused for what is hostile in them.
	if code := call(t, srv, "PUT", profile, testAdminToken, `{"settings":{"server":"new.contoso.example"}}`, nil); code != 200 {
		t.Errorf("valid profile PUT = %d; want 200", code)
	}
	if code := call(t, srv, "PUT", authority, testAdminToken, `{"mode":"intune"}`, nil); code != 200 || h.svc.Tenant().Mode != ModeIntune {
		t.Errorf("valid authority PUT = %d, mode %s; want 200 and intune", code, h.svc.Tenant().Mode)
	}
}

// TestAdminUnauthorized checks that only the exact admin token passes,
// that refusals are counted and logged at a bounded rate without the
// token, and that a refused request changes nothing.
func TestAdminUnauthorized(t *testing.T) {
	h := newHarness(t)
	var logs logBuffer
	srv := httptest.NewServer(NewAdminHandler(h.svc, testAdminToken, slog.New(slog.NewTextHandler(&logs, nil))))
	defer srv.Close()
	mustDo(t, h.svc.SetAuthority, ModeOffice365)

	if code := callAuth(t, srv, "GET", "/healthz", "", "", nil); code != 200 {
		t.Errorf("healthz without a token = %d; want 200", code)
	}
	const secret = "secret-guess-1234"
	headers := []struct{ name, auth string }{
		{"no token", ""},
		{"wrong token", "Bearer " + secret},
		{"wrong token of the same length", "Bearer " + strings.Repeat("x", len(testAdminToken))},
		{"token of a different length", "Bearer " + testAdminToken + "x"},
		{"token prefix", "Bearer " + testAdminToken[:len(testAdminToken)-1]},
		{"Bearer with empty token", "Bearer "},
		{"Bearer alone", "Bearer"},
		{"lowercase bearer", "bearer " + testAdminToken},
		{"token without scheme", testAdminToken},
		{"other scheme", "Basic " + testAdminToken},
		{"extra space", "Bearer  " + testAdminToken},
	}
	before := adminState(t, h.svc)
	for _, hd := range headers {
		for _, req := range []struct{ method, path, body string }{
			{"GET", "/v1/authority", ""},
			{"PUT", "/v1/authority", `{"mode":"intune"}`},
			{"GET", "/metrics", ""},
			{"GET", "/v1/no-such-endpoint", ""},
		} {
			n := rejectedMetric(t, srv, "unauthorized")
			var e apiError
			code := callAuth(t, srv, req.method, req.path, hd.auth, req.body, &e)
			if code != 401 || e.Code != "unauthorized" || !strings.Contains(e.Error, "Bearer") {
				t.Errorf("%s: %s %s = %d %+v; want 401 unauthorized saying how to authenticate", hd.name, req.method, req.path, code, e)
			}
			if got := rejectedMetric(t, srv, "unauthorized"); got != n+1 {
				t.Errorf("%s: rejected{code=\"unauthorized\"} went from %d to %d; want %d", hd.name, n, got, n+1)
			}
		}
	}
	if after := adminState(t, h.svc); after != before {
		t.Errorf("refused requests changed the state:\nbefore %s\nafter  %s", before, after)
	}

	out := logs.String()
	if strings.Contains(out, secret) || strings.Contains(out, testAdminToken) {
		t.Errorf("the log shows a token:\n%s", out)
	}
	refused := strings.Count(out, "admin request refused")
	if refused == 0 || refused > rateLogBurst {
		t.Errorf("%d refusals logged for %d refused requests; want 1 to %d", refused, 4*len(headers), rateLogBurst)
	}
	for _, want := range []string{"remote=127.0.0.1:", "method=GET", "path=/v1/authority", `reason="no Authorization header"`, `reason="wrong token"`} {
		if !strings.Contains(out, want) {
			t.Errorf("refusal log lacks %s:\n%s", want, out)
		}
	}
	// The next period's first record says how many were left out.
	h.clock.Advance(rateLogPeriod)
	callAuth(t, srv, "GET", "/v1/authority", "", "", nil)
	if want := fmt.Sprintf("suppressed_before=%d", 4*len(headers)-refused); !strings.Contains(logs.String(), want) {
		t.Errorf("refusal log lacks %s:\n%s", want, logs.String())
	}

	// The right token passes, and with it every answer has a code too.
	var tenant Tenant
	if code := call(t, srv, "GET", "/v1/authority", testAdminToken, "", &tenant); code != 200 || tenant.Mode != ModeOffice365 {
		t.Errorf("with the token: %d %+v; want 200", code, tenant)
	}
	for _, tc := range []struct {
		method, path string
		status       int
		code         string
	}{
		{"GET", "/v1/no-such-endpoint", 404, "not_found"},
		{"DELETE", "/v1/authority", 405, "method_not_allowed"},
		{"GET", "/v1/devices/d-nope", 404, "not_found"},
		{"PUT", "/v1/profiles/office365/vpn/Corp%20VPN", 409, "unsupported"},
		{"PUT", "/v1/authority", 409, "conflict"},
	} {
		body := `{"settings":{}}`
		if tc.path == "/v1/authority" {
			body = `{"mode":"office365"}`
		}
		n := rejectedMetric(t, srv, tc.code)
		var e apiError
		if code := call(t, srv, tc.method, tc.path, testAdminToken, body, &e); code != tc.status || e.Code != tc.code || e.Error == "" {
			t.Errorf("%s %s = %d %+v; want %d %s with a message", tc.method, tc.path, code, e, tc.status, tc.code)
		}
		if got := rejectedMetric(t, srv, tc.code); got != n+1 {
			t.Errorf("%s %s: rejected{code=%q} went from %d to %d; want %d", tc.method, tc.path, tc.code, n, got, n+1)
		}
	}
}
