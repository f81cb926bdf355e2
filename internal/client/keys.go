package client

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"

	"golang.org/x/crypto/argon2"

	"github.com/quicprochat/quicprochat/internal/secret"
)

// KeySize is the length of the client database key.
const KeySize = 32

// EnvKey holds the database key as 64 hex characters.
const EnvKey = "QPC_CLIENT_KEY"

// EnvPassphrase holds a passphrase the key is derived from (Argon2id).
const EnvPassphrase = "QPC_CLIENT_PASSPHRASE"

// Argon2id parameters for passphrase-derived keys (RFC 9106's second
// recommended option, with 64 MiB): 3 passes, 64 MiB, 4 lanes. They are
// written next to the salt, so a later release can raise them without
// locking anyone out.
const (
	argonTime    = 3
	argonMemory  = 64 * 1024 // KiB
	argonThreads = 4
	saltSize     = 16
)

var (
	// ErrNoKey: none of the key sources is available.
	ErrNoKey = errors.New("client: no database key")
	// ErrKeyFile: the key file is unreadable, malformed or too open.
	ErrKeyFile = errors.New("client: bad key file")
	// ErrSaltFile: the passphrase salt file is missing or malformed.
	ErrSaltFile = errors.New("client: bad salt file")
)

// KeySource says where the database key comes from, in this order: Hex
// (QPC_CLIENT_KEY), Passphrase (with the salt in SaltFile), then KeyFile.
type KeySource struct {
	Hex        secret.Bytes // hex text of the key, from QPC_CLIENT_KEY
	Passphrase secret.Bytes // derive the key with Argon2id
	KeyFile    string       // file holding the key as hex, mode 0600
	SaltFile   string       // salt and Argon2id parameters for Passphrase
}

// argonParams is what a salt file records.
type argonParams struct {
	time, memory uint32
	threads      uint8
	salt         []byte
}

func (p argonParams) String() string {
	return fmt.Sprintf("argon2id t=%d m=%d p=%d salt=%s\n", p.time, p.memory, p.threads, hex.EncodeToString(p.salt))
}

func parseArgon(s string) (argonParams, error) {
	f := strings.Fields(s)
	if len(f) != 5 || f[0] != "argon2id" {
		return argonParams{}, fmt.Errorf("%w: want \"argon2id t=N m=N p=N salt=HEX\"", ErrSaltFile)
	}
	var p argonParams
	for _, kv := range f[1:] {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return argonParams{}, fmt.Errorf("%w: field %q", ErrSaltFile, kv)
		}
		var err error
		switch k {
		case "t", "m", "p":
			var n uint64
			n, err = strconv.ParseUint(v, 10, 32)
			switch {
			case err != nil || n == 0:
				err = fmt.Errorf("%w: %s=%s", ErrSaltFile, k, v)
			case k == "t" && n <= 100:
				p.time = uint32(n)
			case k == "m" && n <= 4<<20:
				p.memory = uint32(n)
			case k == "p" && n <= 255:
				p.threads = uint8(n)
			default:
				err = fmt.Errorf("%w: %s=%s out of range", ErrSaltFile, k, v)
			}
		case "salt":
			p.salt, err = hex.DecodeString(v)
			if err == nil && len(p.salt) < 16 {
				err = fmt.Errorf("%w: salt shorter than 16 bytes", ErrSaltFile)
			}
		default:
			err = fmt.Errorf("%w: unknown field %q", ErrSaltFile, k)
		}
		if err != nil {
			return argonParams{}, err
		}
	}
	if p.time == 0 || p.memory == 0 || p.threads == 0 || p.salt == nil {
		return argonParams{}, fmt.Errorf("%w: a field is missing", ErrSaltFile)
	}
	return p, nil
}

// Load returns the key from the first available source. With create set and
// no source holding a key yet, it makes one: a random key in KeyFile, or a
// fresh salt in SaltFile for Passphrase.
func (ks KeySource) Load(create bool) (secret.Bytes, error) {
	switch {
	case !ks.Hex.IsZero():
		k, err := secret.FromHex(strings.TrimSpace(string(ks.Hex.Reveal())), KeySize)
		if err != nil {
			return secret.Bytes{}, fmt.Errorf("%w: %s must be %d hex characters: %w", ErrNoKey, EnvKey, 2*KeySize, err)
		}
		return k, nil
	case !ks.Passphrase.IsZero():
		return ks.derive(create)
	case ks.KeyFile != "":
		return ks.keyFile(create)
	}
	return secret.Bytes{}, fmt.Errorf("%w: set %s, %s, or use a key file (qpc init creates one)", ErrNoKey, EnvKey, EnvPassphrase)
}

func (ks KeySource) derive(create bool) (secret.Bytes, error) {
	if ks.SaltFile == "" {
		return secret.Bytes{}, fmt.Errorf("%w: no salt file path", ErrSaltFile)
	}
	// The salt is not secret, but whoever may rewrite it can weaken the
	// Argon2id parameters: it is held to the key file's rule (0600).
	saltBytes, err := secret.ReadPrivateFile(ks.SaltFile, maxKeyFileSize)
	raw := saltBytes.Reveal()
	var p argonParams
	switch {
	case errors.Is(err, secret.ErrOpenToOthers):
		return secret.Bytes{}, fmt.Errorf("%w: %s: only its owner may access the salt file (%w)", ErrSaltFile, ks.SaltFile, err)
	case errors.Is(err, fs.ErrNotExist) && create:
		p = argonParams{time: argonTime, memory: argonMemory, threads: argonThreads, salt: make([]byte, saltSize)}
		if _, err := rand.Read(p.salt); err != nil {
			return secret.Bytes{}, fmt.Errorf("client: salt: %w", err)
		}
		if err := writeExclusive(ks.SaltFile, []byte(p.String())); err != nil {
			return secret.Bytes{}, err
		}
	case errors.Is(err, fs.ErrNotExist):
		return secret.Bytes{}, fmt.Errorf("%w: %s is missing; it was written by qpc init next to the database, restore it (without it the passphrase cannot open the database)", ErrSaltFile, ks.SaltFile)
	case err != nil:
		return secret.Bytes{}, fmt.Errorf("%w: %s: %w", ErrSaltFile, ks.SaltFile, err)
	default:
		if p, err = parseArgon(string(raw)); err != nil {
			return secret.Bytes{}, fmt.Errorf("%s: %w", ks.SaltFile, err)
		}
	}
	return secret.New(argon2.IDKey(ks.Passphrase.Reveal(), p.salt, p.time, p.memory, p.threads, KeySize)), nil
}

func (ks KeySource) keyFile(create bool) (secret.Bytes, error) {
	raw, err := secret.ReadPrivateFile(ks.KeyFile, maxKeyFileSize)
	switch {
	case errors.Is(err, fs.ErrNotExist) && create:
		b := make([]byte, KeySize)
		if _, err := rand.Read(b); err != nil {
			return secret.Bytes{}, fmt.Errorf("client: key: %w", err)
		}
		k := secret.New(b)
		if err := writeExclusive(ks.KeyFile, []byte(k.Hex()+"\n")); err != nil {
			k.Wipe()
			return secret.Bytes{}, err
		}
		return k, nil
	case errors.Is(err, fs.ErrNotExist):
		return secret.Bytes{}, fmt.Errorf("%w: %s does not exist; run qpc init, or set %s or %s", ErrNoKey, ks.KeyFile, EnvKey, EnvPassphrase)
	case errors.Is(err, secret.ErrOpenToOthers):
		return secret.Bytes{}, fmt.Errorf("%w: %s: only its owner may access the database key file (%w)", ErrKeyFile, ks.KeyFile, err)
	case err != nil:
		return secret.Bytes{}, fmt.Errorf("%w: %s: %w", ErrKeyFile, ks.KeyFile, err)
	}
	defer raw.Wipe()
	k, err := secret.FromHex(strings.TrimSpace(string(raw.Reveal())), KeySize)
	if err != nil {
		return secret.Bytes{}, fmt.Errorf("%w: %s must hold %d hex characters: %w", ErrKeyFile, ks.KeyFile, 2*KeySize, err)
	}
	return k, nil
}

// maxKeyFileSize bounds what is read of a key or salt file; both are a
// line of text.
const maxKeyFileSize = 4 << 10

// writeExclusive creates path (0600) with data; it never replaces a file.
func writeExclusive(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("client: create %s: %w", path, err)
	}
	_, werr := f.Write(data)
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		_ = os.Remove(path)
		return fmt.Errorf("client: write %s: %w", path, err)
	}
	return nil
}
