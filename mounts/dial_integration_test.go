package mounts_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
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

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/door"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/fusetest"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/testenv"
	"github.com/autofs-restore-hook/autofs-restore-hook/mounts"
)

type dialArgs struct {
	Path    string        `json:"path"`
	Timeout time.Duration `json:"timeout"`
}

func init() {
	// Dials path from the container (DialInContainer) and returns the
	// first line the server says.
	mounts.RegisterTask("test-dial", func(env *mounts.WorkerEnv, args json.RawMessage, logf func(string)) (any, error) {
		var a dialArgs
		if err := json.Unmarshal(args, &a); err != nil {
			return nil, err
		}
		conn, err := env.DialInContainer(a.Path, a.Timeout)
		if err != nil {
			return nil, err
		}
		defer conn.Close()
		conn.SetReadDeadline(time.Now().Add(a.Timeout))
		line, err := bufio.NewReader(conn).ReadString('\n')
		return strings.TrimSpace(line), err
	})
}

// aContainer starts a stand-in container init with pid, mount and network
// namespaces of its own (no autofs needed) and returns it pinned.
func aContainer(t *testing.T) *mounts.Process {
	t.Helper()
	cmd := exec.Command("unshare", "-p", "-m", "-n", "--fork", "--mount-proc", "sleep", "600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	p, err := mounts.OpenProcess(testenv.WaitChild(t, cmd.Process.Pid))
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

// peerSeen is what the server saw of the process that connected to it.
type peerSeen struct {
	status   map[string]string
	netns    string
	cgroup   string
	ptracErr error
	err      error
}

// seizeWithout tries PTRACE_SEIZE on pid from a thread of ours that has
// no CAP_SYS_PTRACE in its effective set: what a process of the container
// with the same uid and without that capability could do. The thread is
// never unlocked: it ends with its goroutine, and a trace with it.
func seizeWithout(pid int) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			errc <- fmt.Errorf("capget: %w", err)
			return
		}
		data[0].Effective &^= 1 << unix.CAP_SYS_PTRACE
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			errc <- fmt.Errorf("capset: %w", err)
			return
		}
		errc <- unix.PtraceSeize(pid)
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
	requireAutofs(t) // RunInMountNS hands the worker /dev/autofs
	c := aContainer(t)
	inOwnCgroups(t, c.Pid)
	containerCgroup, _ := os.ReadFile("/proc/" + strconv.Itoa(c.Pid) + "/cgroup")
	if ours, _ := os.ReadFile("/proc/self/cgroup"); string(ours) == string(containerCgroup) {
		t.Fatalf("the stand-in container is in our cgroups: %s", ours)
	}
	sock := filepath.Join(t.TempDir(), "private")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	seen := make(chan peerSeen, 1)
	go func() {
		var s peerSeen
		defer func() { seen <- s }()
		conn, err := l.Accept()
		if err != nil {
			s.err = err
			return
		}
		defer conn.Close()
		raw, _ := conn.(*net.UnixConn).SyscallConn()
		var cred *unix.Ucred
		raw.Control(func(fd uintptr) { cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) })
		if err != nil {
			s.err = err
			return
		}
		b, err := os.ReadFile("/proc/" + strconv.Itoa(int(cred.Pid)) + "/status")
		if err != nil {
			s.err = err
			return
		}
		s.status = map[string]string{}
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok {
				s.status[k] = strings.TrimSpace(v)
			}
		}
		s.netns, _ = os.Readlink("/proc/" + strconv.Itoa(int(cred.Pid)) + "/ns/net")
		cg, _ := os.ReadFile("/proc/" + strconv.Itoa(int(cred.Pid)) + "/cgroup")
		s.cgroup = string(cg)
		s.ptracErr = seizeWithout(int(cred.Pid))
		conn.Write([]byte("hello\n"))
	}()
	var line string
	if err := mounts.RunInMountNS(c, "test-dial", dialArgs{Path: sock, Timeout: testenv.Scale(10 * time.Second)}, testenv.Scale(20*time.Second), func(s string) { t.Log(s) }, &line); err != nil {
		t.Fatal(err)
	}
	if line != "hello" {
		t.Fatalf("the server said %q through the connection, want hello", line)
	}
	s := <-seen
	if s.err != nil {
		t.Fatal(s.err)
	}
	t.Logf("the peer: %v, net %s, seize: %v", s.status, s.netns, s.ptracErr)
	if s.ptracErr == nil || !errors.Is(s.ptracErr, unix.EPERM) {
		t.Errorf("a same-uid process without CAP_SYS_PTRACE could trace the child (seize: %v)", s.ptracErr)
	}
	if s.cgroup != string(containerCgroup) {
		t.Errorf("the child is in cgroups\n%s\nthe container's are\n%s", s.cgroup, containerCgroup)
	}
	want, _ := os.Readlink("/proc/" + strconv.Itoa(c.Pid) + "/ns/net")
	if s.netns != want {
		t.Errorf("the child is in network namespace %s, the container's is %s", s.netns, want)
	}
	hex := func(v uint64) string { return fmt.Sprintf("%016x", v) }
	for k, v := range map[string]string{
		"CapEff": hex(mounts.ConnectCaps), "CapPrm": hex(mounts.ConnectCaps), "CapInh": hex(0), "NoNewPrivs": "1",
		"CapBnd": hex(mounts.ConnectCaps | 1<<unix.CAP_SYS_ADMIN | 1<<unix.CAP_SYS_CHROOT),
	} {
		if s.status[k] != v {
			t.Errorf("the child's %s is %q, want %q", k, s.status[k], v)
		}
	}
}

// A socket path below a FUSE directory whose server answers nothing (the
// container can mount one there): the dial gives up by its own deadline,
// with the child reported, and the worker does not wait for it. The
// child was once waited for without a bound.
func TestDialInContainerEndsByItsDeadline(t *testing.T) {
	requireAutofs(t)
	if _, err := os.Stat("/dev/fuse"); err != nil {
		testenv.Skip(t, "no /dev/fuse: %v", err)
	}
	dir := filepath.Join(t.TempDir(), "fuse")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	srv, err := fusetest.Mount(dir, fusetest.Options{Dir: true, Answer: func(op, _ uint32) bool { return op == fusetest.OpInit }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close(); unix.Unmount(dir, unix.MNT_DETACH) })
	c := aContainer(t) // after the mount: its mount namespace has a copy
	const dial = 2 * time.Second
	start := time.Now()
	err = mounts.RunInMountNS(c, "test-dial", dialArgs{Path: dir + "/run/systemd/private", Timeout: dial}, testenv.Scale(60*time.Second), func(s string) { t.Log(s) }, nil)
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
