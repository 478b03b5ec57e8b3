#!/usr/bin/env bash
# Makes a local Debian base image with debootstrap + `podman import`, standing in for
# `debian:<suite>-slim` where no container registry can be reached. The image lives in the
# host's container storage, which is the cache: an existing image is kept while it was made
# with the host's current local CA certificates (see below), and made anew otherwise.
#
# These machines reach PyPI and crates.io through a TLS-intercepting egress proxy whose CA the
# host trusts from /usr/local/share/ca-certificates/. The image gets the same certificates
# there (Debian's ca-certificates merges them into the system bundle when a build installs it)
# and an /etc/pip.conf pointing pip at that bundle: host site configuration, as a corporate
# base image would carry it, so the Dockerfile itself stays free of it.
#
# usage: make-base-image.sh SUITE IMAGE   e.g. make-base-image.sh bookworm localhost/ferrite-debian:bookworm
set -euo pipefail

suite="$1"
image="$2"
mirror="http://deb.debian.org/debian"
security_mirror="http://deb.debian.org/debian-security"

host_ca_dir="/usr/local/share/ca-certificates"
host_ca_sha="$(cat "$host_ca_dir"/*.crt 2>/dev/null | sha256sum | cut -c1-16)"
ca_label="ferrite.host-ca-sha256"

if podman image exists "$image"; then
    image_ca_sha="$(podman image inspect --format "{{ index .Labels \"$ca_label\" }}" "$image")"
    if [ "$image_ca_sha" = "$host_ca_sha" ]; then
        echo "make-base-image: $image already exists"
        exit 0
    fi
    echo "make-base-image: $image was made with other CA certificates; making it anew"
fi

workdir="$(mktemp -d /var/tmp/ferrite-base.XXXXXX)"
trap 'rm -rf "$workdir"' EXIT
rootfs="$workdir/rootfs"

echo "make-base-image: debootstrap --variant=minbase $suite"
debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >"$workdir/debootstrap.log" 2>&1 \
    || { tail -n 30 "$workdir/debootstrap.log" >&2; exit 1; }

# The same apt sources as Debian's official images: the point-release suite alone lacks the
# security updates (bookworm's newer rustc-web comes from there).
rm -f "$rootfs/etc/apt/sources.list"
cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security_mirror
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
if compgen -G "$host_ca_dir/*.crt" >/dev/null; then
    mkdir -p "$rootfs/usr/local/share/ca-certificates"
    cp "$host_ca_dir"/*.crt "$rootfs/usr/local/share/ca-certificates/"
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$rootfs/etc/pip.conf"
fi
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb

echo "make-base-image: podman import -> $image"
tar -C "$rootfs" --numeric-owner -c . | podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' \
    --change "LABEL $ca_label=$host_ca_sha" \
    - "$image" >/dev/null
echo "make-base-image: $image ready"
