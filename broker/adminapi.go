package broker

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
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
//	DELETE /v1/devices/{id}                         remove a device: revokes its credentials, ends its session
//	GET    /v1/migration                            migration status
//	POST   /v1/enrollment-token                     rotate the enrollment token
//	GET    /v1/clock                                the service's time and clock scale (serve --time-scale)
//	GET    /metrics                                 Prometheus text format
//
// Request bodies are decoded strictly (protocol.DecodeJSON). An error
// answer is {"code": "...", "error": "..."}, the code one of
// unauthorized, bad_request, too_large, not_found, method_not_allowed,
// conflict, unsupported or internal. Every error answer is counted by
// code (mdm_admin_requests_rejected_total) and logged at a bounded rate.
func NewAdminHandler(svc *Service, token string, logger *slog.Logger) http.Handler {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	a := &adminAPI{
		svc: svc, log: logger, token: token, want: sha256.Sum256([]byte("Bearer " + token)),
		refused: newRateLog(logger, svc.opts.Clock), rejects: newRateLog(logger, svc.opts.Clock),
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	methods := map[string][]string{"/healthz": {http.MethodGet}} // by path, for 405 answers
	handleRaw := func(pattern string, h http.Handler) {
		method, path, _ := strings.Cut(pattern, " ")
		methods[path] = append(methods[path], method)
		mux.Handle(pattern, a.requireToken(h))
	}
	handle := func(pattern string, h func(*http.Request) (any, error)) { handleRaw(pattern, a.serve(h)) }
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
	handle("DELETE /v1/devices/{id}", a.removeDevice)
	handle("GET /v1/migration", a.migration)
	handle("POST /v1/enrollment-token", a.rotateToken)
	handle("GET /v1/clock", func(*http.Request) (any, error) { return svc.ClockInfo(), nil })
	handleRaw("GET /metrics", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		if err := svc.WriteMetrics(w); err != nil {
			a.log.Error("metrics", "err", err)
		}
		if err := a.writeMetrics(w); err != nil {
			a.log.Error("metrics", "err", err)
		}
	}))
	// What no pattern above matches gets a JSON answer with a code too,
	// behind the token so that the endpoints are not probed for free.
	for path, ms := range methods {
		allow := strings.Join(ms, ", ")
		mux.Handle(path, a.requireToken(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", allow)
			a.reject(w, r, rejectMethod, fmt.Errorf("%s is not allowed on %s; use %s", r.Method, shortPath(r), allow))
		})))
	}
	mux.Handle("/", a.requireToken(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.reject(w, r, rejectNotFound, fmt.Errorf("no endpoint %s %s; the endpoints are listed in the mdm-broker documentation", r.Method, shortPath(r)))
	})))
	return mux
}

// Codes of error answers: the "code" field of the answer and the label of
// mdm_admin_requests_rejected_total.
const (
	rejectBadRequest   = iota // the request breaks a rule: syntax, a field, a value
	rejectUnauthorized        // no token, or not the admin token
	rejectTooLarge            // a body over maxAdminBody
	rejectNotFound            // no such endpoint, device or profile
	rejectMethod              // an endpoint that does not take the method
	rejectConflict            // the state of the tenant or device does not allow it
	rejectUnsupported         // the MDM authority does not support it
	rejectInternal            // the service failed
	rejectCodes
)

var (
	rejectNames  = [rejectCodes]string{"bad_request", "unauthorized", "too_large", "not_found", "method_not_allowed", "conflict", "unsupported", "internal"}
	rejectStatus = [rejectCodes]int{http.StatusBadRequest, http.StatusUnauthorized, http.StatusRequestEntityTooLarge,
		http.StatusNotFound, http.StatusMethodNotAllowed, http.StatusConflict, http.StatusConflict, http.StatusInternalServerError}
)

// requireToken checks the bearer token in constant time, whatever its
// length: it compares digests. The scheme is matched exactly ("Bearer"),
// as the admin CLI sends it.
func (a *adminAPI) requireToken(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := r.Header.Get("Authorization")
		sum := sha256.Sum256([]byte(got))
		if a.token != "" && subtle.ConstantTimeCompare(sum[:], a.want[:]) == 1 {
			next.ServeHTTP(w, r)
			return
		}
		reason := "wrong token"
		switch {
		case got == "":
			reason = "no Authorization header"
		case !strings.HasPrefix(got, "Bearer "):
			reason = "not a Bearer token"
		}
		a.rejected[rejectUnauthorized].Add(1)
		a.refused.Warn("admin request refused", "reason", reason, "remote", r.RemoteAddr, "method", r.Method, "path", shortPath(r))
		w.Header().Set("WWW-Authenticate", `Bearer realm="mdm-broker"`)
		writeJSON(w, http.StatusUnauthorized, apiError{rejectNames[rejectUnauthorized],
			"missing or wrong admin token: send 'Authorization: Bearer <token>' with the token from the admin token file"})
	})
}

type adminAPI struct {
	svc   *Service
	log   *slog.Logger
	token string
	want  [sha256.Size]byte // digest of the Authorization header to accept

	// rejected counts error answers by code; refused and rejects log
	// them at a bounded rate, the token refusals apart so that a flood
	// of them does not hide the rest.
	rejected [rejectCodes]atomic.Uint64
	refused  *rateLog
	rejects  *rateLog
}

// apiError is the body of every error answer.
type apiError struct {
	Code  string `json:"code"`
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
			a.reject(w, r, rejectionOf(err), err)
			return
		}
		writeJSON(w, http.StatusOK, v)
	})
}

// reject answers with an error of the given code, counts it and logs it:
// failures of the service always, the request's faults at a bounded rate.
func (a *adminAPI) reject(w http.ResponseWriter, r *http.Request, code int, err error) {
	a.rejected[code].Add(1)
	if code == rejectInternal {
		a.log.Error("admin request failed", "method", r.Method, "path", shortPath(r), "err", err)
	} else {
		a.rejects.Warn("admin request rejected", "code", rejectNames[code], "remote", r.RemoteAddr,
			"method", r.Method, "path", shortPath(r), "err", err)
	}
	writeJSON(w, rejectStatus[code], apiError{rejectNames[code], err.Error()})
}

// rejectionOf returns the code that answers an error of a handler.
func rejectionOf(err error) int {
	var br badRequest
	switch {
	case errors.As(err, &br) && errors.Is(br, protocol.ErrTooLarge):
		return rejectTooLarge
	case errors.As(err, &br), errors.Is(err, ErrInvalidAuthority), errors.Is(err, protocol.ErrInvalid):
		return rejectBadRequest
	case errors.Is(err, ErrNotFound):
		return rejectNotFound
	case errors.Is(err, ErrUnsupported):
		return rejectUnsupported
	case errors.Is(err, ErrBackToUnknown), errors.Is(err, ErrSameAuthority), errors.Is(err, ErrConsentRequired),
		errors.Is(err, ErrNotCoexistence), errors.Is(err, ErrConflict):
		return rejectConflict
	}
	return rejectInternal
}

// writeMetrics writes the admin API's counters in the Prometheus text
// format, after the service's.
func (a *adminAPI) writeMetrics(w io.Writer) error {
	var b strings.Builder
	b.WriteString("# HELP mdm_admin_requests_rejected_total Admin API requests answered with an error, by code.\n# TYPE mdm_admin_requests_rejected_total counter\n")
	for c, name := range rejectNames {
		fmt.Fprintf(&b, "mdm_admin_requests_rejected_total{code=%q} %d\n", name, a.rejected[c].Load())
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// maxLoggedPath bounds the request path in logs and answers.
const maxLoggedPath = 256

// shortPath returns the request's path, shortened to maxLoggedPath bytes.
func shortPath(r *http.Request) string {
	p := r.URL.Path
	if len(p) > maxLoggedPath {
		p = strings.ToValidUTF8(p[:maxLoggedPath], "") + "…"
	}
	return p
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

// bodyTooLarge is the error of a body over maxAdminBody. It wraps
// protocol.ErrTooLarge, whose own text speaks of device messages.
type bodyTooLarge struct{}

func (bodyTooLarge) Error() string {
	return fmt.Sprintf("request body is more than %d bytes; send at most %d", maxAdminBody, maxAdminBody)
}
func (bodyTooLarge) Unwrap() error { return protocol.ErrTooLarge }

// decodeBody reads a JSON body into v with protocol.DecodeJSON: no
// unknown fields, repeated keys, deep nesting or trailing data.
func decodeBody(r *http.Request, v any) error {
	data, err := io.ReadAll(r.Body)
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		return badRequest{bodyTooLarge{}}
	case err != nil:
		return badRequest{fmt.Errorf("request body: %w", err)}
	}
	if err := protocol.DecodeJSON(data, maxAdminBody, v); err != nil {
		return badRequest{fmt.Errorf("request body: %w", err)}
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

func (a *adminAPI) removeDevice(r *http.Request) (any, error) {
	id := r.PathValue("id")
	if err := a.svc.RemoveDevice(id); err != nil {
		return nil, err
	}
	return map[string]string{"removed": id}, nil
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
		pushes := tx.pushesOf("")
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
				showPush(d, pushes[d.ID])
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
