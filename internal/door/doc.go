// Package door is the one way the hook starts a child of its own and the
// one way such a child enters a container. The hook runs as root on the
// host and the container's contents are hostile, so every child goes
// through here, and this is the contract every caller relies on:
//
//  1. Nothing is executed by a path resolved inside a container. A child
//     is always our own executable, opened as /proc/self/exe and started
//     as /proc/self/fd/N from a fresh thread that is still in the host's
//     mount namespace and root, whose /proc is checked to be a procfs
//     (HostProcOK). A child that must live in a container joins its mount
//     namespace and root itself (EnterMountNS), after the exec.
//  2. Host facts come from the host: the highest capability number
//     (LastCap) is read before anything of a container is joined.
//  3. Every child has a deadline and dies with the thread that started it
//     (PR_SET_PDEATHSIG, set by the child itself, plus a check that its
//     parent is still there: Go's own check cannot work from inside
//     another pid namespace). It is reaped; one that does not exit after
//     SIGKILL (blocked on a FUSE server that never answers) is reported
//     with each thread's state, never waited for.
//  4. A child inherits nothing but what its Spec names: its stdin (the
//     request), its stdout (the protocol socket), its stderr (a bounded
//     buffer), Spec.Files, a minimal environment. Every fd it inherited is
//     close-on-exec from its first step (Begin).
//  5. A child is not dumpable (PR_SET_DUMPABLE 0): a process of the
//     container, which sees the children that live in its pid namespace,
//     cannot trace them or read their memory and fds without
//     CAP_SYS_PTRACE in the host's user namespace. What a child that
//     lives in a container holds beyond the container's own power is
//     limited before it touches a path of the container: Spec.Prepare
//     limits the starting thread (namespaces for children, bounding set),
//     and the child drops the rest itself (LimitCaps, DropTo).
//  6. One protocol: the request is JSON on the child's stdin; the child
//     answers on its stdout, a unix stream socket, with JSON lines (Msg):
//     log lines, then one final line with the result or the error. Files
//     the child hands back (a connected socket, an opened directory)
//     travel with the final line as SCM_RIGHTS; the parent takes only as
//     many as the final line announces, close-on-exec, and closes the
//     rest. Lines are bounded in size.
//
// Roles (the hidden first arguments that make the binary a child) are
// registered here (Register) and dispatched by the entry point (Run)
// before any command is parsed.
//
// One child is not started through Call: the OCI hook's detached worker
// (hook/oci.go), which must outlive the hook by design. It stays on the
// host, gets its configuration as its one argument, PATH as its
// environment, no inherited fd, and one deadline for its whole life.
//
// Who uses the door: the mount-namespace worker and its connect child
// (mounts/worker.go), the spawner's two stages (units/spawner.go).
package door
