#!/bin/sh
# qpcd package (deb and rpm): after install or upgrade.
# deb: $1 = configure [old-version]; rpm: $1 = 1 (install) or 2 (upgrade).
set -e
# The configuration may hold paths to key files: readable by qpcd, not by all.
for f in /etc/qpcd/qpcd.yaml /etc/qpcd/qpcd.env; do
	if [ -e "$f" ]; then
		chgrp qpcd "$f" && chmod 0640 "$f"
	fi
done
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
	upgrade=no
	case "$1" in
	configure) [ -n "$2" ] && upgrade=yes ;;
	2) upgrade=yes ;;
	esac
	if [ "$upgrade" = yes ]; then
		# A running qpcd restarts on the new binary; a stopped one stays stopped.
		systemctl try-restart qpcd.service >/dev/null 2>&1 || true
	else
		echo "qpcd installed. Review /etc/qpcd/qpcd.yaml, then: systemctl enable --now qpcd"
	fi
fi
exit 0
