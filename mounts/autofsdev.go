package mounts

import (
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The /dev/autofs control interface (linux/auto_dev-ioctl.h). Every
// command takes a struct autofs_dev_ioctl followed by an optional path.
const (
	devIoctlVersionMajor = 1
	devIoctlVersionMinor = 1

	devIoctlHeaderSize = 24 // sizeof(struct autofs_dev_ioctl)

	cmdVersion   = 0x71
	cmdOpenMount = 0x74
	cmdReady     = 0x76
	cmdFail      = 0x77
	cmdCatatonic = 0x79
)

// ioctlNumber is _IOWR(0x93, cmd, struct autofs_dev_ioctl).
func ioctlNumber(cmd uintptr) uintptr {
	const iocWrite, iocRead = 1, 2
	return (iocRead|iocWrite)<<30 | devIoctlHeaderSize<<16 | 0x93<<8 | cmd
}

// devIoctl mirrors struct autofs_dev_ioctl; Arg1 and Arg2 are the command's
// union (devid, token, status, ...).
type devIoctl struct {
	VerMajor uint32
	VerMinor uint32
	Size     uint32
	IoctlFD  int32
	Arg1     uint32
	Arg2     uint32
}

// ControlDevice is an open /dev/autofs.
type ControlDevice struct{ f *os.File }

// OpenControlDevice opens /dev/autofs and checks its protocol version.
func OpenControlDevice() (*ControlDevice, error) {
	f, err := os.OpenFile("/dev/autofs", os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/autofs: %w", err)
	}
	d := &ControlDevice{f: f}
	if _, err := d.call(cmdVersion, -1, 0, 0, ""); err != nil {
		f.Close()
		return nil, fmt.Errorf("/dev/autofs version check: %w", err)
	}
	return d, nil
}

// Close closes the control device.
func (d *ControlDevice) Close() error { return d.f.Close() }

func (d *ControlDevice) call(cmd uintptr, fd int, a1, a2 uint32, path string) (devIoctl, error) {
	buf := make([]byte, devIoctlHeaderSize+len(path)+1)
	p := (*devIoctl)(unsafe.Pointer(&buf[0]))
	p.VerMajor, p.VerMinor = devIoctlVersionMajor, devIoctlVersionMinor
	p.Size = uint32(len(buf))
	if path == "" {
		p.Size = devIoctlHeaderSize
	}
	p.IoctlFD = int32(fd)
	p.Arg1, p.Arg2 = a1, a2
	copy(buf[devIoctlHeaderSize:], path)
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, d.f.Fd(), ioctlNumber(cmd), uintptr(unsafe.Pointer(&buf[0])))
	if errno != 0 {
		return devIoctl{}, errno
	}
	return *p, nil
}

// OpenMount returns an ioctl fd for the autofs mount of device dev whose
// mount point is path (as the calling thread resolves it). The path walk
// crosses the mount point: run it only where a pending request cannot
// block the caller for good (a worker, TaskOf.Run).
func (d *ControlDevice) OpenMount(path string, dev uint64) (*os.File, error) {
	r, err := d.call(cmdOpenMount, -1, uint32(EncodeDev(dev)), 0, path)
	if err != nil {
		return nil, fmt.Errorf("autofs OPENMOUNT %s (dev %d:%d): %w", Escape(path), unix.Major(dev), unix.Minor(dev), err)
	}
	return os.NewFile(uintptr(r.IoctlFD), "autofs:"+path), nil
}

// Catatonic puts the mount behind an ioctl fd into catatonic mode: pending
// requests fail with ENOENT, the kernel closes its end of the master's
// pipe, and no later access waits.
func (d *ControlDevice) Catatonic(ioctlFD *os.File) error {
	_, err := d.call(cmdCatatonic, int(ioctlFD.Fd()), 0, 0, "")
	return err
}

// Ready answers pending request token with success.
func (d *ControlDevice) Ready(ioctlFD *os.File, token uint32) error {
	_, err := d.call(cmdReady, int(ioctlFD.Fd()), token, 0, "")
	return err
}

// EncodeDev encodes a device number the way the kernel's autofs interface
// carries it (new_encode_dev): in packets and in OPENMOUNT.
func EncodeDev(d uint64) uint64 {
	maj, min := uint64(unix.Major(d)), uint64(unix.Minor(d))
	return min&0xff | maj<<8 | (min&^0xff)<<12
}

// Fail answers pending request token with status (a negative errno).
func (d *ControlDevice) Fail(ioctlFD *os.File, token uint32, status int32) error {
	_, err := d.call(cmdFail, int(ioctlFD.Fd()), token, uint32(status), "")
	return err
}
