#!/usr/bin/env bash
# Installs Debian's `chromium` (headless, for the report check) when /usr/bin/chromium is
# missing. Needs root and the Debian package archive; idempotent.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "error: /usr/bin/chromium is missing; install it with: sudo apt-get install chromium" >&2
    exit 1
fi
echo "installing chromium (Debian package) for the report check" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium >/dev/null
/usr/bin/chromium --version >&2
