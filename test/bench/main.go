// Command bench measures what autofs-restore-hook costs a restore and
// prints the table of BENCHMARKS.md (make bench). It needs root and the
// end-to-end lab (test/lab), which it provisions.
//
//	go run ./test/bench -bin bin/autofs-restore-hook [-runs 5] [-sizes 1,20,100] [-scale 1,10,20] [-only TABLES]
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/autofs-restore-hook/autofs-restore-hook/hook"
)

var (
	bin    = flag.String("bin", "bin/autofs-restore-hook", "the binary to measure")
	runs   = flag.Int("runs", 5, "runs per contender (medians are reported)")
	only   = flag.String("only", "", "run only these tables, comma-separated: noop, follower, systemd, automount, scale")
	sizes  = flag.String("sizes", "1,20,100", "numbers of automount points")
	noops  = flag.Int("noops", 200, "invocations for the no-op cost")
	labDir string
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-wrap" {
		wrapMain(os.Args[2:])
	}
	flag.Parse()
	_, file, _, _ := runtime.Caller(0)
	labDir = filepath.Join(filepath.Dir(file), "..", "lab")
	abs, err := filepath.Abs(*bin)
	check(err)
	*bin = abs
	fmt.Printf("autofs-restore-hook benchmarks, %s\n", time.Now().UTC().Format(time.RFC3339))
	fmt.Printf("machine: %s, %d CPUs, kernel %s\n\n", hostname(), runtime.NumCPU(), kernel())
	want := func(table string) bool { return *only == "" || slices.Contains(strings.Split(*only, ","), table) }
	if want("noop") {
		noopTable()
		fmt.Println()
	}
	must(run(10*time.Minute, filepath.Join(labDir, "provision.sh")))
	ns := ints(*sizes)
	if want("follower") {
		followerTable()
		fmt.Println()
	}
	if want("systemd") {
		systemdTable(ns)
		fmt.Println()
	}
	if want("automount") {
		automountTable(ns)
		fmt.Println()
	}
	if want("scale") {
		scaleTable(ints(*scaleSizes))
	}
}

// ---- the OCI hook's follower ----

// followerTable restores a container wired with the OCI hook (runc's
// createRuntime, as the lab wires it) again and again, and sets the CPU
// of the hook's detached follower (its own report in the log: user and
// system time, its workers included) against the CPU of the restore
// itself (runc, CRIU and the hook's own invocation: the rusage of the
// whole lab.sh restore tree).
func followerTable() {
	fmt.Println("## 4. The OCI hook's follower: CPU per restore against the restore's own")
	fmt.Println()
	fmt.Println("| container | restore CPU (runc, CRIU, hook invocation) | follower CPU following the restore | following / restore | follower CPU in all (with pre- and post-resume) | polls | of which before the init's own name (slow polls) | mount-table reads | pre-resume window: caught, entered, missed |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|")
	for _, kind := range []string{"systemd", "automount"} {
		logPath := filepath.Join(os.TempDir(), fmt.Sprintf("arh-bench-follower-%d.log", os.Getpid()))
		os.Remove(logPath)
		c := &container{name: fmt.Sprintf("arh-lab-bench-follow-%s-%d", kind, os.Getpid())}
		current = c
		lab("down", c.name)
		must(lab("up", c.name, kind, "--no-trigger", "--hook", *bin,
			"--hook-env", hook.EnvLogFile+"="+logPath, "--hook-env", hook.EnvNoSyslog+"=1"))
		must(lab("checkpoint", c.name))
		var restoreCPU, followCPU, allCPU []time.Duration
		var polls, slowPolls, tableReads []int
		windows := map[string]int{}
		for r := 0; r < *runs; r++ {
			if r > 0 {
				must(lab("stop", c.name))
			}
			cmd := exec.Command("timeout", "-s", "KILL", "300", "bash", filepath.Join(labDir, "lab.sh"), "restore", c.name)
			out, err := cmd.CombinedOutput()
			if err != nil {
				fatal("lab.sh restore %s: %v\n%s\n", c.name, err, out)
			}
			ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
			restoreCPU = append(restoreCPU, time.Duration(ru.Utime.Nano()+ru.Stime.Nano()))
			out2, err := lab("pid", c.name)
			check(err)
			pid, err := strconv.Atoi(lastLine(out2))
			check(err)
			c.fixed = append(c.fixed, pid)
			rep := waitFollowerReport(pid)
			cpu, all := time.Duration(rep.Following), time.Duration(rep.CPU)
			p, reads := rep.Polls, rep.Inspections
			slow := rep.NamedPolls
			if slow == 0 {
				slow = p // the init's name never changed: every poll was slow
			}
			slowPolls = append(slowPolls, slow)
			win := rep.Window
			allCPU = append(allCPU, all)
			followCPU, polls, tableReads = append(followCPU, cpu), append(polls, p), append(tableReads, reads)
			windows[win]++
		}
		c.down()
		os.Remove(logPath)
		rc, fc := median(restoreCPU), median(followCPU)
		fmt.Printf("| %s | %s | %s | %.1f %% | %s | %d | %d | %d | %d, %d, %d |\n", kind, ms(rc), ms(fc), 100*float64(fc)/float64(rc), ms(median(allCPU)), medianInt(polls), medianInt(slowPolls), medianInt(tableReads), windows["caught"], windows["entered"], windows["missed"])
	}
	fmt.Printf("\nMedians of %d restores of one checkpoint each. The follower's CPU is its own report (getrusage of itself and its children): following is what it spent watching the restore, apart from the two fixes it runs (which `fix` also costs). The pre-resume window is caught when pre-resume ended while CRIU still held the tasks, entered when it began then but the tasks ran before it ended (CRIU does not wait for the follower), missed when the tasks ran before it began.\n", *runs)
}

// waitFollowerReport waits until the state file of the container whose
// init is pid holds its follower's report (hook.FollowerReport).
func waitFollowerReport(pid int) *hook.FollowerReport {
	o, err := waitFixEnded(pid, hook.WiringOCI, time.Now().Add(3*time.Minute), 100*time.Millisecond)
	if err != nil {
		fatal("no report of the follower within 3 minutes: %v\n", err)
	}
	return o.Follower
}

// waitLogged waits, reading the log every poll, until n of its lines
// match re (or deadline), and returns the matching lines.
func waitLogged(path string, re *regexp.Regexp, n int, deadline time.Time, poll time.Duration) ([]string, error) {
	for {
		b, _ := os.ReadFile(path)
		var lines []string
		for _, l := range strings.Split(string(b), "\n") {
			if re.MatchString(l) {
				lines = append(lines, l)
			}
		}
		if len(lines) >= n {
			return lines, nil
		}
		if time.Now().After(deadline) {
			return lines, fmt.Errorf("%d of %d lines matching %q in the hook's log by the deadline", len(lines), n, re)
		}
		time.Sleep(poll)
	}
}

func medianInt(xs []int) int {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// ---- no-op cost ----

func noopTable() {
	fmt.Println("## 1. No-op cost (one invocation, wall time and peak RSS)")
	fmt.Println()
	fmt.Println("| invocation | median | p95 | peak RSS (max) |")
	fmt.Println("|---|---|---|---|")
	hello := buildHello()
	defer os.RemoveAll(filepath.Dir(hello))
	for _, c := range []struct {
		name  string
		env   []string
		stdin string
		path  string
	}{
		{"reference: `/bin/true` (exec floor of this machine)", nil, "", "/bin/true"},
		{"reference: static Go hello world (Go runtime floor)", nil, "", hello},
		{"CRIU action `pre-dump` (ignored)", []string{"CRTOOLS_SCRIPT_ACTION=pre-dump", "CRTOOLS_INIT_PID=1"}, "", ""},
		{"CRIU action `network-lock` (ignored)", []string{"CRTOOLS_SCRIPT_ACTION=network-lock", "CRTOOLS_INIT_PID=1"}, "", ""},
		// What the action script the CRIU plugin adds on a cgroup v2 host
		// costs a restore at pre-resume, which the plugin runs itself.
		{"CRIU action `pre-resume` left to the plugin (`AUTOFS_RESTORE_HOOK_PLUGIN_ACTIONS`)", []string{"CRTOOLS_SCRIPT_ACTION=pre-resume", "CRTOOLS_INIT_PID=1", "AUTOFS_RESTORE_HOOK_PLUGIN_ACTIONS=post-setup-namespaces pre-resume post-resume"}, "", ""},
		{"OCI hook, fresh start (`creating`)", []string{"AUTOFS_RESTORE_HOOK_NO_SYSLOG=1"}, `{"ociVersion":"1.0.2","id":"bench","status":"creating","pid":0,"bundle":"/tmp"}`, ""},
	} {
		var walls []time.Duration
		var rss int64
		for i := 0; i < *noops; i++ {
			path := *bin
			if c.path != "" {
				path = c.path
			}
			cmd := exec.Command(path)
			cmd.Env = c.env
			cmd.Stdin = strings.NewReader(c.stdin)
			start := time.Now()
			check(cmd.Run())
			walls = append(walls, time.Since(start))
			if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok && ru.Maxrss > rss {
				rss = ru.Maxrss
			}
		}
		slices.Sort(walls)
		fmt.Printf("| %s | %s | %s | %.1f MB |\n", c.name, ms(walls[len(walls)/2]), ms(walls[len(walls)*95/100]), float64(rss)/1024)
	}
	fmt.Printf("\n%d invocations each; targets: 5 ms median, 15 MB peak RSS.\n", *noops)
}

// buildHello builds a static Go program that does nothing, to show what
// the Go runtime alone costs here.
func buildHello() string {
	dir, err := os.MkdirTemp("", "arh-bench-hello-")
	check(err)
	src := filepath.Join(dir, "main.go")
	check(os.WriteFile(src, []byte("package main\n\nfunc main() {}\n"), 0o644))
	out := filepath.Join(dir, "hello")
	cmd := exec.Command("go", "build", "-o", out, src)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GO111MODULE=off")
	b, err := cmd.CombinedOutput()
	if err != nil {
		fatal("build hello: %v\n%s\n", err, b)
	}
	return out
}

// ---- fix on a real restored container ----

type container struct {
	name  string
	fixed []int // inits the hook fixed: their state files go with the container
}

// current is the container being measured, removed by fatal on failure.
var current *container

func up(kind string, n int) *container {
	c := &container{name: fmt.Sprintf("arh-lab-bench-%s-%d-%d", kind, n, os.Getpid())}
	current = c
	lab("down", c.name)
	args := []string{"up", c.name, kind, "--no-trigger"}
	if kind == "automount" {
		args = append(args, "--count", strconv.Itoa(n))
	} else if n > 3 { // the systemd container has three units of its own
		args = append(args, "--count", strconv.Itoa(n-3))
	}
	must(lab(args...))
	must(lab("checkpoint", c.name))
	return c
}

// fresh restores the checkpoint again, without any hook.
func (c *container) fresh() int {
	must(lab("stop", c.name))
	must(lab("restore", c.name, "--unwire"))
	out, err := lab("pid", c.name)
	check(err)
	pid, err := strconv.Atoi(lastLine(out))
	check(err)
	return pid
}

// down removes the container and the hook's state files of every init
// the hook fixed in it (lab.sh down only knows the current one; the hook
// removes the others at its next run, which the last restore never gets).
func (c *container) down() {
	lab("down", c.name)
	for _, pid := range c.fixed {
		files, _ := filepath.Glob(filepath.Join(hook.StateDir, strconv.Itoa(pid)+"-*"))
		for _, f := range files {
			if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
				fmt.Fprintf(os.Stderr, "remove the hook's state: %v\n", err)
			}
		}
	}
	current = nil
}

// fatal reports an error, removes the container being measured, and exits.
func fatal(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format, args...)
	if current != nil {
		current.down()
	}
	for _, c := range fleet {
		c.down()
	}
	os.Exit(1)
}

func lab(args ...string) (string, error) {
	return run(5*time.Minute, "bash", append([]string{filepath.Join(labDir, "lab.sh")}, args...)...)
}

// timed runs a contender and returns its wall time.
func timed(name string, args ...string) time.Duration {
	start := time.Now()
	out, err := run(2*time.Minute, name, args...)
	d := time.Since(start)
	if err != nil {
		fatal("%s %v: %v\n%s\n", name, args, err, out)
	}
	return d
}

func (c *container) hookFix(pid int) time.Duration {
	c.fixed = append(c.fixed, pid)
	return timed(*bin, "fix", "--pid", strconv.Itoa(pid), "--no-syslog", "--log-level", "error")
}

// automountUnits lists the .automount units of the container's systemd.
func units(pid int) []string {
	out, err := run(time.Minute, "nsenter", "-t", strconv.Itoa(pid), "-m", "-p", "--", "systemctl", "list-units", "--plain", "--no-legend", "--all", "--state=loaded", "*.automount")
	check(err)
	var us []string
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			us = append(us, f[0])
		}
	}
	return us
}

func systemdTable(ns []int) {
	fmt.Println("## 3. Fix of a restored systemd container (N .automount units)")
	fmt.Println()
	fmt.Printf("Time from the start of the fix to every path usable; median of %d runs, contenders alternated run by run, each on a fresh restore of the same checkpoint.\n\n", *runs)
	fmt.Println("| N | hook `fix` | unavoidable: one `systemctl restart` of all units | hook − unavoidable | shell baseline (per-unit nsenter/systemctl/mount) | hook / baseline |")
	fmt.Println("|---|---|---|---|---|---|")
	for _, n := range ns {
		c := up("systemd", n)
		count := len(units(c.fresh()))
		var hookT, restartT, shellT []time.Duration
		for r := 0; r < *runs; r++ {
			order := []int{0, 1, 2}
			for i := 0; i < r%3; i++ {
				order = append(order[1:], order[0])
			}
			for _, k := range order {
				pid := c.fresh()
				switch k {
				case 0:
					hookT = append(hookT, c.hookFix(pid))
				case 1:
					us := units(pid)
					restartT = append(restartT, timed("nsenter", append([]string{"-t", strconv.Itoa(pid), "-m", "-p", "--", "systemctl", "restart"}, us...)...))
				case 2:
					shellT = append(shellT, timed("bash", filepath.Join(labDir, "..", "bench", "baseline.sh"), strconv.Itoa(pid)))
				}
			}
		}
		c.down()
		h, u, s := median(hookT), median(restartT), median(shellT)
		fmt.Printf("| %d | %s | %s | %s | %s | %.2f |\n", count, ms(h), ms(u), ms(h-u), ms(s), float64(h)/float64(s))
	}
}

func automountTable(ns []int) {
	fmt.Println("## 3b. Fix of a restored automount container (N direct map entries)")
	fmt.Println()
	fmt.Println("| N direct entries | hook `fix` | unavoidable: SIGKILL + start of the daemon (nsenter) | hook − unavoidable |")
	fmt.Println("|---|---|---|---|")
	for _, n := range ns {
		c := up("automount", n)
		var hookT, killT []time.Duration
		for r := 0; r < *runs; r++ {
			order := []int{0, 1}
			if r%2 == 1 {
				order = []int{1, 0}
			}
			for _, k := range order {
				pid := c.fresh()
				if k == 0 {
					hookT = append(hookT, c.hookFix(pid))
					continue
				}
				killT = append(killT, timed("nsenter", "-t", strconv.Itoa(pid), "-a", "--", "sh", "-c",
					"kill -9 $(cat /run/automount.pid); while kill -0 $(cat /run/automount.pid) 2>/dev/null; do :; done; rm -f /run/autofs-running; "+
						"setsid /usr/sbin/automount -p /run/automount.pid </dev/null >/dev/null 2>&1; "+
						"n=$(grep -c ' autofs ' /proc/self/mountinfo); while [ $(grep ' autofs ' /proc/self/mountinfo | grep -c 'fd=-1') -gt 0 ] || ! grep -q \"pgrp=$(cat /run/automount.pid),\" /proc/self/mountinfo; do :; done"))
			}
		}
		c.down()
		h, u := median(hookT), median(killT)
		fmt.Printf("| %d | %s | %s | %s |\n", n, ms(h), ms(u), ms(h-u))
	}
}

// ---- helpers ----

// ints parses a comma-separated list of numbers (a flag's value).
func ints(list string) []int {
	var ns []int
	for _, s := range strings.Split(list, ",") {
		n, err := strconv.Atoi(s)
		check(err)
		ns = append(ns, n)
	}
	return ns
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }

func run(timeout time.Duration, name string, args ...string) (string, error) {
	cmd := exec.Command("timeout", append([]string{"-s", "KILL", strconv.Itoa(int(timeout.Seconds())), name}, args...)...)
	var b bytes.Buffer
	cmd.Stdout, cmd.Stderr = &b, &b
	err := cmd.Run()
	return b.String(), err
}

func must(out string, err error) {
	if err != nil {
		fatal("%v\n%s\n", err, out)
	}
}

func check(err error) {
	if err != nil {
		fatal("%v\n", err)
	}
}

func lastLine(s string) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(l[len(l)-1])
}

func hostname() string { h, _ := os.Hostname(); return h }

func kernel() string {
	b, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return strings.TrimSpace(string(b))
}
