package main

import "fmt"

// CRIOConfig is the configuration of the lab's CRI-O (lab.sh crio start):
// run directory run, binaries (crio, pinns) in bin, runc and conmon at
// the paths given, monitors with path as PATH, pause image pause (made by
// lab.sh image, never run). podman's storage; cgroupfs; CRIU support on;
// /dev/autofs allowed to the pods that name it in their annotation.
func CRIOConfig(run, bin, runc, conmon, path, pause string) []byte {
	return fmt.Appendf(nil, `# Written by autofs-restore-hook's test/lab/labconfig (lab.sh crio start).
[crio]
root = "/var/lib/containers/storage"
runroot = "/run/containers/storage"
log_dir = %[1]q
version_file = %[2]q
clean_shutdown_file = %[3]q
internal_wipe = false
[crio.api]
listen = %[4]q
[crio.runtime]
default_runtime = "runc"
cgroup_manager = "cgroupfs"
pinns_path = %[5]q
namespaces_dir = %[6]q
container_exits_dir = %[7]q
container_attach_socket_dir = %[8]q
enable_criu_support = true
# /dev/autofs for the containers of pods that name it in the annotation
# io.kubernetes.cri-o.Devices: CRI-O restores a container without the
# devices of its create request, but in its pod.
allowed_devices = ["/dev/autofs"]
irqbalance_config_file = ""
irqbalance_config_restore_file = ""
[crio.runtime.runtimes.runc]
runtime_path = %[9]q
runtime_root = "/run/runc"
monitor_path = %[10]q
monitor_cgroup = "pod"
monitor_env = [%[11]q]
allowed_annotations = ["io.kubernetes.cri-o.Devices"]
[crio.image]
pause_image = %[12]q
[crio.network]
network_dir = %[13]q
[crio.nri]
enable_nri = false
`, run+"/pods", run+"/version", run+"/clean.shutdown", run+"/crio.sock", bin+"/pinns", run+"/ns", run+"/exits", run,
		runc, conmon, "PATH="+path, pause, run+"/cni")
}

// AppArmorProfile is the lab's container profile (name: lab.sh's
// arh-lab-confined), for apparmor_parser: broad, as a container's must be
// for systemd and automount (mount among them, which podman's default
// profile denies), with a few denials as container profiles have.
func AppArmorProfile(name string) []byte {
	return fmt.Appendf(nil, `# arh-lab: a container profile, broad as a container's must be for
# systemd and automount, with a few denials as container profiles have.
profile %s flags=(attach_disconnected,mediate_deleted) {
  file,
  capability,
  network,
  unix,
  signal,
  ptrace,
  mount,
  remount,
  umount,
  pivot_root,
  deny /proc/sysrq-trigger rwklx,
  deny /proc/kcore rwklx,
  deny /sys/kernel/security/** rwklx,
}
`, name)
}
