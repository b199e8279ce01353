// Command autofs-restore-hook makes the autofs mount points of a container
// work again after a CRIU restore. It runs as a CRIU action script, as an
// OCI runtime hook, or as an operator CLI; see the README.
package main

import (
	"os"

	"github.com/autofs-restore-hook/autofs-restore-hook/hook"
	// C constructors that run before the Go runtime (see the package).
	_ "github.com/autofs-restore-hook/autofs-restore-hook/internal/cstart"
)

func main() {
	os.Exit(hook.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
