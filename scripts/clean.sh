#!/usr/bin/env bash
# Removes what scripts/demo.sh and scripts/test.sh leave on this machine (README, "What the two
# commands leave behind"). Without --yes it only lists it, with sizes.
#
#   bash scripts/clean.sh          # list what would be removed
#   bash scripts/clean.sh --yes    # remove it
#
# Run it when no test run or demo is running on this machine: the folders in $TMPDIR and the
# test users are shared by every checkout here. System packages that scripts/setup.sh installed
# (openssh-server, pipx, postgresql, redis-server) are left alone: other software may use them.
set -uo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
  --yes) remove=1 ;;
  "" | --dry-run) remove=0 ;;
  *)
    echo "usage: bash scripts/clean.sh [--dry-run | --yes]" >&2
    exit 2
    ;;
esac

tmp=${TMPDIR:-/tmp}
# The sshd harness's users (tests/sshd_harness.py; scripts/test_matrix.sh uses its own), each
# with a home holding a pipx-installed runtime and the tests' state.
users=${ORCHESJOB_CLEAN_USERS-"orchesjob-it orchesjob-itd ${ORCHESJOB_TEST_SSH_USER:-}"}

# In this checkout: the dev venv, the public releases' venv (tests/compat), the Airflow 2.11 venv
# (scripts/test_airflow2.sh), the matrix venvs (scripts/test_matrix.sh), the editable install's
# metadata. In $TMPDIR: the Airflow home of each pytest session, the sshd harness, the deployment
# tests (Postgres cluster, Redis, Airflow logs), the matrix deployments, wheels built for pipx,
# the demo's homes and the matrix's temporary requirement files.
paths=(.venv .venv-public "${AIRFLOW2_VENV:-.venv-airflow2}" .venv-af211 .venv-af30 .venv-floor
  airflow_provider_orchesjob.egg-info)
patterns=(orchesjob-airflow-home- orchesjob-sshd- orchesjob-deploy- orchesjob-matrix- orchesjob-wheel-
  orchesjob-demo- orchesjob-floor-constraints. orchesjob-mwaa-requirements.)

total=0
drop() {  # label path...: remove (or list) the paths as one item
  local label=$1 kb
  shift
  [ $# -gt 0 ] || return 0
  kb=$(du -sck -- "$@" 2>/dev/null | tail -n 1 | cut -f1)
  total=$((total + ${kb:-0}))
  if [ "$remove" = 1 ]; then
    rm -rf -- "$@" && echo "clean: removed $label ($((${kb:-0} / 1024)) MB)"
  else
    echo "clean: would remove $label ($((${kb:-0} / 1024)) MB)"
  fi
}

for p in "${paths[@]}"; do
  [ -e "$p" ] && drop "$p" "$p"
done
for pattern in "${patterns[@]}"; do
  found=()
  for p in "$tmp/$pattern"*; do
    [ -e "$p" ] && found+=("$p")
  done
  drop "${#found[@]} x $tmp/$pattern*" "${found[@]}"
done

for user in $users; do
  id "$user" >/dev/null 2>&1 || continue
  home=$(getent passwd "$user" | cut -d: -f6)
  if [ "$remove" = 1 ]; then
    # Its processes first (leftover jobs of the tests, an sshd session): userdel refuses a busy user.
    pkill -KILL -u "$user" 2>/dev/null
    sleep 0.5
    if userdel -r "$user" 2>/dev/null; then
      echo "clean: removed user $user and its home $home"
    else
      echo "clean: could not remove user $user (needs root: userdel -r $user)" >&2
    fi
  else
    echo "clean: would remove user $user and its home $home"
  fi
done

verb=$([ "$remove" = 1 ] && echo "removed" || echo "would free")
echo "clean: $verb $((total / 1024)) MB in files$([ "$remove" = 1 ] || echo "; run with --yes to remove")"
