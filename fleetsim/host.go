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
	// CPU is the processor's model name, and CPUDetail its family, model,
	// stepping and clock, as Linux reports them on x86 (a virtual
	// machine may show only a vendor's family name as its model name;
	// the detail still tells processor generations apart). Empty where
	// the system does not report them, as off Linux or on arm64.
	CPU       string `json:"cpu,omitempty"`
	CPUDetail string `json:"cpu_detail,omitempty"`
	// CPUs counts the CPUs the process may use (its affinity mask), and
	// GOMAXPROCS how many of them run Go code at once (by default the
	// CPUs, or the cgroup's CPU quota when lower).
	CPUs       int `json:"cpus"`
	GOMAXPROCS int `json:"gomaxprocs"`
	// MemoryBytes is the memory of the machine or virtual machine as the
	// kernel sees it (not a container's limit), and Kernel the kernel's
	// release; both Linux only.
	MemoryBytes uint64 `json:"memory_bytes,omitempty"`
	Kernel      string `json:"kernel,omitempty"`
	// GCPercent is the collector's setting (GOGC, which --memory-limit
	// sets; -1 when off), and MemoryLimitBytes the soft memory limit
	// (GOMEMLIMIT, --memory-limit), zero when there is none.
	GCPercent        int   `json:"gc_percent"`
	MemoryLimitBytes int64 `json:"memory_limit_bytes,omitempty"`
	// Go is the Go version the simulator was built with; OS its
	// operating system and architecture ("linux/amd64").
	Go string `json:"go"`
	OS string `json:"os"`
}

// String describes the host in one line, as the summary shows it: "AMD
// EPYC (family 26 model 2 stepping 1, 2096 MHz), 2 CPUs (GOMAXPROCS 2),
// 23.5 GiB, Linux 6.1.0, go1.26.8 linux/amd64, GOGC 100".
func (h HostReport) String() string {
	var parts []string
	switch {
	case h.CPU != "" && h.CPUDetail != "":
		parts = append(parts, h.CPU+" ("+h.CPUDetail+")")
	case h.CPU != "" || h.CPUDetail != "":
		parts = append(parts, h.CPU+h.CPUDetail)
	}
	cpus := fmt.Sprintf("%d CPUs", h.CPUs)
	if h.CPUs == 1 {
		cpus = "1 CPU"
	}
	parts = append(parts, fmt.Sprintf("%s (GOMAXPROCS %d)", cpus, h.GOMAXPROCS))
	if h.MemoryBytes > 0 {
		parts = append(parts, fmt.Sprintf("%.1f GiB", float64(h.MemoryBytes)/(1<<30)))
	}
	if h.Kernel != "" {
		parts = append(parts, "Linux "+h.Kernel)
	}
	parts = append(parts, h.Go+" "+h.OS)
	if h.GCPercent < 0 {
		parts = append(parts, "GOGC off")
	} else {
		parts = append(parts, fmt.Sprintf("GOGC %d", h.GCPercent))
	}
	if h.MemoryLimitBytes > 0 {
		parts = append(parts, fmt.Sprintf("memory limit %d MiB", h.MemoryLimitBytes>>20))
	}
	return strings.Join(parts, ", ")
}

// host describes this machine and process.
func host() HostReport {
	cpu := procFields("/proc/cpuinfo")
	h := HostReport{
		CPU: cpu["model name"], CPUDetail: cpuDetail(cpu),
		CPUs: runtime.NumCPU(), GOMAXPROCS: runtime.GOMAXPROCS(0),
		MemoryBytes: kiB(procFields("/proc/meminfo")["MemTotal"]),
		Go:          runtime.Version(), OS: runtime.GOOS + "/" + runtime.GOARCH,
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil && len(b) < 256 {
		h.Kernel = strings.TrimSpace(string(b))
	}
	gc := []metrics.Sample{{Name: "/gc/gogc:percent"}, {Name: "/gc/gomemlimit:bytes"}}
	metrics.Read(gc)
	if gc[0].Value.Kind() == metrics.KindUint64 {
		// The runtime keeps GOGC as an int32 and reports it unsigned:
		// off (-1) comes back as all ones.
		h.GCPercent = int(int32(gc[0].Value.Uint64()))
	}
	if gc[1].Value.Kind() == metrics.KindUint64 {
		if limit := gc[1].Value.Uint64(); limit < math.MaxInt64 {
			h.MemoryLimitBytes = int64(limit)
		}
	}
	return h
}

// cpuDetail returns "family F model M stepping S, N MHz" from the fields
// of an x86 cpuinfo file, with what of it is there; "" when none is.
func cpuDetail(cpu map[string]string) string {
	var id []string
	for _, key := range []string{"cpu family", "model", "stepping"} {
		if v := cpu[key]; v != "" {
			id = append(id, strings.TrimPrefix(key, "cpu ")+" "+v)
		}
	}
	detail := strings.Join(id, " ")
	if mhz, err := strconv.ParseFloat(cpu["cpu MHz"], 64); err == nil && mhz > 0 {
		if detail != "" {
			detail += ", "
		}
		detail += fmt.Sprintf("%.0f MHz", mhz)
	}
	return detail
}

// runtimeRSS returns the peak resident set size of the process, from
// /proc on Linux; zero elsewhere.
func runtimeRSS() uint64 { return kiB(procFields("/proc/self/status")["VmHWM"]) }

// kiB reads a /proc value "N kB" in bytes; zero when it is not one.
func kiB(v string) uint64 {
	v, ok := strings.CutSuffix(v, " kB")
	if !ok {
		return 0
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil || n > math.MaxUint64/1024 {
		return 0
	}
	return n * 1024
}

// procFields reads a /proc file of "key: value" lines (the separator may
// be padded with spaces and tabs) into a map, keeping each key's first
// value: cpuinfo repeats its fields for every CPU. It is empty when the
// file is missing, as off Linux.
func procFields(path string) map[string]string {
	fields := map[string]string{}
	f, err := os.Open(path)
	if err != nil {
		return fields
	}
	defer f.Close()
	// The fields read here come first; a machine with many CPUs has a
	// long cpuinfo.
	b, _ := io.ReadAll(io.LimitReader(f, 1<<16))
	for line := range strings.Lines(string(b)) {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		k = strings.TrimRight(k, " \t")
		if _, seen := fields[k]; !seen {
			fields[k] = strings.TrimSpace(v)
		}
	}
	return fields
}
