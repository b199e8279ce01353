package units

// The hook's side of the spawner: the request, the start of the chain
// with its deadline, and the reading of its result.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/roles"
	"github.com/autofs-restore-hook/autofs-restore-hook/mounts"
)

// SpawnerArg is the hidden first argument of the two spawner stages (see
// RunSpawner). It is not a user command.
const SpawnerArg = "__autofs-restore-hook-spawn"

func init() { roles.Register(SpawnerArg, RunSpawner) }

// EnvTimeNSFD names the fd of the time namespace that the spawner's
// container stage joins at start, in a C constructor (internal/cstart):
// a multithreaded process cannot join one.
const EnvTimeNSFD = "_AUTOFS_RESTORE_HOOK_TIMENS_FD"

// spawnRequest is what the first spawner stage gets on stdin.
type spawnRequest struct {
	Daemon *Daemon `json:"daemon"`
	// LastCap is the host's /proc/sys/kernel/cap_last_cap, read by stage
	// host: the container's /proc is the container's to forge.
	LastCap int `json:"last_cap"`
	// Deadline (Unix nanoseconds) is when the hook stops waiting: the
	// container stage is killed then, and never starts a daemon after it.
	Deadline int64 `json:"deadline"`
}

// spawnResult is the last line a spawner stage prints.
type spawnResult struct {
	NsPid    int      `json:"ns_pid,omitempty"`
	Warnings []string `json:"warnings,omitempty"`
	// StageCaps are the container stage's bounding and permitted sets.
	StageCaps string `json:"stage_caps,omitempty"`
	Error     string `json:"error,omitempty"`
}

// spawn runs the spawner chain and returns the new daemon's host pid and
// the capabilities its container stage had (spawnResult.StageCaps). The
// chain ends by the deadline: stage host kills the container stage then,
// and is killed itself right after.
func spawn(c *mounts.Process, d *Daemon, files []*os.File, deadline time.Time, logf func(string)) (int, string, error) {
	exe, err := os.Executable()
	if err != nil {
		return 0, "", err
	}
	self, err := os.Open(exe)
	if err != nil {
		return 0, "", err
	}
	defer self.Close()
	ctx, cancel := context.WithDeadline(context.Background(), deadline.Add(spawnGrace))
	defer cancel()
	req, err := json.Marshal(spawnRequest{Daemon: d, Deadline: deadline.UnixNano()})
	if err != nil {
		return 0, "", err
	}
	cmd := exec.CommandContext(ctx, exe, SpawnerArg, "host")
	cmd.ExtraFiles = append(append([]*os.File{}, files...), self)
	cmd.Stdin = bytes.NewReader(req)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = time.Second
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var r spawnResult
	jerr := json.Unmarshal(lastLine(out), &r)
	for _, w := range r.Warnings {
		if logf != nil {
			logf("start automount again: " + w)
		}
	}
	if err != nil {
		return 0, "", fmt.Errorf("spawner: %v: %s%s", err, strings.TrimSpace(stderr.String()), lastError(out))
	}
	if jerr != nil || r.Error != "" || r.NsPid <= 0 {
		return 0, "", fmt.Errorf("spawner: %s%s", r.Error, strings.TrimSpace(stderr.String()))
	}
	pid, err := hostPid(c.Pid, r.NsPid)
	return pid, r.StageCaps, err
}

// spawnGrace is how long past the deadline stage host has to report that
// it killed the container stage.
const spawnGrace = 2 * time.Second

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
