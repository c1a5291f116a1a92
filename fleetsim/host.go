package fleetsim

import (
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
)

// HostReport describes the machine and the Go runtime settings a run had,
// so that figures measured on different machines, or with different
// collector settings, can be told apart: the same fleet runs at very
// different speeds on hosts with the same core count.
type HostReport struct {
	// CPU is the processor's model name, as Linux reports it; empty
	// where it does not.
	CPU string `json:"cpu,omitempty"`
	// CPUs counts the logical CPUs; GOMAXPROCS, those Go runs on.
	CPUs       int `json:"cpus"`
	GOMAXPROCS int `json:"gomaxprocs"`
	// MemoryBytes is the machine's memory (Linux); zero elsewhere.
	MemoryBytes uint64 `json:"memory_bytes,omitempty"`
	// GCPercent is the collector's setting (GOGC; --memory-limit sets
	// it; -1 when off), and MemoryLimitBytes the soft memory limit
	// (GOMEMLIMIT, --memory-limit), zero when there is none.
	GCPercent        int   `json:"gc_percent"`
	MemoryLimitBytes int64 `json:"memory_limit_bytes,omitempty"`
	// Go is the Go version the simulator was built with; OS its
	// operating system and architecture ("linux/amd64").
	Go string `json:"go"`
	OS string `json:"os"`
}

// String describes the host in one line, as the summary shows it: "AMD
// EPYC, 2 CPUs (GOMAXPROCS 2), 24 GiB, go1.26.8 linux/amd64, GOGC 100".
func (h HostReport) String() string {
	var b strings.Builder
	if h.CPU != "" {
		b.WriteString(h.CPU + ", ")
	}
	fmt.Fprintf(&b, "%d CPUs (GOMAXPROCS %d)", h.CPUs, h.GOMAXPROCS)
	if h.MemoryBytes > 0 {
		fmt.Fprintf(&b, ", %.0f GiB", float64(h.MemoryBytes)/(1<<30))
	}
	fmt.Fprintf(&b, ", %s %s, ", h.Go, h.OS)
	if h.GCPercent < 0 {
		b.WriteString("GOGC off")
	} else {
		fmt.Fprintf(&b, "GOGC %d", h.GCPercent)
	}
	if h.MemoryLimitBytes > 0 {
		fmt.Fprintf(&b, ", memory limit %d MiB", h.MemoryLimitBytes>>20)
	}
	return b.String()
}

// host describes this machine and process.
func host() HostReport {
	h := HostReport{
		CPU:  procField("/proc/cpuinfo", "model name"),
		CPUs: runtime.NumCPU(), GOMAXPROCS: runtime.GOMAXPROCS(0),
		MemoryBytes: procKiB("/proc/meminfo", "MemTotal"),
		Go:          runtime.Version(), OS: runtime.GOOS + "/" + runtime.GOARCH,
	}
	gc := []metrics.Sample{{Name: "/gc/gogc:percent"}, {Name: "/gc/gomemlimit:bytes"}}
	metrics.Read(gc)
	if gc[0].Value.Kind() == metrics.KindUint64 {
		h.GCPercent = int(gc[0].Value.Uint64())
	}
	if gc[1].Value.Kind() == metrics.KindUint64 {
		if limit := gc[1].Value.Uint64(); limit < math.MaxInt64 {
			h.MemoryLimitBytes = int64(limit)
		}
	}
	return h
}

// runtimeRSS returns the peak resident set size of the process, from
// /proc on Linux; zero elsewhere.
func runtimeRSS() uint64 { return procKiB("/proc/self/status", "VmHWM") }

// procKiB reads a "key: N kB" line of a /proc file, in bytes; zero when
// there is none.
func procKiB(path, key string) uint64 {
	v, ok := strings.CutSuffix(procField(path, key), " kB")
	if !ok {
		return 0
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil || n > math.MaxUint64/1024 {
		return 0
	}
	return n * 1024
}

// procField returns the value of the first "key: value" line of a /proc
// file (the separator may be padded with spaces and tabs), or "" when the
// file or the key is missing, as off Linux.
func procField(path, key string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	// The fields read here come first; a machine with many CPUs repeats
	// cpuinfo's for each.
	b, _ := io.ReadAll(io.LimitReader(f, 1<<16))
	for line := range strings.Lines(string(b)) {
		k, v, ok := strings.Cut(line, ":")
		if ok && strings.TrimRight(k, " \t") == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
