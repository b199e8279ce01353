package units

// The flag file of automount (/run/autofs-running): removed for the new
// daemon when it names the killed one, looked at only on file systems
// whose lookups and opens never wait on a process of the container.

import (
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/mounts"
)

// flagFiles are where automount keeps the flag file that names its pid
// (AUTOFS_FLAG_DIR: /run, or /var/run on older builds), relative to the
// container's root: a new daemon refuses to start while it names a live
// process, and the new daemon may well get the pid of the one that was
// killed.
var flagFiles = [][]string{{"run", "autofs-running"}, {"var", "run", "autofs-running"}}

// flagFSTypes are the file systems removeStaleFlag looks into: their
// lookups, opens and closes are served by the kernel alone. A FUSE file
// system is served by a process the container may control, which can leave
// a lookup waiting for ever, and the close of an open FUSE file waits for
// its FLUSH without a signal ending it; an autofs mount waits for its
// master; a network file system for its server.
var flagFSTypes = map[string]bool{
	"tmpfs": true, "ramfs": true, "ext2": true, "ext3": true, "ext4": true, "xfs": true,
	"btrfs": true, "f2fs": true, "overlay": true, "squashfs": true, "erofs": true, "vfat": true,
}

// flagMounts are the ids of the mounts of the container's table (read by
// the host from /proc/PID/mountinfo, which the kernel writes) on which
// removeStaleFlag may look up and open files.
func flagMounts(t *mounts.Table) []uint64 {
	var ids []uint64
	for _, m := range t.All {
		if flagFSTypes[m.FSType] {
			ids = append(ids, uint64(m.ID))
		}
	}
	return ids
}

// flagResolve walks one path component at a time: no symlink, no magic
// link, never above the directory it starts at.
const flagResolve = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS

// removeStaleFlag removes, below root (an fd of the container's root
// directory), the flag file of the killed daemon oldPid: only a regular
// file of at most 32 bytes that names that pid. It looks into a directory
// only once it knows the directory's mount is one of allowed (flagMounts):
// each step is a lookup in a directory whose file system it checked, and
// the flag file is opened only on that same mount (RESOLVE_NO_XDEV), so
// that a FUSE file system of the container's, mounted anywhere on the way
// or over the file itself, is never asked anything. It returns what it
// did or why it did nothing, for the log ("" when there was no flag file).
func removeStaleFlag(root int, oldPid int, allowed []uint64) string {
	var notes []string
	for _, path := range flagFiles {
		if n := removeFlagAt(root, path, oldPid, allowed); n != "" {
			notes = append(notes, n)
		}
	}
	return strings.Join(notes, "; ")
}

func removeFlagAt(root int, path []string, oldPid int, allowed []uint64) string {
	name := "/" + strings.Join(path, "/")
	onAllowed := func(fd int) (uint64, bool) {
		var st unix.Statx_t
		// AT_STATX_DONT_SYNC: the attributes the kernel has; the mount
		// id is the VFS's own, asked of no file system.
		if unix.Statx(fd, "", unix.AT_EMPTY_PATH|unix.AT_STATX_DONT_SYNC, unix.STATX_MNT_ID|unix.STATX_TYPE, &st) != nil {
			return 0, false
		}
		for _, id := range allowed {
			if id == st.Mnt_id {
				return st.Mnt_id, true
			}
		}
		return st.Mnt_id, false
	}
	dir, err := unix.Openat2(root, ".", &unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: flagResolve})
	if err != nil {
		return fmt.Sprintf("%s: open the root: %v", name, err)
	}
	defer func() { unix.Close(dir) }()
	// Each directory on the way, the flag file's own last, is checked
	// before anything is looked up in it.
	leaf := path[len(path)-1]
	for i := 0; ; i++ {
		if id, ok := onAllowed(dir); !ok {
			return fmt.Sprintf("%s left alone: /%s is on mount %d, not a local file system (a FUSE or autofs mount is never looked into)", name, strings.Join(path[:i], "/"), id)
		}
		if i == len(path)-1 {
			break
		}
		next, err := unix.Openat2(dir, path[i], &unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: flagResolve})
		if err != nil {
			return "" // no such directory (or a symlink: /var/run -> /run, checked as /run)
		}
		unix.Close(dir)
		dir = next
	}
	// The file itself, on the directory's mount only: a mount over it
	// (FUSE) makes this fail with EXDEV before anything is asked of it.
	fd, err := unix.Openat2(dir, leaf, &unix.OpenHow{Flags: unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_NONBLOCK | unix.O_NOCTTY | unix.O_CLOEXEC,
		Resolve: flagResolve | unix.RESOLVE_NO_XDEV})
	if err == unix.ENOENT {
		return ""
	}
	if err != nil {
		return fmt.Sprintf("%s left alone: %v", name, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size > 32 {
		return fmt.Sprintf("%s left alone: not a flag file (a regular file of at most 32 bytes)", name)
	}
	buf := make([]byte, 33)
	n, _ := unix.Read(fd, buf)
	if n <= 0 || n > 32 || strings.TrimSpace(string(buf[:n])) != strconv.Itoa(oldPid) {
		return ""
	}
	// Only the file just read: the name must still be that inode.
	var now unix.Stat_t
	if unix.Fstatat(dir, leaf, &now, unix.AT_SYMLINK_NOFOLLOW) != nil || now.Ino != st.Ino || now.Dev != st.Dev {
		return fmt.Sprintf("%s left alone: replaced while it was read", name)
	}
	if err := unix.Unlinkat(dir, leaf, 0); err != nil {
		return fmt.Sprintf("%s names the killed daemon (pid %d) but could not be removed: %v", name, oldPid, err)
	}
	return fmt.Sprintf("removed %s, which named the killed daemon (pid %d)", name, oldPid)
}
