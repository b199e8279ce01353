package units

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/fusetest"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/testenv"
	"golang.org/x/sys/unix"
)

// The check that no fd of ours reached the new daemon never copies a file
// of the daemon: one on a FUSE server that does not answer (a container's
// own) once hung it for good, in the FLUSH of the copy's close.
func TestLeakedFDsNeverTouchesFUSE(t *testing.T) {
	ours, err := os.CreateTemp(t.TempDir(), "ours")
	if err != nil {
		t.Fatal(err)
	}
	defer ours.Close()
	other, err := os.CreateTemp(t.TempDir(), "other")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	pid, srv := fusetest.Held(t, ours, other)
	type result struct {
		fds []int
		err error
	}
	done := make(chan result, 1)
	go func() { fds, err := leakedFDs(pid, []*os.File{ours}); done <- result{fds, err} }()
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatal(r.err)
		}
		if !slices.Equal(r.fds, []int{4}) {
			t.Fatalf("leaked fds %v, want [4] (our file, and not the other one at 5)", r.fds)
		}
	case <-time.After(testenv.Scale(10 * time.Second)):
		srv.Close() // releases the check, so that the test can end
		t.Fatalf("the fd check waited on the FUSE file for 10 s (requests left waiting: GETATTR %d, FLUSH %d, STATFS %d)",
			srv.Unanswered(fusetest.OpGetattr), srv.Unanswered(fusetest.OpFlush), srv.Unanswered(fusetest.OpStatfs))
	}
	if n := srv.Unanswered(fusetest.OpFlush) + srv.Unanswered(fusetest.OpGetattr) + srv.Unanswered(fusetest.OpStatfs); n > 0 {
		t.Fatalf("%d requests to the FUSE server from the check: it touched the file", n)
	}
}

// The daemon's stdio files are opened again as the daemon: a non-root
// daemon does not get a root-only file, and a path that was swapped for a
// symlink (to anything) gives /dev/null; root gets its own file.
func TestOpenStdioAsTheDaemon(t *testing.T) {
	testenv.RequireRoot(t, "opening files as another user")
	dir := t.TempDir()
	for _, d := range []string{dir, filepath.Dir(dir)} { // nobody walks there
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	secret, log := filepath.Join(dir, "secret"), filepath.Join(dir, "log")
	if err := os.WriteFile(secret, []byte("root only"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(log, nil, 0o666); err != nil || os.Chmod(log, 0o666) != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(log, link); err != nil {
		t.Fatal(err)
	}
	nobody := uint32(65534)
	for _, tc := range []struct {
		name string
		uid  uint32
		want [3]string
	}{
		{"nobody", nobody, [3]string{"/dev/null", "/dev/null", log}},
		{"root", 0, [3]string{secret, "/dev/null", log}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ids := []uint32{tc.uid, tc.uid, tc.uid, tc.uid}
			d := &Daemon{UID: ids, GID: ids, Stdio: [3]string{secret, link, log}, CapEff: 0x1ffffffffff}
			if tc.uid != 0 {
				d.CapEff = 0
			}
			files, warnings, err := openStdio(d, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			for i, f := range files {
				if fl, err := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0); err != nil || fl&unix.O_NONBLOCK != 0 {
					t.Errorf("stdio %d is non-blocking (flags %#o, %v): the daemon's writes would fail with EAGAIN", i, fl, err)
				}
				got, _ := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", f.Fd()))
				f.Close()
				if got != tc.want[i] {
					t.Errorf("stdio %d (%s): opened %s, want %s", i, d.Stdio[i], got, tc.want[i])
				}
			}
			t.Logf("warnings: %q", warnings)
		})
	}
}

// A daemon that maps a file of a FUSE server that stops answering over the
// memory its command line is read from: the capture does not wait. The
// kernel reads /proc/PID/cmdline and environ from anonymous memory only
// (FOLL_ANON, since Linux 4.17), so the read is refused without a request
// to the server; this test keeps the hook honest on every kernel of the
// matrix.
func TestCaptureDaemonNeverWaitsOnItsMemory(t *testing.T) {
	testenv.RequireRoot(t, "a FUSE mount")
	if _, err := os.Stat("/dev/fuse"); err != nil {
		testenv.Skip(t, "no /dev/fuse: %v", err)
	}
	target := filepath.Join(t.TempDir(), "argv-page")
	if err := os.WriteFile(target, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var f fusetest.Friendly
	srv, err := fusetest.Mount(target, fusetest.Options{Answer: f.Answer, Content: bytes.Repeat([]byte("A"), os.Getpagesize())})
	if err != nil {
		t.Fatal(err)
	}
	self, _ := os.Executable()
	cmd := exec.Command(self, "-test.run=^$")
	cmd.Env = []string{envMapArgv + "=" + target}
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close(); cmd.Process.Kill(); cmd.Wait(); unix.Unmount(target, unix.MNT_DETACH) })
	line, _ := bufio.NewReader(out).ReadString('\n')
	if strings.Contains(line, "PR_SET_MM") && strings.Contains(line, "not permitted") {
		testenv.Skip(t, "no CAP_SYS_RESOURCE here (prctl PR_SET_MM): %s", strings.TrimSpace(line))
	}
	if strings.TrimSpace(line) != "mapped" {
		t.Fatalf("the holder did not map its command line: %q", line)
	}
	f.Turn()
	done := make(chan error, 1)
	go func() { _, err := CaptureDaemon(cmd.Process.Pid); done <- err }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("captured a command line that lives in a FUSE file")
		}
		t.Logf("capture refused: %v", err)
	case <-time.After(testenv.Scale(20 * time.Second)):
		srv.Close()
		t.Fatalf("CaptureDaemon waited 20 s on the FUSE-backed command line (READ left waiting: %d)", srv.Unanswered(fusetest.OpRead))
	}
	if n := srv.Unanswered(fusetest.OpRead); n > 0 {
		t.Fatalf("%d READ requests reached the FUSE server from the capture", n)
	}
}
