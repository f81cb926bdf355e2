# shellcheck shell=bash
# A throwaway PostgreSQL cluster for the benchmark scripts (bench-peers,
# bench-idle, bench-postgres), sourced by them so that the cluster is set up
# one way: initdb in "$tmp/pg" (the caller's temp dir), loopback only on a
# free port, fsync and synchronous_commit on, run as the postgres user when
# the script runs as root. Needs PGBIN (PostgreSQL's bin directory) and tmp.
#
#   pgcluster_start MAX_CONNECTIONS SHARED_BUFFERS [CONF_LINE ...]
#       sets PGPORT and pg_started, exports PGHOST, PGPORT and PGUSER for
#       createdb and psql;
#   pgcluster_stop                 (for the caller's cleanup; a no-op when not started)
#   pg ARGS...                     pg_ctl on the cluster
#   freeport, freeudp              a free loopback TCP or UDP port

asuser=()
if [ "$(id -u)" = 0 ]; then asuser=(runuser -u postgres --); fi
pg_started=

freeport() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
freeudp() { python3 -c 'import socket;s=socket.socket(type=socket.SOCK_DGRAM);s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
pg() { "${asuser[@]}" "$PGBIN/pg_ctl" -D "$tmp/pg" -l "$tmp/pg/server.log" "$@"; }

pgcluster_start() {
	local max=$1 buffers=$2 line
	shift 2
	chmod 755 "$tmp" # the postgres user reaches its data directory through it
	mkdir "$tmp/pg"
	if [ ${#asuser[@]} -gt 0 ]; then chown postgres "$tmp/pg"; fi
	"${asuser[@]}" "$PGBIN/initdb" -D "$tmp/pg" -U postgres --auth=trust -E UTF8 >/dev/null
	PGPORT=$(freeport)
	{
		echo "listen_addresses = '127.0.0.1'"
		echo "port = $PGPORT"
		echo "unix_socket_directories = '$tmp/pg'"
		echo "max_connections = $max"
		echo "shared_buffers = $buffers"
		echo "fsync = on"
		echo "synchronous_commit = on"
		for line in "$@"; do echo "$line"; done
	} >>"$tmp/pg/postgresql.conf"
	pg -w -t 60 start >/dev/null
	pg_started=1
	export PGHOST=127.0.0.1 PGPORT PGUSER=postgres
}

pgcluster_stop() {
	if [ -n "$pg_started" ]; then pg stop -m fast >/dev/null 2>&1; fi
	pg_started=
}
