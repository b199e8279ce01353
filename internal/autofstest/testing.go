package autofstest

// Helpers for the tests that use a test master.

import (
	"path/filepath"
	"testing"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/testenv"
	"github.com/autofs-restore-hook/autofs-restore-hook/mounts"
)

// Require skips t where real autofs cannot be used (see Available).
func Require(t testing.TB) {
	t.Helper()
	if ok, why := Available(); !ok {
		testenv.Skip(t, "INTEGRATION (%s): real autofs tests need root and /dev/autofs (make test runs them in the test VM)", why)
	}
}

// Start starts a test master serving a direct mount at each of names
// (in a directory of t's), pinned; both go at t's end. It returns the
// master, its process and the mount points.
func Start(t testing.TB, names ...string) (*Master, *proc.Process, []string) {
	t.Helper()
	dir := t.TempDir()
	var points []string
	for _, n := range names {
		points = append(points, filepath.Join(dir, n))
	}
	m, err := StartMaster(points...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)
	p, err := proc.OpenProcess(m.Pid)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return m, p, points
}

// At is the autofs mount at point in pid's mount table.
func At(t testing.TB, pid int, point string) *mounts.Autofs {
	t.Helper()
	tab, err := mounts.ReadTable(pid)
	if err != nil {
		t.Fatal(err)
	}
	a := tab.Find(point)
	if a == nil {
		t.Fatalf("no autofs mount at %s in pid %d", point, pid)
	}
	return a
}
