package admin

import (
	"bufio"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/quicprochat/quicprochat/internal/secret"
)

// The payload of a PostgreSQL backup (format 2) is the dump stream
// encrypted under the backup key: a SQLCipher backup is encrypted by being
// a SQLCipher file; a PostgreSQL dump needs its own encryption.
//
//	payload = chunk+                  (the last chunk has the final flag; nothing follows it)
//	chunk   = uint32-BE(len) AES-256-GCM(seal of up to 64 KiB)
//	key     = HKDF-SHA-256(backup key, salt = manifest.salt, info = payloadInfo)
//	nonce   = final-flag byte, 3 zero bytes, uint64-BE chunk counter
//
// The counter in the nonce stops reordering and dropping chunks; the final
// flag stops truncation at a chunk boundary.

const (
	payloadCipher   = "aes-256-gcm-chunked/hkdf-sha256" // manifest.cipher
	payloadInfo     = "qpc backup payload v1"
	payloadChunk    = 64 << 10
	payloadSaltSize = 32
)

// ErrPayloadAuth: a chunk of the payload does not authenticate under the
// key (the key is wrong, or the bytes were changed).
var ErrPayloadAuth = errors.New("admin: backup payload does not authenticate")

func payloadAEAD(key secret.Bytes, salt []byte) (cipher.AEAD, error) {
	k, err := hkdf.Key(sha256.New, key.Reveal(), salt, payloadInfo, 32)
	if err != nil {
		return nil, fmt.Errorf("admin: derive the payload key: %w", err)
	}
	defer clear(k)
	block, err := aes.NewCipher(k)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

func payloadNonce(n *[12]byte, counter uint64, final bool) {
	*n = [12]byte{}
	if final {
		n[0] = 1
	}
	binary.BigEndian.PutUint64(n[4:], counter)
}

// sealWriter encrypts what is written to it, chunk by chunk, into w.
// Close writes the final chunk; it does not close w.
type sealWriter struct {
	w       io.Writer
	aead    cipher.AEAD
	buf     []byte
	out     []byte
	counter uint64
	err     error
}

func newSealWriter(w io.Writer, key secret.Bytes, salt []byte) (*sealWriter, error) {
	a, err := payloadAEAD(key, salt)
	if err != nil {
		return nil, err
	}
	return &sealWriter{w: w, aead: a, buf: make([]byte, 0, payloadChunk)}, nil
}

func (s *sealWriter) Write(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	n := len(p)
	for len(p) > 0 {
		if len(s.buf) == payloadChunk {
			if s.err = s.flush(false); s.err != nil {
				return 0, s.err
			}
		}
		k := min(len(p), payloadChunk-len(s.buf))
		s.buf = append(s.buf, p[:k]...)
		p = p[k:]
	}
	return n, nil
}

func (s *sealWriter) flush(final bool) error {
	var nonce [12]byte
	payloadNonce(&nonce, s.counter, final)
	s.counter++
	s.out = binary.BigEndian.AppendUint32(s.out[:0], uint32(len(s.buf)+s.aead.Overhead()))
	s.out = s.aead.Seal(s.out, nonce[:], s.buf, nil)
	s.buf = s.buf[:0]
	_, err := s.w.Write(s.out)
	return err
}

func (s *sealWriter) Close() error {
	if s.err != nil {
		return s.err
	}
	s.err = s.flush(true)
	if s.err == nil {
		s.err = errors.New("admin: payload writer closed")
		return nil
	}
	return s.err
}

// openReader decrypts a payload. Errors: ErrPayloadAuth for a chunk that
// does not open, ErrBackupTruncated for a payload that ends before its
// final chunk, ErrBackupCorrupt for bytes after it or a bad chunk length.
type openReader struct {
	r       *bufio.Reader
	aead    cipher.AEAD
	plain   []byte
	rest    []byte
	ct      []byte
	counter uint64
	final   bool
}

func newOpenReader(r io.Reader, key secret.Bytes, salt []byte) (*openReader, error) {
	a, err := payloadAEAD(key, salt)
	if err != nil {
		return nil, err
	}
	return &openReader{r: bufio.NewReaderSize(r, payloadChunk+64), aead: a}, nil
}

func (o *openReader) Read(p []byte) (int, error) {
	for len(o.rest) == 0 {
		if o.final {
			return 0, io.EOF
		}
		if err := o.next(); err != nil {
			return 0, err
		}
	}
	n := copy(p, o.rest)
	o.rest = o.rest[n:]
	return n, nil
}

func (o *openReader) next() error {
	var l [4]byte
	if _, err := io.ReadFull(o.r, l[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("%w: the payload ends before its last chunk", ErrBackupTruncated)
		}
		return err
	}
	n := binary.BigEndian.Uint32(l[:])
	if n < uint32(o.aead.Overhead()) || n > payloadChunk+uint32(o.aead.Overhead()) {
		return fmt.Errorf("%w: payload chunk %d has an impossible length %d", ErrBackupCorrupt, o.counter, n)
	}
	if cap(o.ct) < int(n) {
		o.ct = make([]byte, n)
	}
	o.ct = o.ct[:n]
	if _, err := io.ReadFull(o.r, o.ct); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("%w: the payload ends inside chunk %d", ErrBackupTruncated, o.counter)
		}
		return err
	}
	var nonce [12]byte
	var err error
	// A chunk opens either as a middle chunk or as the final one.
	for _, final := range []bool{false, true} {
		payloadNonce(&nonce, o.counter, final)
		if o.plain, err = o.aead.Open(o.plain[:0], nonce[:], o.ct, nil); err == nil {
			o.final = final
			break
		}
	}
	if err != nil {
		return fmt.Errorf("%w: chunk %d", ErrPayloadAuth, o.counter)
	}
	o.counter++
	o.rest = o.plain
	if o.final {
		if _, err := o.r.ReadByte(); err == nil {
			return fmt.Errorf("%w: bytes follow the payload's last chunk", ErrBackupCorrupt)
		} else if !errors.Is(err, io.EOF) {
			return err
		}
	}
	return nil
}
