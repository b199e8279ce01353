#!/bin/bash
# maybe.sh CMD... - run CMD here when this kernel has autofs, else in the
# test VM (run.sh), after provisioning the lab on this host (the guest has
# no network). ARH_TEST_VM=1 forces the VM, ARH_TEST_VM=0 forbids it, as in
# test/tests.sh. Used by `make demo`.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
VM=${ARH_TEST_VM:-}
if [ -z "$VM" ]; then
	if [ -c /dev/autofs ]; then VM=0; else VM=1; fi
fi
if [ "$VM" = 0 ]; then
	exec "$@"
fi
bash "$HERE/../lab/provision.sh"
export ARH_TEST_SLOWDOWN=${ARH_TEST_SLOWDOWN:-3} # as test/tests.sh in the VM
ARH_VM_PASSENV="HOOK ARH_DEMO_WIRING ARH_TEST_SLOWDOWN ${ARH_VM_PASSENV:-}" exec bash "$HERE/run.sh" -- "$@"
