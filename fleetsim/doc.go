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
// heap, not a goroutine per timer. A device's MQTT session is a lean MQTT
// 3.1.1 client built on mochi's packet codec, not paho: at 100,000 devices
// the client's cost per message and per idle session matters. In process a
// session has no goroutine of its own. It connects through an in-memory
// pipe with a buffer each way, one object a session once idle, where
// net.Pipe's channels and deadlines were about a dozen for the collector
// (memPipe). Through it go CONNECT with its credentials and SUBSCRIBE to
// its own topic, both checked by the broker as on any connection. What the
// broker writes is decoded and handed to the device in the goroutine that
// writes it (directConn, a broker.ImmediateConn). The broker writes the
// service's answer itself, when MQTT's rules let it, in the goroutine
// that handled the device's message, and a push in the fan-out's,
// instead of queueing them for mochi's writing goroutine of the client.
// What the device sends after its handshake (PUBLISH, PUBACK,
// DISCONNECT) goes to the broker as decoded packets under the client it
// authenticated as (broker.Session), through an uplink: 64 shared queue
// goroutines, each handing the broker one packet at a time, a session's
// packets in order. The broker checks topic access for each packet as for
// one read from a connection, and the service handles a check-in in the
// queue's goroutine, so up to 64 share a store commit. The broker's
// goroutine that reads the pipe then waits, idle, on a small stack: at
// 100,000 devices at most 690 MiB of goroutine stacks at any collection,
// against 2 to 3.7 GiB when those goroutines ran the service. Over the
// network a session has one goroutine, the reader, and writes every
// packet; Config.Wire makes an in-process session write every packet
// too, so that the broker's reading of each is part of the load, with
// the same figures.
//
// What the timeline samples (devices by authority, retained profiles,
// devices with a redundant pair or a gap) is counted as each device's
// state changes, after every call into its core that can change it, not
// by visiting the fleet at each sample: at 100,000 devices the 769
// samples of the default scenario visited 77 million device states, a
// quarter of the run's wall time. Devices' keys and certificate requests
// are made ahead, on a goroutine of their own, while the loop enrolls the
// fleet one device at a time.
//
// Config.BurstProfile takes a CPU profile of the migration burst alone,
// the window that run.burst_checkins_per_s measures.
//
// Time is virtual. The clock stands still while anything is in flight (a
// message published and not yet handled, by a device or by the service:
// the broker reports its part through broker.Tracker) and jumps to the
// next timer when the fleet is quiescent. Messages are handled in rounds:
// once everything in flight has reached the devices' inbox, the inbox is
// handled in device order. A large round (a migration burst's) is split
// at device boundaries over one lane per core, which handle their devices
// at once: devices do not affect each other, and what a lane changes
// beyond its devices (the run's counters, wake-ups, reconnection delays)
// is added to the run in device order afterwards, as one lane would have.
// Results therefore do not depend on the host's speed or its cores, and
// one seed gives the same fleet, schedule and figures.
//
// With Config.External the same scenario runs against a separately
// started service (mdm-broker serve) over TCP or TLS, its admin steps
// through the admin API, on the service's scaled clock (serve
// --time-scale, read from GET /v1/clock); nothing waits for quiescence
// there, and a fleet can be split into shards run by several simulators.
//
// Scenario steps may restart the embedded broker or the whole service
// (in process only): sessions drop and devices reconnect after their
// backoff; the service starts again from its store.
//
// The service's store is a temporary bbolt file in Volatile mode (no
// fsync), removed at the end: a run measures the migration, not the disk.
package fleetsim
