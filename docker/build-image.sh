#!/usr/bin/env bash
# Builds ferrite's image from the repository's Dockerfile with buildah, on local Debian base
# images made by debootstrap (no container registry is reachable here). `--isolation chroot`
# is what works on these machines; `--layers` keeps every step's layer, and the Dockerfile's
# cache mounts keep cargo's and pip's downloads and cargo's target directory in buildah's
# cache between builds, so an unchanged tree rebuilds in seconds. `--jobs 2` builds independent
# stages side by side: the runtime's dependency layer (downloads, unpacking, a multi-gigabyte
# layer commit) overlaps the CPU-bound release build of the wheel.
#
# usage: build-image.sh IMAGE_TAG [EXTRA_BUILDAH_BUD_ARGS...]
set -euo pipefail

image_tag="$1"
shift
docker_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(dirname "$docker_dir")"
base_suite="bookworm"
base_image="localhost/ferrite-debian:$base_suite"

"$docker_dir/ensure-container-tools.sh"
"$docker_dir/make-base-image.sh" "$base_suite" "$base_image"

previous_image_id="$(podman image inspect --format '{{.Id}}' "$image_tag" 2>/dev/null || true)"

# Every output line is prefixed with the seconds since the build started: the log then shows
# where a slow build spends its time.
SECONDS=0
buildah bud \
    --isolation chroot \
    --layers \
    --force-rm \
    --jobs 2 \
    --build-arg "BUILDER_IMAGE=$base_image" \
    --build-arg "BASE_IMAGE=$base_image" \
    --file "$repo_root/Dockerfile" \
    --tag "$image_tag" \
    "$@" \
    "$repo_root" 2>&1 \
    | while IFS= read -r line; do printf '[%5d s] %s\n' "$SECONDS" "$line"; done
echo "build-image: $image_tag built in $SECONDS s"

# The image this tag named before, with the layers only it used: without this, every changed
# dependency list would leave gigabytes behind. Kept when another tag still names it, or when
# a container still uses it (podman refuses then).
current_image_id="$(podman image inspect --format '{{.Id}}' "$image_tag")"
if [ -n "$previous_image_id" ] && [ "$previous_image_id" != "$current_image_id" ]; then
    previous_tag_count="$(podman image inspect --format '{{len .RepoTags}}' "$previous_image_id")"
    if [ "$previous_tag_count" -eq 0 ] && podman rmi "$previous_image_id" >/dev/null 2>&1; then
        echo "build-image: removed the previous $image_tag (${previous_image_id:0:12})"
    fi
fi
