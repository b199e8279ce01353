package door

// The registry of child roles: the hidden first arguments that make the
// binary a child.

import (
	"fmt"
	"sync"
)

var (
	mu    sync.Mutex
	roles = map[string]func(args []string) int{}
)

// Register makes run the body of the child started with arg as its
// first argument; run gets the arguments after it and returns the exit
// code. A role registered twice is a programming error.
func Register(arg string, run func(args []string) int) {
	mu.Lock()
	defer mu.Unlock()
	if _, dup := roles[arg]; dup {
		panic(fmt.Sprintf("roles: %q registered twice", arg))
	}
	roles[arg] = run
}

// Run runs the role named by args[0], if one is registered, and reports
// whether it did.
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
