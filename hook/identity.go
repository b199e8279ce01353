package hook

// Which container a run is about: its id and, where the runtime gives
// one, its name, for the fields of every log line, the state file and
// status. Only what the host's runtime wrote is believed: the OCI state,
// the runtime's and conmon's command lines (processes above the hook),
// the runtime's own state files under /run. A container's cgroup path
// comes last, as a hint: a container that may create cgroups can name
// one below its own as it likes, so only the outermost component that
// looks like an id is taken, which is the runtime's.

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/procfile"
	"github.com/autofs-restore-hook/autofs-restore-hook/mounts"
)

// Identity names a container. Either field may be empty when nothing
// trusted says it.
type Identity struct {
	ID   string `json:"id,omitempty"`
	Name string `json:"name,omitempty"`
}

// merge fills what id lacks from o.
func (id Identity) merge(o Identity) Identity {
	if id.ID == "" {
		id.ID = o.ID
	}
	if id.Name == "" && (id.ID == o.ID || o.ID == "") {
		id.Name = o.Name
	}
	return id
}

// restoringRuntimes are the OCI runtimes whose command line
// `RUNTIME [global options] restore [options] ID` names the container
// being restored last.
var restoringRuntimes = map[string]bool{"runc": true, "crun": true, "runsc": true, "youki": true, "krun": true}

// maxAncestors bounds the walk up from the hook: hook, CRIU, runtime,
// conmon, podman or CRI-O, and a margin.
const maxAncestors = 8

// identityFromAncestors reads the command lines of the processes above
// this one (host processes: the CRIU that runs an action script or the
// plugin, the runtime that runs CRIU or the OCI hook, the conmon that runs
// the runtime). The runtime's `restore` names the container's id; conmon
// (podman's, CRI-O's) names its id and name with -c and -n.
func identityFromAncestors() Identity {
	var id Identity
	pid := os.Getppid()
	for i := 0; i < maxAncestors && pid > 1; i++ {
		argv := cmdlineOf(pid)
		if len(argv) > 0 {
			id = id.merge(identityFromArgv(argv))
		}
		if id.ID != "" && id.Name != "" {
			break
		}
		st, err := mounts.ReadStat(pid)
		if err != nil {
			break
		}
		pid = st.PPid
	}
	return id
}

// cmdlineOf is a host process's command line, bounded.
func cmdlineOf(pid int) []string {
	b, err := procfile.Read("/proc/"+strconv.Itoa(pid)+"/cmdline", procfile.MaxCmdline)
	if err != nil || len(b) == 0 {
		return nil
	}
	return strings.Split(string(bytes.TrimRight(b, "\x00")), "\x00")
}

// identityFromArgv reads one command line: a runtime's restore, or
// conmon's.
func identityFromArgv(argv []string) Identity {
	base := filepath.Base(argv[0])
	switch {
	case base == "conmon":
		var id Identity
		for i := 1; i+1 < len(argv); i++ {
			switch argv[i] {
			case "-c", "--cid":
				id.ID = argv[i+1]
			case "-n", "--name":
				id.Name = argv[i+1]
			}
		}
		if !validID(id.ID) {
			id.ID = ""
		}
		if !validName(id.Name) {
			id.Name = ""
		}
		return id
	case restoringRuntimes[base]:
		for i, a := range argv[1:] {
			if a == "restore" && i+2 < len(argv) {
				last := argv[len(argv)-1]
				if validID(last) && !strings.HasPrefix(last, "-") {
					return Identity{ID: last}
				}
			}
		}
	}
	return Identity{}
}

// validID and validName keep what goes into a log field printable and
// short: runtimes take ids of letters, digits and . _ -.
var (
	idPattern   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)
	namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,252}$`)
)

func validID(s string) bool   { return idPattern.MatchString(s) }
func validName(s string) bool { return namePattern.MatchString(s) }

// runtimeStateDirs are where runc and crun keep one directory per
// container, named by its id, when run as root (podman and CRI-O use the
// same roots by default).
var runtimeStateDirs = []struct{ dir, file string }{
	{"/run/runc", "state.json"},
	{"/run/crun", "status"},
}

// maxStateEntries bounds the scan of a runtime's state directory.
const maxStateEntries = 10000

// identityFromRuntimeState finds the container whose init is p in the
// runtimes' own state (host files only root writes).
func identityFromRuntimeState(p *mounts.Process) Identity {
	for _, d := range runtimeStateDirs {
		f, err := os.Open(d.dir)
		if err != nil {
			continue
		}
		names, _ := f.Readdirnames(maxStateEntries)
		f.Close()
		for _, n := range names {
			if !validID(n) {
				continue
			}
			if pid, ok := runtimeStatePid(filepath.Join(d.dir, n, d.file)); ok && pid == p.Pid {
				return Identity{ID: n}
			}
		}
	}
	return Identity{}
}

// runtimeStatePid reads the init's pid from runc's state.json
// (init_process_pid) or crun's status (pid).
func runtimeStatePid(path string) (int, bool) {
	b, err := procfile.Read(path, 1<<20)
	if err != nil {
		return 0, false
	}
	var s struct {
		InitPid int `json:"init_process_pid"`
		Pid     int `json:"pid"`
	}
	if json.Unmarshal(b, &s) != nil {
		return 0, false
	}
	if s.InitPid > 0 {
		return s.InitPid, true
	}
	return s.Pid, s.Pid > 0
}

// longID is a container id as podman, CRI-O and containerd make them.
var longID = regexp.MustCompile(`[0-9a-f]{64}`)

// identityFromCgroup takes the outermost 64-hex-digit id in the
// init's cgroup paths (libpod-ID.scope, crio-ID.scope, ID): the
// runtime's component, above anything the container could create.
func identityFromCgroup(pid int) Identity {
	b, err := procfile.Read("/proc/"+strconv.Itoa(pid)+"/cgroup", procfile.MaxCgroup)
	if err != nil {
		return Identity{}
	}
	return Identity{ID: outermostID(b)}
}

// outermostID is the id of outermost depth in a /proc/PID/cgroup file.
func outermostID(b []byte) string {
	best, depth := "", -1
	for _, line := range strings.Split(string(b), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		for i, comp := range strings.Split(parts[2], "/") {
			if m := longID.FindString(comp); m != "" && (depth < 0 || i < depth) {
				best, depth = m, i
				break
			}
		}
	}
	return best
}

// identify names the container whose init is p: what is known already
// (the OCI state, --container, a record of an earlier run), then the
// runtime's state, then the cgroup hint.
func identify(known Identity, p *mounts.Process, rec *record) Identity {
	id := known
	if rec != nil {
		id = id.merge(rec.Container)
	}
	if id.ID == "" {
		id = id.merge(identityFromRuntimeState(p))
	}
	if id.ID == "" {
		id = id.merge(identityFromCgroup(p.Pid))
	}
	return id
}
