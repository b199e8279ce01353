package units

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/procfile"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/testenv"
)

// A process that made its environment a 1 GiB mapping (prctl PR_SET_MM,
// which a process with CAP_SYS_RESOURCE in its user namespace can do):
// CaptureDaemon, and verifySame that checks a new daemon with it, refuse
// it after reading 256 KiB, at once and without the hook's memory
// growing by the gigabyte it would have read whole.
func TestCaptureDaemonBoundsEnviron(t *testing.T) {
	self, _ := os.Executable()
	cmd := exec.Command(self, "-test.run=^$")
	cmd.Env = []string{envHugeEnviron + "=1"}
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, _ := bufio.NewReader(out).ReadString('\n')
	if strings.TrimSpace(line) != "mapped" {
		t.Fatalf("the child did not map its environment: %q", line)
	}
	env, err := os.Stat("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/environ")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("child %d: environ mapped, stat size %d", cmd.Process.Pid, env.Size())

	// The peak resident size from here on: clear_refs 5 sets VmHWM to
	// the present resident size.
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		t.Fatalf("reset the peak resident size: %v", err)
	}
	rssBefore := testenv.SelfStatusKiB(t, "VmRSS")
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	allocBefore := ms.TotalAlloc
	start := time.Now()
	_, err = CaptureDaemon(cmd.Process.Pid)
	took := time.Since(start)
	runtime.ReadMemStats(&ms)
	alloc := ms.TotalAlloc - allocBefore
	growth := testenv.SelfStatusKiB(t, "VmHWM") - rssBefore
	t.Logf("CaptureDaemon: %v in %s, %d KiB allocated, peak resident size +%d KiB", err, took, alloc>>10, growth)

	const maxGrowth = 64 << 10 // KiB
	switch {
	case err == nil:
		t.Error("captured an environment of 1 GiB")
	case !errors.Is(err, procfile.ErrTooLarge) || !strings.Contains(err.Error(), "environ") || !strings.Contains(err.Error(), "256 KiB"):
		t.Errorf("err = %v, want one that names the environment and its bound of 256 KiB", err)
	}
	// At once: the bound stops the read, and the rest is never read (a
	// gigabyte takes seconds); the slowdown factor covers the test VM.
	if limit := testenv.Scale(2 * time.Second); took > limit {
		t.Errorf("CaptureDaemon took %s, want under %s", took, limit)
	}
	if alloc > maxGrowth<<10 {
		t.Errorf("CaptureDaemon allocated %d MiB, want under %d MiB", alloc>>20, maxGrowth>>10)
	}
	if growth > maxGrowth {
		t.Errorf("the peak resident size grew by %d MiB, want under %d MiB", growth>>10, maxGrowth>>10)
	}

	// The check of a new daemon reads it the same way.
	start = time.Now()
	err = verifySame(cmd.Process.Pid, &Daemon{})
	if limit := testenv.Scale(2 * time.Second); !errors.Is(err, procfile.ErrTooLarge) || time.Since(start) > limit {
		t.Errorf("verifySame: %v in %s, want the bound's refusal under %s", err, time.Since(start), limit)
	}
}
