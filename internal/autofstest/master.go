// Package autofstest provides a small autofs master for integration tests:
// it mounts direct autofs mounts, answers requests the way systemd does (it
// identifies the mount by the device number cached at mount time), and can
// re-create a mount with a new device, which reproduces what a CRIU restore
// does to a real master. Tests run it in a child process (see RunMaster) so
// that the test process itself is not in the master's process group.
package autofstest

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/testenv"
	"github.com/autofs-restore-hook/autofs-restore-hook/mounts"
)

// EnvMaster names the environment variable that turns a re-executed test
// binary into a test master (see MaybeRunMaster).
const EnvMaster = "AUTOFSTEST_MASTER"

const (
	ptypeMissingDirect = 5
	v5PacketSize       = 304
)

// Master is a running test master process.
type Master struct {
	cmd    *exec.Cmd
	in     io.WriteCloser
	out    *bufio.Reader
	Pid    int
	PGrp   int
	Points []string
}

// Available tells whether the machine can run autofs integration tests, and
// if not, why.
func Available() (bool, string) {
	if os.Geteuid() != 0 {
		return false, "not root"
	}
	if _, err := os.Stat("/dev/autofs"); err != nil {
		return false, "no /dev/autofs: " + err.Error()
	}
	b, err := os.ReadFile("/proc/filesystems")
	if err != nil || !strings.Contains(string(b), "\tautofs\n") {
		return false, "kernel has no autofs filesystem"
	}
	return true, ""
}

// StartMaster starts a master in a child process that mounts a direct
// autofs mount on each of points. The master runs as a container's does:
// in new pid and mount namespaces (its mounts never reach the host's, and
// everything in them dies with it) and its own session.
func StartMaster(points ...string) (*Master, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), EnvMaster+"="+strings.Join(points, ":"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL, Cloneflags: syscall.CLONE_NEWPID | syscall.CLONE_NEWNS}
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	m := &Master{cmd: cmd, in: in, out: bufio.NewReader(out), Pid: cmd.Process.Pid, PGrp: cmd.Process.Pid, Points: points}
	// 10 s, and 10 ms for each mount beyond the first hundred (the
	// stacks of StartStacked, under an emulated CPU).
	mounts := 0
	for _, pt := range points {
		_, n := stackOf(pt)
		mounts += n
	}
	if _, err := m.expectWithin("ready", 10*time.Second+time.Duration(max(mounts-100, 0))*10*time.Millisecond); err != nil {
		m.Stop()
		return nil, err
	}
	return m, nil
}

// StartStacked starts a master (as StartMaster) that mounts, on each of
// points, n direct autofs mounts stacked each over the one before.
func StartStacked(n int, points ...string) (*Master, error) {
	var spec []string
	for _, p := range points {
		spec = append(spec, p+"*"+strconv.Itoa(n))
	}
	return StartMaster(spec...)
}

// stackOf reads a point as StartMaster gets it: "POINT*N" (StartStacked)
// is N mounts stacked on POINT, anything else one mount on it.
func stackOf(spec string) (point string, n int) {
	if i := strings.LastIndexByte(spec, '*'); i > 0 {
		if k, err := strconv.Atoi(spec[i+1:]); err == nil && k > 0 {
			return spec[:i], k
		}
	}
	return spec, 1
}

func (m *Master) expect(prefix string) (string, error) { return m.expectWithin(prefix, 10*time.Second) }

func (m *Master) expectWithin(prefix string, d time.Duration) (string, error) {
	type res struct {
		line string
		err  error
	}
	ch := make(chan res, 1)
	go func() {
		l, err := m.out.ReadString('\n')
		ch <- res{strings.TrimSpace(l), err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return "", fmt.Errorf("test master: %w", r.err)
		}
		if !strings.HasPrefix(r.line, prefix) {
			return "", fmt.Errorf("test master said %q, want %q", r.line, prefix)
		}
		return r.line, nil
	case <-time.After(testenv.Scale(d)):
		return "", fmt.Errorf("test master: no %q within %s", prefix, testenv.Scale(d))
	}
}

// Remount re-creates the autofs mount at point with a new superblock (a
// new device number) on the same pipe, as a CRIU restore does. The master
// keeps its cached device, so the next request on point hangs.
func (m *Master) Remount(point string) error {
	if _, err := fmt.Fprintf(m.in, "remount %s\n", point); err != nil {
		return err
	}
	_, err := m.expect("remounted")
	return err
}

// Access starts "ls POINT/" in the master's pid namespace and its own
// process group, and returns its pid (in the caller's pid namespace).
func (m *Master) Access(point string) (int, error) {
	before := m.children()
	if _, err := fmt.Fprintf(m.in, "access %s\n", point); err != nil {
		return 0, err
	}
	if _, err := m.expect("accessing"); err != nil {
		return 0, err
	}
	for _, pid := range m.children() {
		if !slices.Contains(before, pid) {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("test master: requester not found (it may have ended at once)")
}

func (m *Master) children() []int {
	var out []int
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", m.Pid))
	for _, t := range tasks {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", m.Pid, t.Name()))
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

// EnvFake names the environment variable that turns a re-executed test
// binary into a fake automount daemon serving the mount point it names
// (see Master.Fakes).
const EnvFake = "AUTOFSTEST_FAKE_AUTOMOUNT"

// Fakes starts n fake automount daemons in the master's pid and mount
// namespaces, as a hostile container could run them: each in a session
// of its own, named automount, serving one direct autofs mount on
// DIR/fake-I, answering nothing. Started again with the same command
// line and environment (as the hook respawns a daemon), a fake mounts
// nothing and waits: a respawn of it waits for a mount that never comes.
// It returns their pids in the caller's pid namespace.
func (m *Master) Fakes(n int, dir string) ([]int, error) {
	before := m.children()
	if _, err := fmt.Fprintf(m.in, "fakes %d %s\n", n, dir); err != nil {
		return nil, err
	}
	if _, err := m.expectWithin("faked", 10*time.Second+time.Duration(n)*time.Second); err != nil {
		return nil, err
	}
	var pids []int
	for _, pid := range m.children() {
		if !slices.Contains(before, pid) {
			pids = append(pids, pid)
		}
	}
	if len(pids) != n {
		return pids, fmt.Errorf("test master: %d fakes found, want %d", len(pids), n)
	}
	return pids, nil
}

// startFakes starts the fakes of Master.Fakes ("N DIR"), in the master's
// namespaces, and waits until each mounted its point.
func startFakes(spec string) error {
	ns, dir, _ := strings.Cut(spec, " ")
	n, err := strconv.Atoi(ns)
	if err != nil {
		return fmt.Errorf("fakes %q: %w", spec, err)
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, EnvMaster+"=") {
			env = append(env, e)
		}
	}
	for i := range n {
		cmd := exec.Command(exe, "-test.run=^$")
		cmd.Env = append(slices.Clip(env), EnvFake+"="+filepath.Join(dir, "fake-"+strconv.Itoa(i)))
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			return err
		}
		if err := cmd.Start(); err != nil {
			return err
		}
		l, err := bufio.NewReader(out).ReadString('\n')
		if strings.TrimSpace(l) != "ready" {
			return fmt.Errorf("fake automount %d said %q (%v)", i, l, err)
		}
		go cmd.Wait()
	}
	return nil
}

// runFake is a fake automount daemon on point (Master.Fakes). It never
// returns but with an error.
func runFake(point string) error {
	// Named as the daemon is: the hook takes it for one.
	if err := os.WriteFile("/proc/self/comm", []byte("automount"), 0); err != nil {
		return err
	}
	started := point + ".started"
	if _, err := os.Stat(started); err == nil {
		// Started again: serve nothing, for ever.
		for {
			time.Sleep(time.Hour)
		}
	}
	if err := os.WriteFile(started, nil, 0o644); err != nil {
		return err
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return err
	}
	m := &mount{wfd: p[1], point: point}
	if err := m.mount(); err != nil {
		return err
	}
	fmt.Println("ready")
	for {
		time.Sleep(time.Hour)
	}
}

// Wchan returns the kernel function pid sleeps in ("autofs_wait" for a
// process blocked on an autofs request), or "" once it has exited.
func Wchan(pid int) string {
	if st, err := proc.ReadStat(pid); err != nil || st.Exited() {
		return ""
	}
	return proc.Wchan(pid)
}

// WaitWchan waits up to d until Wchan(pid) is want, and returns the last
// value seen.
func WaitWchan(pid int, want string, d time.Duration) string {
	deadline := time.Now().Add(d)
	for {
		w := Wchan(pid)
		if w == want || time.Now().After(deadline) {
			return w
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Stop kills the master: its pid namespace dies with it (requesters
// included), and its mount namespace with its autofs mounts.
func (m *Master) Stop() {
	m.in.Close()
	m.cmd.Process.Kill()
	m.cmd.Wait()
}

// MaybeRunMaster runs the test master when the binary was started by
// StartMaster, and never returns then. Call it first in TestMain.
func MaybeRunMaster() {
	if point := os.Getenv(EnvFake); point != "" {
		fmt.Fprintln(os.Stderr, "fake automount:", runFake(point))
		os.Exit(1)
	}
	points := os.Getenv(EnvMaster)
	if points == "" {
		return
	}
	err := runMaster(strings.Split(points, ":"))
	if errors.Is(err, errStdinClosed) {
		os.Exit(0) // the test is done with us
	}
	fmt.Fprintln(os.Stderr, "test master:", err)
	os.Exit(1)
}

var errStdinClosed = errors.New("stdin closed")

type mount struct {
	ioctl []*os.File
	held  []int
	dev   uint64 // cached at mount time, as systemd caches it
	wfd   int
	point string
	bare  bool // a mount under the top of a stack: not looked at
}

func runMaster(points []string) error {
	// Nothing mounted here may propagate to the host.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return err
	}
	rfd, wfd := p[0], p[1]
	byPoint := map[string]*mount{}
	for _, pt := range points {
		pt, n := stackOf(pt)
		for ; n > 0; n-- {
			// Only the top of a stack is looked at (a walk to it
			// crosses every mount below: stacks cost n² otherwise).
			m := &mount{wfd: wfd, point: pt, bare: n > 1}
			if err := m.mount(); err != nil {
				return err
			}
			byPoint[pt] = m
		}
	}
	fmt.Println("ready")
	pkts := make(chan []byte)
	go func() {
		f := os.NewFile(uintptr(rfd), "autofs-pipe")
		for {
			b := make([]byte, v5PacketSize)
			if _, err := io.ReadFull(f, b); err != nil {
				close(pkts)
				return
			}
			pkts <- b
		}
	}()
	cmds := make(chan string)
	go func() {
		s := bufio.NewScanner(os.Stdin)
		for s.Scan() {
			cmds <- s.Text()
		}
		close(cmds)
	}()
	dev, err := mounts.OpenControlDevice()
	if err != nil {
		return err
	}
	for {
		select {
		case b, ok := <-pkts:
			if !ok {
				return fmt.Errorf("pipe closed")
			}
			handlePacket(dev, byPoint, b)
		case c, ok := <-cmds:
			if !ok {
				return errStdinClosed
			}
			if pt, ok := strings.CutPrefix(c, "remount "); ok {
				m := byPoint[pt]
				if m == nil {
					return fmt.Errorf("remount of unknown point %q", pt)
				}
				old := m.dev
				// Hold the old superblock so that the new one gets
				// another device number, as on a restore.
				if fd, err := unix.Open(pt, unix.O_PATH|unix.O_CLOEXEC, 0); err == nil {
					m.held = append(m.held, fd)
				}
				if err := unix.Unmount(pt, unix.MNT_DETACH); err != nil {
					return fmt.Errorf("umount %s: %w", pt, err)
				}
				// Keep the stale device, as a restored master does.
				if err := m.mount(); err != nil {
					return err
				}
				m.dev = old
				fmt.Println("remounted")
			} else if spec, ok := strings.CutPrefix(c, "fakes "); ok {
				if err := startFakes(spec); err != nil {
					return err
				}
				fmt.Println("faked")
			} else if pt, ok := strings.CutPrefix(c, "access "); ok {
				// A requester in the master's pid namespace (so that it
				// can wait) but in its own process group.
				r := exec.Command("ls", pt+"/")
				r.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
				if err := r.Start(); err != nil {
					return err
				}
				go r.Wait()
				fmt.Println("accessing")
			}
		}
	}
}

func (m *mount) mount() error {
	if err := os.MkdirAll(m.point, 0o755); err != nil {
		return err
	}
	opts := fmt.Sprintf("fd=%d,pgrp=%d,minproto=5,maxproto=5,direct", m.wfd, unix.Getpgrp())
	if err := unix.Mount("autofstest", m.point, "autofs", 0, opts); err != nil {
		return fmt.Errorf("mount autofs on %s: %w", m.point, err)
	}
	if m.bare {
		return nil
	}
	var st unix.Stat_t
	if err := unix.Stat(m.point, &st); err != nil {
		return err
	}
	m.dev = st.Dev
	// Hold an ioctl fd on the mount, as the automount daemon does for its
	// direct mounts.
	if ctl, err := mounts.OpenControlDevice(); err == nil {
		if f, err := ctl.OpenMount(m.point, m.dev); err == nil {
			m.ioctl = append(m.ioctl, f)
		}
		ctl.Close()
	}
	return nil
}

// handlePacket answers a missing-direct request as systemd does: it looks
// the mount up by its cached device; when that fails it logs and leaves
// the request pending ("Automount point already active?").
func handlePacket(dev *mounts.ControlDevice, byPoint map[string]*mount, b []byte) {
	typ := int32(binary.NativeEndian.Uint32(b[4:]))
	token := binary.NativeEndian.Uint32(b[8:])
	if typ != ptypeMissingDirect {
		return
	}
	devid := binary.NativeEndian.Uint32(b[12:])
	for _, m := range byPoint {
		fd, err := dev.OpenMount(m.point, m.dev)
		if err != nil {
			continue
		}
		if uint64(devid) != mounts.EncodeDev(m.dev) {
			fd.Close()
			continue
		}
		// Mount a tmpfs on top and say ready.
		err = unix.Mount("tmpfs", m.point, "tmpfs", 0, "size=1m")
		if err == nil {
			os.WriteFile(filepath.Join(m.point, "hello"), []byte("hello from "+m.point+"\n"), 0o644)
			err = dev.Ready(fd, token)
		} else {
			dev.Fail(fd, token, -int32(unix.ENOENT))
		}
		fd.Close()
		return
	}
	fmt.Fprintln(os.Stderr, "test master: request for dev "+strconv.Itoa(int(devid))+": automount point already active?")
}
