package cstart

import (
	"os"
	"strings"
	"testing"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/door"
	"github.com/autofs-restore-hook/autofs-restore-hook/units"
)

// The constructor reads the variables the spawner and the door set: the
// C source and the Go constants must name the same ones.
func TestVariablesMatch(t *testing.T) {
	b, err := os.ReadFile("enter.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []struct {
		name string
		n    int
	}{{units.EnvTimeNSFD, 2}, {door.EnvEnter, 1}} {
		if n := strings.Count(string(b), `"`+v.name+`"`); n != v.n {
			t.Errorf("enter.go names %q %d times, want %d", v.name, n, v.n)
		}
	}
}
