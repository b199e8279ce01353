package units

// The spawner's two stages, which run in children of the hook: stage
// host joins the daemon's cgroups and namespaces but mnt, stage container
// joins its mount namespace and root, drops what the daemon did not have
// and starts it.

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
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/mounts"
)

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
	// The container stage, a process in the container's pid namespace,
	// gets no capability the daemon could not have: its bounding set, and
	// so its permitted set after the exec (root's), are the daemon's. A
	// process of the container that could trace it gains nothing. Per
	// thread: this one (locked) forks it.
	if err := limitCaps(req.Daemon.CapBnd, req.Daemon.CapInh&req.Daemon.CapBnd, req.LastCap); err != nil {
		return fail(fmt.Errorf("limit the container stage's capabilities: %w", err))
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
	// Its result is taken as soon as it is printed: the stage's exit
	// closes its copies of the daemon's stdio files, and a close of a FUSE
	// file the container serves may never return.
	pr, pw, err := os.Pipe()
	if err != nil {
		return fail(fmt.Errorf("container stage output: %w", err))
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	err = cmd.Start()
	lifeR.Close()
	pw.Close()
	if err != nil {
		pr.Close()
		return fail(fmt.Errorf("container stage: %v", err))
	}
	said := make(chan spawnResult, 1)
	var lines limitedLines
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			lines.add(sc.Text())
			var r spawnResult
			if json.Unmarshal(sc.Bytes(), &r) == nil && (r.NsPid > 0 || r.Error != "") {
				said <- r
				return
			}
		}
		close(said)
	}()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var r spawnResult
	var ok bool
	select {
	case r, ok = <-said:
	case <-ctx.Done():
		cmd.Process.Kill()
		return fail(fmt.Errorf("container stage: killed at the deadline (it said: %s)", mounts.Escape(lines.String())))
	}
	if !ok {
		werr := <-exited
		return fail(fmt.Errorf("container stage: %v: %s", werr, mounts.Escape(lines.String())))
	}
	select {
	case <-exited:
	case <-time.After(exitGrace):
		cmd.Process.Kill()
		r.Warnings = append(r.Warnings, fmt.Sprintf("the spawner's container stage (pid %d) does not exit: left behind (%s)", cmd.Process.Pid, mounts.ThreadStates(cmd.Process.Pid)))
	}
	out.Encode(r)
	if r.Error != "" {
		return 1
	}
	return 0
}

// exitGrace is how long the container stage gets to exit after it said
// its result.
const exitGrace = 2 * time.Second

// limitedLines keeps the last lines of a child's output, 4 KiB at most.
type limitedLines struct {
	mu   sync.Mutex
	b    []string
	size int
}

func (l *limitedLines) add(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b, l.size = append(l.b, s), l.size+len(s)
	for len(l.b) > 1 && l.size > 4096 {
		l.size -= len(l.b[0])
		l.b = l.b[1:]
	}
}

func (l *limitedLines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.b, "; ")
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
	caps := stageCaps(req.LastCap)
	for c := 0; c <= req.LastCap; c++ {
		if in, _ := unix.PrctlRetInt(unix.PR_CAPBSET_READ, uintptr(c), 0, 0, 0); in == 1 && d.CapBnd&(1<<c) == 0 {
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
	out.Encode(spawnResult{NsPid: cmd.Process.Pid, Warnings: warnings, StageCaps: caps})
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

// limitCaps drops from the calling thread's bounding set every capability
// not in bnd and sets its inheritable set to inh: after an exec as root,
// the permitted set is inh | bnd.
func limitCaps(bnd, inh uint64, lastCap int) error {
	for c := 0; c <= lastCap; c++ {
		if bnd&(1<<c) == 0 {
			if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
				return fmt.Errorf("drop capability %d from the bounding set: %w", c, err)
			}
		}
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capget: %w", err)
	}
	data[0].Inheritable, data[1].Inheritable = uint32(inh), uint32(inh>>32)
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("set inheritable capabilities: %w", err)
	}
	return nil
}

// stageCaps says which capabilities the calling thread started with, read
// from the kernel (never from a /proc): bounding and permitted sets.
func stageCaps(lastCap int) string {
	var bnd uint64
	for c := 0; c <= lastCap; c++ {
		if in, _ := unix.PrctlRetInt(unix.PR_CAPBSET_READ, uintptr(c), 0, 0, 0); in == 1 {
			bnd |= 1 << c
		}
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	unix.Capget(&hdr, &data[0])
	prm := uint64(data[0].Permitted) | uint64(data[1].Permitted)<<32
	return fmt.Sprintf("bnd:%016x,prm:%016x", bnd, prm)
}
