package cstart

import (
	"os"
	"strings"
	"testing"

	"github.com/autofs-restore-hook/autofs-restore-hook/units"
)

// The constructor reads the variable the spawner sets: the C source and
// the Go constant must name the same one.
func TestTimeNSVariableMatches(t *testing.T) {
	b, err := os.ReadFile("timens.go")
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(b), `"`+units.EnvTimeNSFD+`"`); n != 2 {
		t.Fatalf("timens.go names %q %d times, want 2 (getenv and unsetenv)", units.EnvTimeNSFD, n)
	}
}
