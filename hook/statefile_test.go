package hook

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/testenv"
	"github.com/autofs-restore-hook/autofs-restore-hook/mounts"
)

func withStateDir(t *testing.T, dir string) {
	t.Helper()
	old := StateDir
	StateDir = dir
	t.Cleanup(func() { StateDir = old })
}

func self(t *testing.T) *proc.Process {
	t.Helper()
	p, err := proc.OpenProcess(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func TestStateDirRefusedWhenOpenOrLink(t *testing.T) {
	testenv.RequireRoot(t, "the state directory checks expect root-owned directories")
	base := t.TempDir()
	open := filepath.Join(base, "open")
	os.Mkdir(open, 0o777)
	os.Chmod(open, 0o777)
	link := filepath.Join(base, "link")
	os.Symlink(t.TempDir(), link)
	for _, dir := range []string{open, link} {
		withStateDir(t, dir)
		_, err := lockState(self(t), time.Second)
		if err == nil || !strings.Contains(err.Error(), "refused") {
			t.Errorf("state dir %s: err = %v, want refused", dir, err)
		}
	}
}

func TestStateFileRoundTripAndLock(t *testing.T) {
	withStateDir(t, filepath.Join(t.TempDir(), "state"))
	p := self(t)
	sf, err := lockState(p, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	sf.rec.Fixed = []uint64{7}
	sf.rec.PreResume = &phaseMark{At: time.Now()}
	if err := sf.Save(); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{StateDir, sf.path, sf.path[:len(sf.path)-len(".json")] + ".lock"} {
		st, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s has mode %v: open to others", f, st.Mode())
		}
	}
	// A second run waits for the lock, then gives up at its deadline.
	start := time.Now()
	if _, err := lockState(p, 200*time.Millisecond); err == nil || !strings.Contains(err.Error(), "another run holds") {
		t.Fatalf("second lock: %v", err)
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Fatalf("gave up after %v, before its deadline", d)
	}
	sf.Unlock()
	sf2, err := lockState(p, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer sf2.Unlock()
	if !sf2.rec.knownGood(7) || sf2.rec.PreResume == nil {
		t.Fatalf("record not kept: %+v", sf2.rec)
	}
	// A damaged file is reported, not overwritten.
	os.WriteFile(sf.path, []byte("{garbage"), 0o600)
	sf2.Unlock()
	if _, err := lockState(p, time.Second); err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Fatalf("damaged state file: %v", err)
	}
}

func TestRemoveStaleStateFiles(t *testing.T) {
	withStateDir(t, filepath.Join(t.TempDir(), "state"))
	if err := ensureStateDir(); err != nil {
		t.Fatal(err)
	}
	p := self(t)
	gone := filepath.Join(StateDir, "2147483000-12345.json")
	reused := filepath.Join(StateDir, strings.Split(filepath.Base(statePath(p)), "-")[0]+"-1.json")
	mine := statePath(p) + ".json"
	// A container init that has exited but that its parent has not reaped
	// yet (seen right after a checkpoint) is gone too.
	z := zombie(t)
	zst, err := proc.ReadStat(z)
	if err != nil {
		t.Fatal(err)
	}
	exited := filepath.Join(StateDir, fmt.Sprintf("%d-%d.json", z, zst.StartTime))
	for _, f := range []string{gone, reused, mine, exited} {
		os.WriteFile(f, []byte("{}"), 0o600)
	}
	removeStale()
	for f, want := range map[string]bool{gone: false, reused: false, mine: true, exited: false} {
		if _, err := os.Stat(f); (err == nil) != want {
			t.Errorf("%s: exists %v, want %v", filepath.Base(f), err == nil, want)
		}
	}
}

// zombie starts a child that exits at once and is left unreaped until the
// test ends; it returns its pid once /proc shows it as a zombie.
func zombie(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Wait() })
	pid := cmd.Process.Pid
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		if st, err := proc.ReadStat(pid); err == nil && st.State == 'Z' {
			return pid
		}
		if time.Now().After(deadline) {
			t.Fatalf("child %d did not become a zombie in 5s", pid)
		}
	}
}

// The systemd worker's staging events land in the state file, saved
// before each is acknowledged: the staging mount, each entry, its
// removal, the end. An event for another staging area while one is
// recorded is refused, and the record kept.
func TestStagingEventsSaved(t *testing.T) {
	testenv.RequireRoot(t, "the state directory checks expect root-owned directories")
	withStateDir(t, filepath.Join(t.TempDir(), "state"))
	sf, err := lockState(self(t), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer sf.Unlock()
	saved := func() *mounts.StagingRecord {
		t.Helper()
		r, err := loadState(self(t))
		if err != nil {
			t.Fatal(err)
		}
		return r.Staging
	}
	ev := func(s string) error { return sf.recordStaging([]byte(s)) }
	if err := ev(`{"op":"staging-open","mount_id":7,"base":"/run/.autofs-restore-hook","created_base":true}`); err != nil {
		t.Fatal(err)
	}
	if err := ev(`{"op":"staging-stage","mount_id":7,"dir":"1","where":"/srv/a"}`); err != nil {
		t.Fatal(err)
	}
	if r := saved(); r == nil || r.MountID != 7 || len(r.Entries) != 1 || r.Entries[0] != (mounts.StagedEntry{Dir: "1", Where: "/srv/a"}) {
		t.Fatalf("saved %+v", r)
	}
	for _, bad := range []string{
		`{"op":"staging-open","mount_id":8,"base":"/run/.autofs-restore-hook"}`,
		`{"op":"staging-stage","mount_id":8,"dir":"2","where":"/srv/b"}`,
		`{"op":"staging-stage","mount_id":7,"dir":"../x","where":"/srv/b"}`,
	} {
		if err := ev(bad); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
	if r := saved(); r == nil || r.MountID != 7 || len(r.Entries) != 1 {
		t.Fatalf("after refused events: %+v", r)
	}
	if err := ev(`{"op":"staging-unstage","mount_id":7,"dir":"1"}`); err != nil {
		t.Fatal(err)
	}
	if r := saved(); r == nil || len(r.Entries) != 0 {
		t.Fatalf("after unstage: %+v", r)
	}
	if err := ev(`{"op":"staging-gone","mount_id":7}`); err != nil {
		t.Fatal(err)
	}
	if r := saved(); r != nil {
		t.Fatalf("after gone: %+v", r)
	}
}

// A duration of the outcome written as null (by hand, or an older
// writer) reads as zero: the record is not "damaged" for it.
func TestMillisNull(t *testing.T) {
	var o PhaseOutcome
	if err := json.Unmarshal([]byte(`{"took_ms": null}`), &o); err != nil || o.Took != 0 {
		t.Errorf("null took_ms: %v, %v", o.Took, err)
	}
	if err := json.Unmarshal([]byte(`{"took_ms": 1.5}`), &o); err != nil || time.Duration(o.Took) != 1500*time.Microsecond {
		t.Errorf("1.5 ms: %v, %v", time.Duration(o.Took), err)
	}
}

// A phase's outcome keeps the first maxOutcomeMounts mount points of each
// list and counts the rest: thousands of long mount points do not make
// the state file too large to read back.
func TestOutcomeListsBounded(t *testing.T) {
	sf := &stateFile{out: &PhaseOutcome{}}
	long := "/" + strings.Repeat("x", 4000)
	for i := 0; i < 4096; i++ {
		sf.fixed(long)
		sf.refused(long, "unknown master")
		sf.left(long, "timeout")
	}
	o := sf.out
	if len(o.Fixed) != maxOutcomeMounts || len(o.Refused) != maxOutcomeMounts || len(o.Left) != maxOutcomeMounts ||
		o.FixedMore != 4096-maxOutcomeMounts || o.RefusedMore != 4096-maxOutcomeMounts || o.LeftMore != 4096-maxOutcomeMounts {
		t.Errorf("lists %d, %d, %d, more %d, %d, %d", len(o.Fixed), len(o.Refused), len(o.Left), o.FixedMore, o.RefusedMore, o.LeftMore)
	}
	if b, _ := json.Marshal(o); len(b) > 1<<20 {
		t.Errorf("the outcome is %d bytes", len(b))
	}
}
