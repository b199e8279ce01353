package mounts

// Target names one autofs mount by mount point and device.
type Target struct {
	Where string `json:"where"`
	Dev   uint64 `json:"dev"`
}

// TargetResult is the outcome for one Target ("" when it worked).
type TargetResult struct {
	Where string `json:"where"`
	Error string `json:"error,omitempty"`
}

// MakeCatatonic makes each target catatonic. It runs inside the
// container's mount namespace and root (a worker task), so the mount
// point is resolved as the container sees it, and from the host's pid
// namespace, so the walk never waits on the container's autofs mounts.
func (n *InNS) MakeCatatonic(targets []Target) []TargetResult {
	out := make([]TargetResult, len(targets))
	for i, t := range targets {
		out[i].Where = t.Where
		if err := n.Ctl.CatatonicAt(t.Where, t.Dev); err != nil {
			out[i].Error = err.Error()
		}
	}
	return out
}
