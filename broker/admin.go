package broker

import (
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/mdm-authority/mdm/protocol"
)

// RemoveAfterExpiry is how long the record of a device whose certificate
// expired is kept, if it does not come back, before housekeeping removes it.
const RemoveAfterExpiry = 180 * 24 * time.Hour

// PutProfile adds a profile to authority a's catalog or updates it (a new
// version), and pushes the devices on that authority. An authority that
// does not support the profile type refuses it.
func (s *Service) PutProfile(a protocol.Authority, typ protocol.ProfileType, name string, settings protocol.Settings) (Profile, int, error) {
	now := s.opts.Clock.Now()
	p := Profile{Authority: a, Type: typ, Name: name, Settings: settings, UpdatedAt: now}
	if a != protocol.AuthorityIntune && a != protocol.AuthorityOffice365 {
		return Profile{}, 0, fmt.Errorf("put profile: %w", ErrInvalidAuthority)
	}
	if !Supports(a, typ) {
		return Profile{}, 0, fmt.Errorf("put %s profile %q: %s profiles are %w (%s)", a, name, typ, ErrUnsupported, a)
	}
	probe := protocol.DesiredProfile{Type: typ, Name: name, Version: 1, Settings: settings}
	env := protocol.Envelope{ID: protocol.MessageID{1}, Sent: 1, Device: "check", ReplyTo: protocol.MessageID{1},
		Body: &protocol.CheckInResponse{Authority: a, Profiles: []protocol.DesiredProfile{probe}}}
	if err := env.Validate(); err != nil {
		return Profile{}, 0, fmt.Errorf("put %s profile %q: %w", a, name, err)
	}
	pushed := 0
	err := s.updateTenant(func(tx *Tx, t *Tenant) error {
		old, err := tx.Profile(a, typ, name)
		if err == nil {
			p.Version = old.Version + 1
		} else {
			p.Version = 1
		}
		// The whole catalog goes in one check-in response: keep it within
		// what a device accepts.
		all, err := tx.Profiles()
		if err != nil {
			return err
		}
		count, settings := 1, len(p.Settings)
		for _, q := range all {
			if q.Authority == a && (q.Type != typ || q.Name != name) {
				count++
				settings += len(q.Settings)
			}
		}
		if count > protocol.MaxProfiles || settings > protocol.MaxSettingsTotal {
			return fmt.Errorf("put %s profile %q: the %s catalog would have %d profiles and %d settings; a device accepts at most %d and %d: %w",
				a, name, a, count, settings, protocol.MaxProfiles, protocol.MaxSettingsTotal, ErrConflict)
		}
		if err := tx.PutProfile(&p); err != nil {
			return err
		}
		t.Revision++
		pushed, err = s.pushAuthority(tx, t, a, protocol.PushProfilesChanged, now)
		return err
	})
	if err != nil {
		return Profile{}, 0, err
	}
	return p, pushed, nil
}

// RemoveProfile removes a profile from authority a's catalog and pushes the
// devices on that authority.
func (s *Service) RemoveProfile(a protocol.Authority, typ protocol.ProfileType, name string) (int, error) {
	now := s.opts.Clock.Now()
	pushed := 0
	err := s.updateTenant(func(tx *Tx, t *Tenant) error {
		if _, err := tx.Profile(a, typ, name); err != nil {
			return err
		}
		if err := tx.DeleteProfile(a, typ, name); err != nil {
			return err
		}
		t.Revision++
		var err error
		pushed, err = s.pushAuthority(tx, t, a, protocol.PushProfilesChanged, now)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("remove profile: %w", err)
	}
	return pushed, nil
}

// Profiles returns the catalogs of both authorities.
func (s *Service) Profiles() ([]Profile, error) { return s.catalog() }

// pushAuthority queues a push to every managed device on authority a that
// can receive one.
func (s *Service) pushAuthority(tx *Tx, t *Tenant, a protocol.Authority, reason protocol.PushReason, now time.Time) (int, error) {
	n := 0
	err := tx.Devices(func(d *Device) error {
		if !d.Managed() || d.Authority != a || (d.Platform.NeedsAPNs() && !t.HasAPNs(a)) {
			return nil
		}
		n++
		return s.schedulePush(tx, d, reason, now)
	})
	return n, err
}

// SetLicense records whether user has an Intune license (coexistence mode)
// and pushes the user's devices, whose authority follows the license.
func (s *Service) SetLicense(user string, intune bool) (int, error) {
	now := s.opts.Clock.Now()
	pushed := 0
	err := s.updateTenant(func(tx *Tx, t *Tenant) error {
		changed, err := t.SetLicense(user, intune, now)
		if err != nil || !changed {
			return err
		}
		return tx.Devices(func(d *Device) error {
			if !d.Managed() || d.User != user {
				return nil
			}
			pushed++
			return s.schedulePush(tx, d, protocol.PushAuthorityChange, now)
		})
	})
	if err != nil {
		return 0, fmt.Errorf("set license: %w", err)
	}
	return pushed, nil
}

// MigrateDevice moves a userless device, left on the previous authority by
// a change, to the tenant's current authority and pushes it.
func (s *Service) MigrateDevice(id string) (Device, error) {
	now := s.opts.Clock.Now()
	var out Device
	err := s.updateTenant(func(tx *Tx, t *Tenant) error {
		d, err := tx.Device(id)
		if err != nil {
			return err
		}
		if !d.Managed() {
			return fmt.Errorf("device %s is %s: %w", id, d.State, ErrConflict)
		}
		if d.User != "" {
			return fmt.Errorf("device %s has a user and moves by itself at its next check-in; migrate is for userless devices: %w", id, ErrConflict)
		}
		want := t.AuthorityFor(d.User)
		if d.Authority == want {
			return fmt.Errorf("device %s is already on %s: %w", id, want, ErrConflict)
		}
		d.moveTo(want, now, now)
		d.NeedsSupport = false
		t.Revision++
		if err := s.schedulePush(tx, d, protocol.PushAuthorityChange, now); err != nil {
			return err
		}
		out = *d
		return nil
	})
	if err != nil {
		return Device{}, fmt.Errorf("migrate device: %w", err)
	}
	return out, nil
}

// IssueCommand queues a command for a device and pushes it. The device's
// authority must support the action.
func (s *Service) IssueCommand(device string, action protocol.CommandKind, message string) (Command, error) {
	now := s.opts.Clock.Now()
	id, err := s.newID("c-")
	if err != nil {
		return Command{}, err
	}
	c := Command{ID: id, Device: device, Action: action, Message: message, Issued: now, State: CommandPending}
	if err := (&protocol.Envelope{ID: protocol.MessageID{1}, Sent: 1, Device: device, Body: &protocol.Command{
		ID: id, Action: action, Message: message}}).Validate(); err != nil {
		return Command{}, fmt.Errorf("issue %s: %w", action, err)
	}
	t := s.Tenant()
	err = s.store.Update(func(tx *Tx) error {
		d, err := tx.Device(device)
		if err != nil {
			return err
		}
		if !d.Managed() {
			return fmt.Errorf("device %s is %s and no longer managed: %w", device, d.State, ErrConflict)
		}
		// The authority the device is moving to, if a change is under way:
		// that is the one that will deliver the command.
		target, _ := d.target(&t)
		if !SupportsCommand(target, action) {
			return fmt.Errorf("%s on a device managed by %s: %w", action, target, ErrUnsupported)
		}
		cmds, err := tx.Commands(device)
		if err != nil {
			return err
		}
		open := 0
		for _, c := range cmds {
			if c.State.Open() {
				open++
			}
		}
		if open >= protocol.MaxCommands {
			return fmt.Errorf("device %s already has %d commands waiting, the most a check-in can carry: %w", device, open, ErrConflict)
		}
		if err := tx.PutCommand(&c); err != nil {
			return err
		}
		return s.schedulePush(tx, d, protocol.PushCommandPending, now)
	})
	if err != nil {
		return Command{}, fmt.Errorf("issue %s: %w", action, err)
	}
	return c, nil
}

// Devices returns the devices that match keep (all when nil).
func (s *Service) Devices(keep func(*Device) bool) ([]Device, error) {
	var out []Device
	err := s.store.View(func(tx *Tx) error {
		pushes := tx.pushesOf("")
		return tx.Devices(func(d *Device) error {
			showPush(d, pushes[d.ID])
			if keep == nil || keep(d) {
				out = append(out, *d)
			}
			return nil
		})
	})
	return out, err
}

// Device returns one device and its commands.
func (s *Service) Device(id string) (Device, []*Command, error) {
	var d *Device
	var cmds []*Command
	err := s.store.View(func(tx *Tx) error {
		var err error
		if d, err = tx.Device(id); err != nil {
			return err
		}
		showPush(d, tx.pushesOf(id)[id])
		cmds, err = tx.Commands(id)
		return err
	})
	if err != nil {
		return Device{}, nil, err
	}
	return *d, cmds, nil
}

// Housekeep removes the devices whose certificate expired more than 180
// days ago. A certificate is renewed only while its device checks in, so
// this removes devices that stopped communicating: lost, wiped, retired or
// unenrolled. It returns the ids removed.
func (s *Service) Housekeep() ([]string, error) {
	now := s.opts.Clock.Now()
	var removed []string
	err := s.store.Update(func(tx *Tx) error {
		removed = removed[:0]
		var doomed []*Device
		err := tx.Devices(func(d *Device) error {
			if now.Sub(d.CertNotAfter) > RemoveAfterExpiry {
				doomed = append(doomed, d)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, d := range doomed {
			if err := tx.DeleteDevice(d); err != nil {
				return err
			}
			removed = append(removed, d.ID)
		}
		return nil
	})
	return removed, err
}

// RemoveDevice deletes a device, its commands and its queued push, and
// ends its MQTT session if it has one: its certificate and connect token
// are refused from then on. It is how an admin revokes a device that will
// not acknowledge a retire or wipe, such as a lost one. The device can
// enroll again as a new device.
func (s *Service) RemoveDevice(id string) error {
	err := s.store.Update(func(tx *Tx) error {
		d, err := tx.Device(id)
		if err != nil {
			return err
		}
		return tx.DeleteDevice(d)
	})
	if err != nil {
		return fmt.Errorf("remove device %s: %w", id, err)
	}
	if kick := s.disconnect.Load(); kick != nil {
		(*kick)(id)
	}
	s.opts.Logger.Info("device removed", "device", id)
	return nil
}

// RepushPending makes every queued push due now. The service calls it at
// start: after a crash or a restart in the middle of a fan-out, the devices
// that have not checked in since are pushed again without waiting for their
// next retry. It returns the number of pushes made due.
func (s *Service) RepushPending() (int, error) {
	now := s.opts.Clock.Now()
	n := 0
	err := s.store.Update(func(tx *Tx) error {
		n = 0
		// Every entry goes first, then the current ones come back: an
		// entry put back at now must not be deleted as a later one's key.
		s.answered.reset() // the answered entries go below: nothing to remember
		es := tx.duePushes(time.Unix(0, math.MaxInt64), math.MaxInt)
		for _, e := range es {
			if err := tx.deletePush(e); err != nil {
				return err
			}
		}
		for _, e := range es {
			d, err := tx.Device(e.device)
			if errors.Is(err, ErrNotFound) {
				continue
			} else if err != nil {
				return err
			}
			if !e.current(d) {
				continue // left behind: dropped
			}
			if err := tx.queuePush(d, now, e.sent(d)); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("repush pending: %w", err)
	}
	return n, nil
}
