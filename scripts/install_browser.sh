#!/usr/bin/env bash
# Install headless Chromium (Debian packages) for the browser system test
# (tests/system/test_ui_browser.py). Idempotent: does nothing when /usr/bin/chromium exists.
# Needs root (or sudo) and apt; the test drives Chromium over its DevTools protocol, so no
# chromedriver/Selenium is needed (chromium-driver is installed too, for those who want it).
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    echo "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install_browser.sh: run as root, or install sudo; apt-get needs root." >&2
        exit 1
    fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser.sh: apt-get not found; install Chromium with your system's package manager." >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core
/usr/bin/chromium --version
