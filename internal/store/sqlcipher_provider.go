package store

/*
int qpc_use_provider(int go);
*/
import "C"

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"database/sql/driver"
	"fmt"
	"hash"
	"strings"
	"sync"
	"unsafe"

	sqlite3 "github.com/mutecomm/go-sqlcipher/v4"
)

// SQLCipher's page crypto. go-sqlcipher builds SQLCipher with libtomcrypt
// and LTC_NO_ASM (software AES and SHA-512): in the delivery benchmark the
// page crypto was a seventh of all CPU, most of it in the single writer's
// COMMIT. sqlcipher_provider.c registers a provider that does the same
// operations (AES-256-CBC, HMAC-SHA1/256/512, PBKDF2) with Go's crypto
// packages, which use AES-NI and assembly SHA-2. The file format does not
// change.
//
// Go's key schedules and HMAC pads live on the Go heap, which is never
// wiped. That is the same exposure as SQLCipher's own freed pages with
// cipher_memory_security off (docs/threat-model.md); with memory security on
// the bundled provider is used instead, so that setting keeps its meaning.

// providerFor is the SQLCipher version whose provider table layout
// sqlcipher_provider.c mirrors; any other version keeps the bundled
// provider.
const providerFor = "4.4."

var (
	providerMu      sync.Mutex
	providerChecked bool
	providerUsable  bool
	providerGo      bool // what is registered now
)

// Provider names as PRAGMA cipher_provider reports them.
const (
	ProviderGo          = "go"
	ProviderLibtomcrypt = "libtomcrypt"
)

// currentProvider names the page crypto new connections use, as
// PRAGMA cipher_provider reports it.
func currentProvider() string {
	providerMu.Lock()
	defer providerMu.Unlock()
	if providerGo {
		return ProviderGo
	}
	return ProviderLibtomcrypt
}

// useProvider registers the crypto provider new connections should use:
// Go's unless memory security is on or the bundled SQLCipher is a version
// the provider table was not written for.
func useProvider(drv *sqlite3.SQLiteDriver) error {
	providerMu.Lock()
	defer providerMu.Unlock()
	if !providerChecked {
		v, err := cipherVersion(drv)
		if err != nil {
			return err
		}
		providerChecked = true
		providerUsable = strings.HasPrefix(v, providerFor)
	}
	want := providerUsable && !memorySecurity.Load()
	if want == providerGo {
		return nil
	}
	goFlag := C.int(0)
	if want {
		goFlag = 1
	}
	if rc := C.qpc_use_provider(goFlag); rc != 0 {
		return fmt.Errorf("store: registering the SQLCipher crypto provider failed (code %d)", int(rc))
	}
	providerGo = want
	return nil
}

// cipherVersion asks an unkeyed in-memory connection for SQLCipher's
// version; no codec is attached, so the provider is not touched.
func cipherVersion(drv *sqlite3.SQLiteDriver) (string, error) {
	conn, err := drv.Open(":memory:")
	if err != nil {
		return "", fmt.Errorf("store: open SQLCipher to read its version: %w", err)
	}
	defer conn.Close()
	st, err := conn.Prepare("PRAGMA cipher_version")
	if err != nil {
		return "", fmt.Errorf("store: read SQLCipher's version: %w", err)
	}
	defer st.Close()
	q, ok := st.(driver.StmtQueryContext)
	if !ok {
		return "", fmt.Errorf("store: read SQLCipher's version: driver statement cannot query")
	}
	rows, err := q.QueryContext(context.Background(), nil)
	if err != nil {
		return "", fmt.Errorf("store: read SQLCipher's version: %w", err)
	}
	defer rows.Close()
	v := make([]driver.Value, 1)
	if err := rows.Next(v); err != nil {
		return "", fmt.Errorf("store: read SQLCipher's version: %w", err)
	}
	s, _ := v[0].(string)
	if b, ok := v[0].([]byte); ok {
		s = string(b)
	}
	return s, nil
}

func cbytes(p *C.uchar, n C.int) []byte {
	if p == nil || n <= 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(p)), int(n))
}

func hashFor(algorithm C.int) func() hash.Hash {
	switch algorithm {
	case 0:
		return sha1.New
	case 1:
		return sha256.New
	case 2:
		return sha512.New
	}
	return nil
}

// SQLite result codes the provider returns.
const (
	sqliteOK    C.int = 0
	sqliteError C.int = 1
)

//export qpcProviderRandom
func qpcProviderRandom(buf unsafe.Pointer, n C.int) C.int {
	if n < 0 {
		return sqliteError
	}
	if n > 0 {
		_, _ = rand.Read(unsafe.Slice((*byte)(buf), int(n))) // never fails (Go 1.24+)
	}
	return sqliteOK
}

// providerState is reusable per-goroutine work space for the page crypto:
// the keyed HMAC and AES states of the last key used. SQLCipher hands over
// the same keys for every page of a database, so the key schedule and HMAC
// pads are computed once instead of per page (and nothing is allocated per
// page). Like SQLCipher's own codec context it keeps copies of the keys.
type providerState struct {
	macAlg C.int
	macKey []byte
	mac    hash.Hash

	aesKey   []byte
	enc, dec cipher.BlockMode
}

var providerStates = sync.Pool{New: func() any { return new(providerState) }}

type ivSetter interface{ SetIV([]byte) }

// sameKey compares key material in constant time.
func sameKey(a, b []byte) bool { return subtle.ConstantTimeCompare(a, b) == 1 }

func (st *providerState) hmacFor(algorithm C.int, key []byte) hash.Hash {
	if st.mac == nil || st.macAlg != algorithm || !sameKey(st.macKey, key) {
		h := hashFor(algorithm)
		if h == nil {
			return nil
		}
		st.mac, st.macAlg, st.macKey = hmac.New(h, key), algorithm, append(st.macKey[:0], key...)
		return st.mac
	}
	st.mac.Reset()
	return st.mac
}

func (st *providerState) cbc(encrypt bool, key, iv []byte) (cipher.BlockMode, error) {
	if st.enc == nil || !sameKey(st.aesKey, key) {
		b, err := aes.NewCipher(key)
		if err != nil {
			return nil, err
		}
		st.enc, st.dec = cipher.NewCBCEncrypter(b, iv), cipher.NewCBCDecrypter(b, iv)
		st.aesKey = append(st.aesKey[:0], key...)
	}
	m := st.dec
	if encrypt {
		m = st.enc
	}
	s, ok := m.(ivSetter)
	if !ok {
		return nil, fmt.Errorf("store: CBC mode without SetIV")
	}
	s.SetIV(iv)
	return m, nil
}

//export qpcProviderHMAC
func qpcProviderHMAC(algorithm C.int, key *C.uchar, keyLen C.int, in *C.uchar, inLen C.int, in2 *C.uchar, in2Len C.int, out *C.uchar) C.int {
	st := providerStates.Get().(*providerState)
	defer providerStates.Put(st)
	m := st.hmacFor(algorithm, cbytes(key, keyLen))
	if m == nil {
		return sqliteError
	}
	m.Write(cbytes(in, inLen))
	m.Write(cbytes(in2, in2Len))
	m.Sum(unsafe.Slice((*byte)(unsafe.Pointer(out)), m.Size())[:0])
	return sqliteOK
}

//export qpcProviderKDF
func qpcProviderKDF(algorithm C.int, pass *C.uchar, passLen C.int, salt *C.uchar, saltLen C.int, iter C.int, keyLen C.int, key *C.uchar) C.int {
	h := hashFor(algorithm)
	if h == nil || iter <= 0 || keyLen <= 0 {
		return sqliteError
	}
	// A string view of SQLCipher's buffer, not a copy.
	k, err := pbkdf2.Key(h, unsafe.String((*byte)(unsafe.Pointer(pass)), int(passLen)), cbytes(salt, saltLen), int(iter), int(keyLen))
	if err != nil {
		return sqliteError
	}
	copy(cbytes(key, keyLen), k)
	clear(k)
	return sqliteOK
}

//export qpcProviderCipher
func qpcProviderCipher(mode C.int, key *C.uchar, keyLen C.int, iv *C.uchar, in *C.uchar, inLen C.int, out *C.uchar) C.int {
	if inLen%aes.BlockSize != 0 {
		return sqliteError
	}
	st := providerStates.Get().(*providerState)
	defer providerStates.Put(st)
	m, err := st.cbc(mode == 1, cbytes(key, keyLen), cbytes(iv, aes.BlockSize)) // 1: CIPHER_ENCRYPT
	if err != nil {
		return sqliteError
	}
	m.CryptBlocks(cbytes(out, inLen), cbytes(in, inLen))
	return sqliteOK
}
