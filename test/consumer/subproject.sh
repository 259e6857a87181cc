#!/bin/sh
# Builds test/consumer/project in a temporary copy whose subprojects/hl7-client is a link to
# this repository, so that dependency('hl7-client') builds the library as a subproject; then
# runs the consumer.   usage: subproject.sh SOURCE_ROOT
set -eu
src=$(cd "$1" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/hl7-consumer-subproject-XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM

cp -R "$src/test/consumer/project/." "$work/"
mkdir "$work/subprojects"
ln -s "$src" "$work/subprojects/hl7-client"

# Forced to the subproject, so that an installed hl7-client.pc cannot be picked up instead.
meson setup "$work/build" "$work" --force-fallback-for=hl7-client
grep -q "Executing subproject hl7-client" "$work/build/meson-logs/meson-log.txt" || {
    echo "hl7-client was not built as a subproject" >&2
    exit 1
}
meson compile -C "$work/build"
"$work/build/consumer"
