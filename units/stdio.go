package units

// The daemon's stdio files, opened again inside the container by the
// spawner's container stage, as the daemon, within a deadline.

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/mounts"
)

// stdioTimeout bounds the opening of the daemon's stdio files: they are
// paths of the container, which may lead onto a file system that never
// answers.
const stdioTimeout = 3 * time.Second

// openStdio opens the daemon's stdio files again, inside the container:
// each the file it had when that is still a regular file or a character
// device there, else the container's /dev/null. They are opened as the
// daemon: on a thread with its fs uid and gid, groups and effective
// capabilities, through no symlink, so that the hook's root opens nothing
// the daemon could not (a log path swapped for a symlink to a root-only
// file gave it that file once). A file that is not opened within timeout
// is replaced by /dev/null, with a warning; the opening thread is then
// abandoned, and dies with this process. The calling process is in the
// container's mount namespace and root (born there: door.Entry), and so
// is every thread of it.
func openStdio(d *Daemon, timeout time.Duration) (stdio [3]*os.File, warnings []string, err error) {
	select {
	case r := <-openAsDaemon(d, d.Stdio):
		return r.files, r.warnings, r.err
	case <-time.After(timeout):
	}
	// The files never came: /dev/null for all three, opened the same way.
	select {
	case r := <-openAsDaemon(d, [3]string{}):
		if r.err != nil {
			return stdio, nil, r.err
		}
		return r.files, []string{fmt.Sprintf("its stdio files %s were not opened within %s: it writes to /dev/null instead", mounts.Escape(strings.Join(d.Stdio[:], ", ")), timeout)}, nil
	case <-time.After(timeout):
		return stdio, nil, fmt.Errorf("open the container's /dev/null: no answer within %s", timeout)
	}
}

type stdioResult struct {
	files    [3]*os.File
	warnings []string
	err      error
}

// openAsDaemon opens paths ("" for /dev/null) as stdin, stdout and stderr
// on a thread of its own (becomeForFiles), and sends the result once.
func openAsDaemon(d *Daemon, paths [3]string) <-chan stdioResult {
	res := make(chan stdioResult, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread has the daemon's credentials
		var r stdioResult
		if r.err = becomeForFiles(d); r.err == nil {
			for i, p := range paths {
				var w string
				r.files[i], w, r.err = openOneStdio(p, i == 0)
				if w != "" {
					r.warnings = append(r.warnings, w)
				}
				if r.err != nil {
					break
				}
			}
		}
		res <- r
	}()
	return res
}

// becomeForFiles gives the calling thread (locked, never unlocked) the
// daemon's access to files: fs uid and gid, supplementary groups and
// effective capabilities. All are per thread in the kernel; the raw
// system calls are used because the C library and Go apply them to every
// thread.
func becomeForFiles(d *Daemon) error {
	gids := make([]uint32, len(d.Groups))
	copy(gids, d.Groups)
	var p unsafe.Pointer
	if len(gids) > 0 {
		p = unsafe.Pointer(&gids[0])
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(gids)), uintptr(p), 0); e != 0 {
		return fmt.Errorf("set the daemon's groups: %w", e)
	}
	// setfsuid and setfsgid return the previous id, never an error: the
	// result is read back.
	unix.RawSyscall(unix.SYS_SETFSGID, uintptr(d.GID[3]), 0, 0)
	unix.RawSyscall(unix.SYS_SETFSUID, uintptr(d.UID[3]), 0, 0)
	if got, _, _ := unix.RawSyscall(unix.SYS_SETFSUID, ^uintptr(0), 0, 0); uint32(got) != d.UID[3] {
		return fmt.Errorf("set the daemon's fs uid %d: it is %d", d.UID[3], got)
	}
	if got, _, _ := unix.RawSyscall(unix.SYS_SETFSGID, ^uintptr(0), 0, 0); uint32(got) != d.GID[3] {
		return fmt.Errorf("set the daemon's fs gid %d: it is %d", d.GID[3], got)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capget: %w", err)
	}
	data[0].Effective = data[0].Permitted & uint32(d.CapEff)
	data[1].Effective = data[1].Permitted & uint32(d.CapEff>>32)
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("set the daemon's effective capabilities: %w", err)
	}
	return nil
}

// openOneStdio opens path ("" for /dev/null) for reading (stdin) or
// appending, through no symlink, without blocking and without gaining a
// controlling terminal, and keeps it only when it is a regular file or a
// character device (never a FIFO or a socket). A path that cannot be
// used gives /dev/null and a warning.
func openOneStdio(path string, read bool) (*os.File, string, error) {
	flags := unix.O_WRONLY | unix.O_APPEND
	if read {
		flags = unix.O_RDONLY
	}
	open := func(p string) (*os.File, error) {
		fd, err := unix.Openat2(unix.AT_FDCWD, p, &unix.OpenHow{Flags: uint64(flags | unix.O_NONBLOCK | unix.O_NOCTTY | unix.O_CLOEXEC), Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS})
		if err != nil {
			return nil, err
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil || (st.Mode&unix.S_IFMT != unix.S_IFREG && st.Mode&unix.S_IFMT != unix.S_IFCHR) {
			unix.Close(fd)
			return nil, fmt.Errorf("not a regular file or a device")
		}
		// Opened without blocking; the daemon's own writes block as they
		// did before.
		if fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); err == nil {
			unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl&^unix.O_NONBLOCK)
		}
		return os.NewFile(uintptr(fd), p), nil
	}
	warning := ""
	if path != "" && path != "/dev/null" {
		f, err := open(path)
		if err == nil {
			return f, "", nil
		}
		warning = fmt.Sprintf("%s: %v: /dev/null instead", mounts.Escape(path), err)
	}
	f, err := open("/dev/null")
	if err != nil {
		return nil, "", fmt.Errorf("open the container's /dev/null: %w", err)
	}
	return f, warning, nil
}
