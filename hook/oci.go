package hook

// The OCI hook mode: the runtime's state on stdin, and the detached worker
// that follows a restore to its end.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/door"
	"github.com/autofs-restore-hook/autofs-restore-hook/mounts"
	"github.com/autofs-restore-hook/autofs-restore-hook/units"
)

// followerArg is the hidden first argument of the detached worker that
// follows a restore (see ociMain). It is not a user command.
const followerArg = "__autofs-restore-hook-follow"

func init() { door.Register(followerArg, followerMain) }

// ociMain is the OCI hook mode: the runtime-spec state is on stdin.
//
// The hook ships enabled for every container of a node, so it decides
// first, on the state alone, whether the call is its business at all
// (Decide): a fresh start, whatever the container, is an exit 0 that
// looked at nothing but stdin. A restore it cannot or must not fix (a
// host pid namespace, a pid it cannot open, a rootless runtime, a
// follower that cannot start) is logged with the reason and exits 0 too,
// so that the runtime goes on as it would without the hook. Only a state
// that is not a runtime-spec state at all (the runtime is broken) exits
// non-zero (ExitUsage).
func ociMain(stdin io.Reader, opts Options) int {
	st, err := ReadState(stdin)
	if err != nil {
		opts.Log.Errorf("oci hook: %v", err)
		return ExitUsage
	}
	opts.Identity = Identity{ID: st.ID}
	if !validID(st.ID) {
		opts.Identity.ID = mounts.Escape(st.ID)
	}
	setIdentity(opts.Log, opts.Identity)
	log := opts.Log.WithFields(map[string]any{"status": st.Status, "pid": st.Pid})
	v, err := Decide(st, func() (Evidence, error) {
		if err := mayFix(st.Pid); err != nil {
			return Evidence{}, err
		}
		ev, err := evidenceOf(st.Pid)
		ev.Forced = opts.AssumeRestored
		return ev, err
	})
	if err != nil {
		log.Warnf("oci hook: not fixed, the container goes on as without the hook: %v", err)
		return ExitOK
	}
	switch v {
	case Ignore:
		log.Debug("oci hook: no restore: nothing to do")
		return ExitOK
	}
	// Not a fresh start: the name, where the runtime gives one, joins the
	// id on every line.
	opts.Identity = opts.Identity.merge(Identity{Name: annotatedName(st.Annotations)}).merge(identityFromAncestors())
	setIdentity(opts.Log, opts.Identity)
	switch v {
	case FixNow:
		if code := fixMain(st.Pid, opts); code != ExitOK {
			log.Warnf("oci hook: the fix ended with exit %d (the log says why): the container goes on; run `autofs-restore-hook fix --pid %d` to retry", code, st.Pid)
		}
		return ExitOK
	}
	if err := mayFix(st.Pid); err != nil {
		log.Warnf("oci hook: restore not followed, the container goes on as without the hook: %v", err)
		return ExitOK
	}
	// The CRIU plugin, when the CRIU that restores the container has it,
	// fixes the restore in CRIU's own window: a follower would only race
	// it. Installing the package installs both.
	criu := restoringCRIU(st.Pid)
	if pluginLoaded(criu) {
		log.Infof("oci hook: restore in progress, handled by the CRIU plugin (%s loaded by CRIU, pid %d): no follower", PluginFile, criu)
		return ExitOK
	}
	log.Debugf("oci hook: the restoring CRIU (pid %d, 0: not seen) has no CRIU plugin", criu)
	if err := startFollower(st.Pid, opts); err != nil {
		log.Errorf("oci hook: restore not followed, the container goes on as without the hook: start the worker that follows the restore: %v", err)
		return ExitOK
	}
	log.Infof("oci hook: restore in progress: a detached worker follows it (deadline %s)", opts.RestoreTimeout)
	return ExitOK
}

// mayFix says why the hook must not act on the container whose init is
// pid, or nil: the fix needs host root (a rootless runtime runs its hooks
// as its user), and a container of its own (never the host's pid or
// mount namespace).
func mayFix(pid int) error {
	if uid := os.Geteuid(); uid != 0 {
		return fmt.Errorf("running as uid %d (a rootless runtime?): the fix needs root on the host", uid)
	}
	return refuseHost(pid)
}

// followerConfig is everything the detached worker needs, passed whole
// as its one argument (JSON): it reads nothing from its environment, so
// every option of the OCI hook (flags, or the hooks.d JSON's env) reaches
// it as the hook parsed it.
type followerConfig struct {
	Pid       int      `json:"pid"`
	StartTime uint64   `json:"start_time"`
	Config    Config   `json:"config"`
	Identity  Identity `json:"container"`
}

// annotatedName is the container's name in the annotations CRI-O gives
// its containers, if any.
func annotatedName(a map[string]string) string {
	for _, k := range []string{"io.kubernetes.cri-o.Name", "io.kubernetes.container.name"} {
		if validName(a[k]) {
			return a[k]
		}
	}
	return ""
}

// followerEnv is the whole environment of the detached worker.
var followerEnv = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}

// followerCommand is the detached worker for the container whose init is
// pid (started at start): a new session, stdio on null, the minimal
// environment, and opts in its argument.
func followerCommand(exe string, pid int, start uint64, opts Options, null *os.File) (*exec.Cmd, error) {
	b, err := json.Marshal(followerConfig{Pid: pid, StartTime: start, Config: opts.Config, Identity: opts.Identity})
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, followerArg, string(b))
	cmd.Env = followerEnv
	cmd.Stdin, cmd.Stdout, cmd.Stderr = null, null, null
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	return cmd, nil
}

// startFollower starts the detached worker: a new session, stdio on
// /dev/null (never the runtime's pipes, which the runtime waits on), no
// other fd (every fd the hook inherited from the runtime is made
// close-on-exec first), the minimal environment, the options as JSON.
func startFollower(pid int, opts Options) error {
	p, err := mounts.OpenProcess(pid)
	if err != nil {
		return err
	}
	defer p.Close()
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer null.Close()
	cmd, err := followerCommand(exe, pid, p.StartTime, opts, null)
	if err != nil {
		return err
	}
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		return fmt.Errorf("mark inherited fds close-on-exec: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	return cmd.Process.Release()
}

// followerLife bounds the whole life of the detached worker beyond its
// wait for the restore and its fix's deadline: the wait for the
// container's lock (lockTimeout, 30 s), what the automount respawn may
// take past its deadline (a kill, a reap, a check, each at least 5 s),
// and a margin.
const followerLife = 60 * time.Second

// followerMain follows a restore of the container whose init is pid: while
// CRIU still holds the tasks it makes stale mounts catatonic (pre-resume),
// once they run it restarts the masters (post-resume). It gives up at its
// deadline and exits quietly if the restore fails. One deadline covers its
// whole life: the restore timeout, the wait for a node slot (slotWait),
// the restart timeout and followerLife.
func followerMain(args []string) int {
	fds := openFDs() // before the logger opens anything
	var cfg followerConfig
	var cfgErr error
	if len(args) != 1 {
		cfgErr = fmt.Errorf("want one argument, got %d", len(args))
	} else if err := json.Unmarshal([]byte(args[0]), &cfg); err != nil {
		cfgErr = err
	}
	log, closeLog, err := newLogger(cfg.Config.Logging, io.Discard)
	if err != nil {
		log, closeLog, _ = newLogger(LogConfig{}, io.Discard)
		log.Errorf("follow: %v: logging to syslog only", err)
	}
	defer closeLog()
	setLogFields(log, logrus.Fields{"mode": "follow", "wiring": WiringOCI})
	setIdentity(log, cfg.Identity)
	if cfgErr != nil || cfg.Pid <= 0 || cfg.Config.RestoreTimeout <= 0 {
		log.Errorf("follow: bad configuration %q: %v", args, cfgErr)
		return ExitUsage
	}
	pid, start, timeout := cfg.Pid, cfg.StartTime, cfg.Config.RestoreTimeout
	l := log.WithField("pid", pid)
	l.Debugf("follow: started with configuration %s, fds %q and environment %q", args[0], fds, os.Environ())
	restart := cfg.Config.Timeout
	if restart <= 0 {
		restart = maxRestartTimeout // the default for any number of mounts
	}
	life := timeout + slotWait + restart + followerLife
	time.AfterFunc(life, func() {
		l.Errorf("follow: still running after %s (restore timeout, node slot wait, restart timeout and %s): exiting; run `autofs-restore-hook fix --pid %d`", life, followerLife, pid)
		closeLog()
		os.Exit(ExitFailed)
	})
	p, err := mounts.OpenProcess(pid)
	if err != nil || p.StartTime != start {
		l.Info("follow: the container's process is gone: the restore failed or ended; nothing to do")
		return ExitOK
	}
	defer p.Close()
	opts := Options{Config: cfg.Config, Log: log, Wiring: WiringOCI, Identity: cfg.Identity, Mode: "follow"}
	deadline := time.Now().Add(timeout)
	preDone := false
	var polls, inspections int
	named, namedPolls := false, 0 // the init's name is restored (the window is near), at that poll
	var namedAt time.Time
	var preCPU, followed time.Duration // pre-resume's CPU; all CPU when the tasks ran
	window := "missed (pre-resume ran after the tasks were resumed)"
	windowWord, ended := "missed", "gone"
	// What following the restore cost, apart from the fix itself:
	// operators and the benchmarks (make bench) read it in the log.
	defer func() {
		all := cpuUsed()
		if followed == 0 {
			followed = all
		}
		slow := fmt.Sprintf("%d polls before the init had its own name", namedPolls)
		if !named {
			slow = "the init's name never changed"
		}
		l.WithField("ended", ended).Infof("follow: done: %s CPU in all (user and system, its children included): %s following the restore (%d polls, %d mount-table reads; %s), %s pre-resume, %s post-resume; pre-resume window %s",
			all, followed-preCPU, polls, inspections, slow, preCPU, all-followed, window)
		saveFollowerReport(p, &FollowerReport{CPU: Millis(all), Following: Millis(followed - preCPU), PreResume: Millis(preCPU), PostResume: Millis(all - followed),
			Polls: polls, Inspections: inspections, NamedPolls: namedPolls, Window: windowWord, Ended: ended}, l)
	}()
	// One open status file of the pinned init: one system call a poll,
	// at the interval pollInterval gives.
	sf, err := p.OpenStatus()
	if err != nil {
		l.Info("follow: the container's process is gone: the restore failed or ended; nothing to do")
		return ExitOK
	}
	defer sf.Close()
	began := time.Now()
	var criuName []byte // CRIU's name, which the init has until the restorer names it
	for {
		if time.Now().After(deadline) {
			l.Errorf("follow: the restore did not finish within %s (--restore-timeout): giving up; run `autofs-restore-hook fix --pid %d` once it runs", timeout, pid)
			ended = "timeout"
			return ExitFailed
		}
		polls++
		state, tracer, err := sf.State()
		if err != nil {
			l.Info("follow: the container's process is gone: the restore failed; nothing to do")
			return ExitOK
		}
		if tracer == 0 {
			break
		}
		if criuName == nil {
			criuName = tracerName(tracer, sf.Name())
			// The CRIU now known for sure (it traces the init) has the
			// plugin, which the OCI hook could not see: the plugin fixes
			// this restore in CRIU's window, and the follower stands down.
			criu := isCRIU(tracer)
			if criu && pluginLoaded(tracer) {
				l.Infof("follow: the restoring CRIU (pid %d) has the CRIU plugin (%s): it fixes this restore; the follower stops", tracer, PluginFile)
				ended = "plugin"
				return ExitOK
			}
			l.Debugf("follow: traced by pid %d (CRIU: %t), no CRIU plugin", tracer, criu)
		}
		if !named && !bytes.Equal(sf.Name(), criuName) {
			named, namedPolls, namedAt = true, polls, time.Now()
			l.Debugf("follow: the init has its own name again after %s (%d polls): polling every %s for %s", time.Since(began).Round(time.Millisecond), polls, fastPoll, fastFor)
		}
		// CRIU stops every task it restored (a tracing stop) once the
		// restore is done, and runs pre-resume then: before that, the
		// mounts and masters are not worth a look.
		if !preDone && state == 't' {
			inspections++
			if restoredEnough(p) {
				preDone = true
				before := cpuUsed()
				stop := watchResume(p)
				if err := fixPid(pid, []Phase{PreResume}, opts); err != nil {
					logLines(l.Errorf, "follow: pre-resume: ", err)
				}
				took, ranAfter := stop()
				preCPU = cpuUsed() - before
				window, windowWord = "caught", "caught"
				if ranAfter >= 0 {
					windowWord = "entered"
					window = fmt.Sprintf("entered (pre-resume began while CRIU held the tasks; they ran %s after it began, it took %s)", ranAfter.Round(time.Millisecond), took.Round(time.Millisecond))
				}
			}
		}
		time.Sleep(pollInterval(time.Since(began), time.Since(namedAt), named))
	}
	// The tasks run: the restore is over. PreResume still runs if the
	// window was missed (its state mark makes it a no-op otherwise).
	followed = cpuUsed()
	if err := fixPid(pid, []Phase{PreResume, PostResume}, opts); err != nil {
		logLines(l.Errorf, "follow: ", err)
		ended = "failed"
		return ExitFailed
	}
	ended = "fixed"
	return ExitOK
}

// The follower's poll: every fastPoll for fastFor once the init's own
// name is back, slower before and after (pollInterval).
const (
	fastPoll = 2 * time.Millisecond
	fastFor  = 2 * time.Second
	slowPoll = 50 * time.Millisecond
)

// pollInterval is how long the follower sleeps between two reads of the
// init's status, elapsed after it began and sinceNamed after it saw the
// init's own name (if named). Each wake-up costs CPU that a node
// restoring many containers at once needs (about 1 ms under emulation;
// BENCHMARKS.md), and CRIU's pre-resume window (every task stopped,
// before they run) is short (8 to 45 ms in the test VM). So:
//   - Until the init has its own name again, different from CRIU's
//     (CRIU's restorer sets it late in the restore: about a second before
//     the window in the test VM; a follower that starts later sees it at
//     once), a poll only has to notice the name: the interval grows with
//     the restore's time (a 64th of it, fastPoll to slowPoll), so a fast
//     machine, whose restore and window are short, still polls often,
//     and a slow or loaded one rarely.
//   - Then every fastPoll for fastFor (twice what one restore takes
//     there in the test VM).
//   - A window that has not come by then is on a loaded node, where
//     CRIU's last steps are slow too: the interval grows again with the
//     time since the name.
//
// A window missed costs the precision of pre-resume, not the fix:
// post-resume still runs it whole (and so does it for a container whose
// init is named as CRIU is).
func pollInterval(elapsed, sinceNamed time.Duration, named bool) time.Duration {
	if named {
		if sinceNamed < fastFor {
			return fastPoll
		}
		elapsed = sinceNamed
	}
	return min(max(elapsed/64, fastPoll), slowPoll)
}

// watchResume watches, while pre-resume runs, whether CRIU lets the
// tasks run (CRIU does not wait for the follower, as it does for an action
// script): stop ends the watch and says how long pre-resume took and how
// long after its start the init had no tracer any more, or -1 if it
// still has one (pre-resume ended inside the window).
func watchResume(p *mounts.Process) (stop func() (took, ranAfter time.Duration)) {
	start := time.Now()
	done := make(chan struct{})
	ran := make(chan time.Duration, 1)
	go func() {
		sf, err := p.OpenStatus()
		if err != nil {
			ran <- 0 // gone: it ran (and ended) at once
			return
		}
		defer sf.Close()
		for {
			if _, tracer, err := sf.State(); err != nil || tracer == 0 {
				ran <- time.Since(start)
				return
			}
			select {
			case <-done:
				if _, tracer, err := sf.State(); err != nil || tracer == 0 {
					ran <- time.Since(start)
				} else {
					ran <- -1
				}
				return
			case <-time.After(fastPoll):
			}
		}
	}()
	return func() (time.Duration, time.Duration) {
		took := time.Since(start)
		close(done)
		r := <-ran
		if r > took {
			r = took // seen by the last look, after the step
		}
		return took, r
	}
}

// tracerName is the name of the process tracing the init (CRIU, whose
// name the init inherited when CRIU forked it), or a copy of the init's
// own name now if the tracer's cannot be read.
func tracerName(tracer int, initName []byte) []byte {
	if st, err := mounts.ReadStatus(tracer); err == nil && st["Name"] != "" {
		return []byte(st["Name"])
	}
	return bytes.Clone(initName)
}

// cpuUsed is the user and system time of this process and of its
// children waited for.
func cpuUsed() time.Duration {
	var self, children unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &self)
	unix.Getrusage(unix.RUSAGE_CHILDREN, &children)
	var d time.Duration
	for _, t := range []unix.Timeval{self.Utime, self.Stime, children.Utime, children.Stime} {
		d += time.Duration(t.Nano())
	}
	return d.Round(10 * time.Microsecond)
}

// restoredEnough tells whether CRIU has restored the mounts and the
// masters: every autofs mount is served by a process that is a known
// master again (systemd or automount by its executable and name, holding
// the mount's pipe, which CRIU restores last). While CRIU still builds
// the mount tree, autofs mounts sit in its staging namespace under their
// restorer processes, which match none of these. It runs every poll until
// then, so it reads only what it needs: the mount table and the group
// leaders the mounts name, not every process of the container as
// inspect does (which cost the follower about as much CPU as the restore
// itself; BENCHMARKS.md).
func restoredEnough(p *mounts.Process) bool {
	t, err := mounts.ReadTable(p.Pid)
	if err != nil || len(t.Autofs) == 0 {
		return false
	}
	initNS, err := mounts.Namespace(p.Pid, "pid")
	if err != nil {
		return false
	}
	var leaders []int
	for _, a := range t.Autofs {
		g := a.Options.PGrp
		if g <= 0 {
			return false
		}
		if !slices.Contains(leaders, g) {
			if ns, err := mounts.Namespace(g, "pid"); err != nil || ns != initNS {
				return false
			}
			leaders = append(leaders, g)
		}
	}
	procs := mounts.SnapshotProcs(leaders)
	var known []int // masters classified already: many mounts, one master
	for _, a := range t.Autofs {
		m := procs.MasterOf(a.Options)
		if m <= 0 {
			return false
		}
		if slices.Contains(known, m) {
			continue
		}
		known = append(known, m)
		st, err := mounts.ReadStatus(m)
		if err != nil {
			return false
		}
		nsPid := 0
		if ns := st.NSpid(); len(ns) > 0 {
			nsPid = ns[len(ns)-1]
		}
		if k := units.Classify(m, nsPid, st["Name"]); k != units.Systemd && k != units.Automount {
			return false
		}
	}
	return true
}

func logLines(f func(string, ...any), prefix string, err error) {
	for _, line := range strings.Split(err.Error(), "\n") {
		f("%s%s", prefix, line)
	}
}

// openFDs lists the process's open fds as "N=target" (from /proc/self/fd;
// the directory's own fd is among them).
func openFDs() []string {
	ents, _ := os.ReadDir("/proc/self/fd")
	var fds []string
	for _, e := range ents {
		l, _ := os.Readlink("/proc/self/fd/" + e.Name())
		fds = append(fds, e.Name()+"="+l)
	}
	return fds
}

// saveFollowerReport writes the follower's report into the container's
// state file (status --json shows it), unless the container is gone.
func saveFollowerReport(p *mounts.Process, r *FollowerReport, log *logrus.Entry) {
	if p.Check() != nil || !hasState(p) {
		return // gone, or nothing was ever recorded (no autofs mounts)
	}
	sf, err := lockState(p, lockTimeout)
	if err != nil {
		log.Warnf("follow: record the report: %v", err)
		return
	}
	defer sf.Unlock()
	if sf.rec.LastFix == nil {
		sf.rec.LastFix = &Outcome{}
	}
	sf.rec.LastFix.Follower = r
	if err := sf.Save(); err != nil {
		log.Warnf("follow: record the report: %v", err)
	}
}
