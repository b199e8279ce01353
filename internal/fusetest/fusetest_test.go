package fusetest

import (
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/testenv"

	"golang.org/x/sys/unix"
)

// A server mounted in another process's mount namespace keeps its fd
// through garbage collections: the fd once went to the mount(8) child as
// an *os.File of its own, whose finalizer closed it under the server.
// The number, reused, then named another file of the test process that
// Close closed (seen: a later fork/exec of the e2e tests failing with
// EBADF).
func TestMountInANamespaceKeepsItsFD(t *testing.T) {
	testenv.RequireRoot(t, "mounts a FUSE file system")
	if _, err := os.Stat("/dev/fuse"); err != nil {
		testenv.Skip(t, "no /dev/fuse: %v", err)
	}
	target := filepath.Join(t.TempDir(), "fuse-file")
	if err := os.WriteFile(target, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// Our own namespace, entered through nsenter all the same.
	srv, err := Mount(target, Options{MntNSOf: os.Getpid(), Content: []byte("served")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close(); unix.Unmount(target, unix.MNT_DETACH) })
	for i := 0; i < 3; i++ {
		runtime.GC()
	}
	fdPath := "/proc/self/fd/" + strconv.Itoa(srv.fd)
	if l, err := os.Readlink(fdPath); err != nil || l != "/dev/fuse" {
		t.Fatalf("the server's fd %d after GC: %q, %v (want /dev/fuse)", srv.fd, l, err)
	}
	// And the server still serves through it.
	if b, err := os.ReadFile(target); err != nil || string(b) != "served" {
		t.Fatalf("read %s: %q, %v", target, b, err)
	}
}
