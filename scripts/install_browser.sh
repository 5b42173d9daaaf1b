#!/usr/bin/env bash
# Installs Debian's headless-capable Chromium and its WebDriver when they are missing: the
# dashboard test drives them (tests/test_dashboard.py). Needs root (or sudo) and the Debian
# archive; nothing is downloaded from elsewhere (no Playwright browser downloads).
set -euo pipefail

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        exec sudo -n "$0" "$@"
    fi
    echo "install_browser.sh: chromium/chromedriver are missing and installing them needs root" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# Fonts make the screenshot legible; the driver must match the browser, so both come from the
# same archive in one transaction.
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null
chromium --version
chromedriver --version
