#!/usr/bin/env bash
# Build vgf's image with podman where no image registry is reachable, then smoke-test it.
#
#   scripts/image-local.sh            # base image (once), vgf image, then `vgf --help` + smoke pipeline inside
#   SKIP_SMOKE=1 scripts/image-local.sh
#
# The base is Debian bookworm made by debootstrap from Debian's package mirror (python3, python3-venv),
# imported as localhost/vgf-base:bookworm. torch's CPU wheel comes from a local folder (TORCH_WHEELS,
# served on 127.0.0.1 for the build) when it holds one, else from PyTorch's CPU index; everything else
# from PIP_INDEX_URL. RUN steps use `--isolation chroot`, which works where `podman run` cannot start
# containers, so the smoke test is a RUN step of a throwaway build on top of the image.
# Needs root, podman and debootstrap (apt-get install podman debootstrap).
set -euo pipefail
cd "$(dirname "$0")/.."

BASE=${BASE:-localhost/vgf-base:bookworm}
IMAGE=${IMAGE:-localhost/vgf:latest}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
TORCH_WHEELS=${TORCH_WHEELS:-/opt/wheels}
PIP_INDEX_URL=${PIP_INDEX_URL:-https://pypi.org/simple}
WORK=$(mktemp -d)
trap 'kill ${SERVER:-} 2>/dev/null || true; rm -rf "$WORK"' EXIT

if ! podman image exists "$BASE"; then
    echo "== base image $BASE from debootstrap ($MIRROR)"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$WORK/rootfs" "$MIRROR" \
        > "$WORK/debootstrap.log" || { tail -20 "$WORK/debootstrap.log"; exit 1; }
    rm -rf "$WORK/rootfs/var/cache/apt/archives/"*.deb "$WORK/rootfs/var/lib/apt/lists/"*
    tar -C "$WORK/rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$BASE"
fi

TORCH_PIP_ARGS=${TORCH_PIP_ARGS:-}
if [[ -z "$TORCH_PIP_ARGS" ]] && compgen -G "$TORCH_WHEELS/torch-2.13.0+cpu-*.whl" > /dev/null; then
    PORT=${WHEEL_PORT:-38765}  # fixed: the port is part of a build argument, so a new one would miss the layer cache
    python3 -m http.server "$PORT" --bind 127.0.0.1 --directory "$TORCH_WHEELS" > "$WORK/http.log" 2>&1 &
    SERVER=$!
    sleep 1
    TORCH_PIP_ARGS="--find-links http://127.0.0.1:$PORT/"
fi

echo "== $IMAGE"
build=(podman build --isolation chroot --network host)
# this machine's CA bundle, for a network whose TLS is re-signed by a proxy (pip in the build checks against it)
CA=${CA:-/etc/ssl/certs/ca-certificates.crt}
[[ -f "$CA" ]] && build+=(-v "$CA:/etc/pip-ca.crt:ro" --build-arg PIP_CERT=/etc/pip-ca.crt)
"${build[@]}" --build-arg BASE_IMAGE="$BASE" --build-arg PIP_INDEX_URL="$PIP_INDEX_URL" \
    ${TORCH_PIP_ARGS:+--build-arg TORCH_PIP_ARGS="$TORCH_PIP_ARGS"} -t "$IMAGE" .
podman image ls "$IMAGE"

if [[ -z "${SKIP_SMOKE:-}" ]]; then
    echo "== inside $IMAGE: vgf --help, then the smoke pipeline (no network)"
    printf 'FROM %s\nRUN vgf --help && vgf pipeline preset=smoke && vgf runs --limit 6\n' "$IMAGE" > "$WORK/Containerfile"
    # chroot isolation only knows the host's network, so the build runs in a new, empty network namespace
    unshare --net podman build --isolation chroot --network host --no-cache -f "$WORK/Containerfile" \
        -t localhost/vgf-smoke "$WORK"
    podman rmi -f localhost/vgf-smoke > /dev/null
fi
