#!/usr/bin/env bash
# The one test command: installs what the tests need, then runs ruff, mypy,
# the API docs build and pytest. Usage: bash tests/run.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

# The servers and tools the tests drive, from Debian's packages where missing:
# redis-server, etcd, dig and dnsmasq (the binary only: dnsmasq-base starts
# no system service) for DNS, and chromium for the dashboard's page.
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v dig >/dev/null 2>&1 || missing+=(bind9-dnsutils)
{ command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ]; } || missing+=(dnsmasq-base)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "tests/run.sh: installing ${missing[*]} with apt-get" >&2
    if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

venv="${TXMASSE_VENV:-.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check \
    -e ".[test]" --config-settings editable_mode=compat

"$venv/bin/ruff" check txmasse tests examples twisted bench docs
"$venv/bin/mypy" txmasse tests examples twisted/plugins bench docs
# API docs from the docstrings (pydoctor, into docs/api/): a broken L{} link fails.
"$venv/bin/python" docs/apidocs.py
# Two workers (pytest-xdist) on the machine's two cores: the tests spend most
# of their time waiting on servers and processes of their own. -n 0 after the
# command runs them in one process.
exec "$venv/bin/python" -m pytest -n "${TXMASSE_TEST_WORKERS:-2}" "$@"
