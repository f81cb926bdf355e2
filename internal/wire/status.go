package wire

import (
	"errors"
	"fmt"
	"time"

	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// StatusError is an RPC failure with its wire status. Services return errors
// that map to one (see the server's error mapping); clients get one back for
// every non-OK response and branch with errors.As or Code.
type StatusError struct {
	Code       qpcv1.Status
	Message    string
	RetryAfter time.Duration
}

func (e *StatusError) Error() string {
	if e.RetryAfter > 0 {
		return fmt.Sprintf("%s: %s (retry after %s)", StatusName(e.Code), e.Message, e.RetryAfter)
	}
	return fmt.Sprintf("%s: %s", StatusName(e.Code), e.Message)
}

// Errorf builds a StatusError.
func Errorf(code qpcv1.Status, format string, args ...any) *StatusError {
	return &StatusError{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Code returns the status carried by err, STATUS_OK for nil, and
// STATUS_INTERNAL for an error that carries none.
func Code(err error) qpcv1.Status {
	if err == nil {
		return qpcv1.Status_STATUS_OK
	}
	var se *StatusError
	if errors.As(err, &se) {
		return se.Code
	}
	return qpcv1.Status_STATUS_INTERNAL
}

// StatusName is the short label used in metrics and logs, e.g. "stale_epoch".
func StatusName(s qpcv1.Status) string {
	if name, ok := statusNames[s]; ok {
		return name
	}
	return fmt.Sprintf("status_%d", int32(s))
}

var statusNames = map[qpcv1.Status]string{
	qpcv1.Status_STATUS_UNSPECIFIED:         "unspecified",
	qpcv1.Status_STATUS_OK:                  "ok",
	qpcv1.Status_STATUS_INVALID_ARGUMENT:    "invalid_argument",
	qpcv1.Status_STATUS_UNAUTHENTICATED:     "unauthenticated",
	qpcv1.Status_STATUS_PERMISSION_DENIED:   "permission_denied",
	qpcv1.Status_STATUS_NOT_FOUND:           "not_found",
	qpcv1.Status_STATUS_ALREADY_EXISTS:      "already_exists",
	qpcv1.Status_STATUS_STALE_EPOCH:         "stale_epoch",
	qpcv1.Status_STATUS_RESOURCE_EXHAUSTED:  "resource_exhausted",
	qpcv1.Status_STATUS_UNAVAILABLE:         "unavailable",
	qpcv1.Status_STATUS_DRAINING:            "draining",
	qpcv1.Status_STATUS_INTERNAL:            "internal",
	qpcv1.Status_STATUS_UNSUPPORTED_VERSION: "unsupported_version",
}
