#!/usr/bin/env bash
# Installs the Debian packages vlablocks needs: ffmpeg (torchcodec video decoding), libosmesa6
# (MuJoCo CPU rendering with MUJOCO_GL=osmesa), libgl1 and libglib2.0-0 (opencv, pulled in by gym-pusht),
# chromium-headless-shell and tesseract-ocr (a test opens the eval report page in headless Chromium, screenshots it
# and reads the tables off the screenshot).
# Idempotent: does nothing when all are present.
set -euo pipefail
PACKAGES=(ffmpeg libosmesa6 libgl1 libglib2.0-0 chromium-headless-shell tesseract-ocr tesseract-ocr-eng)
missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "warning: not a Debian system; install these yourself: ${missing[*]}" >&2
  exit 0
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "installing Debian packages: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
