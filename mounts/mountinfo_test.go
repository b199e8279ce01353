package mounts

import (
	"errors"
	"strings"
	"testing"
)

// A systemd container after a restore: /srv/a triggered (tmpfs on top with
// a submount), /srv/b untriggered, /ind indirect with a key mounted.
const sampleMountinfo = `1450 1449 0:60 / / rw,relatime - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
1451 1450 0:61 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
1460 1450 0:66 / /srv/a rw,relatime - autofs systemd-1 rw,fd=27,pgrp=1,timeout=0,minproto=5,maxproto=5,direct,pipe_ino=40569
1461 1450 0:67 / /srv/b rw,relatime - autofs systemd-1 rw,fd=28,pgrp=1,timeout=0,minproto=5,maxproto=5,direct,pipe_ino=40572
1462 1460 0:69 / /srv/a rw,relatime - tmpfs tmpfs rw
1463 1462 0:70 / /srv/a/sub rw,relatime - tmpfs tmpfs rw
1464 1450 0:71 / /ind rw,relatime - autofs /etc/auto.ind rw,fd=5,pgrp=40,timeout=300,minproto=5,maxproto=5,indirect,pipe_ino=555
1465 1464 0:72 / /ind/k1 rw,relatime - tmpfs tmpfs rw
1466 1450 0:73 / /srv/with\040space rw,relatime - autofs systemd-1 rw,fd=29,pgrp=1,timeout=0,minproto=5,maxproto=5,direct,pipe_ino=40575
`

func TestParseTable(t *testing.T) {
	tab, err := ParseTable(strings.NewReader(sampleMountinfo))
	if err != nil {
		t.Fatal(err)
	}
	if len(tab.All) != 9 || len(tab.Autofs) != 4 {
		t.Fatalf("got %d mounts, %d autofs", len(tab.All), len(tab.Autofs))
	}
	tests := []struct {
		mp        string
		mode      Mode
		onTop     int // mount id, 0 for none
		submounts int
		dev       uint64
	}{
		{"/srv/a", ModeDirect, 1462, 1, 66},
		{"/srv/b", ModeDirect, 0, 0, 67},
		{"/ind", ModeIndirect, 0, 1, 71},
		{"/srv/with space", ModeDirect, 0, 0, 73},
	}
	for _, tt := range tests {
		a := tab.Find(tt.mp)
		if a == nil {
			t.Errorf("%s: not found", tt.mp)
			continue
		}
		if a.Options.Mode != tt.mode || len(a.Submounts) != tt.submounts || a.Dev() != tt.dev {
			t.Errorf("%s: mode %s submounts %d dev %d", tt.mp, a.Options.Mode, len(a.Submounts), a.Dev())
		}
		if got := 0; a.OnTop != nil {
			got = a.OnTop.ID
			if got != tt.onTop {
				t.Errorf("%s: on top %d, want %d", tt.mp, got, tt.onTop)
			}
		} else if tt.onTop != 0 {
			t.Errorf("%s: nothing on top, want %d", tt.mp, tt.onTop)
		}
	}
	if tab.Find("/nope") != nil {
		t.Error("Find of a missing mount point")
	}
}

func TestParseTableBadOptions(t *testing.T) {
	_, err := ParseTable(strings.NewReader("20 1 0:5 / /x rw - autofs a rw,fd=zz\n"))
	if err == nil || !strings.Contains(err.Error(), `"/x"`) {
		t.Fatalf("err = %v, want one naming the mount", err)
	}
}

func TestEscape(t *testing.T) {
	for in, want := range map[string]string{
		"/srv/a":         "/srv/a",
		"/srv/my data":   `/srv/my\040data`,
		"/srv/new\nline": `/srv/new\012line`,
		`/back\slash`:    `/back\134slash`,
		// C1 controls, bidi overrides and isolates, zero-width and other
		// format characters, separators, invalid UTF-8: escaped byte by
		// byte; other non-ASCII text is kept.
		"/srv/\u009b31m":       `/srv/\302\23331m`,
		"/srv/\u202egnp.exe":   `/srv/\342\200\256gnp.exe`,
		"/srv/a\u2066b\u2069":  `/srv/a\342\201\246b\342\201\251`,
		"/srv/zero\u200bwidth": `/srv/zero\342\200\213width`,
		"/srv/bom\ufeff":       `/srv/bom\357\273\277`,
		"/srv/line\u2028sep":   `/srv/line\342\200\250sep`,
		"/srv/bad\xffbyte":     `/srv/bad\377byte`,
		"/srv/private\ue000":   `/srv/private\356\200\200`,
		"/srv/données-日本":      "/srv/données-日本",
		"/srv/nbsp\u00a0ok":    "/srv/nbsp\u00a0ok",
	} {
		if got := Escape(in); got != want {
			t.Errorf("Escape(%q) = %q, want %q", in, got, want)
		}
	}
}

// BenchmarkParseTable: ordinary tables of 10 to 10,000 mounts, and the
// shapes a hostile container can make (TestParseTableStackedIsLinear,
// TestParseTableNestedIsLinear): 8,000 stacked autofs/tmpfs pairs, 2,000
// nested autofs mounts, and 8,000 nested ones, a table over MaxTableSize
// that is refused.
func BenchmarkParseTable(b *testing.B) {
	type input struct {
		name string
		data string
		err  error
	}
	var inputs []input
	for _, n := range []struct{ total, autofs int }{{10, 1}, {1000, 100}, {10000, 1000}} {
		inputs = append(inputs, input{name: itoa(n.total) + "-mounts", data: syntheticMountinfo(n.total, n.autofs)})
	}
	inputs = append(inputs,
		input{name: "8000-stacked-pairs", data: stackedMountinfo(8000)},
		input{name: "2000-nested", data: nestedMountinfo(2000)},
		input{name: "8000-nested-refused", data: nestedMountinfo(8000), err: ErrTableTooLarge})
	for _, in := range inputs {
		b.Run(in.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(in.data)))
			for b.Loop() {
				if _, err := ParseTable(strings.NewReader(in.data)); !errors.Is(err, in.err) {
					b.Fatalf("ParseTable: %v, want %v", err, in.err)
				}
			}
		})
	}
}

func syntheticMountinfo(total, autofs int) string {
	var sb strings.Builder
	sb.WriteString("1 0 0:1 / / rw - overlay overlay rw\n")
	every := total / max(autofs, 1)
	for i := 2; i <= total; i++ {
		id := itoa(i)
		if autofs > 0 && i%every == 0 {
			sb.WriteString(id + " 1 0:" + id + " / /srv/m" + id + " rw,relatime - autofs systemd-1 rw,fd=27,pgrp=1,timeout=0,minproto=5,maxproto=5,direct,pipe_ino=" + id + "\n")
			continue
		}
		sb.WriteString(id + " 1 0:" + id + " / /data/m" + id + " rw,relatime - tmpfs tmpfs rw,size=1024k\n")
	}
	return sb.String()
}

func itoa(i int) string {
	const d = "0123456789"
	if i < 10 {
		return d[i : i+1]
	}
	return itoa(i/10) + d[i%10:i%10+1]
}

func TestEscapeText(t *testing.T) {
	for in, want := range map[string]string{
		"unit a.automount failed":      "unit a.automount failed",
		"two\nlines":                   `two\012lines`,
		"esc \x1b[2J and csi \u009b2J": `esc \033[2J and csi \302\2332J`,
		"rtl \u202e and \u2067":        `rtl \342\200\256 and \342\201\247`,
		`back\slash kept`:              `back\slash kept`,
	} {
		if got := EscapeText(in); got != want {
			t.Errorf("EscapeText(%q) = %q, want %q", in, got, want)
		}
	}
}

// Escaping is one pass: a megabyte of bidi overrides costs about what a
// megabyte of plain text does.
func TestEscapeTextIsLinear(t *testing.T) {
	bad := strings.Repeat("\u202e", 1<<18)
	allocs := testing.AllocsPerRun(3, func() { EscapeText(bad) })
	if allocs > 64 {
		t.Errorf("EscapeText of %d bytes: %.0f allocations, want a handful", len(bad), allocs)
	}
}
