package mls

// The TLS presentation language codec of RFC 9420 §2.1, with MLS
// variable-length integers (§2.1.2) as the length prefix of every vector.
//
// Each wire struct has one encode method (appending to an *encoder) and one
// decode method (reading from a *decoder). Both carry a sticky error, so a
// struct's code reads like its RFC definition; the first failure wins and
// later calls are no-ops. Decoding never panics and never allocates more
// than the remaining input: a length is checked against the bytes left
// before anything is allocated.

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/crypto/cryptobyte"
)

// maxVarint is the largest value an MLS varint can carry (2^30 - 1).
const maxVarint = 1<<30 - 1

// appendVarint appends v as a minimal MLS varint. v must be <= maxVarint.
func appendVarint(b []byte, v uint32) []byte {
	switch {
	case v < 1<<6:
		return append(b, byte(v))
	case v < 1<<14:
		return append(b, byte(v>>8)|0x40, byte(v))
	default:
		return append(b, byte(v>>24)|0x80, byte(v>>16), byte(v>>8), byte(v))
	}
}

// varintLen is the length of appendVarint's encoding of v.
func varintLen(v int) int {
	switch {
	case v < 1<<6:
		return 1
	case v < 1<<14:
		return 2
	default:
		return 4
	}
}

// readVarint reads a minimally encoded MLS varint from s.
func readVarint(s *cryptobyte.String) (uint32, error) {
	var first uint8
	if !s.ReadUint8(&first) {
		return 0, fmt.Errorf("%w: truncated varint", ErrDecode)
	}
	prefix := first >> 6
	v := uint32(first & 0x3f)
	var n int
	switch prefix {
	case 0:
		return v, nil
	case 1:
		n = 1
	case 2:
		n = 3
	default:
		return 0, fmt.Errorf("%w: invalid varint prefix 0b11", ErrDecode)
	}
	var rest []byte
	if !s.ReadBytes(&rest, n) {
		return 0, fmt.Errorf("%w: truncated varint", ErrDecode)
	}
	for _, c := range rest {
		v = v<<8 | uint32(c)
	}
	if (prefix == 1 && v < 1<<6) || (prefix == 2 && v < 1<<14) {
		return 0, fmt.Errorf("%w: non-minimal varint %d", ErrDecode, v)
	}
	return v, nil
}

// DecodeVarint decodes one MLS varint that makes up all of b.
func DecodeVarint(b []byte) (uint32, error) {
	s := cryptobyte.String(b)
	v, err := readVarint(&s)
	if err != nil {
		return 0, err
	}
	if !s.Empty() {
		return 0, fmt.Errorf("%w: %d trailing bytes after varint", ErrDecode, len(s))
	}
	return v, nil
}

// encoder appends the TLS encoding of values to buf.
type encoder struct {
	buf []byte
	err error
}

func (e *encoder) fail(format string, args ...any) {
	if e.err == nil {
		e.err = fmt.Errorf("%w: "+format, append([]any{ErrEncode}, args...)...)
	}
}

func (e *encoder) u8(v uint8)   { e.buf = append(e.buf, v) }
func (e *encoder) u16(v uint16) { e.buf = binary.BigEndian.AppendUint16(e.buf, v) }
func (e *encoder) u32(v uint32) { e.buf = binary.BigEndian.AppendUint32(e.buf, v) }
func (e *encoder) u64(v uint64) { e.buf = binary.BigEndian.AppendUint64(e.buf, v) }

// raw appends b without a length prefix (fixed-size fields).
func (e *encoder) raw(b []byte) { e.buf = append(e.buf, b...) }

// opaque appends b as opaque<V>.
func (e *encoder) opaque(b []byte) {
	if len(b) > maxVarint {
		e.fail("vector of %d bytes exceeds 2^30-1", len(b))
		return
	}
	e.buf = appendVarint(e.buf, uint32(len(b)))
	e.buf = append(e.buf, b...)
}

// vector appends a varint-prefixed vector whose body fn writes.
func (e *encoder) vector(fn func(*encoder)) {
	start := len(e.buf)
	e.buf = append(e.buf, 0, 0, 0, 0) // room for the longest header
	body := len(e.buf)
	fn(e)
	n := len(e.buf) - body
	if n > maxVarint {
		e.fail("vector of %d bytes exceeds 2^30-1", n)
		return
	}
	hdr := appendVarint(make([]byte, 0, 4), uint32(n))
	copy(e.buf[start:], hdr)
	if len(hdr) < 4 {
		copy(e.buf[start+len(hdr):], e.buf[body:])
		e.buf = e.buf[:len(e.buf)-(4-len(hdr))]
	}
}

// optional writes the presence octet of optional<T> and, if present, T.
func (e *encoder) optional(present bool, fn func(*encoder)) {
	if !present {
		e.u8(0)
		return
	}
	e.u8(1)
	fn(e)
}

// decoder reads TLS-encoded values from s.
type decoder struct {
	s   cryptobyte.String
	err error
	// alias: byte fields share the input's memory instead of being copied
	// (UnmarshalAliased); secrets are copied regardless.
	alias bool
}

func newDecoder(b []byte) *decoder { return &decoder{s: cryptobyte.String(b)} }

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: "+format, append([]any{ErrDecode}, args...)...)
	}
}

func (d *decoder) u8() uint8 {
	var v uint8
	if d.err == nil && !d.s.ReadUint8(&v) {
		d.fail("truncated uint8")
	}
	return v
}

func (d *decoder) u16() uint16 {
	var v uint16
	if d.err == nil && !d.s.ReadUint16(&v) {
		d.fail("truncated uint16")
	}
	return v
}

func (d *decoder) u32() uint32 {
	var v uint32
	if d.err == nil && !d.s.ReadUint32(&v) {
		d.fail("truncated uint32")
	}
	return v
}

func (d *decoder) u64() uint64 {
	var v uint64
	if d.err == nil && !d.s.ReadUint64(&v) {
		d.fail("truncated uint64")
	}
	return v
}

// length reads a varint length and checks it against the bytes left.
func (d *decoder) length() (int, bool) {
	if d.err != nil {
		return 0, false
	}
	n, err := readVarint(&d.s)
	if err != nil {
		d.err = err
		return 0, false
	}
	if int(n) > len(d.s) {
		d.fail("vector length %d exceeds the %d bytes left", n, len(d.s))
		return 0, false
	}
	return int(n), true
}

// fixed reads n bytes without a length prefix, as a copy.
func (d *decoder) fixed(n int) []byte {
	if d.err != nil {
		return nil
	}
	var b []byte
	if !d.s.ReadBytes(&b, n) {
		d.fail("truncated fixed field of %d bytes", n)
		return nil
	}
	if d.alias {
		return b[:n:n]
	}
	return append([]byte(nil), b...)
}

// opaque reads opaque<V> as a copy; an empty vector decodes as nil.
func (d *decoder) opaque() []byte {
	n, ok := d.length()
	if !ok {
		return nil
	}
	return d.fixed(n)
}

// secret reads opaque<V> into a Secret.
func (d *decoder) secret() Secret {
	b := d.opaque()
	if d.err != nil {
		return Secret{}
	}
	if d.alias && b != nil {
		b = append([]byte(nil), b...) // a Secret owns (and wipes) its bytes
	}
	return adoptSecret(b)
}

// vector reads a varint-prefixed vector and calls elem until its body is
// consumed. elem must consume at least one byte or fail.
func (d *decoder) vector(elem func(*decoder)) {
	n, ok := d.length()
	if !ok {
		return
	}
	var body []byte
	d.s.ReadBytes(&body, n) // length() checked the bound
	// The elements are read by d itself, narrowed to the body and then
	// restored to what follows it: a sub-decoder would be a heap
	// allocation per vector (thousands in a large ratchet tree).
	rest := d.s
	d.s = cryptobyte.String(body)
	for !d.s.Empty() && d.err == nil {
		before := len(d.s)
		elem(d)
		if d.err == nil && len(d.s) == before {
			d.fail("vector element consumed no bytes")
		}
	}
	d.s = rest
}

// optional reads the presence octet of optional<T>.
func (d *decoder) optional() bool {
	switch v := d.u8(); {
	case d.err != nil:
		return false
	case v == 0:
		return false
	case v == 1:
		return true
	default:
		d.fail("optional presence octet %d", v)
		return false
	}
}

// finish reports the first error, or trailing bytes.
func (d *decoder) finish() error {
	if d.err != nil {
		return d.err
	}
	if !d.s.Empty() {
		return fmt.Errorf("%w: %d trailing bytes", ErrDecode, len(d.s))
	}
	return nil
}

// encodable and decodable are implemented by every wire struct.
type encodable interface{ encode(*encoder) }
type decodable interface{ decode(*decoder) }

// marshal encodes v.
func marshal(v encodable) ([]byte, error) {
	e := &encoder{}
	v.encode(e)
	if e.err != nil {
		return nil, e.err
	}
	return e.buf, nil
}

// unmarshal resets *v and decodes all of b into it; trailing bytes are an
// error.
func unmarshal[T any, P interface {
	*T
	decodable
}](b []byte, v P) error {
	var zero T
	*v = zero
	d := newDecoder(b)
	v.decode(d)
	return d.finish()
}

// encodeBytesList encodes a list of opaque<V> as a vector; decodeBytesList
// reads one.
func encodeBytesList(e *encoder, l [][]byte) {
	e.vector(func(e *encoder) {
		for _, b := range l {
			e.opaque(b)
		}
	})
}

func decodeBytesList(d *decoder) [][]byte {
	var l [][]byte
	d.vector(func(d *decoder) { l = append(l, d.opaque()) })
	return l
}
