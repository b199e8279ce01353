// Package worker holds the mount-namespace worker: children of the hook
// (door tasks, internal/door) that run one task each inside a container's
// mount namespace and root, or on the host, with what such a task gets
// (Env); and the worker's connect child, which dials a unix socket from
// inside the container's pid namespace (Env.DialInContainer).
//
// A task is declared once with its request and result types (NewTask,
// NewHostTask) and run through the value that declares it (TaskOf.Run,
// RunEvents, RunOnHost, RunOnHostFiles): go-to-definition from a call
// reaches the declaration, which names the function the worker runs.
//
// A worker in a container stays in the host's pid namespace, so a path
// walk across a broken autofs mount of the container fails instead of
// waiting; it joins the container's cgroups (its device cgroup decides
// which device nodes the worker can open) and keeps CAP_SYS_ADMIN alone
// (WorkerCaps). Whatever it does, it is killed at its deadline and never
// outlives the hook.
package worker
