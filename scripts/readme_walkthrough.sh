#!/usr/bin/env bash
# Run the README's walk-through verbatim, top to bottom, in one fresh temporary folder:
# the first command's demo (`isyb demo demo_out`), then every `$ ` command of each
# console block marked `<!-- walkthrough -->` (the release walk-through). The install
# is not repeated: isyb must already be installed. `bids-validator` is skipped (with a
# note) when it is not installed. Exits non-zero at the first command that fails.
set -euo pipefail

readme="$(cd "$(dirname "$0")/.." && pwd)/README.md"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

commands() {
    # the demo of the first command line, then the marked blocks' `$ ` lines
    grep -m1 -o 'isyb demo demo_out' "$readme"
    awk '/^<!-- walkthrough -->$/ {marked=1; next}
         marked && /^```console$/ {inside=1; next}
         inside && /^```$/ {inside=0; marked=0; next}
         inside && /^\$ / {print substr($0, 3)}' "$readme"
}

cd "$work"
start=$SECONDS
while IFS= read -r line; do
    if [[ $line == bids-validator* ]] && ! command -v bids-validator >/dev/null; then
        echo "walkthrough: skipped (bids-validator not installed): $line" >&2
        continue
    fi
    echo "walkthrough: \$ $line" >&2
    bash -c "$line" </dev/null
done < <(commands)
echo "walkthrough: all commands passed in $((SECONDS - start)) s" >&2
