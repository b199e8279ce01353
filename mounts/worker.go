package mounts

// The mount-namespace worker: a child of the hook (started through
// internal/door) that runs one registered task inside a container's mount
// namespace and root, or on the host.

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/door"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
)

// WorkerArg is the hidden first argument that makes the binary run as a
// mount-namespace worker. It is not a user command.
const WorkerArg = "__autofs-restore-hook-worker"

// A task runs inside a container's mount namespace, chrooted to the
// container process's root, on a thread that stays locked; or, for a host
// task, on the host. It gets the JSON arguments the parent sent and
// reports progress through log. Tasks are declared typed (NewTask,
// NewHostTask): this is how the worker's table holds them.
type task func(env *WorkerEnv, args json.RawMessage, log door.Logf) (any, error)

// WorkerEnv is what a task gets from the host side: the container
// process's /proc directory (to read its mount table without walking the
// container's paths) and the host's /dev/autofs (the container may have
// none). A host task gets Ctl and Files only.
type WorkerEnv struct {
	Proc *os.File
	Ctl  *ControlDevice
	// Files are the files a host task was handed (RunOnHostFiles); Ctl is
	// nil there.
	Files []*os.File

	// The container's pid, network and mount namespaces and root, opened
	// on the host, and the host's cap_last_cap, read before the worker
	// entered the container: DialInContainer starts its child from them.
	pidNS, netNS, mntNS, root *os.File
	// Its ipc, uts and cgroup namespaces: the connect child joins them
	// too, so that it is no window onto the host's for a process of the
	// container that could trace it.
	otherNS []nsFile
	lastCap int

	back []*os.File
	// record sends an event to the parent and waits until it is kept
	// (door.Reply.Event); nil in a process that is no worker.
	record func(any) error
}

// Record sends ev to the hook, which keeps it in the container's state
// file on the host, and returns once it is kept: a task calls it before
// a step that a run killed afterwards must know of, and does not take the
// step when it fails. The parent must have asked for events
// (TaskOf.RunEvents); otherwise every record is refused.
func (e *WorkerEnv) Record(ev any) error {
	if e.record == nil {
		return errors.New("no record can be kept: not a worker")
	}
	return e.record(ev)
}

// PassBack makes files travel back to the parent with the task's result
// (RunOnHostFiles returns them).
func (e *WorkerEnv) PassBack(files ...*os.File) { e.back = append(e.back, files...) }

// connectArg names the helper role of the worker that connects a socket
// from inside the container's pid namespace (see DialInContainer).
const connectArg = "connect"

// ConnectCaps are the only capabilities DialInContainer's child keeps
// once it is in the container's mount namespace and root: enough to
// walk to and connect to a socket owned by the container's root user
// when the container has a user namespace of its own. Not
// CAP_DAC_READ_SEARCH: it also allows open_by_handle_at, a way out of a
// chroot.
const ConnectCaps = 1 << unix.CAP_DAC_OVERRIDE

// connectBounding is the bounding set of that child: ConnectCaps and
// what joining the mount namespace and root takes.
const connectBounding = ConnectCaps | 1<<unix.CAP_SYS_ADMIN | 1<<unix.CAP_SYS_CHROOT

// WorkerCaps are the only capabilities, effective and permitted, of a
// worker that runs a task in a container's mount namespace, once it is
// there: mount moves, the staging tmpfs (fsopen, fsmount, move_mount) and
// the autofs control ioctls all need CAP_SYS_ADMIN, and nothing else. No
// capability to write, create, chown or open what its owner and mode
// forbid (CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_MKNOD, CAP_CHOWN...), nor to
// trace, load modules or reach raw devices. Its bounding set is
// connectBounding: DialInContainer's child, started through exec as root,
// gets its own set from that.
const WorkerCaps = 1 << unix.CAP_SYS_ADMIN

// nsFile is a namespace of the container, opened on the host.
type nsFile struct {
	f    *os.File
	kind int
}

// DialInContainer connects to the unix socket at path (a path of the
// container) from a short-lived child in the container's pid and network
// namespaces, and returns the connection. Servers that check their peer
// with SO_PEERCRED (systemd refuses a peer whose pid it cannot see) then
// accept it, while the worker itself stays outside the pid namespace,
// where no autofs mount of the container can make it wait.
//
// The child is a door child (internal/door): our own executable started
// through an fd opened on the host, with a deadline, not dumpable. Its
// bounding set is connectBounding from the start; its C constructor
// joins the container init's cgroups, then the container's mount
// namespace and root, then its pid namespace, and forks the process that
// connects (door.Entry): no process of ours is seen there with the
// host's root or /proc. That one keeps only ConnectCaps and sets
// no_new_privs, and only then resolves path. A process of the container that could trace it would
// find a process with less power than its own root, in its own network
// namespace and cgroups.
func (e *WorkerEnv) DialInContainer(path string, timeout time.Duration) (net.Conn, error) {
	if e.pidNS == nil {
		return nil, errors.New("dial: not a task in a container")
	}
	cgroups, err := e.cgroups()
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", path, err)
	}
	files, err := door.Call(door.Spec{
		Role:          WorkerArg,
		Args:          []string{connectArg, path},
		Enter:         &door.Entry{MountNS: e.mntNS, Root: e.root, PidNS: e.pidNS, Cgroups: cgroups},
		Deadline:      time.Now().Add(timeout),
		IntoContainer: true,
		Prepare: func() error {
			for _, ns := range e.otherNS {
				if err := unix.Setns(int(ns.f.Fd()), ns.kind); err != nil {
					return fmt.Errorf("join the container's %s: %w", ns.f.Name(), err)
				}
			}
			if err := unix.Setns(int(e.netNS.Fd()), unix.CLONE_NEWNET); err != nil {
				return fmt.Errorf("join network namespace: %w", err)
			}
			return door.LimitCaps(connectBounding, 0, e.lastCap)
		},
	}, nil)
	if err != nil {
		return nil, fmt.Errorf("dial %s from the container's pid namespace: %w", path, err)
	}
	defer closeFiles(files)
	if len(files) != 1 {
		return nil, fmt.Errorf("dial %s: %d files received, want 1", path, len(files))
	}
	return net.FileConn(files[0])
}

// cgroups reads the container process's /proc/PID/cgroup, on the host.
func (e *WorkerEnv) cgroups() ([]string, error) { return readCgroups(int(e.Proc.Fd())) }

// readCgroups reads the cgroup file of proc (the fd of a /proc/PID
// directory opened on the host).
func readCgroups(proc int) ([]string, error) {
	fd, err := unix.Openat(proc, "cgroup", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open the container's cgroup file: %w", err)
	}
	f := os.NewFile(uintptr(fd), "cgroup")
	defer f.Close()
	b := make([]byte, 64<<10)
	n, err := f.Read(b)
	if err != nil {
		return nil, fmt.Errorf("read the container's cgroup file: %w", err)
	}
	return strings.Split(strings.TrimSpace(string(b[:n])), "\n"), nil
}

// runConnect is the child of DialInContainer: born in the container init's
// cgroups, mount namespace, root and pid namespace (door.Entry), it
// keeps ConnectCaps only, connects to path and passes the connection
// back.
func runConnect(r *door.Reply, path string) int {
	if entered, err := door.Entered(); err != nil || !entered {
		return r.Done(nil, fmt.Errorf("the connect child is not in the container (%v): refused", err))
	}
	if err := door.DropTo(ConnectCaps); err != nil {
		return r.Done(nil, err)
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return r.Done(nil, err)
	}
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		return r.Done(nil, fmt.Errorf("connect: %w", err))
	}
	return r.Done(nil, nil, os.NewFile(uintptr(fd), path))
}

// Gone reports whether the container's process has exited (a zombie
// counts as exited): /proc/PID is read through the directory fd the
// worker got, so a new process that reused the pid is not mistaken for it.
func (e *WorkerEnv) Gone() bool {
	fd, err := unix.Openat(int(e.Proc.Fd()), "stat", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENOENT)
	}
	f := os.NewFile(uintptr(fd), "stat")
	defer f.Close()
	b := make([]byte, 4096)
	n, err := f.Read(b)
	if err != nil {
		return errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENOENT)
	}
	st, err := proc.ParseStat(b[:n])
	return err == nil && st.Exited()
}

// ReadTable reads the mount table of the container's process.
func (e *WorkerEnv) ReadTable() (*Table, error) {
	fd, err := unix.Openat(int(e.Proc.Fd()), "mountinfo", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open mountinfo: %w", err)
	}
	f := os.NewFile(uintptr(fd), "mountinfo")
	defer f.Close()
	return ParseTable(f)
}

var (
	tasksMu   sync.Mutex
	tasks     = map[string]task{}
	hostTasks = map[string]bool{}
)

// register puts a task in the worker's table (NewTask, NewHostTask).
func register(name string, run task, host bool) {
	tasksMu.Lock()
	defer tasksMu.Unlock()
	if _, dup := tasks[name]; dup {
		panic("mounts: task registered twice: " + name)
	}
	tasks[name] = run
	hostTasks[name] = host
}

// runInMountNS runs the task called name in a child process that joined
// the mount namespace and root of p, with args as its input, and decodes
// its result into result. The child runs in the caller's pid namespace, so
// a path walk across a broken autofs mount of the container fails instead
// of waiting; it is killed all the same when timeout passes, and never
// outlives the caller. Lines the task logs are passed to logf; the
// events it records (WorkerEnv.Record) to event, and the task goes on
// once event returned nil (its step fails if event returned an error). A
// nil event refuses every record.
func runInMountNS(p *proc.Process, name string, args any, timeout time.Duration, logf door.Logf, event func(json.RawMessage) error, result any) error {
	deadline := time.Now().Add(timeout)
	dir := "/proc/" + strconv.Itoa(p.Pid) + "/"
	var files []*os.File
	defer func() { closeFiles(files) }()
	for _, o := range []struct {
		path  string
		flags int
	}{{"ns/mnt", os.O_RDONLY}, {"root", unix.O_PATH | unix.O_DIRECTORY}, {"", unix.O_PATH | unix.O_DIRECTORY}, {"/dev/autofs", os.O_RDONLY}, {"ns/pid", os.O_RDONLY}, {"ns/net", os.O_RDONLY},
		{"ns/ipc", os.O_RDONLY}, {"ns/uts", os.O_RDONLY}, {"ns/cgroup", os.O_RDONLY}} {
		path := dir + o.path
		if o.path != "" && o.path[0] == '/' {
			path = o.path
		}
		f, err := os.OpenFile(path, o.flags|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("worker %s: open %s: %w", name, path, err)
		}
		files = append(files, f)
	}
	// All were opened through /proc/PID: make sure PID still is the
	// process we pinned.
	if err := p.Check(); err != nil {
		return fmt.Errorf("worker %s: %w", name, err)
	}
	back, err := door.Call(door.Spec{Role: WorkerArg, Args: []string{name}, Request: rawArgs(args), Files: files, Deadline: deadline, Log: logf, Event: event}, result)
	closeFiles(back)
	if err != nil {
		return fmt.Errorf("worker %s: %w", name, err)
	}
	return nil
}

// runOnHostCtl runs the host task called name in a child process, as
// runInMountNS does; the child gets /dev/autofs only.
func runOnHostCtl(name string, args any, timeout time.Duration, logf door.Logf, result any) error {
	ctl, err := os.OpenFile("/dev/autofs", os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("worker %s: open /dev/autofs: %w", name, err)
	}
	defer ctl.Close()
	back, err := runOnHost(name, args, true, []*os.File{ctl}, timeout, logf, result)
	closeFiles(back)
	return err
}

func runOnHost(name string, args any, ctl bool, files []*os.File, timeout time.Duration, logf door.Logf, result any) ([]*os.File, error) {
	back, err := door.Call(door.Spec{Role: WorkerArg, Args: []string{name, strconv.Itoa(len(files)), strconv.FormatBool(ctl)}, Request: rawArgs(args),
		Files: files, Deadline: time.Now().Add(timeout), Log: logf}, result)
	if err != nil {
		return nil, fmt.Errorf("worker %s: %w", name, err)
	}
	return back, nil
}

// rawArgs keeps a nil request as JSON null.
func rawArgs(args any) any {
	if args == nil {
		return json.RawMessage("null")
	}
	return args
}

func init() { door.Register(WorkerArg, runWorker) }

// runWorker is the body of the worker process. A task in a container gets
// fds 3 (mount namespace), 4 (root), 5 (/proc/PID), 6 (/dev/autofs),
// 7 (pid namespace), 8 (network namespace); a host task gets the files it
// was handed from fd 3 on, /dev/autofs first when RunOnHost started it.
func runWorker(args []string) int {
	runtime.LockOSThread() // never unlocked: the thread dies with the process
	r, err := door.Begin()
	if err != nil {
		return r.Done(nil, err)
	}
	if len(args) == 0 {
		return r.Done(nil, errors.New("worker: no task named"))
	}
	name := args[0]
	if name == connectArg && len(args) == 2 {
		return runConnect(r, args[1])
	}
	tasksMu.Lock()
	task, host := tasks[name], hostTasks[name]
	tasksMu.Unlock()
	if task == nil {
		return r.Done(nil, fmt.Errorf("worker: unknown task %q", name))
	}
	var req json.RawMessage
	if err := door.ReadRequest(&req); err != nil {
		return r.Done(nil, fmt.Errorf("worker %s: %w", name, err))
	}
	env := &WorkerEnv{record: r.Event}
	if host {
		if len(args) != 3 {
			return r.Done(nil, fmt.Errorf("worker %s: want the count of files and whether the first is /dev/autofs", name))
		}
		n, _ := strconv.Atoi(args[1])
		for i := 0; i < n && i < 64; i++ {
			env.Files = append(env.Files, os.NewFile(uintptr(3+i), "file"))
		}
		if args[2] == "true" && len(env.Files) > 0 {
			env.Ctl = &ControlDevice{f: env.Files[0]}
			env.Files = env.Files[1:]
		}
	} else {
		// Read on the host, before the container's /proc is ours to see.
		if env.lastCap, err = door.LastCap(); err != nil {
			return r.Done(nil, fmt.Errorf("worker %s: %w", name, err))
		}
		// Kept for DialInContainer's child, which joins them itself.
		mntNS, err1 := unix.FcntlInt(3, unix.F_DUPFD_CLOEXEC, 10)
		root, err2 := unix.FcntlInt(4, unix.F_DUPFD_CLOEXEC, 10)
		if err := errors.Join(err1, err2); err != nil {
			return r.Done(nil, fmt.Errorf("worker %s: keep namespace fds: %w", name, err))
		}
		// The container's cgroups, while our mount namespace is the
		// host's (its cgroup file systems): the container's device
		// cgroup then decides which device nodes of its tree the worker
		// can open, as it does for the container's own processes.
		if err := joinContainerCgroups(5); err != nil {
			return r.Done(nil, fmt.Errorf("worker %s: %w", name, err))
		}
		if err := door.EnterMountNS(3, 4); err != nil {
			return r.Done(nil, fmt.Errorf("worker %s: %w", name, err))
		}
		if err := door.LimitCaps(connectBounding, 0, env.lastCap); err != nil {
			return r.Done(nil, fmt.Errorf("worker %s: %w", name, err))
		}
		if err := door.KeepOnly(WorkerCaps); err != nil {
			return r.Done(nil, fmt.Errorf("worker %s: %w", name, err))
		}
		env.Proc = os.NewFile(5, "proc")
		env.Ctl = &ControlDevice{f: os.NewFile(6, "/dev/autofs")}
		env.pidNS, env.netNS = os.NewFile(7, "pidns"), os.NewFile(8, "netns")
		env.otherNS = []nsFile{{os.NewFile(9, "ipcns"), unix.CLONE_NEWIPC}, {os.NewFile(10, "utsns"), unix.CLONE_NEWUTS}, {os.NewFile(11, "cgroupns"), unix.CLONE_NEWCGROUP}}
		env.mntNS, env.root = os.NewFile(uintptr(mntNS), "mntns"), os.NewFile(uintptr(root), "root")
	}
	res, err := task(env, req, r.Logf)
	if err != nil {
		return r.Done(nil, err)
	}
	return r.Done(res, nil, env.back...)
}

// joinContainerCgroups moves the worker into the cgroups of the container
// process whose /proc directory fd is proc, except a cgroup v1 freezer: a
// task frozen there (a paused container) cannot even be killed, and the
// worker must end by its deadline.
func joinContainerCgroups(proc int) error {
	lines, err := readCgroups(proc)
	if err != nil {
		return err
	}
	var keep []string
	for _, l := range lines {
		if parts := strings.SplitN(l, ":", 3); len(parts) == 3 && slices.Contains(strings.Split(parts[1], ","), "freezer") {
			continue
		}
		keep = append(keep, l)
	}
	return door.JoinCgroups(keep)
}

func closeFiles(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}
