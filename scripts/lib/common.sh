# shellcheck shell=bash
# Shared helpers for scripts/setup, scripts/test, scripts/bench and .ci/run.
# Source it; it defines functions and a few variables and changes no options.

# Versions of the external test tools the tests are written against.
# shellcheck disable=SC2034 # used by the scripts that source this file
PJDFSTEST_VERSION=0.2.2
FSX_VERSION=0.3.2

# shellcheck disable=SC2034
# Oldest rustc that builds the project (Cargo.toml: rust-version, edition 2024;
# let chains need 1.88; checked with `cargo +1.88 check --all-targets`).
RUST_MIN_VERSION=1.88

# Where `cargo install` puts binaries; tests find pjdfstest and fsx on PATH.
CARGO_BIN_DIR="${CARGO_HOME:-$HOME/.cargo}/bin"

log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
die() { printf '%s: error: %s\n' "${0##*/}" "$*" >&2; exit 1; }

need_root() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (it $1)"
}

# Puts the cargo bin directory first on PATH (idempotent).
cargo_bin_on_path() {
    case ":$PATH:" in
        *":$CARGO_BIN_DIR:"*) ;;
        *) PATH="$CARGO_BIN_DIR:$PATH"; export PATH ;;
    esac
}

# True when every named Debian package is installed.
debs_installed() {
    local pkg status
    for pkg in "$@"; do
        status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null) || return 1
        [ "$status" = installed ] || return 1
    done
}

# Installs the Debian packages that are missing; runs apt-get update at most once.
ensure_debs() {
    local missing=() pkg
    for pkg in "$@"; do
        debs_installed "$pkg" || missing+=("$pkg")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    command -v apt-get >/dev/null || die "apt-get not found; install by hand: ${missing[*]}"
    log "installing Debian packages: ${missing[*]}"
    if [ -z "${_APT_UPDATED:-}" ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq || die "apt-get update failed"
        _APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o Dpkg::Use-Pty=0 --no-install-recommends "${missing[@]}" \
        || die "apt-get install failed for: ${missing[*]}"
}

# Every mountpoint of the given fstype (e.g. fuse.chironfs), one per line,
# deepest first so nested mounts go before their parents.
mounts_of_type() {
    # /proc/mounts escapes spaces etc. as \040; printf %b turns them back.
    awk -v t="$1" '$3 == t { print $2 }' /proc/mounts | sort -r | while IFS= read -r m; do
        printf '%b\n' "$m"
    done
}

# Lazily unmounts every mount of the given fstype; prints what it did.
unmount_all_of_type() {
    local m
    while IFS= read -r m; do
        [ -n "$m" ] || continue
        log "unmounting stale $1 mount $m"
        umount -l -- "$m" 2>/dev/null || fusermount3 -uz -- "$m" 2>/dev/null \
            || log "could not unmount $m"
    done < <(mounts_of_type "$1")
}
