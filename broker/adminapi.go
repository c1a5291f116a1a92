package broker

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/mdm-authority/mdm/protocol"
)

// maxAdminBody bounds the body of an admin request.
const maxAdminBody = 64 << 10

// ComplianceFresh is how recent a compliance report must be to count as
// fresh in the migration status.
const ComplianceFresh = 24 * time.Hour

// NewAdminHandler returns the admin HTTP API of svc: JSON over HTTP, every
// endpoint but GET /healthz behind "Authorization: Bearer <token>".
//
//	GET    /healthz                                 liveness, no token
//	GET    /v1/authority                            the authority, its changes, APNs certificates, consents
//	PUT    /v1/authority        {"mode":"intune"}   change it (intune, office365, coexistence)
//	POST   /v1/apns             {"authority":"intune","consent":true}
//	GET    /v1/profiles                             both catalogs
//	PUT    /v1/profiles/{authority}/{type}/{name}   {"settings":{"k":"v"}}: add or update
//	DELETE /v1/profiles/{authority}/{type}/{name}
//	PUT    /v1/licenses/{user}  {"intune":true}     coexistence licenses
//	GET    /v1/devices?authority=&platform=&state=&needs_support=true
//	GET    /v1/devices/{id}                         one device and its commands
//	POST   /v1/devices/{id}/commands {"action":"remote_lock","message":"..."}
//	POST   /v1/devices/{id}/migrate                 move a userless device
//	GET    /v1/migration                            migration status
//	POST   /v1/enrollment-token                     rotate the enrollment token
//	GET    /metrics                                 Prometheus text format
func NewAdminHandler(svc *Service, token string, logger *slog.Logger) http.Handler {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	a := &adminAPI{svc: svc, log: logger}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	handle := func(pattern string, h func(*http.Request) (any, error)) {
		mux.Handle(pattern, requireToken(token, a.serve(h)))
	}
	handle("GET /v1/authority", a.getAuthority)
	handle("PUT /v1/authority", a.setAuthority)
	handle("POST /v1/apns", a.uploadAPNs)
	handle("GET /v1/profiles", a.listProfiles)
	handle("PUT /v1/profiles/{authority}/{type}/{name}", a.putProfile)
	handle("DELETE /v1/profiles/{authority}/{type}/{name}", a.removeProfile)
	handle("PUT /v1/licenses/{user}", a.setLicense)
	handle("GET /v1/devices", a.listDevices)
	handle("GET /v1/devices/{id}", a.getDevice)
	handle("POST /v1/devices/{id}/commands", a.issueCommand)
	handle("POST /v1/devices/{id}/migrate", a.migrate)
	handle("GET /v1/migration", a.migration)
	handle("POST /v1/enrollment-token", a.rotateToken)
	mux.Handle("GET /metrics", requireToken(token, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		if err := svc.WriteMetrics(w); err != nil {
			a.log.Error("metrics", "err", err)
		}
	})))
	return mux
}

// requireToken checks the bearer token in constant time.
func requireToken(token string, next http.Handler) http.Handler {
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := []byte(r.Header.Get("Authorization"))
		if token == "" || subtle.ConstantTimeCompare(got, want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="mdm-broker"`)
			writeJSON(w, http.StatusUnauthorized, apiError{"missing or wrong admin token: send 'Authorization: Bearer <token>' with the token from the admin token file"})
			return
		}
		next.ServeHTTP(w, r)
	})
}

type adminAPI struct {
	svc *Service
	log *slog.Logger
}

type apiError struct {
	Error string `json:"error"`
}

// badRequest marks an error caused by the request itself.
type badRequest struct{ err error }

func (e badRequest) Error() string { return e.err.Error() }
func (e badRequest) Unwrap() error { return e.err }

func (a *adminAPI) serve(h func(*http.Request) (any, error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, maxAdminBody)
		v, err := h(r)
		if err != nil {
			status := statusOf(err)
			if status == http.StatusInternalServerError {
				a.log.Error("admin request failed", "method", r.Method, "path", r.URL.Path, "err", err)
			}
			writeJSON(w, status, apiError{err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, v)
	})
}

func statusOf(err error) int {
	var br badRequest
	switch {
	case errors.As(err, &br), errors.Is(err, ErrInvalidAuthority), errors.Is(err, protocol.ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, ErrBackToUnknown), errors.Is(err, ErrSameAuthority), errors.Is(err, ErrConsentRequired),
		errors.Is(err, ErrNotCoexistence), errors.Is(err, ErrUnsupported), errors.Is(err, ErrConflict):
		return http.StatusConflict
	}
	return http.StatusInternalServerError
}

// ErrConflict is returned (wrapped) for a request the state of the device
// or tenant does not allow.
var ErrConflict = errors.New("conflicts with the current state")

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// decodeBody reads a JSON body into v, refusing unknown fields and
// trailing data.
func decodeBody(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest{fmt.Errorf("request body: %w", err)}
	}
	if dec.More() {
		return badRequest{errors.New("request body: more than one JSON value")}
	}
	return nil
}

func (a *adminAPI) getAuthority(*http.Request) (any, error) {
	t := a.svc.Tenant()
	return t, nil
}

func (a *adminAPI) setAuthority(r *http.Request) (any, error) {
	var req struct {
		Mode Mode `json:"mode"`
	}
	if err := decodeBody(r, &req); err != nil {
		return nil, err
	}
	change, pushes, err := a.svc.SetAuthority(req.Mode)
	if err != nil {
		return nil, err
	}
	return map[string]any{"change": change, "pushes_queued": pushes}, nil
}

func (a *adminAPI) uploadAPNs(r *http.Request) (any, error) {
	var req struct {
		Authority protocol.Authority `json:"authority"`
		Consent   bool               `json:"consent"`
	}
	if err := decodeBody(r, &req); err != nil {
		return nil, err
	}
	pushes, err := a.svc.UploadAPNs(req.Authority, req.Consent)
	if err != nil {
		return nil, err
	}
	return map[string]any{"authority": req.Authority, "pushes_queued": pushes}, nil
}

func (a *adminAPI) listProfiles(*http.Request) (any, error) { return a.svc.Profiles() }

func profilePath(r *http.Request) (protocol.Authority, protocol.ProfileType, string, error) {
	auth, err := protocol.ParseAuthority(r.PathValue("authority"))
	if err != nil {
		return 0, 0, "", badRequest{err}
	}
	typ, err := protocol.ParseProfileType(r.PathValue("type"))
	if err != nil {
		return 0, 0, "", badRequest{err}
	}
	return auth, typ, r.PathValue("name"), nil
}

func (a *adminAPI) putProfile(r *http.Request) (any, error) {
	auth, typ, name, err := profilePath(r)
	if err != nil {
		return nil, err
	}
	var req struct {
		Settings protocol.Settings `json:"settings"`
	}
	if err := decodeBody(r, &req); err != nil {
		return nil, err
	}
	p, pushes, err := a.svc.PutProfile(auth, typ, name, req.Settings)
	if err != nil {
		return nil, err
	}
	return map[string]any{"profile": p, "pushes_queued": pushes}, nil
}

func (a *adminAPI) removeProfile(r *http.Request) (any, error) {
	auth, typ, name, err := profilePath(r)
	if err != nil {
		return nil, err
	}
	pushes, err := a.svc.RemoveProfile(auth, typ, name)
	if err != nil {
		return nil, err
	}
	return map[string]any{"removed": name, "pushes_queued": pushes}, nil
}

func (a *adminAPI) setLicense(r *http.Request) (any, error) {
	var req struct {
		Intune bool `json:"intune"`
	}
	if err := decodeBody(r, &req); err != nil {
		return nil, err
	}
	user := r.PathValue("user")
	pushes, err := a.svc.SetLicense(user, req.Intune)
	if err != nil {
		return nil, err
	}
	return map[string]any{"user": user, "intune": req.Intune, "pushes_queued": pushes}, nil
}

// deviceFilter builds the filter of GET /v1/devices from its query.
func deviceFilter(r *http.Request) (func(*Device) bool, error) {
	q := r.URL.Query()
	var keep []func(*Device) bool
	if s := q.Get("authority"); s != "" {
		a, err := protocol.ParseAuthority(s)
		if err != nil {
			return nil, badRequest{err}
		}
		keep = append(keep, func(d *Device) bool { return d.Authority == a })
	}
	if s := q.Get("platform"); s != "" {
		p, err := protocol.ParsePlatform(s)
		if err != nil {
			return nil, badRequest{err}
		}
		keep = append(keep, func(d *Device) bool { return d.Platform == p })
	}
	if s := q.Get("state"); s != "" {
		st, err := ParseDeviceState(s)
		if err != nil {
			return nil, badRequest{err}
		}
		keep = append(keep, func(d *Device) bool { return d.State == st })
	}
	if q.Get("needs_support") == "true" {
		keep = append(keep, func(d *Device) bool { return d.NeedsSupport })
	}
	return func(d *Device) bool {
		for _, k := range keep {
			if !k(d) {
				return false
			}
		}
		return true
	}, nil
}

func (a *adminAPI) listDevices(r *http.Request) (any, error) {
	keep, err := deviceFilter(r)
	if err != nil {
		return nil, err
	}
	ds, err := a.svc.Devices(keep)
	if ds == nil {
		ds = []Device{}
	}
	return ds, err
}

func (a *adminAPI) getDevice(r *http.Request) (any, error) {
	d, cmds, err := a.svc.Device(r.PathValue("id"))
	if err != nil {
		return nil, err
	}
	return map[string]any{"device": d, "commands": cmds}, nil
}

func (a *adminAPI) issueCommand(r *http.Request) (any, error) {
	var req struct {
		Action  protocol.CommandKind `json:"action"`
		Message string               `json:"message"`
	}
	if err := decodeBody(r, &req); err != nil {
		return nil, err
	}
	if len(req.Message) > protocol.MaxMessageText || strings.ContainsAny(req.Message, "\r\n") {
		return nil, badRequest{fmt.Errorf("message: one line of at most %d bytes", protocol.MaxMessageText)}
	}
	return a.svc.IssueCommand(r.PathValue("id"), req.Action, req.Message)
}

func (a *adminAPI) migrate(r *http.Request) (any, error) {
	return a.svc.MigrateDevice(r.PathValue("id"))
}

func (a *adminAPI) migration(*http.Request) (any, error) { return a.svc.MigrationStatus() }

func (a *adminAPI) rotateToken(*http.Request) (any, error) {
	tok, err := a.svc.RotateEnrollmentToken()
	if err != nil {
		return nil, err
	}
	return map[string]string{"enrollment_token": tok}, nil
}

// MigrationStatus is the state of the fleet with respect to the tenant's
// current authority, as an admin follows a change.
type MigrationStatus struct {
	Mode      Mode      `json:"mode"`
	Epoch     uint64    `json:"epoch"`
	ChangedAt time.Time `json:"changed_at"`
	Devices   int       `json:"devices"`
	// ByAuthority counts managed devices per authority they are on.
	ByAuthority map[protocol.Authority]int `json:"by_authority"`
	// Pending counts managed devices not yet on the authority they should
	// be on: they have not checked in since the change.
	Pending int `json:"pending"`
	// PushesQueued counts devices owed a push; Retried those whose push
	// was already sent at least twice.
	PushesQueued int `json:"pushes_queued"`
	Retried      int `json:"retried"`
	// Stranded counts userless devices left on the previous authority.
	Stranded int `json:"stranded"`
	// FailedByCode counts managed devices whose latest check-in failed,
	// by error code.
	FailedByCode map[protocol.ErrorCode]int `json:"failed_by_code"`
	// Compliance freshness: reports younger than ComplianceFresh, older,
	// and never.
	ComplianceFresh int `json:"compliance_fresh"`
	ComplianceStale int `json:"compliance_stale"`
	ComplianceNever int `json:"compliance_never"`
}

// MigrationStatus counts where the fleet is.
func (s *Service) MigrationStatus() (MigrationStatus, error) {
	now := s.opts.Clock.Now()
	t := s.Tenant()
	st := MigrationStatus{Mode: t.Mode, Epoch: t.Epoch, ChangedAt: t.ChangedAt(),
		ByAuthority: map[protocol.Authority]int{}, FailedByCode: map[protocol.ErrorCode]int{}}
	err := s.store.View(func(tx *Tx) error {
		return tx.Devices(func(d *Device) error {
			if !d.Managed() {
				return nil
			}
			st.Devices++
			st.ByAuthority[d.Authority]++
			target, stranded := d.target(&t)
			if target != d.Authority || (d.User != "" && d.LastCheckIn.Before(t.SinceFor(d.User))) {
				st.Pending++
			}
			if stranded {
				st.Stranded++
			}
			if d.Push.Pending {
				st.PushesQueued++
				if d.Push.Attempts >= 2 {
					st.Retried++
				}
			}
			if d.LastError != protocol.CodeNone {
				st.FailedByCode[d.LastError]++
			}
			switch {
			case d.ComplianceReportedAt.IsZero():
				st.ComplianceNever++
			case now.Sub(d.ComplianceReportedAt) <= ComplianceFresh:
				st.ComplianceFresh++
			default:
				st.ComplianceStale++
			}
			return nil
		})
	})
	return st, err
}
