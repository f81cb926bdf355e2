// Package client is the qpc client SDK: local state in its own SQLCipher
// database, the connection to qpcd (pin or CA, reconnects, retries with
// capped exponential backoff and full jitter), registration and login,
// KeyPackage upkeep, the persistent outbox, and the fetch/ack loop.
//
// One Client is one device. See docs/client.md for the state layout, key
// sources, retry rules and what happens on each server status.
package client
