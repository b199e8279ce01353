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
	// EnvPluginActions is set by the CRIU plugin in CRIU's environment:
	// the actions it runs the binary for in this restore, for the action
	// scripts CRIU runs after. post-setup-namespaces once it added the
	// binary as action script for the cgroup step (a cgroup v2 host),
	// logged wiring=criu-plugin there; pre-resume and post-resume once it
	// ran pre-resume, which an action script of ours then leaves to it.
	// The constructor of internal/cstart reads it too.
	EnvPluginActions = "AUTOFS_RESTORE_HOOK_PLUGIN_ACTIONS"
	// EnvNested sets --nested where no flag can be given (CRIU action
	// script, OCI hook configs without args).
	EnvNested = "AUTOFS_RESTORE_HOOK_NESTED"
)

// usageHead is --help before the options.
const usageHead = `autofs-restore-hook: make autofs mounts work again after a CRIU restore

Usage:
  autofs-restore-hook status --pid PID | --container NAME|ID [--json]
  autofs-restore-hook status --all [--json]
  autofs-restore-hook fix --pid PID | --container NAME|ID [--dry-run] [--force] [--assume-restored]
                          [--timeout D] [--nested fix|skip]
  autofs-restore-hook node install [--root DIR] [--plugin FILE] [--wait] | node uninstall [--root DIR]
                                               the Kubernetes node installer (see node --help)
  autofs-restore-hook version
  autofs-restore-hook man                      the manual page, autofs-restore-hook(8), in roff
  autofs-restore-hook [--restore-timeout D]    OCI hook: runtime-spec state JSON on stdin
  (CRTOOLS_SCRIPT_ACTION set)                  CRIU action script (no arguments: the
                                               environment variables below apply)

Options (a flag wins over its environment variable):
`

// exitHelp is --help after the options.
const exitHelp = `
Exit status: 0 done or nothing to do, 1 a fix step failed, 2 bad usage or
input (nothing touched), 3 refused (not a container the hook may act on).
As a CRIU action script and as an OCI hook for a container that is not its
business, always 0.
`

// usage is the whole of --help.
var usage = usageHead + optionsHelp() + exitHelp

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
	case "node":
		return nodeMain(args, stdout, stderr, waitForSignal)
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
	cfgErr := error(nil)
	if err != nil && cmd == "" {
		// The OCI hook runs for every container of the node: a setting
		// of its hooks.d file that is invalid must not fail them all. It
		// goes on with the default in its place, and says so.
		cfgErr, err = err, nil
	}
	if err != nil {
		fmt.Fprintf(stderr, "autofs-restore-hook: %v (see --help)\n", err)
		return ExitUsage
	}
	mode := cmd
	if cmd == "" {
		mode = "oci"
	}
	// The OCI hook runs for every container of the node: a log file it
	// cannot open (a rootless runtime's user, say) or a log level it does
	// not know must not fail them (lenient).
	log, closeLog, err := openLog(inv.Config.Logging, stderr, logrus.Fields{"mode": mode}, cmd == "")
	if err != nil {
		fmt.Fprintf(stderr, "autofs-restore-hook: %v\n", err)
		return ExitUsage
	}
	defer closeLog()
	if cfgErr != nil {
		log.Errorf("oci hook: %v: using the default in its place (see --help)", cfgErr)
	}
	opts := Options{Config: inv.Config, Log: log, Wiring: WiringCLI, Mode: mode}
	if cmd == "" {
		opts.Wiring = WiringOCI
		return ociMain(stdin, opts)
	}
	if inv.All {
		if cmd != "status" || inv.Pid != "" || inv.Container != "" {
			fmt.Fprintf(stderr, "autofs-restore-hook %s: --all is for status, without --pid or --container\n", cmd)
			return ExitUsage
		}
		return statusAllMain(inv.JSON, stdout, log)
	}
	var pid int
	if inv.Container != "" {
		if inv.Pid != "" {
			fmt.Fprintf(stderr, "autofs-restore-hook %s: give --pid or --container, not both\n", cmd)
			return ExitUsage
		}
		f, err := lookupContainer(inv.Container)
		if err != nil {
			log.Errorf("%s: %v", cmd, err)
			return ExitRefused
		}
		pid, opts.Identity = f.Pid, f.ID
		setIdentity(log, f.ID)
	} else if pid, err = parsePid(inv.Pid); err != nil {
		fmt.Fprintf(stderr, "autofs-restore-hook %s: %v\n", cmd, err)
		return ExitUsage
	}
	if cmd == "status" {
		return statusMain(pid, opts.Identity, inv.JSON, stdout, log)
	}
	return fixMain(pid, opts)
}

func parsePid(s string) (int, error) {
	if s == "" {
		return 0, errors.New("--pid or --container is required")
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
	// Identity is the container as the run knows it (the OCI state, the
	// runtime's command line, --container); fixPid completes it from the
	// state file and the runtime's state, and logs it on every line.
	Identity Identity
	// Mode is the run mode (criu, oci, follow, fix), for the outcome.
	Mode string
}
