#!/usr/bin/env bash
# Install libjpeg-turbo's TurboJPEG library (Debian's `libturbojpeg0`): the TIFF
# reader decodes JPEG tiles with it straight into the tile arrays
# (mask_first/jpeg.py); without it the reader uses imagecodecs, same pixels.
# Idempotent. Under CI=true a failed install fails the run (tests/conftest.py's
# jpeg_decoder fixture would fail anyway); elsewhere it says why and exits 0.
set -u
log() { echo "[install-turbojpeg] $*"; }
if ldconfig -p 2>/dev/null | grep -q 'libturbojpeg\.so'; then
    log "libturbojpeg already installed; nothing to do."
    exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    log "not root or no apt-get: not installing; JPEG tiles are decoded with imagecodecs."
    [ "${CI:-}" = "true" ] && exit 1
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get install -y -qq --no-install-recommends libturbojpeg0 || \
       { apt-get update -qq && apt-get install -y -qq --no-install-recommends libturbojpeg0; }; }; then
    log "apt-get install libturbojpeg0 failed."
    [ "${CI:-}" = "true" ] && exit 1
fi
exit 0
