# arh-lab: a container profile, broad as a container's must be for
# systemd and automount, with a few denials as container profiles have.
profile arh-lab-confined flags=(attach_disconnected,mediate_deleted) {
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
