package hook

import (
	"os/exec"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
)

// watchResume says whether the init still had a tracer when pre-resume
// ended, and if not how long after its start the tracer let go: a real
// tracer (this test, by PTRACE_SEIZE) stands for CRIU.
func TestWatchResume(t *testing.T) {
	runtime.LockOSThread() // ptrace requests come from the thread that seized
	defer runtime.UnlockOSThread()
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	p, err := proc.OpenProcess(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	// Not traced: it runs already.
	if _, ran := watchResume(p)(); ran < 0 {
		t.Errorf("untraced process: ran after %s, want at once", ran)
	}

	if err := unix.PtraceSeize(cmd.Process.Pid); err != nil {
		t.Fatalf("PTRACE_SEIZE: %v", err)
	}
	// Traced for the whole step: the step ended inside the window.
	stop := watchResume(p)
	time.Sleep(20 * time.Millisecond)
	if took, ran := stop(); ran != -1 || took < 20*time.Millisecond {
		t.Errorf("traced throughout: took %s, ran after %s; want -1", took, ran)
	}
	// The tracer lets go during the step: seen, with when.
	stop = watchResume(p)
	time.Sleep(20 * time.Millisecond)
	if err := unix.PtraceInterrupt(cmd.Process.Pid); err != nil { // a tracee detaches from a stop
		t.Fatal(err)
	}
	var ws unix.WaitStatus
	if _, err := unix.Wait4(cmd.Process.Pid, &ws, unix.WALL, nil); err != nil || !ws.Stopped() {
		t.Fatalf("wait for the interrupted tracee: %v, status %v", err, ws)
	}
	if err := unix.PtraceDetach(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	if took, ran := stop(); ran < 20*time.Millisecond || ran > took {
		t.Errorf("detached 20 ms into a step of %s: ran after %s", took, ran)
	}
}
