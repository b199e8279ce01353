package units

import (
	"fmt"
	"path"
	"strings"
)

// PathUnitName returns the unit name systemd derives from a mount point
// for a unit of the given suffix ("automount", "mount"), the way
// `systemd-escape --path --suffix=automount` does.
func PathUnitName(p, suffix string) string {
	return EscapePath(p) + "." + suffix
}

// EscapePath escapes a path as systemd does for unit names: the path is
// simplified, the slashes at both ends are dropped, inner slashes become
// dashes and every byte outside [A-Za-z0-9:_.] (and a leading dot) is
// written as \xNN. The root is "-".
func EscapePath(p string) string {
	p = strings.Trim(path.Clean("/"+p), "/")
	if p == "" {
		return "-"
	}
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c == '/':
			b.WriteByte('-')
		case c == '.' && i == 0:
			fmt.Fprintf(&b, `\x%02x`, c)
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == ':', c == '_', c == '.':
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, `\x%02x`, c)
		}
	}
	return b.String()
}
