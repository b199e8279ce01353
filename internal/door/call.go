package door

// The parent's side of the door: starting a child role, its deadline,
// reaping it, and reading its answer.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/failpoint"
)

// Spec says how to start a child role.
type Spec struct {
	// role is the child's registered role, args what follows it (Task
	// sets the role; only the door's tests use args).
	role string
	args []string
	// request is encoded as JSON on the child's stdin (nil: none).
	request any
	// Label follows the role in the child's command line, for whoever
	// reads it (ps, an operator, a test looking for the child); the child
	// never reads it.
	Label string
	// Files are handed to the child by name (Child.Take). They become
	// its fds 3, 4, ... in the order of their names; the child also gets
	// our executable as the fd after them (it is started through it).
	Files Files
	// Env is the child's whole environment besides PATH and the door's own
	// variables (_AUTOFS_RESTORE_HOOK_..., which Env must not set).
	Env []string
	// Deadline: the child is killed then. Zero is an error.
	Deadline time.Time
	// Log gets the child's log lines, with their levels.
	Log Logf
	// Event gets the child's events (Reply.Event), one at a time; the
	// child goes on once it returned, and fails its step if it returned
	// an error. Nil: every event is refused.
	Event func(json.RawMessage) error
	// Prepare runs on the thread that starts the child, which is locked
	// to it and ends afterwards, before the start: what it changes of
	// that thread (namespaces for children, the bounding set), the child
	// inherits, and nothing else of ours does.
	Prepare func() error
	// IntoContainer says that the child lives in a container's pid
	// namespace (Prepare or Enter joins it), where the container sees
	// it: refused on a host where it could be traced before its first
	// step (fs.suid_dumpable = 1).
	IntoContainer bool
	// Enter, when set, is the container the child is born in: its C
	// constructor joins it before any Go code runs (see Entry), and the
	// role checks it with Entered. Prepare must not join the pid
	// namespace then.
	Enter *Entry
}

// ExitGrace is how long a child gets to exit after its final line, or
// after SIGKILL. One that does not is blocked where SIGKILL does not reach
// (a FUSE request its server read and never answers): it is left behind,
// reported, and not waited for.
const ExitGrace = 2 * time.Second

// ErrLeftBehind is what the error of a Call whose child did not exit
// after SIGKILL matches (errors.Is): the child is blocked where no signal
// reaches, and another child sent the same way would most likely join it.
var ErrLeftBehind = errors.New("child left behind")

// leftBehindError says which child was left behind, and why.
type leftBehindError struct{ msg string }

func (e *leftBehindError) Error() string        { return e.msg }
func (e *leftBehindError) Is(target error) bool { return target == ErrLeftBehind }

// call starts the child role of s, waits for its final line, and decodes
// the result into result. It returns the files the child passed back,
// which the caller closes. It returns by the deadline plus twice
// ExitGrace, whatever the child does. Task.Call is its typed door.
func call(s Spec, result any) ([]*os.File, error) {
	name := s.role
	if len(s.args) > 0 {
		name += " " + s.args[0]
	}
	start := time.Now()
	if s.Deadline.IsZero() {
		return nil, fmt.Errorf("%s: no deadline", name)
	}
	var in []byte
	if s.request != nil {
		var err error
		if in, err = json.Marshal(s.request); err != nil {
			return nil, fmt.Errorf("%s: encode request: %w", name, err)
		}
	}
	names, err := s.Files.order()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	// The door's own variables (the files' names, the entry) are set by
	// the door alone.
	for _, kv := range s.Env {
		if strings.HasPrefix(kv, doorEnvPrefix) {
			return nil, fmt.Errorf("%s: Spec.Env sets %q, a variable of the door's", name, kv)
		}
	}
	handed := make([]*os.File, len(names))
	var fdNames []string
	for i, n := range names {
		handed[i] = s.Files[n]
		fdNames = append(fdNames, n+"="+strconv.Itoa(3+i))
	}
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("%s: socketpair: %w", name, err)
	}
	theirs := os.NewFile(uintptr(pair[1]), "door-child")
	ourFile := os.NewFile(uintptr(pair[0]), "door-parent")
	fc, err := net.FileConn(ourFile)
	ourFile.Close()
	if err != nil {
		theirs.Close()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	conn := fc.(*net.UnixConn)
	defer conn.Close()

	ctx, cancel := context.WithDeadline(context.Background(), s.Deadline)
	defer cancel()
	var stderr limitedBuffer
	cmd := &exec.Cmd{Args: append([]string{"autofs-restore-hook", s.role}, s.args...)}
	if s.Label != "" {
		cmd.Args = append(cmd.Args, s.Label)
	}
	// PATH, what the Spec names, the names of the files handed, and in a
	// failpoints build (tests only) the selected failpoint.
	cmd.Env = append(append([]string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}, s.Env...), failpoint.Environ()...)
	if len(fdNames) > 0 {
		cmd.Env = append(cmd.Env, EnvFiles+"="+strings.Join(fdNames, ","))
	}
	cmd.Stdin = bytes.NewReader(in)
	cmd.Stdout = theirs
	cmd.Stderr = &stderr
	cmd.Dir = "/"

	// The starting thread is locked for the child's life: its
	// parent-death signal is tied to that thread. When Prepare changed
	// it, the thread ends with its goroutine; otherwise it gets its DAC
	// capabilities back and is unlocked, so that it goes on: a thread that
	// ends also kills every child that anything else forked from it with a
	// parent-death signal.
	started := make(chan error, 1)
	release := make(chan struct{})
	defer close(release)
	go func() {
		runtime.LockOSThread()
		keep := s.Prepare == nil
		var caps *[2]unix.CapUserData
		defer func() {
			if keep && (caps == nil || restoreCaps(caps) == nil) {
				runtime.UnlockOSThread()
			}
		}()
		// Before anything is read through it (the host's mount table
		// for Enter's cgroup files) or started by it.
		if err := HostProcOK(); err != nil {
			started <- err
			return
		}
		files := append([]*os.File{}, handed...)
		if s.Enter != nil {
			// Opened first, in the host's mount and cgroup namespaces
			// (Prepare may join the container's) and with our DAC
			// capabilities (a delegated cgroup's cgroup.procs is owned by
			// its user): the cgroup files; ours to close once the child
			// has them.
			efiles, opened, env, err := entryFiles(s.Enter, 3+len(files))
			if err != nil {
				started <- err
				return
			}
			defer closeAll(opened)
			files = append(files, efiles...)
			cmd.Env = append(cmd.Env, env...)
		}
		if s.Prepare != nil {
			if err := s.Prepare(); err != nil {
				started <- err
				return
			}
		}
		if s.IntoContainer || s.Enter != nil {
			if err := suidDumpableOK(); err != nil {
				started <- err
				return
			}
		}
		self, err := sealedSelf()
		if err != nil {
			started <- err
			return
		}
		if caps, err = withoutDAC(); err != nil {
			started <- err
			return
		}
		cmd.ExtraFiles = append(files, self)
		cmd.Path = "/proc/self/fd/" + strconv.Itoa(3+len(files))
		err = cmd.Start()
		started <- err
		if err == nil {
			<-release
		}
	}()
	err = <-started
	theirs.Close()
	if err != nil {
		return nil, fmt.Errorf("%s: start: %w", name, err)
	}
	pid := cmd.Process.Pid
	var mu sync.Mutex
	lastLog := ""
	got := make(chan *final, 1)
	go func() {
		got <- readMsgs(conn, s.Log, func(l string) { mu.Lock(); lastLog = l; mu.Unlock() }, s.Event)
	}()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	// A child that entered a container runs the role in the process its
	// constructor forked, which waits for it: both are killed, and that
	// one is the one that may be left behind.
	var inners []inner
	defer func() { closeInner(inners) }()
	kill := func() {
		if s.Enter != nil {
			if inners == nil {
				inners = innerOf(pid)
			}
			for _, p := range inners {
				p.kill()
			}
		}
		cmd.Process.Kill()
	}
	var f *final
	timedOut := false
	select {
	case f = <-got:
	case <-ctx.Done():
		timedOut = true
		kill()
		conn.Close() // ends the reader
		f = <-got
		if f != nil {
			closeAll(f.files)
			f = nil
		}
	}
	var werr error
	left := ""
	select {
	case werr = <-exited:
	case <-time.After(ExitGrace):
		kill()
		select {
		case werr = <-exited:
		case <-time.After(ExitGrace):
			left = fmt.Sprintf("%s (pid %d) does not exit after SIGKILL: left behind (%s)", name, pid, ThreadStates(pid))
		}
	}
	// The killed process the constructor forked: the one that may be
	// blocked where no signal reaches.
	for _, p := range inners {
		if left == "" && !p.goneWithin(ExitGrace) {
			left = fmt.Sprintf("%s (pid %d, in the container) does not exit after SIGKILL: left behind (%s)", name, p.pid, ThreadStates(p.pid))
		}
	}
	if left != "" {
		if f == nil || f.msg.Error != "" {
			said := ""
			if f != nil {
				said = ": " + f.msg.Error
			}
			return nil, &leftBehindError{left + said}
		}
		// It answered: the answer stands, the rest is reported.
		s.Log.Warn(left)
	}
	mu.Lock()
	step := lastLog
	mu.Unlock()
	if timedOut {
		if step != "" {
			step = " (last step: " + step + ")"
		}
		return nil, fmt.Errorf("%s: no answer within %s%s", name, s.Deadline.Sub(start).Round(time.Millisecond), step)
	}
	if f == nil {
		return nil, fmt.Errorf("%s: ended without a result after %s: %v %s", name, time.Since(start).Round(time.Millisecond), werr, strings.TrimSpace(stderr.String()))
	}
	if f.msg.Error != "" {
		return nil, errors.New(f.msg.Error)
	}
	if result != nil && len(f.msg.Result) > 0 {
		if err := json.Unmarshal(f.msg.Result, result); err != nil {
			closeAll(f.files)
			return nil, fmt.Errorf("%s: decode result: %w", name, err)
		}
	}
	return f.files, nil
}

type limitedBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if room := 4096 - len(l.b); room > 0 {
		l.b = append(l.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (l *limitedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.b)
}

// ThreadStates says where the threads of pid are: "thread T state S in
// WCHAN", each (the leader of an exiting process is a zombie while
// another thread waits). It reads the host's /proc through the fd Begin opened
// (or /proc in a process that is no child), never through the calling
// thread's root, which in a worker is the container's.
func ThreadStates(pid int) string {
	dir := strconv.Itoa(pid) + "/task"
	d, err := openHostProc(dir, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return fmt.Sprintf("no thread visible: %v", err)
	}
	names, _ := d.Readdirnames(-1)
	d.Close()
	var out []string
	for _, n := range names {
		stat, err := ReadHostProc(dir + "/" + n + "/stat")
		if err != nil {
			continue
		}
		i := strings.LastIndexByte(stat, ')')
		if i < 0 || i+2 >= len(stat) {
			continue
		}
		w, _ := ReadHostProc(dir + "/" + n + "/wchan")
		out = append(out, fmt.Sprintf("thread %s state %c in %q", n, stat[i+2], w))
	}
	if len(out) == 0 {
		return "no thread visible"
	}
	return strings.Join(out, ", ")
}
