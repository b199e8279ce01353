package proc

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/procfile"
)

// FDInfo is what the host's /proc/PID/fdinfo/N says of one open file. It
// is read without touching the file: no file system is asked anything,
// so a file of a FUSE server that never answers, or of a stale autofs
// mount, costs nothing. Copying such a file into our own process
// (pidfd_getfd) would: its fstat waits for the server, and its close
// sends a FLUSH that the kernel waits for even through SIGKILL.
type FDInfo struct {
	// N is the fd's number in its process.
	N int
	// MntID is the id of the mount the file was opened through
	// (mountinfo's first field; unique on the machine, whatever the
	// namespace).
	MntID int
	// Ino is its inode number (Linux 5.14 and later; 0 before).
	Ino uint64
	// Flags are the flags the file is open with (open(2)'s, O_ACCMODE
	// included).
	Flags int
	// Link is the target of /proc/PID/fd/N: a path, or a name such as
	// "pipe:[123]" for files that have none.
	Link string
}

// Writable says whether the file is open for writing.
func (a FDInfo) Writable() bool {
	acc := a.Flags & unix.O_ACCMODE
	return acc == unix.O_WRONLY || acc == unix.O_RDWR
}

// Same reports whether a and b are the same file opened through the same
// mount: an fd one process handed to another is.
func (a FDInfo) Same(b FDInfo) bool {
	if a.MntID != b.MntID {
		return false
	}
	if a.Ino != 0 && b.Ino != 0 {
		return a.Ino == b.Ino
	}
	return a.Link == b.Link
}

// FDs lists the open files of the process from the host's /proc, without
// copying any of them. fds closed while they are listed are left out.
func (p *Process) FDs() ([]FDInfo, error) {
	dir := "/proc/" + strconv.Itoa(p.Pid)
	ents, err := os.ReadDir(dir + "/fd")
	if err != nil {
		return nil, fmt.Errorf("list fds of pid %d: %w", p.Pid, err)
	}
	var out []FDInfo
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		fi, err := readFDInfo(dir, n)
		if err != nil {
			continue // closed meanwhile
		}
		out = append(out, fi)
	}
	if err := p.Check(); err != nil {
		return nil, err
	}
	return out, nil
}

// OwnFD is FDInfo of one of our own fds.
func OwnFD(fd int) (FDInfo, error) { return readFDInfo("/proc/self", fd) }

// ReadFDInfo is FDInfo of fd n of process pid, read from the host's
// /proc: for a caller that pins the process itself (a pidfd).
func ReadFDInfo(pid, n int) (FDInfo, error) { return readFDInfo("/proc/"+strconv.Itoa(pid), n) }

func readFDInfo(dir string, n int) (FDInfo, error) {
	name := strconv.Itoa(n)
	// Only the head: the file grows with what an epoll or inotify fd
	// watches, and the lines read come first.
	b, err := procfile.Head(dir+"/fdinfo/"+name, procfile.FDInfoHead)
	if err != nil {
		return FDInfo{}, err
	}
	fi, err := ParseFDInfo(b)
	if err != nil {
		return FDInfo{}, fmt.Errorf("%s/fdinfo/%s: %w", dir, name, err)
	}
	fi.N = n
	if fi.Link, err = os.Readlink(dir + "/fd/" + name); err != nil {
		return FDInfo{}, err
	}
	return fi, nil
}

// ParseFDInfo reads the mnt_id, ino and flags lines of an fdinfo file.
func ParseFDInfo(b []byte) (FDInfo, error) {
	var fi FDInfo
	haveMnt := false
	for len(b) > 0 {
		var line []byte
		line, b, _ = bytes.Cut(b, []byte{'\n'})
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		v = bytes.TrimSpace(v)
		var err error
		switch string(k) {
		case "mnt_id":
			fi.MntID, err = strconv.Atoi(string(v))
			haveMnt = err == nil
		case "ino":
			fi.Ino, err = strconv.ParseUint(string(v), 10, 64)
		case "flags":
			var fl uint64
			fl, err = strconv.ParseUint(string(v), 8, 32)
			fi.Flags = int(fl)
		}
		if err != nil {
			return FDInfo{}, fmt.Errorf("malformed %s %q", k, v)
		}
	}
	if !haveMnt {
		return FDInfo{}, errors.New("no mnt_id")
	}
	return fi, nil
}
