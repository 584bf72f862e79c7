#!/usr/bin/env bash
# nspawn benchmark: the wall time from start to exit of /bin/true in a fresh sandbox of the
# nspawn backend, timed in one hyperfine run next to the equivalent raw systemd-nspawn
# command and the default namespace backend. The rows:
#
#   systemd-nspawn         systemd-nspawn -D TREE with the options Airlock passes, /bin/true
#   airlock nspawn tree    airlock run --backend nspawn --rootfs TREE --workspace-mode none
#   airlock nspawn host    airlock run --backend nspawn (host view, overlay workspace)
#   airlock namespace      airlock run (host view, overlay workspace)
#
# Usage: bench/nspawn.sh [--warmup N] [--runs N] [--rootfs DIR] [--binary FILE]
#                       [--results DIR] [--abba ROUNDS]
#
#   --warmup N       warmup runs per command (default 5).
#   --runs N         timed runs per command (default 50).
#   --rootfs DIR     the Debian tree both systemd-nspawn rows start from (default
#                    $AIRLOCK_TEST_ROOTFS, else /var/cache/airlock-tests/rootfs-bookworm,
#                    which scripts/test builds).
#   --binary FILE    time this airlock binary instead of building a release binary with
#                    cargo (for a quick check of the script with a debug build).
#   --results DIR    copy hyperfine's JSON and Markdown exports to DIR, which is created if
#                    missing. Without it they are deleted.
#   --abba ROUNDS    instead of hyperfine, time the first two rows in rounds of four runs
#                    in the order plain, Airlock, Airlock, plain, which cancels what one
#                    run leaves for the next (a cgroup migration's RCU grace period, say),
#                    and print the medians and the median of the per-round differences.
#
# Needs root, cargo, jq, a tmpfs on /run/systemd/nspawn, and the Debian packages hyperfine and
# systemd-container. Raw systemd-nspawn started with --keep-unit creates `payload` and
# `supervisor` cgroups below its own cgroup, so this script runs in a cgroup of its own
# (airlock-bench-PID in systemd's hierarchies) and removes it on exit, with every
# temporary directory.

set -euo pipefail

warmup=5
runs=50
rootfs=${AIRLOCK_TEST_ROOTFS:-/var/cache/airlock-tests/rootfs-bookworm}
results_dir=
binary=
abba=

usage() {
    sed -n '11,27p' "$0" | sed 's/^# \{0,1\}//'
}

while (($#)); do
    case $1 in
        --warmup) warmup=${2:?--warmup needs a number}; shift ;;
        --runs) runs=${2:?--runs needs a number}; shift ;;
        --rootfs) rootfs=${2:?--rootfs needs a directory}; shift ;;
        --binary) binary=${2:?--binary needs a file}; shift ;;
        --results) results_dir=${2:?--results needs a directory}; shift ;;
        --abba) abba=${2:?--abba needs a number}; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "nspawn.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

for number in "$warmup" "$runs" ${abba:+"$abba"}; do
    if ! [[ $number =~ ^[0-9]+$ ]]; then
        echo "nspawn.sh: --warmup, --runs and --abba take a whole number, got '$number'" >&2
        exit 2
    fi
done
if [[ $(id -u) -ne 0 ]]; then
    echo "nspawn.sh: run it as root: systemd-nspawn needs root" >&2
    exit 1
fi
missing=()
for tool in cargo hyperfine jq systemd-nspawn; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    echo "nspawn.sh: missing tools: ${missing[*]}" >&2
    echo "Install them with: apt-get install hyperfine jq systemd-container" >&2
    exit 1
fi
if [[ ! -x $rootfs/bin/true ]]; then
    echo "nspawn.sh: $rootfs holds no Debian tree; run scripts/test, which builds it, or" \
        "pass --rootfs" >&2
    exit 1
fi
if [[ $(stat -f -c %T /run/systemd/nspawn 2>/dev/null) != tmpfs ]]; then
    echo "nspawn.sh: /run/systemd/nspawn is not a tmpfs; mount one with:" \
        "mkdir -p /run/systemd/nspawn && mount -t tmpfs tmpfs /run/systemd/nspawn" >&2
    exit 1
fi

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=$(mktemp -d /tmp/airlock-bench-nspawn.XXXXXX)
cgroups=()

# Moves this shell back to the top of each hierarchy and removes its cgroups, deepest
# first, then the temporary directory.
clean_up() {
    for dir in "${cgroups[@]}"; do
        echo $$ >"$(dirname "$dir")/cgroup.procs" 2>/dev/null || true
        find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
    rm -rf --one-file-system "$work"
}
trap clean_up EXIT

if [[ $(stat -f -c %T /sys/fs/cgroup) == cgroup2fs ]]; then
    hierarchies=(/sys/fs/cgroup)
else
    hierarchies=()
    for name in systemd unified; do
        [[ -e /sys/fs/cgroup/$name/cgroup.procs ]] && hierarchies+=("/sys/fs/cgroup/$name")
    done
fi
for hierarchy in "${hierarchies[@]}"; do
    dir=$hierarchy/airlock-bench-$$
    mkdir "$dir"
    cgroups+=("$dir")
    echo $$ >"$dir/cgroup.procs"
done

if [[ -n $binary ]]; then
    airlock=$binary
else
    echo "building the release binary"
    # The path of the built binary depends on the build target (.cargo/config.toml) and on
    # CARGO_TARGET_DIR, so take it from cargo's own report.
    airlock=$(cd "$repo" && cargo build --release --message-format=json-render-diagnostics |
        jq -r 'select(.reason == "compiler-artifact" and .target.name == "airlock"
            and .executable != null) | .executable')
fi
if [[ ! -x $airlock ]]; then
    echo "nspawn.sh: no airlock binary at '$airlock'" >&2
    exit 1
fi
cp "$airlock" "$work/airlock"
mkdir "$work/state" "$work/workspace"
echo "airlock:        $work/airlock (copied from $airlock)"
echo "systemd-nspawn: $(systemd-nspawn --version | head -n 1)"
echo "hyperfine:      $(hyperfine --version)"
echo "kernel:         $(uname -r), $(nproc) CPUs"

nspawn_options="--quiet --register=no --keep-unit --directory=$rootfs --read-only"
nspawn_options+=" --private-network --private-users=pick --private-users-ownership=off"
nspawn_options+=" --no-new-privileges=yes --link-journal=no --resolv-conf=off --timezone=off"
nspawn_options+=" --console=pipe"
run="$work/airlock --state-dir $work/state run"

cd "$work/workspace"

# Prints the wall time of the command in "$@", in microseconds, with bash's own clock (no
# process is started to read it).
time_one() {
    local start=$EPOCHREALTIME end
    "$@" >/dev/null 2>&1 </dev/null
    end=$EPOCHREALTIME
    echo $(( (${end/./} - ${start/./}) ))
}

if [[ -n $abba ]]; then
    plain=(systemd-nspawn $nspawn_options /bin/true)
    ours=($run --backend nspawn --rootfs "$rootfs" --workspace-mode none -- /bin/true)
    for _ in $(seq "$warmup"); do "${plain[@]}" >/dev/null 2>&1; "${ours[@]}" >/dev/null 2>&1; done
    : >"$work/abba"
    for _ in $(seq "$abba"); do
        a1=$(time_one "${plain[@]}"); b1=$(time_one "${ours[@]}")
        b2=$(time_one "${ours[@]}"); a2=$(time_one "${plain[@]}")
        echo "$a1 $b1 $b2 $a2" >>"$work/abba"
    done
    python3 - "$work/abba" <<'PYTHON'
import statistics, sys
rounds = [list(map(int, line.split())) for line in open(sys.argv[1])]
plain = [r[0] for r in rounds] + [r[3] for r in rounds]
ours = [r[1] for r in rounds] + [r[2] for r in rounds]
differences = [(r[1] + r[2] - r[0] - r[3]) / 2 for r in rounds]
ms = lambda us: f"{us / 1000:.2f}"
print(f"| rounds | systemd-nspawn median (ms) | airlock nspawn tree median (ms) | median difference per round (ms) |")
print(f"|---:|---:|---:|---:|")
print(f"| {len(rounds)} | {ms(statistics.median(plain))} | {ms(statistics.median(ours))} | {ms(statistics.median(differences))} |")
PYTHON
    exit 0
fi

hyperfine -N --warmup "$warmup" --runs "$runs" \
    --export-json "$work/nspawn.json" --export-markdown "$work/nspawn.md" \
    -n "systemd-nspawn" "systemd-nspawn $nspawn_options /bin/true" \
    -n "airlock nspawn tree" "$run --backend nspawn --rootfs $rootfs --workspace-mode none -- /bin/true" \
    -n "airlock nspawn host" "$run --backend nspawn -- /bin/true" \
    -n "airlock namespace" "$run -- /bin/true"
echo
cat "$work/nspawn.md"

if [[ -n $results_dir ]]; then
    mkdir -p "$results_dir"
    cp "$work/nspawn.json" "$work/nspawn.md" "$results_dir/"
    echo "results copied to $results_dir"
fi
