package units

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/door"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/fusetest"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/testenv"
)

// The record of a process (this test's own) leads back to files with the
// very identities it names; a record whose binary, working directory or
// namespace no process has is refused, never approximated.
func TestFilesLikePending(t *testing.T) {
	testenv.RequireRoot(t, "reads /proc/PID/ns of other processes")
	p, proc, files := ownPending(t)
	got, err := filesLike(proc, p, testenv.Scale(5*time.Second))
	if err != nil {
		t.Fatalf("files like our own: %v", err)
	}
	if len(got) != len(daemonFileNames) {
		t.Errorf("%d files, want %d", len(got), len(daemonFileNames))
	}
	for n, f := range got {
		a, _ := fileID(f)
		b, _ := fileID(files[n])
		if a != b {
			t.Errorf("%s: %+v, want %+v", n, a, b)
		}
	}
	closeNamed(got)

	tests := []struct {
		name string
		mod  func(p *Pending)
		want string
	}{
		{"binary replaced", func(p *Pending) { p.Exe.Ino++ }, "no process of the container"},
		{"working directory replaced", func(p *Pending) { p.Cwd.Ino++ }, "no process of the container"},
		{"namespace gone", func(p *Pending) { p.NS["net"]++ }, "no process of the container"},
		{"binary removed", func(p *Pending) {
			d := *p.Daemon
			d.Exe = "/nonexistent/automount"
			p.Daemon = &d
		}, "/nonexistent/automount in the container"},
	}
	for _, tt := range tests {
		q := *p
		q.NS = map[string]uint64{}
		for k, v := range p.NS {
			q.NS[k] = v
		}
		tt.mod(&q)
		files, err := filesLike(proc, &q, testenv.Scale(5*time.Second))
		closeNamed(files)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err %v, want %q", tt.name, err, tt.want)
		}
	}
}

// A record whose working directory lies below a FUSE directory whose
// server answers nothing (a container can mount one over the path): the
// retried respawn gives up by its deadline, and the walk never happens in
// the hook's own process. It once opened the path in the hook (openat2),
// where the lookup waits on the server for good.
func TestFilesLikeNeverWaitsOnTheContainersPaths(t *testing.T) {
	testenv.RequireRoot(t, "a FUSE mount")
	p, proc, _ := ownPending(t)
	dir, srv := fusetest.SilentDir(t)
	d := *p.Daemon
	d.Cwd = dir + "/var/lib/automount"
	p.Daemon = &d

	const timeout = 2 * time.Second
	start := time.Now()
	done := make(chan error, 1)
	go func() {
		got, err := filesLike(proc, p, timeout)
		closeNamed(got)
		done <- err
	}()
	select {
	case err := <-done:
		took := time.Since(start)
		t.Logf("after %s: %v", took.Round(time.Millisecond), err)
		if err == nil {
			t.Fatal("opened a working directory below a FUSE directory that answers nothing")
		}
		// The child's deadline, then SIGKILL and the exit grace twice.
		if limit := timeout + 2*door.ExitGrace + testenv.Scale(2*time.Second); took > limit {
			t.Fatalf("gave up after %s, want at most %s", took, limit)
		}
	case <-time.After(testenv.Scale(30 * time.Second)):
		srv.Close()
		t.Fatalf("filesLike waited 30 s on the FUSE directory (LOOKUP left waiting: %d)", srv.Unanswered(fusetest.OpLookup))
	}
	if srv.Seen(fusetest.OpLookup) == 0 {
		t.Fatal("no LOOKUP reached the server: the test did not exercise the walk")
	}
}

// ownPending is the record of this test process as if it were a daemon
// about to be killed, the process pinned, and the files the record was
// made from (closed when the test ends).
func ownPending(t *testing.T) (*Pending, *proc.Process, door.Files) {
	t.Helper()
	self := os.Getpid()
	info, err := CaptureDaemon(self)
	if err != nil {
		t.Fatal(err)
	}
	files, err := openDaemonFiles(self)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeNamed(files) })
	p, err := newPending(self, info, nil, files)
	if err != nil {
		t.Fatal(err)
	}
	proc, err := proc.OpenProcess(self)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proc.Close() })
	return p, proc, files
}
