package fleetsim

import (
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"testing"
)

// writeProc writes a /proc-like fixture file.
func writeProc(t *testing.T, name, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestProcField(t *testing.T) {
	cpuinfo := writeProc(t, "cpuinfo", "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC 7B13\nstepping\t: 0\ncpu MHz\t\t: 2449.998\nflags\t\t: fpu vme\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 7B13\n")
	meminfo := writeProc(t, "meminfo", "MemTotal:       24683748 kB\nMemFree:         1000 kB\nHugePages_Total:       0\n")
	missing := filepath.Join(t.TempDir(), "missing")
	for _, c := range []struct {
		path, key, want string
	}{
		{cpuinfo, "model name", "AMD EPYC 7B13"},
		{cpuinfo, "model", "1"}, // not "model name"
		{cpuinfo, "vendor_id", "AuthenticAMD"},
		{cpuinfo, "mode", ""}, // a prefix of a key is not the key
		{meminfo, "MemFree", "1000 kB"},
		{missing, "MemTotal", ""},
	} {
		if got := procFields(c.path)[c.key]; got != c.want {
			t.Errorf("procFields(%s)[%q] = %q, want %q", filepath.Base(c.path), c.key, got, c.want)
		}
	}
	if got := kiB(procFields(meminfo)["MemTotal"]); got != 24683748*1024 {
		t.Errorf("kiB(MemTotal) = %d", got)
	}
	for _, key := range []string{"HugePages_Total", "MemAvailable"} { // no unit; missing
		if got := kiB(procFields(meminfo)[key]); got != 0 {
			t.Errorf("kiB(%s) = %d, want 0", key, got)
		}
	}
	arm := writeProc(t, "cpuinfo-arm", "processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\n")
	for path, want := range map[string]string{
		cpuinfo: "family 25 model 1 stepping 0, 2450 MHz",
		arm:     "",
		missing: "",
	} {
		if got := cpuDetail(procFields(path)); got != want {
			t.Errorf("cpuDetail(%s) = %q, want %q", filepath.Base(path), got, want)
		}
	}
}

func TestHost(t *testing.T) {
	h := host()
	if h.CPUs != runtime.NumCPU() || h.GOMAXPROCS != runtime.GOMAXPROCS(0) || h.Go != runtime.Version() || h.OS != runtime.GOOS+"/"+runtime.GOARCH {
		t.Errorf("host() = %+v", h)
	}
	if runtime.GOOS == "linux" && (h.MemoryBytes == 0 || h.Kernel == "" || runtimeRSS() == 0) {
		t.Errorf("on Linux: memory %d, kernel %q, peak RSS %d", h.MemoryBytes, h.Kernel, runtimeRSS())
	}
	for _, c := range []struct {
		h    HostReport
		want string
	}{
		{HostReport{CPU: "AMD EPYC", CPUDetail: "family 26 model 2 stepping 1, 2096 MHz", CPUs: 2, GOMAXPROCS: 2, MemoryBytes: 47 << 29, Kernel: "6.1.0",
			GCPercent: 400, MemoryLimitBytes: 8 << 30, Go: "go1.26.8", OS: "linux/amd64"},
			"AMD EPYC (family 26 model 2 stepping 1, 2096 MHz), 2 CPUs (GOMAXPROCS 2), 23.5 GiB, Linux 6.1.0, go1.26.8 linux/amd64, GOGC 400, memory limit 8192 MiB"},
		{HostReport{CPUs: 1, GOMAXPROCS: 1, GCPercent: -1, Go: "go1.26.8", OS: "darwin/arm64"},
			"1 CPU (GOMAXPROCS 1), go1.26.8 darwin/arm64, GOGC off"},
		{HostReport{CPUDetail: "2096 MHz", CPUs: 4, GOMAXPROCS: 2, GCPercent: 100, Go: "go1.26.8", OS: "linux/arm64"},
			"2096 MHz, 4 CPUs (GOMAXPROCS 2), go1.26.8 linux/arm64, GOGC 100"},
	} {
		if got := c.h.String(); got != c.want {
			t.Errorf("String() = %q, want %q", got, c.want)
		}
	}
}

// TestHostGOGC reads the collector's setting as it is, off included.
func TestHostGOGC(t *testing.T) {
	old := debug.SetGCPercent(-1)
	defer debug.SetGCPercent(old)
	if h := host(); h.GCPercent != -1 {
		t.Errorf("GOGC off: gc_percent %d, want -1", h.GCPercent)
	}
	debug.SetGCPercent(250)
	if h := host(); h.GCPercent != 250 {
		t.Errorf("GOGC 250: gc_percent %d", h.GCPercent)
	}
}
