package worker_test

import (
	"os"
	"testing"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/door"
)

// The test binary is its own worker: roles first.
func TestMain(m *testing.M) {
	if code, ok := door.Run(os.Args[1:]); ok {
		os.Exit(code)
	}
	os.Exit(m.Run())
}
