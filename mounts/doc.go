// Package mounts holds everything the hook knows about mounts: reading a
// container's mount table from /proc/PID/mountinfo and watching it,
// decoding the options of autofs superblocks, talking to the kernel's
// autofs control device (/dev/autofs), finding the master that holds an
// autofs mount's pipe, and moving the filesystems that sit on top of
// autofs mount points (the staging area). The processes it acts on are
// internal/proc's.
//
// Nothing in this package walks a path below a possibly broken autofs mount
// from the calling process, nor touches a file of the container's (an fd
// on a FUSE file system the container serves can block its user forever):
// what does (InNS and its methods, the staging moves) runs in a worker, a
// child with a deadline inside the container's mount namespace
// (internal/worker).
package mounts
