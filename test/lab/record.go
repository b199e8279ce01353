package lab

import (
	"fmt"
	"strings"
	"sync"
	"testing"
)

// Recorder is a test that remembers its failures and, if it failed,
// repeats them in one line as its very last output, right above
// "--- FAIL". An end-to-end test logs every lab step, so the lines that
// say why it failed are otherwise far above the verdict, beyond what a CI
// summary shows of a failing test.
//
// Helpers must take testing.TB, not *testing.T, for their failures to be
// recorded.
type Recorder struct {
	*testing.T
	mu   sync.Mutex
	msgs []string
}

// digestMax bounds the digest line; each failure keeps its first lines.
const (
	digestMax     = 4000
	digestMsgMax  = 600
	digestMsgLine = 4
)

// Record wraps t. Call it first in the test, so that the digest is
// printed after every other cleanup (the container's removal included).
func Record(t *testing.T) *Recorder {
	r := &Recorder{T: t}
	t.Cleanup(func() {
		if d := r.Digest(); d != "" {
			t.Log(d)
		}
	})
	return r
}

func (r *Recorder) add(msg string) {
	r.mu.Lock()
	r.msgs = append(r.msgs, msg)
	r.mu.Unlock()
}

// Digest is the one-line summary printed when the test failed ("" when it
// did not fail, or failed only through a sub-test or t.Fail).
func (r *Recorder) Digest() string {
	if !r.Failed() {
		return ""
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.msgs) == 0 {
		return ""
	}
	parts := make([]string, len(r.msgs))
	for i, m := range r.msgs {
		lines := strings.Split(strings.TrimSpace(m), "\n")
		if len(lines) > digestMsgLine {
			lines = append(lines[:digestMsgLine], "...")
		}
		s := strings.Join(lines, " ⏎ ")
		if len(s) > digestMsgMax {
			s = s[:digestMsgMax] + "..."
		}
		parts[i] = s
	}
	d := fmt.Sprintf("FAILED (%d): %s", len(parts), strings.Join(parts, " | "))
	if len(d) > digestMax {
		d = d[:digestMax] + "..."
	}
	return d
}

// Error records and reports a failure (testing.T.Error).
func (r *Recorder) Error(args ...any) {
	r.Helper()
	r.add(fmt.Sprintln(args...))
	r.T.Error(args...)
}

// Errorf records and reports a failure (testing.T.Errorf).
func (r *Recorder) Errorf(format string, args ...any) {
	r.Helper()
	r.add(fmt.Sprintf(format, args...))
	r.T.Errorf(format, args...)
}

// Fatal records and reports a failure and stops the test (testing.T.Fatal).
func (r *Recorder) Fatal(args ...any) {
	r.Helper()
	r.add(fmt.Sprintln(args...))
	r.T.Fatal(args...)
}

// Fatalf records and reports a failure and stops the test
// (testing.T.Fatalf).
func (r *Recorder) Fatalf(format string, args ...any) {
	r.Helper()
	r.add(fmt.Sprintf(format, args...))
	r.T.Fatalf(format, args...)
}
