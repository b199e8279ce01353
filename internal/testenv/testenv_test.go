package testenv

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestScale(t *testing.T) {
	for _, tt := range []struct {
		env  string
		want time.Duration
	}{
		{"", time.Second}, {"1", time.Second}, {"10", 10 * time.Second},
		{"2.5", 2500 * time.Millisecond}, {"0", time.Second}, {"-3", time.Second}, {"x", time.Second},
	} {
		t.Setenv("ARH_TEST_SLOWDOWN", tt.env)
		if got := Scale(time.Second); got != tt.want {
			t.Errorf("ARH_TEST_SLOWDOWN=%q: Scale(1s) = %v, want %v", tt.env, got, tt.want)
		}
	}
}

// Skip fails instead of skipping under CI=true, and skips otherwise.
func TestSkipFailsUnderCI(t *testing.T) {
	for _, ci := range []string{"true", ""} {
		t.Setenv("CI", ci)
		r := &recorder{TB: t}
		done := make(chan struct{})
		go func() { // Skip and Fatal end the goroutine that calls them
			defer close(done)
			Skip(r, "need %s", "X")
		}()
		<-done
		if ci == "true" && (!r.fatal || r.skipped) {
			t.Errorf("CI=true: fatal=%v skipped=%v, want a failure", r.fatal, r.skipped)
		}
		if ci == "" && (r.fatal || !r.skipped) {
			t.Errorf("CI unset: fatal=%v skipped=%v, want a skip", r.fatal, r.skipped)
		}
		if !strings.HasPrefix(r.msg, "SKIP need X") {
			t.Errorf("message %q", r.msg)
		}
	}
}

type recorder struct {
	testing.TB
	fatal, skipped bool
	msg            string
}

func (r *recorder) Helper() {}
func (r *recorder) Fatalf(f string, a ...any) {
	r.fatal, r.msg = true, fmt.Sprintf(f, a...)
	runtime.Goexit()
}
func (r *recorder) Skip(a ...any) {
	r.skipped, r.msg = true, fmt.Sprint(a...)
	runtime.Goexit()
}
