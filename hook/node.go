package hook

// The node installer's mode (`node install`, `node uninstall`), which the
// Kubernetes DaemonSet runs (hooks.d/kubernetes-daemonset.yaml); what it
// writes where: internal/nodeinstall.

import (
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/nodeinstall"
)

// nodeUsage is `node --help`.
const nodeUsage = `Usage:
  autofs-restore-hook node install [--root DIR] [--plugin FILE] [--wait]
  autofs-restore-hook node uninstall [--root DIR]

install puts this binary, the OCI hook's hooks.d JSON and the CRIU plugin
FILE on the node whose root is DIR (default /host: the DaemonSet mounts
the node's / there): the package's paths where the node's /usr is
writable, else /opt/autofs-restore-hook, /etc/containers/oci/hooks.d and a
CRI-O drop-in naming that directory in hooks_dir (no plugin). With --wait
it then waits for SIGTERM or SIGINT and uninstalls. uninstall removes what
install recorded in DIR/var/lib/autofs-restore-hook/node-install.json.
`

// nodeMain runs `node install|uninstall`; wait is where --wait blocks
// (until a signal; tests give their own).
func nodeMain(args []string, stdout, stderr io.Writer, wait func()) int {
	if len(args) == 0 || (args[0] != "install" && args[0] != "uninstall") {
		fmt.Fprint(stderr, nodeUsage)
		return ExitUsage
	}
	sub := args[0]
	fs := flag.NewFlagSet("node "+sub, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	root := fs.String("root", "/host", "")
	plugin, waitFlag := "", false
	if sub == "install" {
		fs.StringVar(&plugin, "plugin", "", "")
		fs.BoolVar(&waitFlag, "wait", false, "")
	}
	if err := fs.Parse(args[1:]); err != nil || fs.NArg() != 0 {
		fmt.Fprintf(stderr, "autofs-restore-hook node %s: bad arguments %q\n%s", sub, args[1:], nodeUsage)
		return ExitUsage
	}
	logf := func(format string, a ...any) {
		fmt.Fprintf(stdout, "autofs-restore-hook node %s: %s (root %s)\n", sub, fmt.Sprintf(format, a...), *root)
	}
	if st, err := os.Stat(*root); err != nil || !st.IsDir() {
		fmt.Fprintf(stderr, "autofs-restore-hook node %s: --root %s: not a directory (%v)\n", sub, *root, err)
		return ExitUsage
	}
	uninstall := func(id string) int {
		if err := nodeinstall.Uninstall(*root, id, logf); err != nil {
			fmt.Fprintf(stderr, "autofs-restore-hook node uninstall: %v\n", err)
			return ExitFailed
		}
		return ExitOK
	}
	if sub == "uninstall" {
		return uninstall("")
	}
	if waitFlag {
		// From before the install: a SIGTERM during it still uninstalls.
		stop := startWaiting()
		defer stop()
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintf(stderr, "autofs-restore-hook node install: this binary: %v\n", err)
		return ExitFailed
	}
	l, err := nodeinstall.Install(*root, nodeinstall.Sources{Binary: self, Plugin: plugin}, logf)
	if err != nil {
		fmt.Fprintf(stderr, "autofs-restore-hook node install: %v\n", err)
		if waitFlag && l.ID != "" {
			// What this install wrote goes again.
			uninstall(l.ID)
		}
		return ExitFailed
	}
	if !waitFlag {
		return ExitOK
	}
	logf("installed; waiting for SIGTERM to uninstall")
	wait()
	if l.ID == "" {
		return ExitOK // nothing installed (the package is there)
	}
	return uninstall(l.ID)
}

// signals receives SIGTERM and SIGINT from startWaiting on.
var signals = make(chan os.Signal, 1)

// startWaiting catches SIGTERM and SIGINT for waitForSignal.
func startWaiting() (stop func()) {
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	return func() { signal.Stop(signals) }
}

// waitForSignal blocks until SIGTERM or SIGINT (caught since startWaiting).
func waitForSignal() { <-signals }
