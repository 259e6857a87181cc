#!/bin/sh
# Installs the library from BUILD_DIR into a temporary directory (meson install --destdir),
# compiles test/consumer/project/main.cpp with nothing but `pkg-config --cflags --libs
# hl7-client`, and runs it.   usage: pkgconfig.sh BUILD_DIR SOURCE_ROOT COMPILER [FLAGS...]
# FLAGS are the build's sanitizer flags: a consumer of an instrumented library needs them too.
set -eu
build=$1 src=$2
shift 2
root=$(mktemp -d "${TMPDIR:-/tmp}/hl7-consumer-pkgconfig-XXXXXX")
trap 'rm -rf "$root"' EXIT INT TERM

meson install -C "$build" --destdir "$root" --no-rebuild --quiet
pc=$(find "$root" -name hl7-client.pc)
[ -n "$pc" ] || { echo "hl7-client.pc was not installed" >&2; exit 1; }
# The .pc file names its install prefix; the sysroot points it into the temporary directory.
export PKG_CONFIG_PATH="$(dirname "$pc")" PKG_CONFIG_SYSROOT_DIR="$root"
flags=$(pkg-config --cflags --libs hl7-client)
echo "pkg-config --cflags --libs hl7-client: $flags"
# shellcheck disable=SC2086 # the flags are words
"$@" -o "$root/consumer" "$src/test/consumer/project/main.cpp" $flags
"$root/consumer"
