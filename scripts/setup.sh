#!/usr/bin/env bash
# Installs every system dependency of mlxterp with apt. Idempotent: quiet and fast when all is present.
set -euo pipefail
PKGS=(build-essential cmake pkg-config libtorch-dev nlohmann-json3-dev libcli11-dev libgtest-dev libgmock-dev
      libbenchmark-dev libsentencepiece-dev sentencepiece libpcre2-dev libutf8proc-dev libopenblas0-openmp python3 python3-torch python3-numpy
      chromium)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
