#!/usr/bin/env bash
# Prints the path of a Python 3.12 interpreter: python3.12 on PATH, else a pyenv-installed 3.12.
set -euo pipefail
if command -v python3.12 >/dev/null 2>&1 && python3.12 -c 'import sys' >/dev/null 2>&1; then
  python3.12 -c 'import sys; print(sys.executable)'
  exit 0
fi
for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12; do
  if [ -x "$candidate" ]; then echo "$candidate"; exit 0; fi
done
echo "no Python 3.12 found: install it (e.g. 'pyenv install 3.12') and retry" >&2
exit 1
