#!/bin/sh
# A consumer compiled as C++17 gets one clear error naming what is needed, rather than pages
# of template errors (the header includes a file named by the message, which stops the compiler).   usage: cxx17.sh SOURCE_ROOT COMPILER [FLAGS...]
set -u
src=$1
shift
out=$(printf '#include <hl7/net/client.hpp>\nint main() {}\n' | "$@" -std=c++17 -fsyntax-only -I"$src/include" -x c++ - 2>&1)
status=$?
if [ "$status" -eq 0 ]; then
    echo "a C++17 consumer compiled: the C++20 check is missing" >&2
    exit 1
fi
errors=$(printf '%s\n' "$out" | grep -c 'error:')
printf '%s\n' "$out" | head -n 5
if [ "$errors" -ne 1 ] || ! printf '%s\n' "$out" | grep -q 'hl7-client needs C++20'; then
    echo "expected exactly one error naming C++20, got $errors" >&2
    exit 1
fi
