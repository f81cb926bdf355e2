#!/bin/sh
# qpcd package (deb and rpm): before removal. On upgrade the service keeps
# running until postinstall restarts it.
# deb: $1 = remove | upgrade | deconfigure; rpm: $1 = 0 (erase) or 1 (upgrade).
set -e
case "$1" in
remove | deconfigure | 0)
	if [ -d /run/systemd/system ]; then
		systemctl disable --now qpcd.service >/dev/null 2>&1 || true
	fi
	;;
esac
exit 0
