#!/usr/bin/env bash
# The OHIF session by hand: Orthanc (DICOMweb, 127.0.0.1) with the sample CT as a DICOM
# series + the MIDeepSeg app on it; prints the OHIF address. Ctrl-C stops both.
#   PORT=8000 ORTHANC_PORT=8042 bash scripts/run_ohif_demo.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
bash scripts/setup_ohif.sh
exec "$root/.venv/bin/python" scripts/ohif_demo.py --port "${PORT:-8000}" --orthanc-port "${ORTHANC_PORT:-8042}" "$@"
