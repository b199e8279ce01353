package hook

// The CRIU action post-setup-namespaces on a cgroup v2 host: the cgroups
// a restored systemd container watched are made before CRIU opens the
// watches (internal/cgtree), so that its restore does not fail.

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/moby/sys/mountinfo"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/cgtree"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/criuimg"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/procfile"
	"github.com/autofs-restore-hook/autofs-restore-hook/mounts"
)

// EnvCRIUImageDir is the checkpoint's directory, which CRIU gives its
// action scripts (a /proc/PID/fd/N path of CRIU's).
const EnvCRIUImageDir = "CRTOOLS_IMAGE_DIR"

// prepareCgroups runs at post-setup-namespaces: the container's root
// task is in its cgroup and its mounts are restored, no file is open
// yet. It reads the checkpoint's inotify watches, keeps those on the
// container's cgroup2 mounts, and makes each watched file exist
// (cgtree.Prepare). Nothing to do, the usual case (a cgroup v1 host, a
// container without cgroup watches, files that are all there), is
// silent. It never fails the restore: what it could not make is logged,
// and CRIU then says which watch failed.
func prepareCgroups(pid int, imageDir string, log *logrus.Entry) error {
	if imageDir == "" {
		return fmt.Errorf("no %s: CRIU gives it to action scripts", EnvCRIUImageDir)
	}
	hostRoot, hostPath, err := openHostCgroup2()
	if err != nil {
		log.Debugf("no cgroup v2 hierarchy to prepare: %v", err)
		return nil
	}
	defer unix.Close(hostRoot)
	if same, err := proc.SameNamespaces(pid, "cgroup"); err != nil {
		return err
	} else if same["cgroup"] {
		// Its cgroup2 mounts would show the host's cgroups: not ours to
		// make.
		log.Debug("the container shares the host's cgroup namespace: its cgroups are left alone")
		return nil
	}
	t, err := mounts.ReadTable(pid)
	if err != nil {
		return err
	}
	initCg, err := cgroup2Of(pid)
	if err != nil {
		return err
	}
	// Only the mounts that show the container's own cgroup or one above
	// it within its namespace: a cgroup of the host bound into the
	// container (a volume of /sys/fs/cgroup/x.service) is not ours to
	// change.
	var mnts []cgtree.Mount
	for _, m := range t.All {
		if m.FSType == "cgroup2" && m.Root != "/" && !strings.Contains(m.Root, "..") && within(initCg, m.Root) {
			mnts = append(mnts, cgtree.Mount{Mountpoint: m.Mountpoint, Root: m.Root, ImageID: cgtree.ImageID(m.Mountpoint)})
		}
	}
	if len(mnts) == 0 {
		log.Debug("the container has no cgroup2 mount of its own")
		return nil
	}
	dir, err := unix.Open(imageDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open the checkpoint's directory: %w", err)
	}
	defer unix.Close(dir)
	f, err := openImage(dir, "files.img")
	if errors.Is(err, unix.ENOENT) {
		log.Debug("the checkpoint has no files.img")
		return nil
	}
	if err != nil {
		return err
	}
	watches, err := criuimg.InotifyWatches(f)
	f.Close()
	if err != nil {
		return err
	}
	imageMounts, err := readImageMounts(dir)
	if err != nil {
		log.Debugf("the checkpoint's mount points: %v", err)
	}
	needs, planErr := cgtree.Plan(watches, mnts, imageMounts)
	if len(needs) == 0 {
		log.Debugf("none of the checkpoint's %d inotify watches is on the container's cgroup2 mounts %+v", len(watches), mnts)
		return planErr
	}
	initNS, err := proc.Namespace(pid, "pid")
	if err != nil {
		return err
	}
	// What may be moved out of the container's cgroup: CRIU's processes,
	// as runc put them there. That is us, our ancestors (a script CRIU
	// ran, CRIU), and their children (CRIU's helpers): never a task of
	// the container, never another process.
	up := ancestors()
	ours := map[int]bool{os.Getpid(): true}
	for _, p := range up {
		ours[p] = true
	}
	movable := func(p int) bool {
		st, err := proc.ReadStat(p)
		if err != nil || !(ours[p] || ours[st.PPid]) {
			return false
		}
		ns, err := proc.Namespace(p, "pid")
		return err == nil && ns != initNS
	}
	dest, destPath := moveTarget(hostRoot, up, mnts, log)
	defer unix.Close(dest)
	done, err := cgtree.Prepare(hostRoot, needs, movable, dest)
	if len(done.Made)+len(done.Enabled)+len(done.Moved) > 0 {
		l := log.WithField("cgroup_root", hostPath)
		if len(done.Moved) > 0 {
			l = l.WithField("moved_to", destPath)
		}
		l.Infof("cgroups prepared for %d watched cgroup files (%d there already): created %s; enabled %s; processes moved out of the container's cgroup: %v",
			len(needs), done.Present, list(done.Made), list(done.Enabled), done.Moved)
	} else {
		log.Debugf("the %d watched cgroup files of the checkpoint are all there", len(needs))
	}
	return errors.Join(planErr, err)
}

// within says whether cgroup path p is root or below it.
func within(p, root string) bool {
	return p == root || strings.HasPrefix(p, strings.TrimSuffix(root, "/")+"/")
}

// openImage opens an image file of the checkpoint's directory dir: a
// regular file, no symlink, without blocking (a FIFO of an imported
// archive must not hold the restore).
func openImage(dir int, name string) (*os.File, error) {
	fd, err := unix.Openat2(dir, name, &unix.OpenHow{Flags: unix.O_RDONLY | unix.O_NONBLOCK | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS})
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, fmt.Errorf("%s: not a regular file", name)
	}
	return os.NewFile(uintptr(fd), name), nil
}

// readImageMounts reads the mount points of every mountpoints-N.img of
// the checkpoint (one per mount namespace; at most 64 read).
func readImageMounts(dir int) (map[uint32]string, error) {
	d, err := unix.Dup(dir)
	if err != nil {
		return nil, err
	}
	df := os.NewFile(uintptr(d), "checkpoint")
	defer df.Close()
	ents, err := df.Readdirnames(4096)
	if err != nil && len(ents) == 0 {
		return nil, err
	}
	out := map[uint32]string{}
	var errs []error
	n := 0
	for _, name := range ents {
		if !strings.HasPrefix(name, "mountpoints-") || !strings.HasSuffix(name, ".img") {
			continue
		}
		if n++; n > 64 {
			errs = append(errs, errors.New("more than 64 mountpoints images: the rest not read"))
			break
		}
		f, err := openImage(dir, name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		m, err := criuimg.Mountpoints(f)
		f.Close()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
			continue
		}
		for id, mp := range m {
			if len(out) < criuimg.MaxMounts {
				out[id] = mp
			}
		}
	}
	return out, errors.Join(errs...)
}

func list(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

// openHostCgroup2 opens the root of the host's cgroup2 hierarchy, as our
// mount table shows it (/sys/fs/cgroup, or /sys/fs/cgroup/unified on a
// hybrid host), and checks it is one.
func openHostCgroup2() (int, string, error) {
	f, err := os.Open("/proc/thread-self/mountinfo")
	if err != nil {
		return -1, "", err
	}
	defer f.Close()
	mnts, err := mountinfo.GetMountsFromReader(f, mountinfo.FSTypeFilter("cgroup2"))
	if err != nil {
		return -1, "", err
	}
	for _, m := range mnts {
		// CRIU's own mounts of the hierarchy while it restores
		// (".criu.cgyard.*") are not the host's.
		if m.Root != "/" || strings.Contains(m.Mountpoint, ".criu.") {
			continue
		}
		fd, err := unix.Open(m.Mountpoint, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
		if err != nil {
			continue
		}
		var st unix.Statfs_t
		if unix.Fstatfs(fd, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
			return fd, m.Mountpoint, nil
		}
		unix.Close(fd)
	}
	return -1, "", errors.New("no cgroup2 mount of the whole hierarchy")
}

// ancestors are our parent, its parent and so on, up to 8 and short of
// init: CRIU, or a script CRIU ran and CRIU, then the runtime.
func ancestors() []int {
	var up []int
	for p := os.Getppid(); p > 1 && len(up) < 8; {
		up = append(up, p)
		st, err := proc.ReadStat(p)
		if err != nil {
			break
		}
		p = st.PPid
	}
	return up
}

// moveTarget is the cgroup that processes found in the container's
// cgroup are moved to: the cgroup of our nearest ancestor (up) that is
// not in the container's cgroups (the runtime that put CRIU there: runc
// 1.1 runs CRIU in the container's cgroup), else the hierarchy's root.
func moveTarget(hostRoot int, up []int, mnts []cgtree.Mount, log *logrus.Entry) (int, string) {
	inContainer := func(p string) bool {
		return slices.ContainsFunc(mnts, func(m cgtree.Mount) bool { return within(p, m.Root) })
	}
	for _, pid := range up {
		p, err := cgroup2Of(pid)
		if err != nil {
			break
		}
		if inContainer(p) {
			continue
		}
		if p != "/" {
			fd, err := cgtree.OpenBeneath(hostRoot, strings.TrimPrefix(p, "/"))
			if err == nil {
				return fd, p
			}
			log.Debugf("the cgroup %s of pid %d: %v", p, pid, err)
		}
		break
	}
	fd, _ := unix.Dup(hostRoot)
	return fd, "/"
}

// cgroup2Of is pid's cgroup v2 path, from the root of our hierarchy.
func cgroup2Of(pid int) (string, error) {
	b, err := procfile.Read("/proc/"+strconv.Itoa(pid)+"/cgroup", procfile.MaxCgroup)
	if err != nil {
		return "", err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(l, "0::"); ok && !strings.Contains(p, "..") {
			return p, nil
		}
	}
	return "", fmt.Errorf("pid %d: no cgroup v2 line", pid)
}

// rearmPressure writes again the memory pressure triggers CRIU dropped
// (cgtree.RearmPressure): before the tasks run, at pre-resume, so that a
// restored systemd 254 or later does not spin on its memory.pressure. A
// failure is logged, never fatal: the fix of the mounts goes on.
func rearmPressure(c *Container, log *logrus.Entry) {
	mnts := map[int]bool{}
	for _, m := range c.Table.All {
		if m.FSType == "cgroup2" {
			mnts[m.ID] = true
		}
	}
	if len(mnts) == 0 {
		return
	}
	r, err := cgtree.RearmPressure(c.Procs.Pids, mnts)
	if len(r.Armed) > 0 {
		log.Infof("memory pressure triggers written again (CRIU reopens those files without them, and systemd would spin on them): %s", strings.Join(r.Armed, ", "))
	}
	if err != nil {
		for _, line := range strings.Split(err.Error(), "\n") {
			log.Warnf("memory pressure trigger: %s", line)
		}
	}
}
