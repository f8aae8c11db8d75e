#!/usr/bin/env bash
# Run the README's walk-through verbatim, top to bottom, in one fresh temporary folder:
# the first command's demo (`isyb demo demo_out`), then every `$ ` command of each
# console block marked `<!-- walkthrough -->` (the release walk-through). The install
# is not repeated: isyb must already be installed. `bids-validator` is skipped (with a
# note) when it is not installed. Exits non-zero at the first command that fails.
#
# The output the README shows under a command (the lines up to the next `$ ` line) must
# be what the command prints: each shown line must appear, in order, among the lines it
# printed (stdout and stderr; a validator prints more than the README quotes). Volatile
# values are masked on both sides first (and terminal colours removed): dates and times
# (ISO 8601), and durations such as `12 s` or `3 min 15 s`; `...` in a shown line stands
# for any text (a long message cut short). A shown line that does not match fails the walk-through with both versions.
set -euo pipefail

readme="$(cd "$(dirname "$0")/.." && pwd)/README.md"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

blocks() {
    # Records of the marked blocks: "$ command" lines, each followed by its shown output.
    awk '/^<!-- walkthrough -->$/ {marked=1; next}
         marked && /^```console$/ {inside=1; next}
         inside && /^```$/ {inside=0; marked=0; next}
         inside {print}' "$readme"
}

# Compare the README's shown lines (file $1) with the printed ones (file $2).
compare() {
    python3 - "$1" "$2" <<'EOF'
import re
import sys

VOLATILE = [
    (re.compile(r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([+-]\d{2}:?\d{2}|Z)?)?"),
     "<DATE>"),
    (re.compile(r"\b\d+(\.\d+)? ?(min|ms|s)\b( \d+(\.\d+)? ?s\b)?"), "<DURATION>"),
]


ANSI = re.compile(r"\x1b\[[0-9;]*m")  # colours (the validator's)


def masked(line: str) -> str:
    line = ANSI.sub("", line)
    for pattern, mask in VOLATILE:
        line = pattern.sub(mask, line)
    return line.rstrip()


shown = [masked(x) for x in open(sys.argv[1]).read().splitlines() if x.strip()]
printed = [masked(x) for x in open(sys.argv[2]).read().replace("\r", "\n").splitlines()]
position = 0
for line in shown:
    pattern = re.compile(".*".join(map(re.escape, line.split("..."))))
    found = [i for i in range(position, len(printed)) if pattern.fullmatch(printed[i])]
    if found:
        position = found[0] + 1
    else:
        print(f"walkthrough: the README shows\n  {line}\nbut the command printed:",
              *(f"  {p}" for p in printed if p.strip()), sep="\n", file=sys.stderr)
        sys.exit(1)
EOF
}

run() {
    # Run one command (its output kept in $work/.printed), then check its shown output.
    local line=$1 shown=$2
    if [[ $line == bids-validator* ]] && ! command -v bids-validator >/dev/null; then
        echo "walkthrough: skipped (bids-validator not installed): $line" >&2
        return
    fi
    echo "walkthrough: \$ $line" >&2
    bash -c "$line" </dev/null >"$work/.printed" 2>&1 || { cat "$work/.printed" >&2; exit 1; }
    cat "$work/.printed" >&2
    compare "$shown" "$work/.printed"
}

cd "$work"
start=$SECONDS
printf '' >"$work/.shown"
run "$(grep -m1 -o 'isyb demo demo_out' "$readme")" "$work/.shown"
command=""
while IFS= read -r line; do
    if [[ $line == '$ '* ]]; then
        [[ -n $command ]] && run "$command" "$work/.shown"
        command=${line:2}
        printf '' >"$work/.shown"
    else
        printf '%s\n' "$line" >>"$work/.shown"
    fi
done < <(blocks)
[[ -n $command ]] && run "$command" "$work/.shown"
echo "walkthrough: all commands passed, their shown output matched, in $((SECONDS - start)) s" >&2
