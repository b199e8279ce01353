package mounts

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/failpoint"
)

// WorkerArg is the hidden first argument that makes the binary run as a
// mount-namespace worker (see RunWorker). It is not a user command.
const WorkerArg = "__autofs-restore-hook-worker"

// A Task runs inside a container's mount namespace, chrooted to the
// container process's root, on a thread that stays locked. It gets the
// JSON arguments the parent sent and reports progress through log.
type Task func(env *WorkerEnv, args json.RawMessage, log func(string)) (any, error)

// WorkerEnv is what a task gets from the host side: the container
// process's /proc directory (to read its mount table without walking the
// container's paths) and the host's /dev/autofs (the container may have
// none).
type WorkerEnv struct {
	Proc *os.File
	Ctl  *ControlDevice

	// The container's pid and mount namespaces and root, and our own
	// executable, all opened on the host: DialInContainer starts its child
	// from them, never from a path of the container.
	pidNS, mntNS, root, self *os.File
}

// connectArg names the helper mode of the worker that connects a socket
// from inside the container's pid namespace (see DialInContainer).
const connectArg = "connect"

// DialInContainer connects to the unix socket at path (a path of the
// container) from a short-lived child in the container's pid namespace,
// and returns the connection. Servers that check their peer with
// SO_PEERCRED (systemd refuses a peer whose pid it cannot see) then
// accept it, while the worker itself stays outside the pid namespace,
// where no autofs mount of the container can make it wait.
//
// The child is our own executable, started through the fd opened on the
// host, from a thread that is still in the host's mount namespace and
// root: nothing of the container (its /proc, its files) chooses what
// runs. The child joins the container's mount namespace and root itself
// before it resolves path.
func (e *WorkerEnv) DialInContainer(path string, timeout time.Duration) (net.Conn, error) {
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dial %s: socketpair: %w", path, err)
	}
	ours := os.NewFile(uintptr(pair[0]), "dial-parent")
	theirs := os.NewFile(uintptr(pair[1]), "dial-child")
	defer ours.Close()
	var stderr limitedBuffer
	done := make(chan error, 1)
	go func() {
		// A thread of its own, never unlocked: it dies with this goroutine,
		// so its pid namespace for children is never reused. It is not the
		// worker's main thread, so it is still in the host's mount
		// namespace and root, where /proc/self/fd/3 below is our own fd.
		runtime.LockOSThread()
		defer theirs.Close()
		if err := unix.Setns(int(e.pidNS.Fd()), unix.CLONE_NEWPID); err != nil {
			done <- fmt.Errorf("join pid namespace for children: %w", err)
			return
		}
		if err := HostProcOK(); err != nil {
			done <- err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, "/proc/self/fd/3", WorkerArg, connectArg, path)
		cmd.Args[0] = "autofs-restore-hook"
		cmd.ExtraFiles = []*os.File{e.self, theirs, e.mntNS, e.root}
		cmd.Env = []string{}
		cmd.Stderr = &stderr
		done <- cmd.Run()
	}()
	if err := <-done; err != nil {
		return nil, fmt.Errorf("dial %s from the container's pid namespace: %v %s", path, err, stderr.String())
	}
	buf := make([]byte, 1)
	oob := make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := unix.Recvmsg(int(ours.Fd()), buf, oob, 0)
	if err != nil {
		return nil, fmt.Errorf("dial %s: receive connection: %w", path, err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return nil, fmt.Errorf("dial %s: no connection received (%v)", path, err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		return nil, fmt.Errorf("dial %s: no connection received (%v)", path, err)
	}
	unix.CloseOnExec(fds[0])
	f := os.NewFile(uintptr(fds[0]), path)
	defer f.Close()
	return net.FileConn(f)
}

// HostProcOK checks that the calling thread resolves /proc/self/fd in a
// procfs, as a thread must that starts our executable by /proc/self/fd/N
// (DialInContainer, the spawner's host stage): never a /proc the
// container could have replaced.
func HostProcOK() error {
	var sf unix.Statfs_t
	if err := unix.Statfs("/proc/self/fd", &sf); err != nil || sf.Type != unix.PROC_SUPER_MAGIC {
		return fmt.Errorf("this thread's /proc is not the host's procfs (%v): refusing to start a child by /proc/self/fd", err)
	}
	return nil
}

// runConnect is the child of DialInContainer: it joins the container's
// mount namespace (fd 5) and root (fd 6), connects to path and passes the
// connection over fd 4.
func runConnect(path string) int {
	// Die with the worker. Not through SysProcAttr.Pdeathsig: Go's check
	// that the parent still lives compares getppid() with the parent's
	// pid, and getppid() is 0 here, in the container's pid namespace. The
	// parent's end of fd 4 tells instead.
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, "set parent death signal:", err)
		return 1
	}
	if n, _ := unix.Poll([]unix.PollFd{{Fd: 4, Events: unix.POLLIN}}, 0); n > 0 {
		fmt.Fprintln(os.Stderr, "the worker is gone")
		return 1
	}
	if err := enterMountNS(5, 6); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		fmt.Fprintln(os.Stderr, "connect:", err)
		return 1
	}
	if err := unix.Sendmsg(4, []byte{0}, unix.UnixRights(fd), nil, 0); err != nil {
		fmt.Fprintln(os.Stderr, "pass connection:", err)
		return 1
	}
	return 0
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
	b, err := io.ReadAll(io.LimitReader(f, 4096))
	if err != nil {
		return errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENOENT)
	}
	st, err := ParseStat(b)
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
	tasks     = map[string]Task{}
	hostTasks = map[string]bool{}
)

// RegisterTask makes task runnable under name by RunInMountNS. Register
// from init functions, so that the re-executed worker knows every task.
func RegisterTask(name string, task Task) { register(name, task, false) }

// RegisterHostTask makes task runnable under name by RunOnHost: in a
// child that joins no namespace of any container, for work the hook's own
// process must not do because it can block (a file of the container
// copied with pidfd_getfd). Its WorkerEnv has only Ctl.
func RegisterHostTask(name string, task Task) { register(name, task, true) }

func register(name string, task Task, host bool) {
	tasksMu.Lock()
	defer tasksMu.Unlock()
	if _, dup := tasks[name]; dup {
		panic("mounts: task registered twice: " + name)
	}
	tasks[name] = task
	hostTasks[name] = host
}

type workerMsg struct {
	Log    string          `json:"log,omitempty"`
	Result json.RawMessage `json:"result,omitempty"`
	Error  string          `json:"error,omitempty"`
	Done   bool            `json:"done,omitempty"`
}

// RunInMountNS runs the task called name in a child process that joined
// the mount namespace and root of p, with args as its input, and decodes
// its result into result. The child runs in the caller's pid namespace, so
// a path walk across a broken autofs mount of the container fails instead
// of waiting; it is killed all the same when timeout passes, and never
// outlives the caller. Lines the task logs are passed to logf.
func RunInMountNS(p *Process, name string, args any, timeout time.Duration, logf func(string), result any) error {
	pid := strconv.Itoa(p.Pid)
	mntns, err := os.Open("/proc/" + pid + "/ns/mnt")
	if err != nil {
		return fmt.Errorf("worker %s: open mount namespace of pid %s: %w", name, pid, err)
	}
	defer mntns.Close()
	root, err := os.OpenFile("/proc/"+pid+"/root", unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		return fmt.Errorf("worker %s: open root of pid %s: %w", name, pid, err)
	}
	defer root.Close()
	procDir, err := os.OpenFile("/proc/"+pid, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		return fmt.Errorf("worker %s: open /proc/%s: %w", name, pid, err)
	}
	defer procDir.Close()
	ctl, err := os.OpenFile("/dev/autofs", os.O_RDONLY, 0)
	if err != nil {
		return fmt.Errorf("worker %s: open /dev/autofs: %w", name, err)
	}
	defer ctl.Close()
	pidns, err := os.Open("/proc/" + pid + "/ns/pid")
	if err != nil {
		return fmt.Errorf("worker %s: open pid namespace of pid %s: %w", name, pid, err)
	}
	defer pidns.Close()
	self, err := os.Open("/proc/self/exe")
	if err != nil {
		return fmt.Errorf("worker %s: open own executable: %w", name, err)
	}
	defer self.Close()
	// All were opened through /proc/PID: make sure PID still is the
	// process we pinned.
	if err := p.Check(); err != nil {
		return fmt.Errorf("worker %s: %w", name, err)
	}
	return runWorker(name, args, []*os.File{mntns, root, procDir, ctl, pidns, self}, timeout, logf, result)
}

// RunOnHost runs the host task called name (see RegisterHostTask) in a
// child process, as RunInMountNS does; the child gets /dev/autofs only.
func RunOnHost(name string, args any, timeout time.Duration, logf func(string), result any) error {
	ctl, err := os.OpenFile("/dev/autofs", os.O_RDONLY, 0)
	if err != nil {
		return fmt.Errorf("worker %s: open /dev/autofs: %w", name, err)
	}
	defer ctl.Close()
	return runWorker(name, args, []*os.File{ctl}, timeout, logf, result)
}

// exitGrace is how long a killed worker gets to be gone. One that is not
// is blocked where SIGKILL does not reach (a FLUSH to a FUSE server that
// does not answer): it is left behind, reported, and not waited for.
const exitGrace = 2 * time.Second

func runWorker(name string, args any, files []*os.File, timeout time.Duration, logf func(string), result any) error {
	in, err := json.Marshal(args)
	if err != nil {
		return fmt.Errorf("worker %s: encode arguments: %w", name, err)
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("worker %s: %w", name, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.Command(exe, WorkerArg, name)
	cmd.Env = append([]string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}, failpoint.Environ()...)
	cmd.ExtraFiles = files
	cmd.Stdin = bytes.NewReader(in)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = time.Second
	out, err := cmd.StdoutPipe()
	if err != nil {
		return fmt.Errorf("worker %s: %w", name, err)
	}
	var stderr limitedBuffer
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("worker %s: start: %w", name, err)
	}
	var final *workerMsg
	var mu sync.Mutex
	last := ""
	// read is closed at the final message, or at the end of the output.
	read := make(chan struct{})
	var readOnce sync.Once
	go func() {
		defer readOnce.Do(func() { close(read) })
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 16<<20)
		for sc.Scan() {
			var m workerMsg
			if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
				continue
			}
			mu.Lock()
			if m.Log != "" {
				last = m.Log
				if logf != nil {
					logf(m.Log)
				}
			}
			if m.Done {
				final = &m
				readOnce.Do(func() { close(read) })
			}
			mu.Unlock()
		}
	}()
	waited := make(chan error, 1)
	timedOut := false
	select {
	case <-read:
	case <-ctx.Done():
		timedOut = true
		cmd.Process.Kill()
		select {
		case <-read:
		case <-time.After(exitGrace):
		}
	}
	go func() { waited <- cmd.Wait() }()
	var werr error
	select {
	case werr = <-waited:
	case <-time.After(exitGrace):
		cmd.Process.Kill()
		mu.Lock()
		defer mu.Unlock()
		said := ""
		if final != nil && final.Error != "" {
			said = ": " + final.Error
		}
		return fmt.Errorf("worker %s (pid %d) does not exit after SIGKILL: left behind (%s)%s", name, cmd.Process.Pid, ThreadStates(cmd.Process.Pid), said)
	}
	mu.Lock()
	defer mu.Unlock()
	if timedOut {
		step := ""
		if last != "" {
			step = " (last step: " + last + ")"
		}
		return fmt.Errorf("worker %s: no answer within %s%s", name, timeout, step)
	}
	if final == nil {
		return fmt.Errorf("worker %s: ended without a result after %s: %v %s", name, time.Since(start).Round(time.Millisecond), werr, stderr.String())
	}
	if final.Error != "" {
		return errors.New(final.Error)
	}
	if result != nil && len(final.Result) > 0 {
		if err := json.Unmarshal(final.Result, result); err != nil {
			return fmt.Errorf("worker %s: decode result: %w", name, err)
		}
	}
	return nil
}

// RunWorker is the body of the worker process: it joins the mount
// namespace passed as fd 3, chroots to the directory passed as fd 4, runs
// the task named by os.Args[2] with the /proc/PID directory (fd 5) and
// /dev/autofs (fd 6), and exits.
func RunWorker() {
	runtime.LockOSThread() // never unlocked: the thread dies with the process
	enc := json.NewEncoder(os.Stdout)
	var mu sync.Mutex
	send := func(m workerMsg) {
		mu.Lock()
		defer mu.Unlock()
		enc.Encode(m)
	}
	fail := func(err error) {
		send(workerMsg{Done: true, Error: err.Error()})
		os.Exit(1)
	}
	if len(os.Args) < 3 {
		fail(errors.New("worker: no task named"))
	}
	if os.Args[2] == connectArg && len(os.Args) == 4 {
		os.Exit(runConnect(os.Args[3]))
	}
	tasksMu.Lock()
	task, host := tasks[os.Args[2]], hostTasks[os.Args[2]]
	tasksMu.Unlock()
	if task == nil {
		fail(fmt.Errorf("worker: unknown task %q", os.Args[2]))
	}
	readArgs := func() json.RawMessage {
		args, err := io.ReadAll(io.LimitReader(os.Stdin, 16<<20))
		if err != nil {
			fail(fmt.Errorf("worker %s: read arguments: %w", os.Args[2], err))
		}
		return args
	}
	finish := func(res any, err error) {
		if err != nil {
			fail(err)
		}
		b, err := json.Marshal(res)
		if err != nil {
			fail(fmt.Errorf("worker %s: encode result: %w", os.Args[2], err))
		}
		send(workerMsg{Done: true, Result: b})
		os.Exit(0)
	}
	logf := func(s string) { send(workerMsg{Log: s}) }
	if host {
		unix.CloseOnExec(3)
		finish(task(&WorkerEnv{Ctl: &ControlDevice{f: os.NewFile(3, "/dev/autofs")}}, readArgs(), logf))
	}
	// Kept for DialInContainer's child, which joins them itself.
	mntNS, err1 := unix.FcntlInt(3, unix.F_DUPFD_CLOEXEC, 10)
	root, err2 := unix.FcntlInt(4, unix.F_DUPFD_CLOEXEC, 10)
	if err := errors.Join(err1, err2); err != nil {
		fail(fmt.Errorf("worker %s: keep namespace fds: %w", os.Args[2], err))
	}
	if err := enterMountNS(3, 4); err != nil {
		fail(fmt.Errorf("worker %s: %w", os.Args[2], err))
	}
	args := readArgs()
	for _, fd := range []int{5, 6, 7, 8} {
		unix.CloseOnExec(fd)
	}
	env := &WorkerEnv{Proc: os.NewFile(5, "proc"), Ctl: &ControlDevice{f: os.NewFile(6, "/dev/autofs")}, pidNS: os.NewFile(7, "pidns"),
		mntNS: os.NewFile(uintptr(mntNS), "mntns"), root: os.NewFile(uintptr(root), "root"), self: os.NewFile(8, "self")}
	finish(task(env, args, logf))
}

// enterMountNS moves the calling (locked) thread into the mount namespace
// nsfd and chroots it to the directory rootfd, then closes both fds.
func enterMountNS(nsfd, rootfd int) error {
	if err := unix.Unshare(unix.CLONE_FS); err != nil {
		return fmt.Errorf("unshare CLONE_FS: %w", err)
	}
	if err := unix.Setns(nsfd, unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("join mount namespace: %w", err)
	}
	if err := unix.Fchdir(rootfd); err != nil {
		return fmt.Errorf("enter container root: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot to container root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("chdir /: %w", err)
	}
	unix.Close(nsfd)
	unix.Close(rootfd)
	return nil
}

type limitedBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if room := 4096 - len(l.b); room > 0 {
		if len(p) < room {
			room = len(p)
		}
		l.b = append(l.b, p[:room]...)
	}
	return len(p), nil
}

func (l *limitedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.b)
}

// ThreadStates says where the threads of pid are: "state S in
// request_wait_answer" for each (the leader of an exiting process is a
// zombie while another thread waits).
func ThreadStates(pid int) string {
	dir := "/proc/" + strconv.Itoa(pid) + "/task/"
	ents, _ := os.ReadDir(dir)
	var out []string
	for _, e := range ents {
		b, err := os.ReadFile(dir + e.Name() + "/stat")
		if err != nil {
			continue
		}
		st, err := ParseStat(b)
		if err != nil {
			continue
		}
		w, _ := os.ReadFile(dir + e.Name() + "/wchan")
		out = append(out, fmt.Sprintf("thread %s state %c in %s", e.Name(), st.State, Escape(string(w))))
	}
	if len(out) == 0 {
		return "no thread visible"
	}
	return strings.Join(out, ", ")
}
