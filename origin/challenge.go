package origin

import (
	"strings"
)

// challenge is one authentication challenge from a WWW-Authenticate header (RFC 7235), e.g.
// `Bearer realm="https://auth.example/token",service="registry",scope="repository:a:pull"`.
type challenge struct {
	Scheme string            // lower case: "bearer", "basic"
	Params map[string]string // keys lower case
}

// maxChallengeLen bounds the header text parsed.
const maxChallengeLen = 16 << 10

// parseChallenges parses the values of the WWW-Authenticate headers of a response. It is lenient:
// a malformed part ends that challenge, never the program, and what was understood is kept.
func parseChallenges(headers []string) []challenge {
	var out []challenge
	for _, h := range headers {
		if len(h) > maxChallengeLen {
			h = h[:maxChallengeLen]
		}
		out = append(out, parseChallengeHeader(h)...)
	}
	return out
}

func parseChallengeHeader(s string) []challenge {
	var out []challenge
	p := &tokenizer{s: s}
	for {
		p.skipSpaceAndCommas()
		if p.done() {
			return out
		}
		scheme := p.token()
		if scheme == "" {
			return out // not a token: give up on the rest
		}
		c := challenge{Scheme: strings.ToLower(scheme), Params: map[string]string{}}
		// Parameters: name=value pairs separated by commas, until a token not followed by '='
		// (the next challenge's scheme).
		for {
			p.skipSpace()
			save := p.i
			name := p.token()
			if name == "" {
				// token68 (e.g. "Negotiate abc==") or junk: skip to the next comma.
				if p.i < len(p.s) && p.s[p.i] != ',' {
					p.skipUntilComma()
				}
				if !p.consume(',') {
					break
				}
				continue
			}
			p.skipSpace()
			if !p.consume('=') {
				p.i = save // a new challenge starts here
				break
			}
			p.skipSpace()
			if p.done() || p.peek() == '=' || p.peek() == ',' {
				// token68 ("abc==") or an empty value: no parameter.
				for p.consume('=') {
				}
				p.skipSpace()
				if !p.consume(',') {
					break
				}
				continue
			}
			var val string
			if p.peek() == '"' {
				val = p.quoted()
			} else {
				val = p.token()
			}
			c.Params[strings.ToLower(name)] = val
			p.skipSpace()
			if !p.consume(',') {
				break
			}
		}
		out = append(out, c)
	}
}

type tokenizer struct {
	s string
	i int
}

func (p *tokenizer) done() bool { return p.i >= len(p.s) }

func (p *tokenizer) peek() byte {
	if p.done() {
		return 0
	}
	return p.s[p.i]
}

func (p *tokenizer) consume(b byte) bool {
	if p.peek() == b && !p.done() {
		p.i++
		return true
	}
	return false
}

func (p *tokenizer) skipSpace() {
	for !p.done() && (p.s[p.i] == ' ' || p.s[p.i] == '\t') {
		p.i++
	}
}

func (p *tokenizer) skipSpaceAndCommas() {
	for !p.done() && (p.s[p.i] == ' ' || p.s[p.i] == '\t' || p.s[p.i] == ',') {
		p.i++
	}
}

func (p *tokenizer) skipUntilComma() {
	for !p.done() && p.s[p.i] != ',' {
		if p.s[p.i] == '"' {
			p.quoted()
			continue
		}
		p.i++
	}
}

// isTokenChar reports the RFC 7230 tchar set.
func isTokenChar(b byte) bool {
	switch {
	case b >= 'a' && b <= 'z', b >= 'A' && b <= 'Z', b >= '0' && b <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", b) >= 0
}

func (p *tokenizer) token() string {
	start := p.i
	for !p.done() && isTokenChar(p.s[p.i]) {
		p.i++
	}
	return p.s[start:p.i]
}

// quoted reads a quoted-string starting at '"', undoing backslash escapes. An unterminated
// string ends at the end of input.
func (p *tokenizer) quoted() string {
	p.i++ // opening quote
	var b strings.Builder
	for !p.done() {
		c := p.s[p.i]
		p.i++
		switch c {
		case '"':
			return b.String()
		case '\\':
			if !p.done() {
				b.WriteByte(p.s[p.i])
				p.i++
			}
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}
