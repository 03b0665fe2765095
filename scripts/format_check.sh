#!/usr/bin/env bash
# Checks that every C++/CUDA source is formatted by .clang-format. `--fix` rewrites them instead.
# Exit 77 (ctest: skipped) when clang-format is not installed.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v clang-format >/dev/null || { echo "clang-format not found: format check skipped"; exit 77; }
mapfile -t files < <(git ls-files -co --exclude-standard '*.cpp' '*.h' '*.cu' '*.cuh')
((${#files[@]})) || exit 0
if [[ ${1:-} == --fix ]]; then
  clang-format -i "${files[@]}"
  exit 0
fi
clang-format --dry-run -Werror "${files[@]}"
echo "format check: ${#files[@]} files formatted"
