package hook

// The CRIU action-script mode: which actions act (pre-resume,
// post-resume), and the fix run they share with the fix command.

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/mounts"
)

// criuMain is the CRIU action-script mode. It acts at pre-resume and
// post-resume, and at post-setup-namespaces (prepareCgroups), and always
// returns 0: pre-resume "must not fail",
// and a failure elsewhere must never abort a restore. Errors go to the
// log (syslog, the log file and CRIU's own log through stderr).
func criuMain(action, initPid string, stderr io.Writer) int {
	var phases []Phase
	switch action {
	case "pre-resume":
		phases = []Phase{PreResume}
	case "post-resume":
		phases = []Phase{PostResume}
	case "post-setup-namespaces":
		// Before CRIU opens the container's files: its cgroups, which
		// a cgroup v2 restore of systemd needs (prepareCgroups), on a
		// host whose /sys/fs/cgroup is the unified hierarchy only (as
		// internal/cstart decides before the runtime starts).
		var st unix.Statfs_t
		if unix.Statfs("/sys/fs/cgroup", &st) != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
			return ExitOK
		}
	default:
		return ExitOK
	}
	inv, cfgErr := LoadConfig("", nil, os.Getenv)
	log, closeLog, err := newLogger(inv.Config.Logging, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "autofs-restore-hook: %v; logging to stderr only\n", err)
		log, closeLog, _ = newLogger(LogConfig{NoSyslog: true}, stderr)
	}
	defer closeLog()
	wiring := withWiring(log)
	// The runtime above CRIU names the container (runc, crun restore ID;
	// podman's and CRI-O's conmon -c ID -n NAME).
	ident := identityFromAncestors()
	setLogFields(log, logrus.Fields{"mode": "criu", "action": action})
	setIdentity(log, ident)
	pid, err := strconv.Atoi(strings.TrimSpace(initPid))
	if err != nil || pid <= 0 {
		log.Errorf("%s: %s=%q is not a process id: nothing done", action, EnvCRIUInitPid, initPid)
		return ExitOK
	}
	if cfgErr != nil {
		// A restore must go on: the defaults stand in for what is invalid.
		log.Errorf("%s: %v; using the default", action, cfgErr)
	}
	if len(phases) == 0 {
		l := log.WithFields(logrus.Fields{"pid": pid, "action": action})
		if err := prepareCgroups(pid, os.Getenv(EnvCRIUImageDir), l); err != nil {
			for _, line := range strings.Split(err.Error(), "\n") {
				l.Errorf("%s: %s", action, line)
			}
		}
		return ExitOK
	}
	err = fixPid(pid, phases, Options{Config: inv.Config, Log: log, Wiring: wiring, Identity: ident, Mode: "criu"})
	if err != nil {
		l := log.WithField("pid", pid)
		if errors.Is(err, errRefused) {
			l.Errorf("%s: %v", action, err)
		} else {
			for _, line := range strings.Split(err.Error(), "\n") {
				l.Errorf("%s: %s", action, line)
			}
			l.Errorf("%s: run `autofs-restore-hook status --pid %d` to see what is left and `autofs-restore-hook fix --pid %d` to finish", action, pid, pid)
		}
	}
	return ExitOK
}

// withWiring adds wiring=criu-plugin (set by the CRIU plugin) or
// wiring=action-script to every line log writes, so that an operator sees
// which wiring fixed a restore.
func withWiring(log *logrus.Logger) string {
	w := os.Getenv(EnvWiring)
	if w == "" {
		w = WiringScript
	}
	setLogFields(log, logrus.Fields{"wiring": w})
	return w
}

// fixMain is `fix --pid`: both phases back to back, for a container that
// already runs.
func fixMain(pid int, opts Options) int {
	// One state file and lock per container, whatever pid was given.
	if init, err := mounts.InitOf(pid); err == nil && init != pid && refuseHost(pid) == nil {
		opts.Log.Infof("fix: pid %d is not the init of its pid namespace: acting on its init, pid %d", pid, init)
		pid = init
	}
	if !opts.Force && !opts.AssumeRestored {
		// A fix restarts masters: only for restored containers, unless the
		// operator insists.
		ev, err := evidenceOf(pid)
		if err == nil && !ev.Restored() {
			opts.Log.Warnf("fix: pid %d shows no sign of a restore (same time namespace as the host): only mounts found catatonic or orphaned are reported; use --assume-restored to fix stale mounts anyway", pid)
		}
	}
	err := fixPid(pid, []Phase{PreResume, PostResume}, opts)
	switch {
	case err == nil:
		return ExitOK
	case errors.Is(err, errRefused):
		opts.Log.Errorf("fix: %v", err)
		return ExitRefused
	}
	for _, line := range strings.Split(err.Error(), "\n") {
		opts.Log.Errorf("fix: %s", line)
	}
	return ExitFailed
}
