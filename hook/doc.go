// Package hook holds what the binary does as a whole: it chooses the mode
// (CRIU action script, OCI hook, operator CLI), reads and validates its
// input, decides from the evidence whether a container was restored, and
// runs the two phases of the fix (pre-resume and post-resume) with the
// state file that makes repeated and concurrent runs safe.
package hook
