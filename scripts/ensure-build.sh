#!/usr/bin/env bash
# What building callgate's C extension (the masking loop, setup.py) needs: a C compiler and the
# headers of the Python that builds it. Installs gcc (and python3-dev for Debian's own Python)
# through scripts/ensure-apt.sh when missing. Without them callgate still installs and runs
# (the extension is optional) but `make test` fails its check that the extension is built.
#   scripts/ensure-build.sh .venv/bin/python
set -euo pipefail
python="${1:-python3}"
here="$(cd "$(dirname "$0")" && pwd)"

if ! command -v cc >/dev/null 2>&1 && ! command -v gcc >/dev/null 2>&1; then
  "$here/ensure-apt.sh" gcc
fi
include="$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
if [ ! -f "$include/Python.h" ]; then
  case "$include" in
    /usr/include/*) "$here/ensure-apt.sh" python3-dev ;;
    *) echo "ensure-build: no Python.h in $include: the masking extension will not be built" >&2 ;;
  esac
fi
