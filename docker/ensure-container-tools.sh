#!/usr/bin/env bash
# Installs podman, buildah and debootstrap from Debian's packages when any of them is missing,
# so the image test can run on a fresh machine (CI runs as root there).
set -euo pipefail

missing=()
for tool in podman buildah debootstrap; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "ensure-container-tools: missing ${missing[*]}; installing them needs root" >&2
    exit 1
fi
echo "ensure-container-tools: installing podman buildah debootstrap (missing: ${missing[*]})"
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman buildah debootstrap
