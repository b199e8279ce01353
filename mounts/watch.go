package mounts

// A mount table kept open and waited on: the kernel marks an open
// mountinfo file (POLLPRI) when a mount changes the mount namespace it
// shows, so a wait for a new mount need not read the table every few
// milliseconds. The kernel clears the mark when a poll reports it,
// whoever polls: the file must stay out of the Go runtime's epoll
// (WatchTable), or that epoll takes the marks. Callers still bound each
// Wait, so that what the kernel does not signal (a process's exit, a
// unit's state, a daemon re-connecting to a catatonic autofs mount, which
// changes its options and no mount) is looked at: with a Backoff, since
// on a loaded node the thing waited for can take a minute, and a 10 ms
// look for that minute costs the node the CPU the container needs to get
// there.

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// TableWatch is one open mountinfo file of a process: Read parses it
// again, Wait sleeps until the mount namespace changes. A change the
// kernel marked after the file was opened and not yet waited for ends
// the next Wait at once, so a marked change between a Read and the
// following Wait is not lost.
type TableWatch struct {
	f    *os.File
	last time.Time // when the previous Read ended
}

// minWaitGap is the least time from the end of a Read to the end of the
// next Wait: a container that mounts and unmounts in a loop makes the
// hook read its table at most about this often, as the fixed poll this
// replaced did, not at the pace of its loop.
const minWaitGap = 2 * time.Millisecond

// WatchTable opens /proc/PID/mountinfo from the caller's side, like
// ReadTable: call it before joining any namespace.
func WatchTable(pid int) (*TableWatch, error) {
	// Not os.OpenFile: it puts a pollable file in the Go runtime's epoll,
	// and every poll of the file by that epoll takes the mark Wait looks
	// for (the kernel clears it when it reports it). An fd opened here is
	// blocking, and os.NewFile leaves a blocking fd out of the runtime's
	// epoll.
	path := "/proc/" + strconv.Itoa(pid) + "/mountinfo"
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("watch mount table of pid %d: %w", pid, err)
	}
	return &TableWatch{f: os.NewFile(uintptr(fd), path)}, nil
}

// WatchTable opens the mount table of the container's process through
// its /proc directory fd (see ReadTable).
func (n *InNS) WatchTable() (*TableWatch, error) {
	f, err := n.mountinfo()
	if err != nil {
		return nil, fmt.Errorf("watch: %w", err)
	}
	return &TableWatch{f: f}, nil
}

// Read parses the whole table as it is now.
func (w *TableWatch) Read() (*Table, error) {
	if _, err := w.f.Seek(0, 0); err != nil {
		return nil, fmt.Errorf("read %s: %w", w.f.Name(), err)
	}
	t, err := ParseTable(w.f)
	w.last = time.Now()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", w.f.Name(), err)
	}
	return t, nil
}

// Wait returns true as soon as a mount changed the namespace since the
// file was opened or since the previous Wait that returned true, and
// false when d passed without a change (at once for d of zero or less: a
// deadline already past). Callers that also wait for something the mount
// table does not show (a process's exit) keep d short and look again.
func (w *TableWatch) Wait(d time.Duration) (bool, error) {
	deadline := time.Now().Add(d)
	if gap := minWaitGap - time.Since(w.last); gap > 0 {
		time.Sleep(min(gap, d))
	}
	for {
		ms := int(time.Until(deadline).Milliseconds())
		if ms < 0 {
			ms = 0
		}
		fds := []unix.PollFd{{Fd: int32(w.f.Fd()), Events: unix.POLLPRI}}
		n, err := unix.Poll(fds, ms)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return false, fmt.Errorf("wait for %s: %w", w.f.Name(), err)
		case n > 0 && fds[0].Revents&(unix.POLLPRI|unix.POLLERR) != 0:
			return true, nil
		case n > 0 && fds[0].Revents&unix.POLLNVAL != 0:
			return false, fmt.Errorf("wait for %s: not pollable", w.f.Name())
		case ms == 0:
			return false, nil
		}
	}
}

// Backoff gives the bounds of successive waits for something the kernel
// does not signal: a 16th of the time since the first Next (or the first
// after a Reset), at least Min and at most Max. A thing that comes soon is
// seen soon after it comes; one that takes a minute, on a loaded node, is
// looked at a few times a second, not a hundred.
type Backoff struct {
	Min, Max time.Duration
	since    time.Time
}

// Next returns the bound of the next wait.
func (b *Backoff) Next() time.Duration { return b.next(time.Now()) }

func (b *Backoff) next(now time.Time) time.Duration {
	if b.since.IsZero() {
		b.since = now
	}
	return min(max(now.Sub(b.since)/16, b.Min), b.Max)
}

// Reset starts the time again (after a change, when the next thing may
// come soon).
func (b *Backoff) Reset() { b.since = time.Time{} }

// Close closes the file.
func (w *TableWatch) Close() error { return w.f.Close() }
