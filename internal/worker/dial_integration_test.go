package worker_test

import (
	"bufio"
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

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/autofstest"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/door"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/fusetest"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/testenv"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/worker"
)

type dialArgs struct {
	Path    string        `json:"path"`
	Timeout time.Duration `json:"timeout"`
}

// Dials path from the container (DialInContainer) and returns the first
// line the server says.
var testDial = worker.NewTask("test-dial", func(env *worker.Env, a dialArgs, logf door.Logf) (string, error) {
	conn, err := env.DialInContainer(a.Path, a.Timeout)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(a.Timeout))
	line, err := bufio.NewReader(conn).ReadString('\n')
	return strings.TrimSpace(line), err
})

// aContainer starts a stand-in container init with pid, mount and network
// namespaces of its own (no autofs needed) and returns it pinned.
func aContainer(t *testing.T) *proc.Process {
	t.Helper()
	cmd := exec.Command("unshare", "-p", "-m", "-n", "--fork", "--mount-proc", "sleep", "600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	p, err := proc.OpenProcess(testenv.WaitChild(t, cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// inOwnCgroups moves pid into a new cgroup below ours in every cgroup v1
// hierarchy but cpuset (a new cpuset has no cpus), as a container
// runtime would, and moves it back and removes them when the test ends.
func inOwnCgroups(t *testing.T, pid int) {
	t.Helper()
	mnts, err := mountinfo.GetMounts(mountinfo.FSTypeFilter("cgroup"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	moved := 0
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(l, ":", 3)
		if len(parts) != 3 || parts[1] == "" || strings.Contains(parts[1], "cpuset") {
			continue
		}
		for _, m := range mnts {
			opts := "," + m.VFSOptions + ","
			if !strings.Contains(opts, ","+strings.Split(parts[1], ",")[0]+",") {
				continue
			}
			ours := filepath.Join(m.Mountpoint, parts[2])
			dir := filepath.Join(ours, fmt.Sprintf("arh-dial-test-%d", pid))
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
				os.Remove(dir)
				t.Fatal(err)
			}
			moved++
			t.Cleanup(func() {
				os.WriteFile(filepath.Join(ours, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0)
				for i := 0; i < 50 && os.Remove(dir) != nil; i++ {
					time.Sleep(20 * time.Millisecond)
				}
			})
			break
		}
	}
	if moved == 0 {
		testenv.Skip(t, "no cgroup v1 hierarchy to give the stand-in container cgroups of its own (%s)", strings.TrimSpace(string(b)))
	}
}

// seizeWithout tries PTRACE_SEIZE on pid from a thread of ours that has
// no CAP_SYS_PTRACE in its effective set: what a process of the container
// with the same uid and without that capability could do. A seize that
// worked is undone (PTRACE_DETACH after an interrupt); the thread gets its
// capability back and goes on (a thread that ends would kill the test
// masters forked from it).
func seizeWithout(pid int) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			errc <- fmt.Errorf("capget: %w", err)
			runtime.UnlockOSThread()
			return
		}
		was := data
		data[0].Effective &^= 1 << unix.CAP_SYS_PTRACE
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			errc <- fmt.Errorf("capset: %w", err)
			runtime.UnlockOSThread()
			return
		}
		err := unix.PtraceSeize(pid)
		if err == nil {
			unix.PtraceInterrupt(pid)
			var ws unix.WaitStatus
			unix.Wait4(pid, &ws, unix.WALL, nil)
			unix.PtraceDetach(pid)
		}
		if unix.Capset(&hdr, &was[0]) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// The child that connects to the container's systemd lives in the
// container's pid namespace, where the container sees it. It must not be
// a way out: a process of the container that tries to trace it (same uid,
// no CAP_SYS_PTRACE) is refused; it runs in the container's network
// namespace, with no capability but ConnectCaps, no bounding set beyond
// what joining the container takes, and no_new_privs, in the container's
// cgroups. It once ran with every capability, dumpable, in the host's
// network namespace and cgroups.
func TestDialInContainerChildHasNoMorePower(t *testing.T) {
	autofstest.Require(t) // a task's Run hands the worker /dev/autofs
	c := aContainer(t)
	inOwnCgroups(t, c.Pid)
	containerCgroup, _ := os.ReadFile("/proc/" + strconv.Itoa(c.Pid) + "/cgroup")
	if ours, _ := os.ReadFile("/proc/self/cgroup"); string(ours) == string(containerCgroup) {
		t.Fatalf("the stand-in container is in our cgroups: %s", ours)
	}
	// A listening socket with a backlog of 0 and one connection queued
	// already: the child's connect() waits, after every step it takes
	// before it, until the test accepts. It is inspected meanwhile.
	sock := filepath.Join(t.TempDir(), "private")
	lfd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(lfd)
	if err := unix.Bind(lfd, &unix.SockaddrUnix{Name: sock}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(lfd, 0); err != nil {
		t.Fatal(err)
	}
	dummy, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dummy)
	if err := unix.Connect(dummy, &unix.SockaddrUnix{Name: sock}); err != nil {
		t.Fatal(err)
	}
	done := make(chan dialed, 1)
	go func() {
		line, err := testDial.Run(c, dialArgs{Path: sock, Timeout: testenv.Scale(20 * time.Second)}, testenv.Scale(30*time.Second), func(_ door.Level, s string, _ door.Fields) { t.Log(s) })
		done <- dialed{line, err}
	}()
	child := waitConnecting(t, sock, done)
	status := map[string]string{}
	b, err := os.ReadFile("/proc/" + child + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			status[k] = strings.TrimSpace(v)
		}
	}
	netns, _ := os.Readlink("/proc/" + child + "/ns/net")
	cgroup, _ := os.ReadFile("/proc/" + child + "/cgroup")
	pid, _ := strconv.Atoi(child)
	seize := seizeWithout(pid)

	// Let it through: the queued connection, then the child's.
	for i := 0; i < 2; i++ {
		nfd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		unix.Write(nfd, []byte("hello\n"))
		unix.Close(nfd)
	}
	d := <-done
	if d.err != nil || d.line != "hello" {
		t.Fatalf("the dial: %q, %v", d.line, d.err)
	}
	t.Logf("the child %s: CapBnd %s CapPrm %s CapEff %s NoNewPrivs %s, %s, seize: %v", child, status["CapBnd"], status["CapPrm"], status["CapEff"], status["NoNewPrivs"], netns, seize)
	if seize == nil || !errors.Is(seize, unix.EPERM) {
		t.Errorf("a same-uid process without CAP_SYS_PTRACE could trace the child (seize: %v)", seize)
	}
	if string(cgroup) != string(containerCgroup) {
		t.Errorf("the child is in cgroups\n%s\nthe container's are\n%s", cgroup, containerCgroup)
	}
	want, _ := os.Readlink("/proc/" + strconv.Itoa(c.Pid) + "/ns/net")
	if netns != want {
		t.Errorf("the child is in network namespace %s, the container's is %s", netns, want)
	}
	hex := func(v uint64) string { return fmt.Sprintf("%016x", v) }
	for k, v := range map[string]string{
		"CapEff": hex(worker.ConnectCaps), "CapPrm": hex(worker.ConnectCaps), "CapInh": hex(0), "NoNewPrivs": "1",
		// Its constructor dropped what entering took, before the fork
		// into the container's pid namespace: the bounding set is
		// ConnectCaps alone (it was that and CAP_SYS_ADMIN and
		// CAP_SYS_CHROOT, held from the child's birth in the container
		// until its Go code dropped them from the other sets).
		"CapBnd": hex(worker.ConnectCaps),
	} {
		if status[k] != v {
			t.Errorf("the child's %s is %q, want %q", k, status[k], v)
		}
	}
}

// dialed is the outcome of a test-dial task.
type dialed struct {
	line string
	err  error
}

// waitConnecting finds the connect child of a dial to sock, once it waits
// in connect(2) (syscall 42 on x86_64 in /proc/PID/syscall, or the wait
// channel unix_wait_for_peer) on its main thread, and returns its pid. At
// the deadline it says where each thread of each such child was instead.
func waitConnecting(t *testing.T, sock string, done <-chan dialed) string {
	t.Helper()
	want := worker.ConnectRole + "\x00" + sock
	var seen []string
	for deadline := time.Now().Add(testenv.Scale(20 * time.Second)); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		select {
		case d := <-done:
			t.Fatalf("the dial ended before the test saw its child: %q, %v", d.line, d.err)
		default:
		}
		seen = seen[:0]
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			cmd, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
			if err != nil || !strings.Contains(string(cmd), want) {
				continue
			}
			tasks, _ := os.ReadDir("/proc/" + e.Name() + "/task")
			for _, task := range tasks {
				dir := "/proc/" + e.Name() + "/task/" + task.Name()
				sc, _ := os.ReadFile(dir + "/syscall")
				wchan, _ := os.ReadFile(dir + "/wchan")
				if f := strings.Fields(string(sc)); len(f) > 0 && f[0] == "42" || string(wchan) == "unix_wait_for_peer" {
					if task.Name() != e.Name() {
						// /proc/PID would show another thread than
						// the one that did the steps before connect.
						t.Fatalf("the connect child %s connects on thread %s, not its main thread", e.Name(), task.Name())
					}
					return e.Name()
				}
				stat, _ := os.ReadFile(dir + "/stat")
				seen = append(seen, fmt.Sprintf("pid %s thread %s: syscall %q, wchan %q, stat %q", e.Name(), task.Name(), strings.TrimSpace(string(sc)), wchan, strings.TrimSpace(string(stat))))
			}
		}
	}
	t.Fatalf("no connect child waiting in connect(2) within %s; children seen: %v", testenv.Scale(20*time.Second), seen)
	return ""
}

// A socket path below a FUSE directory whose server answers nothing (the
// container can mount one there): the dial gives up by its own deadline,
// with the child reported, and the worker does not wait for it. The
// child was once waited for without a bound.
func TestDialInContainerEndsByItsDeadline(t *testing.T) {
	autofstest.Require(t)
	dir, srv := fusetest.SilentDir(t)
	c := aContainer(t) // after the mount: its mount namespace has a copy
	const dial = 2 * time.Second
	start := time.Now()
	_, err := testDial.Run(c, dialArgs{Path: dir + "/run/systemd/private", Timeout: dial}, testenv.Scale(60*time.Second), func(_ door.Level, s string, _ door.Fields) { t.Log(s) })
	took := time.Since(start)
	t.Logf("after %s: %v", took.Round(time.Millisecond), err)
	if err == nil {
		t.Fatal("connected through a FUSE directory that answers nothing")
	}
	if strings.Contains(err.Error(), "worker test-dial: no answer within") {
		t.Fatalf("the worker itself timed out: the dial did not end by its own deadline: %v", err)
	}
	if limit := dial + 2*door.ExitGrace + testenv.Scale(5*time.Second); took > limit {
		t.Fatalf("the dial ended after %s, want at most %s", took, limit)
	}
	if srv.Seen(fusetest.OpLookup) == 0 {
		t.Fatal("no LOOKUP reached the server: the test did not exercise the walk")
	}
}
