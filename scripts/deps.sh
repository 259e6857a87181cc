# Installs the Debian packages the build needs, when they are missing. Sourced by the
# other scripts; uses sudo when not run as root.
hl7_install_deps() {
    local wanted=(g++ clang libclang-rt-14-dev meson ninja-build pkg-config python3
                  libboost1.81-dev doctest-dev libbenchmark-dev libcli11-dev libssl-dev libpq-dev postgresql "$@")
    local missing=() pkg
    for pkg in "${wanted[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "installing: ${missing[*]}" >&2
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq >&2 &&
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}
