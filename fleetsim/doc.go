// Package fleetsim is the fleet simulator: it runs a fleet of real device
// agents through an MDM authority migration against the management
// service and reports how the fleet moved.
//
// Run builds a fleet from a seed (platforms, users, online behaviour),
// starts the service and its embedded MQTT broker in the process, and
// drives the scenario's timeline. Every simulated device is a real
// agent.Core with its own MQTT session through the broker, over the
// in-memory transport, authenticated like any device: the enrollment
// token to enroll, then the device's connect token (a password bound to
// its certificate). The simulator drives the cores with one shared timer
// heap, not a goroutine per timer.
//
// Time is virtual. The clock stands still while anything is in flight (a
// message published and not yet handled, by a device or by the service:
// the broker reports its part through broker.Tracker) and jumps to the
// next timer when the fleet is quiescent. Results therefore do not depend
// on the host's speed, and one seed gives the same fleet, schedule and
// figures.
//
// The service's store is a temporary bbolt file in Volatile mode (no
// fsync), removed at the end: a run measures the migration, not the disk.
package fleetsim
