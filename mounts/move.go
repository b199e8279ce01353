package mounts

// Moving the filesystems on top of an autofs mount point aside into a
// private staging tmpfs and back, by fd.

import (
	"errors"
	"fmt"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Staging holds filesystems moved off autofs mount points while their
// master is restarted. It is a private tmpfs mounted inside the
// container's mount namespace (only the worker creates and removes it), so
// that moves into and out of it are allowed even when the container's
// mounts are shared.
type Staging struct {
	Base string
	n    int
}

// stagingCandidates are tried in order; /run is a tmpfs in every systemd
// container. None is writable by a container's unprivileged users (a
// world-writable /tmp would let one of them prepare the place).
var stagingCandidates = []string{"/run/.autofs-restore-hook", "/dev/.autofs-restore-hook"}

// OpenStaging mounts the staging tmpfs (or reuses the one a killed earlier
// run left). It must run in the worker (inside the mount namespace).
func OpenStaging() (*Staging, error) {
	var errs []error
	for _, base := range stagingCandidates {
		s, err := openStagingAt(base)
		if err == nil {
			return s, nil
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("no place to stage mounts: %w", errors.Join(errs...))
}

// openStagingAt mounts the staging tmpfs on base through fds: base is
// opened without following a symlink and checked (a root-owned directory
// closed to others), and the new tmpfs (fsopen, fsmount) is attached to
// that very directory (move_mount), so that nothing the container swaps
// in after the check receives it.
func openStagingAt(base string) (*Staging, error) {
	if err := unix.Mkdir(base, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("mkdir %s: %w", base, err)
	}
	dir, err := unix.Open(base, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w (not a directory?)", base, err)
	}
	defer unix.Close(dir)
	var st unix.Stat_t
	if err := unix.Fstat(dir, &st); err != nil {
		return nil, fmt.Errorf("stat %s: %w", base, err)
	}
	if st.Uid != 0 || st.Mode&0o022 != 0 {
		return nil, fmt.Errorf("%s is not a root-owned directory closed to others (uid %d, mode %o): refused", base, st.Uid, st.Mode&0o7777)
	}
	if !isStaging(dir) {
		mnt, err := newStagingMount()
		if err != nil {
			return nil, fmt.Errorf("staging tmpfs for %s: %w", base, err)
		}
		err = unix.MoveMount(mnt, "", dir, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH)
		unix.Close(mnt)
		if err != nil {
			return nil, fmt.Errorf("mount staging tmpfs on %s: %w", base, err)
		}
		// The directory fd still names the directory below: reopen base,
		// now the tmpfs's root.
		unix.Close(dir)
		if dir, err = unix.Open(base, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0); err != nil {
			return nil, fmt.Errorf("open staging %s: %w", base, err)
		}
		if !isStaging(dir) {
			return nil, fmt.Errorf("%s changed under the staging tmpfs: refused", base)
		}
	}
	if err := unix.MountSetattr(dir, "", unix.AT_EMPTY_PATH, &unix.MountAttr{Propagation: unix.MS_PRIVATE}); err != nil {
		return nil, fmt.Errorf("make %s private: %w", base, err)
	}
	return &Staging{Base: base}, nil
}

// newStagingMount makes a detached staging tmpfs holding the marker file
// and returns its mount fd.
func newStagingMount() (int, error) {
	fs, err := unix.Fsopen("tmpfs", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return -1, fmt.Errorf("fsopen tmpfs: %w", err)
	}
	defer unix.Close(fs)
	for _, kv := range [][2]string{{"source", stagingSource}, {"mode", "0700"}, {"size", "64k"}} {
		if err := unix.FsconfigSetString(fs, kv[0], kv[1]); err != nil {
			return -1, fmt.Errorf("tmpfs option %s=%s: %w", kv[0], kv[1], err)
		}
	}
	if err := unix.FsconfigCreate(fs); err != nil {
		return -1, fmt.Errorf("create tmpfs: %w", err)
	}
	mnt, err := unix.Fsmount(fs, unix.FSMOUNT_CLOEXEC, unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV|unix.MOUNT_ATTR_NOEXEC)
	if err != nil {
		return -1, fmt.Errorf("fsmount: %w", err)
	}
	fd, err := unix.Openat(mnt, stagingMarker, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		unix.Close(mnt)
		return -1, fmt.Errorf("mark staging: %w", err)
	}
	unix.Close(fd)
	return mnt, nil
}

// stagingSource is the source name of the staging tmpfs in mountinfo.
const stagingSource = "autofs-restore-hook"

// stagingMarker is a file created in every staging tmpfs, by which a
// later run recognises a staging area left by a run that was killed.
const stagingMarker = ".autofs-restore-hook-staging"

// isStaging tells whether the directory dir is the root of a staging
// tmpfs (one a killed earlier run left, or the one just mounted).
func isStaging(dir int) bool {
	var sf unix.Statfs_t
	if unix.Fstatfs(dir, &sf) != nil || sf.Type != unix.TMPFS_MAGIC {
		return false
	}
	var st unix.Stat_t
	return unix.Fstatat(dir, stagingMarker, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFREG
}

// Close unmounts the staging tmpfs and removes its directory. Anything
// still staged stays reachable only by the processes that use it.
func (s *Staging) Close() error {
	if err := unix.Unmount(s.Base, unix.MNT_DETACH); err != nil {
		return fmt.Errorf("unmount staging %s: %w", s.Base, err)
	}
	if err := unix.Rmdir(s.Base); err != nil {
		return fmt.Errorf("remove staging %s: %w", s.Base, err)
	}
	return nil
}

// MoveAside moves the filesystem mounted on top of the autofs mount of
// device dev at where into the staging area, keeping its content, open
// files and submounts, and returns the place it was moved to. The autofs
// mount below is made private first, since the kernel refuses to move a
// mount off a shared parent. The move works on fds (move_mount), each
// checked against the mount table read from the host's /proc: a path the
// container changes between the check and the move moves nothing else.
func (s *Staging) MoveAside(env *WorkerEnv, where string, dev uint64) (string, error) {
	ioctlFD, err := env.Ctl.OpenMount(where, dev)
	if err != nil {
		return "", fmt.Errorf("move aside %s: %w", Escape(where), err)
	}
	defer ioctlFD.Close()
	if err := unix.MountSetattr(int(ioctlFD.Fd()), "", unix.AT_EMPTY_PATH, &unix.MountAttr{Propagation: unix.MS_PRIVATE}); err != nil {
		return "", fmt.Errorf("move aside %s: make autofs mount private: %w", Escape(where), err)
	}
	t, err := env.ReadTable()
	if err != nil {
		return "", fmt.Errorf("move aside %s: %w", Escape(where), err)
	}
	a := t.Find(where)
	if a == nil || a.Dev() != dev || a.OnTop == nil {
		return "", fmt.Errorf("move aside %s: no filesystem on top of its autofs mount", Escape(where))
	}
	top, err := openMountRoot(where, a.OnTop.ID)
	if err != nil {
		return "", fmt.Errorf("move aside %s: %w", Escape(where), err)
	}
	defer unix.Close(top)
	for {
		s.n++
		dst := path.Join(s.Base, strconv.Itoa(s.n))
		if err := unix.Mkdir(dst, 0o700); err != nil {
			if errors.Is(err, unix.EEXIST) {
				continue
			}
			return "", fmt.Errorf("move aside %s: mkdir %s: %w", Escape(where), dst, err)
		}
		// Say where it belongs before moving it: a run killed before the
		// move back leaves the next run what it needs to finish.
		if err := os.WriteFile(dst+whereSuffix, []byte(where), 0o600); err != nil {
			unix.Rmdir(dst)
			return "", fmt.Errorf("move aside %s: record: %w", Escape(where), err)
		}
		err := moveTo(top, dst)
		if err != nil {
			unix.Rmdir(dst)
			os.Remove(dst + whereSuffix)
			return "", fmt.Errorf("move aside %s: move to %s: %w", Escape(where), dst, err)
		}
		return dst, nil
	}
}

// openMountRoot opens (O_PATH) the root of the topmost mount at the mount
// point p, through no symlink and without triggering an automount, and
// checks that it is the mount id.
func openMountRoot(p string, id int) (int, error) {
	fd, err := unix.Openat2(unix.AT_FDCWD, p, &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS})
	if err != nil {
		return -1, fmt.Errorf("open %s: %w", Escape(p), err)
	}
	var st unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH|unix.AT_STATX_DONT_SYNC, unix.STATX_MNT_ID, &st); err != nil || st.Mask&unix.STATX_MNT_ID == 0 {
		unix.Close(fd)
		return -1, fmt.Errorf("mount id of %s: %v (Linux 5.8 or later needed)", Escape(p), err)
	}
	if int(st.Mnt_id) != id {
		unix.Close(fd)
		return -1, fmt.Errorf("%s is mount %d, not mount %d of the mount table (changed meanwhile): refused", Escape(p), st.Mnt_id, id)
	}
	return fd, nil
}

// moveTo moves the mount whose root is the fd mnt onto the staging
// directory dst (ours: a root-only tmpfs).
func moveTo(mnt int, dst string) error {
	dir, err := unix.Open(dst, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(dir)
	return unix.MoveMount(mnt, "", dir, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH)
}

// MoveBack puts a staged filesystem back on where, on top of the new
// autofs mount there. Whatever was mounted on top of that autofs mount
// meanwhile (a request served at once after the restart) is detached
// first. The mount table, not a path walk, tells what is there: a walk
// onto an autofs mount point could trigger it. The move works on fds, the
// target checked to be that autofs mount.
func (s *Staging) MoveBack(env *WorkerEnv, staged, where string) error {
	var a *Autofs
	for i := 0; ; i++ {
		t, err := env.ReadTable()
		if err != nil {
			return fmt.Errorf("move back to %s: %w", Escape(where), err)
		}
		if a = t.Find(where); a == nil {
			return fmt.Errorf("move back to %s: no autofs mount there", Escape(where))
		}
		if a.OnTop == nil {
			break
		}
		if i == 8 {
			return fmt.Errorf("move back to %s: mounts keep appearing on top", Escape(where))
		}
		if err := unix.Unmount(where, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW); err != nil {
			return fmt.Errorf("move back to %s: detach what the restart mounted: %w", Escape(where), err)
		}
	}
	src, err := unix.Open(staged, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("move %s back to %s: %w", staged, Escape(where), err)
	}
	defer unix.Close(src)
	dst, err := openMountRoot(where, a.Info.ID)
	if err != nil {
		return fmt.Errorf("move %s back to %s: %w", staged, Escape(where), err)
	}
	defer unix.Close(dst)
	if err := unix.MoveMount(src, "", dst, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH); err != nil {
		return fmt.Errorf("move %s back to %s: %w", staged, Escape(where), err)
	}
	if err := unix.Rmdir(staged); err != nil {
		return fmt.Errorf("remove %s: %w", staged, err)
	}
	os.Remove(staged + whereSuffix)
	return nil
}

// whereSuffix names the file beside each staged directory that holds the
// mount point its filesystem came from.
const whereSuffix = ".where"

// Leftovers are filesystems a killed earlier run left staged: staged
// directory -> mount point it came from.
func (s *Staging) Leftovers(t *Table) map[string]string {
	out := map[string]string{}
	ents, _ := os.ReadDir(s.Base)
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), whereSuffix)
		if !ok {
			continue
		}
		dir := path.Join(s.Base, name)
		b, err := os.ReadFile(dir + whereSuffix)
		if err != nil {
			continue
		}
		for _, m := range t.All {
			if m.Mountpoint == dir {
				out[dir] = string(b)
				break
			}
		}
	}
	return out
}

// StagingMounted tells whether a staging tmpfs of the hook is mounted in
// the mount table t (a run was killed before it cleaned up).
func StagingMounted(t *Table) bool {
	for _, m := range t.All {
		if m.Source == stagingSource && slices.Contains(stagingCandidates, m.Mountpoint) {
			return true
		}
	}
	return false
}

// CatatonicAt opens the autofs mount of device dev at where and makes it
// catatonic.
func (d *ControlDevice) CatatonicAt(where string, dev uint64) error {
	f, err := d.OpenMount(where, dev)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := d.Catatonic(f); err != nil {
		return fmt.Errorf("autofs CATATONIC %s: %w", Escape(where), err)
	}
	return nil
}

// RecoverStaged puts back what a killed earlier run left in the staging
// tmpfs, and removes the staging tmpfs once it is empty. Filesystems of
// mount points for which hold returns true are left staged and returned
// (mount point -> staged directory): their autofs mount is about to be
// replaced (or is gone already), and the caller puts them back on the new
// one. It runs in the worker.
func RecoverStaged(env *WorkerEnv, hold func(where string) bool, logf func(string)) (map[string]string, error) {
	table, err := env.ReadTable()
	if err != nil || !StagingMounted(table) {
		return nil, err
	}
	st, err := OpenStaging()
	if err != nil {
		return nil, err
	}
	held := map[string]string{}
	var errs []error
	for dir, where := range st.Leftovers(table) {
		if hold != nil && hold(where) {
			held[where] = dir
			continue
		}
		if err := st.MoveBack(env, dir, where); err != nil {
			errs = append(errs, fmt.Errorf("recover %s left at %s by an earlier run: %w", Escape(where), dir, err))
			continue
		}
		logf(fmt.Sprintf("%s: put back the filesystem an earlier, interrupted run had moved aside", Escape(where)))
	}
	if len(errs) == 0 && len(held) == 0 {
		errs = append(errs, st.Close())
	}
	return held, errors.Join(errs...)
}
