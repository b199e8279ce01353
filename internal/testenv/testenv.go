// Package testenv holds what tests need to know about the machine they run
// on: whether a missing prerequisite skips the test or fails it, and by how
// much the tests' own waits are stretched on a slow machine.
//
// With CI=true (what CI sets) a test that cannot run here fails, naming
// what is missing: a green CI run must mean the tests ran. Elsewhere such
// a test skips with the same message.
//
// ARH_TEST_SLOWDOWN (set by test/tests.sh: 1 natively, 3 in the test VM,
// where QEMU emulates the CPU) scales the waits that belong to the tests,
// such as polling for a container to boot. Deadlines of the product are
// never scaled: where a product default fails on a slow machine, that is a
// product bug.
package testenv

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Strict reports whether a missing prerequisite fails a test (CI=true).
func Strict() bool { return os.Getenv("CI") == "true" }

// Skip skips the test, or fails it under CI=true, with the message
// "SKIP <what is missing>".
func Skip(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := "SKIP " + fmt.Sprintf(format, args...)
	if Strict() {
		t.Fatalf("%s\n(CI=true: a test that cannot run here fails)", msg)
	}
	t.Skip(msg)
}

// RequireRoot skips (or fails, see Skip) a test that needs root.
func RequireRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		Skip(t, "(not root): %s", why)
	}
}

// Slowdown is the factor of ARH_TEST_SLOWDOWN, at least 1.
func Slowdown() float64 {
	f, err := strconv.ParseFloat(os.Getenv("ARH_TEST_SLOWDOWN"), 64)
	if err != nil || f < 1 {
		return 1
	}
	return f
}

// Scale stretches a wait of a test by Slowdown.
func Scale(d time.Duration) time.Duration {
	return time.Duration(float64(d) * Slowdown())
}

// SelfStatusKiB is a "KEY: N kB" line (VmRSS, VmHWM...) of the test
// process's own /proc/self/status, in KiB.
func SelfStatusKiB(t testing.TB, key string) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, key+":"); ok {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("%s: %q", key, v)
			}
			return n
		}
	}
	t.Fatalf("no %s in /proc/self/status", key)
	return 0
}
