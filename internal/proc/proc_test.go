package proc

import (
	"errors"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/testenv"
)

// pinnedSleep starts a child that sleeps and pins it; the pin is closed
// at the test's end, the child left to the test to kill and reap.
func pinnedSleep(t *testing.T) (*exec.Cmd, *Process) {
	t.Helper()
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p, err := OpenProcess(cmd.Process.Pid)
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return cmd, p
}

// A pid reused by another process after the hook pinned it is detected.
func TestProcessGoneAndReaped(t *testing.T) {
	cmd, p := pinnedSleep(t)
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
	init := testenv.InOwnPidNamespace(t, "sh", "-c", "sleep 300 & wait")
	sleeper := testenv.WaitChild(t, init)
	for _, p := range []int{init, sleeper} {
		got, err := InitOf(p)
		if err != nil || got != init {
			t.Errorf("InitOf(%d) = %d, %v; want %d", p, got, err, init)
		}
	}
}

// A pidfd taken when a process was started pins that process: its pid in
// our namespace comes from the pidfd, and once it is gone (reaped, so its
// pid may be anyone's) the pidfd says so instead of naming another.
func TestPinnedByPidfd(t *testing.T) {
	pidfd := -1
	cmd := exec.Command("sleep", "60")
	cmd.SysProcAttr = &syscall.SysProcAttr{PidFD: &pidfd}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(pidfd), "pidfd")
	defer f.Close()
	p, err := PinnedBy(f)
	if err != nil {
		t.Fatal(err)
	}
	if p.Pid != cmd.Process.Pid || p.Check() != nil {
		t.Fatalf("pinned pid %d (%v), started %d", p.Pid, p.Check(), cmd.Process.Pid)
	}
	p.Close()
	cmd.Process.Kill()
	cmd.Wait()
	if p, err := PinnedBy(f); !errors.Is(err, ErrGone) {
		t.Fatalf("a reaped process: %+v, %v; want ErrGone", p, err)
	}
}

// The status file of a pinned process reads its state and tracer while it
// lives; a zombie, and a process reaped (whose pid another may take), read
// as gone, never as another process.
func TestStatusFile(t *testing.T) {
	cmd, p := pinnedSleep(t)
	sf, err := p.OpenStatus()
	if err != nil {
		t.Fatal(err)
	}
	defer sf.Close()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		state, tracer, err := sf.State()
		if err != nil || tracer != 0 {
			t.Fatalf("live sleep: state %c, tracer %d, %v", state, tracer, err)
		}
		if state == 'S' {
			if name := string(sf.Name()); name != "sleep" {
				t.Fatalf("live sleep: name %q, want sleep", name)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sleep never sleeps: state %c", state)
		}
	}
	cmd.Process.Signal(syscall.SIGSTOP)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		if state, _, _ := sf.State(); state == 'T' {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a stopped process does not read as T")
		}
	}
	if err := p.Kill(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if state, _, err := sf.State(); !errors.Is(err, ErrGone) {
		t.Fatalf("zombie: state %c, %v; want ErrGone", state, err)
	}
	cmd.Wait()
	if state, _, err := sf.State(); !errors.Is(err, ErrGone) {
		t.Fatalf("reaped: state %c, %v; want ErrGone", state, err)
	}
}

func TestParseStat(t *testing.T) {
	s, err := ParseStat([]byte("42 (a (weird) name) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 123456 1000 10 18446744073709551615"))
	if err != nil {
		t.Fatal(err)
	}
	if s.Comm != "a (weird) name" || s.State != 'S' || s.PPid != 1 || s.PGrp != 42 || s.Session != 42 || s.StartTime != 123456 {
		t.Fatalf("got %+v", s)
	}
	for _, bad := range []string{"", "42 noparen", "42 (x) S 1"} {
		if _, err := ParseStat([]byte(bad)); err == nil {
			t.Errorf("ParseStat(%q) accepted", bad)
		}
	}
}
