package rdma

import (
	"fmt"
	"strconv"
	"strings"
)

// FileID names one needle: volume, needle id and cookie.
type FileID struct {
	VolumeID uint32
	NeedleID uint64
	Cookie   uint32
}

// String formats the id as SeaweedFS does ("3,01637037d6").
func (f FileID) String() string {
	id := fmt.Sprintf("%x", f.NeedleID)
	if len(id)%2 == 1 {
		id = "0" + id
	}
	return fmt.Sprintf("%d,%s%08x", f.VolumeID, id, f.Cookie)
}

func badFileID(input, format string, args ...any) error {
	return fmt.Errorf("%w %q: %s", ErrBadFileID, input, fmt.Sprintf(format, args...))
}

// ParseFileID parses a file id the way rdma-cat does (SeaweedFS's URL path
// form): "VOLUME,KEYCOOKIE", an optional ".ext" and an optional "_DELTA"
// added to the needle id. A volume id over 32 bits is an error.
func ParseFileID(input string) (FileID, error) {
	comma := strings.IndexByte(input, ',')
	if comma <= 0 {
		return FileID{}, badFileID(input, "no volume id before a comma (expected like \"3,01637037d6\")")
	}
	volumeText, rest := input[:comma], input[comma+1:]
	if strings.TrimLeft(volumeText, "0123456789") != "" {
		return FileID{}, badFileID(input, "volume id %q is not a decimal number", volumeText)
	}
	volumeID, err := strconv.ParseUint(volumeText, 10, 32)
	if err != nil {
		return FileID{}, badFileID(input, "volume id %q is not a 32-bit number", volumeText)
	}
	if dot := strings.LastIndexByte(rest, '.'); dot >= 0 {
		rest = rest[:dot]
	}
	keyCookie, delta := rest, ""
	hasDelta := false
	if underscore := strings.LastIndexByte(rest, '_'); underscore > 0 {
		keyCookie, delta, hasDelta = rest[:underscore], rest[underscore+1:], true
	}
	if len(keyCookie) <= 8 {
		return FileID{}, badFileID(input, "%d hex digits are too few for a needle id and an 8-digit cookie", len(keyCookie))
	}
	if len(keyCookie) > 16+8 {
		return FileID{}, badFileID(input, "%d hex digits are too many for a needle id and a cookie", len(keyCookie))
	}
	idText, cookieText := keyCookie[:len(keyCookie)-8], keyCookie[len(keyCookie)-8:]
	needleID, err := parseHex(idText, 64)
	if err != nil {
		return FileID{}, badFileID(input, "needle id %q is not hex", idText)
	}
	cookie, err := parseHex(cookieText, 32)
	if err != nil {
		return FileID{}, badFileID(input, "cookie %q is not hex", cookieText)
	}
	if hasDelta {
		if delta == "" || strings.TrimLeft(delta, "0123456789") != "" {
			return FileID{}, badFileID(input, "delta %q is not a decimal number", delta)
		}
		value, err := strconv.ParseUint(delta, 10, 64)
		if err != nil || needleID+value < needleID {
			return FileID{}, badFileID(input, "delta %q does not fit the needle id", delta)
		}
		needleID += value
	}
	return FileID{VolumeID: uint32(volumeID), NeedleID: needleID, Cookie: uint32(cookie)}, nil
}

func parseHex(text string, bits int) (uint64, error) {
	for i := 0; i < len(text); i++ {
		c := text[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return 0, strconv.ErrSyntax
		}
	}
	return strconv.ParseUint(text, 16, bits)
}
