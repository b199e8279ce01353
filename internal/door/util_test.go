package door

import (
	"fmt"
	"unsafe"
)

func unsafePtr(p *int) unsafe.Pointer { return unsafe.Pointer(p) }
func hex16(v uint64) string           { return fmt.Sprintf("%016x", v) }
