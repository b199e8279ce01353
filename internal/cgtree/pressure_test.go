package cgtree

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/testenv"
)

// ready says whether a poll for POLLPRI on fd returns at once: what a
// pressure file without a trigger does for ever, and systemd spins on.
func ready(t *testing.T, fd int) bool {
	t.Helper()
	p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLPRI}}
	n, err := unix.Poll(p, 0)
	if err != nil {
		t.Fatal(err)
	}
	return n > 0
}

// A process's memory.pressure, opened for writing on a cgroup2 mount and
// without a trigger (as CRIU reopens it), gets the trigger again, on the
// same open file: a poll on it no longer returns at once. A second run
// finds it armed. A read-only open, a file of that name on another
// mount, and another process's files are left alone.
func TestRearmPressure(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.Skip(t, "needs root (pidfd_getfd on another process)")
	}
	mnts, err := mountinfo.GetMounts(mountinfo.FSTypeFilter("cgroup2"))
	if err != nil || len(mnts) == 0 {
		testenv.Skip(t, "needs a cgroup2 mount")
	}
	dir := filepath.Join(mnts[0].Mountpoint, fmt.Sprintf("arh-psi-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(dir) })
	file := filepath.Join(dir, "memory.pressure")
	rw, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		testenv.Skip(t, "no PSI in this kernel's cgroups: %v", err)
	}
	ro, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(t.TempDir(), "memory.pressure")
	if err := os.WriteFile(other, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	elsewhere, err := os.OpenFile(other, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	// The process holds them as fds 3, 4 and 5.
	cmd := exec.Command("sleep", "60")
	cmd.ExtraFiles = []*os.File{rw, ro, elsewhere}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for _, f := range []*os.File{rw, ro, elsewhere} {
		f.Close()
	}
	pidfd, err := unix.PidfdOpen(cmd.Process.Pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd)
	theirs, err := unix.PidfdGetfd(pidfd, 3, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(theirs)
	if !ready(t, theirs) {
		t.Fatal("a pressure file without a trigger does not poll ready: the kernel changed, and so did the reason for this code")
	}
	fi, err := proc.ReadFDInfo(cmd.Process.Pid, 3)
	if err != nil {
		t.Fatal(err)
	}
	mnt := fi.MntID
	r, err := RearmPressure([]int{cmd.Process.Pid, os.Getpid()}, map[int]bool{mnt: true})
	if err != nil || len(r.Armed) != 1 || r.Armed[0] != fmt.Sprintf("pid %d fd 3", cmd.Process.Pid) {
		t.Fatalf("rearmed %+v, err %v; want fd 3 of pid %d only", r, err, cmd.Process.Pid)
	}
	if ready(t, theirs) {
		t.Error("the pressure file still polls ready once its trigger was written")
	}
	r, err = RearmPressure([]int{cmd.Process.Pid}, map[int]bool{mnt: true})
	if err != nil || len(r.Armed) != 0 || r.Present != 1 {
		t.Errorf("second run: %+v, err %v; want the trigger found present", r, err)
	}
	// Not a mount of the container's cgroups: nothing is written.
	r, err = RearmPressure([]int{cmd.Process.Pid}, map[int]bool{mnt + 100000: true})
	if err != nil || len(r.Armed) != 0 || r.Present != 0 {
		t.Errorf("another mount id: %+v, err %v; want nothing done", r, err)
	}
}
