package broker

import (
	"log/slog"
	"sync"
	"time"
)

// Bad input is logged at a bounded rate: at most rateLogBurst records per
// rateLogPeriod for each kind of event, so that a client sending garbage
// as fast as it can cannot fill the service log. The counters in the
// metrics see every event; the log is for finding who sends them.
const (
	rateLogBurst  = 10
	rateLogPeriod = time.Minute
)

// rateLog writes warnings of one kind of event at a bounded rate. When it
// has suppressed records, the next record it writes says how many, so the
// log never hides that something went on. It is safe for concurrent use.
type rateLog struct {
	log   *slog.Logger
	clock Clock

	mu         sync.Mutex
	start      time.Time // of the current period
	written    int       // in the current period
	suppressed int       // since the last record written
}

func newRateLog(log *slog.Logger, clock Clock) *rateLog {
	return &rateLog{log: log, clock: clock}
}

// Warn writes msg with args as a warning, unless this period's records are
// used up.
func (r *rateLog) Warn(msg string, args ...any) {
	now := r.clock.Now()
	r.mu.Lock()
	if now.Sub(r.start) >= rateLogPeriod || now.Before(r.start) {
		r.start, r.written = now, 0
	}
	if r.written >= rateLogBurst {
		r.suppressed++
		r.mu.Unlock()
		return
	}
	r.written++
	suppressed := r.suppressed
	r.suppressed = 0
	r.mu.Unlock()
	if suppressed > 0 {
		args = append(args, "suppressed_before", suppressed)
	}
	r.log.Warn(msg, args...)
}
