// Package cgtree prepares a restored container's cgroup v2 tree for the
// cgroup files its tasks watched when it was checkpointed, before CRIU
// opens those watches again.
//
// systemd watches, with inotify, cgroup.events of every unit's cgroup
// (empty ones too) and memory.events of the cgroups with memory
// accounting. CRIU records those paths, recreates only the cgroups that
// hold tasks, and writes cgroup.subtree_control only after it has opened
// the watches: on a cgroup v2 host the restore of any systemd container
// fails ("fsnotify: Unable to open /sys/fs/cgroup/init.scope/memory.events").
// Prepare makes the missing cgroups and enables the controllers whose
// files are watched, at CRIU's post-setup-namespaces action: the root
// task is in its cgroup then, and no file is open yet.
//
// Every path comes from the checkpoint, which is the container's data:
// each is resolved beneath the cgroup the container's own cgroup2 mount
// shows, component by component, with openat2 and no symlink or "..";
// the number of paths, their depth and the processes moved are bounded.
package cgtree

import (
	"errors"
	"fmt"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/criuimg"
)

// Bounds on what one checkpoint can make us do.
const (
	// MaxNeeds bounds the watched files looked at.
	MaxNeeds = 4096
	// MaxDepth bounds a watched file's depth below its mount.
	MaxDepth = 32
	// MaxMoved bounds the processes moved out of the container's cgroup.
	MaxMoved = 64
	// MaxMade bounds the cgroups created (a systemd container with a
	// thousand units watches some thousand empty ones).
	MaxMade = 2048
)

// Mount is a cgroup2 mount of the restored container: its mount point in
// the container, and the cgroup it shows, as a path from the root of the
// host's hierarchy (the host's mount table shows it so).
type Mount struct {
	Mountpoint string
	Root       string
	// ImageID is the mount's id in the checkpoint, when its mount point
	// says it: while CRIU restores, it mounts each mount of the
	// container at "/tmp/.criu.mntns.XXXXXX/mnt-<id>" before moving it
	// into place (0: not known).
	ImageID uint32
}

// ImageID is the checkpoint's id of the mount at mountpoint, if the
// mount point is one of CRIU's while it restores (see Mount.ImageID).
func ImageID(mountpoint string) uint32 {
	i := strings.LastIndex(mountpoint, "/mnt-")
	if i < 0 || !strings.Contains(mountpoint[:i], "/.criu.mntns.") {
		return 0
	}
	n, err := strconv.ParseUint(mountpoint[i+len("/mnt-"):], 10, 32)
	if err != nil {
		return 0
	}
	return uint32(n)
}

// Need is a watched cgroup file: the cgroup it shows (a Mount's Root),
// the directories below it, the file's name, and the controller the file
// belongs to ("" for cgroup core files such as cgroup.events).
type Need struct {
	Root       string
	Dirs       []string
	File       string
	Controller string
}

// String is the file's path from the host hierarchy's root.
func (n Need) String() string {
	return path.Join(append(append([]string{n.Root}, n.Dirs...), n.File)...)
}

// Plan turns the watches of a checkpoint into the cgroup files they need:
// those on a cgroup2 mount of the container, once each. A watch's mount
// is found by its id in the checkpoint: the mount of mnts with that
// ImageID, else the one at the mount point the dump recorded for it
// (imageMounts, criuimg.Mountpoints); of stacked mounts, the last (the
// one on top). Each watch costs one map lookup and its own length: the
// plan is linear in the checkpoint. A watch on no such mount is not
// ours; a path with an empty, "." or ".." component or deeper than
// MaxDepth is an error, and so are more than MaxNeeds (the first
// maxErrors errors are kept, with a count of the rest).
func Plan(watches []criuimg.Watch, mnts []Mount, imageMounts map[uint32]string) ([]Need, error) {
	byID, byMP := map[uint32]Mount{}, map[string]Mount{}
	for _, m := range mnts {
		if m.ImageID != 0 {
			byID[m.ImageID] = m
		} else {
			byMP[m.Mountpoint] = m
		}
	}
	var needs []Need
	seen := map[string]bool{}
	errs := &boundedErrors{}
	for _, w := range watches {
		mp, ok := imageMounts[w.MntID]
		if !ok || w.MntID == 0 {
			continue
		}
		m, ok := byID[w.MntID]
		if !ok {
			if m, ok = byMP[mp]; !ok {
				continue
			}
		}
		rel, ok := strings.CutPrefix(w.Path, strings.TrimSuffix(mp, "/")+"/")
		if !ok {
			continue
		}
		if strings.Count(rel, "/") > MaxDepth {
			errs.add(fmt.Errorf("watched cgroup file %s: deeper than %d", short(w.Path), MaxDepth))
			continue
		}
		parts := strings.Split(rel, "/")
		bad := slices.ContainsFunc(parts, func(p string) bool {
			return p == "" || p == "." || p == ".." || len(p) > 255 || strings.ContainsRune(p, 0)
		})
		if bad {
			errs.add(fmt.Errorf("watched cgroup file %s: not a clean path", short(w.Path)))
			continue
		}
		n := Need{Root: m.Root, Dirs: parts[:len(parts)-1], File: parts[len(parts)-1]}
		n.Controller = controllerOf(n.File)
		if seen[n.String()] {
			continue
		}
		seen[n.String()] = true
		if len(needs) == MaxNeeds {
			errs.add(fmt.Errorf("more than %d watched cgroup files", MaxNeeds))
			break
		}
		needs = append(needs, n)
	}
	return needs, errs.err()
}

// controllerOf is the controller a cgroup file belongs to, "" for the
// files every cgroup has whatever its controllers: cgroup.*, the pressure
// files and cpu.stat.
func controllerOf(file string) string {
	c, _, ok := strings.Cut(file, ".")
	if !ok || c == "cgroup" || strings.HasSuffix(file, ".pressure") || file == "cpu.stat" {
		return ""
	}
	return c
}

// maxErrors bounds the errors one run reports: a checkpoint can hold
// thousands of bad watches, each with a path of up to 4 KiB.
const maxErrors = 10

type boundedErrors struct {
	errs []error
	more int
}

func (b *boundedErrors) add(err error) {
	if len(b.errs) < maxErrors {
		b.errs = append(b.errs, err)
	} else {
		b.more++
	}
}

func (b *boundedErrors) err() error {
	if b.more > 0 {
		b.errs = append(b.errs, fmt.Errorf("and %d more", b.more))
	}
	return errors.Join(b.errs...)
}

// short quotes a path of the checkpoint, cut to 256 bytes.
func short(p string) string {
	if len(p) > 256 {
		return strconv.Quote(p[:256]) + "..."
	}
	return strconv.Quote(p)
}

// Done is what Prepare did.
type Done struct {
	Made    []string // cgroups created, from the host hierarchy's root
	Enabled []string // "+controller in cgroup"
	Moved   []int    // processes moved out of a cgroup that must hold none
	Present int      // watched files that were there already
}

// Prepare makes every Need's file exist below hostRoot (an fd of the
// root of the host's cgroup2 hierarchy): it creates the missing cgroups
// and enables a file's controller in each cgroup from its mount's root
// down to the file's parent cgroup. A mount's root that holds processes
// cannot enable a domain controller (memory); runc puts CRIU there while
// it restores. movable says whether a process found there may be moved
// (not a task of the container), and dest is the cgroup it is moved to
// (an fd below hostRoot). It returns what it did, and every file it
// could not make (CRIU's restore will then fail on that watch).
func Prepare(hostRoot int, needs []Need, movable func(pid int) bool, dest int) (Done, error) {
	var d Done
	errs := &boundedErrors{}
	for _, n := range needs {
		root, err := OpenBeneath(hostRoot, strings.TrimPrefix(n.Root, "/"))
		if err != nil {
			errs.add(fmt.Errorf("%s: open the container's cgroup %s: %w", short(n.String()), n.Root, err))
			continue
		}
		err = prepareOne(root, n, movable, dest, &d)
		unix.Close(root)
		if err != nil {
			errs.add(fmt.Errorf("%s: %w", short(n.String()), err))
		}
	}
	return d, errs.err()
}

func prepareOne(root int, n Need, movable func(int) bool, dest int, d *Done) error {
	if exists(root, append(slices.Clone(n.Dirs), n.File)) {
		d.Present++
		return nil
	}
	if n.Controller != "" {
		if len(n.Dirs) == 0 {
			return fmt.Errorf("its controller %s would be enabled above the container's cgroup: left alone", n.Controller)
		}
		avail, err := readSmall(root, "cgroup.controllers")
		if err != nil {
			return err
		}
		if !slices.Contains(strings.Fields(avail), n.Controller) {
			return fmt.Errorf("controller %s is not available to the container's cgroup (%q)", n.Controller, strings.TrimSpace(avail))
		}
	}
	// Down from the mount's root: enable the controller in each cgroup
	// above the file's, and create each cgroup that is missing.
	cur, err := unix.Dup(root)
	if err != nil {
		return err
	}
	defer func() { unix.Close(cur) }()
	where := n.Root
	for i, name := range n.Dirs {
		if n.Controller != "" {
			if err := enable(cur, n.Controller, i == 0, movable, dest, d); err != nil {
				return fmt.Errorf("enable %s in %s: %w", n.Controller, where, err)
			}
			d.enabled(n.Controller, where)
		}
		where = path.Join(where, name)
		next, err := OpenBeneath(cur, name)
		if errors.Is(err, unix.ENOENT) {
			if len(d.Made) >= MaxMade {
				return fmt.Errorf("create %s: %d cgroups created already, the most one restore makes", where, MaxMade)
			}
			if err := unix.Mkdirat(cur, name, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("create %s: %w", where, err)
			}
			d.Made = append(d.Made, where)
			next, err = OpenBeneath(cur, name)
		}
		if err != nil {
			return fmt.Errorf("open %s: %w", where, err)
		}
		unix.Close(cur)
		cur = next
	}
	if !exists(cur, []string{n.File}) {
		return errors.New("still missing once its cgroups were made")
	}
	return nil
}

// enabled records "+c in where" once.
func (d *Done) enabled(c, where string) {
	s := "+" + c + " in " + where
	if !slices.Contains(d.Enabled, s) {
		d.Enabled = append(d.Enabled, s)
	}
}

// enable enables controller c in the subtree_control of the cgroup dir.
// In the container's root cgroup (top), a write refused because the
// cgroup holds processes (EBUSY) moves those processes to dest, if each
// is movable, and tries once more.
func enable(dir int, c string, top bool, movable func(int) bool, dest int, d *Done) error {
	cur, err := readSmall(dir, "cgroup.subtree_control")
	if err != nil {
		return err
	}
	if slices.Contains(strings.Fields(cur), c) {
		return nil
	}
	err = writeSmall(dir, "cgroup.subtree_control", "+"+c)
	if !errors.Is(err, unix.EBUSY) || !top {
		return err
	}
	procs, rerr := readSmall(dir, "cgroup.procs")
	if rerr != nil {
		return errors.Join(err, rerr)
	}
	pids := strings.Fields(procs)
	if len(pids) > MaxMoved {
		return fmt.Errorf("%w, and it holds %d processes, more than the %d moved", err, len(pids), MaxMoved)
	}
	for _, s := range pids {
		pid, perr := strconv.Atoi(s)
		if perr != nil || !movable(pid) {
			return fmt.Errorf("%w: it holds process %s, which is not ours to move", err, s)
		}
		if werr := writeSmall(dest, "cgroup.procs", s); werr != nil && !errors.Is(werr, unix.ESRCH) {
			return fmt.Errorf("%w: move process %s out of it: %w", err, s, werr)
		}
		d.Moved = append(d.Moved, pid)
	}
	return writeSmall(dir, "cgroup.subtree_control", "+"+c)
}

// resolve: beneath the fd, no symlink, no magic link, no other mount.
const resolve = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV

// OpenBeneath opens the directory p below dir (a cgroup below a cgroup
// fd): no symlink, no magic link, no other mount, never above dir.
func OpenBeneath(dir int, p string) (int, error) {
	if p == "" {
		p = "."
	}
	return unix.Openat2(dir, p, &unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: resolve})
}

// exists says whether the path parts names something below dir.
func exists(dir int, parts []string) bool {
	fd, err := unix.Openat2(dir, path.Join(parts...), &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: resolve})
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
}

// readSmall reads a cgroup file of at most 64 KiB below dir.
func readSmall(dir int, name string) (string, error) {
	fd, err := unix.Openat2(dir, name, &unix.OpenHow{Flags: unix.O_RDONLY | unix.O_CLOEXEC, Resolve: resolve})
	if err != nil {
		return "", fmt.Errorf("open %s: %w", name, err)
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	buf := make([]byte, 64<<10)
	n := 0
	for n < len(buf) {
		m, err := f.Read(buf[n:])
		n += m
		if err != nil || m == 0 {
			break
		}
	}
	if n == len(buf) {
		return "", fmt.Errorf("%s: more than %d bytes", name, len(buf))
	}
	return string(buf[:n]), nil
}

// writeSmall writes s to the cgroup file name below dir, in one write.
func writeSmall(dir int, name, s string) error {
	fd, err := unix.Openat2(dir, name, &unix.OpenHow{Flags: unix.O_WRONLY | unix.O_CLOEXEC, Resolve: resolve})
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	_, err = unix.Write(fd, []byte(s))
	return err
}
