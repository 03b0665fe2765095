#!/usr/bin/env bash
# Prepares the bundled corpus: the King James Bible from Debian (bible-kjv-text holds the
# compressed text, bible-kjv the reader), one document per chapter (1,189 documents, ~4.3 MB of
# English prose), tokenized with the byte tokenizer into corpus/kjv_text_document.{bin,idx}
# (what configs/tiny.yaml reads). Idempotent: does nothing when the outputs exist and are newer
# than the package's text and the linmoe binary.
#
#   scripts/prepare_corpus.sh [PATH/TO/linmoe]     (default: build/linmoe)
set -euo pipefail
cd "$(dirname "$0")/.."
linmoe=${1:-build/linmoe}
out_dir=corpus
prefix=$out_dir/kjv_text_document
text=$out_dir/kjv.txt
source_data=/usr/lib/bible.data

[[ -x $linmoe ]] || { echo "prepare_corpus: $linmoe is not an executable (build first)" >&2; exit 2; }

if [[ -f $prefix.idx && -f $prefix.bin && $prefix.idx -nt $source_data && $prefix.idx -nt $linmoe ]]; then
  echo "prepare_corpus: $prefix.{bin,idx} is up to date"
  exit 0
fi

if ! command -v bible >/dev/null || [[ ! -f $source_data ]]; then
  echo "prepare_corpus: installing bible-kjv and bible-kjv-text"
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends bible-kjv bible-kjv-text ||
    { "${sudo_cmd[@]}" apt-get update -q &&
      "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends bible-kjv bible-kjv-text; }
fi

mkdir -p "$out_dir"
# `bible -f` prints one verse a line as "Ge1:1 In the beginning ..."; join the verses of each
# chapter into one line (a document), dropping the references.
tmp=$(mktemp "$out_dir/kjv.XXXXXX")
trap 'rm -f "$tmp"' EXIT
bible -f "Gen1:1-Rev22:21" | awk '
  {
    ref = $1; sub(/:[0-9]+$/, "", ref)          # "Ge1:1" -> "Ge1" (book and chapter)
    $1 = ""; sub(/^ +/, "")
    if (ref != chapter && chapter != "") { print line; line = "" }
    chapter = ref
    line = (line == "" ? $0 : line " " $0)
  }
  END { if (line != "") print line }' > "$tmp"
docs=$(wc -l < "$tmp")
[[ $docs -eq 1189 ]] || { echo "prepare_corpus: expected 1189 chapters, got $docs" >&2; exit 1; }
chmod 644 "$tmp"
mv "$tmp" "$text"
trap - EXIT

"$linmoe" preprocess --input "$text" --format text --output-prefix "$prefix" --tokenizer byte --quiet
"$linmoe" data "$prefix" --vocab-size 257
