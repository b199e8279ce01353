package hook

// The detached worker of the OCI hook: it follows a restore to its end,
// runs pre-resume in CRIU's window if it can, post-resume once the tasks
// run, and records what following cost.

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/door"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
	"github.com/autofs-restore-hook/autofs-restore-hook/mounts"
	"github.com/autofs-restore-hook/autofs-restore-hook/units"
)

// follower is the detached worker that follows a restore (see ociMain):
// its role is the hidden first argument "__autofs-restore-hook-follow",
// its configuration the second.
var follower = door.NewDetached("__autofs-restore-hook-follow", followerMain)

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
func followerMain(cfg followerConfig, raw string, cfgErr error) int {
	fds := openFDs() // before the logger opens anything
	log, closeLog, _ := openLog(cfg.Config.Logging, io.Discard, logrus.Fields{"mode": "follow", "wiring": WiringOCI}, true)
	defer closeLog()
	setIdentity(log, cfg.Identity)
	if cfgErr != nil || cfg.Init.Pid <= 0 || cfg.Config.RestoreTimeout <= 0 {
		log.Errorf("follow: bad configuration %q: %v", raw, cfgErr)
		return ExitUsage
	}
	pid, timeout := cfg.Init.Pid, cfg.Config.RestoreTimeout
	l := log.WithField("pid", pid)
	l.Debugf("follow: started with configuration %s, fds %q and environment %q", raw, fds, os.Environ())
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
	p, err := cfg.Init.Open()
	if err != nil {
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
func watchResume(p *proc.Process) (stop func() (took, ranAfter time.Duration)) {
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
	if st, err := proc.ReadStatus(tracer); err == nil && st["Name"] != "" {
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
func restoredEnough(p *proc.Process) bool {
	t, err := mounts.ReadTable(p.Pid)
	if err != nil || len(t.Autofs) == 0 {
		return false
	}
	initNS, err := proc.Namespace(p.Pid, "pid")
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
			if ns, err := proc.Namespace(g, "pid"); err != nil || ns != initNS {
				return false
			}
			leaders = append(leaders, g)
		}
	}
	procs := mounts.SnapshotProcs(leaders)
	var known []proc.Ref // masters classified already: many mounts, one master
	for _, a := range t.Autofs {
		m := procs.MasterOf(a.Options)
		if m.Pid <= 0 {
			return false
		}
		if slices.Contains(known, m) {
			continue
		}
		if _, k := masterOf(procs, a.Options); k != units.Systemd && k != units.Automount {
			return false
		}
		known = append(known, m)
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
func saveFollowerReport(p *proc.Process, r *FollowerReport, log *logrus.Entry) {
	if p.Check() != nil || !hasState(p) {
		return // gone, or nothing was ever recorded (no autofs mounts)
	}
	sf, err := lockState(p, lockTimeout)
	if err != nil {
		log.Warnf("follow: record the report: %v", err)
		return
	}
	defer sf.Unlock()
	sf.rec.lastFix().Follower = r
	if err := sf.Save(); err != nil {
		log.Warnf("follow: record the report: %v", err)
	}
}
