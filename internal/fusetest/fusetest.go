// Package fusetest is a FUSE server for tests, written against the kernel's
// /dev/fuse protocol: it serves one regular file (or one empty directory)
// mounted over a path, and answers only the requests a test allows, the
// way a hostile container's server leaves the host's tools waiting.
//
// Close aborts the connection: every request still waiting, a forced
// FLUSH included, then fails at once. Tests close it in a cleanup so that
// nothing stays blocked on it when they fail.
package fusetest

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/testenv"

	"golang.org/x/sys/unix"
)

// Opcodes of the FUSE protocol (linux/fuse.h) that the server knows.
const (
	OpLookup      = 1
	OpForget      = 2
	OpGetattr     = 3
	OpSetattr     = 4
	OpOpen        = 14
	OpRead        = 15
	OpWrite       = 16
	OpStatfs      = 17
	OpRelease     = 18
	OpFsync       = 20
	OpFlush       = 25
	OpInit        = 26
	OpOpendir     = 27
	OpReaddir     = 28
	OpReleasedir  = 29
	OpInterrupt   = 36
	OpDestroy     = 38
	OpBatchForget = 42
)

// Options say what is served and to whom.
type Options struct {
	// Dir serves an empty directory instead of a regular file.
	Dir bool
	// Answer decides whether a request is answered; nil answers all. A
	// request not answered waits until Close. INIT is subject to it too:
	// a server that answers nothing leaves every caller waiting.
	Answer func(opcode uint32, pid uint32) bool
	// Content is the file's content at the start (its size, and what READ
	// answers).
	Content []byte
	// MntNSOf, when set (a pid), names the mount namespace the mount is
	// made in; target is then a path of that namespace, as that process
	// sees it.
	MntNSOf int
}

// Server is a mounted FUSE file system served from a goroutine.
type Server struct {
	fd   int
	conn string // the connection's name in fusectl
	opts Options
	once sync.Once

	mu       sync.Mutex
	data     bytes.Buffer
	seen     map[uint32]int
	unsolved map[uint32]int
	done     chan struct{}
}

// Mount mounts a server over target (a regular file, or a directory with
// opts.Dir) and starts serving.
//
// No thread of the calling process changes namespace: Go reuses threads,
// and a locked thread that ends kills the children forked from it with a
// parent-death signal (the test masters'). A mount in another namespace
// is made by mount(8) under nsenter, with the /dev/fuse fd as its fd 3.
func Mount(target string, opts Options) (*Server, error) {
	// Blocking reads on a thread of their own, outside Go's poller: a
	// process that opens a file of its own server registers it in the
	// poller's epoll, and the kernel then asks the server (FUSE_POLL)
	// while it holds the epoll's lock, which a poller-driven server needs
	// to see the request.
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/fuse: %w", err)
	}
	mode := uint32(unix.S_IFREG | 0o644)
	if opts.Dir {
		mode = unix.S_IFDIR | 0o755
	}
	// This thread's table: a thread of the test may have left the
	// process's main thread in a namespace of its own (a locked
	// goroutine that ends there wedges the main thread, in whatever
	// namespace it was), and /proc/self is the main thread's view.
	mountinfo := "/proc/thread-self/mountinfo"
	if opts.MntNSOf == 0 {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread() // no namespace was changed
		data := fmt.Sprintf("fd=%d,rootmode=%o,user_id=0,group_id=0,allow_other", fd, mode)
		err = unix.Mount(source, target, "fuse", unix.MS_NOSUID|unix.MS_NODEV, data)
	} else {
		mountinfo = "/proc/" + strconv.Itoa(opts.MntNSOf) + "/mountinfo"
		// The child gets a copy: an *os.File made on fd itself would own
		// it, and its finalizer would close the server's fd whenever the
		// collector ran, after which the number, reused, names another
		// file of the test process that Close then closes (seen: a later
		// fork/exec failing with EBADF).
		dup, derr := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		if derr != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("dup /dev/fuse: %w", derr)
		}
		dev := os.NewFile(uintptr(dup), "/dev/fuse")
		cmd := exec.Command("nsenter", "-t", strconv.Itoa(opts.MntNSOf), "-m", "--", "mount", "-i", "-t", "fuse",
			"-o", fmt.Sprintf("nosuid,nodev,fd=3,rootmode=%o,user_id=0,group_id=0,allow_other", mode), source, target)
		cmd.ExtraFiles = []*os.File{dev}
		if out, cerr := cmd.CombinedOutput(); cerr != nil {
			err = fmt.Errorf("%v: %s", cerr, strings.TrimSpace(string(out)))
		}
		dev.Close()
	}
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("mount fuse over %s: %w", target, err)
	}
	// The mount table names the connection (its device): a stat of the
	// mount would ask the server.
	conn, err := connOf(mountinfo, target)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("mount fuse over %s: %w", target, err)
	}
	s := &Server{fd: fd, conn: conn, opts: opts, seen: map[uint32]int{}, unsolved: map[uint32]int{}, done: make(chan struct{})}
	s.data.Write(opts.Content)
	go s.serve()
	return s, nil
}

const source = "arh-fusetest"

// connOf finds, in the mount table at mountinfo, the last fuse mount of
// ours at target, and returns its connection's name in fusectl (the
// device number).
func connOf(mountinfo, target string) (string, error) {
	b, err := os.ReadFile(mountinfo)
	if err != nil {
		return "", err
	}
	dev := ""
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		i := slices.Index(f, "-")
		if len(f) < 5 || i < 0 || i+2 >= len(f) || f[4] != target || f[i+1] != "fuse" || f[i+2] != source {
			continue
		}
		var major, minor uint32
		if _, err := fmt.Sscanf(f[2], "%d:%d", &major, &minor); err == nil {
			dev = strconv.FormatUint(uint64(major)<<20|uint64(minor), 10)
		}
	}
	if dev == "" {
		return "", fmt.Errorf("no fuse mount at %s in %s", target, mountinfo)
	}
	return dev, nil
}

// fusectl is where the kernel's fuse control file system is mounted, as
// systemd mounts it on every machine it boots.
const fusectl = "/sys/fs/fuse/connections"

// Close aborts the connection through fusectl (mounted for the time of
// the abort where it is not): every pending request fails at once, a forced FLUSH included, and
// the server's read ends. It waits until the serving goroutine has ended.
// The mount itself stays; its accesses fail with ENOTCONN.
func (s *Server) Close() error {
	var err error
	s.once.Do(func() {
		abort := fusectl + "/" + s.conn + "/abort"
		if _, e := os.Stat(abort); e != nil {
			// Mounted for this abort only, and taken away again.
			if e := unix.Mount("fusectl", fusectl, "fusectl", 0, ""); e != nil {
				err = fmt.Errorf("mount fusectl: %w", e)
				return
			}
			defer unix.Unmount(fusectl, unix.MNT_DETACH)
		}
		if err = os.WriteFile(abort, []byte("1"), 0); err != nil {
			return
		}
		<-s.done
		err = unix.Close(s.fd)
	})
	return err
}

// Written is what was written to the file.
func (s *Server) Written() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.data.String()
}

// Seen is how many requests with opcode arrived; Unanswered how many of
// those were left waiting.
func (s *Server) Seen(opcode uint32) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seen[opcode]
}

// UnansweredAll is how many requests the server left waiting, by opcode.
func (s *Server) UnansweredAll() map[uint32]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[uint32]int{}
	for k, v := range s.unsolved {
		out[k] = v
	}
	return out
}

// Unanswered is how many requests with opcode the server left waiting.
func (s *Server) Unanswered(opcode uint32) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.unsolved[opcode]
}

// inHeader is struct fuse_in_header.
type inHeader struct {
	Len     uint32
	Opcode  uint32
	Unique  uint64
	NodeID  uint64
	UID     uint32
	GID     uint32
	PID     uint32
	Padding uint32
}

const inHeaderSize = 40

func (s *Server) serve() {
	defer close(s.done)
	buf := make([]byte, 1<<17+4096)
	for {
		n, err := unix.Read(s.fd, buf)
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EINTR) {
			continue // a request interrupted before it was read
		}
		if err != nil || n < inHeaderSize {
			return
		}
		var h inHeader
		binary.Read(bytes.NewReader(buf[:inHeaderSize]), binary.LittleEndian, &h)
		body := buf[inHeaderSize:n]
		s.mu.Lock()
		s.seen[h.Opcode]++
		answer := s.opts.Answer == nil || s.opts.Answer(h.Opcode, h.PID)
		if !answer {
			s.unsolved[h.Opcode]++
		}
		s.mu.Unlock()
		if !answer {
			continue
		}
		switch h.Opcode {
		case OpForget, OpBatchForget, OpInterrupt:
			continue // never answered, by the protocol
		}
		errno, out := s.handle(h, body)
		s.reply(h.Unique, errno, out)
	}
}

func (s *Server) reply(unique uint64, errno unix.Errno, out []byte) {
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, struct {
		Len    uint32
		Error  int32
		Unique uint64
	}{uint32(16 + len(out)), -int32(errno), unique})
	b.Write(out)
	unix.Write(s.fd, b.Bytes())
}

func le(v ...any) []byte {
	var b bytes.Buffer
	for _, x := range v {
		binary.Write(&b, binary.LittleEndian, x)
	}
	return b.Bytes()
}

// attr is struct fuse_attr of the root inode, valid for an hour.
func (s *Server) attr() []byte {
	mode := uint32(unix.S_IFREG | 0o644)
	if s.opts.Dir {
		mode = unix.S_IFDIR | 0o755
	}
	s.mu.Lock()
	size := uint64(s.data.Len())
	s.mu.Unlock()
	return le(uint64(1), size, (size+511)/512, uint64(0), uint64(0), uint64(0), uint32(0), uint32(0), uint32(0),
		mode, uint32(1), uint32(0), uint32(0), uint32(0), uint32(4096), uint32(0))
}

func (s *Server) handle(h inHeader, body []byte) (unix.Errno, []byte) {
	switch h.Opcode {
	case OpInit:
		var readahead uint32
		if len(body) >= 12 {
			readahead = binary.LittleEndian.Uint32(body[8:12])
		}
		// fuse_init_out of protocol 7.31, without optional features.
		return 0, le(uint32(7), uint32(31), readahead, uint32(0), uint16(16), uint16(12), uint32(1<<17), uint32(1),
			uint16(0), uint16(0), uint32(0), [7]uint32{})
	case OpGetattr, OpSetattr:
		return 0, append(le(uint64(3600), uint32(0), uint32(0)), s.attr()...)
	case OpLookup:
		return unix.ENOENT, nil
	case OpOpen, OpOpendir:
		return 0, le(uint64(1), uint32(0), uint32(0))
	case OpWrite:
		if len(body) < 40 {
			return unix.EINVAL, nil
		}
		size := binary.LittleEndian.Uint32(body[16:20])
		data := body[40:]
		if int(size) < len(data) {
			data = data[:size]
		}
		s.mu.Lock()
		s.data.Write(data)
		s.mu.Unlock()
		return 0, le(uint32(len(data)), uint32(0))
	case OpRead:
		if len(body) < 20 {
			return unix.EINVAL, nil
		}
		off, size := binary.LittleEndian.Uint64(body[8:16]), binary.LittleEndian.Uint32(body[16:20])
		s.mu.Lock()
		defer s.mu.Unlock()
		b := s.data.Bytes()
		if off >= uint64(len(b)) {
			return 0, nil
		}
		end := min(uint64(len(b)), off+uint64(size))
		return 0, append([]byte(nil), b[off:end]...)
	case OpReaddir:
		return 0, nil
	case OpStatfs:
		return 0, le([5]uint64{1 << 20, 1 << 19, 1 << 19, 1 << 10, 1 << 9}, uint32(4096), uint32(255), uint32(4096), uint32(0), [6]uint32{})
	case OpRelease, OpReleasedir, OpFlush, OpFsync, OpDestroy:
		return 0, nil
	}
	return unix.ENOSYS, nil
}

// Friendly answers every request until Turn is called, then none: a
// test opens its file while the server cooperates, then watches what
// waits once it stops.
type Friendly struct{ hostile atomic.Bool }

// Answer is the Options.Answer of f.
func (f *Friendly) Answer(opcode, pid uint32) bool { return !f.hostile.Load() }

// Turn makes the server stop answering.
func (f *Friendly) Turn() { f.hostile.Store(true) }

// SilentDir mounts, in a new temporary directory, a FUSE directory whose
// server answers nothing after the handshake: a lookup below it waits
// until the server is closed, which the test's cleanup does. It returns
// the directory and the server.
func SilentDir(t testing.TB) (string, *Server) {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		testenv.Skip(t, "no /dev/fuse: %v", err)
	}
	dir := filepath.Join(t.TempDir(), "fuse")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	srv, err := Mount(dir, Options{Dir: true, Answer: func(op, _ uint32) bool { return op == OpInit }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close(); unix.Unmount(dir, unix.MNT_DETACH) })
	return dir, srv
}

// Held starts a process that holds, as fd 3, a file of a FUSE
// server that stops answering once the process has it, and as fds 4, 5...
// the files extra. The server is aborted before the process is killed,
// so that the process's exit (which sends a FLUSH) does not hang the
// test's cleanup.
func Held(t testing.TB, extra ...*os.File) (pid int, srv *Server) {
	t.Helper()
	return HeldIn(t, 0, extra...)
}

// HeldIn is Held with the process in the mount namespace of nsPid (0:
// ours), where the files it holds are then on mounts of its own table.
func HeldIn(t testing.TB, nsPid int, extra ...*os.File) (pid int, srv *Server) {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		testenv.Skip(t, "no /dev/fuse: %v", err)
	}
	target := filepath.Join(t.TempDir(), "fuse-file")
	if err := os.WriteFile(target, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var f Friendly
	srv, err := Mount(target, Options{Answer: f.Answer})
	if err != nil {
		t.Fatal(err)
	}
	file, err := os.OpenFile(target, os.O_RDWR, 0)
	if err != nil {
		srv.Close()
		t.Fatal(err)
	}
	cmd := exec.Command("sleep", "600")
	if nsPid != 0 {
		cmd = exec.Command("nsenter", "-t", strconv.Itoa(nsPid), "-m", "--", "sleep", "600")
	}
	cmd.ExtraFiles = append([]*os.File{file}, extra...)
	err = cmd.Start()
	file.Close() // while the server still answers its FLUSH
	if err != nil {
		srv.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srv.Close()
		cmd.Process.Kill()
		cmd.Wait()
		unix.Unmount(target, unix.MNT_DETACH)
	})
	// nsenter has joined the namespace once it runs sleep.
	exe, _ := exec.LookPath("sleep")
	for deadline := time.Now().Add(testenv.Scale(10 * time.Second)); ; time.Sleep(10 * time.Millisecond) {
		if l, err := os.Readlink("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/exe"); err == nil && filepath.Base(l) == filepath.Base(exe) {
			break
		}
		if st, err := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/stat"); err != nil || strings.Contains(string(st), ") Z ") {
			t.Fatalf("the holder (pid %d) exited before it ran sleep", cmd.Process.Pid)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the holder (pid %d) does not run sleep", cmd.Process.Pid)
		}
	}
	f.Turn()
	return cmd.Process.Pid, srv
}
