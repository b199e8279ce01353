package units

// The hook's side of the spawner: the request, the start of the chain
// with its deadline, and the reading of its result.

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/door"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
	"github.com/autofs-restore-hook/autofs-restore-hook/mounts"
)

// SpawnerArg starts the roles of the two spawner stages (spawnHost,
// spawnContainer). It is not a user command.
const SpawnerArg = "__autofs-restore-hook-spawn"

// spawnRequest is what the first spawner stage gets on stdin.
type spawnRequest struct {
	Daemon *Daemon `json:"daemon"`
	// LastCap is the host's /proc/sys/kernel/cap_last_cap, read by stage
	// host: the container's /proc is the container's to forge.
	LastCap int `json:"last_cap"`
	// Deadline (Unix nanoseconds) is when the hook stops waiting: the
	// container stage is killed then, and never starts a daemon after it.
	Deadline int64 `json:"deadline"`
	// FlagMounts are the mounts, by id, on which the container stage may
	// look for automount's flag file (flagMounts of the container's
	// table, read by the host).
	FlagMounts []uint64 `json:"flag_mounts,omitempty"`
	// NoHold, when set, says why the host lets no process be held at its
	// exec (kernel.yama.ptrace_scope 2 or 3 refuses PTRACE_TRACEME to a
	// tracer without CAP_SYS_PTRACE, or to all): the new daemon is then
	// checked after its start only.
	NoHold string `json:"no_hold,omitempty"`
}

// spawnResult is the last line a spawner stage prints.
type spawnResult struct {
	NsPid    int      `json:"ns_pid,omitempty"`
	Warnings []string `json:"warnings,omitempty"`
	// StageCaps are the container stage's bounding and permitted sets.
	StageCaps string `json:"stage_caps,omitempty"`
	Error     string `json:"error,omitempty"`
}

// spawn runs the spawner chain and returns the new daemon, pinned by the
// pidfd its container stage took when it started it (CLONE_PIDFD), and
// the capabilities that stage had (spawnResult.StageCaps). The
// chain ends by the deadline: stage host kills the container stage then,
// and is killed itself by spawnGrace later.
func spawn(c *proc.Process, d *Daemon, files door.Files, deadline time.Time, logf door.Logf) (*proc.Process, string, error) {
	var r spawnResult
	req := spawnRequest{Daemon: d, Deadline: deadline.UnixNano(), NoHold: noHold()}
	if t, err := mounts.ReadTable(c.Pid); err == nil {
		req.FlagMounts = flagMounts(t)
	}
	res, back, err := spawnHost.Call(door.Spec{
		Files:    files,
		Deadline: deadline.Add(spawnGrace),
		Log:      logf,
	}, req)
	defer closeAll(back)
	if res != nil {
		r = *res
	}
	for _, w := range r.Warnings {
		if logf != nil {
			logf.Info("start automount again: " + w)
		}
	}
	if err != nil {
		return nil, "", fmt.Errorf("spawner: %w", err)
	}
	if r.NsPid <= 0 {
		return nil, "", errors.New("spawner: no pid reported")
	}
	if len(back) == 0 {
		// No pidfd (a kernel without CLONE_PIDFD): the pid is looked up.
		pid, err := hostPid(c.Pid, r.NsPid)
		if err != nil {
			return nil, "", err
		}
		p, err := proc.OpenProcess(pid)
		if errors.Is(err, proc.ErrGone) {
			return nil, "", fmt.Errorf("(pid %d in the container) %w", r.NsPid, errNotRunning)
		}
		return p, r.StageCaps, err
	}
	p, err := proc.PinnedBy(back[0])
	if errors.Is(err, proc.ErrGone) {
		return nil, "", fmt.Errorf("(pid %d in the container) %w", r.NsPid, errNotRunning)
	}
	if err != nil {
		return nil, "", fmt.Errorf("spawner: the new daemon's pidfd: %w", err)
	}
	if st, err := proc.ReadStatus(p.Pid); err != nil || !slices.Equal(lastOf(st.NSpid()), []int{r.NsPid}) {
		p.Close()
		return nil, "", fmt.Errorf("spawner: the pidfd names pid %d, which is not pid %d in the container", p.Pid, r.NsPid)
	}
	return p, r.StageCaps, nil
}

func lastOf(s []int) []int {
	if len(s) == 0 {
		return nil
	}
	return s[len(s)-1:]
}

// spawnGrace is how long past the deadline stage host has to report that
// it killed the container stage, or that the stage was left behind.
const spawnGrace = 2*door.ExitGrace + time.Second

// noHold says why the host refuses the hold at the exec (Yama's
// ptrace_scope, read from the host's /proc), or "".
func noHold() string {
	b, err := os.ReadFile("/proc/sys/kernel/yama/ptrace_scope")
	if err != nil {
		return "" // no Yama
	}
	if v := strings.TrimSpace(string(b)); v != "0" && v != "1" {
		return "kernel.yama.ptrace_scope is " + mounts.Escape(v)
	}
	return ""
}
