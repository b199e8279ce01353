package criuimg

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"time"
)

// Encoders of the protobuf wire format, for the tests' images.
func varint(x uint64) []byte { return binary.AppendUvarint(nil, x) }

func key(num, typ int) []byte { return varint(uint64(num<<3 | typ)) }

func vfield(num int, x uint64) []byte { return append(key(num, 0), varint(x)...) }

func bfield(num int, b []byte) []byte {
	return append(append(key(num, 2), varint(uint64(len(b)))...), b...)
}

func cat(bs ...[]byte) []byte { return bytes.Join(bs, nil) }

// handle is an fh_entry with a path and a mount id.
func handle(path string, mnt uint32) []byte {
	return cat(vfield(1, 8), vfield(2, 1), vfield(3, 0xdead), vfield(3, 0xbeef), bfield(4, []byte(path)), vfield(5, uint64(mnt)))
}

// wd is an inotify_wd_entry (the fields CRIU writes, in its order).
func wd(path string, mnt uint32) []byte {
	return cat(vfield(1, 7), vfield(2, 1234), vfield(3, 0x2), vfield(4, 0), vfield(5, 0x1f), vfield(6, 1), bfield(7, handle(path, mnt)))
}

// inotifyEntry is a file_entry of type inotify with the given watches.
func inotifyEntry(wds ...[]byte) []byte {
	ify := cat(vfield(1, 7), vfield(2, 0x80800), bfield(4, cat(vfield(1, 0), vfield(2, 0))))
	for _, w := range wds {
		ify = append(ify, bfield(5, w)...)
	}
	return cat(vfield(1, 8), vfield(2, 7), bfield(13, ify))
}

// regEntry is a file_entry of another type (a regular file).
func regEntry(path string) []byte {
	return cat(vfield(1, 1), vfield(2, 3), bfield(3, cat(vfield(1, 3), vfield(2, 0x8002), bfield(5, []byte(path)))))
}

// image is a files.img of records.
func image(records ...[]byte) []byte { return imageOf(filesMagic, records...) }

// imageOf is an image of the given kind (its magic) holding records.
func imageOf(magic uint32, records ...[]byte) []byte {
	b := binary.LittleEndian.AppendUint32(nil, commonMagic)
	b = binary.LittleEndian.AppendUint32(b, magic)
	for _, r := range records {
		b = binary.LittleEndian.AppendUint32(b, uint32(len(r)))
		b = append(b, r...)
	}
	return b
}

func TestInotifyWatches(t *testing.T) {
	img := image(
		regEntry("/etc/passwd"),
		inotifyEntry(wd("/sys/fs/cgroup/init.scope/cgroup.events", 41), wd("/sys/fs/cgroup/init.scope/memory.events", 41)),
		regEntry("/sys/fs/cgroup/init.scope/memory.pressure"),
		inotifyEntry(wd("/sys/fs/cgroup/system.slice/srv-a.mount/cgroup.events", 41)),
		inotifyEntry(),
	)
	got, err := InotifyWatches(bytes.NewReader(img))
	if err != nil {
		t.Fatal(err)
	}
	want := []Watch{
		{"/sys/fs/cgroup/init.scope/cgroup.events", 41},
		{"/sys/fs/cgroup/init.scope/memory.events", 41},
		{"/sys/fs/cgroup/system.slice/srv-a.mount/cgroup.events", 41},
	}
	if len(got) != len(want) {
		t.Fatalf("watches %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("watch %d: %v, want %v", i, got[i], want[i])
		}
	}
	if got, err := InotifyWatches(bytes.NewReader(image())); err != nil || len(got) != 0 {
		t.Errorf("an image without records: %v, %v", got, err)
	}
}

// A checkpoint is the container's data: a wrong magic, a record cut
// short or too large, a malformed field, too many watches or too long a
// path is an error, found in time linear in the image.
func TestInotifyWatchesBounded(t *testing.T) {
	many := make([][]byte, 0, MaxWatches+1)
	for range MaxWatches + 1 {
		many = append(many, wd("/x", 1))
	}
	huge := binary.LittleEndian.AppendUint32(image(), MaxRecord+1)
	for _, tc := range []struct {
		name string
		img  []byte
		want string
	}{
		{"other magic", append([]byte{1, 2, 3, 4, 5, 6, 7, 8}, 0), "not a CRIU files.img"},
		{"no magic", []byte{1, 2}, "read its magic"},
		{"record too large", huge, "more than"},
		{"record cut short", image(inotifyEntry(wd("/a", 1)))[:30], "a record of"},
		{"size cut short", append(image(), 1, 2), "a record's size"},
		{"length past the end", image(cat(vfield(1, 8), key(13, 2), varint(1000), []byte("xx"))), "bad length"},
		{"bad wire type", image(cat(key(1, 3), varint(1))), "wire type"},
		{"field number 0", image(cat(key(0, 0), varint(1))), "field number 0"},
		{"too many watches", image(inotifyEntry(many...)), "more than 65536 inotify watches"},
		{"path too long", image(inotifyEntry(wd("/"+strings.Repeat("a", MaxPath), 1))), "a watched path of"},
	} {
		_, err := InotifyWatches(bytes.NewReader(tc.img))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want %q", tc.name, err, tc.want)
		}
		if tc.name == "other magic" && !errors.Is(err, ErrNotFiles) {
			t.Errorf("%s: not ErrNotFiles: %v", tc.name, err)
		}
	}
	// The largest image read is parsed in well under a second: the parse
	// is linear (nested messages are walked once).
	var recs [][]byte
	entry := inotifyEntry(wd("/sys/fs/cgroup/"+strings.Repeat("d/", 100)+"cgroup.events", 1))
	for size := 8; size+len(entry)+4 < MaxImage; size += len(entry) + 4 {
		recs = append(recs, entry)
		if len(recs) == MaxWatches {
			break
		}
	}
	start := time.Now()
	got, err := InotifyWatches(bytes.NewReader(image(recs...)))
	if err != nil || len(got) != len(recs) {
		t.Fatalf("%d records: %d watches, %v", len(recs), len(got), err)
	}
	t.Logf("%d records (%d bytes each) in %s", len(recs), len(entry), time.Since(start))
}

// mnt is a mnt_entry with the fields CRIU writes first.
func mnt(id uint32, root, mp string) []byte {
	return cat(vfield(1, 31), vfield(2, uint64(id)), vfield(3, 0x1f), vfield(4, 71), vfield(5, 0x200000),
		bfield(6, []byte(root)), bfield(7, []byte(mp)), bfield(8, []byte("cgroup")), bfield(9, []byte("rw")), vfield(10, 0))
}

func TestMountpoints(t *testing.T) {
	got, err := Mountpoints(bytes.NewReader(imageOf(mntsMagic, mnt(71, "/", "/"), mnt(72, "/arh-lab/c", "/sys/fs/cgroup"))))
	if err != nil || len(got) != 2 || got[71] != "/" || got[72] != "/sys/fs/cgroup" {
		t.Errorf("mount points %v, err %v", got, err)
	}
	if _, err := Mountpoints(bytes.NewReader(image())); !errors.Is(err, ErrNotMounts) {
		t.Errorf("files.img read as a mountpoints image: %v", err)
	}
	if _, err := Mountpoints(bytes.NewReader(imageOf(mntsMagic, mnt(1, "/", "/"+strings.Repeat("m", MaxPath))))); err == nil {
		t.Error("a mount point longer than PATH_MAX was read")
	}
}
