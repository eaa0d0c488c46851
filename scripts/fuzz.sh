#!/usr/bin/env bash
# Builds and runs the libFuzzer target for the file header parser.
#   scripts/fuzz.sh [SECONDS]      (default 30; `make test` runs it for a short time)
# Corpus and crash reproducers go to fuzz/out/ (ignored by git); a crash exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TO_RUN=${1:-30}
OUT=fuzz/out
BUILD=$OUT/build
mkdir -p "$BUILD" "$OUT/corpus"
FLAGS=(-sanitize=fuzzer,address -parse-as-library -Onone -g -swift-version 6)
# KeyholdCore as its own module, then the header parser and the harness against it.
swiftc "${FLAGS[@]}" -emit-library -static -emit-module -module-name KeyholdCore \
  -emit-module-path "$BUILD/KeyholdCore.swiftmodule" -o "$BUILD/libKeyholdCore.a" Sources/KeyholdCore/*.swift
swiftc "${FLAGS[@]}" -I "$BUILD" -L "$BUILD" -lKeyholdCore -o "$BUILD/fuzz-file-header" \
  Fuzz/FileHeaderFuzz.swift Sources/KeyholdFormat/FileHeader.swift Sources/KeyholdFormat/FileLayout.swift 2>&1 \
  | grep -v "Cannot export local symbol" || true
# Seed the corpus with the file-format vectors' bodies (everything after the preamble).
for v in Tests/Vectors/file-format/*; do
  python3 -c 'import sys; d=open(sys.argv[1],"rb").read(); sys.stdout.buffer.write(d.split(b"\n\n",1)[1][:200])' "$v" \
    > "$OUT/corpus/$(basename "$v")"
done
# The Swift backtracer makes a crashing run hang; libFuzzer reports the crash itself.
status=0
SWIFT_BACKTRACE=enable=no "$BUILD/fuzz-file-header" -max_total_time="$SECONDS_TO_RUN" -max_len=256 \
  -artifact_prefix="$OUT/" -print_final_stats=1 "$OUT/corpus" > "$OUT/fuzz.log" 2>&1 || status=$?
grep -E "^(Done|==[0-9]+==|SUMMARY|stat::number_of_executed_units|Fatal error)" "$OUT/fuzz.log" | tail -6 || true
if [ "$status" = 0 ]; then echo "fuzz: no crash in ${SECONDS_TO_RUN}s"; else echo "fuzz: FAILED (exit $status); log and reproducer in $OUT/"; fi
exit "$status"
