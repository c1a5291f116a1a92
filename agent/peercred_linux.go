package agent

import (
	"net"
	"os"
	"syscall"
)

// peerCheckedListener accepts only connections from the agent's own user
// or root. The socket file is owner-only as well; this also holds when a
// deployment loosens the directory's permissions.
type peerCheckedListener struct{ net.Listener }

// Accept implements net.Listener.
func (l peerCheckedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if uc, ok := c.(*net.UnixConn); ok && allowedPeer(uc) {
			return c, nil
		}
		c.Close()
	}
}

func allowedPeer(c *net.UnixConn) bool {
	raw, err := c.SyscallConn()
	if err != nil {
		return false
	}
	var cred *syscall.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil || credErr != nil {
		return false
	}
	return cred.Uid == 0 || int(cred.Uid) == os.Getuid()
}
