// Command labconfig writes what the end-to-end lab builds of a container,
// in Go where lab.sh had shell heredocs: a bundle's config.json (with the
// OCI runtime-spec types) and the criu.conf that its org.criu.config
// annotation names; the kind's files in its rootfs (systemd units,
// automount's maps, the init script); podman's hooks.d file; CRI-O's
// configuration and the CRI pod and container configs that crictl reads;
// the lab's AppArmor profile. lab.sh runs it with the container's options
// and keeps what must be shell: running runc, podman, crictl, CRIU and
// the rest.
//
//	labconfig bundle|rootfs|podman-hook|crio-pod|crio-ctr|crio-conf|apparmor [options]
//
// The host's part of config.json (the capability bounding set, whether it
// has only the unified cgroup hierarchy) is read from the machine; the
// tests pass it in (Host). testdata/shell holds what the heredocs wrote;
// the tests check that a runtime, crictl or CRI-O reads the same from ours.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Options are a bundle's lab options, as lab.sh parsed them.
type Options struct {
	Name string
	Kind string // systemd, automount or plain

	// The CRIU wiring: a criu.conf with ActionScript and CRIUOpts, named
	// by the annotation org.criu.config. Without them the annotation is
	// empty, so that no runtime reads /etc/criu/<runtime>.conf either,
	// unless RuntimeCRIUConfig: then there is no annotation at all.
	ActionScript      string
	CRIUOpts          []string
	RuntimeCRIUConfig bool

	// The OCI hook: Hook at HookStage with argv [Hook, HookArgs...].
	Hook        string
	HookStage   string
	HookArgs    []string
	HookEnv     []string
	HookTimeout int // seconds; 0: none

	// Confined: as podman and Kubernetes confine containers (a seccomp
	// filter, oomScoreAdj 500, lower limits; AppArmor, the profile that
	// lab.sh loaded, when set). Seccomp replaces the filter: the
	// linux.seccomp object, as JSON.
	Confined   bool
	AppArmor   string
	Seccomp    []byte
	NoNewPrivs bool
}

// Host is what the configuration takes from the machine.
type Host struct {
	// Caps: the capabilities of the host's bounding set; the container
	// gets them all.
	Caps []string
	// CgroupV2: the host has only the unified hierarchy.
	CgroupV2 bool
}

// The kinds' init: systemd, or the lab's sh loop (rootfs /lab/init.sh).
const (
	pathEnv = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	// systemd 252 in a container on the cgroup v1 layout: the legacy
	// hierarchy.
	legacyCgroupCmdline = "SYSTEMD_PROC_CMDLINE=systemd.unified_cgroup_hierarchy=0 systemd.legacy_systemd_cgroup_controller=1"
)

// The denials of Confined's seccomp filter: what podman's and Docker's
// default profiles deny to a container without the matching capability.
var confinedDenied = []string{"kexec_load", "open_by_handle_at", "bpf", "perf_event_open", "add_key", "request_key"}

// Spec is the bundle's config.json. criuConfig is the path of its
// criu.conf, the value of org.criu.config when there is a CRIU wiring.
func Spec(o Options, h Host, criuConfig string) (*specs.Spec, error) {
	s := &specs.Spec{
		Version:  "1.0.2",
		Hostname: o.Name,
		Root:     &specs.Root{Path: "rootfs"},
		Process: &specs.Process{
			User: specs.User{UID: 0, GID: 0},
			Env:  []string{pathEnv, "container=oci"},
			Cwd:  "/",
			Capabilities: &specs.LinuxCapabilities{
				Bounding:  h.Caps,
				Effective: h.Caps,
				Permitted: h.Caps,
			},
			Rlimits:         []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 4096, Soft: 4096}},
			NoNewPrivileges: o.NoNewPrivs,
		},
		Annotations: map[string]string{},
		Mounts:      labMounts(),
		Linux: &specs.Linux{
			CgroupsPath: "/arh-lab/" + o.Name,
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.NetworkNamespace}, {Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace}, {Type: specs.MountNamespace},
			},
			Devices: []specs.LinuxDevice{autofsDevice()},
			Resources: &specs.LinuxResources{Devices: []specs.LinuxDeviceCgroup{
				{Allow: false, Access: "rwm"},
				{Allow: true, Type: "c", Major: i64(10), Minor: i64(235), Access: "rwm"},
			}},
		},
	}
	switch o.Kind {
	case "systemd":
		s.Process.Args = []string{"/bin/sh", "-c", "exec </dev/null >/dev/null 2>&1; exec /lib/systemd/systemd"}
		if !h.CgroupV2 {
			s.Process.Env = append(s.Process.Env, legacyCgroupCmdline)
		}
	case "automount", "plain":
		s.Process.Args = []string{"/bin/sh", "/lab/init.sh"}
	default:
		return nil, fmt.Errorf("unknown kind %q (systemd, automount, plain)", o.Kind)
	}

	switch {
	case o.ActionScript != "" || len(o.CRIUOpts) > 0:
		s.Annotations["org.criu.config"] = criuConfig
	case o.RuntimeCRIUConfig:
		// The runtime's own CRIU configuration (/etc/criu/runc.conf,
		// crun.conf) and CRIU's default.conf apply.
		s.Annotations["arh-lab.criu-config"] = "the runtime default"
	default:
		s.Annotations["org.criu.config"] = ""
	}

	if o.Hook != "" {
		hook := o.hook()
		if o.HookTimeout != 0 {
			hook.Timeout = &o.HookTimeout
		}
		if err := addHook(s, o.HookStage, hook); err != nil {
			return nil, err
		}
	}

	if o.Confined {
		s.Process.Rlimits = []specs.POSIXRlimit{
			{Type: "RLIMIT_NOFILE", Hard: 2048, Soft: 1024},
			{Type: "RLIMIT_NPROC", Hard: 4000, Soft: 3000},
		}
		s.Process.OOMScoreAdj = iptr(500)
		s.Process.ApparmorProfile = o.AppArmor
		s.Linux.Seccomp = denying(confinedDenied...)
	} else if o.Kind == "systemd" && h.CgroupV2 {
		// On cgroup v2 systemd enforces a unit's DevicePolicy (journald's,
		// say) with BPF programs whose fds it keeps, and CRIU cannot dump
		// a BPF fd: the systemd container gets bpf() denied, as podman's
		// default seccomp profile denies it without CAP_BPF. systemd then
		// runs without them.
		s.Linux.Seccomp = denying("bpf")
	}
	if o.Seccomp != nil {
		var sc specs.LinuxSeccomp
		dec := json.NewDecoder(bytes.NewReader(o.Seccomp))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&sc); err != nil {
			return nil, fmt.Errorf("the seccomp object: %w", err)
		}
		s.Linux.Seccomp = &sc
	}
	// On cgroup v2 a cgroup namespace, as podman gives: systemd must see
	// its own cgroup as the root of the hierarchy mounted at /sys/fs/cgroup.
	if h.CgroupV2 {
		s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.CgroupNamespace})
	}
	return s, nil
}

// hook is the OCI hook of o: Hook with argv [Hook, HookArgs...] and
// HookEnv, without a timeout.
func (o Options) hook() specs.Hook {
	return specs.Hook{Path: o.Hook, Args: append([]string{o.Hook}, o.HookArgs...), Env: o.HookEnv}
}

// addHook puts hook at stage.
func addHook(s *specs.Spec, stage string, hook specs.Hook) error {
	s.Hooks = &specs.Hooks{}
	var at *[]specs.Hook
	switch stage {
	case "", "createRuntime":
		at = &s.Hooks.CreateRuntime
	case "prestart":
		at = &s.Hooks.Prestart //nolint:staticcheck // the lab tests the deprecated stage too
	case "createContainer":
		at = &s.Hooks.CreateContainer
	case "startContainer":
		at = &s.Hooks.StartContainer
	case "poststart":
		at = &s.Hooks.Poststart
	case "poststop":
		at = &s.Hooks.Poststop
	default:
		return fmt.Errorf("unknown hook stage %q", stage)
	}
	*at = append(*at, hook)
	return nil
}

// denying is a seccomp filter that allows everything but names, which
// fail with EPERM.
func denying(names ...string) *specs.LinuxSeccomp {
	return &specs.LinuxSeccomp{
		DefaultAction: specs.ActAllow,
		Architectures: []specs.Arch{specs.ArchX86_64},
		Syscalls:      []specs.LinuxSyscall{{Names: names, Action: specs.ActErrno, ErrnoRet: uptr(1)}},
	}
}

// labMounts are the container's filesystems, as runc's spec and podman
// give them.
func labMounts() []specs.Mount {
	m := func(dst, typ, src string, opts ...string) specs.Mount {
		return specs.Mount{Destination: dst, Type: typ, Source: src, Options: opts}
	}
	return []specs.Mount{
		m("/proc", "proc", "proc"),
		m("/dev", "tmpfs", "tmpfs", "nosuid", "strictatime", "mode=755", "size=65536k"),
		m("/dev/pts", "devpts", "devpts", "nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"),
		m("/dev/shm", "tmpfs", "shm", "nosuid", "noexec", "nodev", "mode=1777", "size=65536k"),
		m("/dev/mqueue", "mqueue", "mqueue", "nosuid", "noexec", "nodev"),
		m("/sys", "sysfs", "sysfs", "nosuid", "noexec", "nodev", "ro"),
		m("/sys/fs/cgroup", "cgroup", "cgroup", "nosuid", "noexec", "nodev", "relatime", "rw"),
		m("/run", "tmpfs", "tmpfs", "nosuid", "nodev", "mode=755"),
		m("/run/lock", "tmpfs", "tmpfs", "nosuid", "nodev", "noexec", "mode=1777"),
		m("/tmp", "tmpfs", "tmpfs", "nosuid", "nodev", "mode=1777"),
	}
}

// autofsDevice is /dev/autofs, which both masters need.
func autofsDevice() specs.LinuxDevice {
	mode := os.FileMode(0o644)
	zero := uint32(0)
	return specs.LinuxDevice{Path: "/dev/autofs", Type: "c", Major: 10, Minor: 235, FileMode: &mode, UID: &zero, GID: &zero}
}

func i64(v int64) *int64 { return &v }
func iptr(v int) *int    { return &v }
func uptr(v uint) *uint  { return &v }

// CRIUConfig is the text of the bundle's criu.conf, or "" when it has no
// CRIU wiring.
func CRIUConfig(o Options) string {
	if o.ActionScript == "" && len(o.CRIUOpts) == 0 {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# written by test/lab/labconfig for %s\n", o.Name)
	if o.ActionScript != "" {
		fmt.Fprintf(&b, "action-script %s\n", o.ActionScript)
	}
	for _, l := range o.CRIUOpts {
		b.WriteString(l + "\n")
	}
	return b.String()
}

// Write writes the bundle's criu.conf (or removes it) and config.json,
// each through a temporary file, the configuration last.
func Write(bundle string, o Options, h Host) error {
	conf := filepath.Join(bundle, "criu.conf")
	s, err := Spec(o, h, conf)
	if err != nil {
		return err
	}
	raw, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if text := CRIUConfig(o); text != "" {
		if err := writeFile(conf, []byte(text)); err != nil {
			return err
		}
	} else if err := os.Remove(conf); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return writeFile(filepath.Join(bundle, "config.json"), append(raw, '\n'))
}

func writeFile(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// capNames are the capabilities by number, as the kernel numbers them.
var capNames = []string{"CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
	"LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
	"SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
	"SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
	"MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF",
	"CHECKPOINT_RESTORE"}

// boundingCaps names the capabilities of a CapBnd mask (/proc/PID/status)
// that this table knows.
func boundingCaps(mask uint64) []string {
	var caps []string
	for i, n := range capNames {
		if mask>>i&1 == 1 {
			caps = append(caps, "CAP_"+n)
		}
	}
	return caps
}

// ThisHost reads the host's part: this process's bounding set (the
// machine this was developed on has no CAP_SYS_RESOURCE there) and the
// cgroup layout.
func ThisHost() (Host, error) {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return Host{}, err
	}
	var h Host
	for _, l := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(l, "CapBnd:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				return Host{}, fmt.Errorf("CapBnd %q: %w", v, err)
			}
			h.Caps = boundingCaps(mask)
		}
	}
	if h.Caps == nil {
		return Host{}, errors.New("no CapBnd in /proc/self/status")
	}
	h.CgroupV2, err = cgroupV2()
	return h, err
}

// podmanHook is a hook in podman's hooks.d format (its version 1.0.0):
// the OCI hook, when to run it, at which stages.
type podmanHook struct {
	Version string     `json:"version"`
	Hook    specs.Hook `json:"hook"`
	When    struct {
		Always bool `json:"always"`
	} `json:"when"`
	Stages []string `json:"stages"`
}

// PodmanHook is o's hook as a hooks.d file of podman's (lab.sh podman-up
// gives podman the bundle's hooks.d as --hooks-dir).
func PodmanHook(o Options) ([]byte, error) {
	if o.Hook == "" {
		return nil, errors.New("no hook")
	}
	h := podmanHook{Version: "1.0.0", Hook: o.hook(), Stages: []string{o.HookStage}}
	h.When.Always = true
	b, err := json.MarshalIndent(h, "", "  ")
	return append(b, '\n'), err
}
