#!/usr/bin/env bash
# `make install-serve`: what the serving tests (tests/test_serve.py) need, on top of `make install`:
#   1. the serve extra (nvidia-pytriton's bundled tritonserver + python backend, tritonclient[all]);
#   2. the system's libpython3.X that the bundled python backend stub links against (Debian: libpython3.X),
#      installed with apt-get only when it is missing and we are root.
# Without (2) the serve tests skip with the reason; this script says so and exits 0.
# Exit status 0 and the stamp file ($2) written only when the server can run here.
set -euo pipefail
PY=${1:-.venv/bin/python}
STAMP=${2:-}
"$PY" -m pip install -q -e '.[cpu,dev,serve]'
reason() { "$PY" -c 'from vggc.serve.bundle import serve_reason; print(serve_reason() or "")'; }
R=$(reason)
if [ -n "$R" ] && [[ "$R" == *"apt-get install"* ]]; then
  PKG=$("$PY" -c 'import sys; print("libpython%d.%d" % sys.version_info[:2])')
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "install-serve: apt-get install -y $PKG" >&2
    apt-get install -y -q "$PKG" >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q "$PKG" >/dev/null; } || true
    R=$(reason)
  else
    R="$R (not root or no apt-get: install it as root)"
  fi
fi
if [ -n "$R" ]; then
  echo "install-serve: $R -- the serve tests will skip" >&2
else
  echo "install-serve: the bundled tritonserver can run here" >&2
  if [ -n "$STAMP" ]; then touch "$STAMP"; fi
fi
