package door

import (
	"fmt"
	"unsafe"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/testenv"
)

func unsafePtr(p *int) unsafe.Pointer { return unsafe.Pointer(p) }
func hex16(v uint64) string           { return fmt.Sprintf("%016x", v) }

// childrenRunning lists our children (zombies included) whose command
// line names role.
func childrenRunning(role string) []int { return testenv.ChildrenRunning(role) }
