package worker

// Typed tasks of the worker: each is declared once, with its request and
// result types, as a package variable whose Run methods start the worker;
// go-to-definition from a call (units.SystemdRestart.RunEvents) reaches
// the declaration, which names the function the worker runs. Each is a
// door task (door.Task) of its own role.

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/door"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
)

// TaskOf is a task of the worker taking a Req and answering a Res.
type TaskOf[Req, Res any] struct {
	name string
	task door.Task[Req, Res]
}

// NewTask declares a task run inside a container's mount namespace and
// root (Run, RunEvents). Declare tasks as package variables, so that the
// re-executed worker knows every task before it reads its request.
func NewTask[Req, Res any](name string, run func(env *Env, req Req, log door.Logf) (Res, error)) TaskOf[Req, Res] {
	return TaskOf[Req, Res]{name: name, task: door.NewTask(WorkerArg+"-"+name, func(c *door.Child, req Req) (Res, error) {
		var zero Res
		env, err := enterWorker(c)
		if err != nil {
			return zero, fmt.Errorf("worker %s: %w", name, err)
		}
		return run(env, req, c.Log())
	})}
}

// NewHostTask declares a task run in a child on the host, in no
// namespace of any container (RunOnHost, RunOnHostFiles): for work the
// hook's own process must not do because it can block.
func NewHostTask[Req, Res any](name string, run func(env *Env, req Req, log door.Logf) (Res, error)) TaskOf[Req, Res] {
	return TaskOf[Req, Res]{name: name, task: door.NewTask(WorkerArg+"-"+name, func(c *door.Child, req Req) (Res, error) {
		return run(hostWorker(c), req, c.Log())
	})}
}

// Name is the task's name in errors.
func (t TaskOf[Req, Res]) Name() string { return t.name }

// Role is the role of the task's worker: the first argument of its
// command line.
func (t TaskOf[Req, Res]) Role() string { return t.task.Role() }

// Run runs the task in a worker that joined p's mount namespace and
// root, killed at timeout; its log lines go to logf. The worker runs in
// the caller's pid namespace, so a path walk across a broken autofs
// mount of the container fails instead of waiting; it never outlives the
// caller.
func (t TaskOf[Req, Res]) Run(p *proc.Process, req Req, timeout time.Duration, logf door.Logf) (Res, error) {
	return t.RunEvents(p, req, timeout, logf, nil)
}

// RunEvents is Run for a task that records events (Env.Record):
// each goes to event, and the task goes on once event returned nil (its
// step fails if event returned an error). A nil event refuses every
// record.
func (t TaskOf[Req, Res]) RunEvents(p *proc.Process, req Req, timeout time.Duration, logf door.Logf, event func(json.RawMessage) error) (Res, error) {
	var res Res
	deadline := time.Now().Add(timeout)
	files, err := openWorkerFiles(p)
	if err != nil {
		return res, fmt.Errorf("worker %s: %w", t.name, err)
	}
	defer closeNamed(files)
	res, back, err := t.task.Call(door.Spec{Files: files, Deadline: deadline, Log: logf, Event: event}, req)
	closeFiles(back)
	if err != nil {
		return res, fmt.Errorf("worker %s: %w", t.name, err)
	}
	return res, nil
}

// RunOnHost runs a host task with the host's /dev/autofs (env.Ctl).
func (t TaskOf[Req, Res]) RunOnHost(req Req, timeout time.Duration, logf door.Logf) (Res, error) {
	var res Res
	ctl, err := os.OpenFile("/dev/autofs", os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return res, fmt.Errorf("worker %s: open /dev/autofs: %w", t.name, err)
	}
	defer ctl.Close()
	res, back, err := t.RunOnHostFiles(req, door.Files{fileAutofs: ctl}, timeout, logf)
	closeFiles(back)
	return res, err
}

// RunOnHostFiles runs a host task with files handed to it by name
// (env.Files; the host's /dev/autofs under fileAutofs becomes env.Ctl)
// and returns the files it passes back (env.PassBack), which the caller
// closes.
func (t TaskOf[Req, Res]) RunOnHostFiles(req Req, files door.Files, timeout time.Duration, logf door.Logf) (Res, []*os.File, error) {
	res, back, err := t.task.Call(door.Spec{Files: files, Deadline: time.Now().Add(timeout), Log: logf}, req)
	if err != nil {
		return res, nil, fmt.Errorf("worker %s: %w", t.name, err)
	}
	return res, back, nil
}

// The names of the files a worker in a container is handed
// (openWorkerFiles, enterWorker), and a host worker's /dev/autofs.
const (
	fileMntNS    = "mntns"
	fileRoot     = "root"
	fileProc     = "proc"
	fileAutofs   = "autofs"
	filePidNS    = "pidns"
	fileNetNS    = "netns"
	fileIPCNS    = "ipcns"
	fileUTSNS    = "utsns"
	fileCgroupNS = "cgroupns"
)

// openWorkerFiles opens, on the host, what a worker in p's container is
// handed: p's mount, pid, network, ipc, uts and cgroup namespaces, its
// root and /proc directory, and the host's /dev/autofs.
func openWorkerFiles(p *proc.Process) (door.Files, error) {
	dir := "/proc/" + strconv.Itoa(p.Pid) + "/"
	files := door.Files{}
	for _, o := range []struct {
		name, path string
		flags      int
	}{
		{fileMntNS, dir + "ns/mnt", os.O_RDONLY},
		{fileRoot, dir + "root", unix.O_PATH | unix.O_DIRECTORY},
		{fileProc, dir, unix.O_PATH | unix.O_DIRECTORY},
		{fileAutofs, "/dev/autofs", os.O_RDONLY},
		{filePidNS, dir + "ns/pid", os.O_RDONLY},
		{fileNetNS, dir + "ns/net", os.O_RDONLY},
		{fileIPCNS, dir + "ns/ipc", os.O_RDONLY},
		{fileUTSNS, dir + "ns/uts", os.O_RDONLY},
		{fileCgroupNS, dir + "ns/cgroup", os.O_RDONLY},
	} {
		f, err := os.OpenFile(o.path, o.flags|unix.O_CLOEXEC, 0)
		if err != nil {
			closeNamed(files)
			return nil, fmt.Errorf("open %s: %w", o.path, err)
		}
		files[o.name] = f
	}
	// All were opened through /proc/PID: make sure PID still is the
	// process we pinned.
	if err := p.Check(); err != nil {
		closeNamed(files)
		return nil, err
	}
	return files, nil
}

func closeNamed(files door.Files) {
	for _, f := range files {
		f.Close()
	}
}
