#!/usr/bin/env bash
# Creates .venv (if needed) with the newest suitable Python and installs the requirements.
# Usage: scripts/bootstrap.sh [requirements file]   (default: requirements.txt)
# Re-running is cheap: pip runs again only when the requirements file changed.
set -euo pipefail
cd "$(dirname "$0")/.."
req="${1:-requirements.txt}"

pick_python() {
  # Prefer 3.12 (newest jax); a pyenv shim can exist without being runnable, so each candidate is executed.
  local candidates=(python3.12)
  if command -v pyenv >/dev/null 2>&1; then
    candidates+=("$(pyenv root)"/versions/3.12*/bin/python3.12)
  fi
  candidates+=(python3.13 python3.11 python3)
  for py in "${candidates[@]}"; do
    if "$py" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
      echo "$py"; return 0
    fi
  done
  echo "bootstrap: no Python >= 3.11 with venv found (tried: ${candidates[*]})" >&2
  return 1
}

if [ ! -x .venv/bin/python ]; then
  py=$(pick_python)
  echo "bootstrap: creating .venv with $("$py" --version 2>&1) ($py)"
  "$py" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi

stamp=".venv/.installed-$(basename "$req")"
hash=$(cat requirements*.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$hash" ]; then
  echo "bootstrap: installing $req"
  .venv/bin/python -m pip install -q -r "$req"
  echo "$hash" > "$stamp"
fi
