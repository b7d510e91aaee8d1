#!/usr/bin/env bash
# Installs what the full test suite and the benchmarks need, when missing:
#   postgresql-15         initdb and postgres in /usr/lib/postgresql/15/bin (and pgbench)
#   postgresql-client-15  psql
#   redis-server          the result cache's L2 tier in tests
#   pgbouncer             the baseline in benchmarks
#   nodejs, npm           node-postgres tests (test/integration/nodepg_test.go)
#   python3-psycopg2      psycopg2 tests, run by Debian's /usr/bin/python3
#
# and then, where node and npm are there, the node-postgres test project's
# packages: `npm ci` in test/integration/testdata/node when its node_modules
# is missing or older than package-lock.json.
#
# Idempotent: it does nothing when everything is there. As root it runs
# `apt-get update` once and installs only what is missing, without starting
# any service (Debian's postinst scripts would otherwise start redis-server on
# 6379 and pgbouncer on 6432). Not as root, it lists what is missing and goes
# on to the npm step: tests that need a missing package then skip, or fail
# under CI=true.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PG_MAJOR="${PG_MAJOR:-15}"
PG_BIN="/usr/lib/postgresql/${PG_MAJOR}/bin"

have() { # have NAME: a command on PATH or in an sbin directory
	command -v "$1" >/dev/null 2>&1 || [[ -x "/usr/sbin/$1" || -x "/usr/local/sbin/$1" ]]
}

missing=()
[[ -x "$PG_BIN/initdb" && -x "$PG_BIN/postgres" && -x "$PG_BIN/pgbench" ]] || missing+=("postgresql-${PG_MAJOR}")
[[ -x "$PG_BIN/psql" ]] || missing+=("postgresql-client-${PG_MAJOR}")
have redis-server || missing+=(redis-server)
have pgbouncer || missing+=(pgbouncer)
# NodeSource's nodejs package brings its own npm; Debian's does not.
have node || missing+=(nodejs)
have npm || missing+=(npm)
# The psycopg2 tests call /usr/bin/python3 by path: a python3 earlier on PATH
# (pyenv, a virtualenv) does not see Debian's python3-* packages.
/usr/bin/python3 -c 'import psycopg2' >/dev/null 2>&1 || missing+=(python3-psycopg2)

# node_deps installs the node-postgres test project's packages, exactly as
# package-lock.json pins them, when node_modules is missing or stale (npm
# writes node_modules/.package-lock.json on every install). The packages
# land in the work tree and are read only by node, run by the tests as the
# invoking user; the PostgreSQL servers never touch them.
node_deps() {
	local dir=test/integration/testdata/node
	if ! have node || ! have npm; then
		echo "install-deps: no node and npm: skipping npm ci in $dir"
		return 0
	fi
	if [[ -f "$dir/node_modules/.package-lock.json" && ! "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]]; then
		echo "install-deps: $dir/node_modules is up to date"
		return 0
	fi
	echo "install-deps: npm ci in $dir"
	(cd "$dir" && npm ci --no-audit --no-fund)
}

if ((${#missing[@]} == 0)); then
	echo "install-deps: PostgreSQL ${PG_MAJOR}, Redis, PgBouncer, Node.js and psycopg2 are installed"
	node_deps
	exit 0
fi

if [[ "$(id -u)" != 0 ]]; then
	echo "install-deps: missing packages: ${missing[*]}"
	echo "install-deps: not root, so not installing them; run as root, or:"
	echo "    sudo apt-get install -y --no-install-recommends ${missing[*]}"
	echo "install-deps: tests that need them will skip (and fail under CI=true)"
	node_deps
	exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
	echo "install-deps: missing packages: ${missing[*]}, and no apt-get to install them" >&2
	exit 1
fi

echo "install-deps: installing ${missing[*]}"

# Forbid service starts while installing: invoke-rc.d asks policy-rc.d, and
# 101 means "action not allowed". An existing policy is put back afterwards.
policy=/usr/sbin/policy-rc.d
backup=""
if [[ -e "$policy" ]]; then
	backup="$(mktemp)"
	cp -p "$policy" "$backup"
fi
restore_policy() {
	if [[ -n "$backup" ]]; then
		mv -f "$backup" "$policy"
	else
		rm -f "$policy"
	fi
}
trap restore_policy EXIT
printf '#!/bin/sh\nexit 101\n' >"$policy"
chmod 0755 "$policy"

export DEBIAN_FRONTEND=noninteractive
retry() { # retry CMD...: up to 3 tries, for a flaky mirror
	local i
	for i in 1 2 3; do
		"$@" && return 0
		echo "install-deps: try $i of 3 failed: $*" >&2
		((i < 3)) && sleep $((i * 5))
	done
	return 1
}
retry apt-get update -qq
retry apt-get install -y -qq --no-install-recommends "${missing[@]}"

# Belt and braces: should a service have started anyway (a system whose
# init ignores policy-rc.d), stop the ones installed just now and keep
# them from starting at boot.
for svc in redis-server pgbouncer; do
	[[ " ${missing[*]} " == *" $svc "* ]] || continue # not ours: leave it alone
	if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
		systemctl disable --now "$svc" >/dev/null 2>&1 || true
	elif [[ -x "/etc/init.d/$svc" ]]; then
		"/etc/init.d/$svc" stop >/dev/null 2>&1 || true
	fi
done

[[ -x "$PG_BIN/initdb" ]] || { echo "install-deps: $PG_BIN/initdb still missing after install" >&2; exit 1; }
node_deps
echo "install-deps: done"
