package mounts

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/testenv"
	"golang.org/x/sys/unix"
)

// inPrivateMountNS runs f on a thread of its own in a new mount namespace
// whose mounts propagate nowhere; the thread dies afterwards.
func inPrivateMountNS(t *testing.T, f func()) {
	t.Helper()
	testenv.RequireRoot(t, "mount namespaces")
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		// Back in our namespace at the end: a locked goroutine that ends
		// on the main thread wedges it instead of ending it, and
		// /proc/self is the main thread's view.
		home, err := os.Open("/proc/thread-self/ns/mnt")
		if err != nil {
			t.Errorf("open our mount namespace: %v", err)
			return
		}
		defer home.Close()
		defer unix.Setns(int(home.Fd()), unix.CLONE_NEWNS)
		if err := unix.Unshare(unix.CLONE_FS | unix.CLONE_NEWNS); err != nil {
			t.Errorf("unshare: %v", err)
			return
		}
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			t.Errorf("make mounts private: %v", err)
			return
		}
		f()
	}()
	<-done
}

// The staging tmpfs goes only on a root-owned directory closed to others,
// reached through no symlink: a place the container prepared (a symlink
// to elsewhere, a directory one of its users owns or may write) is
// refused, and nothing is mounted there.
func TestStagingRefusesPreparedPlace(t *testing.T) {
	dir := t.TempDir()
	elsewhere := filepath.Join(dir, "elsewhere")
	os.Mkdir(elsewhere, 0o700)
	for _, tc := range []struct {
		name    string
		prepare func(base string) error
		want    string // "" = staging mounted
	}{
		{"fresh", func(string) error { return nil }, ""},
		{"root-owned directory", func(b string) error { return os.Mkdir(b, 0o700) }, ""},
		{"symlink", func(b string) error { return os.Symlink(elsewhere, b) }, "not a directory"},
		{"a user's directory", func(b string) error {
			if err := os.Mkdir(b, 0o700); err != nil {
				return err
			}
			return os.Chown(b, 1000, 1000)
		}, "not a root-owned directory"},
		{"writable by others", func(b string) error {
			if err := os.Mkdir(b, 0o700); err != nil {
				return err
			}
			return os.Chmod(b, 0o777)
		}, "not a root-owned directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-"))
			if err := tc.prepare(base); err != nil {
				t.Fatal(err)
			}
			inPrivateMountNS(t, func() {
				s, err := openStagingAt(base, func(StagingEvent) error { return nil })
				if tc.want == "" {
					if err != nil {
						t.Errorf("staging on %s: %v", base, err)
						return
					}
					var sf unix.Statfs_t
					if unix.Statfs(base, &sf); sf.Type != unix.TMPFS_MAGIC {
						t.Errorf("no tmpfs on %s", base)
					}
					if err := s.Close(); err != nil {
						t.Error(err)
					}
					return
				}
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("err = %v, want %q", err, tc.want)
				}
				var sf unix.Statfs_t
				if unix.Statfs(elsewhere, &sf) == nil && sf.Type == unix.TMPFS_MAGIC {
					t.Errorf("a tmpfs was mounted through the symlink")
				}
			})
		})
	}
}
