package door

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/fusetest"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/testenv"
)

// The test binary is its own child: roles first.
func TestMain(m *testing.M) {
	register("__door-test-echo", func([]string) int {
		r, err := Begin()
		if err != nil {
			return r.Done(nil, err)
		}
		var s string
		if err := ReadRequest(&s); err != nil {
			return r.Done(nil, err)
		}
		r.Log("got " + s)
		r.Logf(LevelWarn, "careful", Fields{"mount": "/srv/a"})
		f, err := os.OpenFile("/dev/null", unix.O_PATH, 0)
		if err != nil {
			return r.Done(nil, err)
		}
		return r.Done(s+"!", nil, f)
	})
	register("__door-test-hold", func([]string) int {
		r, err := Begin()
		if err != nil {
			return r.Done(nil, err)
		}
		var path string
		if err := ReadRequest(&path); err != nil {
			return r.Done(nil, err)
		}
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return r.Done(nil, err)
		}
		r.Log(fmt.Sprintf("holding fd %d", fd))
		time.Sleep(time.Hour)
		return 0
	})
	register("__door-test-sleep", func([]string) int {
		r, err := Begin()
		if err != nil {
			return r.Done(nil, err)
		}
		r.Log("sleeping")
		time.Sleep(time.Hour)
		return 0
	})
	register("__door-test-state", func([]string) int {
		r, err := Begin()
		if err != nil {
			return r.Done(nil, err)
		}
		dumpable, _ := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0)
		var sig int
		unix.Prctl(unix.PR_GET_PDEATHSIG, uintptr(unsafePtr(&sig)), 0, 0, 0)
		flags, _ := unix.FcntlInt(3, unix.F_GETFD, 0)
		last, _ := LastCap()
		return r.Done(map[string]any{"dumpable": dumpable, "pdeathsig": sig, "fd3_cloexec": flags&unix.FD_CLOEXEC != 0, "caps": Caps(last), "env": os.Environ()}, nil)
	})
	register("__door-test-lie", func([]string) int {
		r, _ := Begin()
		f, _ := os.OpenFile("/dev/null", unix.O_PATH, 0)
		r.send(Msg{Done: true, Result: []byte(`"x"`), Files: 3}, []*os.File{f})
		return 0
	})
	// Hands back a file whose close could ask a file system.
	register("__door-test-regular", func([]string) int {
		r, _ := Begin()
		f, _ := os.Open("/proc/self/status")
		return r.Done("x", nil, f)
	})
	// Sends fds with a log line, unasked, then a final line without.
	register("__door-test-early", func([]string) int {
		r, _ := Begin()
		var fds []int
		for i := 0; i < 8; i++ {
			f, _ := os.Open("/dev/null")
			fds = append(fds, int(f.Fd()))
		}
		unix.Sendmsg(1, []byte(`{"log":"here"}`+"\n"), unix.UnixRights(fds...), nil, 0)
		return r.Done("x", nil)
	})
	// Waits before its first step: the window between the exec and Begin,
	// made long.
	register("__door-test-slow-begin", func([]string) int {
		time.Sleep(500 * time.Millisecond)
		r, _ := Begin()
		return r.Done("x", nil)
	})
	// Waits before its first step, then says whether it was born in its
	// container (Entered) and which root it has ("dev:ino").
	register("__door-test-entered", func([]string) int {
		time.Sleep(500 * time.Millisecond)
		r, err := Begin()
		if err != nil {
			return r.Done(nil, err)
		}
		entered, err := Entered()
		var st unix.Stat_t
		if err == nil {
			err = unix.Stat("/", &st)
		}
		return r.Done(fmt.Sprintf("%v %d:%d", entered, st.Dev, st.Ino), err)
	})
	// Says whether the role runs on the process's main thread, the one
	// /proc/PID names and every per-thread step (setns, chroot, capset)
	// must take effect on.
	register("__door-test-thread", func([]string) int {
		r, err := Begin()
		if err != nil {
			return r.Done(nil, err)
		}
		// Give the scheduler every chance to move it: other goroutines
		// busy on every P, and blocking system calls after which its
		// thread finds no P free and hands the goroutine to another.
		stop := make(chan struct{})
		defer close(stop)
		for i := 0; i < runtime.GOMAXPROCS(0); i++ {
			go func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
				}
			}()
		}
		for i := 0; i < 20; i++ {
			if unix.Gettid() != unix.Getpid() {
				return r.Done(false, nil)
			}
			unix.Nanosleep(&unix.Timespec{Nsec: 2e6}, nil)
		}
		return r.Done(unix.Gettid() == unix.Getpid(), nil)
	})
	// Reports on its own threads from a root with no /proc, as a worker
	// chrooted into a container reports on a child it left behind.
	register("__door-test-chrooted-report", func(args []string) int {
		r, err := Begin()
		if err != nil {
			return r.Done(nil, err)
		}
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			return r.Done(nil, err)
		}
		if err := unix.Chroot(args[0]); err != nil {
			return r.Done(nil, err)
		}
		return r.Done(ThreadStates(os.Getpid()), nil)
	})
	// Sends an event, then, once Event returned, writes the file the
	// request names: the parent sees whether the child went on before
	// its answer. A second event is sent after a log line and a file
	// travels with the final line, so that the answers, the log and the
	// '?' for the files are seen not to mix.
	register("__door-test-event", func([]string) int {
		r, err := Begin()
		if err != nil {
			return r.Done(nil, err)
		}
		var path string
		if err := ReadRequest(&path); err != nil {
			return r.Done(nil, err)
		}
		if err := r.Event(map[string]any{"step": 1, "path": path}); err != nil {
			return r.Done(nil, err)
		}
		if err := os.WriteFile(path, []byte("went on"), 0o600); err != nil {
			return r.Done(nil, err)
		}
		r.Log("between")
		if err := r.Event(map[string]any{"step": 2}); err != nil {
			return r.Done(nil, err)
		}
		f, err := os.OpenFile("/dev/null", unix.O_PATH, 0)
		if err != nil {
			return r.Done(nil, err)
		}
		return r.Done("done", nil, f)
	})
	if code, ok := Run(os.Args[1:]); ok {
		os.Exit(code)
	}
	os.Exit(m.Run())
}

func TestCallPassesFilesBack(t *testing.T) {
	var logs []string
	var res string
	files, err := call(Spec{role: "__door-test-echo", request: "hi", Deadline: time.Now().Add(10 * time.Second), Log: func(l Level, s string, f Fields) {
		logs = append(logs, string(l)+":"+s)
		for k, v := range f {
			logs[len(logs)-1] += " " + k + "=" + v
		}
	}}, &res)
	if err != nil {
		t.Fatal(err)
	}
	defer closeAll(files)
	// A child's warning reaches the parent as a warning, with its fields.
	if res != "hi!" || len(logs) != 2 || logs[0] != ":got hi" || logs[1] != "warning:careful mount=/srv/a" {
		t.Fatalf("result %q, logs %q", res, logs)
	}
	if len(files) != 1 {
		t.Fatalf("%d files back, want 1", len(files))
	}
	var got, want unix.Stat_t
	unix.Fstat(int(files[0].Fd()), &got)
	unix.Stat("/dev/null", &want)
	if got.Rdev != want.Rdev {
		t.Fatalf("the file back is not /dev/null (rdev %x)", got.Rdev)
	}
	if flags, _ := unix.FcntlInt(files[0].Fd(), unix.F_GETFD, 0); flags&unix.FD_CLOEXEC == 0 {
		t.Fatal("a file passed back is not close-on-exec")
	}
}

// A child that never answers is killed at the deadline and reaped. The
// deadline is scaled by the tests' slowdown factor: run alone in the test
// VM, a child once had not yet reported its step ("sleeping") at 500 ms.
func TestCallEndsByTheDeadline(t *testing.T) {
	deadline := testenv.Scale(500 * time.Millisecond)
	start := time.Now()
	_, err := call(Spec{role: "__door-test-sleep", Deadline: time.Now().Add(deadline)}, nil)
	took := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "no answer within") || !strings.Contains(err.Error(), "last step: sleeping") {
		t.Fatalf("err %v", err)
	}
	if took > deadline+ExitGrace {
		t.Fatalf("returned after %s", took)
	}
	if left := testenv.ChildrenRunning("__door-test-sleep"); len(left) > 0 {
		t.Fatalf("children left after the call: %v", left)
	}
}

// Every child starts not dumpable, with a parent-death signal, with its
// inherited fds close-on-exec and PATH as its only environment besides
// what Spec.Env names; what Prepare does to the starting thread reaches
// the child and not the caller.
func TestBeginAndPrepare(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.Skip(t, "(not root): drops a capability from a bounding set")
	}
	before := Caps(mustLastCap(t))
	f, err := os.Open("/dev/null")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var res struct {
		Dumpable  int      `json:"dumpable"`
		Pdeathsig int      `json:"pdeathsig"`
		Cloexec   bool     `json:"fd3_cloexec"`
		Caps      string   `json:"caps"`
		Env       []string `json:"env"`
	}
	last := mustLastCap(t)
	var bnd uint64
	fmt.Sscanf(before, "bnd:%x", &bnd)
	if bnd&(1<<unix.CAP_MKNOD) == 0 {
		testenv.Skip(t, "this machine's bounding set has no CAP_MKNOD to drop (%s)", before)
	}
	want := bnd &^ (1 << unix.CAP_MKNOD)
	_, err = call(Spec{role: "__door-test-state", Files: Files{"f": f}, Env: []string{"A=b"}, Deadline: time.Now().Add(10 * time.Second),
		Prepare: func() error { return LimitCaps(want, 0, last) }}, &res)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", res)
	if res.Dumpable != 0 || res.Pdeathsig != int(unix.SIGKILL) || !res.Cloexec {
		t.Errorf("dumpable %d, pdeathsig %d, fd 3 close-on-exec %v; want 0, 9, true", res.Dumpable, res.Pdeathsig, res.Cloexec)
	}
	if strings.Join(res.Env, " ") != "PATH=/usr/sbin:/usr/bin:/sbin:/bin A=b "+EnvFiles+"=f=3" {
		t.Errorf("environment %q", res.Env)
	}
	if !strings.HasPrefix(res.Caps, "bnd:"+hex16(want)+",") {
		t.Errorf("the child's caps %s: Prepare's bounding set did not reach it", res.Caps)
	}
	if after := Caps(last); after != before {
		t.Errorf("the caller's thread changed: %s, was %s", after, before)
	}
}

// A child that announces more files than it passes gets none accepted.
func TestCallRefusesFilesNotAsAnnounced(t *testing.T) {
	files, err := call(Spec{role: "__door-test-lie", Deadline: time.Now().Add(10 * time.Second)}, nil)
	closeAll(files)
	if err == nil || !strings.Contains(err.Error(), "announced 3 files and passed 1") {
		t.Fatalf("err %v, files %d", err, len(files))
	}
}

// A file whose close may wait on a file system (here a procfs file; a
// FUSE file in an attack) is refused and never closed by the parent.
func TestCallRefusesFilesOfOtherKinds(t *testing.T) {
	files, err := call(Spec{role: "__door-test-regular", Deadline: time.Now().Add(10 * time.Second)}, nil)
	closeAll(files)
	if err == nil || !strings.Contains(err.Error(), "left open, never closed") {
		t.Fatalf("err %v, files %d", err, len(files))
	}
}

// Fds a child sends before its final line are never installed in the
// parent: the kernel drops them.
func TestCallNeverTakesFilesUnasked(t *testing.T) {
	before := openFDs(t)
	var res string
	files, err := call(Spec{role: "__door-test-early", Deadline: time.Now().Add(10 * time.Second)}, &res)
	if err != nil || res != "x" || len(files) != 0 {
		t.Fatalf("result %q, %d files, err %v", res, len(files), err)
	}
	if after := openFDs(t); after != before {
		t.Fatalf("%d fds open after the call, %d before", after, before)
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func TestCallWithoutDeadlineIsRefused(t *testing.T) {
	if _, err := call(Spec{role: "__door-test-echo"}, nil); err == nil {
		t.Fatal("a call without a deadline ran")
	}
}

func mustLastCap(t *testing.T) int {
	t.Helper()
	n, err := LastCap()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// A process of the container (same uid, its capabilities, no
// CAP_SYS_PTRACE) that watches for a child of ours entering its pid
// namespace and opens /proc/CHILD/root, which before the child's own
// chroot is the host's root: refused from the exec on, not only from the
// child's first step. Children were once exec'd from a file they could
// read, which leaves them dumpable until Begin; this test then opened the
// host's root through the child.
func TestChildNotTraceableBeforeItsFirstStep(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.Skip(t, "(not root): joins a pid namespace")
	}
	cmd := exec.Command("unshare", "-p", "--fork", "--kill-child", "sleep", "600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	init := testenv.WaitChild(t, cmd.Process.Pid)
	pidns, err := os.Open(fmt.Sprintf("/proc/%d/ns/pid", init))
	if err != nil {
		t.Fatal(err)
	}
	defer pidns.Close()
	last := mustLastCap(t)
	var bnd uint64
	fmt.Sscanf(Caps(last), "bnd:%x", &bnd)
	bnd &^= 1 << unix.CAP_SYS_PTRACE // as a container's: no CAP_SYS_PTRACE

	stop := make(chan struct{})
	type result struct {
		opened []string
		tried  int
		err    error
	}
	attack := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: its capabilities are its own
		var r result
		defer func() { attack <- r }()
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if r.err = unix.Capget(&hdr, &data[0]); r.err != nil {
			return
		}
		data[0].Effective &^= 1 << unix.CAP_SYS_PTRACE
		if r.err = unix.Capset(&hdr, &data[0]); r.err != nil {
			return
		}
		for {
			select {
			case <-stop:
				return
			default:
			}
			tasks, _ := os.ReadDir("/proc/self/task")
			for _, task := range tasks {
				b, _ := os.ReadFile("/proc/self/task/" + task.Name() + "/children")
				for _, pid := range strings.Fields(string(b)) {
					if pid == strconv.Itoa(cmd.Process.Pid) {
						continue
					}
					r.tried++
					fd, err := unix.Open("/proc/"+pid+"/root", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
					if err == nil {
						unix.Close(fd)
						if len(r.opened) == 0 || r.opened[len(r.opened)-1] != pid {
							r.opened = append(r.opened, pid)
						}
					}
				}
			}
		}
	}()
	var res string
	_, err = call(Spec{role: "__door-test-slow-begin", Deadline: time.Now().Add(10 * time.Second), IntoContainer: true,
		Prepare: func() error {
			if err := unix.Setns(int(pidns.Fd()), unix.CLONE_NEWPID); err != nil {
				return err
			}
			return LimitCaps(bnd, 0, last)
		}}, &res)
	close(stop)
	r := <-attack
	if err != nil || res != "x" {
		t.Fatalf("call: %q, %v", res, err)
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Logf("%d attempts on the child's /proc/PID/root", r.tried)
	if r.tried == 0 {
		t.Fatal("the attacker never saw the child: the test did not attack")
	}
	if len(r.opened) > 0 {
		t.Fatalf("a process without CAP_SYS_PTRACE opened /proc/PID/root of our child (pids %v)", r.opened)
	}
}

// Every role runs on its process's main thread: what a role does to its
// thread (join a namespace, chroot, drop capabilities) is what the
// process shows in /proc/PID and what a test of it inspects. The main
// goroutine once moved to another thread at times before the role began
// (seen once in six runs of the connect child).
func TestRoleRunsOnTheMainThread(t *testing.T) {
	for i := 0; i < 5; i++ {
		var main bool
		if _, err := call(Spec{role: "__door-test-thread", Deadline: time.Now().Add(10 * time.Second)}, &main); err != nil {
			t.Fatal(err)
		}
		if !main {
			t.Fatalf("child %d: the role ran on a thread other than the main one", i)
		}
	}
}

// A report on a child's threads from a thread whose root is the
// container's reads the host's /proc, not the container's: it once said
// "no thread visible" for every child a worker left behind.
func TestThreadStatesFromAnotherRoot(t *testing.T) {
	var got string
	if _, err := call(Spec{role: "__door-test-chrooted-report", args: []string{t.TempDir()}, Deadline: time.Now().Add(10 * time.Second)}, &got); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(got, "thread ") || !strings.Contains(got, " state R ") {
		t.Fatalf("report on its own threads from a root without /proc: %q", got)
	}
}

// A child's event is answered only once the parent's callback returned:
// the child does not go on before (the file it writes after Event is not
// there while the callback runs). A failing callback makes Event fail in
// the child, which then takes no step.
func TestEventAckedAfterTheCallback(t *testing.T) {
	path := t.TempDir() + "/after"
	var steps []string
	var res string
	files, err := call(Spec{role: "__door-test-event", request: path, Deadline: time.Now().Add(10 * time.Second),
		Event: func(ev json.RawMessage) error {
			steps = append(steps, string(ev))
			if len(steps) == 1 {
				time.Sleep(300 * time.Millisecond)
				if _, err := os.Stat(path); err == nil {
					t.Error("the child went on before its event was acknowledged")
				}
			}
			return nil
		}}, &res)
	if err != nil {
		t.Fatal(err)
	}
	closeAll(files)
	if res != "done" || len(files) != 1 || len(steps) != 2 || !strings.Contains(steps[0], `"step":1`) {
		t.Fatalf("result %q, %d files, events %q", res, len(files), steps)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("the child did not go on after the ack: %v", err)
	}

	path = t.TempDir() + "/after"
	var logs []string
	_, err = call(Spec{role: "__door-test-event", request: path, Deadline: time.Now().Add(10 * time.Second),
		Log:   func(_ Level, s string, _ Fields) { logs = append(logs, s) },
		Event: func(json.RawMessage) error { return errors.New("disk full") }}, nil)
	if err == nil || !strings.Contains(err.Error(), "could not keep the event") {
		t.Fatalf("err = %v, want the child's Event to fail", err)
	}
	if _, serr := os.Stat(path); serr == nil {
		t.Fatal("the child went on after its event was refused")
	}
	if len(logs) != 1 || !strings.Contains(logs[0], "disk full") {
		t.Fatalf("logs %q, want the callback's error", logs)
	}

	// Without a callback every event is refused.
	_, err = call(Spec{role: "__door-test-event", request: path, Deadline: time.Now().Add(10 * time.Second)}, nil)
	if err == nil || !strings.Contains(err.Error(), "could not keep the event") {
		t.Fatalf("err = %v without a callback, want a refusal", err)
	}
}

// A child that holds a file of a FUSE server which then stops answering
// cannot exit after SIGKILL: its exit waits for the FLUSH of that file.
// Call returns by its bound all the same, with an error that says the
// child was left behind (errors.Is ErrLeftBehind), so that a caller does
// not send another child the same way.
func TestCallLeftBehindIsTyped(t *testing.T) {
	testenv.RequireRoot(t, "mounts FUSE")
	if _, err := os.Stat("/dev/fuse"); err != nil {
		testenv.Skip(t, "no /dev/fuse: %v", err)
	}
	file := filepath.Join(t.TempDir(), "held")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var f fusetest.Friendly
	srv, err := fusetest.Mount(file, fusetest.Options{Answer: f.Answer, Content: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close(); unix.Unmount(file, unix.MNT_DETACH) })
	start := time.Now()
	_, err = call(Spec{role: "__door-test-hold", request: file, Deadline: time.Now().Add(testenv.Scale(2 * time.Second)),
		Log: func(_ Level, s string, _ Fields) {
			if strings.HasPrefix(s, "holding") {
				f.Turn()
			}
		}}, nil)
	took := time.Since(start)
	t.Logf("after %v: %v", took.Round(time.Millisecond), err)
	if !errors.Is(err, ErrLeftBehind) {
		t.Fatalf("err %v, want one that matches ErrLeftBehind", err)
	}
	if limit := testenv.Scale(2*time.Second) + 2*ExitGrace + time.Second; took > limit {
		t.Errorf("returned after %v, want at most %v", took, limit)
	}
}

// A child that lives in a container is born there (Spec.Enter): a process
// of the host (all capabilities, as a container with CAP_SYS_PTRACE in
// the host's user namespace has) that watches the container's pid
// namespace for new processes never finds one of ours with the host's
// root, the host's mount namespace or an fd of the host's /proc, however
// long the child waits before its first step. Started the way children
// were before (the pid namespace joined by the starting thread, the
// mount namespace and root by the role), the same watch finds the
// host's root: the control, which shows the watch can see it.
func TestChildBornInItsContainer(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.Skip(t, "(not root): joins pid and mount namespaces")
	}
	cmd := exec.Command("unshare", "-p", "-m", "--fork", "--kill-child", "sleep", "600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	init := testenv.WaitChild(t, cmd.Process.Pid)
	open := func(name string) *os.File {
		f, err := os.Open(fmt.Sprintf("/proc/%d/%s", init, name))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	pidns, mntns := open("ns/pid"), open("ns/mnt")
	dir := t.TempDir() // the container's root
	root, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	var hostRoot, hostProc, rootSt, mntSt, pidSt unix.Stat_t
	for _, s := range []struct {
		path string
		st   *unix.Stat_t
	}{{"/", &hostRoot}, {"/proc", &hostProc}, {dir, &rootSt}, {mntns.Name(), &mntSt}, {pidns.Name(), &pidSt}} {
		if err := unix.Stat(s.path, s.st); err != nil {
			t.Fatal(err)
		}
	}
	same := func(a, b unix.Stat_t) bool { return a.Dev == b.Dev && a.Ino == b.Ino }

	// watch lists what it finds of the host's in processes of the
	// container's pid namespace (but its init) until stop, and how many
	// it looked at.
	watch := func(stop <-chan struct{}) (found []string, seen int) {
		for {
			select {
			case <-stop:
				return found, seen
			default:
			}
			ents, _ := os.ReadDir("/proc")
			for _, e := range ents {
				pid, err := strconv.Atoi(e.Name())
				if err != nil || pid == init {
					continue
				}
				var st unix.Stat_t
				if unix.Stat(fmt.Sprintf("/proc/%d/ns/pid", pid), &st) != nil || !same(st, pidSt) {
					continue
				}
				seen++
				if unix.Stat(fmt.Sprintf("/proc/%d/root", pid), &st) == nil && same(st, hostRoot) {
					found = append(found, fmt.Sprintf("pid %d has the host's root", pid))
				}
				if unix.Stat(fmt.Sprintf("/proc/%d/ns/mnt", pid), &st) == nil && !same(st, mntSt) {
					found = append(found, fmt.Sprintf("pid %d is in another mount namespace", pid))
				}
				fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
				for _, fd := range fds {
					if unix.Stat(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()), &st) == nil && same(st, hostProc) {
						found = append(found, fmt.Sprintf("pid %d holds the host's /proc as fd %s", pid, fd.Name()))
					}
				}
			}
		}
	}
	run := func(t *testing.T, s Spec) (string, []string, int) {
		stop := make(chan struct{})
		type res struct {
			found []string
			seen  int
		}
		watched := make(chan res, 1)
		go func() { f, n := watch(stop); watched <- res{f, n} }()
		var got string
		_, err := call(s, &got)
		close(stop)
		w := <-watched
		if err != nil {
			t.Fatalf("call: %v", err)
		}
		t.Logf("the child says %q; %d looks at processes of ours in the pid namespace", got, w.seen)
		if w.seen == 0 {
			t.Fatal("the watch never saw the child in the container's pid namespace: it did not watch")
		}
		return got, w.found, w.seen
	}

	t.Run("entered", func(t *testing.T) {
		got, found, _ := run(t, Spec{role: "__door-test-entered", Deadline: time.Now().Add(testenv.Scale(20 * time.Second)),
			Enter: &Entry{MountNS: mntns, Root: root, PidNS: pidns}})
		if want := fmt.Sprintf("true %d:%d", rootSt.Dev, rootSt.Ino); got != want {
			t.Errorf("the child says %q, want %q (born in its container, in the container's root)", got, want)
		}
		if len(found) > 0 {
			t.Errorf("seen in the container's pid namespace with the host's: %v", found[:min(len(found), 5)])
		}
	})
	t.Run("control", func(t *testing.T) {
		_, found, _ := run(t, Spec{role: "__door-test-entered", Deadline: time.Now().Add(testenv.Scale(20 * time.Second)),
			Prepare: func() error { return unix.Setns(int(pidns.Fd()), unix.CLONE_NEWPID) }})
		if len(found) == 0 {
			t.Error("the watch did not find the host's root in a child started the old way: it cannot tell")
		}
	})
}
