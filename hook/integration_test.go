package hook

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/autofstest"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/door"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/testenv"
	"github.com/autofs-restore-hook/autofs-restore-hook/mounts"
)

// TestMain runs the children that tests start from the test binary
// itself: a test master or fake daemon, a tracer, a role of ours (the
// workers and the spawner's stages of a fix run in the test process).
func TestMain(m *testing.M) {
	autofstest.MaybeRunMaster()
	maybeTrace()
	if code, ok := door.Run(os.Args[1:]); ok {
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// status on real autofs mounts with odd mount points (a master in its
// own pid and mount namespaces, as a container's): JSON gives each path
// exactly, the table one escaped line per mount.
func TestStatusOddMountPoints(t *testing.T) {
	if ok, why := autofstest.Available(); !ok {
		testenv.Skip(t, "INTEGRATION (%s): real autofs tests need root and /dev/autofs (make test runs them in the test VM)", why)
	}
	StateDir = t.TempDir()
	long := ""
	for i := 0; i < 19; i++ {
		long = filepath.Join(long, fmt.Sprintf("%02d-%s", i, strings.Repeat("d", 197)))
	}
	dir := t.TempDir()
	var points []string
	// Beside the escapes of mountinfo: a C1 control (CSI, U+009B), a bidi
	// override and an isolate (U+202E, U+2066), a zero-width joiner and
	// a byte that is not UTF-8, which a terminal would act on or which
	// would reorder what the operator reads.
	hostile := []string{"csi-\u009b31m-red", "bidi-\u202egnp.exe", "iso-\u2066x\u2069-zwj\u200d", "bad-\xff-utf8"}
	for _, n := range append([]string{"with space", "tab\there", "new\nline", `back\slash \040`, long}, hostile...) {
		points = append(points, filepath.Join(dir, n))
	}
	m, err := autofstest.StartMaster(points...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)
	log := logrus.New()
	log.SetOutput(io.Discard)

	var js bytes.Buffer
	if code := statusMain(m.Pid, Identity{}, true, &js, log); code != ExitOK {
		t.Fatalf("status --json exited %d", code)
	}
	var r Report
	if err := json.Unmarshal(js.Bytes(), &r); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, ms := range r.Mounts {
		got[ms.Mountpoint] = true
	}
	for _, pt := range points {
		// JSON strings are UTF-8: a byte that is not becomes U+FFFD
		// there (the table below keeps it, escaped).
		if !got[strings.ToValidUTF8(pt, "\uFFFD")] {
			t.Errorf("status --json lacks %q", pt)
		}
	}

	var table bytes.Buffer
	if code := statusMain(m.Pid, Identity{}, false, &table, log); code != ExitOK {
		t.Fatalf("status exited %d", code)
	}
	// Mounts the master's namespace copied from the host are listed too:
	// only the lines under dir count.
	var lines []string
	for _, l := range strings.Split(table.String(), "\n") {
		if strings.HasPrefix(l, mounts.Escape(dir)+"/") {
			lines = append(lines, l)
		}
	}
	if len(lines) != len(points) {
		t.Fatalf("status printed %d lines for %d mounts:\n%s", len(lines), len(points), table.String())
	}
	for _, pt := range points {
		n := 0
		for _, l := range lines {
			if strings.HasPrefix(l, mounts.Escape(pt)+" ") {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%d lines start with %q, want 1:\n%s", n, mounts.Escape(pt), table.String())
		}
	}
	// None of their runes reaches the table as it is: each byte is
	// written \ooo.
	for _, bad := range []string{"\u009b", "\u202e", "\u2066", "\u2069", "\u200d", "\xff"} {
		if strings.Contains(table.String(), bad) {
			t.Errorf("the status table holds %q as it is:\n%s", bad, table.String())
		}
	}
}

// A container with 10,000 autofs mounts, stacked 1,000 deep on each of
// ten paths (real autofs mounts, a master in its own pid and mount
// namespaces as a container's):
// a run refuses it with an error naming the bound, at once, and the
// hook's memory stays far below 64 MB. status reads it within its bounds
// too. Before the bounds, the table of stacked mounts was parsed in
// quadratic time and memory (8,000 pairs: 2 GiB, 4.3 s).
func TestTenThousandStackedMountsRefusedWithinBounds(t *testing.T) {
	if ok, why := autofstest.Available(); !ok {
		testenv.Skip(t, "INTEGRATION (%s): real autofs tests need root and /dev/autofs (make test runs them in the test VM)", why)
	}
	StateDir = t.TempDir()
	const n, depth = 10000, 1000
	dir := t.TempDir()
	var points []string
	for i := 0; i < n/depth; i++ {
		points = append(points, filepath.Join(dir, fmt.Sprint(i)))
	}
	start := time.Now()
	m, err := autofstest.StartStacked(depth, points...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)
	t.Logf("%d autofs mounts stacked in %v", n, time.Since(start).Round(time.Millisecond))
	log := logrus.New()
	log.SetOutput(io.Discard)

	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		t.Fatalf("reset the peak resident size: %v", err)
	}
	rss := testenv.SelfStatusKiB(t, "VmRSS")
	start = time.Now()
	err = fixPid(m.Pid, []Phase{PreResume, PostResume}, Options{Config: Config{Timeout: time.Minute}, Log: log, Wiring: WiringCLI})
	took := time.Since(start)
	grew := testenv.SelfStatusKiB(t, "VmHWM") - rss
	t.Logf("fix: %v after %v, peak resident size +%d KiB", err, took.Round(time.Millisecond), grew)
	if !errors.Is(err, errRefused) || !strings.Contains(err.Error(), fmt.Sprint(maxAutofsMounts)) {
		t.Errorf("fix of %d autofs mounts: %v, want a refusal naming the bound of %d", n, err, maxAutofsMounts)
	}
	if took > testenv.Scale(5*time.Second) {
		t.Errorf("the refusal took %v", took)
	}
	if grew > 64<<10 {
		t.Errorf("the peak resident size grew by %d MiB, want far below 64 MiB", grew>>10)
	}
	var js bytes.Buffer
	start = time.Now()
	code := statusMain(m.Pid, Identity{}, true, &js, log)
	t.Logf("status --json: exit %d after %v, %d bytes, peak resident size +%d KiB", code, time.Since(start).Round(time.Millisecond), js.Len(), testenv.SelfStatusKiB(t, "VmHWM")-rss)
	if grew := testenv.SelfStatusKiB(t, "VmHWM") - rss; grew > 64<<10 {
		t.Errorf("status: the peak resident size grew by %d MiB, want below 64 MiB", grew>>10)
	}
}

// A container running twenty fake automount daemons, each serving a
// stale direct mount and each, started again, serving nothing (real
// autofs mounts; the fakes in the master's pid and mount namespaces, as a
// container's processes): one run respawns at most maxDaemons of them and
// ends by its deadline however many there are, the daemons it had no
// time for untouched. Without the run's deadline each respawn waited its
// whole timeout, one after the other: sixteen times 4 s here.
func TestManyFakeDaemonsEndByTheDeadline(t *testing.T) {
	if ok, why := autofstest.Available(); !ok {
		testenv.Skip(t, "INTEGRATION (%s): real autofs tests need root and /dev/autofs (make test runs them in the test VM)", why)
	}
	StateDir = t.TempDir()
	dir := t.TempDir()
	m, err := autofstest.StartMaster(filepath.Join(dir, "init"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)
	const k = 20
	fakes, err := m.Fakes(k, dir)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	log := logrus.New()
	log.SetOutput(&out)
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		t.Fatalf("reset the peak resident size: %v", err)
	}
	rss := testenv.SelfStatusKiB(t, "VmRSS")
	const step = 4 * time.Second
	start := time.Now()
	deadline := start.Add(2 * step)
	err = fixPid(m.Pid, []Phase{PreResume, PostResume}, Options{Config: Config{Timeout: step, AssumeRestored: true}, Log: log, Wiring: WiringCLI, Deadline: deadline})
	took := time.Since(start)
	grew := testenv.SelfStatusKiB(t, "VmHWM") - rss
	t.Logf("fix of %d fake daemons: after %v (deadline %v), peak resident size +%d KiB: %v", k, took.Round(time.Millisecond), deadline.Sub(start), grew, err)
	defer func() {
		if t.Failed() {
			t.Logf("the hook's log:\n%s", out.String())
		}
	}()
	if err == nil {
		t.Fatal("fix of fake daemons that never serve succeeded")
	}
	for _, want := range []string{fmt.Sprintf("more than the %d one run handles", maxDaemons), "the run's deadline has passed"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error does not say %q", want)
		}
	}
	// A respawn that runs at the deadline still gets a bound of its
	// own for the kill and the check of what it started.
	if late := time.Since(deadline); late > testenv.Scale(10*time.Second) {
		t.Errorf("the run ended %v after its deadline", late.Round(time.Millisecond))
	}
	if grew > 64<<10 {
		t.Errorf("the peak resident size grew by %d MiB, want below 64 MiB", grew>>10)
	}
	// Those it had no time for, and those beyond the cap, run on.
	alive := 0
	for _, pid := range fakes {
		if _, err := proc.ReadStat(pid); err == nil {
			alive++
		}
	}
	t.Logf("%d of %d fake daemons not killed", alive, k)
	if alive < k-maxDaemons || alive == k {
		t.Errorf("%d of %d fakes are left running, want at least the %d beyond the cap and fewer than all", alive, k, k-maxDaemons)
	}
}
