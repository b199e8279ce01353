//go:build cgo

package worker

// Children that tests start from the test binary and that enter a
// container (door.Spec.Enter) are taken in by the C constructor, as the
// shipped binary's are.
import _ "github.com/autofs-restore-hook/autofs-restore-hook/internal/cstart"
