#!/usr/bin/env bash
# Set up (once) and serve MIDeepSeg on the embedded sample study with the shipped weights.
#   PORT=8000 STUDIES=<folder or DICOMweb URL> bash scripts/run_server.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
port="${PORT:-8000}"
studies="${STUDIES:-$root/runs/sample_study}"
if [ -z "${STUDIES:-}" ] && [ ! -d "$studies" ]; then
  # The server writes its datastore index and labels into the studies folder: work on a copy.
  mkdir -p "$studies"
  cp apps/midepseg/sample_study/*.png apps/midepseg/sample_study/*.nii.gz "$studies"/
fi
cat <<MSG
MIDeepSeg is starting on http://127.0.0.1:$port (studies: $studies)
In 3D Slicer: MONAI Label module -> server http://127.0.0.1:$port -> Next Sample.
  Pick midepseg_3d (or midepseg_2d for one slice) in SmartEdit, place the first
  margin_points foreground points just inside the object's boundary (6 in 3D, 4 in 2D),
  then foreground/background clicks where the mask is wrong. OHIF: http://127.0.0.1:$port/ohif/
Robot annotator against this server: .venv/bin/python scripts/scripted_session.py --url http://127.0.0.1:$port
MSG
export PATH="$root/.venv/bin:$PATH"
exec monailabel start_server --app "$root/apps/midepseg" --studies "$studies" --host 127.0.0.1 --port "$port"
