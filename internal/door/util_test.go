package door

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"unsafe"
)

func unsafePtr(p *int) unsafe.Pointer { return unsafe.Pointer(p) }
func hex16(v uint64) string           { return fmt.Sprintf("%016x", v) }

// childrenRunning lists our children (zombies included) whose command
// line names role.
func childrenRunning(role string) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		i := strings.LastIndexByte(string(b), ')')
		f := strings.Fields(string(b)[i+1:])
		if len(f) < 2 || f[1] != strconv.Itoa(os.Getpid()) {
			continue
		}
		cmd, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if strings.Contains(string(cmd), role) {
			out = append(out, pid)
		}
	}
	return out
}
