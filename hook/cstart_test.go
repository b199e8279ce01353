//go:build cgo

package hook

// The spawner's container stage, started from the test binary by a fix
// run in the test process, joins the container's time namespace in a C
// constructor, as the shipped binary's does.
import _ "github.com/autofs-restore-hook/autofs-restore-hook/internal/cstart"
