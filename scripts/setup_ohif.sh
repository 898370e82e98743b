#!/usr/bin/env bash
# Install (once) what the OHIF session needs: Debian's orthanc + orthanc-dicomweb (the PACS)
# and chromium (the browser), and npm's playwright-core (tests/browser, from its lock file);
# and Debian's nginx, the reverse proxy in front of several app replicas (tests/test_replicas.py).
# Never fails its caller: when something cannot be installed it prints why, and the OHIF
# browser test then skips with that reason.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
start=$(date +%s)

need=()
command -v Orthanc >/dev/null || need+=(orthanc)
[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "[setup_ohif] SKIP apt: not root, cannot install ${need[*]}" >&2
  elif ! command -v apt-get >/dev/null; then
    echo "[setup_ohif] SKIP apt: no apt-get on this machine, cannot install ${need[*]}" >&2
  else
    echo "[setup_ohif] apt-get install ${need[*]}" >&2
    # Keep the orthanc and nginx packages from starting their system services (the tests run their own).
    policy=/usr/sbin/policy-rc.d
    own_policy=0
    if [ ! -e "$policy" ]; then
      printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && own_policy=1
    fi
    if ! { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null; }; then
      echo "[setup_ohif] apt-get install ${need[*]} failed (see above)" >&2
    fi
    [ "$own_policy" = 1 ] && rm -f "$policy"
  fi
fi

browser="$root/tests/browser"
if ! command -v npm >/dev/null; then
  echo "[setup_ohif] SKIP npm: npm is not installed, cannot install playwright-core" >&2
elif [ ! -d "$browser/node_modules/playwright-core" ] || [ "$browser/package-lock.json" -nt "$browser/node_modules/.package-lock.json" ]; then
  echo "[setup_ohif] npm ci (playwright-core, no browser download)" >&2
  (cd "$browser" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error) \
    || echo "[setup_ohif] npm ci failed (see above)" >&2
fi
echo "[setup_ohif] done in $(( $(date +%s) - start )) s" >&2
