package door

// The registry of child roles: the hidden first arguments that make the
// binary a child.

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
)

// RolePrefix starts every role's name: no argument an operator types
// does.
const RolePrefix = "__"

var (
	mu    sync.Mutex
	roles = map[string]func(args []string) int{}
)

// A child runs its role on the process's main thread, locked there from
// before main: what a role does to its thread (join a namespace, chroot,
// drop capabilities, set no_new_privs) then holds for the thread the
// process is known by, the one /proc/PID shows and the container sees.
// Unlocked, the main goroutine could move to another thread before the
// role locked it (seen: a connect child doing its work on a thread that
// /proc/PID did not show). Only an init function runs early enough.
func init() {
	if len(os.Args) > 1 && strings.HasPrefix(os.Args[1], RolePrefix) {
		runtime.LockOSThread() // never unlocked: the process is the role's
	}
}

// register makes run the body of the child started with arg as its
// first argument; run gets the arguments after it and returns the exit
// code. The body runs on the main thread. A role registered twice, or
// named without RolePrefix, is a programming error. Children started
// through the door are Tasks (NewTask registers them); the one that is
// not (the OCI hook's detached follower) is a Detached.
func register(arg string, run func(args []string) int) {
	mu.Lock()
	defer mu.Unlock()
	if !strings.HasPrefix(arg, RolePrefix) {
		panic(fmt.Sprintf("roles: %q does not start with %q", arg, RolePrefix))
	}
	if _, dup := roles[arg]; dup {
		panic(fmt.Sprintf("roles: %q registered twice", arg))
	}
	roles[arg] = run
}

// Run runs the role named by args[0], if one is registered, and reports
// whether it did. It must be called from the main goroutine, as main or
// TestMain does.
func Run(args []string) (code int, ok bool) {
	if len(args) == 0 {
		return 0, false
	}
	mu.Lock()
	run := roles[args[0]]
	mu.Unlock()
	if run == nil {
		return 0, false
	}
	return run(args[1:]), true
}
