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
)

// The local control API: the running agent serves HTTP/JSON on a unix
// socket in its state directory, owner-only, for `mdm-agent sync`,
// `status` and `unenroll`.
//
//	GET  /v1/status    Status
//	POST /v1/sync      SyncResult, when the check-in is answered
//	POST /v1/unenroll  204, once the service was told and profiles removed

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

// localHandler serves the control API by handing requests to the runner's
// loop.
func localHandler(reqs chan<- localRequest) http.Handler {
	mux := http.NewServeMux()
	ask := func(w http.ResponseWriter, r *http.Request, kind string, timeout time.Duration) {
		ctx, cancel := context.WithTimeout(r.Context(), timeout)
		defer cancel()
		reply := make(chan localReply, 1)
		select {
		case reqs <- localRequest{kind: kind, reply: reply}:
		case <-ctx.Done():
			writeLocal(w, http.StatusServiceUnavailable, nil, errors.New("the agent is busy or stopping"))
			return
		}
		select {
		case rep := <-reply:
			code := http.StatusOK
			if rep.err != nil {
				code = http.StatusConflict
			} else if rep.body == nil {
				code = http.StatusNoContent
			}
			writeLocal(w, code, rep.body, rep.err)
		case <-ctx.Done():
			writeLocal(w, http.StatusGatewayTimeout, nil, fmt.Errorf("no answer from the service within %s; the agent keeps trying", timeout))
		}
	}
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) { ask(w, r, "status", 10*time.Second) })
	mux.HandleFunc("POST /v1/sync", func(w http.ResponseWriter, r *http.Request) { ask(w, r, "sync", syncTimeout) })
	mux.HandleFunc("POST /v1/unenroll", func(w http.ResponseWriter, r *http.Request) { ask(w, r, "unenroll", syncTimeout) })
	return http.MaxBytesHandler(mux, 1<<10)
}

type localRequest struct {
	kind  string
	reply chan<- localReply
}

type localReply struct {
	body any
	err  error
}

func writeLocal(w http.ResponseWriter, code int, body any, err error) {
	if err != nil {
		body = struct {
			Error string `json:"error"`
		}{err.Error()}
	}
	if code == http.StatusNoContent {
		w.WriteHeader(code)
		return
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetIndent("", "  ")
	if err := enc.Encode(body); err != nil {
		code = http.StatusInternalServerError
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	w.Write(b.Bytes())
}
