package origin

import (
	"errors"
	"strconv"
	"strings"
)

// byteRange is the half-open range [Start, End) of a blob.
type byteRange struct {
	Start, End int64
}

func (r byteRange) length() int64 { return r.End - r.Start }

var errNoRange = errors.New("no usable range")

// parseRange resolves a Range request header against a blob of the given size, as a server does.
// Only a single range of unit "bytes" is honoured (RFC 9110 lets a server ignore the rest and
// send the whole representation). It returns errNoRange for headers to ignore and ErrRange for a
// range that lies wholly outside the blob (416).
func parseRange(h string, size int64) (byteRange, error) {
	spec, ok := strings.CutPrefix(strings.TrimSpace(h), "bytes=")
	if !ok || strings.Contains(spec, ",") {
		return byteRange{}, errNoRange
	}
	first, last, ok := strings.Cut(strings.TrimSpace(spec), "-")
	if !ok {
		return byteRange{}, errNoRange
	}
	if first == "" {
		// Suffix range: the last n bytes.
		n, err := parseNonNegative(last)
		if err != nil {
			return byteRange{}, errNoRange
		}
		if n == 0 {
			return byteRange{}, ErrRange
		}
		return byteRange{Start: size - min(n, size), End: size}, nil
	}
	start, err := parseNonNegative(first)
	if err != nil {
		return byteRange{}, errNoRange
	}
	end := size // exclusive
	if last != "" {
		l, err := parseNonNegative(last)
		if err != nil || l < start {
			return byteRange{}, errNoRange
		}
		if l < size {
			end = l + 1
		}
	}
	if start >= size {
		return byteRange{}, ErrRange
	}
	return byteRange{Start: start, End: end}, nil
}

// parseContentRange parses a Content-Range response header "bytes first-last/complete" (complete
// may be "*", returned as -1).
func parseContentRange(h string) (r byteRange, size int64, err error) {
	bad := errors.New("malformed Content-Range " + strconv.Quote(truncate(h, 100)))
	spec, ok := strings.CutPrefix(strings.TrimSpace(h), "bytes ")
	if !ok {
		return byteRange{}, 0, bad
	}
	rng, total, ok := strings.Cut(spec, "/")
	if !ok {
		return byteRange{}, 0, bad
	}
	size = -1
	if total != "*" {
		if size, err = parseNonNegative(total); err != nil {
			return byteRange{}, 0, bad
		}
	}
	first, last, ok := strings.Cut(rng, "-")
	if !ok {
		return byteRange{}, 0, bad
	}
	f, err1 := parseNonNegative(first)
	l, err2 := parseNonNegative(last)
	if err1 != nil || err2 != nil || l < f || (size >= 0 && l >= size) || l == 1<<63-1 {
		return byteRange{}, 0, bad
	}
	return byteRange{Start: f, End: l + 1}, size, nil
}

// parseNonNegative accepts only ASCII digits (strconv would also take a sign).
func parseNonNegative(s string) (int64, error) {
	if s == "" || len(s) > 19 {
		return 0, errNoRange
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, errNoRange
		}
	}
	return strconv.ParseInt(s, 10, 64)
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
