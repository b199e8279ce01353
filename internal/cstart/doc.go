// Package cstart holds the C constructors of the autofs-restore-hook
// binary: code that must run before the Go runtime starts its threads.
// One answers the CRIU actions the hook ignores without starting Go at
// all; the other joins the container's time namespace for the spawner's
// container stage (a multithreaded process cannot). Only cmd/ imports it
// (and the hook package's tests when built with cgo: their fix runs start
// the spawner from the test binary), so the library packages build and
// test without cgo.
package cstart
