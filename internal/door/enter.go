package door

// A child's first step (Begin), and the steps of entering a container: its
// mount namespace and root, capabilities, host facts.

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Begin is the first step of every child role: it dies with the thread
// that started it, refuses to run when that thread is gone already, is
// not dumpable, and marks every inherited fd close-on-exec. It returns the
// child's end of the protocol.
func Begin() (*Reply, error) {
	r := &Reply{}
	// Not SysProcAttr.Pdeathsig: Go's check that the parent still lives
	// compares getppid() with the parent's pid, and getppid() is 0 in
	// another pid namespace. The protocol socket tells instead: its peer
	// is gone when the parent is.
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0); err != nil {
		return r, fmt.Errorf("set the parent-death signal: %w", err)
	}
	if err := parentGone(unix.Poll); err != nil {
		return r, err
	}
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return r, fmt.Errorf("make this process not dumpable: %w", err)
	}
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		return r, fmt.Errorf("mark inherited fds close-on-exec: %w", err)
	}
	// A child born in its container (Spec.Enter) holds nothing of the
	// host's; any other, before its role joins anything of a container:
	// the host's /proc, for reports on the children this child starts.
	entered, err := Entered()
	if err != nil {
		return r, err
	}
	if !entered {
		if _, err := hostProc(); err != nil {
			return r, err
		}
	}
	return r, nil
}

// parentGone tells whether the peer of the protocol socket (fd 1) is gone,
// through poll: a poll that a signal interrupted (EINTR: a zero timeout
// does not prevent it, and the Go runtime signals its own threads) is
// asked again, never taken for a parent that is gone.
func parentGone(poll func([]unix.PollFd, int) (int, error)) error {
	pfd := []unix.PollFd{{Fd: 1, Events: 0}}
	for {
		n, err := poll(pfd, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("poll the protocol socket: %w", err)
		}
		if n > 0 && pfd[0].Revents&(unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) != 0 {
			return errors.New("the parent is gone")
		}
		return nil
	}
}

var (
	procOnce sync.Once
	procFD   int
	procErr  error
)

// hostProc is a directory fd on the host's procfs, opened once: by Begin
// in a child, before its role can change its root; on first use in the
// hook's own process, which never does.
func hostProc() (int, error) {
	procOnce.Do(func() {
		if entered, _ := Entered(); entered {
			procErr = errors.New("a child born in its container has no fd of the host's /proc")
			return
		}
		procFD, procErr = unix.Open("/proc", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
		if procErr != nil {
			procErr = fmt.Errorf("open the host's /proc: %w", procErr)
			return
		}
		var sf unix.Statfs_t
		if err := unix.Fstatfs(procFD, &sf); err != nil || sf.Type != unix.PROC_SUPER_MAGIC {
			unix.Close(procFD)
			procErr = fmt.Errorf("/proc is not a procfs (%v)", err)
		}
	})
	return procFD, procErr
}

// HostProcOK checks that the calling thread resolves /proc/self/fd in a
// procfs, as a thread must that starts our executable by /proc/self/fd/N:
// never a /proc the container could have replaced.
func HostProcOK() error {
	var sf unix.Statfs_t
	if err := unix.Statfs("/proc/self/fd", &sf); err != nil || sf.Type != unix.PROC_SUPER_MAGIC {
		return fmt.Errorf("this thread's /proc is not the host's procfs (%v): refusing to start a child by /proc/self/fd", err)
	}
	return nil
}

// EnterMountNS moves the calling (locked) thread into the mount namespace
// ns and chroots it to the directory root; both stay open.
func EnterMountNS(ns, root *os.File) error {
	if err := unix.Unshare(unix.CLONE_FS); err != nil {
		return fmt.Errorf("unshare CLONE_FS: %w", err)
	}
	if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("join mount namespace: %w", err)
	}
	if err := unix.Fchdir(int(root.Fd())); err != nil {
		return fmt.Errorf("enter container root: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot to container root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("chdir /: %w", err)
	}
	return nil
}

// LastCap is the host's highest capability number, read from the host's
// /proc before anything of a container is joined; a value that cannot be
// read or makes no sense is an error, never a guess.
func LastCap() (int, error) {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 0, fmt.Errorf("read the host's cap_last_cap: %w", err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n < 0 || n > 63 {
		return 0, fmt.Errorf("the host's cap_last_cap is %q: refused", strings.TrimSpace(string(b)))
	}
	return n, nil
}

// LimitCaps drops from the calling thread's bounding set every capability
// up to lastCap that is not in bnd (those dropped already are skipped) and
// sets its inheritable set to inh: after an exec as root, the permitted
// set is inh | bnd, and a thread forked from this one inherits the limit.
func LimitCaps(bnd, inh uint64, lastCap int) error {
	for c := 0; c <= lastCap; c++ {
		if bnd&(1<<c) != 0 {
			continue
		}
		if in, _ := unix.PrctlRetInt(unix.PR_CAPBSET_READ, uintptr(c), 0, 0, 0); in != 1 {
			continue
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
			return fmt.Errorf("drop capability %d from the bounding set: %w", c, err)
		}
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capget: %w", err)
	}
	data[0].Inheritable, data[1].Inheritable = uint32(inh), uint32(inh>>32)
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("set inheritable capabilities: %w", err)
	}
	return nil
}

// DropTo leaves the calling thread with the capabilities keep in its
// effective and permitted sets and none inheritable, and sets
// no_new_privs: no exec can give any back.
func DropTo(keep uint64) error {
	if err := KeepOnly(keep); err != nil {
		return err
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("set no_new_privs: %w", err)
	}
	return nil
}

// KeepOnly leaves the calling thread with the capabilities keep in its
// effective and permitted sets and none inheritable. The bounding set
// stays: a child it starts through exec as root gets its permitted set
// from that (LimitCaps), not from this thread's.
func KeepOnly(keep uint64) error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capget: %w", err)
	}
	for i := range data {
		k := uint32(keep >> (32 * i))
		data[i].Effective &= k
		data[i].Permitted &= k
		data[i].Inheritable = 0
	}
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("drop capabilities: %w", err)
	}
	return nil
}

// Caps says which capabilities the calling thread has, read from the
// kernel (never from a /proc): bounding and permitted sets.
func Caps(lastCap int) string {
	bnd := BoundingSet(lastCap)
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	unix.Capget(&hdr, &data[0])
	prm := uint64(data[0].Permitted) | uint64(data[1].Permitted)<<32
	return fmt.Sprintf("bnd:%016x,prm:%016x", bnd, prm)
}

// BoundingSet is the calling thread's bounding set, capabilities 0 to
// lastCap.
func BoundingSet(lastCap int) uint64 {
	var bnd uint64
	for c := 0; c <= lastCap; c++ {
		if in, _ := unix.PrctlRetInt(unix.PR_CAPBSET_READ, uintptr(c), 0, 0, 0); in == 1 {
			bnd |= 1 << c
		}
	}
	return bnd
}

// ReadHostProc reads the small file name below the host's /proc (the fd
// Begin took), whatever the calling thread's root is now.
func ReadHostProc(name string) (string, error) { return readProc(openHostProc, name) }

// WriteHostProc writes value to the file name below the host's /proc in
// one write, as the attribute files there want.
func WriteHostProc(name, value string) error { return writeProc(openHostProc, name, value) }

// ReadSelfProc reads the small file name of the calling thread's own
// /proc files ("thread-self/..."): through the host's /proc (ReadHostProc),
// or in a child born in its container (Entered), which holds nothing of
// the host's, through a procfs of its pid namespace (procHere).
func ReadSelfProc(name string) (string, error) { return readProc(openSelfProc, name) }

// WriteSelfProc writes value to the calling thread's own /proc file name
// ("thread-self/..."), in one write, as ReadSelfProc finds it.
func WriteSelfProc(name, value string) error { return writeProc(openSelfProc, name, value) }

func openSelfProc(name string, flags int) (*os.File, error) {
	if entered, _ := Entered(); entered {
		return procHere(name, flags)
	}
	return openHostProc(name, flags)
}

func readProc(open func(string, int) (*os.File, error), name string) (string, error) {
	f, err := open(name, unix.O_RDONLY)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b := make([]byte, 8192)
	n, err := f.Read(b)
	if err != nil && n == 0 && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("read /proc/%s: %w", name, err)
	}
	return string(b[:n]), nil
}

func writeProc(open func(string, int) (*os.File, error), name, value string) error {
	f, err := open(name, unix.O_WRONLY)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Write([]byte(value)); err != nil {
		return fmt.Errorf("write /proc/%s: %w", name, err)
	}
	return nil
}

// procHere opens name below a procfs of the calling process's pid
// namespace: our own (OwnPidNSProc), else the one mounted at /proc in the
// calling thread's root (a container's), which must be a procfs reached
// with no symlink. name is resolved beneath it with no symlink to
// outside, no magic link and no mount crossed (a file mounted over a
// /proc file is refused), and must be on a procfs. A child born in the
// container's pid namespace finds its own threads there.
func procHere(name string, flags int) (*os.File, error) {
	proc, err := OwnPidNSProc()
	if err != nil {
		p, err := unix.Openat2(unix.AT_FDCWD, "/proc", &unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS})
		if err != nil {
			return nil, fmt.Errorf("open the container's /proc: %w", err)
		}
		defer unix.Close(p)
		if err := onProcfs(p); err != nil {
			return nil, fmt.Errorf("the container's /proc: %w", err)
		}
		proc = p
	}
	fd, err := unix.Openat2(proc, name, &unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC | unix.O_NOFOLLOW), Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_XDEV | unix.RESOLVE_NO_MAGICLINKS})
	if err != nil {
		return nil, fmt.Errorf("open /proc/%s in the container: %w", name, err)
	}
	if err := onProcfs(fd); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("/proc/%s in the container: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "/proc/"+name), nil
}

var (
	ownProcOnce sync.Once
	ownProcFD   int
	ownProcErr  error
)

// OwnPidNSProc is a directory fd on a procfs of the calling process's
// pid namespace that this process mounted itself and attached nowhere
// (fsopen, fsmount): no process of a container can mount anything on it
// or put anything in its place. It shows the pid directories only
// (subset=pid, Linux 5.8): nothing of /proc/sys or of the host. Creating
// it needs CAP_SYS_ADMIN over the pid namespace. Made once.
func OwnPidNSProc() (int, error) {
	ownProcOnce.Do(func() {
		fs, err := unix.Fsopen("proc", unix.FSOPEN_CLOEXEC)
		if err != nil {
			ownProcErr = fmt.Errorf("a procfs of our own: fsopen: %w", err)
			return
		}
		defer unix.Close(fs)
		if err := unix.FsconfigSetString(fs, "subset", "pid"); err != nil {
			ownProcErr = fmt.Errorf("a procfs of our own: subset=pid: %w", err)
			return
		}
		if err := unix.FsconfigCreate(fs); err != nil {
			ownProcErr = fmt.Errorf("a procfs of our own: create: %w", err)
			return
		}
		m, err := unix.Fsmount(fs, unix.FSMOUNT_CLOEXEC, unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV|unix.MOUNT_ATTR_NOEXEC)
		if err != nil {
			ownProcErr = fmt.Errorf("a procfs of our own: fsmount: %w", err)
			return
		}
		ownProcFD = m
	})
	return ownProcFD, ownProcErr
}

func onProcfs(fd int) error {
	var sf unix.Statfs_t
	if err := unix.Fstatfs(fd, &sf); err != nil {
		return err
	}
	if sf.Type != unix.PROC_SUPER_MAGIC {
		return fmt.Errorf("not on a procfs (type %#x)", sf.Type)
	}
	return nil
}

func openHostProc(name string, flags int) (*os.File, error) {
	proc, err := hostProc()
	if err != nil {
		return nil, err
	}
	fd, err := unix.Openat(proc, name, flags|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, fmt.Errorf("open /proc/%s: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "/proc/"+name), nil
}
