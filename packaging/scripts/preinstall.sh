#!/bin/sh
# qpcd package (deb and rpm): create the qpcd system account before files land.
set -e
if ! getent group qpcd >/dev/null 2>&1; then
	groupadd --system qpcd
fi
if ! getent passwd qpcd >/dev/null 2>&1; then
	useradd --system --gid qpcd --home-dir /var/lib/qpcd --no-create-home \
		--shell /usr/sbin/nologin --comment "quicprochat server" qpcd
fi
exit 0
