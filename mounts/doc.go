// Package mounts holds everything the hook knows about mounts: reading a
// container's mount table from /proc/PID/mountinfo, decoding the options of
// autofs superblocks, talking to the kernel's autofs control device
// (/dev/autofs), entering a container's mount namespace, and moving the
// filesystems that sit on top of autofs mount points.
//
// Nothing in this package walks a path below a possibly broken autofs mount
// from the calling process: such work runs in a child process with a
// deadline (see Worker).
package mounts
