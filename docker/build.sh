#!/usr/bin/env bash
# Builds the statically linked release binaries with cargo (outside Docker)
# and wraps each one in a tiny image based on `scratch`; nothing is pulled.
#
#   docker/build.sh             binaries, then images
#   docker/build.sh binaries    only the static binaries
#   docker/build.sh images      only the images (binaries must exist)
#
# Environment:
#   CARGO_TARGET_DIR   where the static build goes (default target/static, kept
#                      apart from the normal target dir so neither rebuilds the other)
#   IMAGE_PREFIX       image names are <prefix><binary> (default msgstore-)
#   IMAGE_TAG          (default latest)
#   TARGET             Rust target triple (default: the host's; must be *-linux-gnu)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

BINARIES=(echo-server client headnode datanode)
IMAGE_PREFIX=${IMAGE_PREFIX:-msgstore-}
IMAGE_TAG=${IMAGE_TAG:-latest}
MAX_IMAGE_BYTES=$((15 * 1000 * 1000))
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/static}
STAGE=$CARGO_TARGET_DIR/docker-context

say() { printf '==> %s\n' "$*"; }
die() { printf 'build.sh: %s\n' "$*" >&2; exit 1; }

host_target() {
    rustc -vV | sed -n 's/^host: //p'
}

build_binaries() {
    command -v cargo >/dev/null || die "cargo not found; install Rust (see README)"
    TARGET=${TARGET:-$(host_target)}
    case $TARGET in
        *-linux-gnu) ;;
        *) die "target $TARGET: expected a *-linux-gnu target (set TARGET=x86_64-unknown-linux-gnu)" ;;
    esac
    say "cargo build --release --target $TARGET (static, into $CARGO_TARGET_DIR)"
    # crt-static links glibc statically, so the binary runs in an empty image.
    # Stripping debug info (symbols stay, for readable backtraces) cuts each
    # binary from ~15 MB to ~4 MB. --target keeps RUSTFLAGS away from build
    # scripts and proc macros, which must stay dynamic.
    local packages=() bin
    for bin in "${BINARIES[@]}"; do packages+=(-p "$bin"); done
    RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo \
        cargo build --release --target "$TARGET" "${packages[@]}"
    rm -rf "$STAGE"
    mkdir -p "$STAGE"
    cp -R docker/rootfs "$STAGE/rootfs"
    # Mount points owned by the images' user: a new named volume mounted
    # there takes their owner, so a non-root process can write to it.
    mkdir -p "$STAGE/owned/data" "$STAGE/owned/logs"
    for bin in "${BINARIES[@]}"; do
        cp "$CARGO_TARGET_DIR/$TARGET/release/$bin" "$STAGE/$bin"
    done
}

build_images() {
    command -v docker >/dev/null || die "docker not found"
    for bin in "${BINARIES[@]}"; do
        [[ -x $STAGE/$bin ]] || die "$STAGE/$bin missing: run 'docker/build.sh binaries' first"
    done
    for bin in "${BINARIES[@]}"; do
        local image=$IMAGE_PREFIX$bin:$IMAGE_TAG
        say "docker build $image"
        # Output only on failure (the legacy builder also prints a notice
        # on every build where BuildKit is not installed).
        local out
        if ! out=$(docker build --quiet --target "$bin" --tag "$image" \
            --file docker/Dockerfile "$STAGE" 2>&1); then
            printf '%s\n' "$out" >&2
            die "docker build of $image failed"
        fi
        # An empty image has no dynamic loader: if the binary were not
        # static, it would fail right here.
        docker run --rm --network none "$image" --version >/dev/null \
            || die "$image does not run (is the binary statically linked?)"
    done
    # Each rebuild leaves the previous images untagged; drop ours.
    docker image prune --force --filter label=org.opencontainers.image.title=msgstore >/dev/null
    say "images:"
    for bin in "${BINARIES[@]}"; do
        local image=$IMAGE_PREFIX$bin:$IMAGE_TAG size
        size=$(docker image inspect --format '{{.Size}}' "$image")
        awk -v i="$image" -v s="$size" 'BEGIN { printf "    %-28s %5.1f MB\n", i, s / 1e6 }'
        if ((size > MAX_IMAGE_BYTES)); then
            printf 'build.sh: warning: %s is over 15 MB\n' "$image" >&2
        fi
    done
}

case ${1:-all} in
    binaries) build_binaries ;;
    images) build_images ;;
    all) build_binaries; build_images ;;
    *) die "usage: $0 [binaries|images|all]" ;;
esac
