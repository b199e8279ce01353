package units_test

import (
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/autofstest"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/door"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/fusetest"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/testenv"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/worker"
	"github.com/autofs-restore-hook/autofs-restore-hook/mounts"
	"github.com/autofs-restore-hook/autofs-restore-hook/units"
)

// autofsFDOf copies (pidfd_getfd) the test master's fd on the autofs mount
// a: safe, the file is the kernel's autofs.
func autofsFDOf(t *testing.T, p *proc.Process, a *mounts.Autofs) *os.File {
	t.Helper()
	fds, err := p.FDs()
	if err != nil {
		t.Fatal(err)
	}
	pidfd, err := unix.PidfdOpen(p.Pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd)
	for _, fd := range fds {
		if fd.MntID == a.Info.ID {
			n, err := unix.PidfdGetfd(pidfd, fd.N, 0)
			if err != nil {
				t.Fatal(err)
			}
			return os.NewFile(uintptr(n), "autofs")
		}
	}
	t.Fatalf("the master holds no fd on %s", a.Mountpoint())
	return nil
}

// A daemon that also holds a file of a FUSE server that stops answering
// (fd 3, before its autofs fd at 4): its mounts are made catatonic through
// its autofs fd all the same, and neither the hook nor its child waits
// on the FUSE file. The hook once copied every fd and fstatfs'ed it.
func TestCatatonicThroughFDsNeverTouchesFUSE(t *testing.T) {
	autofstest.Require(t)
	m, p, points := autofstest.Start(t, "a")
	if err := m.Remount(points[0]); err != nil {
		t.Fatal(err)
	}
	a := autofstest.At(t, m.Pid, points[0])
	af := autofsFDOf(t, p, a)
	pid, srv := fusetest.HeldIn(t, m.Pid, af)
	af.Close()
	holder, err := proc.OpenProcess(pid)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	type result struct {
		released []string
		err      error
	}
	done := make(chan result, 1)
	go func() {
		r, err := units.CatatonicThroughFDs(holder, []mounts.Target{{Where: points[0], Dev: a.Dev()}}, 5*time.Second, func(_ door.Level, s string, _ door.Fields) { t.Log(s) })
		done <- result{r, err}
	}()
	select {
	case r := <-done:
		if r.err != nil || len(r.released) != 1 || r.released[0] != points[0] {
			fds, _ := holder.FDs()
			var ids []int
			if tab, err := mounts.ReadTable(pid); err == nil {
				for _, a := range tab.Autofs {
					ids = append(ids, a.Info.ID)
				}
			}
			t.Fatalf("released %v (%v), want %s (mount %d; the holder's fds %+v, autofs mounts in its table %v)", r.released, r.err, points[0], a.Info.ID, fds, ids)
		}
	case <-time.After(testenv.Scale(20 * time.Second)):
		srv.Close()
		t.Fatalf("CatatonicThroughFDs waited 20 s on the FUSE file (left waiting: GETATTR %d, STATFS %d, FLUSH %d)",
			srv.Unanswered(fusetest.OpGetattr), srv.Unanswered(fusetest.OpStatfs), srv.Unanswered(fusetest.OpFlush))
	}
	if a := autofstest.At(t, m.Pid, points[0]); !a.Options.Catatonic() {
		t.Fatalf("mount not catatonic: %+v", a.Options)
	}
	for _, op := range []uint32{fusetest.OpGetattr, fusetest.OpStatfs, fusetest.OpFlush} {
		if n := srv.Unanswered(op); n > 0 {
			t.Fatalf("%d requests (opcode %d) reached the FUSE server: a file of the holder was touched", n, op)
		}
	}
}

// A process that swaps the chosen fd for a FUSE file between the choice
// and the copy: the copying child sees from its own fdinfo that the copy
// is not the autofs file, touches nothing of it and never closes it; the
// hook gets an error in time, with the child reported if its exit waits
// on the FUSE server, and the child is gone once the server is.
func TestCatatonicFDsRefusesSwappedFD(t *testing.T) {
	autofstest.Require(t)
	m, _, points := autofstest.Start(t, "a")
	a := autofstest.At(t, m.Pid, points[0])
	pid, srv := fusetest.Held(t) // fd 3 is the FUSE file
	holder, err := proc.OpenProcess(pid)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	start := time.Now()
	err = units.CatatonicFDsChosen(pid, holder.StartTime, 3, a.Info.ID, points[0], 5*time.Second, func(_ door.Level, s string, _ door.Fields) { t.Log(s) })
	took := time.Since(start)
	t.Logf("after %s: %v", took.Round(time.Millisecond), err)
	if err == nil || !strings.Contains(err.Error(), "no longer on") {
		t.Fatalf("want an error that the fd changed, got %v", err)
	}
	if took > testenv.Scale(10*time.Second) {
		t.Fatalf("the hook waited %s", took)
	}
	for _, op := range []uint32{fusetest.OpGetattr, fusetest.OpStatfs} {
		if n := srv.Unanswered(op); n > 0 {
			t.Fatalf("%d requests (opcode %d) reached the FUSE server from the child", n, op)
		}
	}
	if a := autofstest.At(t, m.Pid, points[0]); a.Options.Catatonic() {
		t.Fatal("the mount was made catatonic through a file that is not on it")
	}
	srv.Close()
	// The child, if it was left behind, ends once the server is gone.
	for deadline := time.Now().Add(testenv.Scale(10 * time.Second)); ; time.Sleep(50 * time.Millisecond) {
		if left := testenv.ChildrenRunning(worker.WorkerArg); len(left) == 0 {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("workers still running after the FUSE server went away: %v", left)
		}
	}
}

// testCatatonic makes the targets catatonic in a worker, as the hook's
// pre-resume does.
var testCatatonic = worker.NewTask("test-catatonic", func(env *worker.Env, targets []mounts.Target, _ door.Logf) ([]mounts.TargetResult, error) {
	return env.MakeCatatonic(targets), nil
})

// A remounted (new device) mount makes an access hang, as after a restore;
// a blocked requester is released through the fd its master holds.
func TestStaleMountHangsAndIsReleased(t *testing.T) {
	autofstest.Require(t)
	m, p, points := autofstest.Start(t, "a")
	if err := m.Remount(points[0]); err != nil {
		t.Fatal(err)
	}
	a := autofstest.At(t, m.Pid, points[0])
	req, err := m.Access(points[0])
	if err != nil {
		t.Fatal(err)
	}
	if w := autofstest.WaitWchan(req, "autofs_wait", 3*time.Second); w != "autofs_wait" {
		t.Fatalf("hang not reproduced: requester %d in %q, want autofs_wait", req, w)
	}
	// A walk from the host pid namespace fails instead of waiting: the
	// worker reports an error within its deadline, and does not hang.
	start := time.Now()
	res, err := testCatatonic.Run(p, []mounts.Target{{Where: points[0], Dev: a.Dev()}}, 5*time.Second, func(_ door.Level, s string, _ door.Fields) { t.Log(s) })
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 1 || res[0].Error == "" {
		t.Fatalf("OPENMOUNT through a path with a request pending should fail, got %+v", res)
	}
	t.Logf("path walk with a request pending failed in %s: %s", time.Since(start), res[0].Error)
	ctl, err := mounts.OpenControlDevice()
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	got, err := units.CatatonicThroughFDs(p, []mounts.Target{{Where: points[0], Dev: a.Dev()}}, 5*time.Second, func(_ door.Level, s string, _ door.Fields) { t.Log(s) })
	if err != nil || len(got) != 1 {
		t.Fatalf("released %v (%v), want %s", got, err, points[0])
	}
	if a := autofstest.At(t, m.Pid, points[0]); !a.Options.Catatonic() {
		t.Fatalf("mount not catatonic: %+v", a.Options)
	}
	release, wakes := catatonicWakesWaiters()
	if wakes {
		if w := autofstest.WaitWchan(req, "", 3*time.Second); w != "" {
			t.Fatalf("requester %d still in %q after the mount was made catatonic (kernel %s)", req, w, release)
		}
		return
	}
	// Kernel 6.1 (Debian 12): catatonic mode wakes the queue with
	// wake_up_interruptible, but requesters sleep killable, so one that
	// waits already stays asleep. Later accesses must fail at once, and
	// SIGKILL must still end the sleeper.
	if w := autofstest.WaitWchan(req, "", time.Second); w != "autofs_wait" {
		t.Fatalf("kernel %s: requester %d in %q after catatonic; this kernel was known to leave it in autofs_wait: "+
			"if it now wakes it, catatonicWakesWaiters must say so", release, req, w)
	}
	if req2, err := m.Access(points[0]); err == nil {
		if w := autofstest.WaitWchan(req2, "", 3*time.Second); w != "" {
			t.Fatalf("an access after catatonic is in %q, want it to fail at once", w)
		}
	}
	if err := syscall.Kill(req, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if w := autofstest.WaitWchan(req, "", 3*time.Second); w != "" {
		t.Fatalf("requester %d still in %q after SIGKILL", req, w)
	}
	t.Logf("kernel %s: the requester that already waited stayed in autofs_wait after catatonic until SIGKILL; a later access failed at once", release)
}

// catatonicWakesWaiters reports whether this kernel's autofs wakes the
// requesters already waiting when a mount becomes catatonic. Debian 12's
// 6.1 kernels do not: autofs_catatonic_mode calls __wake_up with
// TASK_INTERRUPTIBLE (seen in the disassembly of 6.1.0-57's autofs4.ko),
// while autofs_wait sleeps TASK_KILLABLE. Debian 13's 6.12 wakes them
// (TASK_NORMAL), as does 6.18.
func catatonicWakesWaiters() (release string, ok bool) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "?", true
	}
	release = unix.ByteSliceToString(u.Release[:])
	return release, !strings.HasPrefix(release, "6.1.")
}
