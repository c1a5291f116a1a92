// Package agent is the device side of the MDM protocol: the agent that
// runs on test devices and VMs, and whose core the fleet simulator runs by
// the thousand.
//
// # Core and runner
//
// Core is a single-threaded state machine with no I/O and no goroutines.
// The caller feeds it clock readings (Tick), messages from the service
// (Receive), connection changes (Connected, Disconnected) and requests
// (Sync, Unenroll); each returns an Output saying what to persist, send
// and apply. NextWake says when Tick next has work. The same core serves
// the real agent (Run) and the simulator, which drives many cores from
// shared timers on a virtual clock.
//
// Run is the runner: it owns the MQTT session (paho, TLS with the device's
// MDM certificate), reconnects with exponential backoff and jitter, writes
// the state atomically after every change, applies profiles, runs the lock
// hook and serves the local control socket.
//
// # Rules the core keeps
//
//   - Schedule: Windows and Android check in every 3 minutes for 15 minutes
//     after enrollment, then every 15 minutes until 2 hours, then about
//     every 8 hours; iOS, iPadOS and macOS every 15 minutes for an hour,
//     then about every 8 hours. Jitter takes up to 10% off each interval. A
//     next_checkin hint from the service overrides the schedule.
//   - A push makes the device check in at once; pushes arriving together
//     make one check-in, pushed check-ins are at least 3 s apart, and a
//     push that arrives while a check-in is in flight makes one more after
//     it.
//   - A check-in without an answer within 60 s fails. Failures back off
//     exponentially from one minute with jitter, never beyond the
//     scheduled interval. Refusals only an admin can end (APNs certificate
//     missing, for example) retry at the schedule; the push that follows
//     the admin's fix brings the device back at once.
//   - Profiles: a desired set with a newer desired-state version replaces
//     the installed one. A profile of the new authority with the type and
//     name of an old one overwrites it; old profiles without a successor
//     are retained until the deadline the service sent, then removed
//     (Tick); while a retained profile and a current one share a type the
//     device has a redundant pair (Redundant), and a retained profile whose
//     type the new authority does not set is a protection gap (Gaps). A
//     device holds at most 256 profiles, what a check-in may list: retained
//     profiles that do not fit beside a large new set go at once.
//   - Commands run once per id: remote lock (recorded; the runner runs the
//     configured lock command), wipe (profiles and identity removed, the
//     agent stops), retire (unenrolled, profiles removed), sync (a check-in).
//     A result is sent until the broker acknowledges it, across restarts.
//   - Compliance: compliance and configuration profiles' min_os_version,
//     passcode_required and encryption_required are checked against the
//     device's Facts at every check-in; a change after applying profiles is
//     reported at once.
//   - Identity: inside the renewal window (30 days) a check-in carries a
//     signing request and the service answers with a renewed certificate;
//     once the certificate has expired the core stops checking in and
//     Status says to re-enroll.
//
// # State directory
//
//	state.json   the State, owner-only, replaced atomically
//	device.key   the device's private key (PEM), owner-only; never sent
//	agent.sock   the local control socket, owner-only, same user or root
//	profiles/    one JSON file per installed profile, readable by all:
//	             profiles/AUTHORITY/TYPE/NAME.json (NAME percent-escaped)
//
// A crash at any point leaves the previous or the next state.json; at start
// the runner makes the profile files match it.
package agent
