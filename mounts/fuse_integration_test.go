package mounts_test

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/fusetest"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/testenv"
	"github.com/autofs-restore-hook/autofs-restore-hook/mounts"
	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/door"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
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
	requireAutofs(t)
	m, p, points := startMaster(t, "a")
	if err := m.Remount(points[0]); err != nil {
		t.Fatal(err)
	}
	a := autofsAt(t, m.Pid, points[0])
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
		r, err := mounts.CatatonicThroughFDs(holder, []mounts.Target{{Where: points[0], Dev: a.Dev()}}, 5*time.Second, func(_ door.Level, s string) { t.Log(s) })
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
	if a := autofsAt(t, m.Pid, points[0]); !a.Options.Catatonic() {
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
	requireAutofs(t)
	m, _, points := startMaster(t, "a")
	a := autofsAt(t, m.Pid, points[0])
	pid, srv := fusetest.Held(t) // fd 3 is the FUSE file
	holder, err := proc.OpenProcess(pid)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	start := time.Now()
	err = mounts.CatatonicFDsChosen(pid, holder.StartTime, 3, a.Info.ID, points[0], 5*time.Second, func(_ door.Level, s string) { t.Log(s) })
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
	if a := autofsAt(t, m.Pid, points[0]); a.Options.Catatonic() {
		t.Fatal("the mount was made catatonic through a file that is not on it")
	}
	srv.Close()
	// The child, if it was left behind, ends once the server is gone.
	for deadline := time.Now().Add(testenv.Scale(10 * time.Second)); ; time.Sleep(50 * time.Millisecond) {
		if left := workersOfOurs(t); len(left) == 0 {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("workers still running after the FUSE server went away: %v", left)
		}
	}
}

// workersOfOurs lists our children that run a worker.
func workersOfOurs(t *testing.T) []int {
	t.Helper()
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := proc.ReadStat(pid)
		if err != nil || st.PPid != os.Getpid() {
			continue
		}
		b, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if strings.Contains(string(b), mounts.WorkerArg) {
			out = append(out, pid)
		}
	}
	return out
}
