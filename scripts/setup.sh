#!/usr/bin/env bash
# Create (once) the project's virtual environment in .venv with the pinned stack.
# A second run is a no-op unless requirements.txt, constraints.txt or this script changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MIDEPSEG_VENV:-$root/.venv}"
py="${PYTHON:-python3}"
stamp="$venv/.midepseg-installed"
want="$(cat "$root"/requirements.txt "$root"/constraints.txt "$root"/scripts/setup.sh | sha256sum | cut -d' ' -f1)"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

echo "[setup] installing the pinned stack into $venv (first run takes ~5 min)" >&2
start=$(date +%s)
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
cons=(-c "$root/constraints.txt")
# GeodisTK is source-only and its setup.py imports numpy: numpy first, then build without isolation.
"${pip[@]}" install "${cons[@]}" numpy==1.26.4 "setuptools>=77.0.3" wheel
"${pip[@]}" install "${cons[@]}" -r "$root/requirements.txt"
"${pip[@]}" install "${cons[@]}" --no-build-isolation GeodisTK==0.1.7
"$venv/bin/python" -c "import GeodisTK, maxflow, monai, monailabel, torch, skimage, nibabel" 
echo "$want" > "$stamp"
echo "[setup] done in $(( $(date +%s) - start )) s" >&2
