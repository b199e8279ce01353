package mounts

// Typed tasks of the worker: each is declared once, with its request and
// result types, as a package variable whose Run methods start the worker;
// go-to-definition from a call (units.SystemdRestart.RunEvents) reaches
// the declaration, which names the function the worker runs.

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/door"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
)

// TaskOf is a task of the worker taking a Req and answering a Res.
type TaskOf[Req, Res any] struct{ name string }

// NewTask declares a task run inside a container's mount namespace and
// root (Run, RunEvents). Declare tasks as package variables, so that the
// re-executed worker knows every task before it reads its request.
func NewTask[Req, Res any](name string, run func(env *WorkerEnv, req Req, log door.Logf) (Res, error)) TaskOf[Req, Res] {
	register(name, erase(name, run), false)
	return TaskOf[Req, Res]{name: name}
}

// NewHostTask declares a task run in a child on the host, in no
// namespace of any container (RunOnHost, RunOnHostFiles): for work the
// hook's own process must not do because it can block.
func NewHostTask[Req, Res any](name string, run func(env *WorkerEnv, req Req, log door.Logf) (Res, error)) TaskOf[Req, Res] {
	register(name, erase(name, run), true)
	return TaskOf[Req, Res]{name: name}
}

// erase is run as the worker's table holds it: the request decoded into
// a Req first.
func erase[Req, Res any](name string, run func(*WorkerEnv, Req, door.Logf) (Res, error)) task {
	return func(env *WorkerEnv, args json.RawMessage, log door.Logf) (any, error) {
		var req Req
		if err := json.Unmarshal(args, &req); err != nil {
			return nil, fmt.Errorf("%s: bad request: %w", name, err)
		}
		return run(env, req, log)
	}
}

// Name is the task's name in the worker's table and in errors.
func (t TaskOf[Req, Res]) Name() string { return t.name }

// Run runs the task in a worker that joined p's mount namespace and
// root (runInMountNS), killed at timeout; its log lines go to logf.
func (t TaskOf[Req, Res]) Run(p *proc.Process, req Req, timeout time.Duration, logf door.Logf) (Res, error) {
	var res Res
	err := runInMountNS(p, t.name, req, timeout, logf, nil, &res)
	return res, err
}

// RunEvents is Run for a task that records events (WorkerEnv.Record):
// each goes to event, and the task goes on once event returned nil.
func (t TaskOf[Req, Res]) RunEvents(p *proc.Process, req Req, timeout time.Duration, logf door.Logf, event func(json.RawMessage) error) (Res, error) {
	var res Res
	err := runInMountNS(p, t.name, req, timeout, logf, event, &res)
	return res, err
}

// RunOnHost runs a host task with the host's /dev/autofs (env.Ctl).
func (t TaskOf[Req, Res]) RunOnHost(req Req, timeout time.Duration, logf door.Logf) (Res, error) {
	var res Res
	err := runOnHostCtl(t.name, req, timeout, logf, &res)
	return res, err
}

// RunOnHostFiles runs a host task with files handed to it (env.Files)
// and returns the files it passes back (env.PassBack), which the caller
// closes.
func (t TaskOf[Req, Res]) RunOnHostFiles(req Req, files []*os.File, timeout time.Duration, logf door.Logf) (Res, []*os.File, error) {
	var res Res
	back, err := runOnHost(t.name, req, false, files, timeout, logf, &res)
	return res, back, err
}
