package hook

// The CRIU mode (the action script, and the binary the CRIU plugin
// runs): which actions act (pre-resume, post-resume, and the cgroups at
// post-setup-namespaces), and the wiring it logs.

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// criuMain is the CRIU action-script mode. It acts at pre-resume and
// post-resume, and at post-setup-namespaces (prepareCgroups), and always
// returns 0: pre-resume "must not fail",
// and a failure elsewhere must never abort a restore. Errors go to the
// log (syslog, the log file and CRIU's own log through stderr).
func criuMain(action, initPid string, stderr io.Writer) int {
	if (action == "pre-resume" || action == "post-resume") && pluginRuns(action) {
		// The CRIU plugin of this restore runs it.
		return ExitOK
	}
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
		if !hostCgroup2() {
			return ExitOK
		}
		// The step below has its deadline; this one also bounds what comes
		// before it (settings, the log, the container's name).
		backstop := time.AfterFunc(2*cgroupStepDeadline, func() {
			go fmt.Fprintf(stderr, "autofs-restore-hook: %s did not end within %s: exit, the restore goes on\n", action, 2*cgroupStepDeadline)
			time.Sleep(100 * time.Millisecond)
			os.Exit(ExitOK)
		})
		defer backstop.Stop()
	default:
		return ExitOK
	}
	inv, cfgErr := LoadConfig("", nil, os.Getenv)
	// A restore goes on whatever the settings (lenient).
	log, closeLog, _ := openLog(inv.Config.Logging, stderr, logrus.Fields{"mode": "criu", "action": action}, true)
	defer closeLog()
	wiring := withWiring(log, action)
	// The runtime above CRIU names the container (runc, crun restore ID;
	// podman's and CRI-O's conmon -c ID -n NAME).
	ident := identityFromAncestors()
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
		// CRIU waits for an action script without a deadline, and the
		// plugin makes this one run in every restore of a cgroup v2 host:
		// the step is given up after cgroupStepDeadline, and the restore
		// goes on (CRIU then says which watch failed, if any).
		done := make(chan error, 1)
		go func() {
			// A failing script fails the restore: not even a panic may.
			defer func() {
				if r := recover(); r != nil {
					done <- fmt.Errorf("the cgroup step failed: %v", r)
				}
			}()
			done <- prepareCgroupsStep(pid, os.Getenv(EnvCRIUImageDir), l)
		}()
		select {
		case err := <-done:
			if err != nil {
				for _, line := range strings.Split(err.Error(), "\n") {
					l.Errorf("%s: %s", action, line)
				}
			}
		case <-time.After(cgroupStepDeadline):
			l.Errorf("%s: the cgroup step did not end within %s: given up, the restore goes on", action, cgroupStepDeadline)
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

// cgroupStepDeadline bounds the post-setup-namespaces step (prepareCgroups,
// or prepareCgroupsStep where a test hangs it).
var (
	cgroupStepDeadline = 30 * time.Second
	prepareCgroupsStep = prepareCgroups
)

// pluginRuns tells whether the CRIU plugin of this restore runs the binary
// for action (EnvPluginActions).
func pluginRuns(action string) bool {
	return slices.Contains(strings.Fields(os.Getenv(EnvPluginActions)), action)
}

// hostCgroup2 tells whether /sys/fs/cgroup is the unified hierarchy only.
var hostCgroup2 = func() bool {
	var st unix.Statfs_t
	return unix.Statfs("/sys/fs/cgroup", &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC
}

// withWiring adds wiring=criu-plugin (set by the CRIU plugin, or the
// action script it added, at its action) or wiring=action-script to every
// line log writes, so that an operator sees which wiring fixed a restore.
func withWiring(log *logrus.Logger, action string) string {
	w := os.Getenv(EnvWiring)
	if w == "" && action == "post-setup-namespaces" && pluginRuns(action) {
		// The plugin added this binary as action script for it.
		w = WiringPlugin
	}
	if w == "" {
		w = WiringScript
	}
	setLogFields(log, logrus.Fields{"wiring": w})
	return w
}
