#!/usr/bin/env bash
# Fresh-install wall time of the README's set-up step, from a clean clone of HEAD.
#   benchmarks/install_time.sh uv-cold    make's set-up (venv + uv bootstrap + uv sync --frozen), empty uv cache
#   benchmarks/install_time.sh uv-warm    the same with the machine's uv cache (what CI and a second checkout see)
#   benchmarks/install_time.sh pip-cold REF  the old set-up at git REF (pip install -e '.[test]'), empty pip cache;
#       torchaudio held at 2.11.0 (the range pin now resolves to 2.11.1, which does not load)
# Prints one line: mode, seconds, venv size. Needs the network for the cold modes.
set -euo pipefail
mode=${1:?uv-cold, uv-warm or pip-cold REF}
repo=$(git rev-parse --show-toplevel)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
case $mode in
  pip-cold) git clone --quiet "$repo" "$work/src"; git -C "$work/src" checkout --quiet "${2:?git ref of the pip set-up}" ;;
  *) git clone --quiet "$repo" "$work/src" ;;
esac
cd "$work/src"
start=$(date +%s.%N)
case $mode in
  uv-cold) UV_CACHE_DIR="$work/uv-cache" make --quiet .venv/.installed >/dev/null ;;
  uv-warm) make --quiet .venv/.installed >/dev/null ;;
  pip-cold)
    printf 'torchaudio==2.11.0\n' > "$work/constraints.txt"
    python3 -m venv .venv
    PIP_CACHE_DIR="$work/pip-cache" PIP_CONSTRAINT="$work/constraints.txt" \
      .venv/bin/python -m pip install --quiet --upgrade pip
    PIP_CACHE_DIR="$work/pip-cache" PIP_CONSTRAINT="$work/constraints.txt" \
      .venv/bin/python -m pip install --quiet -e '.[test]' ;;
  *) echo "unknown mode $mode" >&2; exit 2 ;;
esac
end=$(date +%s.%N)
.venv/bin/python -c 'import torch, torchaudio, django, evalsite' >/dev/null
printf '%s %.1f s  venv %s\n' "$mode" "$(echo "$end - $start" | bc)" "$(du -shl .venv | cut -f1)"
