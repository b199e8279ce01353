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

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/procfile"
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
//
// Only host processes count: each must share the hook's pid and mount
// namespaces and be older than the one below it, so that a pid freed by
// an ancestor that exited (the plugin's post-resume is detached) and
// taken by a process of a restored container is not read.
func identityFromAncestors() Identity {
	var id Identity
	self, err := proc.ReadStat(os.Getpid())
	if err != nil {
		return id
	}
	below := self.StartTime
	pid := self.PPid
	for i := 0; i < maxAncestors && pid > 1; i++ {
		st, err := proc.ReadStat(pid)
		if err != nil || st.StartTime > below || !onTheHost(pid) {
			break
		}
		argv := cmdlineOf(pid)
		if st2, err := proc.ReadStat(pid); err != nil || st2.StartTime != st.StartTime {
			break // gone, or another process by now
		}
		if len(argv) > 0 {
			id = id.merge(identityFromArgv(argv))
		}
		if id.ID != "" && id.Name != "" {
			break
		}
		below, pid = st.StartTime, st.PPid
	}
	return id
}

// onTheHost tells whether pid shares the hook's pid and mount namespaces.
func onTheHost(pid int) bool {
	same, err := proc.SameNamespaces(pid, "mnt", "pid")
	return err == nil && same["mnt"] && same["pid"]
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
var runtimeStateDirs = []stateDir{
	{"runc", "/run/runc", "state.json"},
	{"crun", "/run/crun", "status"},
}

// stateDir is a runtime's state directory: name's containers each have
// dir/ID/file.
type stateDir struct{ name, dir, file string }

// maxStateEntries bounds the scan of a runtime's state directory.
const maxStateEntries = 10000

// runtimeStateIndex maps the inits of the containers runc and crun know
// to their ids: those whose recorded init still runs (runtimeStateInit).
func runtimeStateIndex() map[int]Identity {
	idx := map[int]Identity{}
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
			if pid, ok := runtimeStateInit(filepath.Join(d.dir, n, d.file)); ok {
				idx[pid] = Identity{ID: n}
			}
		}
	}
	return idx
}

// runtimeStateInit reads the init's pid and start time from runc's
// state.json (init_process_pid, init_process_start) or crun's status
// (pid, process-start-time), and returns the pid only if that process
// still runs, started then, and is the init of its pid namespace: runc
// keeps the state of a stopped container, whose old pid may name any
// process by now.
func runtimeStateInit(path string) (int, bool) {
	b, err := procfile.Read(path, 1<<20)
	if err != nil {
		return 0, false
	}
	var s struct {
		InitPid   int    `json:"init_process_pid"`
		InitStart uint64 `json:"init_process_start"`
		Pid       int    `json:"pid"`
		Start     uint64 `json:"process-start-time"`
	}
	if json.Unmarshal(b, &s) != nil {
		return 0, false
	}
	pid, start := s.InitPid, s.InitStart
	if pid <= 0 {
		pid, start = s.Pid, s.Start
	}
	if pid <= 0 || start == 0 {
		return 0, false
	}
	return pid, isInit(pid, start)
}

// isInit tells whether pid runs, started at start (clock ticks after
// boot), and is pid 1 of its pid namespace.
func isInit(pid int, start uint64) bool {
	st, err := proc.ReadStat(pid)
	if err != nil || st.StartTime != start || st.Exited() {
		return false
	}
	return nsInit(pid)
}

// scopeID is a cgroup a runtime makes for a container, named by its id:
// podman's libpod-ID (systemd's .scope or cgroupfs), CRI-O's crio-ID,
// containerd's cri-containerd-ID, docker's docker-ID.
var scopeID = regexp.MustCompile(`^(?:libpod|crio|cri-containerd|docker)-([0-9a-f]{64})(?:\.scope)?$`)

// identityFromCgroup takes the outermost runtime-named cgroup (scopeID)
// of the init's cgroup paths: the runtime's, above anything the container
// could create. Below a delegated subtree (a user's systemd,
// user@UID.service) names are the user's to choose: none is taken.
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
			if strings.HasPrefix(comp, "user@") {
				break // a delegated subtree: its names are the user's
			}
			if m := scopeID.FindStringSubmatch(comp); m != nil {
				if depth < 0 || i < depth {
					best, depth = m[1], i
				}
				break
			}
		}
	}
	return best
}

// identify names the container whose init is p: what is known already
// (the OCI state, --container, a record of an earlier run), then the
// runtime's state, then the cgroup hint.
func identify(known Identity, p *proc.Process, rec *record) Identity {
	return identifyIn(known, p, rec, nil)
}

// identifyIn is identify with the runtimes' state read already (idx), for
// status --all; nil reads it.
func identifyIn(known Identity, p *proc.Process, rec *record, idx map[int]Identity) Identity {
	id := known
	if rec != nil {
		id = id.merge(rec.Container)
	}
	if id.ID == "" {
		if idx == nil {
			idx = runtimeStateIndex()
		}
		id = id.merge(idx[p.Pid])
	}
	if id.ID == "" {
		id = id.merge(identityFromCgroup(p.Pid))
	}
	return id
}

// nsInit tells whether pid is pid 1 of a pid namespace below the host's.
func nsInit(pid int) bool {
	s, err := proc.ReadStatus(pid)
	if err != nil {
		return false
	}
	ns := s.NSpid()
	return len(ns) > 1 && ns[len(ns)-1] == 1
}
