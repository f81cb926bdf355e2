package transport

import (
	"errors"

	"github.com/quic-go/quic-go"
)

// ALPN is the only application protocol qpcd speaks; a client that offers
// anything else fails the TLS handshake.
const ALPN = "qpc"

// Application error codes sent when the server closes a connection.
// Clients match on these, never on the reason text.
const (
	CodeNoError         quic.ApplicationErrorCode = 0x0
	CodeDraining        quic.ApplicationErrorCode = 0x1 // server shutting down: reconnect and retry
	CodeConnectionLimit quic.ApplicationErrorCode = 0x2 // server at its connection cap: back off
	CodeInternal        quic.ApplicationErrorCode = 0x3
	CodeIdle            quic.ApplicationErrorCode = 0x4 // no request soon enough after the handshake, or none for the idle timeout: reconnect when needed
)

// IsDraining reports whether err is a connection closed by a draining server.
func IsDraining(err error) bool { return hasAppCode(err, CodeDraining) }

// IsConnectionLimit reports whether err is a connection refused at the server's cap.
func IsConnectionLimit(err error) bool { return hasAppCode(err, CodeConnectionLimit) }

// IsIdleClose reports whether err is a connection the server closed because
// it carried no request (silent after the handshake, or idle).
func IsIdleClose(err error) bool { return hasAppCode(err, CodeIdle) }

func hasAppCode(err error, code quic.ApplicationErrorCode) bool {
	var ae *quic.ApplicationError
	return errors.As(err, &ae) && ae.Remote && ae.ErrorCode == code
}
