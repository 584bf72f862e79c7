#!/usr/bin/env bash
# Startup benchmark: the wall time from start to exit of /bin/true in a fresh Airlock sandbox.
# One hyperfine run times it, with the default copy-on-write workspace and with a bind-mounted
# one, next to bubblewrap with a similar read-only root, unshare(1)
# with the same namespaces and nothing else, and plain /bin/true as the floor.
# Each pass times the five commands twice: back-to-back, and spaced, with a pause before every
# run. The spaced timing exists because some kernel costs, such as the RCU grace period that
# a write to cgroup.procs can wait for, only show when sandboxes do not start every few
# milliseconds. It also records the peak RSS of each of the five with GNU time.
#
# Usage: bench/startup.sh [--unprivileged[=USER]] [--warmup N] [--runs N]
#                         [--spaced-runs N] [--pause SECONDS] [--results DIR]
#
#   --unprivileged[=USER]  after the pass as root, run a second pass as USER (default
#                          airlock-test) through setpriv(1). Needs root and an existing USER.
#   --warmup N             warmup runs per command, back-to-back (default 20).
#   --runs N               timed runs per command, back-to-back (default 300).
#   --spaced-runs N        timed runs per command, spaced (default 100).
#   --pause SECONDS        pause before each spaced run, as sleep(1) takes it (default 0.1).
#   --results DIR          copy hyperfine's JSON and Markdown exports and the summary tables
#                          to DIR, which is created if missing. Without it they are deleted.
#
# Needs: cargo, and the Debian packages hyperfine, bubblewrap, jq, time and util-linux
# (unshare, setpriv). Every temporary directory it makes is removed on exit.

set -euo pipefail

readonly PEAK_RSS_SAMPLES=5
readonly SPACED_WARMUP=5

warmup=20
runs=300
spaced_runs=100
pause=0.1
results_dir=
unprivileged_user=

usage() {
    sed -n '11,25p' "$0" | sed 's/^# \{0,1\}//'
}

while (($#)); do
    case $1 in
        --unprivileged) unprivileged_user=airlock-test ;;
        --unprivileged=*) unprivileged_user=${1#*=} ;;
        --warmup) warmup=${2:?--warmup needs a number}; shift ;;
        --runs) runs=${2:?--runs needs a number}; shift ;;
        --spaced-runs) spaced_runs=${2:?--spaced-runs needs a number}; shift ;;
        --pause) pause=${2:?--pause needs a number of seconds}; shift ;;
        --results) results_dir=${2:?--results needs a directory}; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "startup.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

for number in "$warmup" "$runs" "$spaced_runs"; do
    if ! [[ $number =~ ^[0-9]+$ ]]; then
        echo "startup.sh: --warmup, --runs and --spaced-runs take a whole number," \
            "got '$number'" >&2
        exit 2
    fi
done
if ! [[ $pause =~ ^[0-9]+(\.[0-9]+)?$ ]]; then
    echo "startup.sh: --pause takes a number of seconds such as 0.1, got '$pause'" >&2
    exit 2
fi

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

missing=()
for tool in cargo hyperfine bwrap jq unshare setpriv; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
[[ -x /usr/bin/time ]] || missing+=(/usr/bin/time)
if ((${#missing[@]})); then
    echo "startup.sh: missing tools: ${missing[*]}" >&2
    echo "Install them with: apt-get install hyperfine bubblewrap jq time util-linux" >&2
    echo "(cargo comes from rustup or the Debian package cargo.)" >&2
    exit 1
fi
if [[ -n $unprivileged_user ]]; then
    if ((EUID != 0)); then
        echo "startup.sh: --unprivileged needs root, because it switches user with setpriv" >&2
        exit 1
    fi
    if ! id "$unprivileged_user" >/dev/null 2>&1; then
        echo "startup.sh: user '$unprivileged_user' not found; create it or pass another" \
            "name with --unprivileged=USER" >&2
        exit 1
    fi
fi

scratch=$(mktemp -d /tmp/airlock-bench.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
# Other users must reach the binary copy, their workspace and their output directory here.
chmod 755 "$scratch"

echo "== Building Airlock (cargo build --release)"
# The path of the built binary depends on the build target (.cargo/config.toml) and on
# CARGO_TARGET_DIR, so take it from cargo's own report.
airlock_built=$(cd "$repo" && cargo build --release --message-format=json-render-diagnostics |
    jq -r 'select(.reason == "compiler-artifact" and .target.name == "airlock"
        and .executable != null) | .executable')

echo "airlock:    $airlock_built"
echo "== Machine"
echo "kernel:     $(uname -r)"
echo "cpus:       $(nproc) ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'))"
echo "os:         $(. /etc/os-release && echo "$PRETTY_NAME")"
echo "hyperfine:  $(hyperfine --version)"
echo "bubblewrap: $(bwrap --version)"
echo "airlock:    $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)$(
    git -C "$repo" diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"

# Prints the bubblewrap command that gives /bin/true a read-only system view like Airlock's
# default root: /usr, /etc and /opt bound read-only, and /bin, /sbin and /lib* as the host
# has them (symlinks on a merged-/usr host, read-only binds otherwise).
bwrap_command() {
    local workspace=$1
    local args=(
        "$(command -v bwrap)" --unshare-all --die-with-parent
        --ro-bind /usr /usr --ro-bind /etc /etc
    )
    local entry
    for entry in /bin /sbin /lib /lib32 /lib64 /libx32; do
        if [[ -L $entry ]]; then
            args+=(--symlink "$(readlink "$entry")" "$entry")
        elif [[ -d $entry ]]; then
            args+=(--ro-bind "$entry" "$entry")
        fi
    done
    if [[ -d /opt ]]; then
        args+=(--ro-bind /opt /opt)
    fi
    args+=(--proc /proc --dev /dev --tmpfs /tmp --bind "$workspace" /workspace)
    args+=(--chdir /workspace /bin/true)
    echo "${args[*]}"
}

# Prints the median of the numbers on standard input, one per line.
median() {
    sort -n | awk '{ value[NR] = $1 }
        END { if (NR % 2) print value[(NR + 1) / 2]; else print (value[NR / 2] + value[NR / 2 + 1]) / 2 }'
}

# Runs one pass: checks that every command exits 0 and samples its peak RSS, then times the
# five commands back-to-back and spaced. Arguments: a label, the airlock binary, then the
# command that switches user (empty for the current user).
run_pass() {
    local label=$1 airlock=$2
    shift 2
    local as_user=("$@")
    local workspace=$scratch/$label-workspace output=$scratch/$label
    # Airlock keeps each run's record, workspace layers and audit log in its state
    # directory; each pass gets one of its own, on the same file system as /tmp.
    local state=$scratch/$label-state
    mkdir "$workspace" "$output"
    mkdir -m 700 "$state"
    if ((${#as_user[@]})); then
        chown "$unprivileged_user:" "$workspace" "$output" "$state"
    fi
    export AIRLOCK_STATE_DIR=$state
    if [[ $workspace =~ [[:space:]] ]]; then
        echo "startup.sh: the workspace path '$workspace' contains whitespace," \
            "which hyperfine -N would split" >&2
        exit 1
    fi

    local names=(airlock airlock-bind bwrap unshare /bin/true)
    local commands=(
        "$airlock run -- /bin/true"
        "$airlock run --workspace-mode bind -- /bin/true"
        "$(bwrap_command "$workspace")"
        "$(command -v unshare) --user --map-root-user --pid --fork --mount --net --uts --ipc --mount-proc /bin/true"
        /bin/true
    )

    echo
    echo "== Pass: $label"
    local i
    for i in "${!names[@]}"; do
        echo "${names[i]}: ${commands[i]}"
    done

    # Peak RSS: GNU time's %M is ru_maxrss from wait4(2) in KiB. On Linux it is the largest
    # resident set of the command or of any descendant it reaped, a maximum and not a sum.
    local rss_file=$output/peak-rss.tsv sample_file=$output/time.out sample
    : >"$rss_file"
    for i in "${!names[@]}"; do
        local samples=()
        for ((sample = 0; sample < PEAK_RSS_SAMPLES; sample++)); do
            # shellcheck disable=SC2086 # the command string is split into words on purpose
            if ! (cd "$workspace" && "${as_user[@]}" /usr/bin/time -f %M -o "$sample_file" \
                ${commands[i]} >"$output/stdout" 2>"$output/stderr"); then
                echo "startup.sh: '${commands[i]}' failed in pass '$label'. Its stderr:" >&2
                cat "$output/stderr" >&2
                exit 1
            fi
            samples+=("$(tail -n1 "$sample_file")")
        done
        printf '%s\t%s\t%s\n' "${names[i]}" "$(printf '%s\n' "${samples[@]}" | median)" \
            "${samples[*]}" >>"$rss_file"
    done

    echo "load average before timing: $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$output/load.txt"
    echo
    echo "-- back-to-back: $runs runs after $warmup warmup runs"
    time_commands "$output/startup" --warmup "$warmup" --runs "$runs"
    echo
    echo "-- spaced: $spaced_runs runs after $SPACED_WARMUP warmup runs, each after 'sleep $pause'"
    time_commands "$output/spaced" --warmup "$SPACED_WARMUP" --runs "$spaced_runs" \
        --prepare "sleep $pause"
    echo "load average after timing: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$output/load.txt"

    {
        summarize "$label, back-to-back" "$output/startup.json" \
            "$runs runs after $warmup warmup runs" "$output/peak-rss.tsv"
        summarize "$label, spaced" "$output/spaced.json" \
            "$spaced_runs runs after $SPACED_WARMUP warmup runs, each after 'sleep $pause'" \
            "$output/peak-rss.tsv"
        echo
        echo "Peak RSS samples (KiB):"
        awk -F'\t' '{ printf "- %s: %s\n", $1, $3 }' "$output/peak-rss.tsv"
        echo
        sed 's/^/- /' "$output/load.txt"
    } | tee "$output/summary.md"
    if [[ -n $results_dir ]]; then
        mkdir -p "$results_dir/$label"
        cp "$output"/{startup,spaced}.{json,md} "$output/peak-rss.tsv" "$output/load.txt" \
            "$output/summary.md" "$results_dir/$label/"
    fi
}

# Times the five commands of the current pass in one hyperfine run and exports the results
# to PREFIX.json and PREFIX.md. Uses run_pass's names, commands, workspace and as_user.
# Arguments: PREFIX, then extra hyperfine options.
time_commands() {
    local prefix=$1
    shift
    local hyperfine_args=(-N "$@" --export-json "$prefix.json" --export-markdown "$prefix.md")
    local i
    for i in "${!names[@]}"; do
        hyperfine_args+=(-n "${names[i]}" "${commands[i]}")
    done
    (cd "$workspace" && "${as_user[@]}" hyperfine "${hyperfine_args[@]}")
}

# Prints a Markdown table of one hyperfine export with the peak RSS column, then the verdict
# on the target: Airlock's median no slower than bubblewrap's.
# Arguments: a title, the hyperfine JSON file, a description of the runs, the peak RSS file.
summarize() {
    local title=$1 json=$2 description=$3 rss_file=$4
    echo
    echo "### $title: $description, times in ms"
    echo
    echo "| command | median | mean | stddev | min | max | peak RSS (KiB, median of $PEAK_RSS_SAMPLES) |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    jq -r '.results[] | [.command, .median, .mean, .stddev, .min, .max] | @tsv' "$json" |
        while IFS=$'\t' read -r name median mean stddev min max; do
            local rss
            rss=$(awk -F'\t' -v name="$name" '$1 == name { print $2 }' "$rss_file")
            awk -v name="$name" -v rss="$rss" -v median="$median" -v mean="$mean" \
                -v stddev="$stddev" -v min="$min" -v max="$max" 'BEGIN {
                    printf "| %s | %.3f | %.3f | %.3f | %.3f | %.3f | %s |\n",
                        name, median * 1000, mean * 1000, stddev * 1000, min * 1000,
                        max * 1000, rss
                }'
        done
    echo
    jq -r '[.results[] | {key: .command, value: .median}] | from_entries
        | [.airlock, .bwrap] | @tsv' "$json" |
        awk -F'\t' '{
            airlock = $1 * 1000; bwrap = $2 * 1000; difference = airlock - bwrap
            if (difference <= 0)
                printf "Target met: airlock median %.3f ms <= bwrap median %.3f ms (%.3f ms, %.1f%% faster).\n",
                    airlock, bwrap, -difference, -difference / bwrap * 100
            else
                printf "Target missed: airlock median %.3f ms > bwrap median %.3f ms (%.3f ms, %.1f%% slower).\n",
                    airlock, bwrap, difference, difference / bwrap * 100
        }'
}

if ((EUID == 0)); then
    run_pass root "$airlock_built"
else
    run_pass "$(id -un)" "$airlock_built"
fi

if [[ -n $unprivileged_user ]]; then
    # The user may not be able to read the checkout, so it runs a copy placed in $scratch.
    airlock_copy=$scratch/airlock
    install -m 755 "$airlock_built" "$airlock_copy"
    run_pass "$unprivileged_user" "$airlock_copy" \
        setpriv --reuid="$unprivileged_user" --regid="$unprivileged_user" --init-groups
fi
