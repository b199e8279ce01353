package hook

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/syslog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/testenv"
)

// The command lines above the hook name the container: the runtime's
// restore its id (last), conmon its id and name. Nothing else does, and
// text that is not an id is not taken.
func TestIdentityFromArgv(t *testing.T) {
	long := strings.Repeat("ab12", 16)
	for _, tc := range []struct {
		argv []string
		want Identity
	}{
		{[]string{"runc", "restore", "--detach", "--bundle", "/b", "--pid-file", "/b/init.pid", "arh-lab-x-1"}, Identity{ID: "arh-lab-x-1"}},
		{[]string{"/usr/bin/runc", "--root", "/run/runc", "--systemd-cgroup", "restore", "-d", "--image-path", "/img", long}, Identity{ID: long}},
		{[]string{"/usr/local/bin/crun", "restore", "-b", "/b", "web"}, Identity{ID: "web"}},
		{[]string{"/usr/bin/conmon", "--api-version", "1", "-c", long, "-u", long, "-r", "/usr/bin/runc", "-n", "web-1", "--restore", "/x"}, Identity{ID: long, Name: "web-1"}},
		{[]string{"runc", "checkpoint", "x"}, Identity{}},
		{[]string{"runc", "restore"}, Identity{}},
		{[]string{"runc", "restore", "--detach"}, Identity{}},
		{[]string{"criu", "restore", "x"}, Identity{}},
		{[]string{"bash", "-c", "runc restore x"}, Identity{}},
		{[]string{"runc", "restore", "evil\nid"}, Identity{}},
		{[]string{"conmon", "-c", "a b", "-n", "x\x1b[2J"}, Identity{}},
	} {
		if got := identityFromArgv(tc.argv); got != tc.want {
			t.Errorf("%q: %+v, want %+v", tc.argv, got, tc.want)
		}
	}
}

// The cgroup hint takes the outermost cgroup a runtime named for a
// container, never one a container created below its own, nor any below
// a delegated subtree (a user's systemd), nor a bare id.
func TestIdentityFromCgroupIsTheOutermost(t *testing.T) {
	own, fake := strings.Repeat("1", 64), strings.Repeat("2", 64)
	for _, tc := range []struct{ file, want string }{
		{"0::/machine.slice/libpod-" + own + ".scope/init.scope\n", own},
		{"0::/machine.slice/libpod-" + own + ".scope/libpod-" + fake + ".scope\n", own},
		{"0::/kubepods/pod1/crio-" + own + ".scope\n", own},
		{"0::/system.slice/cri-containerd-" + own + ".scope\n", own},
		{"12:pids:/a/libpod-" + fake + "\n11:memory:/libpod-" + own + "\n", own},
		{"0::/user.slice/user-1000.slice/user@1000.service/app.slice/libpod-" + fake + ".scope\n", ""},
		{"0::/system.slice/runc-web.scope/" + fake + "\n", ""},
		{"0::/system.slice/runc-web.scope/libpod-" + fake + ".scope.x\n", ""},
		{"0::/arh-lab/x\n", ""},
		{"garbage", ""},
	} {
		if got := outermostID([]byte(tc.file)); got != tc.want {
			t.Errorf("%q: %q, want %q", tc.file, got, tc.want)
		}
	}
}

// anInit starts a process that is pid 1 of a pid namespace of its own,
// and returns its host pid.
func anInit(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("unshare", "-p", "--fork", "sleep", "600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return testenv.WaitChild(t, cmd.Process.Pid)
}

// runc's and crun's own state name the container whose init a pid is,
// only while that init runs: runc keeps the state of a stopped
// container, whose pid may name any process by now (a wrong start time),
// and a pid that is no init of a pid namespace is no container's.
func TestIdentityFromRuntimeState(t *testing.T) {
	init := anInit(t)
	st, err := proc.ReadStat(init)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	old := runtimeStateDirs
	t.Cleanup(func() { runtimeStateDirs = old })
	runtimeStateDirs = []stateDir{{"runc", filepath.Join(dir, "runc"), "state.json"}, {"crun", filepath.Join(dir, "crun"), "status"}}
	write := func(p, s string) {
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	pid, start := strconv.Itoa(init), strconv.FormatUint(st.StartTime, 10)
	write(filepath.Join(dir, "runc", "stopped", "state.json"), `{"init_process_pid": `+pid+`, "init_process_start": `+strconv.FormatUint(st.StartTime+1, 10)+`}`)
	write(filepath.Join(dir, "runc", "not-an-init", "state.json"), `{"init_process_pid": `+strconv.Itoa(os.Getpid())+`, "init_process_start": 1}`)
	write(filepath.Join(dir, "runc", "no-start", "state.json"), `{"init_process_pid": `+pid+`}`)
	write(filepath.Join(dir, "runc", "bad name", "state.json"), `{"init_process_pid": `+pid+`, "init_process_start": `+start+`}`)
	if got := runtimeStateIndex(); len(got) != 0 {
		t.Errorf("stale, foreign or unnamed state taken: %+v", got)
	}
	write(filepath.Join(dir, "crun", "mine", "status"), `{"pid": `+pid+`, "process-start-time": `+start+`}`)
	if got := runtimeStateIndex(); len(got) != 1 || got[init] != (Identity{ID: "mine"}) {
		t.Errorf("index %+v, want crun's mine for pid %d", got, init)
	}
	if f, err := stateDirLookup(runtimeStateDirs[1], "mine"); err != nil || f.Pid != init {
		t.Errorf("lookup of mine: %+v, %v", f, err)
	}
	if _, err := stateDirLookup(runtimeStateDirs[0], "stopped"); !errors.Is(err, errUnknown) {
		t.Errorf("a stopped container (its pid reused) found: %v", err)
	}
	if _, err := stateDirLookup(runtimeStateDirs[0], "../crun/mine"); !errors.Is(err, errUnknown) {
		t.Errorf("a path as a container id: %v, want unknown", err)
	}
}

// --container NAME finds one init, whichever runtimes know it; two inits
// under one name, or none, are errors that say to give --pid.
func TestLookupContainer(t *testing.T) {
	oldDirs, oldCLIs := runtimeStateDirs, cliLookups
	t.Cleanup(func() { runtimeStateDirs, cliLookups = oldDirs, oldCLIs })
	runtimeStateDirs = nil // only the lookups set below
	type fn = func(string) (found, error)
	knows := func(pid int, id Identity) fn {
		return func(string) (found, error) { return found{Pid: pid, ID: id}, nil }
	}
	unknown := func(string) (found, error) { return found{}, errUnknown }
	set := func(fs ...fn) {
		cliLookups = nil
		for i, f := range fs {
			cliLookups = append(cliLookups, runtimeLookup{"rt" + strconv.Itoa(i), f})
		}
	}
	a, b := anInit(t), anInit(t)
	set(unknown, knows(a, Identity{ID: "abc"}), knows(a, Identity{ID: "abc", Name: "web"}))
	if f, err := lookupContainer("web"); err != nil || f.Pid != a || f.ID != (Identity{ID: "abc", Name: "web"}) {
		t.Errorf("one container known twice: %+v, %v", f, err)
	}
	// A runtime's answer that is no container's init (a stale pid).
	set(knows(os.Getpid(), Identity{ID: "abc"}))
	if f, err := lookupContainer("web"); err == nil {
		t.Errorf("a pid that is no init taken as the container's: %+v", f)
	}
	set(knows(a, Identity{ID: "a"}), knows(b, Identity{ID: "b"}))
	if _, err := lookupContainer("web"); err == nil || !strings.Contains(err.Error(), "--pid") {
		t.Errorf("two containers by one name: %v, want an error naming --pid", err)
	}
	set(unknown, unknown)
	if _, err := lookupContainer("web"); err == nil || !strings.Contains(err.Error(), "--pid") {
		t.Errorf("no container: %v, want an error naming --pid", err)
	}
	if _, err := lookupContainer("web;rm -rf /"); err == nil {
		t.Errorf("a reference that is no name was looked up")
	}
	if f, err := parseLookup([]byte("0 abc web\n")); err == nil {
		t.Errorf("a stopped container (pid 0) was found: %+v", f)
	}
	if f, err := parseLookup([]byte("42 abc web\n")); err != nil || f.Pid != 42 || f.ID.Name != "web" {
		t.Errorf("parse: %+v, %v", f, err)
	}
}

// Every line carries the run's mode and container, in the log file and
// on stderr, as text or JSON; syslog gets the line without the time and
// tag that the journal adds itself.
func TestEveryLineCarriesTheRunsFields(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "log")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	old := syslogDial
	t.Cleanup(func() { syslogDial = old })
	syslogDial = func() (*syslog.Writer, error) {
		return syslog.Dial("unixgram", sock, syslog.LOG_DAEMON|syslog.LOG_INFO, "autofs-restore-hook")
	}
	for _, format := range []string{"text", "json"} {
		file := filepath.Join(t.TempDir(), "hook.log")
		var stderr bytes.Buffer
		l, done, err := newLogger(LogConfig{File: file, Format: format}, &stderr)
		if err != nil {
			t.Fatal(err)
		}
		setLogFields(l, logrus.Fields{"mode": "criu", "wiring": ""})
		setIdentity(l, Identity{ID: "abc"})
		l.Warn("before the name")
		setIdentity(l, Identity{Name: "web"})
		l.WithField("mount", "/srv/a").Info("after")
		done()
		b, _ := os.ReadFile(file)
		for where, out := range map[string]string{"file": string(b), "stderr": stderr.String()} {
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if len(lines) != 2 {
				t.Fatalf("%s %s: %q", format, where, out)
			}
			for i, line := range lines {
				fields := map[string]string{}
				if format == "json" {
					if err := json.Unmarshal([]byte(line), &fields); err != nil {
						t.Fatalf("%s: %v: %q", where, err, line)
					}
				} else {
					for _, kv := range strings.Fields(line) {
						if k, v, ok := strings.Cut(kv, "="); ok {
							fields[k] = v
						}
					}
				}
				if fields["mode"] != "criu" || fields["container"] != "abc" || (i == 1) != (fields["name"] == "web") || fields["wiring"] != "" {
					t.Errorf("%s %s line %d: fields %v", format, where, i, fields)
				}
				if format == "json" && (fields["time"] == "" || fields["msg"] == "" || fields["level"] == "") {
					t.Errorf("%s line without time, level or msg: %q", where, line)
				}
			}
		}
		buf := make([]byte, 4096)
		for i := 0; i < 2; i++ {
			conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, err := conn.Read(buf)
			if err != nil {
				t.Fatalf("%s: syslog got %d datagrams: %v", format, i, err)
			}
			_, msg, _ := strings.Cut(string(buf[:n]), "]: ")
			if strings.Contains(msg, "autofs-restore-hook") || strings.Contains(msg, time.Now().Format("2006-01-02T")) || !strings.Contains(msg, "container") {
				t.Errorf("%s: syslog message with a second stamp or tag, or no fields: %q", format, msg)
			}
			if format == "text" && !strings.HasPrefix(msg, "warning: ") && !strings.HasPrefix(msg, "info: ") {
				t.Errorf("syslog message does not start with its level: %q", msg)
			}
		}
	}
	if _, _, err := newLogger(LogConfig{Format: "xml", NoSyslog: true}, io.Discard); err == nil {
		t.Errorf("log format xml accepted")
	}
}

// Text a container chose cannot make a text line name another
// container: grepping for container=ID finds only that container's lines.
func TestLogLinesCannotBeMadeToNameAnotherContainer(t *testing.T) {
	l, done, err := newLogger(LogConfig{NoSyslog: true}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer done()
	var buf bytes.Buffer
	l.SetOutput(&buf)
	setLogFields(l, logrus.Fields{"mode": "criu"})
	setIdentity(l, Identity{ID: "attacker", Name: "evil"})
	forged := "/a container=victim name=prod-db mode=fix"
	l.WithField("cgroup_root", forged).Info("cgroups prepared: created " + forged)
	out := buf.String()
	if strings.Contains(out, "container=victim") || strings.Contains(out, "name=prod-db") || strings.Contains(out, "mode=fix") {
		t.Errorf("a line names another container: %q", out)
	}
	if !strings.Contains(out, " container=attacker") || !strings.Contains(out, " name=evil") || !strings.Contains(out, `container\075victim`) {
		t.Errorf("the line lost its own identity or the forged text: %q", out)
	}
}

// CRI-O's name annotation names the container only with CRI-O's id
// annotation for the same container: a podman user's annotations do not.
func TestAnnotatedName(t *testing.T) {
	for _, tc := range []struct {
		a    map[string]string
		want string
	}{
		{map[string]string{"io.kubernetes.cri-o.ContainerID": "c1", "io.kubernetes.cri-o.Name": "k8s_web_pod_ns_uid_0"}, "k8s_web_pod_ns_uid_0"},
		{map[string]string{"io.kubernetes.cri-o.Name": "prod-db"}, ""},
		{map[string]string{"io.kubernetes.cri-o.ContainerID": "c2", "io.kubernetes.cri-o.Name": "prod-db"}, ""},
		{map[string]string{"io.kubernetes.container.name": "prod-db"}, ""},
		{map[string]string{"io.kubernetes.cri-o.ContainerID": "c1", "io.kubernetes.cri-o.Name": "a b"}, ""},
	} {
		if got := annotatedName("c1", tc.a); got != tc.want {
			t.Errorf("%v: %q, want %q", tc.a, got, tc.want)
		}
	}
}
