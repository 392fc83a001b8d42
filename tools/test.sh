#!/bin/sh
# Build miltergw and run the whole test suite: a normal build, a Release build (unit
# tests), an AddressSanitizer + UBSan build (unit, session and integration tests again,
# leaks fatal), and, when clang is present, the libFuzzer targets for a bounded time.
# Usage: tools/test.sh            (from anywhere; build trees go under ./build*)
set -eu
cd "$(dirname "$0")/.."
jobs=$(nproc 2>/dev/null || echo 2)

echo "== normal build"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j "$jobs"
ctest --test-dir build --output-on-failure

# The build docs/benchmarks.md tells users to make: it must build under -Werror too (gcc
# warns at -O3 about things -O2 does not see). Its unit tests are cheap; the integration
# tests ran above.
echo "== Release build"
cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release
cmake --build build-release -j "$jobs"
ctest --test-dir build-release -L unit --output-on-failure

echo "== AddressSanitizer + UBSan build"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DMGW_SANITIZE=ON
cmake --build build-asan -j "$jobs"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
    ctest --test-dir build-asan --output-on-failure

if command -v clang >/dev/null 2>&1; then
    echo "== libFuzzer targets"
    CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DMGW_FUZZ=ON -DMGW_SANITIZE=ON
    cmake --build build-fuzz -j "$jobs" --target fuzz_milter_decode fuzz_config
    ctest --test-dir build-fuzz -L fuzz --output-on-failure
    # How much fuzzing that was: libFuzzer's final statistics, from ctest's log.
    grep -hE '^(stat::number_of_executed_units|Done [0-9]+ runs)' \
        build-fuzz/Testing/Temporary/LastTest.log || true
else
    echo "== clang not found: fuzz targets skipped"
fi

# Deployment artifacts: the container images built and run with podman, the Kubernetes
# manifests validated offline and the mail pod run with podman kube play (needs root).
echo "== deployment artifacts (tests/deploy/run.sh)"
if [ "$(id -u)" = 0 ]; then
    tests/deploy/run.sh
else
    echo "== deploy tests skipped: they need root (run tools/test.sh as root)"
fi
