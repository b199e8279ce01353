package hook

// The OCI hook mode: the runtime's state on stdin, what the hook decides
// from it, and the start of the detached worker (follow.go) that follows
// a restore to its end.

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
	"github.com/autofs-restore-hook/autofs-restore-hook/mounts"
)

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
	// conmon's -n first: the annotations of a podman container are its
	// user's to choose.
	opts.Identity = opts.Identity.merge(identityFromAncestors()).merge(Identity{ID: st.ID, Name: annotatedName(st.ID, st.Annotations)})
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
	// Init is the container's init, as the hook saw it ("pid",
	// "start_time").
	Init     proc.Ref `json:"init"`
	Config   Config   `json:"config"`
	Identity Identity `json:"container"`
}

// annotatedName is the container's name in the annotations CRI-O gives
// its containers, if any: only where they name the container by the id
// of the state (io.kubernetes.cri-o.ContainerID).
func annotatedName(id string, a map[string]string) string {
	if n := a["io.kubernetes.cri-o.Name"]; a["io.kubernetes.cri-o.ContainerID"] == id && validName(n) {
		return n
	}
	return ""
}

// followerEnv is the whole environment of the detached worker.
var followerEnv = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}

// followerCommand is the detached worker for the container whose init is
// init: a new session, stdio on null, the minimal environment, and opts
// in its argument.
func followerCommand(exe string, init proc.Ref, opts Options, null *os.File) (*exec.Cmd, error) {
	cmd, err := follower.Command(exe, followerConfig{Init: init, Config: opts.Config, Identity: opts.Identity})
	if err != nil {
		return nil, err
	}
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
	p, err := proc.OpenProcess(pid)
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
	cmd, err := followerCommand(exe, p.Ref, opts, null)
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
