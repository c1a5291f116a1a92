package agent

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// TestLocalAPIHostileRequests checks that the control socket answers what
// it does not serve with a code and a message, and that such requests
// never reach the agent's loop.
func TestLocalAPIHostileRequests(t *testing.T) {
	reqs := make(chan localRequest)
	var served atomic.Int32
	go func() {
		for req := range reqs {
			served.Add(1)
			switch req.kind {
			case "status":
				req.reply <- localReply{body: Status{Device: "d-1"}}
			default:
				req.reply <- localReply{err: ErrOffline}
			}
		}
	}()
	srv := httptest.NewServer(localHandler(reqs))
	defer srv.Close()
	defer close(reqs)

	tests := []struct {
		name, method, path, body string
		status                   int
		code, text               string // code "" for a success
	}{
		{"status", "GET", "/v1/status", "", 200, "", `"device": "d-1"`},
		{"status with an empty object", "GET", "/v1/status", " {} ", 200, "", `"device": "d-1"`},
		{"refused sync", "POST", "/v1/sync", "", 409, "conflict", "not connected"},
		{"oversized body", "POST", "/v1/sync", "{" + strings.Repeat(" ", 2<<10) + "}", 413, "too_large", "more than 1024 bytes"},
		{"malformed JSON", "POST", "/v1/sync", `{"force":`, 400, "bad_request", "ends inside"},
		{"not JSON", "POST", "/v1/unenroll", `yes please`, 400, "bad_request", "syntax error"},
		{"unknown option", "POST", "/v1/unenroll", `{"force":true}`, 400, "bad_request", `unknown field "force"`},
		{"repeated key", "POST", "/v1/sync", `{"a":1,"A":2}`, 400, "bad_request", "repeated"},
		{"deep nesting", "POST", "/v1/sync", strings.Repeat("[", 100) + strings.Repeat("]", 100), 400, "bad_request", "deeper than 32"},
		{"trailing data", "GET", "/v1/status", `{} {}`, 400, "bad_request", "data after its value"},
		{"unknown path", "GET", "/v1/secrets", "", 404, "not_found", "no endpoint GET /v1/secrets"},
		{"root", "GET", "/", "", 404, "not_found", "GET /v1/status"},
		{"wrong method", "DELETE", "/v1/sync", "", 405, "method_not_allowed", "use POST"},
		{"GET for POST", "GET", "/v1/unenroll", "", 405, "method_not_allowed", "use POST"},
		{"POST for GET", "POST", "/v1/status", "", 405, "method_not_allowed", "use GET"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := served.Load()
			req, err := http.NewRequest(tt.method, srv.URL+tt.path, strings.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			resp, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			var e localError
			if err := json.Unmarshal(body, &e); err != nil {
				t.Fatalf("%s %s: answer %q is not JSON: %v", tt.method, tt.path, body, err)
			}
			said := string(body)
			if tt.code != "" {
				said = e.Error
			}
			if resp.StatusCode != tt.status || e.Code != tt.code || !strings.Contains(said, tt.text) {
				t.Errorf("%s %s %.30q = %d %s; want %d, code %q, saying %q", tt.method, tt.path, tt.body, resp.StatusCode, body, tt.status, tt.code, tt.text)
			}
			if reached := served.Load() > before; reached != (tt.code == "" || tt.code == "conflict") {
				t.Errorf("%s %s %.30q reached the loop: %v; want %v", tt.method, tt.path, tt.body, reached, !reached)
			}
		})
	}
}
