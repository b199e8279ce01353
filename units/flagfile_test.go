package units

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/fusetest"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/testenv"
)

// mntID is the mount id of path (statx).
func mntID(t testing.TB, path string) uint64 {
	t.Helper()
	var st unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, path, unix.AT_STATX_DONT_SYNC, unix.STATX_MNT_ID, &st); err != nil {
		t.Fatal(err)
	}
	return st.Mnt_id
}

// flagRoot makes a container-like root: a directory with run/ on a tmpfs
// of its own; it returns the root and an O_PATH fd of it.
func flagRoot(t testing.TB) (string, int) {
	t.Helper()
	testenv.RequireRoot(t, "mounts a tmpfs and FUSE")
	root := t.TempDir()
	run := filepath.Join(root, "run")
	if err := os.Mkdir(run, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", run, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(run, unix.MNT_DETACH) })
	fd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return root, fd
}

// The flag file that names the killed daemon goes, one naming another
// process stays, and so does one on a mount that is not allowed.
func TestRemoveStaleFlag(t *testing.T) {
	root, fd := flagRoot(t)
	flag := filepath.Join(root, "run", "autofs-running")
	allowed := []uint64{mntID(t, root), mntID(t, filepath.Join(root, "run"))}
	for _, c := range []struct {
		name    string
		content string
		allowed []uint64
		gone    bool
	}{
		{"names the killed daemon", "1234\n", allowed, true},
		{"names another process", "99\n", allowed, false},
		{"its mount is not allowed", "1234\n", allowed[:1], false},
		{"too long to be a flag file", "1234" + strings.Repeat(" ", 40), allowed, false},
	} {
		if err := os.WriteFile(flag, []byte(c.content), 0o644); err != nil {
			t.Fatal(err)
		}
		note := removeStaleFlag(fd, 1234, c.allowed)
		_, err := os.Stat(flag)
		if gone := os.IsNotExist(err); gone != c.gone {
			t.Errorf("%s: removed %t, want %t (note %q)", c.name, gone, c.gone, note)
		}
		t.Logf("%s: %q", c.name, note)
	}
	// A symlink is never followed: /run/autofs-running -> a file that
	// names the killed daemon stays, and so does its target.
	target := filepath.Join(root, "target")
	os.WriteFile(target, []byte("1234\n"), 0o644)
	os.Remove(flag)
	if err := os.Symlink("/target", flag); err != nil {
		t.Fatal(err)
	}
	note := removeStaleFlag(fd, 1234, allowed)
	if _, err := os.Lstat(flag); err != nil {
		t.Errorf("the symlink was removed (note %q)", note)
	}
	if _, err := os.Stat(target); err != nil {
		t.Errorf("the symlink's target was removed (note %q)", note)
	}
}

// A FUSE file over the flag file, or a FUSE /run, whose server answers
// nothing: removeStaleFlag returns at once and asks the server nothing. A
// plain open of the file, as the stage did before, waits (and its close
// would wait for a FLUSH that no signal ends).
func TestRemoveStaleFlagNeverAsksFUSE(t *testing.T) {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		testenv.Skip(t, "no /dev/fuse: %v", err)
	}
	silent := func(op, _ uint32) bool { return op == fusetest.OpInit }
	t.Run("file", func(t *testing.T) {
		root, fd := flagRoot(t)
		flag := filepath.Join(root, "run", "autofs-running")
		if err := os.WriteFile(flag, []byte("1234\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		allowed := []uint64{mntID(t, root), mntID(t, filepath.Join(root, "run"))}
		srv, err := fusetest.Mount(flag, fusetest.Options{Answer: silent, Content: []byte("1234\n")})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { srv.Close(); unix.Unmount(flag, unix.MNT_DETACH) })
		// The hazard: a plain open waits on the server.
		opened := make(chan struct{})
		go func() {
			if f, err := unix.Open(flag, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0); err == nil {
				unix.Close(f)
			}
			close(opened)
		}()
		select {
		case <-opened:
			t.Fatalf("a plain open of the FUSE flag file returned: the server was meant to leave it waiting")
		case <-time.After(testenv.Scale(time.Second)):
		}
		noteAndNoRequest(t, srv, func() string { return removeStaleFlag(fd, 1234, allowed) })
	})
	t.Run("dir", func(t *testing.T) {
		testenv.RequireRoot(t, "mounts a tmpfs and FUSE")
		root := t.TempDir()
		run := filepath.Join(root, "run")
		if err := os.Mkdir(run, 0o755); err != nil {
			t.Fatal(err)
		}
		srv, err := fusetest.Mount(run, fusetest.Options{Dir: true, Answer: silent})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { srv.Close(); unix.Unmount(run, unix.MNT_DETACH) })
		fd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		noteAndNoRequest(t, srv, func() string { return removeStaleFlag(fd, 1234, []uint64{mntID(t, root)}) })
	})
}

func noteAndNoRequest(t *testing.T, srv *fusetest.Server, f func() string) {
	t.Helper()
	ops := []uint32{fusetest.OpLookup, fusetest.OpGetattr, fusetest.OpOpen, fusetest.OpFlush}
	before := make([]int, len(ops))
	for i, op := range ops {
		before[i] = srv.Seen(op)
	}
	done := make(chan string, 1)
	start := time.Now()
	go func() { done <- f() }()
	select {
	case note := <-done:
		t.Logf("returned in %v: %q", time.Since(start).Round(time.Microsecond), note)
		if !strings.Contains(note, "left alone") {
			t.Errorf("the note does not say the flag file was left alone: %q", note)
		}
	case <-time.After(testenv.Scale(5 * time.Second)):
		t.Fatalf("removeStaleFlag waited 5 s on the FUSE server (requests waiting: %v)", srv.UnansweredAll())
	}
	time.Sleep(50 * time.Millisecond) // a request, if one was sent, is read by then
	for i, op := range ops {
		if n := srv.Seen(op) - before[i]; n > 0 {
			t.Errorf("removeStaleFlag asked the server %d time(s) (opcode %d)", n, op)
		}
	}
}
