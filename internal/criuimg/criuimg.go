// Package criuimg reads the two records of a CRIU checkpoint the hook
// needs: the inotify watches of files.img, each with the path the
// watched file had in the container's mount namespace and the id of its
// mount, and the mount point of each mount id (mountpoints-N.img). A checkpoint is
// the container's data (its paths, its number of watches): the read is
// bounded in bytes and in records, and the parse is linear.
//
// The layout is CRIU's (images/fdinfo.proto, fsnotify.proto, fh.proto,
// criu/include/magic.h), written here from that documented format: two
// little-endian 32-bit magics (the common one, then files.img's), then
// records, each a 32-bit little-endian size and a protobuf file_entry of
// that size. Only the fields below are read; every other one is skipped
// by its wire type.
package criuimg

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// The magics of files.img and mountpoints-N.img (criu/include/magic.h).
const (
	commonMagic = 0x54564319
	filesMagic  = 0x56303138
	mntsMagic   = 0x55563928
)

// Field numbers of the messages read (images/*.proto).
const (
	fileEntryInotify = 13 // file_entry.ify: inotify_file_entry
	inotifyWd        = 5  // inotify_file_entry.wd: repeated inotify_wd_entry
	wdHandle         = 7  // inotify_wd_entry.f_handle: fh_entry
	handlePath       = 4  // fh_entry.path: string
	handleMntID      = 5  // fh_entry.mnt_id: uint32
	mntID            = 2  // mnt_entry.mnt_id: uint32
	mntMountpoint    = 7  // mnt_entry.mountpoint: string
	// MaxMounts bounds the mounts of one mountpoints image.
	MaxMounts = 1 << 16
)

// Bounds. A systemd container watches some ten cgroup files and a few
// directories; a container with a thousand units, a few thousand.
const (
	// MaxImage bounds the bytes of files.img read.
	MaxImage = 64 << 20
	// MaxRecord bounds one file_entry.
	MaxRecord = 4 << 20
	// MaxWatches bounds the watches returned.
	MaxWatches = 1 << 16
	// MaxPath bounds one watched path (the kernel's PATH_MAX).
	MaxPath = 4096
)

// Watch is one inotify watch of the checkpoint: the path of the watched
// file in the container's mount namespace when it was dumped (empty when
// CRIU recorded none), and the id of the mount it was found on then.
type Watch struct {
	Path  string
	MntID uint32
}

// ErrNotFiles: the image does not start with files.img's magics.
var ErrNotFiles = errors.New("not a CRIU files.img")

// InotifyWatches reads the inotify watches of files.img from r.
func InotifyWatches(r io.Reader) ([]Watch, error) {
	var out []Watch
	err := records(r, "files.img", filesMagic, ErrNotFiles, func(rec []byte) error {
		var err error
		out, err = appendWatches(out, rec)
		return err
	})
	return out, err
}

// ErrNotMounts: the image does not start with mountpoints-N.img's magics.
var ErrNotMounts = errors.New("not a CRIU mountpoints image")

// Mountpoints reads a mountpoints-N.img from r: the mount point of each
// mount id of that mount namespace, as the dump recorded them.
func Mountpoints(r io.Reader) (map[uint32]string, error) {
	out := map[uint32]string{}
	err := records(r, "mountpoints image", mntsMagic, ErrNotMounts, func(rec []byte) error {
		var id uint32
		var mp string
		err := fields(rec, func(num int, v []byte, x uint64) error {
			switch {
			case num == mntID && v == nil:
				id = uint32(x)
			case num == mntMountpoint && v != nil:
				if len(v) > MaxPath {
					return fmt.Errorf("a mount point of %d bytes", len(v))
				}
				mp = string(v)
			}
			return nil
		})
		if err != nil {
			return err
		}
		if len(out) >= MaxMounts {
			return fmt.Errorf("more than %d mounts", MaxMounts)
		}
		out[id] = mp
		return nil
	})
	return out, err
}

// records reads an image's magics (the common one, then magic), then
// calls f with each record, in order.
func records(r io.Reader, what string, magic uint32, wrong error, f func(rec []byte) error) error {
	br := bufio.NewReader(io.LimitReader(r, MaxImage+1))
	var head [8]byte
	if _, err := io.ReadFull(br, head[:]); err != nil {
		return fmt.Errorf("%s: read its magic: %w", what, err)
	}
	if binary.LittleEndian.Uint32(head[:4]) != commonMagic || binary.LittleEndian.Uint32(head[4:]) != magic {
		return wrong
	}
	read := int64(len(head))
	var size [4]byte
	buf := make([]byte, 0, 4096)
	for {
		_, err := io.ReadFull(br, size[:])
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: a record's size at byte %d: %w", what, read, err)
		}
		n := int64(binary.LittleEndian.Uint32(size[:]))
		if n > MaxRecord {
			return fmt.Errorf("%s: a record of %d bytes at byte %d, more than %d", what, n, read, MaxRecord)
		}
		read += 4 + n
		if read > MaxImage {
			return fmt.Errorf("%s: more than %d bytes", what, MaxImage)
		}
		if int64(cap(buf)) < n {
			buf = make([]byte, n)
		}
		buf = buf[:n]
		if _, err := io.ReadFull(br, buf); err != nil {
			return fmt.Errorf("%s: a record of %d bytes: %w", what, n, err)
		}
		if err := f(buf); err != nil {
			return fmt.Errorf("%s: record ending at byte %d: %w", what, read, err)
		}
	}
}

// appendWatches appends the watches of one file_entry.
func appendWatches(out []Watch, entry []byte) ([]Watch, error) {
	return out, fields(entry, func(num int, v []byte, _ uint64) error {
		if num != fileEntryInotify || v == nil {
			return nil
		}
		return fields(v, func(num int, v []byte, _ uint64) error {
			if num != inotifyWd || v == nil {
				return nil
			}
			if len(out) >= MaxWatches {
				return fmt.Errorf("more than %d inotify watches", MaxWatches)
			}
			var w Watch
			err := fields(v, func(num int, v []byte, _ uint64) error {
				if num != wdHandle || v == nil {
					return nil
				}
				return fields(v, func(num int, v []byte, x uint64) error {
					switch {
					case num == handlePath && v != nil:
						if len(v) > MaxPath {
							return fmt.Errorf("a watched path of %d bytes", len(v))
						}
						w.Path = string(v)
					case num == handleMntID && v == nil:
						w.MntID = uint32(x)
					}
					return nil
				})
			})
			if err != nil {
				return err
			}
			out = append(out, w)
			return nil
		})
	})
}

// fields calls f for each field of the protobuf message b, in order: its
// number and, for a length-delimited field, its bytes (a sub-slice of b),
// else nil and its value (varint, or a fixed 32 or 64 bits).
func fields(b []byte, f func(num int, v []byte, x uint64) error) error {
	for len(b) > 0 {
		key, n := uvarint(b)
		if n <= 0 {
			return errors.New("a field key is not a varint")
		}
		b = b[n:]
		num, typ := int(key>>3), key&7
		if num <= 0 {
			return fmt.Errorf("field number %d", num)
		}
		switch typ {
		case 0: // varint
			x, n := uvarint(b)
			if n <= 0 {
				return fmt.Errorf("field %d: not a varint", num)
			}
			b = b[n:]
			if err := f(num, nil, x); err != nil {
				return err
			}
		case 1: // 64 bits
			if len(b) < 8 {
				return fmt.Errorf("field %d: cut short", num)
			}
			x := binary.LittleEndian.Uint64(b)
			b = b[8:]
			if err := f(num, nil, x); err != nil {
				return err
			}
		case 2: // length-delimited
			l, n := uvarint(b)
			if n <= 0 || l > uint64(len(b)-n) {
				return fmt.Errorf("field %d: bad length", num)
			}
			v := b[n : n+int(l)]
			b = b[n+int(l):]
			if err := f(num, v, 0); err != nil {
				return err
			}
		case 5: // 32 bits
			if len(b) < 4 {
				return fmt.Errorf("field %d: cut short", num)
			}
			x := uint64(binary.LittleEndian.Uint32(b))
			b = b[4:]
			if err := f(num, nil, x); err != nil {
				return err
			}
		default:
			return fmt.Errorf("field %d: wire type %d", num, typ)
		}
	}
	return nil
}

// uvarint is binary.Uvarint with its meaning of n: 0 or less when b does
// not hold a whole varint of at most 10 bytes.
func uvarint(b []byte) (uint64, int) { return binary.Uvarint(b) }
