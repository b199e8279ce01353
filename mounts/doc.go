// Package mounts holds everything the hook knows about mounts: reading a
// container's mount table from /proc/PID/mountinfo, decoding the options of
// autofs superblocks, talking to the kernel's autofs control device
// (/dev/autofs), finding the master that holds an autofs mount's pipe,
// the worker that enters a container's mount namespace, and moving the
// filesystems that sit on top of autofs mount points. The processes it
// acts on are internal/proc's.
//
// Nothing in this package walks a path below a possibly broken autofs mount
// from the calling process, nor touches a file of the container's (an fd
// on a FUSE file system the container serves can block its user forever):
// such work runs in a child process with a deadline (a typed task,
// NewTask and NewHostTask, run by TaskOf.Run and TaskOf.RunOnHost).
package mounts
