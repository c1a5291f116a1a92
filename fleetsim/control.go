package fleetsim

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strconv"
	"strings"

	"github.com/mdm-authority/mdm/broker"
	"github.com/mdm-authority/mdm/protocol"
)

// control is how the simulator acts as the tenant's admin: on the service
// in the same process, or through the admin API of a separate one.
type control interface {
	SetAuthority(m broker.Mode) error
	UploadAPNs(a protocol.Authority) error
	PutProfile(a protocol.Authority, typ protocol.ProfileType, name string, settings protocol.Settings) error
	RemoveProfile(a protocol.Authority, typ protocol.ProfileType, name string) error
	Profiles() ([]broker.Profile, error)
	SetLicense(user string, intune bool) error
	// RemoteLock issues a remote lock and returns the command's id.
	RemoteLock(device, message string) (string, error)
	// CommandState returns the state of one of a device's commands.
	CommandState(device, id string) (string, error)
	Tenant() (broker.Tenant, error)
	Counters() (broker.Counters, error)
}

// localControl is the service in the simulator's own process.
type localControl struct{ svc *broker.Service }

func (c localControl) SetAuthority(m broker.Mode) error {
	_, _, err := c.svc.SetAuthority(m)
	return err
}

func (c localControl) UploadAPNs(a protocol.Authority) error {
	_, err := c.svc.UploadAPNs(a, true)
	return err
}

func (c localControl) PutProfile(a protocol.Authority, typ protocol.ProfileType, name string, settings protocol.Settings) error {
	_, _, err := c.svc.PutProfile(a, typ, name, settings)
	return err
}

func (c localControl) RemoveProfile(a protocol.Authority, typ protocol.ProfileType, name string) error {
	_, err := c.svc.RemoveProfile(a, typ, name)
	return err
}

func (c localControl) Profiles() ([]broker.Profile, error) { return c.svc.Profiles() }

func (c localControl) SetLicense(user string, intune bool) error {
	_, err := c.svc.SetLicense(user, intune)
	return err
}

func (c localControl) RemoteLock(device, message string) (string, error) {
	cmd, err := c.svc.IssueCommand(device, protocol.CommandRemoteLock, message)
	return cmd.ID, err
}

func (c localControl) CommandState(device, id string) (string, error) {
	_, cmds, err := c.svc.Device(device)
	if err != nil {
		return "", err
	}
	return commandState(cmds, id), nil
}

func (c localControl) Tenant() (broker.Tenant, error) { return c.svc.Tenant(), nil }

func (c localControl) Counters() (broker.Counters, error) { return c.svc.Counters(), nil }

func commandState(cmds []*broker.Command, id string) string {
	for _, c := range cmds {
		if c.ID == id {
			return c.State.String()
		}
	}
	return "unknown"
}

// adminControl is a separate service, through its admin API.
type adminControl struct {
	c   *broker.AdminClient
	ctx context.Context
}

func profilePath(a protocol.Authority, typ protocol.ProfileType, name string) string {
	return "/v1/profiles/" + a.String() + "/" + typ.String() + "/" + url.PathEscape(name)
}

func (c adminControl) SetAuthority(m broker.Mode) error {
	return c.c.Do(c.ctx, "PUT", "/v1/authority", map[string]any{"mode": m}, nil)
}

func (c adminControl) UploadAPNs(a protocol.Authority) error {
	return c.c.Do(c.ctx, "POST", "/v1/apns", map[string]any{"authority": a, "consent": true}, nil)
}

func (c adminControl) PutProfile(a protocol.Authority, typ protocol.ProfileType, name string, settings protocol.Settings) error {
	return c.c.Do(c.ctx, "PUT", profilePath(a, typ, name), map[string]any{"settings": settings}, nil)
}

func (c adminControl) RemoveProfile(a protocol.Authority, typ protocol.ProfileType, name string) error {
	return c.c.Do(c.ctx, "DELETE", profilePath(a, typ, name), nil, nil)
}

func (c adminControl) Profiles() ([]broker.Profile, error) {
	var ps []broker.Profile
	err := c.c.Do(c.ctx, "GET", "/v1/profiles", nil, &ps)
	return ps, err
}

func (c adminControl) SetLicense(user string, intune bool) error {
	return c.c.Do(c.ctx, "PUT", "/v1/licenses/"+url.PathEscape(user), map[string]bool{"intune": intune}, nil)
}

func (c adminControl) RemoteLock(device, message string) (string, error) {
	var cmd broker.Command
	err := c.c.Do(c.ctx, "POST", "/v1/devices/"+url.PathEscape(device)+"/commands",
		map[string]any{"action": protocol.CommandRemoteLock, "message": message}, &cmd)
	return cmd.ID, err
}

func (c adminControl) CommandState(device, id string) (string, error) {
	var d struct {
		Commands []*broker.Command `json:"commands"`
	}
	if err := c.c.Do(c.ctx, "GET", "/v1/devices/"+url.PathEscape(device), nil, &d); err != nil {
		return "", err
	}
	return commandState(d.Commands, id), nil
}

func (c adminControl) Tenant() (broker.Tenant, error) {
	var t broker.Tenant
	err := c.c.Do(c.ctx, "GET", "/v1/authority", nil, &t)
	return t, err
}

// Counters reads the push counters from the service's metrics.
func (c adminControl) Counters() (broker.Counters, error) {
	var raw json.RawMessage
	if err := c.c.Do(c.ctx, "GET", "/metrics", nil, &raw); err != nil {
		return broker.Counters{}, err
	}
	var out broker.Counters
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		n, err := strconv.ParseUint(value, 10, 64)
		if err != nil {
			continue
		}
		switch {
		case name == "mdm_pushes_sent_total":
			out.PushesSent = n
		case name == "mdm_push_retries_total":
			out.PushRetries = n
		case strings.HasPrefix(name, "mdm_checkins_total{"):
			out.CheckIns += n
		}
	}
	if out.PushesSent == 0 && !bytes.Contains(raw, []byte("mdm_pushes_sent_total")) {
		return out, fmt.Errorf("the service's metrics at %s/metrics have no mdm_pushes_sent_total: is it an mdm-broker?", c.c.Base)
	}
	return out, nil
}
