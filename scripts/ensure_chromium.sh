#!/usr/bin/env bash
# Install headless Chromium and its WebDriver when missing (Debian packages chromium and
# chromium-driver): the report test opens the HTML report in them. Quiet and quick when they
# are already there; on failure it warns and lets the tests run (that test then fails).
# apt-get runs as root (directly, or through password-less sudo). When another apt or
# dpkg holds the package lock, it waits for it, at most SCALENMF_APT_LOCK_WAIT seconds.
set -uo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi
warn() { echo "warning: $* (the report browser test needs chromium and chromium-driver)" >&2; }
if ! command -v apt-get >/dev/null 2>&1; then
    warn "no apt-get to install Chromium with"; exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; else
        warn "not root and no password-less sudo"; exit 0
    fi
fi
wait_s="${SCALENMF_APT_LOCK_WAIT:-300}"
# apt's own bounded wait for the dpkg lock (apt >= 1.9.11), for install and update alike
apt=($sudo apt-get -o "DPkg::Lock::Timeout=$wait_s")
log="$(mktemp)"
export DEBIAN_FRONTEND=noninteractive
echo "set-up: installing chromium and chromium-driver with apt-get (once; waits up to" \
    "${wait_s}s if apt is busy) ..." >&2
if ! "${apt[@]}" install -y -q chromium chromium-driver >"$log" 2>&1; then
    "${apt[@]}" update -q >>"$log" 2>&1
    "${apt[@]}" install -y -q chromium chromium-driver >>"$log" 2>&1 \
        || { tail -n 5 "$log" >&2; warn "apt-get install failed"; }
fi
rm -f "$log"
exit 0
