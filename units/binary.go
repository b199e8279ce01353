package units

// The check, before the kill, that the daemon's binary path still names
// the file it runs, made by a worker inside the container.

import (
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/door"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/worker"
	"github.com/autofs-restore-hook/autofs-restore-hook/mounts"
)

// automountBinary is the worker task that checks the daemon's binary.
var automountBinary = worker.NewTask("automount-binary", automountBinaryTask)

type binaryCheck struct {
	Path string `json:"path"`
	Dev  uint64 `json:"dev"`
	Ino  uint64 `json:"ino"`
}

// checkBinary refuses, before the kill, a daemon whose binary path no
// longer names the file it runs (exe, opened on the host). The path is
// the container's: it is looked at by a worker in the daemon's mount
// namespace and root, with a deadline, never by the hook's own process
// (a FUSE file system of the container mounted over it would answer the
// stat never).
func checkBinary(d *proc.Process, exe *os.File, path string, timeout time.Duration) error {
	id, err := fileID(exe)
	if err != nil {
		return fmt.Errorf("the daemon's executable: %w", err)
	}
	if _, err := automountBinary.Run(d, binaryCheck{Path: path, Dev: id.Dev, Ino: id.Ino}, timeout, nil); err != nil {
		return fmt.Errorf("check %s in the container: %w: refused", mounts.Escape(path), err)
	}
	return nil
}

func automountBinaryTask(_ *worker.Env, c binaryCheck, _ door.Logf) (struct{}, error) {
	root, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return struct{}{}, err
	}
	defer unix.Close(root)
	return struct{}{}, sameBinary(root, c.Path, c.Dev, c.Ino)
}

// sameBinary checks that path, resolved inside root (openat2
// RESOLVE_IN_ROOT: no symlink of the container leads out of it), is still
// the file dev/ino the daemon runs.
func sameBinary(root int, path string, dev, ino uint64) error {
	fd, err := unix.Openat2(root, path, &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS})
	if err != nil {
		return fmt.Errorf("%s is gone from the container (%v): refused", mounts.Escape(path), err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Dev != dev || st.Ino != ino {
		return fmt.Errorf("%s is no longer the binary the daemon ran (replaced since it started): refused", mounts.Escape(path))
	}
	return nil
}
