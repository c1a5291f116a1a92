//go:build !linux

package agent

import "net"

// peerCheckedListener relies on the socket file's owner-only mode where
// the system offers no peer credentials to check.
type peerCheckedListener struct{ net.Listener }
