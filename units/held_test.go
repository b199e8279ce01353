package units

import (
	"bufio"
	"io"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/testenv"
)

// setprivBits are the securebits of setpriv's "+no_setuid_fixup,
// +keep_caps_locked" (util-linux sets them, then execs).
const (
	setprivBitsArg = "+no_setuid_fixup,+keep_caps_locked"
	setprivBits    = 1<<2 | 1<<5
)

// started runs args under setpriv's securebits, with a pipe as stdin,
// and returns it pinned, the pipe's writing end and its output.
func started(t *testing.T, args ...string) (*proc.Process, io.WriteCloser, *bufio.Reader, *exec.Cmd) {
	t.Helper()
	if _, err := exec.LookPath("setpriv"); err != nil {
		testenv.Skip(t, "no setpriv: %v", err)
	}
	cmd := exec.Command("setpriv", append([]string{"--securebits", setprivBitsArg, "--"}, args...)...)
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	// setpriv has exec'd args[0] once its comm is that.
	for deadline := time.Now().Add(testenv.Scale(5 * time.Second)); ; time.Sleep(5 * time.Millisecond) {
		st, err := proc.ReadStat(cmd.Process.Pid)
		if err == nil && st.Comm == args[0] && st.State == 'S' {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%v did not start sleeping: %+v, %v", args, st, err)
		}
	}
	p, err := proc.OpenProcess(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p, in, bufio.NewReader(out), cmd
}

// The securebits of another process are read by making it run
// PR_GET_SECUREBITS, and the process goes on as if nothing had happened:
// a read() it was blocked in, interrupted by the stop (ERESTARTSYS), is
// run again and returns what is written afterwards. Read three times,
// the same.
func TestSecurebitsReadFromAHeldProcess(t *testing.T) {
	testenv.RequireRoot(t, "ptrace of a process of another credential set")
	if !securebitsReadable {
		testenv.Skip(t, "securebits are read on x86-64 only, this is %s", runtime.GOARCH)
	}
	p, in, out, _ := started(t, "sh", "-c", `read x; echo "got $x"`)
	for i := 0; i < 3; i++ {
		h, err := readHeld(p, testenv.Scale(10*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if !h.SecurebitsRead || h.Securebits != setprivBits {
			t.Fatalf("read %d: securebits %#x (read: %v, %s); want %#x", i, h.Securebits, h.SecurebitsRead, h.SecurebitsWhy, setprivBits)
		}
		if len(h.Filters) != 0 {
			t.Fatalf("read %d: filters %v of a process without", i, h.Filters)
		}
	}
	io.WriteString(in, "hello\n")
	line, err := out.ReadString('\n')
	if err != nil || line != "got hello\n" {
		t.Fatalf("the shell after the reads: %q, %v; want %q", line, err, "got hello\n")
	}
}

// A sleep interrupted by the stop (ERESTART_RESTARTBLOCK) is restarted
// through restart_syscall and ends as it would have: exit 0.
func TestSecurebitsReadRestartsASleep(t *testing.T) {
	testenv.RequireRoot(t, "ptrace of a process of another credential set")
	if !securebitsReadable {
		testenv.Skip(t, "securebits are read on x86-64 only, this is %s", runtime.GOARCH)
	}
	p, _, _, cmd := started(t, "sleep", "1")
	h, err := readHeld(p, testenv.Scale(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if !h.SecurebitsRead || h.Securebits != setprivBits {
		t.Fatalf("securebits %#x (read: %v, %s); want %#x", h.Securebits, h.SecurebitsRead, h.SecurebitsWhy, setprivBits)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("sleep 1 after the read: %v", err)
		}
	case <-time.After(testenv.Scale(10 * time.Second)):
		t.Fatal("sleep 1 still runs 10 s after the read")
	}
}

// A process whose filter would kill it for the prctl is never made to run
// it: its securebits are reported unread, and it lives on.
func TestSecurebitsNotReadWhereTheFilterForbids(t *testing.T) {
	testenv.RequireRoot(t, "ptrace and PTRACE_SECCOMP_GET_FILTER need CAP_SYS_ADMIN")
	if !securebitsReadable {
		testenv.Skip(t, "securebits are read on x86-64 only, this is %s", runtime.GOARCH)
	}
	killPrctl := SeccompFilter{Insns: [][4]uint32{
		{unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, 0, 0, 0},
		{unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, 0, 1, unix.SYS_PRCTL},
		{unix.BPF_RET | unix.BPF_K, 0, 0, unix.SECCOMP_RET_KILL_PROCESS},
		{unix.BPF_RET | unix.BPF_K, 0, 0, unix.SECCOMP_RET_ALLOW},
	}}
	p := seccompHolder(t, []SeccompFilter{killPrctl})
	h, err := readHeld(p, testenv.Scale(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if h.SecurebitsRead || !strings.Contains(h.SecurebitsWhy, "would not let prctl") {
		t.Fatalf("securebits %#x, read %v (%q): want unread because of the filter", h.Securebits, h.SecurebitsRead, h.SecurebitsWhy)
	}
	time.Sleep(100 * time.Millisecond)
	if err := p.Check(); err != nil {
		t.Fatalf("the holder after the read: %v", err)
	}
}

// The interpreter gives what the kernel's filters give, on the
// instructions seccomp accepts.
func TestRunSeccompFilter(t *testing.T) {
	ld := func(off uint32) [4]uint32 { return [4]uint32{unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, 0, 0, off} }
	ret := func(k uint32) [4]uint32 { return [4]uint32{unix.BPF_RET | unix.BPF_K, 0, 0, k} }
	jeq := func(k uint32, jt, jf uint32) [4]uint32 {
		return [4]uint32{unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, jt, jf, k}
	}
	const allow, eperm = unix.SECCOMP_RET_ALLOW, unix.SECCOMP_RET_ERRNO | 1
	data := seccompData{Nr: unix.SYS_PRCTL, Arch: 0xc000003e, IP: 0x1234_5678_9abc, Args: [6]uint64{unix.PR_GET_SECUREBITS, 0x1_0000_0002}}
	for _, tc := range []struct {
		name  string
		insns [][4]uint32
		want  uint32
		err   bool
	}{
		{"allow", [][4]uint32{ret(allow)}, allow, false},
		{"by nr", [][4]uint32{ld(0), jeq(unix.SYS_PRCTL, 0, 1), ret(eperm), ret(allow)}, eperm, false},
		{"other nr", [][4]uint32{ld(0), jeq(unix.SYS_GETPPID, 0, 1), ret(eperm), ret(allow)}, allow, false},
		{"arch", [][4]uint32{ld(4), jeq(0xc000003e, 1, 0), ret(unix.SECCOMP_RET_KILL_PROCESS), ret(allow)}, allow, false},
		{"arg0", [][4]uint32{ld(16), jeq(unix.PR_GET_SECUREBITS, 0, 1), ret(eperm), ret(allow)}, eperm, false},
		{"arg1 high word", [][4]uint32{ld(24 + 4), jeq(1, 0, 1), ret(eperm), ret(allow)}, eperm, false},
		{"ip low word", [][4]uint32{ld(8), jeq(0x5678_9abc, 0, 1), ret(eperm), ret(allow)}, eperm, false},
		{"len", [][4]uint32{{unix.BPF_LD | unix.BPF_W | unix.BPF_LEN, 0, 0, 0}, jeq(64, 0, 1), ret(eperm), ret(allow)}, eperm, false},
		{"alu and jset", [][4]uint32{ld(0), {unix.BPF_ALU | unix.BPF_AND | unix.BPF_K, 0, 0, 0xff}, {unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K, 0, 1, 0x40}, ret(eperm), ret(allow)}, allow, false},
		{"scratch and x", [][4]uint32{ld(0), {unix.BPF_ST, 0, 0, 3}, {unix.BPF_LDX | unix.BPF_MEM, 0, 0, 3}, {unix.BPF_LD | unix.BPF_IMM, 0, 0, unix.SYS_PRCTL}, {unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_X, 0, 1, 0}, ret(eperm), ret(allow)}, eperm, false},
		{"jgt/jge", [][4]uint32{ld(0), {unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K, 0, 2, unix.SYS_PRCTL}, {unix.BPF_JMP | unix.BPF_JGT | unix.BPF_K, 1, 0, unix.SYS_PRCTL}, ret(eperm), ret(allow)}, eperm, false},
		{"division by zero", [][4]uint32{{unix.BPF_LDX | unix.BPF_IMM, 0, 0, 0}, {unix.BPF_ALU | unix.BPF_DIV | unix.BPF_X, 0, 0, 0}, ret(allow)}, 0, false},
		{"ja", [][4]uint32{{unix.BPF_JMP | unix.BPF_JA, 0, 0, 1}, ret(eperm), ret(allow)}, allow, false},
		{"load out of seccomp_data", [][4]uint32{ld(64), ret(allow)}, 0, true},
		{"jump out", [][4]uint32{jeq(0, 5, 5), ret(allow)}, 0, true},
		{"no return", [][4]uint32{ld(0)}, 0, true},
		{"not seccomp's", [][4]uint32{{unix.BPF_LD | unix.BPF_B | unix.BPF_IND, 0, 0, 0}, ret(allow)}, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := runSeccompFilter(tc.insns, data)
			if (err != nil) != tc.err || got != tc.want {
				t.Fatalf("got %#x, %v; want %#x, error %v", got, err, tc.want, tc.err)
			}
		})
	}
	// Every filter must allow: the kernel takes the strictest answer.
	allowAll := SeccompFilter{Insns: [][4]uint32{ret(allow)}}
	logAll := SeccompFilter{Insns: [][4]uint32{ret(unix.SECCOMP_RET_LOG)}}
	trace := SeccompFilter{Insns: [][4]uint32{ret(unix.SECCOMP_RET_TRACE)}}
	if err := seccompAllows([]SeccompFilter{allowAll, logAll}, data); err != nil {
		t.Errorf("allow and log: %v", err)
	}
	if err := seccompAllows([]SeccompFilter{allowAll, trace}, data); err == nil {
		t.Error("allow and trace: allowed")
	}
	if err := seccompAllows(nil, data); err != nil {
		t.Errorf("no filter: %v", err)
	}
}
