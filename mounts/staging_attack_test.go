package mounts

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// threadTable reads the mount table of the calling thread (in its
// private mount namespace).
func threadTable(t *testing.T) *Table {
	t.Helper()
	f, err := os.Open("/proc/thread-self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tab, err := ParseTable(f)
	if err != nil {
		t.Fatal(err)
	}
	return tab
}

// mountIDAt is the mount id of what p leads to.
func mountIDAt(t *testing.T, p string) int {
	t.Helper()
	var st unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, p, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_MNT_ID, &st); err != nil {
		t.Fatalf("statx %s: %v", p, err)
	}
	return int(st.Mnt_id)
}

func mustMountTmpfs(t *testing.T, source, p string) int {
	t.Helper()
	if err := os.MkdirAll(p, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(source, p, "tmpfs", 0, "mode=0700,size=1m"); err != nil {
		t.Fatalf("mount tmpfs on %s: %v", p, err)
	}
	return mountIDAt(t, p)
}

// hostFile is a file outside the container's reach that a forged staging
// area points to: its content and times must not change.
type hostFile struct {
	path    string
	content []byte
	st      unix.Stat_t
}

func newHostFile(t *testing.T, dir string) *hostFile {
	t.Helper()
	h := &hostFile{path: filepath.Join(dir, "host-file"), content: []byte("host data\n")}
	if err := os.WriteFile(h.path, h.content, 0o600); err != nil {
		t.Fatal(err)
	}
	// atime before mtime: any read updates atime, even under relatime.
	old := time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := os.Chtimes(h.path, old, old.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	unix.Stat(h.path, &h.st)
	return h
}

func (h *hostFile) check(t *testing.T) {
	t.Helper()
	var st unix.Stat_t
	unix.Stat(h.path, &st)
	b, _ := os.ReadFile(h.path) // after the times are taken
	if st.Mtim != h.st.Mtim || st.Size != h.st.Size {
		t.Errorf("%s was written through the container's symlink (size %d -> %d)", h.path, h.st.Size, st.Size)
	}
	if st.Atim != h.st.Atim {
		t.Errorf("%s was read through the container's symlink", h.path)
	}
	if !bytes.Equal(b, h.content) {
		t.Errorf("%s now holds %q", h.path, b)
	}
}

// fifoReader tells whether anything opened the FIFO at p for reading
// (as a read through a symlink to it would): it feeds it a line then.
type fifoReader struct {
	opened atomic.Bool
	stop   chan struct{}
	done   chan struct{}
}

func newFifoReader(t *testing.T, p string) *fifoReader {
	t.Helper()
	if err := unix.Mkfifo(p, 0o600); err != nil {
		t.Fatal(err)
	}
	f := &fifoReader{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(f.done)
		for {
			fd, err := unix.Open(p, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
			if err == nil {
				f.opened.Store(true)
				unix.Write(fd, []byte("/srv/forged"))
				unix.Close(fd)
			}
			select {
			case <-f.stop:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() { close(f.stop); <-f.done })
	return f
}

// forgeStaging mounts, on base, a tmpfs made to look like a staging area
// of the hook as the container's own root could: our source name, mode
// 0700, the marker file of the earlier code, staged directory 1 with a
// mount on it, and ".where" files that are symlinks to a host file (one
// through a second symlink) and to a FIFO. It returns the mount id.
func forgeStaging(t *testing.T, base, hostPath, fifo string) int {
	t.Helper()
	id := mustMountTmpfs(t, stagingSource, base)
	if err := os.WriteFile(filepath.Join(base, ".autofs-restore-hook-staging"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	mustMountTmpfs(t, "forged", filepath.Join(base, "1"))
	os.WriteFile(filepath.Join(base, "1", "forged"), []byte("x"), 0o600)
	for name, target := range map[string]string{"1.where": fifo, "link": hostPath, "2.where": filepath.Join(base, "link"), "3.where": hostPath} {
		if err := os.Symlink(target, filepath.Join(base, name)); err != nil {
			t.Fatal(err)
		}
	}
	os.Mkdir(filepath.Join(base, "2"), 0o700)
	return id
}

// A tmpfs the container made at the staging place, looking like a
// staging area a killed run left (our source name, root-owned, 0700, the
// old marker file, staged directories, ".where" symlinks to a host file
// and a FIFO): opening staging never adopts it. A new tmpfs of ours is
// stacked on it (another mount id), a filesystem is staged and moved
// back through our fds, and nothing is written to or read from the
// symlinks' targets. The code before the host record adopted it, and
// wrote the mount point through 2.where into the host file.
func TestStagingNeverAdoptsAForgedTmpfs(t *testing.T) {
	dir := t.TempDir()
	host := newHostFile(t, dir)
	fifo := newFifoReader(t, filepath.Join(dir, "fifo"))
	inPrivateMountNS(t, func() {
		base := filepath.Join(dir, "base")
		forged := forgeStaging(t, base, host.path, filepath.Join(dir, "fifo"))
		var rec testRecorder
		s, err := shimOpen(base, &rec)
		if err != nil {
			t.Fatalf("open staging: %v", err)
		}
		if id := shimMountID(s); id == forged || mountIDAt(t, base) != id {
			t.Errorf("staging mount %d, forged %d, at %s now %d: the forged tmpfs was adopted", id, forged, base, mountIDAt(t, base))
		}
		top := filepath.Join(dir, "top")
		topID := mustMountTmpfs(t, "top", top)
		os.WriteFile(filepath.Join(top, "state"), []byte("kept"), 0o600)
		fd, err := openMountRoot(top, topID)
		if err != nil {
			t.Fatal(err)
		}
		name, err := shimStage(s, fd, "/srv/a")
		unix.Close(fd)
		if err != nil {
			t.Fatalf("stage: %v", err)
		}
		dst, err := unix.Open(top, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := shimMoveBack(s, threadTable(t), name, dst); err != nil {
			t.Errorf("move back: %v", err)
		}
		unix.Close(dst)
		if b, _ := os.ReadFile(filepath.Join(top, "state")); string(b) != "kept" || mountIDAt(t, top) != topID {
			t.Errorf("not moved back: %s holds %q, mount %d (want %d)", top, b, mountIDAt(t, top), topID)
		}
		if err := s.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		if mountIDAt(t, base) != forged {
			t.Errorf("after Close %s is mount %d, want the container's %d back", base, mountIDAt(t, base), forged)
		}
		if rec.rec != nil {
			t.Errorf("still recorded after Close: %+v", rec.rec)
		}
	})
	host.check(t)
	if fifo.opened.Load() {
		t.Error("the FIFO was opened for reading through the container's 1.where")
	}
}

// Recovery uses only the mount id the host recorded. Our staging area,
// with a filesystem staged, is recorded; then the container mounts a
// forged one (dirs, ".where" symlinks to a host file and a FIFO) at the
// same place:
//   - below ours (there before the run): ours is adopted, the forged one
//     ignored, only the recorded entry is found;
//   - on top of ours: nothing is adopted (an error), nothing read;
//   - instead of ours (ours unmounted): nothing to recover, the record
//     dropped, nothing read.
//
// The code before adopted whatever tmpfs of our name was on top, and
// read the ".where" files through the symlinks.
func TestRecoveryUsesOnlyTheRecordedMount(t *testing.T) {
	for _, where := range []string{"below", "on top", "instead"} {
		t.Run(where, func(t *testing.T) {
			dir := t.TempDir()
			host := newHostFile(t, dir)
			fifoPath := filepath.Join(dir, "fifo")
			fifo := newFifoReader(t, fifoPath)
			inPrivateMountNS(t, func() {
				base := filepath.Join(dir, "base")
				os.Mkdir(base, 0o700)
				forged := 0
				if where == "below" {
					forged = forgeStaging(t, base, host.path, fifoPath)
				}
				var rec testRecorder
				s, err := shimOpen(base, &rec)
				if err != nil {
					t.Fatalf("open staging: %v", err)
				}
				ours := shimMountID(s)
				top := filepath.Join(dir, "top")
				topID := mustMountTmpfs(t, "top", top)
				fd, err := openMountRoot(top, topID)
				if err != nil {
					t.Fatal(err)
				}
				name, err := shimStage(s, fd, "/srv/a")
				unix.Close(fd)
				if err != nil {
					t.Fatalf("stage: %v", err)
				}
				// Linux 6.8 and later give a unique mount id, never reused.
				unique := rec.rec != nil && rec.rec.MountIDUnique != 0
				// The run is killed here: the fds go, the mounts stay.
				shimKilled(s)
				switch where {
				case "on top":
					forged = forgeStaging(t, base, host.path, fifoPath)
				case "instead":
					if err := unix.Unmount(base, unix.MNT_DETACH); err != nil {
						t.Fatal(err)
					}
					forged = forgeStaging(t, base, host.path, fifoPath)
				}
				id, entries, err := shimRecover(threadTable(t), base, &rec)
				switch where {
				case "below":
					if err != nil || id != ours || len(entries) != 1 || entries[name] != "/srv/a" {
						t.Errorf("recovered mount %d (ours %d, forged %d), entries %v, err %v; want ours with %s -> /srv/a only", id, ours, forged, entries, err, name)
					}
				case "on top":
					if err == nil || id != 0 {
						t.Errorf("recovered mount %d (ours %d, forged %d covering it), entries %v, err %v; want a refusal", id, ours, forged, entries, err)
					}
					if rec.rec == nil || rec.rec.MountID != ours {
						t.Errorf("record %+v, want ours kept", rec.rec)
					}
				case "instead":
					if !unique && forged == ours {
						// Before Linux 6.8 a mount id is reused at once
						// and nothing else tells the two apart: the
						// forged mount is taken for ours. What it can
						// give the container is only what the record
						// says (its own mount moved onto the autofs
						// mount the record names, in its own
						// namespace): nothing of it is read or written
						// (checked below).
						if err != nil || id != ours || len(entries) != 1 || entries[name] != "/srv/a" {
							t.Errorf("recovered mount %d (ours %d gone, forged %d with our id), entries %v, err %v; want the record's entries only", id, ours, forged, entries, err)
						}
						t.Logf("Linux without unique mount ids: the forged mount got our id %d and was taken for ours, with the record's entries only", ours)
						break
					}
					if err != nil || id != 0 {
						t.Errorf("recovered mount %d (ours %d gone, forged %d), entries %v, err %v; want nothing", id, ours, forged, entries, err)
					}
					if rec.rec != nil {
						t.Errorf("record %+v, want it dropped", rec.rec)
					}
				}
			})
			host.check(t)
			if fifo.opened.Load() {
				t.Error("the FIFO was opened for reading through the container's 1.where")
			}
		})
	}
}

// Staging and moving back through the fds, with the host record: the
// staging mount and each entry are recorded before the mount and the
// move (checked when the record is made), the record follows the move
// back and ends with Close, which removes the directory it created. A
// record refused moves nothing.
func TestStagingRecordsBeforeEachStep(t *testing.T) {
	dir := t.TempDir()
	inPrivateMountNS(t, func() {
		base := filepath.Join(dir, "base")
		top := filepath.Join(dir, "top")
		topID := mustMountTmpfs(t, "top", top)
		os.WriteFile(filepath.Join(top, "state"), []byte("kept"), 0o600)
		baseBefore := mountIDAt(t, dir)
		refuse := false
		var rec testRecorder
		rec.check = func(ev StagingEvent) error {
			switch ev.Op {
			case StagingOpen:
				if mountIDAt(t, base) != baseBefore {
					t.Errorf("staging mounted before it was recorded")
				}
			case StagingStage:
				if mountIDAt(t, top) != topID {
					t.Errorf("%s moved before it was recorded", top)
				}
				if refuse {
					return errors.New("refused")
				}
			}
			return nil
		}
		s, err := shimOpen(base, &rec)
		if err != nil {
			t.Fatal(err)
		}
		if rec.rec == nil || rec.rec.MountID != shimMountID(s) || rec.rec.Base != base || !rec.rec.CreatedBase {
			t.Fatalf("record after open: %+v", rec.rec)
		}
		fd, err := openMountRoot(top, topID)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)

		refuse = true
		if _, err := shimStage(s, fd, "/srv/a"); err == nil {
			t.Error("staged with the record refused")
		}
		if mountIDAt(t, top) != topID || len(rec.rec.Entries) != 0 {
			t.Errorf("a refused record moved %s (now mount %d) or was kept (%+v)", top, mountIDAt(t, top), rec.rec)
		}
		refuse = false

		name, err := shimStage(s, fd, "/srv/a")
		if err != nil {
			t.Fatal(err)
		}
		if mountIDAt(t, top) == topID {
			t.Error("still mounted on top after the move aside")
		}
		if len(rec.rec.Entries) != 1 || rec.rec.Entries[0] != (StagedEntry{Dir: name, Where: "/srv/a"}) {
			t.Errorf("record after stage: %+v", rec.rec)
		}
		b := make([]byte, 16)
		if f, err := unix.Openat(s.root, name+"/state", unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
			t.Errorf("staged content: %v", err)
		} else {
			n, _ := unix.Read(f, b)
			unix.Close(f)
			if string(b[:n]) != "kept" {
				t.Errorf("staged content %q", b[:n])
			}
		}
		dst, err := unix.Open(top, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(dst)
		if err := shimMoveBack(s, threadTable(t), name, dst); err != nil {
			t.Fatal(err)
		}
		if got, _ := os.ReadFile(filepath.Join(top, "state")); string(got) != "kept" || mountIDAt(t, top) != topID {
			t.Errorf("after move back %s holds %q, mount %d (want %d)", top, got, mountIDAt(t, top), topID)
		}
		if len(rec.rec.Entries) != 0 {
			t.Errorf("record after move back: %+v", rec.rec)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if rec.rec != nil {
			t.Errorf("record after close: %+v", rec.rec)
		}
		if _, err := os.Lstat(base); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left after Close: %v", base, err)
		}
	})
}
