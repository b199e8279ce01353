// Package failpoint lets the end-to-end tests stop the hook at a chosen
// step (Pause), to kill it there and check that a rerun finishes the
// job, make a step fail (Err) or make it slow, as on a loaded node (Delay). Failpoints exist only in a binary built with the build tag "failpoints";
// in any other build Pause does nothing and the binary holds no trace of
// them (the tests check the shipped binary for the variable's name).
package failpoint

// Env names the pause point to stop at, in a failpoints build.
const Env = "AUTOFS_RESTORE_HOOK_FAILPOINT"
