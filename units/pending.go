package units

// The record of an automount daemon about to be killed, and starting it
// again from that record (RetryRespawn).

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/door"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/worker"
	"github.com/autofs-restore-hook/autofs-restore-hook/mounts"
)

// Pending records an automount daemon that is about to be killed: what
// it ran and where, so that the daemon can be started again later if the
// new one does not come up (it may exit at once, for instance when the
// container's /tmp is read-only). The old daemon's /proc files are gone
// by then; the record names its namespaces, root, working directory and
// executable by identity (namespace inode, device and inode), and
// RetryRespawn only uses files of the container that match them.
type Pending struct {
	// OldPid is the killed daemon's pid in the host's numbering.
	OldPid  int             `json:"old_pid"`
	Daemon  *Daemon         `json:"daemon"`
	Targets []mounts.Target `json:"targets"`
	// NS maps each namespace kind (as in /proc/PID/ns) to its inode.
	NS   map[string]uint64 `json:"ns"`
	Root FileID            `json:"root"`
	Cwd  FileID            `json:"cwd"`
	Exe  FileID            `json:"exe"`
}

// FileID identifies a file by device and inode.
type FileID struct {
	Dev uint64 `json:"dev"`
	Ino uint64 `json:"ino"`
}

// fileID reads f's device and inode from the kernel's inode alone
// (AT_STATX_DONT_SYNC): no file system is asked, so a file of the
// container on a FUSE file system that does not answer (its working
// directory, its binary) costs nothing.
func fileID(f *os.File) (FileID, error) {
	var st unix.Statx_t
	if err := unix.Statx(int(f.Fd()), "", unix.AT_EMPTY_PATH|unix.AT_STATX_DONT_SYNC, unix.STATX_INO, &st); err != nil {
		return FileID{}, fmt.Errorf("statx %s: %w", f.Name(), err)
	}
	return FileID{Dev: unix.Mkdev(st.Dev_major, st.Dev_minor), Ino: st.Ino}, nil
}

// newPending builds the record of the daemon pid from the files opened by
// openDaemonFiles.
func newPending(pid int, info *Daemon, targets []mounts.Target, files door.Files) (*Pending, error) {
	p := &Pending{OldPid: pid, Daemon: info, Targets: targets, NS: map[string]uint64{}}
	for _, n := range daemonFileNames {
		id, err := fileID(files[n])
		if err != nil {
			return nil, err
		}
		switch n {
		case "root":
			p.Root = id
		case "cwd":
			p.Cwd = id
		case "exe":
			p.Exe = id
		default:
			p.NS[n[len("ns/"):]] = id.Ino
		}
	}
	user, err := proc.Namespace(pid, "user")
	if err != nil {
		return nil, err
	}
	p.NS["user"] = user
	return p, nil
}

// RetryRespawn starts again the daemon of a Pending record, in the
// container c: the namespaces and root come from a process of the
// container that shares all of the old daemon's, and the working
// directory and executable are looked up inside that root (never leaving
// it) and must be the very files the old daemon had. It refuses rather
// than start the daemon anywhere else, then checks the new daemon as
// RespawnAutomount does.
func RetryRespawn(c *proc.Process, p *Pending, o RespawnOptions) (*Respawned, error) {
	if p == nil || p.Daemon == nil {
		return nil, errors.New("retry respawn: empty record")
	}
	deadline := o.deadline()
	if !time.Now().Before(deadline) {
		return nil, fmt.Errorf("retry respawn of automount %d: the run's deadline has passed", p.OldPid)
	}
	if err := p.Daemon.Reproducible(); err != nil {
		return nil, fmt.Errorf("retry respawn of automount %d: %w", p.OldPid, err)
	}
	// The one step before the start shares half of the time, as in
	// RespawnAutomount.
	files, err := filesLike(c, p, share(time.Now().Add(time.Until(deadline)/2)))
	if err != nil {
		return nil, fmt.Errorf("retry respawn of automount %d: %w", p.OldPid, err)
	}
	defer closeNamed(files)
	if err := c.Check(); err != nil {
		return nil, err
	}
	return startAgain(c, p.Daemon, files, p.Targets, deadline, o.Log)
}

// filesLike opens, by the names of daemonFileNames, files of the
// container identical to those the daemon of p had.
func filesLike(c *proc.Process, p *Pending, timeout time.Duration) (door.Files, error) {
	pids, err := proc.PidNamespaceMembers(c.Pid)
	if err != nil {
		return nil, err
	}
	// The container's init first: it usually shares everything.
	cands := append([]int{c.Pid}, pids...)
	for _, pid := range cands {
		if !sharesNamespaces(pid, p.NS) {
			continue
		}
		files, err := openLike(pid, p, timeout)
		if err == nil {
			return files, nil
		}
		if errors.Is(err, errMismatch) {
			continue
		}
		return nil, err
	}
	return nil, fmt.Errorf("no process of the container shares the namespaces and root of the killed daemon: refused; start automount by hand")
}

var errMismatch = errors.New("not the daemon's")

func sharesNamespaces(pid int, ns map[string]uint64) bool {
	for kind, ino := range ns {
		got, err := proc.Namespace(pid, kind)
		if err != nil || got != ino {
			return false
		}
	}
	return len(ns) > 0
}

// openLike opens the namespaces and root of pid and the daemon's working
// directory and executable inside that root, checking each against p.
func openLike(pid int, p *Pending, timeout time.Duration) (files door.Files, err error) {
	files = door.Files{}
	defer func() {
		if err != nil {
			closeNamed(files)
			files = nil
		}
	}()
	dir := "/proc/" + strconv.Itoa(pid) + "/"
	var inRoot []*os.File // cwd and exe, opened inside root
	defer func() { closeAll(inRoot) }()
	for _, n := range daemonFileNames {
		var f *os.File
		var want FileID
		switch n {
		case "root":
			f, err = os.OpenFile(dir+"root", unix.O_PATH|unix.O_CLOEXEC, 0)
			want = p.Root
		case "cwd":
			if inRoot, err = openInRoot(files["root"], []string{p.Daemon.Cwd, p.Daemon.Exe}, timeout); err == nil {
				f, inRoot[0] = inRoot[0], nil
			}
			want = p.Cwd
		case "exe":
			f, inRoot[1] = inRoot[1], nil
			want = p.Exe
		default:
			f, err = os.OpenFile(dir+n, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		}
		if err != nil {
			return files, fmt.Errorf("open %s like the killed daemon's: %w", n, err)
		}
		files[n] = f
		id, err := fileID(f)
		if err != nil {
			return files, err
		}
		switch n {
		case "root", "cwd", "exe":
			if id != want {
				return files, fmt.Errorf("%s of pid %d: %w", n, pid, errMismatch)
			}
		default:
			// Opened by path: pinned now, so check the very file.
			if id.Ino != p.NS[n[len("ns/"):]] {
				return files, fmt.Errorf("%s of pid %d: %w", n, pid, errMismatch)
			}
		}
	}
	return files, nil
}

// openInRootTaskOf is the host task of openInRoot.
var openInRootTaskOf = worker.NewHostTask("open-in-root", openInRootTask)

// openInRoot opens each of paths inside root (an O_PATH fd) as O_PATH,
// without following any symlink out of it or through /proc magic links.
// The walk runs in a child with a deadline (RunOnHostFiles), never
// in the hook's process: a path of the container may cross a FUSE mount
// whose server never answers, or an autofs mount whose daemon is gone.
func openInRoot(root *os.File, paths []string, timeout time.Duration) ([]*os.File, error) {
	_, files, err := openInRootTaskOf.RunOnHostFiles(paths, door.Files{"root": root}, timeout, nil)
	if err != nil {
		return nil, fmt.Errorf("open %s in the container: %w", mounts.Escape(strings.Join(paths, ", ")), err)
	}
	if len(files) != len(paths) {
		closeAll(files)
		return nil, fmt.Errorf("open %s in the container: %d files came back", mounts.Escape(strings.Join(paths, ", ")), len(files))
	}
	return files, nil
}

func openInRootTask(env *worker.Env, paths []string, _ door.Logf) (int, error) {
	f := env.Files["root"]
	if f == nil {
		return 0, errors.New("open-in-root: the root was not handed over")
	}
	root := int(f.Fd())
	for _, p := range paths {
		fd, err := unix.Openat2(root, p, &unix.OpenHow{Flags: uint64(unix.O_PATH | unix.O_CLOEXEC), Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS})
		if err != nil {
			return 0, fmt.Errorf("%s: %w", mounts.Escape(p), err)
		}
		env.PassBack(os.NewFile(uintptr(fd), p))
	}
	return len(paths), nil
}
