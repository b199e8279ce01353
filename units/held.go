package units

// A daemon held still with ptrace by a child of the hook, for what /proc
// does not show: its seccomp filters (PTRACE_SECCOMP_GET_FILTER) and its
// securebits, which only the process itself can read (prctl
// PR_GET_SECUREBITS): the child makes the held daemon run that one
// syscall, as CRIU's parasite code runs its own, and puts its registers
// back as they were.

import (
	"errors"
	"fmt"
	"runtime"
	"time"

	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/door"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/failpoint"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/worker"
)

// Securebits (linux/securebits.h).
const (
	secbitNoRoot        = 1 << 0
	secbitKeepCaps      = 1 << 4
	secbitNoSetuidFixup = 1 << 2
)

// securebitsExecKept are the securebits an exec keeps: all but
// SECBIT_KEEP_CAPS, which every exec clears. The new daemon gets these;
// a KEEP_CAPS the old one set after its own start is not compared.
const securebitsExecKept = ^uint32(secbitKeepCaps)

// held is the host task of readHeld.
var held = worker.NewHostTask("held", heldTask)

type heldRequest struct {
	Daemon proc.Ref `json:"daemon"`
	// Deadline (Unix nanoseconds) bounds the tries to find the daemon
	// stopped inside a syscall.
	Deadline int64 `json:"deadline"`
}

// heldState is what is read of a daemon while it is held.
type heldState struct {
	// Filters are its seccomp filters, oldest first, where it runs
	// under filters (Seccomp 2).
	Filters []SeccompFilter `json:"filters,omitempty"`
	// Securebits are its securebits where SecurebitsRead; SecurebitsWhy
	// says why they were not read otherwise.
	Securebits     uint32 `json:"securebits"`
	SecurebitsRead bool   `json:"securebits_read"`
	SecurebitsWhy  string `json:"securebits_why,omitempty"`
}

// readHeld reads what /proc does not show of p, in a child with a
// deadline: the child stops p with ptrace (an interrupt waits for p to
// return to user space, which a process blocked on a file system may
// never do).
func readHeld(p *proc.Process, timeout time.Duration) (*heldState, error) {
	req := heldRequest{Daemon: p.Ref, Deadline: time.Now().Add(timeout * 3 / 4).UnixNano()}
	out, _, err := held.RunOnHostFiles(req, nil, timeout, nil)
	if err == nil && out == nil {
		err = errors.New("no answer")
	}
	if err != nil {
		return nil, fmt.Errorf("read the seccomp filters and securebits of %d: %w", p.Pid, err)
	}
	return out, nil
}

func heldTask(_ *worker.Env, req heldRequest, logf door.Logf) (*heldState, error) {
	failpoint.Delay("slow-held", 8*time.Second, func(s string) { logf.Info(s) })
	p, err := req.Daemon.Open()
	if err != nil {
		return nil, err
	}
	defer p.Close()
	// ptrace requests come from the tracing thread; this process ends
	// after the task, and a trace with it.
	runtime.LockOSThread()
	pid := p.Pid
	if err := unix.PtraceSeize(pid); err != nil {
		return nil, fmt.Errorf("ptrace %d: %w", pid, err)
	}
	if err := unix.PtraceInterrupt(pid); err != nil {
		return nil, fmt.Errorf("ptrace interrupt %d: %w", pid, err)
	}
	var ws unix.WaitStatus
	if _, err := unix.Wait4(pid, &ws, unix.WALL, nil); err != nil {
		return nil, fmt.Errorf("wait for %d to stop: %w", pid, err)
	}
	// A signal that arrived before the interrupt is reported first:
	// detaching gives it back instead of dropping it. ws is the stop it
	// is in when it is let go.
	defer func() {
		unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_DETACH, uintptr(pid), 0, uintptr(deliverable(ws)), 0, 0)
	}()
	if !ws.Stopped() {
		return nil, fmt.Errorf("pid %d: %w", pid, proc.ErrGone)
	}
	// Still the process that was asked about, now that it is held.
	if err := p.Check(); err != nil {
		return nil, err
	}
	st, err := proc.ReadStatus(pid)
	if err != nil {
		return nil, err
	}
	var out heldState
	mode := st["Seccomp"]
	if mode == "2" {
		if out.Filters, err = filtersOfHeld(pid); err != nil {
			return nil, err
		}
	}
	if err := unix.PtraceSetOptions(pid, unix.PTRACE_O_TRACESYSGOOD); err != nil {
		return nil, fmt.Errorf("ptrace options of %d: %w", pid, err)
	}
	bits, err := securebitsOfHeld(pid, &ws, mode, out.Filters, time.Unix(0, req.Deadline))
	if errors.Is(err, proc.ErrGone) {
		return nil, err
	}
	if err != nil {
		out.SecurebitsWhy = err.Error()
	} else {
		out.Securebits, out.SecurebitsRead = bits, true
	}
	return &out, nil
}

// stopEvent is the ptrace event of a stop (status >> 16), which Go's
// TrapCause gives only for SIGTRAP stops.
func stopEvent(ws unix.WaitStatus) int { return int(uint32(ws)>>16) & 0xff }

// syscallStop is the stop status of a syscall stop under
// PTRACE_O_TRACESYSGOOD.
const syscallStop = unix.SIGTRAP | 0x80

// deliverable is the signal a stop holds back: that of a
// signal-delivery stop, or 0 (event, group and syscall stops).
func deliverable(ws unix.WaitStatus) int {
	if !ws.Stopped() || stopEvent(ws) != 0 || ws.StopSignal() == syscallStop {
		return 0
	}
	return int(ws.StopSignal())
}

// errNotInSyscall: the held process is not stopped inside a syscall
// whose instruction can be run again.
var errNotInSyscall = errors.New("not stopped inside a syscall")

// securebitsOfHeld reads the securebits of pid, held in the stop *ws:
// it makes pid run prctl(PR_GET_SECUREBITS) once it is stopped inside a
// syscall, the instruction of which it then runs again; until then it
// lets pid run briefly between interrupts, up to deadline. *ws is the
// stop pid is left in. filters are pid's seccomp filters, which must
// let the prctl run (one that would kill it or trap is never tried).
func securebitsOfHeld(pid int, ws *unix.WaitStatus, mode string, filters []SeccompFilter, deadline time.Time) (uint32, error) {
	if mode != "0" && mode != "2" {
		return 0, fmt.Errorf("it runs in seccomp mode %q, which allows no prctl", mode)
	}
	for try := 1; ; try++ {
		switch {
		case !ws.Stopped():
			return 0, fmt.Errorf("pid %d: %w", pid, proc.ErrGone)
		case stopEvent(*ws) == unix.PTRACE_EVENT_STOP && ws.StopSignal() != unix.SIGTRAP:
			return 0, fmt.Errorf("it is stopped (%v): not run", ws.StopSignal())
		case stopEvent(*ws) == unix.PTRACE_EVENT_STOP:
			bits, err := injectGetSecurebits(pid, filters, ws)
			if !errors.Is(err, errNotInSyscall) {
				return bits, err
			}
		}
		if try >= 200 || time.Now().After(deadline) {
			return 0, fmt.Errorf("not stopped inside a syscall in %d tries", try)
		}
		// Let it run (delivering a signal it was stopped for), then stop
		// it again.
		if err := unix.PtraceCont(pid, deliverable(*ws)); err != nil {
			return 0, fmt.Errorf("ptrace continue %d: %w", pid, err)
		}
		time.Sleep(time.Millisecond)
		if err := unix.PtraceInterrupt(pid); err != nil {
			return 0, fmt.Errorf("ptrace interrupt %d: %w", pid, err)
		}
		if _, err := unix.Wait4(pid, ws, unix.WALL, nil); err != nil {
			return 0, fmt.Errorf("wait for %d to stop: %w", pid, err)
		}
	}
}

// runInjected runs the syscall set up in pid's registers (by the
// caller, on a process in an event stop): it resumes pid to the
// syscall's entry stop, then to its exit stop, where *ws leaves it.
// Signals that arrive meanwhile are held back and returned, to be
// raised again once the registers are back.
func runInjected(pid int, ws *unix.WaitStatus) (withheld []unix.Signal, err error) {
	for stops, n := 0, 0; stops < 2; n++ {
		if n == 16 {
			return withheld, errors.New("the injected syscall did not run")
		}
		if err := unix.PtraceSyscall(pid, 0); err != nil {
			return withheld, fmt.Errorf("ptrace syscall %d: %w", pid, err)
		}
		if _, err := unix.Wait4(pid, ws, unix.WALL, nil); err != nil {
			return withheld, fmt.Errorf("wait for %d: %w", pid, err)
		}
		switch {
		case !ws.Stopped():
			return withheld, fmt.Errorf("pid %d: %w", pid, proc.ErrGone)
		case ws.StopSignal() == syscallStop:
			stops++
		case deliverable(*ws) != 0:
			withheld = append(withheld, ws.StopSignal())
		default:
			return withheld, fmt.Errorf("pid %d stopped (%v, event %d) before the injected syscall ended", pid, ws.StopSignal(), stopEvent(*ws))
		}
	}
	return withheld, nil
}

// raiseAgain sends pid the signals held back while it ran an injected
// syscall.
func raiseAgain(pid int, sigs []unix.Signal) error {
	var errs []error
	for _, s := range sigs {
		if err := unix.Tgkill(pid, pid, s); err != nil {
			errs = append(errs, fmt.Errorf("raise %v again in %d: %w", s, pid, err))
		}
	}
	return errors.Join(errs...)
}

// Securebits reads the securebits of pid as the respawn does (held.go),
// for diagnosis and tests: pid is held with ptrace for the time of one
// prctl.
func Securebits(pid int, timeout time.Duration) (uint32, error) {
	p, err := proc.OpenProcess(pid)
	if err != nil {
		return 0, err
	}
	defer p.Close()
	h, err := readHeld(p, timeout)
	if err != nil {
		return 0, err
	}
	if !h.SecurebitsRead {
		return 0, fmt.Errorf("securebits of %d: %s", pid, h.SecurebitsWhy)
	}
	return h.Securebits, nil
}
