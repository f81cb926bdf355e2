#!/bin/sh
# qpcd package (deb and rpm): after removal. The database in /var/lib/qpcd and
# the qpcd account are kept (messages and keys are not deleted by a package
# manager); remove them by hand when decommissioning.
set -e
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
