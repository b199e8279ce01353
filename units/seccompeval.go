package units

// What a daemon's seccomp filters answer to one syscall, judged before
// the hook makes the daemon run that syscall (securebits.go): a classic
// BPF interpreter for the instructions the kernel accepts in a seccomp
// filter (seccomp_check_filter), over struct seccomp_data.

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"
)

// seccompData is struct seccomp_data.
type seccompData struct {
	Nr   uint32
	Arch uint32
	IP   uint64
	Args [6]uint64
}

const seccompDataSize = 64

func (d seccompData) bytes() []byte {
	b := make([]byte, seccompDataSize)
	binary.LittleEndian.PutUint32(b[0:], d.Nr)
	binary.LittleEndian.PutUint32(b[4:], d.Arch)
	binary.LittleEndian.PutUint64(b[8:], d.IP)
	for i, a := range d.Args {
		binary.LittleEndian.PutUint64(b[16+8*i:], a)
	}
	return b
}

// seccompAllows says whether every filter lets the syscall d run
// (SECCOMP_RET_ALLOW or SECCOMP_RET_LOG), and if not, which filter
// answers what. The kernel runs every filter and takes the action of
// highest precedence; ALLOW and LOG come last, so the syscall runs only
// if each filter returns one of them.
func seccompAllows(filters []SeccompFilter, d seccompData) error {
	for i, f := range filters {
		ret, err := runSeccompFilter(f.Insns, d)
		if err != nil {
			return fmt.Errorf("seccomp filter %d: %w", i, err)
		}
		switch ret & unix.SECCOMP_RET_ACTION_FULL {
		case unix.SECCOMP_RET_ALLOW, unix.SECCOMP_RET_LOG:
		default:
			return fmt.Errorf("seccomp filter %d answers syscall %d with %#x", i, d.Nr, ret)
		}
	}
	return nil
}

// runSeccompFilter runs one program on d and returns its result. An
// instruction the kernel would not have accepted is an error.
func runSeccompFilter(insns [][4]uint32, d seccompData) (uint32, error) {
	data := d.bytes()
	var a, x uint32
	var mem [16]uint32 // BPF_MEMWORDS
	for pc := 0; pc < len(insns); pc++ {
		code, jt, jf, k := uint16(insns[pc][0]), insns[pc][1], insns[pc][2], insns[pc][3]
		switch code {
		case unix.BPF_LD | unix.BPF_W | unix.BPF_ABS:
			if k%4 != 0 || k+4 > seccompDataSize {
				return 0, fmt.Errorf("instruction %d loads at %d", pc, k)
			}
			a = binary.LittleEndian.Uint32(data[k:])
		case unix.BPF_LD | unix.BPF_W | unix.BPF_LEN:
			a = seccompDataSize
		case unix.BPF_LDX | unix.BPF_W | unix.BPF_LEN:
			x = seccompDataSize
		case unix.BPF_LD | unix.BPF_IMM:
			a = k
		case unix.BPF_LDX | unix.BPF_IMM:
			x = k
		case unix.BPF_LD | unix.BPF_MEM, unix.BPF_LDX | unix.BPF_MEM, unix.BPF_ST, unix.BPF_STX:
			if k >= uint32(len(mem)) {
				return 0, fmt.Errorf("instruction %d uses scratch word %d", pc, k)
			}
			switch code {
			case unix.BPF_LD | unix.BPF_MEM:
				a = mem[k]
			case unix.BPF_LDX | unix.BPF_MEM:
				x = mem[k]
			case unix.BPF_ST:
				mem[k] = a
			default:
				mem[k] = x
			}
		case unix.BPF_MISC | unix.BPF_TAX:
			x = a
		case unix.BPF_MISC | unix.BPF_TXA:
			a = x
		case unix.BPF_RET | unix.BPF_K:
			return k, nil
		case unix.BPF_RET | unix.BPF_A:
			return a, nil
		case unix.BPF_JMP | unix.BPF_JA:
			if int(k) < 0 || pc+1+int(k) >= len(insns) {
				return 0, fmt.Errorf("instruction %d jumps out of the program", pc)
			}
			pc += int(k)
		default:
			switch code & 0x07 {
			case unix.BPF_ALU:
				op := x
				if code&0x08 == unix.BPF_K {
					op = k
				}
				switch code &^ 0x08 {
				case unix.BPF_ALU | unix.BPF_ADD:
					a += op
				case unix.BPF_ALU | unix.BPF_SUB:
					a -= op
				case unix.BPF_ALU | unix.BPF_MUL:
					a *= op
				case unix.BPF_ALU | unix.BPF_DIV, unix.BPF_ALU | unix.BPF_MOD:
					if op == 0 {
						return 0, nil // the kernel's program ends, returning 0
					}
					if code&^0x08 == unix.BPF_ALU|unix.BPF_DIV {
						a /= op
					} else {
						a %= op
					}
				case unix.BPF_ALU | unix.BPF_AND:
					a &= op
				case unix.BPF_ALU | unix.BPF_OR:
					a |= op
				case unix.BPF_ALU | unix.BPF_XOR:
					a ^= op
				case unix.BPF_ALU | unix.BPF_LSH:
					a <<= op & 31
				case unix.BPF_ALU | unix.BPF_RSH:
					a >>= op & 31
				case unix.BPF_ALU | unix.BPF_NEG:
					a = -a
				default:
					return 0, fmt.Errorf("instruction %d: unknown ALU code %#x", pc, code)
				}
			case unix.BPF_JMP:
				op := x
				if code&0x08 == unix.BPF_K {
					op = k
				}
				var taken bool
				switch code &^ 0x08 {
				case unix.BPF_JMP | unix.BPF_JEQ:
					taken = a == op
				case unix.BPF_JMP | unix.BPF_JGT:
					taken = a > op
				case unix.BPF_JMP | unix.BPF_JGE:
					taken = a >= op
				case unix.BPF_JMP | unix.BPF_JSET:
					taken = a&op != 0
				default:
					return 0, fmt.Errorf("instruction %d: unknown jump code %#x", pc, code)
				}
				off := jf
				if taken {
					off = jt
				}
				if pc+1+int(off) >= len(insns) {
					return 0, fmt.Errorf("instruction %d jumps out of the program", pc)
				}
				pc += int(off)
			default:
				return 0, fmt.Errorf("instruction %d: code %#x is not one of seccomp's", pc, code)
			}
		}
	}
	return 0, fmt.Errorf("the program ends without a return")
}
