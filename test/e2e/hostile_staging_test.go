package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/testenv"
	"github.com/autofs-restore-hook/autofs-restore-hook/test/lab"
)

// A container that prepares the hook's staging area itself: a root-owned
// 0700 tmpfs at /run/.autofs-restore-hook with the old marker file, and
// N.where symlinks to a block device node it made for a host loop device
// (its device cgroup forbids it to open the node; the hook's worker runs
// outside that cgroup), and a "staged" mount 9 whose 9.where names no
// autofs mount (so that a recovery of it fails and leaves the area in
// place). The fix moves /srv/a's tmpfs aside while it restarts the unit.
// Before, the worker read every N.where through the node, adopted the
// tmpfs and wrote "/srv/a" through 1.where onto the host's disk image;
// now it stages in a tmpfs of its own and reads and writes nothing of
// the container's tree: the image is unchanged, and the container is
// fixed with /srv/a's content kept.
func TestHostileStagingTmpfsWritesNoHostDevice(tt *testing.T) {
	t := lab.Record(tt)
	lab.Require(t)
	bin := hookBinary(t)
	img := filepath.Join(t.TempDir(), "disk.img")
	content := bytes.Repeat([]byte("host-data-"), 1<<16)
	if err := os.WriteFile(img, content, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", img).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v\n%s", err, out)
	}
	loop := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", loop).Run() })
	var st unix.Stat_t
	if err := unix.Stat(loop, &st); err != nil {
		t.Fatal(err)
	}
	c, pid := restoredWithoutHook(t, "hostile-staging", lab.Systemd)
	mustWork(t, c, "sh", "-c", fmt.Sprintf(`set -e
d=/run/.autofs-restore-hook
mkdir -p $d
mount -t tmpfs -o mode=0700,size=64k autofs-restore-hook $d
touch $d/.autofs-restore-hook-staging
mknod $d/disk b %d %d
for n in 1 2 3 4 5 6 7 8; do ln -s disk $d/$n.where; done
mkdir $d/9
mount -t tmpfs -o size=4k staged $d/9
echo /srv/nothing-here >$d/9.where
ls -la $d`, unix.Major(st.Rdev), unix.Minor(st.Rdev)))
	// The container cannot write the node itself: the test would prove
	// nothing if it could.
	if _, _, err := c.Exec(testenv.Scale(15*time.Second), "sh", "-c", "echo container >/run/.autofs-restore-hook/disk"); err == nil {
		t.Fatalf("the container wrote the loop device's node itself: its device cgroup allows it, so this test proves nothing")
	}
	out, err = exec.Command(bin, "fix", "--pid", strconv.Itoa(pid), "--no-syslog").CombinedOutput()
	t.Logf("fix: %v\n%s", err, out)
	if got, rerr := os.ReadFile(img); rerr != nil || !bytes.Equal(got, content) {
		i := 0
		for i < len(got) && i < len(content) && got[i] == content[i] {
			i++
		}
		t.Fatalf("the host's disk image behind %s changed at byte %d (%v): the hook wrote through the container's staging area", loop, i, rerr)
	}
	if err != nil {
		t.Fatalf("fix with a container-made staging area: %v", err)
	}
	systemdWorks(t, c)
	if got := mustWork(t, c, "cat", "/srv/a/state"); !strings.Contains(got, "state-before-checkpoint") {
		t.Fatalf("/srv/a/state after the fix: %q: the filesystem on top was not preserved", got)
	}
}
