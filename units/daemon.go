package units

// The automount daemon as the hook captures it from the host's /proc: its
// command line, environment, credentials and the files it runs with, and
// whether it can be started again with exactly that power.

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/procfile"
	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
)

// Daemon is what is captured of an automount daemon before it is killed:
// everything needed to start it again exactly as it ran.
type Daemon struct {
	Argv      []string `json:"argv"`
	Env       []string `json:"env"`
	UID       []uint32 `json:"uid"` // real, effective, saved, fs
	GID       []uint32 `json:"gid"`
	Groups    []uint32 `json:"groups"`
	CapInh    uint64   `json:"cap_inh"`
	CapPrm    uint64   `json:"cap_prm"`
	CapEff    uint64   `json:"cap_eff"`
	CapBnd    uint64   `json:"cap_bnd"`
	CapAmb    uint64   `json:"cap_amb"`
	NoNewPriv bool     `json:"no_new_privs"`
	Seccomp   int      `json:"seccomp"`
	// Cgroups are the lines of /proc/PID/cgroup.
	Cgroups []string `json:"cgroups"`
	// Stdio are the paths of fds 0, 1 and 2 in the container when they
	// are files there (a log file, /dev/null); "" otherwise. The new
	// daemon opens them again inside the container, so its log goes on
	// where it went.
	Stdio [3]string `json:"stdio"`
	// NsPid is its pid in the container.
	NsPid int `json:"ns_pid"`
	// Exe is the path of its executable in the container.
	Exe string `json:"exe"`
	// Cwd is the path of its working directory in the container.
	Cwd string `json:"cwd"`
	// SeccompFilterCount is Seccomp_filters of its status (-1 where the
	// kernel does not say); SeccompFilters are the filters, oldest first,
	// read through ptrace when Seccomp is 2 (RespawnAutomount).
	SeccompFilterCount int             `json:"seccomp_filter_count"`
	SeccompFilters     []SeccompFilter `json:"seccomp_filters,omitempty"`
	// Securebits are its securebits (prctl PR_GET_SECUREBITS, run in
	// the held daemon: held.go), nil where they were not read (an
	// architecture the hook cannot read them on).
	Securebits *uint32 `json:"securebits,omitempty"`
	// Rlimits are its resource limits, soft and hard, by resource
	// number (RLIMIT_CPU = 0 ...), from /proc/PID/limits.
	Rlimits     [][2]uint64 `json:"rlimits"`
	OOMScoreAdj int         `json:"oom_score_adj"`
	Umask       uint32      `json:"umask"`
	Personality uint32      `json:"personality"`
	// LSMLabel is its label under the kernel's major security module
	// (/proc/PID/attr/current: an AppArmor profile with its mode, an
	// SELinux context), "" where no module gives one. AppArmor says
	// that module is AppArmor (attr/apparmor/current answers too).
	LSMLabel string `json:"lsm_label,omitempty"`
	AppArmor bool   `json:"apparmor,omitempty"`
}

// CaptureDaemon reads from the host's /proc/PID what it takes to start
// the daemon again as it runs.
func CaptureDaemon(pid int) (*Daemon, error) {
	dir := "/proc/" + strconv.Itoa(pid) + "/"
	cmdline, err := procfile.Read(dir+"cmdline", procfile.MaxCmdline)
	if err != nil || len(cmdline) == 0 {
		return nil, fmt.Errorf("read command line of %d: %v", pid, err)
	}
	environ, err := procfile.Read(dir+"environ", procfile.MaxEnviron)
	if err != nil {
		return nil, fmt.Errorf("read environment of %d: %w", pid, err)
	}
	st, err := proc.ReadStatus(pid)
	if err != nil {
		return nil, err
	}
	cg, err := procfile.Read(dir+"cgroup", procfile.MaxCgroup)
	if err != nil {
		return nil, fmt.Errorf("read cgroups of %d: %w", pid, err)
	}
	d := &Daemon{Argv: splitNul(cmdline), Env: splitNul(environ), Cgroups: strings.Split(strings.TrimSpace(string(cg)), "\n")}
	for i := range d.Stdio {
		if l, err := os.Readlink(dir + "fd/" + strconv.Itoa(i)); err == nil && strings.HasPrefix(l, "/") && !strings.HasSuffix(l, " (deleted)") {
			d.Stdio[i] = l
		}
	}
	if ns := st.NSpid(); len(ns) > 0 {
		d.NsPid = ns[len(ns)-1]
	}
	if d.Exe, err = os.Readlink(dir + "exe"); err != nil {
		return nil, fmt.Errorf("read executable of %d: %w", pid, err)
	}
	// A binary replaced since the start reads "PATH (deleted)": the path
	// is still what to compare with.
	d.Exe = strings.TrimSuffix(d.Exe, " (deleted)")
	if d.Cwd, err = os.Readlink(dir + "cwd"); err != nil {
		return nil, fmt.Errorf("read working directory of %d: %w", pid, err)
	}
	var errs []error
	d.UID, err = uints(st["Uid"], 10, 32)
	errs = append(errs, err)
	d.GID, err = uints(st["Gid"], 10, 32)
	errs = append(errs, err)
	d.Groups, err = uints(st["Groups"], 10, 32)
	errs = append(errs, err)
	for _, c := range []struct {
		key string
		dst *uint64
	}{{"CapInh", &d.CapInh}, {"CapPrm", &d.CapPrm}, {"CapEff", &d.CapEff}, {"CapBnd", &d.CapBnd}, {"CapAmb", &d.CapAmb}} {
		*c.dst, err = strconv.ParseUint(st[c.key], 16, 64)
		errs = append(errs, err)
	}
	d.NoNewPriv = st["NoNewPrivs"] == "1"
	d.Seccomp, err = strconv.Atoi(st["Seccomp"])
	errs = append(errs, err)
	d.SeccompFilterCount = -1
	if v, ok := st["Seccomp_filters"]; ok {
		d.SeccompFilterCount, err = strconv.Atoi(v)
		errs = append(errs, err)
	}
	umask, err := strconv.ParseUint(st["Umask"], 8, 32)
	d.Umask = uint32(umask)
	errs = append(errs, err)
	d.Rlimits, err = readLimits(dir + "limits")
	errs = append(errs, err)
	b, err := procfile.Read(dir+"oom_score_adj", procfile.MaxSmall)
	if err == nil {
		d.OOMScoreAdj, err = strconv.Atoi(strings.TrimSpace(string(b)))
	}
	errs = append(errs, err)
	if b, err = procfile.Read(dir+"personality", procfile.MaxSmall); err == nil {
		var pers uint64
		pers, err = strconv.ParseUint(strings.TrimSpace(string(b)), 16, 32)
		d.Personality = uint32(pers)
	}
	errs = append(errs, err)
	d.LSMLabel, err = readLSMAttr(dir + "attr/current")
	errs = append(errs, err)
	if d.LSMLabel != "" {
		aa, err := readLSMAttr(dir + "attr/apparmor/current")
		d.AppArmor = err == nil && aa == d.LSMLabel
	}
	if err := errors.Join(errs...); err != nil || len(d.UID) != 4 || len(d.GID) != 4 {
		return nil, fmt.Errorf("parse credentials of %d: %v", pid, err)
	}
	return d, nil
}

// readLSMAttr reads an LSM attribute file of /proc/PID/attr: "" where
// no security module answers it (EINVAL, ENOENT, EOPNOTSUPP). The label
// is the kernel's, but it is checked as untrusted text all the same: it
// is written back for the new daemon's exec.
func readLSMAttr(path string) (string, error) {
	b, err := procfile.Read(path, procfile.MaxLSMLabel)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EOPNOTSUPP) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	label := strings.TrimRight(string(b), "\n\x00")
	if len(label) > 4096 || strings.ContainsAny(label, "\n\x00") {
		return "", fmt.Errorf("%s: a label of %d bytes with a newline or NUL: refused", path, len(label))
	}
	return label, nil
}

// limitNames are the rows of /proc/PID/limits, by resource number.
var limitNames = []string{"Max cpu time", "Max file size", "Max data size", "Max stack size", "Max core file size",
	"Max resident set", "Max processes", "Max open files", "Max locked memory", "Max address space", "Max file locks",
	"Max pending signals", "Max msgqueue size", "Max nice priority", "Max realtime priority", "Max realtime timeout"}

// readLimits reads a /proc/PID/limits file: soft and hard limit of each
// resource, RLIM_INFINITY for "unlimited".
func readLimits(path string) ([][2]uint64, error) {
	b, err := procfile.Read(path, procfile.MaxSmall)
	if err != nil {
		return nil, err
	}
	out := make([][2]uint64, len(limitNames))
	seen := 0
	for _, l := range strings.Split(string(b), "\n") {
		for r, name := range limitNames {
			rest, ok := strings.CutPrefix(l, name+" ")
			if !ok {
				continue
			}
			f := strings.Fields(rest)
			if len(f) < 2 {
				return nil, fmt.Errorf("%s: %q", path, l)
			}
			for i := 0; i < 2; i++ {
				if f[i] == "unlimited" {
					out[r][i] = unix.RLIM_INFINITY
				} else if out[r][i], err = strconv.ParseUint(f[i], 10, 64); err != nil {
					return nil, fmt.Errorf("%s: %q", path, l)
				}
			}
			seen++
		}
	}
	if seen != len(limitNames) {
		return nil, fmt.Errorf("%s: %d of %d limits", path, seen, len(limitNames))
	}
	return out, nil
}

func splitNul(b []byte) []string {
	b = bytes.TrimRight(b, "\x00")
	if len(b) == 0 {
		return nil
	}
	return strings.Split(string(b), "\x00")
}

func uints(s string, base, bits int) ([]uint32, error) {
	var out []uint32
	for _, f := range strings.Fields(s) {
		n, err := strconv.ParseUint(f, base, bits)
		if err != nil {
			return nil, err
		}
		out = append(out, uint32(n))
	}
	return out, nil
}

// Reproducible says why the daemon cannot be started again with exactly
// its privileges, or returns nil.
func (d *Daemon) Reproducible() error {
	switch {
	case d.Seccomp == 2 && len(d.SeccompFilters) == 0:
		return errors.New("it runs under seccomp filters that were not read: refused rather than respawn it unconfined; restart the container's automount by hand")
	case d.Seccomp == 2 && !d.NoNewPriv && d.CapBnd&(1<<unix.CAP_SYS_ADMIN) == 0:
		return errors.New("it runs under seccomp filters without no_new_privs or CAP_SYS_ADMIN, so nothing started as it could install them: refused")
	case d.Seccomp == 2 && seccompReproducible(d.SeccompFilters, d.SeccompFilterCount) != nil:
		return fmt.Errorf("%w: refused rather than respawn it with other filters; restart the container's automount by hand", seccompReproducible(d.SeccompFilters, d.SeccompFilterCount))
	case d.Securebits != nil && *d.Securebits&secbitNoRoot != 0:
		return fmt.Errorf("it runs with SECBIT_NOROOT (securebits %#x): exec would not give it the capabilities it has: refused", *d.Securebits)
	case d.Securebits != nil && *d.Securebits&securebitsExecKept != 0 && d.CapBnd&(1<<unix.CAP_SETPCAP) == 0:
		return fmt.Errorf("it runs with securebits %#x, which nothing started without CAP_SETPCAP in its bounding set can set: refused", *d.Securebits)
	case len(d.Rlimits) != len(limitNames):
		return fmt.Errorf("its resource limits were not read (%d of %d)", len(d.Rlimits), len(limitNames))
	case lateLimitsAllowed(d) != nil:
		return fmt.Errorf("its address-space or data limit is set on the new daemon at its exec through ptrace and prlimit64, which its seccomp filters would not let run (%w): refused", lateLimitsAllowed(d))
	case d.UID[0] != d.UID[1] || d.UID[1] != d.UID[2] || d.GID[0] != d.GID[1] || d.GID[1] != d.GID[2]:
		return fmt.Errorf("it runs with mixed real/effective/saved ids (uid %v gid %v): refused", d.UID, d.GID)
	case d.UID[0] != 0 && (d.CapPrm != 0 || d.CapAmb != 0):
		return fmt.Errorf("it runs as uid %d with capabilities %#x: refused", d.UID[0], d.CapPrm)
	case d.UID[0] == 0 && d.CapAmb != 0:
		return errors.New("it runs as root with ambient capabilities: refused")
	case d.UID[0] == 0 && d.CapPrm != d.CapBnd|d.CapInh:
		// After exec, root gets permitted = bounding | inheritable: a
		// daemon with less than that cannot be reproduced by exec.
		return fmt.Errorf("its permitted capabilities %#x are not what exec gives root (%#x): refused", d.CapPrm, d.CapBnd|d.CapInh)
	case len(d.Argv) == 0:
		return errors.New("its command line is empty")
	}
	return nil
}

// verifySame checks the new daemon's credentials against the old ones.
func verifySame(pid int, want *Daemon) error {
	got, err := CaptureDaemon(pid)
	if err != nil {
		return err
	}
	var diffs []string
	cmp := func(name string, a, b any) {
		if fmt.Sprint(a) != fmt.Sprint(b) {
			diffs = append(diffs, fmt.Sprintf("%s %v (was %v)", name, a, b))
		}
	}
	cmp("uid", got.UID, want.UID)
	cmp("gid", got.GID, want.GID)
	cmp("groups", got.Groups, want.Groups)
	cmp("CapInh", got.CapInh, want.CapInh)
	cmp("CapPrm", got.CapPrm, want.CapPrm)
	cmp("CapEff", got.CapEff, want.CapEff)
	cmp("CapBnd", got.CapBnd, want.CapBnd)
	cmp("CapAmb", got.CapAmb, want.CapAmb)
	cmp("NoNewPrivs", got.NoNewPriv, want.NoNewPriv)
	cmp("Seccomp", got.Seccomp, want.Seccomp)
	cmp("Seccomp_filters", got.SeccompFilterCount, want.SeccompFilterCount)
	cmp("cgroups", got.Cgroups, want.Cgroups)
	cmp("limits", got.Rlimits, want.Rlimits)
	cmp("oom_score_adj", got.OOMScoreAdj, want.OOMScoreAdj)
	cmp("umask", got.Umask, want.Umask)
	// Bits an exec clears by itself (READ_IMPLIES_EXEC on x86-64, and the
	// PER_CLEAR_ON_SETID ones on a secure exec) are not compared: the old
	// daemon may have set them after its own exec.
	const execCleared = 0x0400000 | 0x0040000 | 0x0200000 | 0x0100000
	cmp("personality", got.Personality&^execCleared, want.Personality&^execCleared)
	cmp("LSM label", got.LSMLabel, want.LSMLabel)
	if len(diffs) > 0 {
		return fmt.Errorf("the new automount (pid %d) differs from the old one: %s", pid, strings.Join(diffs, "; "))
	}
	return nil
}
