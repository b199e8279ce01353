package units

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/mounts"
)

// SpawnerArg is the hidden first argument of the two spawner stages (see
// RunSpawner). It is not a user command.
const SpawnerArg = "__autofs-restore-hook-spawn"

// Daemon is what is captured of an automount daemon before it is killed:
// everything needed to start it again exactly as it ran.
type Daemon struct {
	Argv      []string `json:"argv"`
	Env       []string `json:"env"`
	UID       []uint32 `json:"uid"` // real, effective, saved, fs
	GID       []uint32 `json:"gid"`
	Groups    []uint32 `json:"groups"`
	CapInh    uint64   `json:"cap_inh"`
	CapPrm    uint64   `json:"cap_prm"`
	CapEff    uint64   `json:"cap_eff"`
	CapBnd    uint64   `json:"cap_bnd"`
	CapAmb    uint64   `json:"cap_amb"`
	NoNewPriv bool     `json:"no_new_privs"`
	Seccomp   int      `json:"seccomp"`
	// Cgroups are the lines of /proc/PID/cgroup.
	Cgroups []string `json:"cgroups"`
	// Stdio are the paths of fds 0, 1 and 2 in the container when they
	// are files there (a log file, /dev/null); "" otherwise. The new
	// daemon opens them again inside the container, so its log goes on
	// where it went.
	Stdio [3]string `json:"stdio"`
	// NsPid is its pid in the container.
	NsPid int `json:"ns_pid"`
	// Exe is the path of its executable in the container.
	Exe string `json:"exe"`
	// Cwd is the path of its working directory in the container.
	Cwd string `json:"cwd"`
}

// CaptureDaemon reads what CaptureDaemon needs from /proc/PID.
func CaptureDaemon(pid int) (*Daemon, error) {
	dir := "/proc/" + strconv.Itoa(pid) + "/"
	cmdline, err := os.ReadFile(dir + "cmdline")
	if err != nil || len(cmdline) == 0 {
		return nil, fmt.Errorf("read command line of %d: %v", pid, err)
	}
	environ, err := os.ReadFile(dir + "environ")
	if err != nil {
		return nil, fmt.Errorf("read environment of %d: %w", pid, err)
	}
	st, err := mounts.ReadStatus(pid)
	if err != nil {
		return nil, err
	}
	cg, err := os.ReadFile(dir + "cgroup")
	if err != nil {
		return nil, fmt.Errorf("read cgroups of %d: %w", pid, err)
	}
	d := &Daemon{Argv: splitNul(cmdline), Env: splitNul(environ), Cgroups: strings.Split(strings.TrimSpace(string(cg)), "\n")}
	for i := range d.Stdio {
		if l, err := os.Readlink(dir + "fd/" + strconv.Itoa(i)); err == nil && strings.HasPrefix(l, "/") && !strings.HasSuffix(l, " (deleted)") {
			d.Stdio[i] = l
		}
	}
	if ns := st.NSpid(); len(ns) > 0 {
		d.NsPid = ns[len(ns)-1]
	}
	if d.Exe, err = os.Readlink(dir + "exe"); err != nil {
		return nil, fmt.Errorf("read executable of %d: %w", pid, err)
	}
	// A binary replaced since the start reads "PATH (deleted)": the path
	// is still what to compare with.
	d.Exe = strings.TrimSuffix(d.Exe, " (deleted)")
	if d.Cwd, err = os.Readlink(dir + "cwd"); err != nil {
		return nil, fmt.Errorf("read working directory of %d: %w", pid, err)
	}
	var errs []error
	d.UID, err = uints(st["Uid"], 10, 32)
	errs = append(errs, err)
	d.GID, err = uints(st["Gid"], 10, 32)
	errs = append(errs, err)
	d.Groups, err = uints(st["Groups"], 10, 32)
	errs = append(errs, err)
	for _, c := range []struct {
		key string
		dst *uint64
	}{{"CapInh", &d.CapInh}, {"CapPrm", &d.CapPrm}, {"CapEff", &d.CapEff}, {"CapBnd", &d.CapBnd}, {"CapAmb", &d.CapAmb}} {
		*c.dst, err = strconv.ParseUint(st[c.key], 16, 64)
		errs = append(errs, err)
	}
	d.NoNewPriv = st["NoNewPrivs"] == "1"
	d.Seccomp, err = strconv.Atoi(st["Seccomp"])
	errs = append(errs, err)
	if err := errors.Join(errs...); err != nil || len(d.UID) != 4 || len(d.GID) != 4 {
		return nil, fmt.Errorf("parse credentials of %d: %v", pid, err)
	}
	return d, nil
}

func splitNul(b []byte) []string {
	b = bytes.TrimRight(b, "\x00")
	if len(b) == 0 {
		return nil
	}
	return strings.Split(string(b), "\x00")
}

func uints(s string, base, bits int) ([]uint32, error) {
	var out []uint32
	for _, f := range strings.Fields(s) {
		n, err := strconv.ParseUint(f, base, bits)
		if err != nil {
			return nil, err
		}
		out = append(out, uint32(n))
	}
	return out, nil
}

// Reproducible says why the daemon cannot be started again with exactly
// its privileges, or returns nil.
func (d *Daemon) Reproducible() error {
	switch {
	case d.Seccomp == 2:
		return errors.New("it runs under a seccomp filter, which the hook cannot copy: refused rather than respawn it unconfined; restart the container's automount by hand")
	case d.UID[0] != d.UID[1] || d.UID[1] != d.UID[2] || d.GID[0] != d.GID[1] || d.GID[1] != d.GID[2]:
		return fmt.Errorf("it runs with mixed real/effective/saved ids (uid %v gid %v): refused", d.UID, d.GID)
	case d.UID[0] != 0 && (d.CapPrm != 0 || d.CapAmb != 0):
		return fmt.Errorf("it runs as uid %d with capabilities %#x: refused", d.UID[0], d.CapPrm)
	case d.UID[0] == 0 && d.CapAmb != 0:
		return errors.New("it runs as root with ambient capabilities: refused")
	case d.UID[0] == 0 && d.CapPrm != d.CapBnd|d.CapInh:
		// After exec, root gets permitted = bounding | inheritable: a
		// daemon with less than that cannot be reproduced by exec.
		return fmt.Errorf("its permitted capabilities %#x are not what exec gives root (%#x): refused", d.CapPrm, d.CapBnd|d.CapInh)
	case len(d.Argv) == 0:
		return errors.New("its command line is empty")
	}
	return nil
}

// RespawnOptions tune RespawnAutomount.
type RespawnOptions struct {
	Timeout time.Duration
	Log     func(string)
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
}

// RespawnAutomount replaces the automount daemon pid of the container c:
// it captures how the daemon runs, makes its stale mounts catatonic
// (releasing anything waiting on them, through the daemon's own ioctl fds
// where it holds them), kills it with SIGKILL (its SIGTERM path tears
// mounts down through stale devices), starts it again with the same
// command line, environment, working directory, credentials and
// capabilities in all of the container's namespaces and cgroups, and waits
// until every target, and every mount of o.Also, has a live master again.
//
// startTime is the daemon's start time when it was chosen (Stat.StartTime):
// a pid that names another process by now (the daemon exited while the
// container's systemd was being answered, and the pid was reused) is
// refused, never killed.
func RespawnAutomount(c *mounts.Process, pid int, startTime uint64, targets []mounts.Target, o RespawnOptions) (*Respawned, error) {
	deadline := time.Now().Add(o.Timeout)
	d, err := mounts.OpenProcess(pid)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	if d.StartTime != startTime {
		return nil, fmt.Errorf("respawn automount %d: the pid names another process than the daemon that was seen (started at tick %d, not %d; pid reused): refused", pid, d.StartTime, startTime)
	}
	// The daemon must be a process of the container: a pid given by
	// mistake, or reused by a process of the host, is never killed.
	if err := inPidNamespaceOf(pid, c.Pid); err != nil {
		return nil, fmt.Errorf("respawn automount %d: %w", pid, err)
	}
	info, err := CaptureDaemon(pid)
	if err != nil {
		return nil, err
	}
	if err := info.Reproducible(); err != nil {
		return nil, fmt.Errorf("respawn automount %d: %w", pid, err)
	}
	if same, err := mounts.SameNamespaces(pid, "user"); err != nil || !same["user"] {
		return nil, fmt.Errorf("respawn automount %d: it runs in another user namespace: refused", pid)
	}
	files, err := openDaemonFiles(pid)
	if err != nil {
		return nil, err
	}
	defer closeAll(files)
	if err := d.Check(); err != nil {
		return nil, err
	}
	// Refuse before the kill, not after, when the binary changed.
	if err := checkBinary(d, files[3], info.Exe, min(5*time.Second, time.Until(deadline))); err != nil {
		return nil, fmt.Errorf("respawn automount %d: %w", pid, err)
	}
	all := append(slices.Clip(targets), o.Also...)
	if o.BeforeKill != nil {
		p, err := newPending(pid, info, all, files)
		if err != nil {
			return nil, fmt.Errorf("respawn automount %d: %w", pid, err)
		}
		if err := o.BeforeKill(p); err != nil {
			return nil, fmt.Errorf("respawn automount %d: record it before the kill: %w", pid, err)
		}
	}
	if err := releaseThroughDaemon(d, targets, min(5*time.Second, time.Until(deadline)), o.Log); err != nil && o.Log != nil {
		o.Log(err.Error())
	}
	if err := d.Kill(5 * time.Second); err != nil {
		return nil, fmt.Errorf("kill automount %d: %w", pid, err)
	}
	// automount refuses to start while the pid in its flag file
	// (/run/autofs-running) exists, zombie included.
	if err := d.WaitReaped(5 * time.Second); err != nil {
		return nil, fmt.Errorf("kill automount %d: %w", pid, err)
	}
	return startAgain(c, info, files, all, deadline, o.Log)
}

// inPidNamespaceOf refuses a pid that is not in the pid namespace of the
// container whose init is initPid.
func inPidNamespaceOf(pid, initPid int) error {
	want, err := mounts.Namespace(initPid, "pid")
	if err != nil {
		return err
	}
	got, err := mounts.Namespace(pid, "pid")
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
func startAgain(c *mounts.Process, info *Daemon, files []*os.File, targets []mounts.Target, deadline time.Time, logf func(string)) (*Respawned, error) {
	newPid, err := spawn(c, info, files, deadline, logf)
	if errors.Is(err, errNotRunning) {
		// Gone (and reaped) before its host pid was looked up.
		var where []string
		for _, t := range targets {
			where = append(where, mounts.Escape(t.Where))
		}
		return nil, fmt.Errorf("the new automount %w, before it served %s: see its log in the container", err, strings.Join(where, ", "))
	}
	if err != nil {
		return nil, fmt.Errorf("start automount again: %w", err)
	}
	res := &Respawned{Pid: newPid}
	res.Devs, err = waitServed(c.Pid, newPid, targets, deadline)
	if err != nil {
		return res, err
	}
	if err := verifySame(newPid, info); err != nil {
		return res, err
	}
	// The namespace files and the old binary are ours; the container's
	// root and working directory are not (the daemon may hold them).
	var ours []*os.File
	for i, f := range files {
		if n := daemonFileNames[i]; n != "root" && n != "cwd" {
			ours = append(ours, f)
		}
	}
	leaked, err := leakedFDs(newPid, ours)
	if err != nil {
		return res, fmt.Errorf("check the new automount's (pid %d) fds: %w", newPid, err)
	}
	if len(leaked) > 0 {
		return res, fmt.Errorf("the new automount (pid %d) holds files of the hook's: fds %v", newPid, leaked)
	}
	return res, nil
}

// leakedFDs lists the fds of pid that are one of ours (the same file
// opened through the same mount, as an fd inherited by mistake is), or
// our own executable. It compares fdinfo, read from the host's /proc:
// no file of the daemon is copied or touched, so one on a FUSE file
// system whose server never answers costs nothing.
func leakedFDs(pid int, ours []*os.File) ([]int, error) {
	p, err := mounts.OpenProcess(pid)
	if err != nil {
		return nil, err
	}
	defer p.Close()
	var mine []mounts.FDInfo
	for _, f := range ours {
		fi, err := mounts.OwnFD(int(f.Fd()))
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
	fi, err := mounts.OwnFD(int(exe.Fd()))
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

// taskAutomountBinary is the worker task that checks the daemon's binary.
const taskAutomountBinary = "automount-binary"

func init() { mounts.RegisterTask(taskAutomountBinary, automountBinaryTask) }

type binaryCheck struct {
	Path string `json:"path"`
	Dev  uint64 `json:"dev"`
	Ino  uint64 `json:"ino"`
}

// checkBinary refuses, before the kill, a daemon whose binary path no
// longer names the file it runs (exe, opened on the host). The path is
// the container's: it is looked at by a worker in the daemon's mount
// namespace and root, with a deadline, never by the hook's own process
// (a FUSE file system of the container mounted over it would answer the
// stat never).
func checkBinary(d *mounts.Process, exe *os.File, path string, timeout time.Duration) error {
	id, err := fileID(exe)
	if err != nil {
		return fmt.Errorf("the daemon's executable: %w", err)
	}
	if err := mounts.RunInMountNS(d, taskAutomountBinary, binaryCheck{Path: path, Dev: id.Dev, Ino: id.Ino}, timeout, nil, nil); err != nil {
		return fmt.Errorf("check %s in the container: %w: refused", mounts.Escape(path), err)
	}
	return nil
}

func automountBinaryTask(_ *mounts.WorkerEnv, args json.RawMessage, _ func(string)) (any, error) {
	var c binaryCheck
	if err := json.Unmarshal(args, &c); err != nil {
		return nil, fmt.Errorf("%s: bad request: %w", taskAutomountBinary, err)
	}
	root, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(root)
	return nil, sameBinary(root, c.Path, c.Dev, c.Ino)
}

// sameBinary checks that path, resolved inside root (openat2
// RESOLVE_IN_ROOT: no symlink of the container leads out of it), is still
// the file dev/ino the daemon runs.
func sameBinary(root int, path string, dev, ino uint64) error {
	fd, err := unix.Openat2(root, path, &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS})
	if err != nil {
		return fmt.Errorf("%s is gone from the container (%v): refused", mounts.Escape(path), err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Dev != dev || st.Ino != ino {
		return fmt.Errorf("%s is no longer the binary the daemon ran (replaced since it started): refused", mounts.Escape(path))
	}
	return nil
}

// daemonFileNames are the files of the old daemon the spawner needs, in
// the order of the spawner's fds (3, 4, ...).
var daemonFileNames = []string{"ns/mnt", "root", "cwd", "exe", "ns/ipc", "ns/uts", "ns/net", "ns/cgroup", "ns/pid", "ns/time"}

func openDaemonFiles(pid int) ([]*os.File, error) {
	var files []*os.File
	for _, n := range daemonFileNames {
		flags := unix.O_RDONLY
		if n == "root" || n == "cwd" || n == "exe" {
			flags = unix.O_PATH
		}
		f, err := os.OpenFile("/proc/"+strconv.Itoa(pid)+"/"+n, flags|unix.O_CLOEXEC, 0)
		if err != nil {
			closeAll(files)
			return nil, fmt.Errorf("open %s of automount %d: %w", n, pid, err)
		}
		files = append(files, f)
	}
	return files, nil
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// releaseThroughDaemon makes the targets catatonic with the ioctl fds the
// daemon holds on them (see mounts.CatatonicThroughFDs).
func releaseThroughDaemon(d *mounts.Process, targets []mounts.Target, timeout time.Duration, logf func(string)) error {
	released, err := mounts.CatatonicThroughFDs(d, targets, timeout, logf)
	for _, where := range released {
		if logf != nil {
			logf(fmt.Sprintf("%s: made catatonic through the daemon's ioctl fd", mounts.Escape(where)))
		}
	}
	return err
}

// EnvTimeNSFD names the fd of the time namespace that the spawner's
// container stage joins at start, in a C constructor (internal/cstart):
// a multithreaded process cannot join one.
const EnvTimeNSFD = "_AUTOFS_RESTORE_HOOK_TIMENS_FD"

// spawnRequest is what the first spawner stage gets on stdin.
type spawnRequest struct {
	Daemon *Daemon `json:"daemon"`
	// LastCap is the host's /proc/sys/kernel/cap_last_cap, read by stage
	// host: the container's /proc is the container's to forge.
	LastCap int `json:"last_cap"`
	// Deadline (Unix nanoseconds) is when the hook stops waiting: the
	// container stage is killed then, and never starts a daemon after it.
	Deadline int64 `json:"deadline"`
}

// spawnResult is the last line a spawner stage prints.
type spawnResult struct {
	NsPid    int      `json:"ns_pid,omitempty"`
	Warnings []string `json:"warnings,omitempty"`
	Error    string   `json:"error,omitempty"`
}

// spawn runs the spawner chain and returns the new daemon's host pid. The
// chain ends by the deadline: stage host kills the container stage then,
// and is killed itself right after.
func spawn(c *mounts.Process, d *Daemon, files []*os.File, deadline time.Time, logf func(string)) (int, error) {
	exe, err := os.Executable()
	if err != nil {
		return 0, err
	}
	self, err := os.Open(exe)
	if err != nil {
		return 0, err
	}
	defer self.Close()
	ctx, cancel := context.WithDeadline(context.Background(), deadline.Add(spawnGrace))
	defer cancel()
	req, err := json.Marshal(spawnRequest{Daemon: d, Deadline: deadline.UnixNano()})
	if err != nil {
		return 0, err
	}
	cmd := exec.CommandContext(ctx, exe, SpawnerArg, "host")
	cmd.ExtraFiles = append(append([]*os.File{}, files...), self)
	cmd.Stdin = bytes.NewReader(req)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = time.Second
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var r spawnResult
	jerr := json.Unmarshal(lastLine(out), &r)
	for _, w := range r.Warnings {
		if logf != nil {
			logf("start automount again: " + w)
		}
	}
	if err != nil {
		return 0, fmt.Errorf("spawner: %v: %s%s", err, strings.TrimSpace(stderr.String()), lastError(out))
	}
	if jerr != nil || r.Error != "" || r.NsPid <= 0 {
		return 0, fmt.Errorf("spawner: %s%s", r.Error, strings.TrimSpace(stderr.String()))
	}
	return hostPid(c.Pid, r.NsPid)
}

// spawnGrace is how long past the deadline stage host has to report that
// it killed the container stage.
const spawnGrace = 2 * time.Second

func lastLine(b []byte) []byte {
	b = bytes.TrimSpace(b)
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		return b[i+1:]
	}
	return b
}

func lastError(b []byte) string {
	var r struct{ Error string }
	if json.Unmarshal(lastLine(b), &r) == nil && r.Error != "" {
		return ": " + r.Error
	}
	return ""
}

// errNotRunning: the new daemon exited at once.
var errNotRunning = errors.New("exited at once")

// hostPid maps a pid of the container's pid namespace to the host's.
func hostPid(initPid, nsPid int) (int, error) {
	pids, err := mounts.PidNamespaceMembers(initPid)
	if err != nil {
		return 0, err
	}
	for _, p := range pids {
		st, err := mounts.ReadStatus(p)
		if err != nil {
			continue
		}
		if ns := st.NSpid(); len(ns) > 0 && ns[len(ns)-1] == nsPid {
			return p, nil
		}
	}
	return 0, fmt.Errorf("(pid %d in the container) %w", nsPid, errNotRunning)
}

// waitServed waits until every target mount point has an autofs mount
// served by newPid (its pgrp) and not catatonic. At the deadline it
// returns the devices of the targets served by then with its error.
func waitServed(initPid, newPid int, targets []mounts.Target, deadline time.Time) ([]uint64, error) {
	for {
		t, err := mounts.ReadTable(initPid)
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
		if st, err := mounts.ReadStat(newPid); err != nil || st.Exited() {
			return nil, fmt.Errorf("the new automount (pid %d) exited before it served %s: see its log in the container", newPid, strings.Join(missing, ", "))
		}
		if time.Now().After(deadline) {
			return devs, fmt.Errorf("the new automount (pid %d) did not take over %s before the deadline", newPid, strings.Join(missing, ", "))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// verifySame checks the new daemon's credentials against the old ones.
func verifySame(pid int, want *Daemon) error {
	got, err := CaptureDaemon(pid)
	if err != nil {
		return err
	}
	var diffs []string
	cmp := func(name string, a, b any) {
		if fmt.Sprint(a) != fmt.Sprint(b) {
			diffs = append(diffs, fmt.Sprintf("%s %v (was %v)", name, a, b))
		}
	}
	cmp("uid", got.UID, want.UID)
	cmp("gid", got.GID, want.GID)
	cmp("groups", got.Groups, want.Groups)
	cmp("CapInh", got.CapInh, want.CapInh)
	cmp("CapPrm", got.CapPrm, want.CapPrm)
	cmp("CapEff", got.CapEff, want.CapEff)
	cmp("CapBnd", got.CapBnd, want.CapBnd)
	cmp("CapAmb", got.CapAmb, want.CapAmb)
	cmp("NoNewPrivs", got.NoNewPriv, want.NoNewPriv)
	cmp("Seccomp", got.Seccomp, want.Seccomp)
	cmp("cgroups", got.Cgroups, want.Cgroups)
	if len(diffs) > 0 {
		return fmt.Errorf("the new automount (pid %d) differs from the old one: %s", pid, strings.Join(diffs, "; "))
	}
	return nil
}

// RunSpawner is the body of both spawner stages. Stage "host" runs on the
// host: it reads the host's cap_last_cap, moves itself into the old
// daemon's cgroups, joins its namespaces but the mount namespace (pid for
// its children), and starts stage "container" through the fd of our own
// executable, resolved in the host's /proc: nothing of the container
// chooses what runs. Stage "container" lives in the container's pid and
// time namespaces; it joins the daemon's mount namespace and root first,
// then drops what the old daemon did not have, starts
// the daemon as a session leader with stdio on the container's /dev/null,
// reports its pid and exits, so that the container's init adopts it.
func RunSpawner(args []string) int {
	runtime.LockOSThread() // never unlocked: namespaces and caps are per thread
	out := json.NewEncoder(os.Stdout)
	fail := func(err error) int {
		out.Encode(map[string]string{"error": err.Error()})
		return 1
	}
	var req spawnRequest
	if err := json.NewDecoder(bufio.NewReader(os.Stdin)).Decode(&req); err != nil || req.Daemon == nil {
		return fail(fmt.Errorf("spawner: bad request: %v", err))
	}
	if len(args) == 1 && args[0] == "host" {
		return stageHost(req, out, fail)
	}
	if len(args) == 1 && args[0] == "container" {
		return stageContainer(req, out, fail)
	}
	return fail(fmt.Errorf("spawner: unknown stage %q", args))
}

// fds of stage host, in daemonFileNames order, then our own executable.
const (
	fdMnt = 3 + iota
	fdRoot
	fdCwd
	fdExe
	fdIPC
	fdUTS
	fdNet
	fdCgroupNS
	fdPid
	fdTime
	fdSelf
)

func stageHost(req spawnRequest, out *json.Encoder, fail func(error) int) int {
	// Nothing of ours may reach the container stage but what it is
	// handed explicitly (ExtraFiles below).
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		return fail(fmt.Errorf("mark fds close-on-exec: %w", err))
	}
	last, err := lastCap()
	if err != nil {
		return fail(err)
	}
	req.LastCap = last
	if err := joinCgroups(req.Daemon.Cgroups); err != nil {
		return fail(err)
	}
	if err := unix.Unshare(unix.CLONE_FS); err != nil {
		return fail(fmt.Errorf("unshare CLONE_FS: %w", err))
	}
	for _, ns := range []struct {
		fd   int
		kind int
		name string
	}{{fdIPC, unix.CLONE_NEWIPC, "ipc"}, {fdUTS, unix.CLONE_NEWUTS, "uts"}, {fdNet, unix.CLONE_NEWNET, "net"}, {fdCgroupNS, unix.CLONE_NEWCGROUP, "cgroup"}, {fdPid, unix.CLONE_NEWPID, "pid"}} {
		if err := unix.Setns(ns.fd, ns.kind); err != nil {
			return fail(fmt.Errorf("join the container's %s namespace: %w", ns.name, err))
		}
	}
	// Not the mount namespace nor the root: the container stage is our own
	// executable, started through the fd opened on the host, and /proc
	// below is still the host's procfs. The container stage joins the
	// container's mount namespace and root itself.
	if err := mounts.HostProcOK(); err != nil {
		return fail(fmt.Errorf("start the container stage: %w", err))
	}
	body, _ := json.Marshal(req)
	// The container stage ends by the deadline, and with us: it gets
	// SIGKILL at the deadline, and on our death (PR_SET_PDEATHSIG, which
	// it sets itself, then checks the lifeline: the read end of a pipe
	// whose write end only we hold, so that a death before the prctl is
	// seen too).
	lifeR, lifeW, err := os.Pipe()
	if err != nil {
		return fail(fmt.Errorf("lifeline: %w", err))
	}
	defer lifeW.Close()
	ctx, cancel := context.WithDeadline(context.Background(), time.Unix(0, req.Deadline))
	defer cancel()
	// The child is the first process of ours in the container's pid
	// namespace.
	cmd := exec.CommandContext(ctx, "/proc/self/fd/3", SpawnerArg, "container")
	cmd.Args[0] = "autofs-restore-hook"
	cmd.ExtraFiles = []*os.File{os.NewFile(fdSelf, "self"), os.NewFile(fdCwd, "cwd"), os.NewFile(fdExe, "exe"), os.NewFile(fdTime, "timens"),
		os.NewFile(fdMnt, "mnt"), os.NewFile(fdRoot, "root"), lifeR}
	cmd.Env = []string{EnvTimeNSFD + "=6"}
	cmd.Stdin = bytes.NewReader(body)
	cmd.Dir = "/"
	cmd.WaitDelay = time.Second
	var buf bytes.Buffer
	cmd.Stdout = &buf
	cmd.Stderr = &buf
	err = cmd.Start()
	lifeR.Close()
	if err == nil {
		err = cmd.Wait()
	}
	if ctx.Err() != nil {
		last := ""
		if l := lastLine(buf.Bytes()); len(l) > 0 {
			last = " (it said: " + mounts.Escape(string(l)) + ")"
		}
		return fail(fmt.Errorf("container stage: killed at the deadline%s", last))
	}
	os.Stdout.Write(buf.Bytes())
	if err != nil {
		return fail(fmt.Errorf("container stage: %v", err))
	}
	return 0
}

// joinCgroups writes our pid into the cgroups of the old daemon, in every
// hierarchy mounted on the host.
func joinCgroups(lines []string) error {
	mi, err := mounts.ReadTable(os.Getpid())
	if err != nil {
		return err
	}
	pid := []byte(strconv.Itoa(os.Getpid()))
	for _, l := range lines {
		parts := strings.SplitN(l, ":", 3)
		if len(parts) != 3 {
			continue
		}
		ctrls, path := parts[1], parts[2]
		root := ""
		for _, m := range mi.All {
			switch {
			case ctrls == "" && m.FSType == "cgroup2":
				root = m.Mountpoint
			case ctrls != "" && m.FSType == "cgroup" && hasAllOptions(m.VFSOptions, strings.Split(ctrls, ",")):
				root = m.Mountpoint
			}
			if root != "" {
				break
			}
		}
		if root == "" {
			continue // hierarchy not mounted on the host: nothing to join
		}
		procs := filepath.Join(root, filepath.Clean("/"+path), "cgroup.procs")
		if err := os.WriteFile(procs, pid, 0); err != nil {
			return fmt.Errorf("join cgroup %s: %w", procs, err)
		}
	}
	return nil
}

func hasAllOptions(opts string, want []string) bool {
	have := map[string]bool{}
	for _, o := range strings.Split(opts, ",") {
		have[o] = true
	}
	for _, w := range want {
		if !have[w] {
			return false
		}
	}
	return true
}

func stageContainer(req spawnRequest, out *json.Encoder, fail func(error) int) int {
	d := req.Daemon
	const (
		fdCwdC  = 4
		fdExeC  = 5 // the old daemon's executable, to check d.Exe against
		fdMntC  = 7 // the container's mount namespace and root, joined first
		fdRootC = 8
		fdLife  = 9 // read end of stage host's lifeline
	)
	// Die with stage host; it may have died before this prctl, which the
	// lifeline tells (its write end is closed).
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0); err != nil {
		return fail(fmt.Errorf("set the parent-death signal: %w", err))
	}
	if pfd := []unix.PollFd{{Fd: fdLife, Events: unix.POLLIN}}; func() bool { n, err := unix.Poll(pfd, 0); return err != nil || n > 0 }() {
		return fail(errors.New("stage host is gone"))
	}
	deadline := time.Unix(0, req.Deadline)
	if err := unix.Unshare(unix.CLONE_FS); err != nil {
		return fail(fmt.Errorf("unshare CLONE_FS: %w", err))
	}
	if err := unix.Setns(fdMntC, unix.CLONE_NEWNS); err != nil {
		return fail(fmt.Errorf("join the container's mnt namespace: %w", err))
	}
	if err := unix.Fchdir(fdRootC); err != nil {
		return fail(fmt.Errorf("enter the container's root: %w", err))
	}
	if err := unix.Chroot("."); err != nil {
		return fail(fmt.Errorf("chroot: %w", err))
	}
	// Kept for the threads that open the daemon's stdio: a new thread
	// shares the file system context (root, cwd) of the runtime thread
	// it was cloned from, not this one's, and joins the container itself.
	nsDup, err1 := unix.FcntlInt(fdMntC, unix.F_DUPFD_CLOEXEC, 10)
	rootDup, err2 := unix.FcntlInt(fdRootC, unix.F_DUPFD_CLOEXEC, 10)
	if err := errors.Join(err1, err2); err != nil {
		return fail(fmt.Errorf("keep the container's namespace fds: %w", err))
	}
	unix.Close(fdMntC)
	unix.Close(fdRootC)
	// No fd of ours reaches the daemon: the exe and cwd fds are used
	// through /proc/self/fd and fchdir, both fine with close-on-exec.
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		return fail(fmt.Errorf("mark fds close-on-exec: %w", err))
	}
	if err := unix.Fchdir(fdCwdC); err != nil {
		return fail(fmt.Errorf("enter the daemon's working directory: %w", err))
	}
	stdio, warnings, err := openStdio(d, nsDup, rootDup, min(stdioTimeout, time.Until(deadline)))
	if err != nil {
		return fail(err)
	}
	// Bounding and inheritable sets: per thread, inherited by the fork
	// below (this goroutine stays on its thread).
	for c := 0; c <= req.LastCap; c++ {
		if d.CapBnd&(1<<c) == 0 {
			if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
				return fail(fmt.Errorf("drop capability %d from the bounding set: %w", c, err))
			}
		}
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fail(fmt.Errorf("capget: %w", err))
	}
	data[0].Inheritable, data[1].Inheritable = uint32(d.CapInh), uint32(d.CapInh>>32)
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fail(fmt.Errorf("set inheritable capabilities: %w", err))
	}
	if d.NoNewPriv {
		if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			return fail(fmt.Errorf("set no_new_privs: %w", err))
		}
	}
	removeStaleFlag(d.NsPid)
	// Exec by path, so that the daemon's name (comm) is its own, but only
	// if the path still names the very binary that ran (the fd we hold).
	var want, got unix.Stat_t
	if err := unix.Fstat(fdExeC, &want); err != nil {
		return fail(fmt.Errorf("stat the old executable: %w", err))
	}
	if err := unix.Stat(d.Exe, &got); err != nil || got.Dev != want.Dev || got.Ino != want.Ino {
		return fail(fmt.Errorf("%s is no longer the binary the daemon ran (replaced or removed): refused", d.Exe))
	}
	if time.Now().After(deadline) {
		return fail(errors.New("the hook's deadline passed before the start: not started"))
	}
	cmd := &exec.Cmd{Path: d.Exe, Args: d.Argv, Env: d.Env}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdio[0], stdio[1], stdio[2]
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setsid:     true,
		Credential: &syscall.Credential{Uid: d.UID[1], Gid: d.GID[1], Groups: d.Groups},
	}
	if err := cmd.Start(); err != nil {
		return fail(fmt.Errorf("start %s: %w", d.Argv[0], err))
	}
	out.Encode(spawnResult{NsPid: cmd.Process.Pid, Warnings: warnings})
	cmd.Process.Release()
	return 0
}

// automount's flag files: it refuses to start ("program is already
// running") while the pid written there exists, and after a restore the
// new daemon may well get the pid of the one that was killed.
var flagFiles = []string{"/run/autofs-running", "/var/run/autofs-running"}

// removeStaleFlag removes the flag file of the killed daemon: only when it
// names that daemon's pid, which is gone.
func removeStaleFlag(oldPid int) {
	for _, p := range flagFiles {
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
		if err != nil {
			continue
		}
		buf := make([]byte, 32)
		n, _ := unix.Read(fd, buf)
		unix.Close(fd)
		if n > 0 && strings.TrimSpace(string(buf[:n])) == strconv.Itoa(oldPid) {
			unix.Unlink(p)
		}
	}
}

// stdioTimeout bounds the opening of the daemon's stdio files: they are
// paths of the container, which may lead onto a file system that never
// answers.
const stdioTimeout = 3 * time.Second

// openStdio opens the daemon's stdio files again, inside the container:
// each the file it had when that is still a regular file or a character
// device there, else the container's /dev/null. They are opened as the
// daemon: on a thread with its fs uid and gid, groups and effective
// capabilities, through no symlink, so that the hook's root opens nothing
// the daemon could not (a log path swapped for a symlink to a root-only
// file gave it that file once). A file that is not opened within timeout
// is replaced by /dev/null, with a warning; the opening thread is then
// abandoned, and dies with this process. Each opening thread joins the
// container's mount namespace (mntNS) and root (root) itself.
func openStdio(d *Daemon, mntNS, root int, timeout time.Duration) (stdio [3]*os.File, warnings []string, err error) {
	type result struct {
		files    [3]*os.File
		warnings []string
		err      error
	}
	res := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread has the daemon's credentials
		var r result
		if r.err = becomeForFiles(d, mntNS, root); r.err == nil {
			for i, p := range d.Stdio {
				var w string
				r.files[i], w, r.err = openOneStdio(p, i == 0)
				if w != "" {
					r.warnings = append(r.warnings, w)
				}
				if r.err != nil {
					break
				}
			}
		}
		res <- r
	}()
	select {
	case r := <-res:
		if r.err != nil {
			return stdio, nil, r.err
		}
		return r.files, r.warnings, nil
	case <-time.After(timeout):
	}
	// The files never came: /dev/null for all three, opened the same way,
	// on a thread of its own.
	go func() {
		runtime.LockOSThread()
		var r result
		if r.err = becomeForFiles(d, mntNS, root); r.err == nil {
			for i := range r.files {
				if r.files[i], _, r.err = openOneStdio("", i == 0); r.err != nil {
					break
				}
			}
		}
		res <- r
	}()
	select {
	case r := <-res:
		if r.err != nil {
			return stdio, nil, r.err
		}
		return r.files, []string{fmt.Sprintf("its stdio files %s were not opened within %s: it writes to /dev/null instead", mounts.Escape(strings.Join(d.Stdio[:], ", ")), timeout)}, nil
	case <-time.After(timeout):
		return stdio, nil, fmt.Errorf("open the container's /dev/null: no answer within %s", timeout)
	}
}

// becomeForFiles moves the calling thread (locked, never unlocked) into
// the container's mount namespace and root, and gives it the daemon's
// access to files: fs uid and gid, supplementary groups and effective
// capabilities. All are per thread in the kernel; the raw system calls
// are used because the C library and Go apply them to every thread.
func becomeForFiles(d *Daemon, mntNS, root int) error {
	if err := unix.Unshare(unix.CLONE_FS); err != nil {
		return fmt.Errorf("unshare CLONE_FS: %w", err)
	}
	if err := unix.Setns(mntNS, unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("join the container's mnt namespace: %w", err)
	}
	if err := unix.Fchdir(root); err != nil {
		return fmt.Errorf("enter the container's root: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	gids := make([]uint32, len(d.Groups))
	copy(gids, d.Groups)
	var p unsafe.Pointer
	if len(gids) > 0 {
		p = unsafe.Pointer(&gids[0])
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(gids)), uintptr(p), 0); e != 0 {
		return fmt.Errorf("set the daemon's groups: %w", e)
	}
	// setfsuid and setfsgid return the previous id, never an error: the
	// result is read back.
	unix.RawSyscall(unix.SYS_SETFSGID, uintptr(d.GID[3]), 0, 0)
	unix.RawSyscall(unix.SYS_SETFSUID, uintptr(d.UID[3]), 0, 0)
	if got, _, _ := unix.RawSyscall(unix.SYS_SETFSUID, ^uintptr(0), 0, 0); uint32(got) != d.UID[3] {
		return fmt.Errorf("set the daemon's fs uid %d: it is %d", d.UID[3], got)
	}
	if got, _, _ := unix.RawSyscall(unix.SYS_SETFSGID, ^uintptr(0), 0, 0); uint32(got) != d.GID[3] {
		return fmt.Errorf("set the daemon's fs gid %d: it is %d", d.GID[3], got)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capget: %w", err)
	}
	data[0].Effective = data[0].Permitted & uint32(d.CapEff)
	data[1].Effective = data[1].Permitted & uint32(d.CapEff>>32)
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("set the daemon's effective capabilities: %w", err)
	}
	return nil
}

// openOneStdio opens path ("" for /dev/null) for reading (stdin) or
// appending, through no symlink, without blocking and without gaining a
// controlling terminal, and keeps it only when it is a regular file or a
// character device (never a FIFO or a socket). A path that cannot be
// used gives /dev/null and a warning.
func openOneStdio(path string, read bool) (*os.File, string, error) {
	flags := unix.O_WRONLY | unix.O_APPEND
	if read {
		flags = unix.O_RDONLY
	}
	open := func(p string) (*os.File, error) {
		fd, err := unix.Openat2(unix.AT_FDCWD, p, &unix.OpenHow{Flags: uint64(flags | unix.O_NONBLOCK | unix.O_NOCTTY | unix.O_CLOEXEC), Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS})
		if err != nil {
			return nil, err
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil || (st.Mode&unix.S_IFMT != unix.S_IFREG && st.Mode&unix.S_IFMT != unix.S_IFCHR) {
			unix.Close(fd)
			return nil, fmt.Errorf("not a regular file or a device")
		}
		return os.NewFile(uintptr(fd), p), nil
	}
	warning := ""
	if path != "" && path != "/dev/null" {
		f, err := open(path)
		if err == nil {
			return f, "", nil
		}
		warning = fmt.Sprintf("%s: %v: /dev/null instead", mounts.Escape(path), err)
	}
	f, err := open("/dev/null")
	if err != nil {
		return nil, "", fmt.Errorf("open the container's /dev/null: %w", err)
	}
	return f, warning, nil
}

// lastCap is the host's highest capability number. Stage host reads it
// before it joins anything; a value it cannot read or that makes no
// sense is an error, never a guess.
func lastCap() (int, error) {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 0, fmt.Errorf("read the host's cap_last_cap: %w", err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n < 0 || n > 63 {
		return 0, fmt.Errorf("the host's cap_last_cap is %q: refused", strings.TrimSpace(string(b)))
	}
	return n, nil
}
