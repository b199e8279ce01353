// Package door is the one way the hook starts a child of its own and the
// one way such a child enters a container. The hook runs as root on the
// host and the container's contents are hostile, so every child goes
// through here, and this is the contract every caller relies on:
//
//  1. Nothing is executed by a path resolved inside a container. A child
//     is always our own executable: a sealed memfd copy of /proc/self/exe
//     (made on the host), started as /proc/self/fd/N from a locked thread
//     that is still in the host's mount namespace and root, whose /proc is
//     checked to be a procfs (HostProcOK). A child that lives in a
//     container's pid namespace is born there (Spec.Enter): its C
//     constructor (internal/cstart) joins the container's cgroups, mount
//     namespace and root, then its pid namespace, and forks the process
//     that runs the role, before any Go code runs. No process of ours is
//     seen in a container's pid namespace with the host's root, mount
//     namespace or an fd of the host's /proc. A child that stays out of
//     the container's pid namespace (the mount-namespace worker) joins
//     the mount namespace and root itself (EnterMountNS), after the exec.
//  2. Host facts come from the host: the highest capability number
//     (LastCap) is read before anything of a container is joined.
//  3. Every child has a deadline and dies with the thread that started it
//     (PR_SET_PDEATHSIG, set by the child itself, plus a check that its
//     parent is still there: Go's own check cannot work from inside
//     another pid namespace). That thread lives until the child is gone;
//     when Spec.Prepare changed it, it ends then, otherwise it gets its
//     capabilities back and goes on (a thread that ends kills every child
//     forked from it with a parent-death signal). It is reaped; one that
//     does not exit after
//     SIGKILL (blocked on a FUSE server that never answers) is reported
//     with each thread's state, never waited for.
//  4. A child inherits nothing but what its Spec names: its stdin (the
//     request), its stdout (the protocol socket), its stderr (a bounded
//     buffer), Spec.Files, a minimal environment. Files are handed by
//     name (Files, Child.Take): no fd is agreed by its position between
//     a parent and a child. Every fd it inherited is close-on-exec from
//     its first step (Begin).
//  5. A child is not dumpable from its exec on: the memfd copy has mode
//     0111 and the starting thread has no CAP_DAC_OVERRIDE and
//     CAP_DAC_READ_SEARCH in its effective set at the exec, so the kernel
//     cannot let the child read its own file and makes it non-dumpable
//     (fs.suid_dumpable, which must not be 1 for a child that enters a
//     container: Spec.IntoContainer); Begin says so again. A process of
//     the container, which sees the children that live in its pid
//     namespace, cannot trace them or open their /proc files (root, exe,
//     fds) without CAP_SYS_PTRACE in the host's user namespace. What a child that
//     lives in a container holds beyond the container's own power is
//     limited before it touches a path of the container: Spec.Prepare
//     limits the starting thread (namespaces for children, bounding set),
//     and the child drops the rest itself (LimitCaps, DropTo).
//  6. One protocol: the request is JSON on the child's stdin; the child
//     answers on its stdout, a unix stream socket, with JSON lines (Msg):
//     log lines, then one final line with the result or the error. Files
//     the child hands back (a connected socket, an opened directory, a
//     pidfd) follow the final line as SCM_RIGHTS when the parent asks for
//     them; before, the parent's reads have no room for fds and the kernel
//     drops any a child sends. The parent takes exactly as many as
//     announced, close-on-exec, and only sockets, pidfds and O_PATH fds
//     (another kind is left open: closing a FUSE file can wait for good).
//     Lines are bounded in size.
//
// The work a child does is a Task, declared once (NewTask) with its
// role (the hidden first argument that makes the binary that child), its
// request and result types and its body, and started through the same
// value (Task.Call): go-to-definition from a call reaches the body. The
// entry point dispatches roles (Run) before any command is parsed. A
// child's log lines carry their level (Level), which the parent's Logf
// keeps.
//
// One child is not started through Task.Call: the OCI hook's detached
// worker (hook/follow.go), which must outlive the hook by design, a
// Detached: declared with its configuration type and body like a task,
// its command line made by Detached.Command. It stays on the host, gets
// its configuration as its one argument, PATH as its environment, no
// inherited fd, and one deadline for its whole life.
//
// Who uses the door: the mount-namespace worker, one task per job
// (worker.NewTask, worker.NewHostTask), and its connect child
// (internal/worker); the spawner's two stages (units/spawner.go).
package door
