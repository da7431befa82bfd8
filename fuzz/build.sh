#!/bin/sh
# Builds the libFuzzer harnesses (clang, ASan + UBSan) into build-fuzz/
# or the directory given as $1.  The library is built by meson in that
# directory with clang; the normal gcc build is untouched.
#
#   fuzz/build.sh && build-fuzz/fuzz_qcow2_read -max_total_time=60 \
#       -max_len=262144 fuzz/corpus/qcow2
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=${1:-$ROOT/build-fuzz}
CC=${CC:-clang}
SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined"
# Parallel test workers may all ask for the build at once.
mkdir -p "$B"
exec 9>"$B/.fuzz-build.lock"
flock 9
if [ ! -f "$B/build.ninja" ]; then
    CC=$CC meson setup "$B" "$ROOT" --buildtype=debugoptimized \
        -Db_sanitize=address,undefined -Db_lundef=false -Dwerror=false \
        -Dc_args="-fsanitize=fuzzer-no-link -fno-sanitize-recover=undefined -fno-omit-frame-pointer" \
        >/dev/null
fi
ninja -C "$B" libimgtool.a >/dev/null
# No libiscsi, libgfapi or libnbd: their drivers are loadable modules
# (modules/meson.build), so the library holds no call to them.
LIBS="$(pkg-config --libs jansson zlib libzstd libcrypto libssl) -ldl"
# Optional libraries meson links when it finds them.
for opt in libdeflate liburing; do
    if pkg-config --exists $opt; then
        LIBS="$LIBS $(pkg-config --libs $opt)"
    fi
done
# Every fuzz/fuzz_*.c is a harness; the table harnesses find their
# template images in fuzz/templates/.
for src in "$ROOT"/fuzz/fuzz_*.c; do
    h=$(basename "$src" .c); h=${h#fuzz_}
    out="$B/fuzz_$h"
    if [ ! -f "$out" ] || [ "$B/libimgtool.a" -nt "$out" ] ||
       [ "$ROOT/fuzz/fuzz_$h.c" -nt "$out" ] ||
       [ "$ROOT/fuzz/fuzz_common.h" -nt "$out" ] ||
       [ "$ROOT/fuzz/fuzz_splice.h" -nt "$out" ]; then
        $CC -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer $SAN \
            -std=c11 -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -I"$ROOT" \
            -DFUZZ_TEMPLATE_DIR="\"$ROOT/fuzz/templates\"" \
            "$ROOT/fuzz/fuzz_$h.c" "$B/libimgtool.a" $LIBS -lpthread -lm \
            -o "$out"
    fi
done
for src in "$ROOT"/fuzz/fuzz_*.c; do
    h=$(basename "$src" .c)
    printf '%s ' "$B/$h"
done
echo
