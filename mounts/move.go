package mounts

// Moving the filesystems on top of an autofs mount point aside into a
// private staging tmpfs and back, by fd.

import (
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"slices"
	"strconv"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/door"
)

// Staging holds filesystems moved off autofs mount points while their
// master is restarted. It is a private tmpfs mounted inside the
// container's mount namespace (only the worker creates and removes it), so
// that moves into and out of it are allowed even when the container's
// mounts are shared.
//
// The container runs meanwhile and may change its tree at will, so every
// step inside the staging area goes through root, an fd on the root of
// our own mount, never through a path; and nothing in the container's
// tree says what the area holds or whether it is ours. The host's state
// file does: each change is recorded there (record) before it is made,
// and a later run adopts a staging area only by the mount id recorded.
type Staging struct {
	// Base is the path the staging tmpfs is mounted on, in the
	// container.
	Base string
	root int
	// mntID is the mount id of the staging tmpfs (as mountinfo shows it),
	// unique its 64-bit id that is never reused (0 before Linux 6.8).
	mntID  int
	unique uint64
	// created says that the run that mounted it created Base.
	created bool
	record  func(StagingEvent) error
	// entries are the staged directories (names in root) and the mount
	// points their filesystems came from, as recorded.
	entries map[string]string
	n       int
}

// StagingRecord is what the hook's state file holds of a staging area:
// the only source a later run trusts.
type StagingRecord struct {
	MountID       int    `json:"mount_id"`
	MountIDUnique uint64 `json:"mount_id_unique,omitempty"`
	Base          string `json:"base"`
	CreatedBase   bool   `json:"created_base,omitempty"`
	// Entries are the directories in it that may hold a staged
	// filesystem, recorded before the move, with the mount point each
	// came from.
	Entries []StagedEntry `json:"entries,omitempty"`
}

// StagedEntry is one staged directory of a StagingRecord.
type StagedEntry struct {
	Dir   string `json:"dir"`
	Where string `json:"where"`
}

// StagingEvent is one change to the record of a staging area, sent by
// the worker (InNS.Record) before it makes the change, or, for
// the changes that shrink the record, after it.
type StagingEvent struct {
	Op            string `json:"op"`
	MountID       int    `json:"mount_id"`
	MountIDUnique uint64 `json:"mount_id_unique,omitempty"`
	Base          string `json:"base,omitempty"`
	CreatedBase   bool   `json:"created_base,omitempty"`
	Dir           string `json:"dir,omitempty"`
	Where         string `json:"where,omitempty"`
}

// The ops of a StagingEvent.
const (
	// StagingOpen: a staging tmpfs is about to be mounted on Base.
	StagingOpen = "staging-open"
	// StagingStage: a filesystem is about to be moved onto Dir.
	StagingStage = "staging-stage"
	// StagingUnstage: Dir holds nothing any more (moved back, or never
	// moved there).
	StagingUnstage = "staging-unstage"
	// StagingGone: the staging area is gone, or holds nothing and is
	// given up.
	StagingGone = "staging-gone"
)

// ApplyStagingEvent returns the record cur with the event raw applied
// (nil: no staging area). cur is not changed. An event that does not fit
// the record is an error: a second staging area while one is recorded,
// a change to another mount than the one recorded.
func ApplyStagingEvent(cur *StagingRecord, raw json.RawMessage) (*StagingRecord, error) {
	var ev StagingEvent
	if err := json.Unmarshal(raw, &ev); err != nil {
		return nil, fmt.Errorf("staging event: %w", err)
	}
	if ev.Op == StagingOpen {
		if cur != nil && cur.MountID != ev.MountID {
			return nil, fmt.Errorf("a staging area (mount %d at %s) of an earlier run is still recorded: no second one", cur.MountID, Escape(cur.Base))
		}
		if ev.MountID <= 0 || !path.IsAbs(ev.Base) {
			return nil, fmt.Errorf("staging event: bad mount %d at %q", ev.MountID, ev.Base)
		}
		return &StagingRecord{MountID: ev.MountID, MountIDUnique: ev.MountIDUnique, Base: ev.Base, CreatedBase: ev.CreatedBase}, nil
	}
	if cur == nil || cur.MountID != ev.MountID {
		if ev.Op == StagingGone || ev.Op == StagingUnstage {
			return cur, nil // nothing of it recorded
		}
		return nil, fmt.Errorf("staging event %s for mount %d, which is not the recorded staging area", ev.Op, ev.MountID)
	}
	next := *cur
	next.Entries = slices.DeleteFunc(slices.Clone(cur.Entries), func(e StagedEntry) bool { return e.Dir == ev.Dir })
	switch ev.Op {
	case StagingStage:
		if !stagedName(ev.Dir) || !path.IsAbs(ev.Where) {
			return nil, fmt.Errorf("staging event: bad entry %q for %q", ev.Dir, ev.Where)
		}
		next.Entries = append(next.Entries, StagedEntry{Dir: ev.Dir, Where: ev.Where})
	case StagingUnstage:
	case StagingGone:
		return nil, nil
	default:
		return nil, fmt.Errorf("staging event: unknown op %q", ev.Op)
	}
	return &next, nil
}

// stagedName tells whether name is one of the staged directory names the
// worker makes: a decimal number.
func stagedName(name string) bool {
	n, err := strconv.Atoi(name)
	return err == nil && n > 0 && strconv.Itoa(n) == name
}

// stagingCandidates are tried in order; /run is a tmpfs in every systemd
// container. None is writable by a container's unprivileged users (a
// world-writable /tmp would let one of them prepare the place).
var stagingCandidates = []string{"/run/.autofs-restore-hook", "/dev/.autofs-restore-hook"}

// OpenStaging mounts a new staging tmpfs, recording it through ns
// first. It must run inside the container's mount namespace (a worker).
func OpenStaging(ns *InNS) (*Staging, error) {
	var errs []error
	for _, base := range stagingCandidates {
		s, err := openStagingAt(base, ns.recordStaging)
		if err == nil {
			return s, nil
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("no place to stage mounts: %w", errors.Join(errs...))
}

func (n *InNS) recordStaging(ev StagingEvent) error { return n.Record(ev) }

// openStagingAt mounts a new staging tmpfs on base through fds: base is
// opened without following a symlink and checked (a root-owned directory
// closed to others), and the new tmpfs (fsopen, fsmount) is attached to
// that very directory (move_mount), so that nothing the container swaps
// in after the check receives it. Whatever is at base already (a tmpfs a
// killed run left, or one the container made to look like it) is never
// used: ours is stacked on top, and the fd fsmount returned, the root of
// our mount, is the only way in that is used afterwards. The mount is
// recorded (record) before it is attached.
func openStagingAt(base string, record func(StagingEvent) error) (*Staging, error) {
	created := false
	if err := unix.Mkdir(base, 0o700); err == nil {
		created = true
	} else if !errors.Is(err, unix.EEXIST) {
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
	mnt, err := newStagingMount()
	if err != nil {
		return nil, fmt.Errorf("staging tmpfs for %s: %w", base, err)
	}
	id, unique, err := mountIDs(mnt)
	if err != nil {
		unix.Close(mnt)
		return nil, fmt.Errorf("staging tmpfs for %s: %w", base, err)
	}
	s := &Staging{Base: base, root: mnt, mntID: id, unique: unique, created: created, record: record, entries: map[string]string{}}
	if err := s.emit(StagingEvent{Op: StagingOpen, Base: base, CreatedBase: created}); err != nil {
		unix.Close(mnt) // detached: the tmpfs goes with the fd
		return nil, fmt.Errorf("record the staging tmpfs for %s: %w", base, err)
	}
	if err := unix.MoveMount(mnt, "", dir, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH); err != nil {
		unix.Close(mnt)
		s.emit(StagingEvent{Op: StagingGone})
		return nil, fmt.Errorf("mount staging tmpfs on %s: %w", base, err)
	}
	if err := unix.MountSetattr(mnt, "", unix.AT_EMPTY_PATH, &unix.MountAttr{Propagation: unix.MS_PRIVATE}); err != nil {
		s.Close()
		return nil, fmt.Errorf("make %s private: %w", base, err)
	}
	return s, nil
}

// emit records ev for this staging area.
func (s *Staging) emit(ev StagingEvent) error {
	if s.record == nil {
		return errors.New("no record of the staging area can be kept")
	}
	ev.MountID, ev.MountIDUnique = s.mntID, s.unique
	return s.record(ev)
}

// newStagingMount makes a detached staging tmpfs and returns its mount fd.
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
	return mnt, nil
}

// stagingSource is the source name of the staging tmpfs in mountinfo.
const stagingSource = "autofs-restore-hook"

// mountIDs returns the mount id of the fd (as mountinfo shows it) and,
// from Linux 6.8 on, its unique 64-bit id (else 0).
func mountIDs(fd int) (int, uint64, error) {
	var st unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH|unix.AT_STATX_DONT_SYNC, unix.STATX_MNT_ID, &st); err != nil || st.Mask&unix.STATX_MNT_ID == 0 {
		return 0, 0, fmt.Errorf("mount id: %v (Linux 5.8 or later needed)", err)
	}
	id := int(st.Mnt_id)
	var su unix.Statx_t
	if unix.Statx(fd, "", unix.AT_EMPTY_PATH|unix.AT_STATX_DONT_SYNC, unix.STATX_MNT_ID_UNIQUE, &su) == nil && su.Mask&unix.STATX_MNT_ID_UNIQUE != 0 {
		return id, su.Mnt_id, nil
	}
	return id, 0, nil
}

// isOurs tells whether fd is the root of our staging mount.
func (s *Staging) isOurs(fd int) bool {
	id, unique, err := mountIDs(fd)
	if err != nil || id != s.mntID || unique != s.unique {
		return false
	}
	var st unix.Statx_t
	return unix.Statx(fd, "", unix.AT_EMPTY_PATH|unix.AT_STATX_DONT_SYNC, 0, &st) == nil &&
		st.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT != 0 && st.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0
}

// Close unmounts the staging tmpfs, which must hold nothing staged any
// more, and removes its directory if this run's record says the run
// created it. The mount is detached by its path, Base, only after Base
// was opened (no symlink followed) and found to be the root of our
// mount: if the container stacked something on it or moved it away, the
// staging tmpfs is left where it is, empty, and only reported. A change
// the container makes between that check and the detach (a mount of its
// own stacked on Base) gets its own mount detached instead, in its own
// mount namespace; nothing of the host is reachable that way.
func (s *Staging) Close() error {
	if len(s.entries) > 0 {
		return fmt.Errorf("staging %s still holds %d filesystems: left mounted", s.Base, len(s.entries))
	}
	if s.root < 0 {
		return nil
	}
	defer func() { unix.Close(s.root); s.root = -1 }()
	fd, err := unix.Openat2(unix.AT_FDCWD, s.Base, &unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS})
	ours := err == nil && s.isOurs(fd)
	if err == nil {
		unix.Close(fd)
	}
	if !ours {
		// Empty: nothing left to recover from it. The record goes.
		s.emit(StagingEvent{Op: StagingGone})
		return fmt.Errorf("staging %s: the path no longer leads to our staging tmpfs (mount %d): left mounted, empty", s.Base, s.mntID)
	}
	if err := unix.Unmount(s.Base, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW); err != nil {
		return fmt.Errorf("unmount staging %s: %w", s.Base, err)
	}
	var errs []error
	if err := s.emit(StagingEvent{Op: StagingGone}); err != nil {
		errs = append(errs, fmt.Errorf("record the end of staging %s: %w", s.Base, err))
	}
	if s.created {
		// rmdir follows no symlink at the end and removes only an empty
		// directory.
		if err := unix.Rmdir(s.Base); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("remove staging %s: %w", s.Base, err))
		}
	}
	return errors.Join(errs...)
}

// MoveAside moves the filesystem mounted on top of the autofs mount of
// device dev at where into the staging area, keeping its content, open
// files and submounts, and returns the name of the staged directory. The
// autofs mount below is made private first, since the kernel refuses to
// move a mount off a shared parent. The move works on fds (move_mount),
// each checked against the mount table read from the host's /proc: a path
// the container changes between the check and the move moves nothing
// else.
func (s *Staging) MoveAside(env *InNS, where string, dev uint64) (string, error) {
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
	name, err := s.stage(top, where)
	if err != nil {
		return "", fmt.Errorf("move aside %s: %w", Escape(where), err)
	}
	return name, nil
}

// Path is the path of the staged directory name, for messages.
func (s *Staging) Path(name string) string { return path.Join(s.Base, name) }

// stage moves the mount whose root is the fd top onto a new directory in
// the staging area, recorded (with where, the mount point it came from)
// before the move, and returns the directory's name. Every step is
// relative to the staging root fd.
func (s *Staging) stage(top int, where string) (string, error) {
	for {
		s.n++
		name := strconv.Itoa(s.n)
		if err := unix.Mkdirat(s.root, name, 0o700); err != nil {
			if errors.Is(err, unix.EEXIST) {
				continue
			}
			return "", fmt.Errorf("mkdir %s: %w", s.Path(name), err)
		}
		dir, err := unix.Openat2(s.root, name, &unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV})
		if err != nil {
			unix.Unlinkat(s.root, name, unix.AT_REMOVEDIR)
			return "", fmt.Errorf("open %s: %w", s.Path(name), err)
		}
		// Say where it belongs before moving it: a run killed before the
		// move back leaves the next run what it needs to finish, in the
		// host's state file.
		if err := s.emit(StagingEvent{Op: StagingStage, Dir: name, Where: where}); err != nil {
			unix.Close(dir)
			unix.Unlinkat(s.root, name, unix.AT_REMOVEDIR)
			return "", fmt.Errorf("record: %w", err)
		}
		s.entries[name] = where
		err = unix.MoveMount(top, "", dir, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH)
		unix.Close(dir)
		if err != nil {
			s.forget(name)
			return "", fmt.Errorf("move to %s: %w", s.Path(name), err)
		}
		return name, nil
	}
}

// forget removes the staged directory name, which holds nothing, and its
// record.
func (s *Staging) forget(name string) error {
	err := unix.Unlinkat(s.root, name, unix.AT_REMOVEDIR)
	if errors.Is(err, unix.ENOENT) {
		err = nil
	}
	delete(s.entries, name)
	return errors.Join(err, s.emit(StagingEvent{Op: StagingUnstage, Dir: name}))
}

// errNotStaged says that a staged directory holds no filesystem.
var errNotStaged = errors.New("nothing staged there")

// openStaged opens (O_PATH) the root of the filesystem staged on the
// directory name, beneath the staging root and through no symlink, and
// checks with the mount table t that it is a mount whose parent is the
// staging tmpfs. A directory with nothing mounted on it is errNotStaged.
func (s *Staging) openStaged(t *Table, name string) (int, error) {
	if !stagedName(name) {
		return -1, fmt.Errorf("%q is no staged directory's name", name)
	}
	fd, err := unix.Openat2(s.root, name, &unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS})
	if errors.Is(err, unix.ENOENT) {
		return -1, errNotStaged
	}
	if err != nil {
		return -1, fmt.Errorf("open %s: %w", s.Path(name), err)
	}
	id, _, err := mountIDs(fd)
	if err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("%s: %w", s.Path(name), err)
	}
	if id == s.mntID {
		unix.Close(fd)
		return -1, errNotStaged
	}
	for _, m := range t.All {
		if m.ID == id {
			if m.Parent != s.mntID {
				break
			}
			return fd, nil
		}
	}
	unix.Close(fd)
	return -1, fmt.Errorf("%s leads to mount %d, not a mount on the staging tmpfs (mount %d): refused", s.Path(name), id, s.mntID)
}

// moveBack moves the filesystem whose root is src (opened by openStaged
// from the staged directory name) onto dst, then removes the directory
// and its record.
func (s *Staging) moveBack(src, dst int, name string) error {
	if err := unix.MoveMount(src, "", dst, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH); err != nil {
		return err
	}
	if err := s.forget(name); err != nil {
		return fmt.Errorf("moved back; forget %s: %w", s.Path(name), err)
	}
	return nil
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

// MoveBack puts the filesystem staged on the directory name back on
// where, on top of the new autofs mount there. Whatever was mounted on
// top of that autofs mount meanwhile (a request served at once after the
// restart) is detached first. The mount table, not a path walk, tells
// what is there: a walk onto an autofs mount point could trigger it. The
// move works on fds: the source opened beneath the staging root and
// checked to be a mount on the staging tmpfs, the target checked to be
// that autofs mount.
func (s *Staging) MoveBack(env *InNS, name, where string) error {
	var a *Autofs
	var t *Table
	for i := 0; ; i++ {
		var err error
		if t, err = env.ReadTable(); err != nil {
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
	src, err := s.openStaged(t, name)
	if err != nil {
		return fmt.Errorf("move %s back to %s: %w", s.Path(name), Escape(where), err)
	}
	defer unix.Close(src)
	dst, err := openMountRoot(where, a.Info.ID)
	if err != nil {
		return fmt.Errorf("move %s back to %s: %w", s.Path(name), Escape(where), err)
	}
	defer unix.Close(dst)
	if err := s.moveBack(src, dst, name); err != nil {
		return fmt.Errorf("move %s back to %s: %w", s.Path(name), Escape(where), err)
	}
	return nil
}

// StagingMounted tells whether a tmpfs named like the hook's staging tmpfs
// is mounted in the mount table t. The container can make one: it is for
// tests and diagnostics, never a reason to act (the host's state file
// records the staging areas of the hook).
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

// RecoverStaged puts back what a killed earlier run left staged, as the
// host's record rec says (nil: nothing recorded). Only the mount whose id
// the record holds is used, and only the entries the record lists: what
// the container's tree holds (a tmpfs made to look like ours, files in
// it) is never read. Filesystems of mount points for which hold returns
// true are left staged and returned (mount point -> staged directory):
// their autofs mount is about to be replaced (or is gone already), and
// the caller puts them back on the new one with the staging returned,
// which it also uses for what it stages itself and closes. With nothing
// held and nothing left, the staging tmpfs is removed and nil returned.
// It runs in the worker.
func RecoverStaged(env *InNS, rec *StagingRecord, hold func(where string) bool, logf door.Logf) (*Staging, map[string]string, error) {
	if rec == nil {
		return nil, nil, nil
	}
	table, err := env.ReadTable()
	if err != nil {
		return nil, nil, err
	}
	st, err := recoverStaging(table, rec, env.recordStaging)
	if err != nil {
		return nil, nil, err
	}
	if st == nil {
		logf.Info(fmt.Sprintf("the staging tmpfs an earlier run recorded (mount %d at %s) is gone: nothing to put back (%d recorded), record dropped", rec.MountID, Escape(rec.Base), len(rec.Entries)))
		return nil, nil, nil
	}
	held := map[string]string{}
	var errs []error
	for _, e := range rec.Entries {
		fd, err := st.openStaged(table, e.Dir)
		if errors.Is(err, errNotStaged) {
			// Recorded, and the run was killed before the move.
			if err := st.forget(e.Dir); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("recover %s left at %s by an earlier run: %w", Escape(e.Where), st.Path(e.Dir), err))
			continue
		}
		unix.Close(fd)
		if hold != nil && hold(e.Where) {
			held[e.Where] = e.Dir
			continue
		}
		if err := st.MoveBack(env, e.Dir, e.Where); err != nil {
			errs = append(errs, fmt.Errorf("recover %s left at %s by an earlier run: %w", Escape(e.Where), st.Path(e.Dir), err))
			continue
		}
		logf.Info("put back the filesystem an earlier, interrupted run had moved aside", "mount", Escape(e.Where))
	}
	if len(errs) == 0 && len(held) == 0 {
		return nil, nil, st.Close()
	}
	return st, held, errors.Join(errs...)
}

// recoverStaging adopts the staging tmpfs of the record rec: the mount of
// the table t with exactly the recorded id (a tmpfs of our source),
// opened by its mount point through no symlink and checked to be that
// mount's root (and, where the kernel has them, of the recorded unique
// id, which is never reused). No such mount, or one that got the id
// after ours went (another unique id): nil, and the record is dropped
// (record). A mount that is there but cannot be reached is an error, and
// the record stays.
//
// Before Linux 6.8 there are no unique ids, and a tmpfs the container
// mounts after unmounting ours can get our id again (seen here: the
// lowest free id is taken). Adopting it gives the container nothing: the
// entries come from the record, each is opened beneath the adopted root
// through no symlink and must be a mount on it, and it is moved only onto
// the autofs mount the table shows at the recorded mount point, all
// mounts of the container's own namespace; no file in it is read or
// written.
func recoverStaging(t *Table, rec *StagingRecord, record func(StagingEvent) error) (*Staging, error) {
	gone := &Staging{mntID: rec.MountID, unique: rec.MountIDUnique, record: record, root: -1}
	var m *mountinfo.Info
	for _, x := range t.All {
		if x.ID == rec.MountID && x.FSType == "tmpfs" && x.Source == stagingSource {
			m = x
			break
		}
	}
	if m == nil {
		if err := gone.emit(StagingEvent{Op: StagingGone}); err != nil {
			return nil, fmt.Errorf("drop the record of the staging tmpfs: %w", err)
		}
		return nil, nil
	}
	fd, err := unix.Openat2(unix.AT_FDCWD, m.Mountpoint, &unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS})
	if err != nil {
		return nil, fmt.Errorf("open the staging tmpfs of an earlier run at %s: %w", Escape(m.Mountpoint), err)
	}
	s := &Staging{Base: m.Mountpoint, root: fd, mntID: rec.MountID, unique: rec.MountIDUnique, record: record,
		created: rec.CreatedBase && m.Mountpoint == rec.Base, entries: map[string]string{}}
	if id, unique, err := mountIDs(fd); err == nil && id == rec.MountID && rec.MountIDUnique != 0 && unique != 0 && unique != rec.MountIDUnique {
		// The mount of that id is another one that got the id of ours
		// after ours went (ids are reused, the unique ones are not).
		unix.Close(fd)
		if err := gone.emit(StagingEvent{Op: StagingGone}); err != nil {
			return nil, fmt.Errorf("drop the record of the staging tmpfs: %w", err)
		}
		return nil, nil
	}
	if !s.isOurs(fd) {
		unix.Close(fd)
		return nil, fmt.Errorf("%s does not lead to the staging tmpfs of an earlier run (mount %d; something covers it?): left alone", Escape(m.Mountpoint), rec.MountID)
	}
	for _, e := range rec.Entries {
		s.entries[e.Dir] = e.Where
	}
	return s, nil
}
