#!/usr/bin/env bash
# `make bench`'s anchors (sockperf, iperf3, socat: tool name = Debian package name). Installs the
# missing ones with apt-get when root; otherwise says which are missing and why. Never fails: a
# missing anchor turns its rows of the table into "not measured: <tool> is not installed".
set -u
missing=()
for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "bench: anchors present: $*"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "bench: not root, so not installing ${missing[*]}: their rows will say 'not measured'" \
         "(sudo apt-get install ${missing[*]})"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "bench: no apt-get here, so not installing ${missing[*]}: their rows will say 'not measured'"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null 2>&1 || echo "bench: apt-get update failed; trying the package lists there are"
for pkg in "${missing[@]}"; do
    candidate=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2}')
    if [ -z "$candidate" ] || [ "$candidate" = "(none)" ]; then
        echo "bench: $pkg is not in this system's package repositories: its rows will say 'not measured'"
    elif apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null 2>&1; then
        echo "bench: installed $pkg $candidate"
    else
        echo "bench: apt-get install $pkg failed: its rows will say 'not measured'"
    fi
done
exit 0
