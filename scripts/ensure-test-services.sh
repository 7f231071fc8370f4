#!/usr/bin/env bash
# Make sure the programs the test suite needs are installed: redis-server and PostgreSQL's
# server binaries (tests/services.py starts its own servers from them), docker-compose
# (tests/test_compose.py), and Debian's chromium with its chromedriver (the console's browser
# tests, tests/test_console_browser.py: nothing is downloaded at test time). As root with apt-get, install whatever is missing; otherwise
# warn and go on, so the tests that need them fail with a message saying what is missing.
set -euo pipefail

have_postgres() {
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    return 0
  fi
  # Debian keeps the server binaries off PATH, one directory per major version.
  local dir
  for dir in /usr/lib/postgresql/*/bin; do
    if [[ -x "$dir/initdb" && -x "$dir/pg_ctl" ]]; then
      return 0
    fi
  done
  return 1
}

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
have_postgres || missing+=(postgresql)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)

if ((${#missing[@]} == 0)); then
  exit 0
fi

if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
  echo "warning: not installed: ${missing[*]} (run as root on Debian to install them);" \
    "the tests that need them will fail" >&2
  exit 0
fi

echo "installing ${missing[*]} with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive

# Keep the packages' own services from starting: the tests run their own servers on free
# ports, and a distro Redis left on 6379 would be picked up by `make run` instead of its own.
policy=/usr/sbin/policy-rc.d
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  trap 'rm -f "$policy"' EXIT
fi

# Wait for a dpkg lock held by an unattended upgrade rather than failing at once.
apt_get=(apt-get -o DPkg::Lock::Timeout=300 -o Dpkg::Use-Pty=0)
"${apt_get[@]}" update -qq
# No recommends: docker-compose recommends docker.io, a whole container engine.
"${apt_get[@]}" install -y -qq --no-install-recommends "${missing[@]}"
