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
func RespawnAutomount(c *mounts.Process, pid int, targets []mounts.Target, o RespawnOptions) (*Respawned, error) {
	deadline := time.Now().Add(o.Timeout)
	d, err := mounts.OpenProcess(pid)
	if err != nil {
		return nil, err
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
	if err := sameBinary(files[1], files[3], info.Exe); err != nil {
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
	if err := releaseThroughDaemon(d, targets, o.Log); err != nil && o.Log != nil {
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
	return startAgain(c, info, files, all, deadline)
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
func startAgain(c *mounts.Process, info *Daemon, files []*os.File, targets []mounts.Target, deadline time.Time) (*Respawned, error) {
	newPid, err := spawn(c, info, files, time.Until(deadline))
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
	if leaked := leakedFDs(newPid, ours); len(leaked) > 0 {
		return res, fmt.Errorf("the new automount (pid %d) holds files of the hook's: fds %v", newPid, leaked)
	}
	return res, nil
}

// leakedFDs lists the fds of pid that refer to one of ours (same device
// and inode), or to our own executable. It copies each fd with
// pidfd_getfd and fstats it: no path of the container is walked.
func leakedFDs(pid int, ours []*os.File) []int {
	p, err := mounts.OpenProcess(pid)
	if err != nil {
		return nil
	}
	defer p.Close()
	type key struct{ dev, ino uint64 }
	mine := map[key]bool{}
	add := func(fd int) {
		var st unix.Stat_t
		if unix.Fstat(fd, &st) == nil {
			mine[key{st.Dev, st.Ino}] = true
		}
	}
	for _, f := range ours {
		add(int(f.Fd()))
	}
	if exe, err := os.Open("/proc/self/exe"); err == nil {
		add(int(exe.Fd()))
		exe.Close()
	}
	var leaked []int
	p.EachFD(func(n int, f *os.File) bool {
		var st unix.Stat_t
		if unix.Fstat(int(f.Fd()), &st) == nil && mine[key{st.Dev, st.Ino}] {
			leaked = append(leaked, n)
		}
		return true
	})
	return leaked
}

// sameBinary checks that path, resolved inside the container's root
// (openat2 RESOLVE_IN_ROOT: no symlink of the container leads out of it),
// is still the executable the daemon runs.
func sameBinary(root, exe *os.File, path string) error {
	fd, err := unix.Openat2(int(root.Fd()), path, &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS})
	if err != nil {
		return fmt.Errorf("%s is gone from the container (%v): refused", path, err)
	}
	defer unix.Close(fd)
	var a, b unix.Stat_t
	if err := unix.Fstat(fd, &a); err != nil {
		return err
	}
	if err := unix.Fstat(int(exe.Fd()), &b); err != nil {
		return err
	}
	if a.Dev != b.Dev || a.Ino != b.Ino {
		return fmt.Errorf("%s is no longer the binary the daemon ran (replaced since it started): refused", path)
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
func releaseThroughDaemon(d *mounts.Process, targets []mounts.Target, logf func(string)) error {
	ctl, err := mounts.OpenControlDevice()
	if err != nil {
		return err
	}
	defer ctl.Close()
	for _, where := range mounts.CatatonicThroughFDs(ctl, d, targets) {
		if logf != nil {
			logf(fmt.Sprintf("%s: made catatonic through the daemon's ioctl fd", mounts.Escape(where)))
		}
	}
	return nil
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
	LastCap int    `json:"last_cap"`
	Mounts  string `json:"cgroup_mounts"` // host /proc/self/mountinfo, for cgroup paths
	Timeout string `json:"timeout"`
}

// spawn runs the spawner chain and returns the new daemon's host pid.
func spawn(c *mounts.Process, d *Daemon, files []*os.File, timeout time.Duration) (int, error) {
	exe, err := os.Executable()
	if err != nil {
		return 0, err
	}
	self, err := os.Open(exe)
	if err != nil {
		return 0, err
	}
	defer self.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, err := json.Marshal(spawnRequest{Daemon: d})
	if err != nil {
		return 0, err
	}
	cmd := exec.CommandContext(ctx, exe, SpawnerArg, "host")
	cmd.ExtraFiles = append(append([]*os.File{}, files...), self)
	cmd.Stdin = bytes.NewReader(req)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return 0, fmt.Errorf("spawner: %v: %s%s", err, strings.TrimSpace(stderr.String()), lastError(out))
	}
	var r struct {
		NsPid int    `json:"ns_pid"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(lastLine(out), &r); err != nil || r.Error != "" || r.NsPid <= 0 {
		return 0, fmt.Errorf("spawner: %s%s", r.Error, strings.TrimSpace(stderr.String()))
	}
	return hostPid(c.Pid, r.NsPid)
}

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
	// The child is the first process of ours in the container's pid
	// namespace.
	cmd := exec.Command("/proc/self/fd/3", SpawnerArg, "container")
	cmd.Args[0] = "autofs-restore-hook"
	cmd.ExtraFiles = []*os.File{os.NewFile(fdSelf, "self"), os.NewFile(fdCwd, "cwd"), os.NewFile(fdExe, "exe"), os.NewFile(fdTime, "timens"),
		os.NewFile(fdMnt, "mnt"), os.NewFile(fdRoot, "root")}
	cmd.Env = []string{EnvTimeNSFD + "=6"}
	cmd.Stdin = bytes.NewReader(body)
	cmd.Dir = "/"
	var buf bytes.Buffer
	cmd.Stdout = &buf
	cmd.Stderr = &buf
	err = cmd.Run()
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
	)
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
	var stdio [3]*os.File
	for i, p := range d.Stdio {
		f, err := openStdio(p, i == 0)
		if err != nil {
			return fail(err)
		}
		stdio[i] = f
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
	cmd := &exec.Cmd{Path: d.Exe, Args: d.Argv, Env: d.Env}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdio[0], stdio[1], stdio[2]
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setsid:     true,
		Credential: &syscall.Credential{Uid: d.UID[1], Gid: d.GID[1], Groups: d.Groups},
	}
	if err := cmd.Start(); err != nil {
		return fail(fmt.Errorf("start %s: %w", d.Argv[0], err))
	}
	out.Encode(map[string]int{"ns_pid": cmd.Process.Pid})
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

// openStdio opens one of the daemon's stdio files again, inside the
// container: the file it had when that is a regular file or a character
// device (never a FIFO or socket, whose open could block or which are
// gone), else /dev/null.
func openStdio(path string, read bool) (*os.File, error) {
	flags := os.O_WRONLY | os.O_APPEND
	if read {
		flags = os.O_RDONLY
	}
	if path != "" && path != "/dev/null" {
		var st unix.Stat_t
		if unix.Stat(path, &st) == nil && (st.Mode&unix.S_IFMT == unix.S_IFREG || st.Mode&unix.S_IFMT == unix.S_IFCHR) {
			if f, err := os.OpenFile(path, flags|unix.O_NONBLOCK|unix.O_NOCTTY, 0); err == nil {
				return f, nil
			}
		}
	}
	f, err := os.OpenFile("/dev/null", flags, 0)
	if err != nil {
		return nil, fmt.Errorf("open the container's /dev/null: %w", err)
	}
	return f, nil
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
