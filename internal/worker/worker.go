package worker

// What a task gets (Env), how a worker enters its container, and the
// connect child.

import (
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/door"
	"github.com/autofs-restore-hook/autofs-restore-hook/mounts"
)

// WorkerArg starts the role of every worker task (TaskOf.Role: WorkerArg,
// "-" and the task's name). It is not a user command.
const WorkerArg = "__autofs-restore-hook-worker"

// Env is what a task gets. A task in a container gets the container's
// view (mounts.InNS: its /proc directory, the host's /dev/autofs, the
// hook's records) and DialInContainer; a host task gets the files it was
// handed (Files), and Ctl when RunOnHost handed it /dev/autofs.
type Env struct {
	*mounts.InNS
	// Files are the files a host task was handed, by name
	// (RunOnHostFiles).
	Files door.Files

	// The container's pid, network and mount namespaces and root, opened
	// on the host, and the host's cap_last_cap, read before the worker
	// entered the container: DialInContainer starts its child from them.
	pidNS, netNS, mntNS, root *os.File
	// Its ipc, uts and cgroup namespaces: the connect child joins them
	// too, so that it is no window onto the host's for a process of the
	// container that could trace it.
	otherNS []nsFile
	lastCap int

	// child is the worker's end of the door: the files it passes back.
	child *door.Child
}

// PassBack makes files travel back to the parent with the task's result
// (RunOnHostFiles returns them).
func (e *Env) PassBack(files ...*os.File) { e.child.PassBack(files...) }

// ConnectCaps are the only capabilities DialInContainer's child keeps
// once it is in the container's mount namespace and root: enough to
// walk to and connect to a socket owned by the container's root user
// when the container has a user namespace of its own. Not
// CAP_DAC_READ_SEARCH: it also allows open_by_handle_at, a way out of a
// chroot.
const ConnectCaps = 1 << unix.CAP_DAC_OVERRIDE

// connectBounding is the bounding set that child is started with:
// ConnectCaps, what joining the mount namespace, root and pid namespace
// takes, and CAP_SETPCAP to drop those again. Its C constructor drops
// all but ConnectCaps from every set (door.Entry.DropAfter) before it
// forks the process that lives in the container's pid namespace.
const connectBounding = ConnectCaps | 1<<unix.CAP_SYS_ADMIN | 1<<unix.CAP_SYS_CHROOT | 1<<unix.CAP_SETPCAP

// WorkerCaps are the only capabilities, effective and permitted, of a
// worker that runs a task in a container's mount namespace, once it is
// there: mount moves, the staging tmpfs (fsopen, fsmount, move_mount) and
// the autofs control ioctls all need CAP_SYS_ADMIN, and nothing else. No
// capability to write, create, chown or open what its owner and mode
// forbid (CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_MKNOD, CAP_CHOWN...), nor to
// trace, load modules or reach raw devices. Its bounding set is the same:
// the thread never execs (DialInContainer's child is started from
// another thread, whose bounding set Prepare limits to connectBounding).
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
// namespace and root, then its pid namespace, drops every capability but
// ConnectCaps from every set, and forks the process that connects
// (door.Entry): no process of ours is seen there with the host's root or
// /proc, or with more than ConnectCaps. That one checks so, sets
// no_new_privs, and only then resolves path. A process of the container
// that could trace it would find a process with less power than its own
// root, in its own network namespace and cgroups.
func (e *Env) DialInContainer(path string, timeout time.Duration) (net.Conn, error) {
	if e.pidNS == nil {
		return nil, errors.New("dial: not a task in a container")
	}
	cgroups, err := e.cgroups()
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", path, err)
	}
	_, files, err := connect.Call(door.Spec{
		Label:         path,
		Enter:         &door.Entry{MountNS: e.mntNS, Root: e.root, PidNS: e.pidNS, Cgroups: cgroups, DropAfter: connectBounding &^ ConnectCaps},
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
	}, connectRequest{Path: path})
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
func (e *Env) cgroups() ([]string, error) { return readCgroups(int(e.Proc.Fd())) }

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

// connectRequest is what the connect child gets: the path of the socket,
// in the container.
type connectRequest struct {
	Path string `json:"path"`
}

// connect is the child of DialInContainer: born in the container init's
// cgroups, mount namespace, root and pid namespace (door.Entry), it
// keeps ConnectCaps only, connects to the path and passes the connection
// back.
var connect = door.NewTask(WorkerArg+"-connect", func(c *door.Child, req connectRequest) (struct{}, error) {
	if entered, err := door.Entered(); err != nil || !entered {
		return struct{}{}, fmt.Errorf("the connect child is not in the container (%v): refused", err)
	}
	// What entering took is gone (door.Entry.DropAfter): every
	// capability number the kernel may know is read.
	if extra := door.BoundingSet(63) &^ ConnectCaps; extra != 0 {
		return struct{}{}, fmt.Errorf("the connect child's bounding set holds %#x beyond ConnectCaps: refused", extra)
	}
	if err := door.DropTo(ConnectCaps); err != nil {
		return struct{}{}, err
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return struct{}{}, err
	}
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: req.Path}); err != nil {
		unix.Close(fd)
		return struct{}{}, fmt.Errorf("connect: %w", err)
	}
	c.PassBack(os.NewFile(uintptr(fd), req.Path))
	return struct{}{}, nil
})

// enterWorker is the first step of a worker task in a container: with
// the files openWorkerFiles handed it, it joins the container's cgroups
// and mount namespace and root, and keeps CAP_SYS_ADMIN alone
// (WorkerCaps) within the bounding set its connect child needs.
func enterWorker(c *door.Child) (*Env, error) {
	files, err := c.Take(fileMntNS, fileRoot, fileProc, fileAutofs, filePidNS, fileNetNS, fileIPCNS, fileUTSNS, fileCgroupNS)
	if err != nil {
		return nil, err
	}
	mntNS, root, procDir := files[fileMntNS], files[fileRoot], files[fileProc]
	env := &Env{InNS: mounts.NewInNS(procDir, mounts.NewControlDevice(files[fileAutofs]), c.Event), child: c, mntNS: mntNS, root: root, pidNS: files[filePidNS], netNS: files[fileNetNS],
		otherNS: []nsFile{{files[fileIPCNS], unix.CLONE_NEWIPC}, {files[fileUTSNS], unix.CLONE_NEWUTS}, {files[fileCgroupNS], unix.CLONE_NEWCGROUP}}}
	// Read on the host, before the container's /proc is ours to see.
	if env.lastCap, err = door.LastCap(); err != nil {
		return nil, err
	}
	// The container's cgroups, while our mount namespace is the host's
	// (its cgroup file systems): the container's device cgroup then
	// decides which device nodes of its tree the worker can open, as it
	// does for the container's own processes.
	if err := joinContainerCgroups(int(procDir.Fd())); err != nil {
		return nil, err
	}
	// The namespace and root stay open: DialInContainer's child joins
	// them itself.
	if err := door.EnterMountNS(mntNS, root); err != nil {
		return nil, err
	}
	if err := door.LimitCaps(WorkerCaps, 0, env.lastCap); err != nil {
		return nil, err
	}
	if err := door.KeepOnly(WorkerCaps); err != nil {
		return nil, err
	}
	return env, nil
}

// hostWorker is the environment of a host task: the files it was
// handed, /dev/autofs among them as Ctl when RunOnHost handed it.
func hostWorker(c *door.Child) *Env {
	files, _ := c.Take(c.Names()...) // every name is there
	var ctl *mounts.ControlDevice
	if f := files[fileAutofs]; f != nil {
		ctl = mounts.NewControlDevice(f)
		delete(files, fileAutofs)
	}
	// No container: no /proc directory of one, no records.
	return &Env{InNS: mounts.NewInNS(nil, ctl, nil), Files: files, child: c}
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
