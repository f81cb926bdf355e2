package release

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// Exit codes of `qpcctl release verify`.
const (
	ExitOK     = 0
	ExitFailed = 1 // the file did not verify, or could not be read
	ExitUsage  = 2
)

// VerifyConfig is what `qpcctl release verify` parsed from its flags.
type VerifyConfig struct {
	File      string
	Signature string // "" = File + ".minisig"
	PublicKey string // "" = DefaultPublicKeyPath
	JSON      bool
}

// VerifyReport is the --json output.
type VerifyReport struct {
	OK bool `json:"ok"`
	Result
	Reason string `json:"reason,omitempty"` // machine-readable failure kind
	Error  string `json:"error,omitempty"`
}

// reasons maps each failure sentinel to its --json reason.
var reasons = []struct {
	err    error
	reason string
}{
	{ErrWrongKey, "wrong_key"},
	{ErrSignatureTampered, "signature_tampered"},
	{ErrFileTampered, "file_tampered"},
	{ErrMalformedSignature, "malformed_signature"},
	{ErrUnsupportedAlgorithm, "unsupported_algorithm"},
	{ErrPublicKey, "public_key"},
	{ErrIO, "io"},
}

// Reason names the kind of a verification failure ("" for nil).
func Reason(err error) string {
	if err == nil {
		return ""
	}
	for _, r := range reasons {
		if errors.Is(err, r.err) {
			return r.reason
		}
	}
	return "error"
}

// RunVerify verifies cfg.File and writes the outcome to stdout (one line, or a
// JSON object with --json). It returns ExitOK or ExitFailed; the error, if
// any, is for stderr (already shown in the JSON report).
func RunVerify(cfg VerifyConfig, stdout io.Writer) (int, error) {
	res, err := VerifyFile(cfg.File, cfg.Signature, cfg.PublicKey)
	if res.File == "" {
		res.File = cfg.File
	}
	if cfg.JSON {
		rep := VerifyReport{OK: err == nil, Result: res, Reason: Reason(err)}
		if err != nil {
			rep.Error = err.Error()
		}
		enc := json.NewEncoder(stdout)
		if werr := enc.Encode(rep); werr != nil {
			return ExitFailed, fmt.Errorf("%w: writing report: %v", ErrIO, werr)
		}
	} else if err == nil {
		fmt.Fprintf(stdout, "OK %s: signed by release key %s\n  trusted comment: %s\n  sha256: %s\n",
			res.File, res.KeyID, res.TrustedComment, res.SHA256)
	}
	if err != nil {
		return ExitFailed, err
	}
	return ExitOK, nil
}
