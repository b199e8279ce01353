package units

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

const (
	auditArchX8664 = 0xc000003e // AUDIT_ARCH_X86_64
	userCS64       = 0x33       // __USER_CS: a 64-bit task's code segment
)

// Restart codes of an interrupted syscall (include/linux/errno.h), as a
// task held in a stop inside the syscall shows them in rax.
const (
	errRestartSys          = 512
	errRestartNoIntr       = 513
	errRestartNoHand       = 514
	errRestartRestartBlock = 516
)

// injectGetSecurebits runs prctl(PR_GET_SECUREBITS) in pid, held in an
// event stop inside a syscall, and returns its result. The syscall
// instruction is the one pid was stopped after (checked to be one); the
// registers are put back as the kernel would have left them once the
// stop ended: an interrupted syscall that is to be restarted is restarted
// (rip back on the instruction, rax its number), which the kernel does
// only on the way out of the stop the registers are set in. *ws ends as
// the exit stop of the injected syscall.
//
// Should this process die between setting the registers and putting them
// back (the hook's deadline), pid runs prctl and goes on with its result
// in rax: only a daemon that the container itself kept from running
// (frozen, stopped) can be caught so, and the hook does not respawn it.
func injectGetSecurebits(pid int, filters []SeccompFilter, ws *unix.WaitStatus) (uint32, error) {
	var saved unix.PtraceRegs
	if err := unix.PtraceGetRegs(pid, &saved); err != nil {
		return 0, fmt.Errorf("registers of %d: %w", pid, err)
	}
	if saved.Cs != userCS64 {
		return 0, fmt.Errorf("it is not a 64-bit process (code segment %#x)", saved.Cs)
	}
	if int64(saved.Orig_rax) < 0 {
		return 0, errNotInSyscall
	}
	insn := make([]byte, 2)
	if n, err := unix.PtracePeekText(pid, uintptr(saved.Rip-2), insn); err != nil || n != 2 {
		return 0, fmt.Errorf("read its code at %#x: %v", saved.Rip-2, err)
	}
	if insn[0] != 0x0f || insn[1] != 0x05 { // syscall
		return 0, errNotInSyscall
	}
	back := saved
	switch -int64(saved.Rax) {
	case errRestartSys, errRestartNoIntr, errRestartNoHand:
		back.Rax, back.Rip, back.Orig_rax = saved.Orig_rax, saved.Rip-2, ^uint64(0)
	case errRestartRestartBlock:
		back.Rax, back.Rip, back.Orig_rax = unix.SYS_RESTART_SYSCALL, saved.Rip-2, ^uint64(0)
	}
	if err := seccompAllows(filters, seccompData{Nr: unix.SYS_PRCTL, Arch: auditArchX8664, IP: saved.Rip, Args: [6]uint64{unix.PR_GET_SECUREBITS}}); err != nil {
		return 0, fmt.Errorf("its filters would not let prctl(PR_GET_SECUREBITS) run: %w", err)
	}
	inj := saved
	inj.Rip = saved.Rip - 2
	inj.Orig_rax = ^uint64(0) // no restart on the way out of this stop
	inj.Rax, inj.Rdi, inj.Rsi, inj.Rdx, inj.R10, inj.R8, inj.R9 = unix.SYS_PRCTL, unix.PR_GET_SECUREBITS, 0, 0, 0, 0, 0
	if err := unix.PtraceSetRegs(pid, &inj); err != nil {
		return 0, fmt.Errorf("set the registers of %d: %w", pid, err)
	}
	withheld, runErr := runInjected(pid, ws)
	var res unix.PtraceRegs
	var getErr error
	if runErr == nil {
		getErr = unix.PtraceGetRegs(pid, &res)
	}
	if !ws.Stopped() {
		return 0, runErr // gone: nothing to put back
	}
	if err := unix.PtraceSetRegs(pid, &back); err != nil {
		return 0, errors.Join(runErr, fmt.Errorf("put the registers of %d back: %w", pid, err))
	}
	if err := errors.Join(runErr, getErr, raiseAgain(pid, withheld)); err != nil {
		return 0, err
	}
	if r := int64(res.Rax); r < 0 {
		return 0, fmt.Errorf("prctl(PR_GET_SECUREBITS) in %d: %w", pid, unix.Errno(-r))
	}
	return uint32(res.Rax), nil
}

// securebitsReadable: this architecture's injection is written.
const securebitsReadable = true

// auditArchNative is the AUDIT_ARCH seccomp filters see here.
const auditArchNative = auditArchX8664
