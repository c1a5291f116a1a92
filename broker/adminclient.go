package broker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

// AdminClient calls a running service's admin API: the admin commands of
// mdm-broker and the fleet simulator's external mode use it.
type AdminClient struct {
	// Base is the API's URL, such as "http://127.0.0.1:8440".
	Base string
	// Token is the admin token; TokenFile, where it came from, is named
	// in the error when the service refuses it.
	Token, TokenFile string
	// HTTP sends the requests.
	HTTP *http.Client
}

// NewAdminClient returns a client for the admin API at addr (a URL, or
// host:port) with the admin token read from tokenFile.
func NewAdminClient(addr, tokenFile string) (*AdminClient, error) {
	b, err := os.ReadFile(tokenFile)
	if err != nil {
		return nil, fmt.Errorf("admin token: %w (is mdm-broker serve running with this --data? or pass --admin-token FILE)", err)
	}
	base := strings.TrimRight(addr, "/")
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	return &AdminClient{Base: base, Token: strings.TrimSpace(string(b)), TokenFile: tokenFile,
		HTTP: &http.Client{Timeout: 30 * time.Second}}, nil
}

// ErrAdminRefused wraps an error answer of the admin API; the error's
// text is the service's message.
var ErrAdminRefused = errors.New("refused by the service")

// AdminError is an error answer of the admin API.
type AdminError struct {
	Status  int    // the HTTP status
	Code    string // the answer's code, such as "conflict"
	Message string // the service's message
}

func (e *AdminError) Error() string { return e.Message }

// Unwrap makes every AdminError match ErrAdminRefused.
func (e *AdminError) Unwrap() error { return ErrAdminRefused }

// Do sends one request with body as JSON (when not nil) and decodes the
// JSON answer into out (when not nil; a *json.RawMessage gets the answer
// as it is). An error answer becomes an *AdminError with the service's
// message.
func (c *AdminClient) Do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.Base+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("%w (is mdm-broker serve running at %s?)", err, c.Base)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode == http.StatusUnauthorized {
		return &AdminError{Status: resp.StatusCode, Code: "unauthorized",
			Message: fmt.Sprintf("the service refused the admin token in %s: is it the token of the service at %s? (--data DIR or --admin-token FILE choose the file)", c.TokenFile, c.Base)}
	}
	if resp.StatusCode != http.StatusOK {
		var e apiError
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return &AdminError{Status: resp.StatusCode, Code: e.Code, Message: e.Error}
		}
		return &AdminError{Status: resp.StatusCode, Message: fmt.Sprintf("%s %s: %s", method, path, resp.Status)}
	}
	switch out := out.(type) {
	case nil:
		return nil
	case *json.RawMessage:
		*out = b
		return nil
	}
	return json.Unmarshal(b, out)
}
