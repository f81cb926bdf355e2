#!/bin/sh
# testnet-chat.sh NAME [PEER...]: a scripted qpc user for the compose testnet.
# It pins qpcd's self-signed certificate (read from qpcd's volume), registers
# NAME once, and then posts to the group "testnet" every QPC_TESTNET_EVERY
# seconds (default 30) while printing what the others wrote. The user named
# by QPC_TESTNET_CREATOR creates the group and invites every PEER as soon as
# the peer has registered; the peers accept the invitation. The server is
# QPC_TESTNET_SERVER (default qpcd:7443: in docker-compose.yml, the qpcd
# service's replicas); scripts/testnet.sh spreads its clients over its nodes.
set -eu
me=${1:?usage: testnet-chat.sh NAME [PEER...]}
shift
cert=${QPC_TESTNET_CERT:-/qpcd/tls/cert.pem}
every=${QPC_TESTNET_EVERY:-30}
server=${QPC_TESTNET_SERVER:-qpcd:7443}

until [ -s "$cert" ]; do
	echo "waiting for $cert"
	sleep 2
done
# qpc pins the SHA-256 of the certificate's DER bytes (cert_sha256 in qpcd's log).
pin=$(sed '/-----/d' "$cert" | base64 -d | sha256sum | cut -d' ' -f1)

if [ ! -f "${QPC_HOME:?}/client.key" ]; then
	qpc init --server "$server" --server-name localhost --pin "$pin"
	until qpc register "$me"; do sleep 5; done
fi

if [ "${QPC_TESTNET_CREATOR:-}" = "$me" ]; then
	qpc group create testnet || true
	for peer in "$@"; do
		until qpc group add testnet "$peer"; do
			echo "waiting for $peer to register"
			sleep 5
		done
	done
fi

n=0
while :; do
	n=$((n + 1))
	# Joining is by consent: accept the creator's invitation once it is there.
	for id in $(qpc invitations 2>/dev/null | sed -n 's/^invitation \([0-9a-f]*\):.*/\1/p'); do
		qpc invitations accept "$id" || true
	done
	qpc recv --wait 5s || true
	qpc send testnet "hello #$n from $me" || echo "not in the group testnet yet"
	sleep "$every"
done
