package hook

import (
	"errors"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/autofs-restore-hook/autofs-restore-hook/mounts"
)

// followerArg is the hidden first argument of the detached worker that
// follows a restore (see ociMain). It is not a user command.
const followerArg = "__autofs-restore-hook-follow"

// ociMain is the OCI hook mode: the runtime-spec state is on stdin.
func ociMain(stdin io.Reader, opts Options) int {
	st, err := ReadState(stdin)
	if err != nil {
		opts.Log.Errorf("oci hook: %v", err)
		return ExitUsage
	}
	log := opts.Log.WithFields(map[string]any{"container": st.ID, "status": st.Status, "pid": st.Pid})
	var ev Evidence
	if st.Pid > 0 {
		if err := refuseHost(st.Pid); err != nil {
			log.Errorf("oci hook: %v", err)
			return ExitRefused
		}
		if ev, err = evidenceOf(st.Pid); err != nil {
			log.Errorf("oci hook: %v", err)
			return ExitRefused
		}
	}
	ev.Forced = opts.AssumeRestored
	v, err := Decide(st, ev)
	if err != nil {
		log.Errorf("oci hook: %v", err)
		return ExitUsage
	}
	switch v {
	case Ignore:
		log.Debug("oci hook: no restore: nothing to do")
		return ExitOK
	case FixNow:
		return fixMain(st.Pid, opts)
	}
	if err := startFollower(st.Pid, opts); err != nil {
		log.Errorf("oci hook: start the worker that follows the restore: %v", err)
		return ExitFailed
	}
	log.Infof("oci hook: restore in progress: a detached worker follows it (deadline %s)", opts.RestoreTimeout)
	return ExitOK
}

// startFollower starts the detached worker: a new session, stdio on
// /dev/null (never the runtime's pipes, which the runtime waits on), no
// other fd, and the log settings passed through the environment.
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
	cmd := exec.Command(exe, followerArg, strconv.Itoa(pid), strconv.FormatUint(p.StartTime, 10), opts.RestoreTimeout.String())
	cmd.Env = append(os.Environ(), EnvLogLevel+"="+opts.Log.GetLevel().String())
	cmd.Stdin, cmd.Stdout, cmd.Stderr = null, null, null
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	return cmd.Process.Release()
}

// followerMain follows a restore of the container whose init is pid: while
// CRIU still holds the tasks it makes stale mounts catatonic (pre-resume),
// once they run it restarts the masters (post-resume). It gives up at its
// deadline and exits quietly if the restore fails.
func followerMain(args []string) int {
	log, closeLog, err := newLogger(logConfigFromEnv(os.Getenv), io.Discard)
	if err != nil {
		log, closeLog, _ = newLogger(LogConfig{}, io.Discard)
	}
	defer closeLog()
	if len(args) != 3 {
		log.Errorf("follow: want pid, start time and timeout, got %q", args)
		return ExitUsage
	}
	pid, err1 := strconv.Atoi(args[0])
	start, err2 := strconv.ParseUint(args[1], 10, 64)
	timeout, err3 := time.ParseDuration(args[2])
	if err := errors.Join(err1, err2, err3); err != nil {
		log.Errorf("follow: bad arguments %q: %v", args, err)
		return ExitUsage
	}
	l := log.WithField("pid", pid)
	p, err := mounts.OpenProcess(pid)
	if err != nil || p.StartTime != start {
		l.Info("follow: the container's process is gone: the restore failed or ended; nothing to do")
		return ExitOK
	}
	defer p.Close()
	opts := Options{Log: log}
	deadline := time.Now().Add(timeout)
	preDone := false
	for {
		if time.Now().After(deadline) {
			l.Errorf("follow: the restore did not finish within %s (--restore-timeout): giving up; run `autofs-restore-hook fix --pid %d` once it runs", timeout, pid)
			return ExitFailed
		}
		if p.Check() != nil {
			l.Info("follow: the container's process is gone: the restore failed; nothing to do")
			return ExitOK
		}
		st, err := mounts.ReadStatus(pid)
		if err != nil {
			time.Sleep(2 * time.Millisecond)
			continue
		}
		if st.TracerPid() == 0 {
			break
		}
		if !preDone && restoredEnough(p) {
			preDone = true
			if err := fixPid(pid, []Phase{PreResume}, opts); err != nil {
				logLines(l.Errorf, "follow: pre-resume: ", err)
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	// The tasks run: the restore is over. PreResume still runs if the
	// window was missed (its state mark makes it a no-op otherwise).
	if err := fixPid(pid, []Phase{PreResume, PostResume}, opts); err != nil {
		logLines(l.Errorf, "follow: ", err)
		return ExitFailed
	}
	return ExitOK
}

// restoredEnough tells whether CRIU has restored the mounts and the
// masters: every autofs mount is served by a process that is a known
// master again (systemd or automount by its executable and name, which
// CRIU restores last). While CRIU still builds the mount tree, autofs
// mounts sit in its staging namespace under their restorer processes,
// which match none of these.
func restoredEnough(p *mounts.Process) bool {
	c, err := inspect(p, nil)
	if err != nil || len(c.Mounts) == 0 {
		return false
	}
	for _, m := range c.Mounts {
		if !managed(m) {
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
