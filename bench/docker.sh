#!/usr/bin/env bash
# The docker backend against the docker CLI, on the same engine and image, in one hyperfine
# run:
#
#   docker run --rm        the docker CLI starting /bin/true in a new container with the
#                          options Airlock gives its containers (no network, read-only root,
#                          no capabilities, no_new_privs, memory and process limits, a tmpfs
#                          /tmp, user 65534), and removing it
#   airlock run            airlock run --backend docker --image IMAGE -- /bin/true
#   docker exec            the docker CLI running /bin/true in a running container
#   airlock exec           airlock exec ID -- /bin/true in a sandbox made by airlock create
#
# Usage: bench/docker.sh [--warmup N] [--runs N] [--engine SOCKET] [--image NAME]
#                        [--results DIR]
#
#   --warmup N       warmup runs per command (default 5).
#   --runs N         timed runs per command (default 40).
#   --engine SOCKET  the engine's unix socket (default: the Docker Engine that
#                    scripts/test-engines starts, /run/airlock-tests/docker.sock, started
#                    here when it is not running, and stopped again at the end).
#   --image NAME     the image both start (default airlock-test/bookworm:latest, which
#                    scripts/test-engines imports from the debootstrap tree).
#   --results DIR    copy hyperfine's JSON and Markdown exports to DIR.
#
# Needs root, cargo, jq, hyperfine and the Debian packages docker.io and podman (for
# scripts/test-engines). The docker CLI is Debian's /usr/bin/docker. Every container,
# sandbox and temporary directory it makes is removed on exit.

set -euo pipefail

warmup=5
runs=40
engine=
image=airlock-test/bookworm:latest
results_dir=

usage() {
    sed -n '13,25p' "$0" | sed 's/^# \{0,1\}//'
}

while (($#)); do
    case $1 in
        --warmup) warmup=${2:?--warmup needs a number}; shift ;;
        --runs) runs=${2:?--runs needs a number}; shift ;;
        --engine) engine=${2:?--engine needs a socket path}; shift ;;
        --image) image=${2:?--image needs a name}; shift ;;
        --results) results_dir=${2:?--results needs a directory}; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "docker.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
for number in "$warmup" "$runs"; do
    if ! [[ $number =~ ^[0-9]+$ ]]; then
        echo "docker.sh: --warmup and --runs take a whole number, got '$number'" >&2
        exit 2
    fi
done
if ((EUID != 0)); then
    echo "docker.sh: run it as root: it starts the engines of scripts/test-engines" >&2
    exit 1
fi
missing=()
for tool in cargo hyperfine jq curl /usr/bin/docker; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    echo "docker.sh: missing tools: ${missing[*]}" >&2
    echo "Install them with: apt-get install hyperfine jq curl docker.io podman" >&2
    exit 1
fi

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
scratch=$(mktemp -d /tmp/airlock-bench-docker.XXXXXX)
container=
sandbox=

clean_up() {
    if [[ -n $sandbox ]]; then
        "$airlock" rm --force "$sandbox" >/dev/null 2>&1 || true
    fi
    if [[ -n $container ]]; then
        /usr/bin/docker rm --force "$container" >/dev/null 2>&1 || true
    fi
    if [[ -z $engine ]]; then
        engines_stop
    fi
    rm -rf "$scratch"
}
trap clean_up EXIT

if [[ -z $engine ]]; then
    export AIRLOCK_TEST_ROOTFS=${AIRLOCK_TEST_ROOTFS:-/var/cache/airlock-tests/rootfs-bookworm}
    # shellcheck source=scripts/test-engines
    source "$repo/scripts/test-engines"
    engines_setup
    engine=/run/airlock-tests/docker.sock
fi
export DOCKER_HOST=unix://$engine
mkdir -m 700 "$scratch/state" "$scratch/workspace"
export AIRLOCK_STATE_DIR=$scratch/state

echo "== Building Airlock (cargo build --release)"
airlock=$(cd "$repo" && cargo build --release --message-format=json-render-diagnostics |
    jq -r 'select(.reason == "compiler-artifact" and .target.name == "airlock"
        and .executable != null) | .executable')

echo "== Machine"
echo "kernel:     $(uname -r), $(nproc) CPUs"
echo "engine:     $engine ($(curl --silent --unix-socket "$engine" http://engine/version |
    jq -r '.Components[0].Name + " " + .Components[0].Version'))"
echo "docker CLI: $(/usr/bin/docker --version)"
echo "airlock:    $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)"
echo "image:      $image"

docker_options="--network none --read-only --tmpfs /tmp:size=512m --cap-drop ALL"
docker_options+=" --security-opt no-new-privileges --user 65534:65534 --memory 2g"
docker_options+=" --memory-swap 2g --pids-limit 1024"
container=$(/usr/bin/docker run --detach $docker_options "$image" sleep infinity)
cd "$scratch/workspace"
sandbox=$("$airlock" create --backend docker --image "$image")

names=("docker run --rm" "airlock run" "docker exec" "airlock exec")
commands=(
    "/usr/bin/docker run --rm $docker_options $image /bin/true"
    "$airlock run --backend docker --image $image -- /bin/true"
    "/usr/bin/docker exec $container /bin/true"
    "$airlock exec $sandbox -- /bin/true"
)
for i in "${!names[@]}"; do
    printf '%s: %s\n' "${names[i]}" "${commands[i]}"
    # shellcheck disable=SC2086 # the command string is split into words on purpose
    if ! ${commands[i]} >"$scratch/out" 2>&1; then
        echo "docker.sh: '${commands[i]}' failed:" >&2
        cat "$scratch/out" >&2
        exit 1
    fi
done

hyperfine_args=(-N --warmup "$warmup" --runs "$runs"
    --export-json "$scratch/docker.json" --export-markdown "$scratch/docker.md")
for i in "${!names[@]}"; do
    hyperfine_args+=(-n "${names[i]}" "${commands[i]}")
done
echo "load average before timing: $(cut -d' ' -f1-3 /proc/loadavg)"
hyperfine "${hyperfine_args[@]}"
echo "load average after timing: $(cut -d' ' -f1-3 /proc/loadavg)"

echo
jq -r '.results | map({(.command): .median}) | add as $m |
    "| pair | docker CLI median (ms) | Airlock median (ms) | Airlock faster |",
    "|---|---:|---:|---|",
    ("| run | \($m["docker run --rm"] * 1000 | . * 100 | round / 100) | \($m["airlock run"] * 1000 | . * 100 | round / 100) | \(if $m["airlock run"] < $m["docker run --rm"] then "yes" else "no" end) |"),
    ("| exec | \($m["docker exec"] * 1000 | . * 100 | round / 100) | \($m["airlock exec"] * 1000 | . * 100 | round / 100) | \(if $m["airlock exec"] < $m["docker exec"] then "yes" else "no" end) |")' \
    "$scratch/docker.json"

if [[ -n $results_dir ]]; then
    mkdir -p "$results_dir"
    cp "$scratch/docker.json" "$scratch/docker.md" "$results_dir/"
    echo "results copied to $results_dir"
fi
