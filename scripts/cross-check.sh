#!/usr/bin/env bash
# Type-checks the crate for Windows and macOS from a Linux host.
#
# Windows needs the MinGW C compiler for ring's build script (Debian: gcc-mingw-w64-x86-64).
# macOS cannot be checked here: ring's build script compiles C that includes headers of
# Apple's SDK (TargetConditionals.h), which no Debian package provides. Run
# `cargo check --target x86_64-apple-darwin` on a macOS host, or on Linux with osxcross and
# an Apple SDK.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add x86_64-pc-windows-gnu x86_64-apple-darwin
command -v x86_64-w64-mingw32-gcc >/dev/null || {
    echo "error: x86_64-w64-mingw32-gcc is missing; install it with: apt-get install gcc-mingw-w64-x86-64" >&2
    exit 1
}
cargo check --target x86_64-pc-windows-gnu
echo "x86_64-pc-windows-gnu: ok"

if CC_x86_64_apple_darwin=clang cargo check --target x86_64-apple-darwin 2>/dev/null; then
    echo "x86_64-apple-darwin: ok"
else
    echo "x86_64-apple-darwin: not checked; ring's C code needs the macOS SDK headers (see this script's header)"
fi
