#!/usr/bin/env bash
# The docker backend against the engines' own command-line clients, on the same engine and
# image, in one hyperfine run per engine:
#
#   docker run --rm        the docker CLI starting /bin/true in a new container with the
#                          options Airlock gives its containers (no network, read-only root,
#                          no capabilities, no_new_privs, memory and process limits, a tmpfs
#                          /tmp, user 65534), and removing it
#   podman run --rm        the same with Podman's remote client (Podman only)
#   airlock run            airlock run --backend docker --image IMAGE -- /bin/true
#   docker exec            the docker CLI running /bin/true in a running container
#   podman exec            the same with Podman's remote client (Podman only)
#   airlock exec           airlock exec ID -- /bin/true in a sandbox made by airlock create
#
# Usage: bench/docker.sh [--warmup N] [--runs N] [--docker SOCKET] [--podman SOCKET]
#                        [--image NAME] [--airlock BINARY] [--results DIR]
#
#   --warmup N       warmup runs per command (default 5).
#   --runs N         timed runs per command (default 40).
#   --docker SOCKET  Docker Engine's unix socket, or "none" to skip it (default: the one
#                    scripts/test-engines starts, /run/airlock-tests/docker.sock).
#   --podman SOCKET  Podman's API service socket, or "none" to skip it (default: the one
#                    scripts/test-engines starts, /run/airlock-tests/podman.sock).
#                    The engines of scripts/test-engines are started here when they are not
#                    running, and stopped again at the end.
#   --image NAME     the image every command starts (default airlock-test/bookworm:latest,
#                    which scripts/test-engines imports from the debootstrap tree).
#   --airlock BINARY time this Airlock binary instead of building the checkout with
#                    `cargo build --release`, to compare two builds with the same script.
#   --results DIR    copy hyperfine's JSON and Markdown exports to DIR.
#
# Needs root, cargo, jq, hyperfine, curl and the Debian packages docker.io and podman (for
# the clients and scripts/test-engines). The docker CLI is Debian's /usr/bin/docker and
# Podman's remote client is `podman --url`. Every container, sandbox and temporary directory
# it makes is removed on exit.

set -euo pipefail

warmup=5
runs=40
docker_socket=/run/airlock-tests/docker.sock
podman_socket=/run/airlock-tests/podman.sock
image=airlock-test/bookworm:latest
airlock=
results_dir=

usage() {
    sed -n '15,31p' "$0" | sed 's/^# \{0,1\}//'
}

while (($#)); do
    case $1 in
        --warmup) warmup=${2:?--warmup needs a number}; shift ;;
        --runs) runs=${2:?--runs needs a number}; shift ;;
        --docker) docker_socket=${2:?--docker needs a socket path or none}; shift ;;
        --podman) podman_socket=${2:?--podman needs a socket path or none}; shift ;;
        --image) image=${2:?--image needs a name}; shift ;;
        --airlock) airlock=${2:?--airlock needs a binary}; shift ;;
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
if [[ $docker_socket == none && $podman_socket == none ]]; then
    echo "docker.sh: --docker none and --podman none leave nothing to time" >&2
    exit 2
fi
if [[ -n $airlock && ! -x $airlock ]]; then
    echo "docker.sh: --airlock $airlock is not an executable file" >&2
    exit 2
fi
if ((EUID != 0)); then
    echo "docker.sh: run it as root: it starts the engines of scripts/test-engines" >&2
    exit 1
fi
missing=()
for tool in hyperfine jq curl /usr/bin/docker; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
[[ -n $airlock ]] || command -v cargo >/dev/null || missing+=(cargo)
[[ $podman_socket == none ]] || command -v podman >/dev/null || missing+=(podman)
if ((${#missing[@]})); then
    echo "docker.sh: missing tools: ${missing[*]}" >&2
    echo "Install them with: apt-get install hyperfine jq curl docker.io podman" >&2
    exit 1
fi

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
scratch=$(mktemp -d /tmp/airlock-bench-docker.XXXXXX)
# What clean_up removes: "SOCKET CONTAINER" pairs and sandbox ids.
containers=()
sandboxes=()
test_engines=false

clean_up() {
    local sandbox entry
    for sandbox in "${sandboxes[@]}"; do
        "$airlock" rm --force "$sandbox" >/dev/null 2>&1 || true
    done
    for entry in "${containers[@]}"; do
        /usr/bin/docker --host "unix://${entry% *}" rm --force "${entry#* }" >/dev/null 2>&1 || true
    done
    if $test_engines; then
        engines_stop
    fi
    rm -rf "$scratch"
}
trap clean_up EXIT

if [[ $docker_socket == /run/airlock-tests/docker.sock ||
    $podman_socket == /run/airlock-tests/podman.sock ]]; then
    export AIRLOCK_TEST_ROOTFS=${AIRLOCK_TEST_ROOTFS:-/var/cache/airlock-tests/rootfs-bookworm}
    # shellcheck source=scripts/test-engines
    source "$repo/scripts/test-engines"
    test_engines=true
    engines_setup
fi
mkdir -m 700 "$scratch/state" "$scratch/workspace"
export AIRLOCK_STATE_DIR=$scratch/state

if [[ -z $airlock ]]; then
    echo "== Building Airlock (cargo build --release)"
    airlock=$(cd "$repo" && cargo build --release --message-format=json-render-diagnostics |
        jq -r 'select(.reason == "compiler-artifact" and .target.name == "airlock"
            and .executable != null) | .executable')
    airlock_version="$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    if [[ -n "$(git -C "$repo" status --porcelain 2>/dev/null)" ]]; then
        airlock_version+=" with uncommitted changes"
    fi
else
    airlock_version="$airlock (sha256 $(sha256sum "$airlock" | cut -c1-12))"
fi

echo "== Machine"
echo "kernel:     $(uname -r), $(nproc) CPUs"
echo "docker CLI: $(/usr/bin/docker --version)"
[[ $podman_socket == none ]] || echo "podman:     $(podman --version)"
echo "airlock:    $airlock_version"
echo "image:      $image"

docker_options="--network none --read-only --tmpfs /tmp:size=512m --cap-drop ALL"
docker_options+=" --security-opt no-new-privileges --user 65534:65534 --memory 2g"
docker_options+=" --memory-swap 2g --pids-limit 1024"

# Times the commands of one engine: $1 names it (docker or podman), $2 is its socket.
time_engine() {
    local engine=$1 socket=$2 container sandbox i
    local docker="/usr/bin/docker --host unix://$socket"
    local podman="podman --url unix://$socket"
    echo
    echo "== $engine: $socket ($(curl --silent --unix-socket "$socket" http://engine/version |
        jq -r '.Components[0].Name + " " + .Components[0].Version'))"
    export DOCKER_HOST=unix://$socket

    # shellcheck disable=SC2086 # the options are split into words on purpose
    container=$($docker run --detach $docker_options "$image" sleep infinity)
    containers+=("$socket $container")
    sandbox=$(cd "$scratch/workspace" && "$airlock" create --backend docker --image "$image")
    sandboxes+=("$sandbox")

    local names=() commands=()
    if [[ $engine == podman ]]; then
        names+=("podman run --rm")
        commands+=("$podman run --rm $docker_options $image /bin/true")
    fi
    names+=("docker run --rm" "airlock run")
    commands+=("$docker run --rm $docker_options $image /bin/true"
        "$airlock run --backend docker --image $image -- /bin/true")
    if [[ $engine == podman ]]; then
        names+=("podman exec")
        commands+=("$podman exec $container /bin/true")
    fi
    names+=("docker exec" "airlock exec")
    commands+=("$docker exec $container /bin/true" "$airlock exec $sandbox -- /bin/true")

    for i in "${!names[@]}"; do
        printf '%s: %s\n' "${names[i]}" "${commands[i]}"
        # shellcheck disable=SC2086 # the command string is split into words on purpose
        if ! (cd "$scratch/workspace" && ${commands[i]}) >"$scratch/out" 2>&1; then
            echo "docker.sh: '${commands[i]}' failed:" >&2
            cat "$scratch/out" >&2
            exit 1
        fi
    done

    local hyperfine_args=(-N --warmup "$warmup" --runs "$runs"
        --export-json "$scratch/$engine.json" --export-markdown "$scratch/$engine.md")
    for i in "${!names[@]}"; do
        hyperfine_args+=(-n "${names[i]}" "${commands[i]}")
    done
    echo "load average before timing: $(cut -d' ' -f1-3 /proc/loadavg)"
    (cd "$scratch/workspace" && hyperfine "${hyperfine_args[@]}")
    echo "load average after timing: $(cut -d' ' -f1-3 /proc/loadavg)"

    echo
    jq -r '.results | map({(.command): .median}) | add as $m |
        def ms: . * 1000 | . * 100 | round / 100;
        def row($pair; $cli; $ours):
            "| \($pair) | \($cli) | \($m[$cli] | ms) | \($m[$ours] | ms) | \(if $m[$ours] < $m[$cli] then "yes" else "no" end) |";
        "| pair | client | client median (ms) | Airlock median (ms) | Airlock faster |",
        "|---|---|---:|---:|---|",
        ($m | keys_unsorted[] | select(endswith("run --rm")) | row("run"; .; "airlock run")),
        ($m | keys_unsorted[] | select(endswith(" exec") and (startswith("airlock") | not))
            | row("exec"; .; "airlock exec"))' \
        "$scratch/$engine.json"
}

[[ $docker_socket == none ]] || time_engine docker "$docker_socket"
[[ $podman_socket == none ]] || time_engine podman "$podman_socket"

if [[ -n $results_dir ]]; then
    mkdir -p "$results_dir"
    cp "$scratch"/*.json "$scratch"/*.md "$results_dir/"
    echo "results copied to $results_dir"
fi
