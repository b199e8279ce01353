package mounts

// CatatonicFDsTask and CatatonicFDsRequest let the integration tests give
// the copying child a choice that the process has made stale.
const CatatonicFDsTask = taskCatatonicFDs

func CatatonicFDsRequest(pid int, start uint64, n, mntID int, where string) any {
	return catatonicFDsRequest{Pid: pid, StartTime: start, FDs: []daemonFD{{N: n, MntID: mntID, Where: where}}}
}
