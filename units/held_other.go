//go:build !amd64

package units

import (
	"errors"

	"golang.org/x/sys/unix"
)

// injectGetSecurebits is written for x86-64 only: the syscall
// instruction, the registers and the restart of an interrupted syscall
// differ by architecture. Elsewhere the securebits are not read (nor
// copied): RELIABILITY.md and docs/how-it-works.md, "Files and limits".
func injectGetSecurebits(pid int, filters []SeccompFilter, ws *unix.WaitStatus) (uint32, error) {
	return 0, errSecurebitsArch
}

var errSecurebitsArch = errors.New("securebits are read on x86-64 only")

// securebitsReadable: this architecture's injection is not written.
const securebitsReadable = false

// auditArchNative is 0 where the hook does not judge filters.
const auditArchNative = 0
