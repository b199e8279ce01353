package hook

// Node slots: how many post-resume phases run at once on one node.

import (
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"strconv"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// Post-resume restarts masters: a container's systemd, an automount
// daemon, each waited for within the run's deadline. When many containers
// are restored at once (a node drained onto this one), their post-resumes
// start together: the CRIU plugin's when each restore ends, the OCI
// hook's followers when each sees its tasks run. On a node with few CPUs
// they then share them so thinly that every one of them misses its
// deadline (20 containers at once on 2 emulated CPUs: 20 of 20 not fixed,
// BENCHMARKS.md section 5). So post-resume takes one of slotCount() node
// slots first, a lock file in StateDir, and waits for a free one up to
// slotWait; its deadline starts once it has one. A run that waited
// slotWait goes on without a slot, and says so: the limit must never be
// the reason a container is not fixed.
var slotWait = 5 * time.Minute

// slotCount is how many post-resumes run at once: one per CPU this
// process may use, at least two.
func slotCount() int { return max(runtime.GOMAXPROCS(0), 2) }

// slotPoll is how often a run that waits for a slot tries again.
const slotPoll = 50 * time.Millisecond

// takeSlot takes a node slot of n, waiting up to wait. It returns the
// function that gives it back, and how long it waited; when no slot came
// free within wait, it returns a no-op release and errNoSlot.
func takeSlot(n int, wait time.Duration) (release func(), waited time.Duration, err error) {
	start := time.Now()
	if err := ensureStateDir(); err != nil {
		return func() {}, 0, err
	}
	for {
		for i := 0; i < n; i++ {
			path := filepath.Join(StateDir, "slot-"+strconv.Itoa(i)+".lock")
			fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
			if err != nil {
				return func() {}, time.Since(start), fmt.Errorf("open node slot %s: %w", path, err)
			}
			if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err == nil {
				return func() { unix.Close(fd) }, time.Since(start), nil
			}
			unix.Close(fd)
		}
		if time.Since(start) >= wait {
			return func() {}, time.Since(start), errNoSlot
		}
		time.Sleep(slotPoll)
	}
}

// errNoSlot: every node slot stayed taken for slotWait.
var errNoSlot = errors.New("every node slot stayed taken")

// nodeSlot takes a node slot for a post-resume (see slotWait) and
// returns the function that gives it back; a long wait, and a run that
// goes on without a slot, are logged.
func nodeSlot(log *logrus.Entry) (release func()) {
	n := slotCount()
	release, waited, err := takeSlot(n, slotWait)
	switch {
	case errors.Is(err, errNoSlot):
		log.Warnf("post-resume: all %d node slots stayed taken for %s (many restores at once): going on without one", n, waited.Round(time.Millisecond))
	case err != nil:
		log.Warnf("post-resume: %v: going on without a node slot", err)
	case waited > time.Second:
		log.Infof("post-resume: waited %s for one of the node's %d slots (restores at once)", waited.Round(time.Millisecond), n)
	}
	return release
}
