package units

// The spawner's two stages, which run in children of the hook: stage
// host joins the daemon's cgroups and namespaces but mnt, stage container
// joins its mount namespace and root, drops what the daemon did not have
// and starts it.

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/door"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/failpoint"
	"github.com/autofs-restore-hook/autofs-restore-hook/mounts"
)

// The spawner's two stages, door tasks (internal/door). Stage host
// (spawnHost) runs on the host: it reads the host's cap_last_cap, moves
// itself into the old daemon's cgroups and starts stage container
// (spawnContainer) from a thread that joined the daemon's namespaces but
// the mount namespace (pid for its children) and whose bounding set is
// the daemon's, plus what entering takes where the daemon lacks it (its C
// constructor drops that before the stage is forked into the container).
// Stage container lives in the container's pid and time namespaces; it
// joins the daemon's mount namespace and root first, then drops what the
// old daemon did not have, starts the daemon as a session leader with its
// stdio opened again, reports its pid and exits, so that the container's
// init adopts it. Each passes the new daemon's pidfd back.
var (
	spawnHost      = door.NewTask(SpawnerArg+"-host", stageHost)
	spawnContainer = door.NewTask(SpawnerArg+"-container", stageContainer)
)

// The files of the container stage (the old daemon's working directory
// and executable, to check d.Exe against), handed by stage host.
const (
	fileCwd = "cwd"
	fileExe = "exe"
)

// stageHost returns the container stage's result and passes on the new
// daemon's pidfd. It is handed the old daemon's files by their names in
// daemonFileNames.
func stageHost(c *door.Child, req spawnRequest) (*spawnResult, error) {
	if req.Daemon == nil {
		return nil, errors.New("spawner: no daemon in the request")
	}
	f, err := c.Take(daemonFileNames...)
	if err != nil {
		return nil, fmt.Errorf("spawner: %w", err)
	}
	last, err := door.LastCap()
	if err != nil {
		return nil, err
	}
	req.LastCap = last
	if err := door.JoinCgroups(req.Daemon.Cgroups); err != nil {
		return nil, err
	}
	// What the container stage cannot set itself once it has no more
	// power than the daemon (a higher hard limit than ours, a lower
	// oom_score_adj), it inherits from here.
	if err := raiseHardLimits(req.Daemon.Rlimits); err != nil {
		return nil, err
	}
	if err := os.WriteFile("/proc/self/oom_score_adj", []byte(strconv.Itoa(req.Daemon.OOMScoreAdj)), 0); err != nil {
		return nil, fmt.Errorf("set oom_score_adj %d: %w", req.Daemon.OOMScoreAdj, err)
	}
	var warnings []string
	// What joining the mount namespace, chroot and joining the pid
	// namespace take (CAP_SYS_CHROOT and CAP_SYS_ADMIN), where the daemon
	// could not have it: CRI-O's default set has no CAP_SYS_CHROOT.
	// The constructor drops these again, with CAP_SETPCAP to drop them,
	// before it forks the stage (door.Entry.DropAfter).
	enterCaps := uint64(1<<unix.CAP_SYS_CHROOT|1<<unix.CAP_SYS_ADMIN) &^ req.Daemon.CapBnd
	if enterCaps != 0 {
		enterCaps |= 1 << unix.CAP_SETPCAP &^ req.Daemon.CapBnd
	}
	// The container stage, the first process of ours in the container's
	// pid namespace, gets no capability the daemon could not have: the
	// starting thread's bounding set, and so the stage's permitted set
	// after the exec (root's), are the daemon's and enterCaps, which the
	// constructor drops before the fork that puts the stage in the
	// container's pid namespace (and the stage checks). The namespaces but the
	// mount and pid ones are joined here, for the stage; the stage is our
	// own executable, started through the fd opened on the host, and its
	// C constructor joins the container's mount namespace and root, then
	// its pid namespace (door.Entry): it is born there with nothing of
	// the host's. Its cgroups are ours, joined above.
	res, pidfd, err := spawnContainer.Call(door.Spec{
		Files:         door.Files{fileCwd: f["cwd"], fileExe: f["exe"]},
		Enter:         &door.Entry{MountNS: f["ns/mnt"], Root: f["root"], PidNS: f["ns/pid"], DropAfter: enterCaps, TimeNS: f["ns/time"]},
		Deadline:      time.Unix(0, req.Deadline),
		IntoContainer: true,
		Log:           func(_ door.Level, s string, _ door.Fields) { warnings = append(warnings, mounts.Escape(s)) },
		Prepare: func() error {
			for _, ns := range []struct {
				name string
				kind int
			}{{"ns/ipc", unix.CLONE_NEWIPC}, {"ns/uts", unix.CLONE_NEWUTS}, {"ns/net", unix.CLONE_NEWNET}, {"ns/cgroup", unix.CLONE_NEWCGROUP}} {
				if err := unix.Setns(int(f[ns.name].Fd()), ns.kind); err != nil {
					return fmt.Errorf("join the container's %s namespace: %w", ns.name[len("ns/"):], err)
				}
			}
			if err := door.LimitCaps(req.Daemon.CapBnd|enterCaps, req.Daemon.CapInh&req.Daemon.CapBnd, last); err != nil {
				return fmt.Errorf("limit the container stage's capabilities: %w", err)
			}
			return nil
		},
	}, req)
	if err != nil {
		return nil, fmt.Errorf("container stage: %w", err)
	}
	c.PassBack(pidfd...)
	if res == nil {
		res = &spawnResult{}
	}
	res.Warnings = append(res.Warnings, warnings...)
	return res, nil
}

// stageContainer starts the daemon and returns its pid in the container,
// and passes back a pidfd of it (CLONE_PIDFD): the hook pins the very
// process started.
func stageContainer(c *door.Child, req spawnRequest) (*spawnResult, error) {
	res, pidfd, err := startDaemon(c, req)
	c.PassBack(pidfd...)
	return res, err
}

// startDaemon is the work of stageContainer.
func startDaemon(c *door.Child, req spawnRequest) (*spawnResult, []*os.File, error) {
	d := req.Daemon
	if d == nil {
		return nil, nil, errors.New("spawner: no daemon in the request")
	}
	files, err := c.Take(fileCwd, fileExe)
	if err != nil {
		return nil, nil, fmt.Errorf("spawner: %w", err)
	}
	cwd, exe := int(files[fileCwd].Fd()), int(files[fileExe].Fd())
	deadline := time.Unix(0, req.Deadline)
	// Born in the container's mount namespace and root (door.Entry),
	// every thread of the stage with it. Every fd is close-on-exec since
	// door.Begin: none reaches the daemon.
	if entered, err := door.Entered(); err != nil || !entered {
		return nil, nil, fmt.Errorf("the container stage is not in the container (%v): refused", err)
	}
	// What entering took (door.Entry.DropAfter) is gone: the stage holds
	// nothing the daemon's bounding set lacks.
	if extra := door.BoundingSet(req.LastCap) &^ d.CapBnd; extra != 0 {
		return nil, nil, fmt.Errorf("the container stage holds capabilities %#x that the daemon's bounding set lacks: refused", extra)
	}
	// The procfs the new daemon is checked through at its exec, made
	// now, while the stage has its full power (none of the daemon's
	// limits, credentials or filters yet, which the container chose):
	// without it the daemon is not started.
	if _, err := door.OwnPidNSProc(); err != nil {
		return nil, nil, fmt.Errorf("the new daemon could not be checked at its exec: %w: not started", err)
	}
	if err := unix.Fchdir(cwd); err != nil {
		return nil, nil, fmt.Errorf("enter the daemon's working directory: %w", err)
	}
	stdio, warnings, err := openStdio(d, min(stdioTimeout, time.Until(deadline)))
	if err != nil {
		return nil, nil, err
	}
	// Bounding and inheritable sets: per thread, inherited by the fork
	// below (this goroutine stays on its thread).
	caps := door.Caps(req.LastCap)
	if err := door.LimitCaps(d.CapBnd, d.CapInh, req.LastCap); err != nil {
		return nil, nil, err
	}
	if d.NoNewPriv {
		if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			return nil, nil, fmt.Errorf("set no_new_privs: %w", err)
		}
	}
	// The stage's root is the container's (door.Entry).
	if root, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err == nil {
		if note := removeStaleFlag(root, d.NsPid, req.FlagMounts); note != "" {
			warnings = append(warnings, note)
		}
		unix.Close(root)
	}
	// Exec by path, so that the daemon's name (comm) is its own, but only
	// if the path still names the very binary that ran (the fd we hold).
	var want, got unix.Stat_t
	if err := unix.Fstat(exe, &want); err != nil {
		return nil, nil, fmt.Errorf("stat the old executable: %w", err)
	}
	if err := unix.Stat(d.Exe, &got); err != nil || got.Dev != want.Dev || got.Ino != want.Ino {
		return nil, nil, fmt.Errorf("%s is no longer the binary the daemon ran (replaced or removed): refused", d.Exe)
	}
	// The path can still change before the exec: the new daemon is held
	// at its exec, before its first instruction, and its executable
	// compared with exe (atExec). Not execveat on exe: before Linux
	// 6.13 the daemon's name (comm) would be the fd's number, which init
	// scripts look daemons up by.
	failpoint.Handshake("swap-before-exec", "/run/arh-failpoint-swap-before-exec", func(s string) { warnings = append(warnings, s) })
	if time.Now().After(deadline) {
		return nil, nil, errors.New("the hook's deadline passed before the start: not started")
	}
	// The old daemon's umask, personality and limits, its LSM label for
	// the exec, then its seccomp filters, last: on this thread, which
	// the daemon is forked from.
	// Limits this Go process could not live under are set on the daemon
	// at its exec, which it stops at, traced by this thread.
	late := lateLimits(d)
	if err := setProcessState(d, late); err != nil {
		return nil, nil, err
	}
	if err := setExecLabel(d); err != nil {
		return nil, nil, err
	}
	if err := setSecurebits(d); err != nil {
		return nil, nil, err
	}
	// The daemon's credentials on this thread, then its filters, as runc
	// and CRIU order them: a filter may deny setgroups or setuid, which
	// the old daemon never needed after its own start. A daemon that is
	// not root and has no no_new_privs could not install them once it is
	// not root: filters first then, and they must allow the credentials.
	if d.UID[1] == 0 || d.NoNewPriv {
		if err := setThreadCreds(d); err != nil {
			return nil, nil, err
		}
		if err := dropAfterSetuid(d); err != nil {
			return nil, nil, err
		}
		if err := installSeccomp(d.SeccompFilters); err != nil {
			return nil, nil, err
		}
	} else {
		if err := installSeccomp(d.SeccompFilters); err != nil {
			return nil, nil, err
		}
		if err := setThreadCreds(d); err != nil {
			return nil, nil, err
		}
		if err := dropAfterSetuid(d); err != nil {
			return nil, nil, err
		}
	}
	// A copy, never nil: an empty environment stays empty (nil would
	// give the daemon the stage's).
	cmd := &exec.Cmd{Path: d.Exe, Args: d.Argv, Env: append([]string{}, d.Env...)}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdio[0], stdio[1], stdio[2]
	pidfd := -1
	// No Credential: the fork takes this thread's, set above.
	// Held at its exec where its filters let it be traced (they must
	// when there are late limits: lateLimitsAllowed, before the kill).
	why := req.NoHold
	if why == "" {
		if err := traceAllowed(d); err != nil {
			why = "its seccomp filters forbid it: " + err.Error()
		}
	}
	held := len(late) > 0 || why == ""
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setsid: true,
		PidFD:  &pidfd,
		Ptrace: held,
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("start %s: %w", d.Argv[0], err)
	}
	pid := cmd.Process.Pid
	cmd.Process.Release()
	if held {
		if err := atExec(pid, late, exe, d.Argv); err != nil {
			unix.Kill(pid, unix.SIGKILL)
			if pidfd >= 0 {
				unix.Close(pidfd)
			}
			return nil, nil, fmt.Errorf("start %s: %w: killed before it ran", d.Argv[0], err)
		}
	} else {
		warnings = append(warnings, "not held at its exec ("+why+"): the program it runs is checked after its start only")
	}
	res := &spawnResult{NsPid: pid, Warnings: warnings, StageCaps: caps}
	if pidfd < 0 {
		return res, nil, nil // the hook falls back to looking the pid up
	}
	return res, []*os.File{os.NewFile(uintptr(pidfd), "pidfd")}, nil
}

// raiseHardLimits raises our hard limits to the daemon's where they are
// lower, so that the container stage can set the daemon's exactly.
func raiseHardLimits(want [][2]uint64) error {
	for r, w := range want {
		var cur unix.Rlimit
		if err := unix.Getrlimit(r, &cur); err != nil {
			return fmt.Errorf("getrlimit %d: %w", r, err)
		}
		if w[1] > cur.Max {
			if err := unix.Setrlimit(r, &unix.Rlimit{Cur: cur.Cur, Max: w[1]}); err != nil {
				return fmt.Errorf("raise hard limit %s to %d: %w", limitNames[r], w[1], err)
			}
		}
	}
	return nil
}

// setThreadCreds gives the calling thread, and so a child forked from it,
// the daemon's groups, gid and uid (real, effective, saved). Raw system
// calls: Go's own set them on every thread of the process. From root to
// another uid the thread's capabilities go, as they went for the daemon.
func setThreadCreds(d *Daemon) error {
	var gp unsafe.Pointer
	if len(d.Groups) > 0 {
		gp = unsafe.Pointer(&d.Groups[0])
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(d.Groups)), uintptr(gp), 0); e != 0 {
		return fmt.Errorf("set groups %v: %w", d.Groups, e)
	}
	runtime.KeepAlive(d.Groups)
	g, u := uintptr(d.GID[1]), uintptr(d.UID[1])
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, g, g, g); e != 0 {
		return fmt.Errorf("set gid %d: %w", d.GID[1], e)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, u, u, u); e != 0 {
		return fmt.Errorf("set uid %d: %w", d.UID[1], e)
	}
	return nil
}

// setSecurebits gives the calling thread, and so a child forked from it,
// the daemon's securebits that an exec keeps (it needs CAP_SETPCAP,
// which Reproducible checked the daemon's bounding set for). Set before
// the credentials: with SECBIT_NO_SETUID_FIXUP a change from root to
// the daemon's uid keeps the thread's capabilities, which are then
// dropped, as the old daemon (not root, Reproducible) had none.
func setSecurebits(d *Daemon) error {
	if d.Securebits == nil || *d.Securebits&securebitsExecKept == 0 {
		return nil
	}
	bits := *d.Securebits & securebitsExecKept
	if _, _, e := unix.RawSyscall(unix.SYS_PRCTL, unix.PR_SET_SECUREBITS, uintptr(bits), 0); e != 0 {
		return fmt.Errorf("set securebits %#x: %w", bits, e)
	}
	return nil
}

// dropAfterSetuid drops every capability of the calling thread where the
// daemon is not root and SECBIT_NO_SETUID_FIXUP kept them through the
// change of uid.
func dropAfterSetuid(d *Daemon) error {
	if d.UID[1] == 0 || d.Securebits == nil || *d.Securebits&secbitNoSetuidFixup == 0 {
		return nil
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var none [2]unix.CapUserData
	if err := unix.Capset(&hdr, &none[0]); err != nil {
		return fmt.Errorf("drop the capabilities kept through setuid (SECBIT_NO_SETUID_FIXUP): %w", err)
	}
	return nil
}

// setProcessState gives the calling thread and process the daemon's
// umask (this thread's own: CLONE_FS was unshared), personality and
// resource limits but those in late, which the daemon inherits at the
// fork.
func setProcessState(d *Daemon, late map[int]unix.Rlimit) error {
	unix.Umask(int(d.Umask))
	if _, _, e := unix.RawSyscall(unix.SYS_PERSONALITY, uintptr(d.Personality), 0, 0); e != 0 {
		return fmt.Errorf("set personality %#x: %w", d.Personality, e)
	}
	for r, w := range d.Rlimits {
		if _, ok := late[r]; ok {
			continue // set on the daemon after its exec (latelimits.go)
		}
		if err := unix.Setrlimit(r, &unix.Rlimit{Cur: w[0], Max: w[1]}); err != nil {
			return fmt.Errorf("set limit %s to %d/%d: %w", limitNames[r], w[0], w[1], err)
		}
	}
	return nil
}
