package fleetsim

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

func TestProcField(t *testing.T) {
	dir := t.TempDir()
	cpuinfo := filepath.Join(dir, "cpuinfo")
	os.WriteFile(cpuinfo, []byte("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu vme\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 7B13\n"), 0o600)
	meminfo := filepath.Join(dir, "meminfo")
	os.WriteFile(meminfo, []byte("MemTotal:       24683748 kB\nMemFree:         1000 kB\nHugePages_Total:       0\n"), 0o600)
	for _, c := range []struct {
		path, key, want string
	}{
		{cpuinfo, "model name", "AMD EPYC 7B13"},
		{cpuinfo, "vendor_id", "AuthenticAMD"},
		{cpuinfo, "model", ""}, // a prefix of a key is not the key
		{meminfo, "MemFree", "1000 kB"},
		{filepath.Join(dir, "missing"), "MemTotal", ""},
	} {
		if got := procField(c.path, c.key); got != c.want {
			t.Errorf("procField(%s, %q) = %q, want %q", filepath.Base(c.path), c.key, got, c.want)
		}
	}
	if got := procKiB(meminfo, "MemTotal"); got != 24683748*1024 {
		t.Errorf("procKiB(MemTotal) = %d", got)
	}
	for _, key := range []string{"HugePages_Total", "MemAvailable"} { // no unit; missing
		if got := procKiB(meminfo, key); got != 0 {
			t.Errorf("procKiB(%s) = %d, want 0", key, got)
		}
	}
}

func TestHost(t *testing.T) {
	h := host()
	if h.CPUs != runtime.NumCPU() || h.GOMAXPROCS != runtime.GOMAXPROCS(0) || h.Go != runtime.Version() || h.GCPercent == 0 {
		t.Errorf("host() = %+v", h)
	}
	if runtime.GOOS == "linux" && (h.MemoryBytes == 0 || runtimeRSS() == 0) {
		t.Errorf("on Linux: memory %d, peak RSS %d", h.MemoryBytes, runtimeRSS())
	}
	h = HostReport{CPU: "AMD EPYC", CPUs: 2, GOMAXPROCS: 2, MemoryBytes: 24 << 30, GCPercent: 400, MemoryLimitBytes: 8 << 30, Go: "go1.26.8", OS: "linux/amd64"}
	if got, want := h.String(), "AMD EPYC, 2 CPUs (GOMAXPROCS 2), 24 GiB, go1.26.8 linux/amd64, GOGC 400, memory limit 8192 MiB"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	h = HostReport{CPUs: 4, GOMAXPROCS: 1, GCPercent: -1, Go: "go1.26.8", OS: "darwin/arm64"}
	if got, want := h.String(), "4 CPUs (GOMAXPROCS 1), go1.26.8 darwin/arm64, GOGC off"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}
