package hook

// The entry point into the hook: child roles first, then the CRIU action
// mode, then the commands.

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/door"
	"github.com/sirupsen/logrus"
)

// Version is set at build time (-ldflags "-X ...hook.Version=...").
var Version = "dev"

// Exit codes, documented in the README.
const (
	ExitOK      = 0 // done, or nothing to do
	ExitFailed  = 1 // a fix step failed: the log names the mount and the step
	ExitUsage   = 2 // bad arguments or bad input: nothing was touched
	ExitRefused = 3 // the target is not a container the hook may act on
)

// CRIU action-script environment.
const (
	EnvCRIUAction  = "CRTOOLS_SCRIPT_ACTION"
	EnvCRIUInitPid = "CRTOOLS_INIT_PID"
	// EnvWiring names what ran the action: "criu-plugin" when CRIU's
	// plugin (plugin/) did; unset for an action script.
	EnvWiring = "AUTOFS_RESTORE_HOOK_WIRING"
	// EnvNested sets --nested where no flag can be given (CRIU action
	// script, OCI hook configs without args).
	EnvNested = "AUTOFS_RESTORE_HOOK_NESTED"
)

const usage = `autofs-restore-hook: make autofs mounts work again after a CRIU restore

Usage:
  autofs-restore-hook status --pid PID [--json]
  autofs-restore-hook fix --pid PID [--dry-run] [--nested=fix|skip] [--force]
                           [--assume-restored] [--timeout D]
  autofs-restore-hook version
  autofs-restore-hook man                      the manual page, autofs-restore-hook(8), in roff
  autofs-restore-hook [--restore-timeout D]   OCI hook: state JSON on stdin
  (CRTOOLS_SCRIPT_ACTION set)                  CRIU action script

Common flags (also as environment, since CRIU passes no arguments):
  --log-file FILE   append log lines to FILE   (AUTOFS_RESTORE_HOOK_LOG_FILE)
  --log-level LVL   error|warning|info|debug   (AUTOFS_RESTORE_HOOK_LOG_LEVEL)
  --no-syslog       do not log to syslog        (AUTOFS_RESTORE_HOOK_NO_SYSLOG=1)
  --nested fix|skip mounts with copies in nested mount namespaces
                                                (AUTOFS_RESTORE_HOOK_NESTED)

Exit codes: 0 done or nothing to do, 1 a fix step failed, 2 bad usage or
input (nothing touched), 3 refused (not a container the hook may act on).
`

// Main runs the binary and returns its exit code.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	// A child of ours: a worker, a spawner stage, the detached OCI worker.
	if code, ok := door.Run(args); ok {
		return code
	}
	if action, ok := os.LookupEnv(EnvCRIUAction); ok {
		return criuMain(action, os.Getenv(EnvCRIUInitPid), stderr)
	}
	cmd := ""
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "version":
		fmt.Fprintf(stdout, "autofs-restore-hook %s\n", Version)
		return ExitOK
	case "help":
		fmt.Fprint(stdout, usage)
		return ExitOK
	case "man":
		if err := WriteManPage(stdout); err != nil {
			fmt.Fprintf(stderr, "autofs-restore-hook man: %v\n", err)
			return ExitFailed
		}
		return ExitOK
	case "status", "fix", "":
	default:
		fmt.Fprintf(stderr, "autofs-restore-hook: unknown command %q (see --help)\n", cmd)
		return ExitUsage
	}
	inv, err := LoadConfig(cmd, args, os.Getenv)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, usage)
		return ExitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "autofs-restore-hook: %v (see --help)\n", err)
		return ExitUsage
	}
	log, closeLog, err := newLogger(inv.Config.Logging, stderr)
	if err != nil && cmd == "" {
		// The OCI hook runs for every container of the node: a log file
		// it cannot open (a rootless runtime's user, say) must not fail
		// them. It logs to syslog and stderr instead, and says so.
		noFile := inv.Config.Logging
		noFile.File = ""
		fileErr := err
		if log, closeLog, err = newLogger(noFile, stderr); err == nil {
			log.Warnf("oci hook: %v: logging to syslog and stderr only", fileErr)
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "autofs-restore-hook: %v\n", err)
		return ExitUsage
	}
	defer closeLog()
	opts := Options{Config: inv.Config, Log: log, Wiring: WiringCLI}
	if cmd == "" {
		opts.Wiring = WiringOCI
		return ociMain(stdin, opts)
	}
	pid, err := parsePid(inv.Pid)
	if err != nil {
		fmt.Fprintf(stderr, "autofs-restore-hook %s: %v\n", cmd, err)
		return ExitUsage
	}
	if cmd == "status" {
		return statusMain(pid, inv.JSON, stdout, log)
	}
	return fixMain(pid, opts)
}

func parsePid(s string) (int, error) {
	if s == "" {
		return 0, errors.New("--pid is required")
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("--pid %q: want a positive process id", s)
	}
	return n, nil
}

// Options are the settings of one run: its Config and the logger built
// from it.
type Options struct {
	Config
	Log *logrus.Logger
	// Deadline is the end of the run: set by fixPid for one fix of one
	// container, zero before.
	Deadline time.Time
	// Wiring is what runs the fix (WiringPlugin, WiringScript, WiringOCI,
	// WiringCLI): the state file's phase marks record it.
	Wiring string
}
