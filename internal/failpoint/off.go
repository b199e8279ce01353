//go:build !failpoints

package failpoint

import "time"

// Pause does nothing: this build has no pause points.
func Pause(name string, logf func(string)) {}

// Environ is what a child process of the hook needs to keep the pause
// point selected: nothing in this build.
func Environ() []string { return nil }

// Err returns nil: this build injects no failure.
func Err(name string) error { return nil }

// Delay does nothing: this build slows no step.
func Delay(name string, d time.Duration, logf func(string)) {}

// Handshake does nothing: this build holds no step.
func Handshake(name, path string, logf func(string)) {}
