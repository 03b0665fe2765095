#!/usr/bin/env bash
# Installs what linmoe needs from Debian, if missing. Idempotent and quick when all is there.
# Runs as root (or with sudo available). Used by scripts/run.sh and scripts/test.sh.
set -euo pipefail
packages=(build-essential cmake libopenmpi-dev openmpi-bin libyaml-cpp-dev libspdlog-dev catch2
          clang-format python3 ${LINMOE_EXTRA_PACKAGES:-})
# The bundled corpus's text package (see docs/DATA.md).
packages+=(bible-kjv bible-kjv-text)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -q
  "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
