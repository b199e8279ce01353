package hook

// Wirings: what ran the hook for a restore (the CRIU plugin, an action
// script, the OCI hook's follower, an operator), and how the OCI hook sees
// that the CRIU restoring a container has the plugin loaded, so that it
// leaves that restore to the plugin.

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/procfile"
)

// The wirings, as the log's wiring field and the state file's phase marks
// name them.
const (
	// WiringPlugin: CRIU's plugin (it sets EnvWiring to this).
	WiringPlugin = "criu-plugin"
	// WiringScript: a CRIU action script (EnvWiring unset).
	WiringScript = "action-script"
	// WiringOCI: the OCI hook, or the follower it started.
	WiringOCI = "oci-hook"
	// WiringCLI: the fix command of an operator.
	WiringCLI = "fix"
)

// PluginFile is the file name of the CRIU plugin (make plugin, the
// package's /usr/lib/criu/autofs-restore-hook.so): a CRIU process that has
// it mapped runs it at every restore.
const PluginFile = "autofs-restore-hook.so"

// maxMaps bounds the read of a process's /proc/PID/maps (mapsHold): CRIU
// maps some hundred areas (a line of about 100 bytes each), a plugin or a
// library a few more. The processes asked are the host's (a tracer, a
// runtime's child), but the bound costs nothing.
const maxMaps = 4 << 20

// restoringCRIU is the pid of the CRIU process that restores the container
// whose init is pid, or 0 when none is seen: the init's tracer if that is
// CRIU (it stops every restored task before it resumes them), else a CRIU
// among the other children of the init's parent (runc and crun restore
// with CRIU's --restore-sibling: the restored init is CRIU's sibling, and
// the OCI hook runs before CRIU traces it).
func restoringCRIU(pid int) int {
	st, err := proc.ReadStatus(pid)
	if err != nil {
		return 0
	}
	if t := st.TracerPid(); isCRIU(t) {
		return t
	}
	ppid, _ := strconv.Atoi(st["PPid"])
	if ppid <= 1 {
		return 0
	}
	if isCRIU(ppid) {
		return ppid
	}
	parent := "/proc/" + strconv.Itoa(ppid) + "/task"
	tasks, err := os.ReadDir(parent)
	if err != nil {
		return 0
	}
	for _, task := range tasks {
		b, err := procfile.Read(parent+"/"+task.Name()+"/children", procfile.MaxCgroup)
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if c, err := strconv.Atoi(f); err == nil && c != pid && isCRIU(c) {
				return c
			}
		}
	}
	return 0
}

// byWiring is " by the WIRING" for a phase mark's wiring, "" for none (a
// state file written before marks named one).
func byWiring(w string) string {
	if w == "" {
		return ""
	}
	return " by the " + w
}

// pluginLoaded tells whether the CRIU process criu has the plugin mapped
// (CRIU loads every plugin of its plugin directory when it starts).
func pluginLoaded(criu int) bool { return criu > 0 && mapsHold(criu, PluginFile) }

// mapsHold tells whether process pid has a file named base mapped (any
// directory).
func mapsHold(pid int, base string) bool {
	b, err := procfile.Read("/proc/"+strconv.Itoa(pid)+"/maps", maxMaps)
	if err != nil {
		return false
	}
	for line := range bytes.Lines(b) {
		f := strings.Fields(string(line))
		// A file replaced since it was mapped (a package upgrade) is
		// still that file: "PATH (deleted)".
		if len(f) >= 6 && filepath.Base(strings.TrimSuffix(strings.Join(f[5:], " "), " (deleted)")) == base {
			return true
		}
	}
	return false
}
