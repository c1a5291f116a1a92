package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/mdm-authority/mdm/protocol"
)

// The local control API: the running agent serves HTTP/JSON on a unix
// socket in its state directory, owner-only, for `mdm-agent sync`,
// `status` and `unenroll`.
//
//	GET  /v1/status    Status
//	POST /v1/sync      SyncResult, when the check-in is answered
//	POST /v1/unenroll  204, once the service was told and profiles removed
//
// Requests carry no body, or an empty JSON object. An error answer is
// {"code": "...", "error": "..."}, the code one of bad_request, too_large,
// not_found, method_not_allowed, conflict, busy and timeout.

// ErrNotRunning means no agent answers on the state directory's socket,
// or the one that answers is stopping.
var ErrNotRunning = errors.New("no agent is running for this state directory")

// maxLocalBody bounds what the local API reads and answers.
const maxLocalBody = 4 << 20

// syncTimeout bounds a manual sync: the check-in's own timeout and a
// margin.
const syncTimeout = ResponseTimeout + 15*time.Second

// LocalClient talks to a running agent over its control socket.
type LocalClient struct {
	path string
	hc   *http.Client
}

// NewLocalClient returns a client for the agent whose state directory is
// dir.
func NewLocalClient(dir string) *LocalClient {
	path := SocketPath(dir)
	return &LocalClient{path: path, hc: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}}
}

// Status returns the running agent's status.
func (c *LocalClient) Status(ctx context.Context) (Status, error) {
	var s Status
	return s, c.do(ctx, http.MethodGet, "/v1/status", &s)
}

// Sync makes the running agent check in now and returns the outcome.
func (c *LocalClient) Sync(ctx context.Context) (SyncResult, error) {
	var r SyncResult
	return r, c.do(ctx, http.MethodPost, "/v1/sync", &r)
}

// Unenroll makes the running agent leave management and stop.
func (c *LocalClient) Unenroll(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, "/v1/unenroll", nil)
}

func (c *LocalClient) do(ctx context.Context, method, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, "http://agent"+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return fmt.Errorf("%w (%s: %v); start it with mdm-agent run, or systemctl start mdm-agent", ErrNotRunning, c.path, op.Err)
		}
		if ctx.Err() != nil {
			return fmt.Errorf("local API %s: %w", path, ctx.Err())
		}
		// The agent closed the connection: it is stopping.
		return fmt.Errorf("%w (%s: %v)", ErrNotRunning, c.path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxLocalBody))
	if err != nil {
		return fmt.Errorf("local API %s: %w", path, err)
	}
	if resp.StatusCode == http.StatusServiceUnavailable {
		return fmt.Errorf("%w: the agent is stopping", ErrNotRunning)
	}
	if resp.StatusCode/100 != 2 {
		var e struct{ Error string }
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			return errors.New(e.Error)
		}
		return fmt.Errorf("local API %s: %s", path, resp.Status)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("local API %s: %w", path, err)
	}
	return nil
}

// listenLocal opens the control socket, owner-only. A socket file left
// by an agent that crashed is replaced; one that answers means another
// agent runs on this state directory.
func listenLocal(path string) (net.Listener, error) {
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("another agent is running on this state directory (%s answers)", path)
	}
	os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("control socket: %w", err)
	}
	return peerCheckedListener{l}, nil
}

// maxLocalRequest bounds a request body of the local API: none of its
// endpoints takes options yet, so an empty object is all there is to send.
const maxLocalRequest = 1 << 10

// Codes of the local API's error answers, {"code": ..., "error": ...}.
const (
	localBadRequest = "bad_request"        // a body that is not an empty JSON object
	localTooLarge   = "too_large"          // a body over maxLocalRequest
	localNotFound   = "not_found"          // no such endpoint
	localMethod     = "method_not_allowed" // an endpoint that does not take the method
	localConflict   = "conflict"           // the agent cannot do it now: offline, expired, stopped
	localBusy       = "busy"               // the agent's loop did not take the request
	localTimeout    = "timeout"            // the service did not answer in time
)

// localHandler serves the control API by handing requests to the runner's
// loop.
func localHandler(reqs chan<- localRequest) http.Handler {
	mux := http.NewServeMux()
	ask := func(w http.ResponseWriter, r *http.Request, kind string, timeout time.Duration) {
		if code, err := checkLocalBody(r); err != nil {
			status := http.StatusBadRequest
			if code == localTooLarge {
				status = http.StatusRequestEntityTooLarge
			}
			writeLocalError(w, status, code, err)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), timeout)
		defer cancel()
		reply := make(chan localReply, 1)
		select {
		case reqs <- localRequest{kind: kind, reply: reply}:
		case <-ctx.Done():
			writeLocalError(w, http.StatusServiceUnavailable, localBusy, errors.New("the agent is busy or stopping"))
			return
		}
		select {
		case rep := <-reply:
			switch {
			case rep.err != nil:
				writeLocalError(w, http.StatusConflict, localConflict, rep.err)
			case rep.body == nil:
				w.WriteHeader(http.StatusNoContent)
			default:
				writeLocal(w, http.StatusOK, rep.body)
			}
		case <-ctx.Done():
			writeLocalError(w, http.StatusGatewayTimeout, localTimeout, fmt.Errorf("no answer from the service within %s; the agent keeps trying", timeout))
		}
	}
	endpoints := []struct {
		method, path, kind string
		timeout            time.Duration
	}{
		{http.MethodGet, "/v1/status", "status", 10 * time.Second},
		{http.MethodPost, "/v1/sync", "sync", syncTimeout},
		{http.MethodPost, "/v1/unenroll", "unenroll", syncTimeout},
	}
	for _, e := range endpoints {
		mux.HandleFunc(e.method+" "+e.path, func(w http.ResponseWriter, r *http.Request) { ask(w, r, e.kind, e.timeout) })
		mux.HandleFunc(e.path, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", e.method)
			writeLocalError(w, http.StatusMethodNotAllowed, localMethod, fmt.Errorf("%s %s: use %s", r.Method, e.path, e.method))
		})
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeLocalError(w, http.StatusNotFound, localNotFound, fmt.Errorf("no endpoint %s %.100s; the agent serves GET /v1/status, POST /v1/sync and POST /v1/unenroll", r.Method, r.URL.Path))
	})
	return http.MaxBytesHandler(mux, maxLocalRequest)
}

// checkLocalBody accepts a request without a body or with an empty JSON
// object, read strictly (protocol.DecodeJSON), and returns the error code
// of anything else.
func checkLocalBody(r *http.Request) (string, error) {
	data, err := io.ReadAll(r.Body)
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		return localTooLarge, fmt.Errorf("request body is more than %d bytes; send none", maxLocalRequest)
	case err != nil:
		return localBadRequest, fmt.Errorf("request body: %w", err)
	case len(data) == 0:
		return "", nil
	}
	if err := protocol.DecodeJSON(data, maxLocalRequest, &struct{}{}); err != nil {
		return localBadRequest, fmt.Errorf("request body: %w; send none, or {}", err)
	}
	return "", nil
}

type localRequest struct {
	kind  string
	reply chan<- localReply
}

type localReply struct {
	body any
	err  error
}

// localError is the body of an error answer.
type localError struct {
	Code  string `json:"code"`
	Error string `json:"error"`
}

func writeLocalError(w http.ResponseWriter, status int, code string, err error) {
	writeLocal(w, status, localError{code, err.Error()})
}

func writeLocal(w http.ResponseWriter, status int, body any) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetIndent("", "  ")
	if err := enc.Encode(body); err != nil {
		status = http.StatusInternalServerError
		b.Reset()
		json.NewEncoder(&b).Encode(localError{"internal", "encode answer: " + err.Error()})
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(b.Bytes())
}
