package cgtree

// Pressure triggers: systemd 254 and later (PID 1, and every sd-event
// daemon such as journald) open their cgroup's memory.pressure for
// writing, write a PSI trigger on it and poll it. CRIU reopens the file
// but cannot write the trigger again (the kernel does not show it), and a
// pressure file without a trigger is always ready: the restored systemd
// then spins on it, a whole CPU (seen with systemd 257 on Debian 13).
// RearmPressure writes the trigger again on the same open file, through
// pidfd_getfd, while CRIU still holds the tasks.

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
)

// DefaultMemoryPressureTrigger is systemd's default trigger (sd-event's
// when the unit sets no threshold): "some", 200 ms in a 2 s window
// (MEMORY_PRESSURE_DEFAULT_*), with the terminating NUL it writes.
const DefaultMemoryPressureTrigger = "some 200000 2000000\x00"

// MaxFDs bounds the fds of one process looked at.
const MaxFDs = 4096

// Rearmed is what RearmPressure did.
type Rearmed struct {
	Armed   []string // "pid N fd M"
	Present int      // files that had a trigger already (EBUSY)
}

// RearmPressure writes DefaultMemoryPressureTrigger again on every
// memory.pressure file that a process of pids has open for writing on
// one of the cgroup2 mounts (their mount ids) of the container. A unit
// with its own MemoryPressureThresholdSec= gets systemd's default too:
// its environment (MEMORY_PRESSURE_WRITE) is not read, since reading it
// reads the process's memory, which a mapping of a FUSE file can make
// block while CRIU holds the tasks. The paths and fd tables are the
// container's: at most MaxProcesses processes and MaxFDs fds each are
// looked at, each read is bounded, and a file is written only once our
// own dup of it shows it on one of those mounts (nothing is asked of
// another file system, a FUSE one say).
func RearmPressure(pids []int, cgroupMounts map[int]bool) (Rearmed, error) {
	var r Rearmed
	var errs []error
	if len(pids) > MaxProcesses {
		errs = append(errs, fmt.Errorf("%d processes: only the first %d looked at", len(pids), MaxProcesses))
		pids = pids[:MaxProcesses]
	}
	for _, pid := range pids {
		if err := rearmProcess(pid, cgroupMounts, &r); err != nil && len(errs) < 10 {
			errs = append(errs, fmt.Errorf("pid %d: %w", pid, err))
		}
	}
	return r, errors.Join(errs...)
}

// MaxProcesses bounds the processes RearmPressure looks at.
const MaxProcesses = 4096

func rearmProcess(pid int, cgroupMounts map[int]bool, r *Rearmed) error {
	dir := "/proc/" + strconv.Itoa(pid) + "/"
	f, err := os.Open(dir + "fd")
	if err != nil {
		return nil // gone, or not ours to look at
	}
	ents, _ := f.Readdirnames(MaxFDs)
	f.Close()
	var want []int
	for _, e := range ents {
		fd, err := strconv.Atoi(e)
		if err != nil {
			continue
		}
		target, err := os.Readlink(dir + "fd/" + e)
		if err != nil || !strings.HasSuffix(target, "/memory.pressure") {
			continue
		}
		fi, err := proc.ReadFDInfo(pid, fd)
		if err != nil || !fi.Writable() || !cgroupMounts[fi.MntID] {
			continue
		}
		want = append(want, fd)
	}
	if len(want) == 0 {
		return nil
	}
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return err
	}
	defer unix.Close(pidfd)
	var errs []error
	for _, fd := range want {
		nfd, err := unix.PidfdGetfd(pidfd, fd, 0)
		if err != nil {
			errs = append(errs, fmt.Errorf("fd %d: get it: %w", fd, err))
			continue
		}
		// Ours now: the file we write is the one our fdinfo shows.
		fi, err := proc.OwnFD(nfd)
		switch {
		case err != nil || !fi.Writable() || !cgroupMounts[fi.MntID]:
			errs = append(errs, fmt.Errorf("fd %d: no longer a memory.pressure file of the container's cgroups", fd))
		default:
			_, werr := unix.Write(nfd, []byte(DefaultMemoryPressureTrigger))
			switch {
			case werr == nil:
				r.Armed = append(r.Armed, fmt.Sprintf("pid %d fd %d", pid, fd))
			case errors.Is(werr, unix.EBUSY):
				r.Present++
			default:
				errs = append(errs, fmt.Errorf("fd %d: write its trigger %q: %w", fd, strings.TrimRight(DefaultMemoryPressureTrigger, "\x00"), werr))
			}
		}
		unix.Close(nfd)
	}
	return errors.Join(errs...)
}
