package mounts

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/testenv"
)

// A pid reused by another process after the hook pinned it is detected.
func TestProcessGoneAndReaped(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p, err := OpenProcess(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.Check(); err != nil {
		t.Fatalf("live process: %v", err)
	}
	if err := p.Kill(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	// Dead but not reaped: a zombie keeps its pid.
	if err := p.Check(); !errors.Is(err, ErrGone) {
		t.Fatalf("killed process: Check = %v, want ErrGone", err)
	}
	if err := p.WaitReaped(100 * time.Millisecond); err == nil {
		t.Fatal("WaitReaped returned before the parent reaped the zombie")
	}
	cmd.Wait()
	if err := p.WaitReaped(time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenProcess(cmd.Process.Pid); !errors.Is(err, ErrGone) {
		t.Fatalf("OpenProcess of a reaped pid: %v", err)
	}
	for _, bad := range []int{0, -1} {
		if _, err := OpenProcess(bad); err == nil {
			t.Errorf("OpenProcess(%d) accepted", bad)
		}
	}
}

// InitOf finds pid 1 of a process's pid namespace, from any member.
func TestInitOf(t *testing.T) {
	testenv.RequireRoot(t, "unshare of a pid namespace")
	cmd := exec.Command("unshare", "-p", "-m", "--fork", "--mount-proc", "sh", "-c", "sleep 300 & wait")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	kids := func(pid int) []int {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
		var out []int
		for _, f := range strings.Fields(string(b)) {
			n, _ := strconv.Atoi(f)
			out = append(out, n)
		}
		return out
	}
	var init, sleeper int
	for deadline := time.Now().Add(testenv.Scale(10 * time.Second)); sleeper == 0 && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if k := kids(cmd.Process.Pid); len(k) > 0 {
			init = k[0]
			if k := kids(init); len(k) > 0 {
				sleeper = k[0]
			}
		}
	}
	if sleeper == 0 {
		t.Fatal("the process tree in its own pid namespace did not start")
	}
	for _, p := range []int{init, sleeper} {
		got, err := InitOf(p)
		if err != nil || got != init {
			t.Errorf("InitOf(%d) = %d, %v; want %d", p, got, err, init)
		}
	}
}
