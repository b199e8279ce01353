package units

// RespawnAutomount: the orchestration, in the hook's process, of replacing
// a restored automount daemon (release, kill, start again, wait, check).

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/door"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/failpoint"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
	"github.com/autofs-restore-hook/autofs-restore-hook/mounts"
)

// RespawnOptions tune RespawnAutomount.
type RespawnOptions struct {
	Timeout time.Duration
	// Deadline, when set, is the end of the whole run (one fix of one
	// container): the respawn ends by it too, whatever Timeout says.
	Deadline time.Time
	Log      door.Logf
	// BeforeKill, when set, gets the record of the daemon right before it
	// is killed; an error stops the respawn with the daemon untouched.
	// A caller keeps the record so that RetryRespawn can start the daemon
	// if the new one does not come up.
	BeforeKill func(*Pending) error
	// Also are the daemon's other mounts, which need no release (an
	// indirect mount does not cache its device): the kill leaves them
	// masterless all the same, so the respawn waits for the new daemon to
	// take them over too.
	Also []mounts.Target
}

// Respawned is the outcome of RespawnAutomount.
type Respawned struct {
	// Pid is the new daemon's pid in the host's numbering.
	Pid int
	// Devs are the devices of the mounts it serves now.
	Devs []uint64
	// StageCaps are the bounding and permitted sets of the spawner stage
	// that ran in the container (the daemon's bounding set at most).
	StageCaps string
}

// RespawnAutomount replaces the automount daemon of the container c:
// it captures how the daemon runs, makes its stale mounts catatonic
// (releasing anything waiting on them, through the daemon's own ioctl fds
// where it holds them), kills it with SIGKILL (its SIGTERM path tears
// mounts down through stale devices), starts it again with the same
// command line, environment, working directory, credentials and
// capabilities in all of the container's namespaces and cgroups, and waits
// until every target, and every mount of o.Also, has a live master again.
//
// daemon is the daemon as it was seen when it was chosen: a pid that
// names another process by now (the daemon exited while the container's
// systemd was being answered, and the pid was reused) is refused, never
// killed.
func RespawnAutomount(c *proc.Process, daemon proc.Ref, targets []mounts.Target, o RespawnOptions) (*Respawned, error) {
	pid := daemon.Pid
	deadline := o.deadline()
	// The checks before the kill share half of the time, together: the
	// kill, the start and the wait for the new daemon keep the other half.
	beforeKill := time.Now().Add(time.Until(deadline) / 2)
	if !time.Now().Before(beforeKill) {
		return nil, fmt.Errorf("respawn automount %d: the run's deadline has passed: not touched", pid)
	}
	d, err := daemon.Open()
	if err != nil {
		return nil, fmt.Errorf("respawn automount %d: not the daemon that was seen: %w: refused", pid, err)
	}
	defer d.Close()
	// The daemon must be a process of the container: a pid given by
	// mistake, or reused by a process of the host, is never killed.
	if err := inPidNamespaceOf(pid, c.Pid); err != nil {
		return nil, fmt.Errorf("respawn automount %d: %w", pid, err)
	}
	info, err := CaptureDaemon(pid)
	if err != nil {
		return nil, err
	}
	// What /proc does not show: its seccomp filters and securebits.
	h, err := readHeld(d, share(beforeKill))
	if err != nil {
		return nil, fmt.Errorf("respawn automount %d: %w: refused rather than respawn it with less confinement", pid, err)
	}
	info.SeccompFilters = h.Filters
	switch {
	case h.SecurebitsRead:
		info.Securebits = &h.Securebits
	case securebitsReadable:
		return nil, fmt.Errorf("respawn automount %d: its securebits were not read (%s): refused rather than respawn it without them", pid, mounts.Escape(h.SecurebitsWhy))
	default:
		o.Log.Warn(fmt.Sprintf("respawn automount %d: its securebits are not read on this architecture: the new daemon starts with none", pid))
	}
	if err := info.Reproducible(); err != nil {
		return nil, fmt.Errorf("respawn automount %d: %w", pid, err)
	}
	if same, err := proc.SameNamespaces(pid, "user"); err != nil || !same["user"] {
		return nil, fmt.Errorf("respawn automount %d: it runs in another user namespace: refused", pid)
	}
	files, err := openDaemonFiles(pid)
	if err != nil {
		return nil, err
	}
	defer closeNamed(files)
	if err := d.Check(); err != nil {
		return nil, err
	}
	// Refuse before the kill, not after, when the binary changed.
	if err := checkBinary(d, files["exe"], info.Exe, share(beforeKill)); err != nil {
		return nil, fmt.Errorf("respawn automount %d: %w", pid, err)
	}
	all := append(slices.Clip(targets), o.Also...)
	// The kill cannot be taken back: only with the checks done in their
	// time, and checked again right before it.
	if err := inTime(pid, beforeKill, "the checks before the kill"); err != nil {
		return nil, err
	}
	if err := releaseThroughDaemon(d, targets, share(beforeKill), o.Log); err != nil {
		o.Log.Warn(err.Error())
	}
	if err := inTime(pid, beforeKill, "releasing its mounts"); err != nil {
		return nil, err
	}
	if o.Log != nil {
		failpoint.Delay("slow-before-kill", 6*time.Second, func(s string) { o.Log.Info(s) })
	}
	if err := inTime(pid, beforeKill, "the steps before the kill"); err != nil {
		return nil, err
	}
	// Recorded last, right before the kill: a record names a daemon that
	// was killed (or was about to be), never one left running.
	if o.BeforeKill != nil {
		p, err := newPending(pid, info, all, files)
		if err != nil {
			return nil, fmt.Errorf("respawn automount %d: %w", pid, err)
		}
		if err := o.BeforeKill(p); err != nil {
			return nil, fmt.Errorf("respawn automount %d: record it before the kill: %w", pid, err)
		}
	}
	if err := d.Kill(within(deadline, 30*time.Second)); err != nil {
		return nil, fmt.Errorf("kill automount %d: %w", pid, err)
	}
	// automount refuses to start while the pid in its flag file
	// (/run/autofs-running) exists, zombie included.
	if err := d.WaitReaped(within(deadline, 30*time.Second)); err != nil {
		return nil, fmt.Errorf("kill automount %d: %w", pid, err)
	}
	return startAgain(c, info, files, all, deadline, o.Log)
}

// deadline is when a respawn started now must end: after Timeout, and
// not after the run's Deadline.
func (o RespawnOptions) deadline() time.Time {
	d := time.Now().Add(o.Timeout)
	if !o.Deadline.IsZero() && o.Deadline.Before(d) {
		d = o.Deadline
	}
	return d
}

// inTime refuses to go on to the kill of daemon pid once what came
// before it (what) ran past beforeKill: the daemon is left running.
func inTime(pid int, beforeKill time.Time, what string) error {
	if late := time.Since(beforeKill); late > 0 {
		return fmt.Errorf("respawn automount %d: %s ran %s past their time: not killed, the daemon runs on; run fix again", pid, what, late.Round(time.Millisecond))
	}
	return nil
}

// inPidNamespaceOf refuses a pid that is not in the pid namespace of the
// container whose init is initPid.
func inPidNamespaceOf(pid, initPid int) error {
	want, err := proc.Namespace(initPid, "pid")
	if err != nil {
		return err
	}
	got, err := proc.Namespace(pid, "pid")
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("pid %d is not in the container's pid namespace: refused", pid)
	}
	return nil
}

// startAgain starts the daemon described by info with the files of
// daemonFileNames, waits until it serves every target, and checks it.
func startAgain(c *proc.Process, info *Daemon, files door.Files, targets []mounts.Target, deadline time.Time, logf door.Logf) (*Respawned, error) {
	// Opened before the start: the daemon's first mounts end the first
	// wait at once.
	watch, err := mounts.WatchTable(c.Pid)
	if err != nil {
		return nil, err
	}
	defer watch.Close()
	// Opened by pid: the pid must still name the pinned init.
	if err := c.Check(); err != nil {
		return nil, err
	}
	nd, stageCaps, err := spawn(c, info, files, deadline, logf)
	if errors.Is(err, errNotRunning) {
		// Gone before it could be pinned.
		var where []string
		for _, t := range targets {
			where = append(where, mounts.Escape(t.Where))
		}
		return nil, fmt.Errorf("the new automount %w, before it served %s: see its log in the container", err, strings.Join(where, ", "))
	}
	if err != nil {
		return nil, fmt.Errorf("start automount again: %w", err)
	}
	// Pinned from the start: a new daemon that fails its checks is killed,
	// and only the process that was started.
	defer nd.Close()
	newPid := nd.Pid
	res := &Respawned{Pid: newPid, StageCaps: stageCaps}
	res.Devs, err = waitServed(c, watch, newPid, targets, deadline)
	// Checked on every path once it runs, served or not: a daemon that
	// never serves must not keep what it should not have.
	if nd.Alive() {
		if verr := verified(nd, info, files, deadline); verr != nil {
			if kerr := nd.Kill(within(deadline, 30*time.Second)); kerr != nil {
				return nil, errors.Join(err, fmt.Errorf("%w; and it could not be killed: %v", verr, kerr))
			}
			return nil, errors.Join(err, fmt.Errorf("%w: it was killed", verr))
		}
	}
	if err != nil {
		return res, err
	}
	return res, nil
}

// within is what is left until deadline, at most limit and at least
// afterDeadline: a check or a kill after the deadline still gets a bound
// of its own, long enough for a loaded machine (a node restoring many
// containers at once), so that a good new daemon is not killed because
// its check was slow.
func within(deadline time.Time, limit time.Duration) time.Duration {
	return min(max(time.Until(deadline), afterDeadline), limit)
}

const afterDeadline = 5 * time.Second

// share is the time a step before the kill may take: what is left until
// beforeKill, the end of the half of the fix's time the checks before the
// kill share (at least a second). Each step gets time in proportion to
// the whole budget, not a fixed bound that a loaded machine exceeds.
func share(beforeKill time.Time) time.Duration {
	return max(time.Until(beforeKill), time.Second)
}

// verified checks the new daemon: the credentials, limits and seccomp
// filters of the old one (info), and no fd of ours among its files.
func verified(nd *proc.Process, info *Daemon, files door.Files, deadline time.Time) error {
	newPid := nd.Pid
	if err := verifySame(newPid, info); err != nil {
		return err
	}
	if info.Seccomp == 2 || info.Securebits != nil {
		h, err := readHeld(nd, within(deadline, 30*time.Second))
		if err != nil {
			return fmt.Errorf("the new automount (pid %d): %w", newPid, err)
		}
		if !slices.EqualFunc(h.Filters, info.SeccompFilters, func(a, b SeccompFilter) bool { return a.Log == b.Log && slices.Equal(a.Insns, b.Insns) }) {
			return fmt.Errorf("the new automount (pid %d) has other seccomp filters than the old one", newPid)
		}
		switch {
		case info.Securebits == nil:
		case !h.SecurebitsRead:
			return fmt.Errorf("the new automount (pid %d): its securebits were not read: %s", newPid, mounts.Escape(h.SecurebitsWhy))
		case h.Securebits&securebitsExecKept != *info.Securebits&securebitsExecKept:
			return fmt.Errorf("the new automount (pid %d) has securebits %#x (was %#x)", newPid, h.Securebits, *info.Securebits)
		}
	}
	// The program it runs: the daemon's binary (held at its exec and
	// checked there already, where its filters allow the hold).
	var want, got unix.Stat_t
	if err := unix.Fstat(int(files["exe"].Fd()), &want); err != nil {
		return fmt.Errorf("stat the daemon's binary: %w", err)
	}
	if err := unix.Stat("/proc/"+strconv.Itoa(newPid)+"/exe", &got); err != nil {
		return fmt.Errorf("the new automount (pid %d): its executable: %w", newPid, err)
	}
	if got.Dev != want.Dev || got.Ino != want.Ino {
		return fmt.Errorf("the new automount (pid %d) runs another program than the daemon's binary", newPid)
	}
	if err := failpoint.Err("verify"); err != nil {
		return fmt.Errorf("the new automount (pid %d): %w", newPid, err)
	}
	// The namespace files and the old binary are ours; the container's
	// root and working directory are not (the daemon may hold them).
	var ours []*os.File
	for n, f := range files {
		if n != "root" && n != "cwd" {
			ours = append(ours, f)
		}
	}
	leaked, err := leakedFDs(newPid, ours)
	if err != nil {
		return fmt.Errorf("check the new automount's (pid %d) fds: %w", newPid, err)
	}
	if len(leaked) > 0 {
		return fmt.Errorf("the new automount (pid %d) holds files of the hook's: fds %v", newPid, leaked)
	}
	return nil
}

// leakedFDs lists the fds of pid that are one of ours (the same file
// opened through the same mount, as an fd inherited by mistake is), or
// our own executable. It compares fdinfo, read from the host's /proc:
// no file of the daemon is copied or touched, so one on a FUSE file
// system whose server never answers costs nothing.
func leakedFDs(pid int, ours []*os.File) ([]int, error) {
	p, err := proc.OpenProcess(pid)
	if err != nil {
		return nil, err
	}
	defer p.Close()
	var mine []proc.FDInfo
	for _, f := range ours {
		fi, err := proc.OwnFD(int(f.Fd()))
		if err != nil {
			return nil, fmt.Errorf("fdinfo of our %s: %w", f.Name(), err)
		}
		mine = append(mine, fi)
	}
	exe, err := os.Open("/proc/self/exe")
	if err != nil {
		return nil, err
	}
	defer exe.Close()
	fi, err := proc.OwnFD(int(exe.Fd()))
	if err != nil {
		return nil, fmt.Errorf("fdinfo of our executable: %w", err)
	}
	mine = append(mine, fi)
	theirs, err := p.FDs()
	if err != nil {
		return nil, err
	}
	var leaked []int
	for _, t := range theirs {
		for _, m := range mine {
			if t.Same(m) {
				leaked = append(leaked, t.N)
				break
			}
		}
	}
	return leaked, nil
}

// daemonFileNames are the files of the old daemon the spawner needs, by
// the names it is handed them under (their paths in /proc/PID): root
// before cwd and exe, which a pending respawn opens inside it.
var daemonFileNames = []string{"ns/mnt", "root", "cwd", "exe", "ns/ipc", "ns/uts", "ns/net", "ns/cgroup", "ns/pid", "ns/time"}

func openDaemonFiles(pid int) (door.Files, error) {
	files := door.Files{}
	for _, n := range daemonFileNames {
		flags := unix.O_RDONLY
		if n == "root" || n == "cwd" || n == "exe" {
			flags = unix.O_PATH
		}
		f, err := os.OpenFile("/proc/"+strconv.Itoa(pid)+"/"+n, flags|unix.O_CLOEXEC, 0)
		if err != nil {
			closeNamed(files)
			return nil, fmt.Errorf("open %s of automount %d: %w", n, pid, err)
		}
		files[n] = f
	}
	return files, nil
}

func closeNamed(files door.Files) {
	for _, f := range files {
		f.Close()
	}
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// releaseThroughDaemon makes the targets catatonic with the ioctl fds the
// daemon holds on them (see CatatonicThroughFDs).
func releaseThroughDaemon(d *proc.Process, targets []mounts.Target, timeout time.Duration, logf door.Logf) error {
	released, err := CatatonicThroughFDs(d, targets, timeout, logf)
	for _, where := range released {
		if logf != nil {
			logf.Info("made catatonic through the daemon's ioctl fd", "mount", mounts.Escape(where))
		}
	}
	return err
}

// errNotRunning: the new daemon exited at once.
var errNotRunning = errors.New("exited at once")

// hostPid maps a pid of the container's pid namespace to the host's.
func hostPid(initPid, nsPid int) (int, error) {
	pids, err := proc.PidNamespaceMembers(initPid)
	if err != nil {
		return 0, err
	}
	for _, p := range pids {
		st, err := proc.ReadStatus(p)
		if err != nil {
			continue
		}
		if ns := st.NSpid(); len(ns) > 0 && ns[len(ns)-1] == nsPid {
			return p, nil
		}
	}
	return 0, fmt.Errorf("(pid %d in the container) %w", nsPid, errNotRunning)
}

// waitServed waits until every target mount point of the container's
// mount table (watch) has an autofs mount served by newPid (its pgrp) and
// not catatonic. The table is read again when the kernel says a mount
// changed it and after each bound of the wait: a daemon that re-connects
// to a catatonic mount (automount does, through /dev/autofs) changes its
// options, which the kernel does not signal. At the deadline it returns
// the devices of the targets served by then with its error. It ends soon
// after the container's init c is gone: the open table would go on
// showing its mount namespace, and keep it alive.
func waitServed(c *proc.Process, watch *mounts.TableWatch, newPid int, targets []mounts.Target, deadline time.Time) ([]uint64, error) {
	// The bound grows with the time nothing changed (a daemon starting on
	// a loaded node can take a minute, and a look every 10 ms for that
	// minute takes the CPU it needs) and starts again at a change.
	look := mounts.Backoff{Min: mountWaitMin, Max: mountWaitMax}
	served := 0
	for {
		t, err := watch.Read()
		if err != nil {
			return nil, err
		}
		var devs []uint64
		var missing []string
		for _, tg := range targets {
			a := t.Find(tg.Where)
			if a != nil && !a.Options.Catatonic() && a.Options.PGrp == newPid {
				devs = append(devs, a.Dev())
			} else {
				missing = append(missing, mounts.Escape(tg.Where))
			}
		}
		if len(missing) == 0 {
			return devs, nil
		}
		if len(devs) > served {
			// One more served, which the kernel may not have signalled:
			// the next may come soon.
			served = len(devs)
			look.Reset()
		}
		if err := c.Check(); err != nil {
			return nil, fmt.Errorf("the container exited while the new automount (pid %d) started: %w", newPid, err)
		}
		if st, err := proc.ReadStat(newPid); err != nil || st.Exited() {
			return nil, fmt.Errorf("the new automount (pid %d) exited before it served %s: see its log in the container", newPid, strings.Join(missing, ", "))
		}
		if time.Now().After(deadline) {
			return devs, fmt.Errorf("the new automount (pid %d) did not take over %s before the deadline", newPid, strings.Join(missing, ", "))
		}
		changed, err := watch.Wait(min(look.Next(), time.Until(deadline)))
		if err != nil {
			return nil, err
		}
		if changed {
			look.Reset()
		}
	}
}

// mountWaitMin and mountWaitMax bound one wait for a master's new mounts
// (the new daemon's here, the restarted units' in restartAll): the table,
// the processes and the deadline are looked at again after it. It starts
// short (a master usually mounts within a second) and grows while no
// mount changes (mounts.Backoff).
const (
	mountWaitMin = 10 * time.Millisecond
	mountWaitMax = 250 * time.Millisecond
)
