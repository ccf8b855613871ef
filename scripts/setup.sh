#!/usr/bin/env bash
# Idempotent development setup: a virtualenv at .venv with the project, Airflow
# and the test dependencies; as root on Debian/Ubuntu also the system parts the
# integration tests use (OpenSSH server, pipx). Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  need=()
  command -v "$PYTHON" >/dev/null || need+=(python3)
  "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
  [ -x /usr/sbin/sshd ] || need+=(openssh-server)
  command -v ssh >/dev/null || need+=(openssh-client)
  command -v pipx >/dev/null || need+=(pipx)
  # The jump-host tests run the edge host's sshd in its own network namespace.
  command -v ip >/dev/null || need+=(iproute2)
  command -v unshare >/dev/null || need+=(util-linux)
  # The deployment tests (tests/deploy): a throwaway Postgres cluster and Redis.
  [ -n "$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null)" ] || need+=(postgresql)
  command -v redis-server >/dev/null || need+=(redis-server)
  # systemd-analyze verifies the dispatcher's unit files (tests/edge/test_systemd.py); no manager is started.
  command -v systemd-analyze >/dev/null || need+=(systemd)
  if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "setup: Python >= 3.10 is required (found: $("$PYTHON" --version 2>&1))" >&2
  exit 1
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv (first time: Airflow and the test tools, ~400 MB, a few minutes)" >&2
  "$PYTHON" -m venv .venv
fi
# Editable install so the console scripts track the checkout. pip's full output goes to a log;
# the terminal sees one line per package pip fetches (nothing when all is installed already).
log=.venv/setup-pip.log
.venv/bin/python -m pip install --disable-pip-version-check -e '.[airflow,test,deploy]' 2>&1 |
  tee "$log" | awk '/^Collecting /{n++; printf "setup: [%d] collecting %s\n", n, $2; fflush()}
    /^Installing collected packages/{print "setup: installing ..."; fflush()}' >&2
rc=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ]; then
  grep -v "is neither a file nor a directory" "$log" | tail -n 30 >&2
  echo "setup: pip install failed (exit $rc); full output: $log" >&2
  exit "$rc"
fi
