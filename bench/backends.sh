#!/usr/bin/env bash
# Start-up overhead of Airlock's process-level backends over the plain tool each wraps,
# measured in one hyperfine run: the chroot backend against chroot(8), and the namespace
# backend against bubblewrap. Each pair starts /bin/true from the same Debian root
# filesystem, so the difference is Airlock's own work: its state directory, workspace,
# limits, seccomp, Landlock and audit log. bench/nspawn.sh does the same for the nspawn
# backend against systemd-nspawn, which needs a cgroup of its own.
#
# Usage: bench/backends.sh [--rootfs DIR] [--warmup N] [--runs N] [--results DIR]
#
#   --rootfs DIR    root filesystem for every command (default
#                   /var/cache/airlock-tests/rootfs-bookworm, which scripts/test builds).
#   --warmup N      warmup runs per command (default 10).
#   --runs N        timed runs per command (default 100).
#   --results DIR   copy hyperfine's JSON and Markdown exports and the summary there.
#
# Needs root, cargo, and the Debian packages hyperfine, bubblewrap, jq and coreutils. Every
# temporary directory it makes is removed on exit.

set -euo pipefail

rootfs=/var/cache/airlock-tests/rootfs-bookworm
warmup=10
runs=100
results_dir=
readonly TARGET_MS=2

usage() {
    sed -n '8,15p' "$0" | sed 's/^# \{0,1\}//'
}

while (($#)); do
    case $1 in
        --rootfs) rootfs=${2:?--rootfs needs a directory}; shift ;;
        --warmup) warmup=${2:?--warmup needs a number}; shift ;;
        --runs) runs=${2:?--runs needs a number}; shift ;;
        --results) results_dir=${2:?--results needs a directory}; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "backends.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

for number in "$warmup" "$runs"; do
    if ! [[ $number =~ ^[0-9]+$ ]]; then
        echo "backends.sh: --warmup and --runs take a whole number, got '$number'" >&2
        exit 2
    fi
done
if ((EUID != 0)); then
    echo "backends.sh: run it as root: the chroot backend needs root" >&2
    exit 1
fi
if ! [[ -x $rootfs/bin/true ]]; then
    echo "backends.sh: $rootfs holds no root filesystem with /bin/true; build one with" \
        "'debootstrap --variant=minbase bookworm $rootfs http://deb.debian.org/debian'" \
        "or pass --rootfs DIR" >&2
    exit 1
fi
missing=()
for tool in cargo hyperfine bwrap jq chroot; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    echo "backends.sh: missing tools: ${missing[*]}" >&2
    echo "Install them with: apt-get install hyperfine bubblewrap jq coreutils" >&2
    exit 1
fi

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
scratch=$(mktemp -d /tmp/airlock-bench-backends.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
workspace=$scratch/workspace
mkdir "$workspace"
mkdir -m 700 "$scratch/state"
export AIRLOCK_STATE_DIR=$scratch/state

echo "== Building Airlock (cargo build --release)"
airlock=$(cd "$repo" && cargo build --release --message-format=json-render-diagnostics |
    jq -r 'select(.reason == "compiler-artifact" and .target.name == "airlock"
        and .executable != null) | .executable')

echo "== Machine"
echo "kernel:     $(uname -r)"
echo "cpus:       $(nproc)"
echo "bubblewrap: $(bwrap --version)"
echo "airlock:    $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)"
echo "rootfs:     $rootfs"

# Prints the bubblewrap command that starts /bin/true with the root filesystem's /usr and /etc
# read-only on bubblewrap's own tmpfs root, the rest of its top level as the tree has it.
bwrap_command() {
    local args=(bwrap --unshare-all --die-with-parent
        --ro-bind "$rootfs/usr" /usr --ro-bind "$rootfs/etc" /etc)
    local entry
    for entry in bin sbin lib lib32 lib64 libx32; do
        if [[ -L $rootfs/$entry ]]; then
            args+=(--symlink "$(readlink "$rootfs/$entry")" "/$entry")
        elif [[ -d $rootfs/$entry ]]; then
            args+=(--ro-bind "$rootfs/$entry" "/$entry")
        fi
    done
    args+=(--proc /proc --dev /dev --tmpfs /tmp --bind "$workspace" /workspace)
    args+=(--chdir /workspace /bin/true)
    echo "${args[*]}"
}

# Pairs of (name, command): the plain tool first, then Airlock's backend.
names=(
    chroot airlock-chroot
    bwrap airlock-namespace
)
commands=(
    "chroot --userspec=65534:65534 $rootfs /bin/true"
    "$airlock run --backend chroot --rootfs $rootfs -- /bin/true"
    "$(bwrap_command)"
    "$airlock run --backend namespace --rootfs $rootfs -- /bin/true"
)

for i in "${!names[@]}"; do
    printf '%s: %s\n' "${names[i]}" "${commands[i]}"
    # shellcheck disable=SC2086 # the command string is split into words on purpose
    if ! (cd "$workspace" && ${commands[i]} >"$scratch/out" 2>&1); then
        echo "backends.sh: '${commands[i]}' failed:" >&2
        cat "$scratch/out" >&2
        exit 1
    fi
done

hyperfine_args=(-N --warmup "$warmup" --runs "$runs"
    --export-json "$scratch/backends.json" --export-markdown "$scratch/backends.md")
for i in "${!names[@]}"; do
    hyperfine_args+=(-n "${names[i]}" "${commands[i]}")
done
echo "load average before timing: $(cut -d' ' -f1-3 /proc/loadavg)"
(cd "$workspace" && hyperfine "${hyperfine_args[@]}")
echo "load average after timing: $(cut -d' ' -f1-3 /proc/loadavg)"

{
    echo
    echo "### Start-up overhead over the plain tool: $runs runs after $warmup warmup runs, medians in ms"
    echo
    echo "| backend | plain tool | plain median | Airlock median | overhead | target (< $TARGET_MS ms) |"
    echo "|---|---|---:|---:|---:|---|"
    jq -r '.results[] | [.command, .median] | @tsv' "$scratch/backends.json" |
        paste - - | while IFS=$'\t' read -r plain plain_median backend backend_median; do
        awk -v plain="$plain" -v backend="${backend#airlock-}" -v p="$plain_median" \
            -v b="$backend_median" -v target="$TARGET_MS" 'BEGIN {
                overhead = (b - p) * 1000
                verdict = overhead < target ? "met" : "missed"
                printf "| %s | %s | %.3f | %.3f | %+.3f | %s |\n",
                    backend, plain, p * 1000, b * 1000, overhead, verdict
            }'
    done
} | tee "$scratch/summary.md"

if [[ -n $results_dir ]]; then
    mkdir -p "$results_dir"
    cp "$scratch"/{backends.json,backends.md,summary.md} "$results_dir/"
fi
