#!/usr/bin/env bash
# Exec benchmark: the wall time of running /bin/true in an Airlock sandbox that is already
# running (`airlock exec`), timed in one hyperfine run next to `docker exec` into a running
# container, nsenter(1) into the same sandbox, and plain /bin/true as the floor. A second
# hyperfine run times a whole cycle (`airlock create`, a first `airlock exec`, `airlock rm
# --force`) next to `docker run --rm`. Last, it reads the resident memory of an idle sandbox
# (its supervisor, its init and its cgroup) and of an idle container's containerd shim.
#
# Docker runs as a private daemon that this script starts and stops: its own socket, data
# root, exec root and cgroup parent in a temporary directory, no bridge and no iptables
# rules, and an image imported from the host's busybox-static. A system Docker daemon, if
# there is one, is neither used nor touched.
#
# Usage: bench/exec.sh [--warmup N] [--runs N] [--cycle-warmup N] [--cycle-runs N]
#                      [--settle SECONDS] [--workspace-mode MODE] [--results DIR]
#
#   --warmup N             warmup runs per command of the exec table (default 20).
#   --runs N               timed runs per command of the exec table (default 200).
#   --cycle-warmup N       warmup runs per command of the cycle table (default 3).
#   --cycle-runs N         timed runs per command of the cycle table (default 30).
#   --settle SECONDS       wait after creating the sandbox and starting the container, before
#                          reading their memory, as sleep(1) takes it (default 2).
#   --workspace-mode MODE  the --workspace-mode of every `airlock create`: overlay, bind,
#                          readonly or none (default overlay, Airlock's own default).
#   --results DIR          copy hyperfine's JSON and Markdown exports, the memory readings and
#                          the summary tables to DIR, which is created if missing. Without it
#                          they are deleted.
#
# Needs root (for dockerd, and for nsenter into the sandbox), cargo, and the Debian packages
# hyperfine, jq, util-linux (nsenter), docker.io and busybox-static. On exit it removes the
# sandboxes and containers, stops the private dockerd, removes every temporary directory, and
# checks that none of the processes it started is left.

set -euo pipefail

readonly IMAGE=airlock-bench/busybox:latest
readonly CONTAINER_LIFETIME=86400
readonly MEMORY_TARGET_KIB=2048
readonly DOCKERD_START_TIMEOUT=30
readonly DOCKERD_STOP_TIMEOUT=30

warmup=20
runs=200
cycle_warmup=3
cycle_runs=30
settle=2
workspace_mode=overlay
results_dir=

usage() {
    sed -n '14,32p' "$0" | sed 's/^# \{0,1\}//'
}

while (($#)); do
    case $1 in
        --warmup) warmup=${2:?--warmup needs a number}; shift ;;
        --runs) runs=${2:?--runs needs a number}; shift ;;
        --cycle-warmup) cycle_warmup=${2:?--cycle-warmup needs a number}; shift ;;
        --cycle-runs) cycle_runs=${2:?--cycle-runs needs a number}; shift ;;
        --settle) settle=${2:?--settle needs a number of seconds}; shift ;;
        --workspace-mode) workspace_mode=${2:?--workspace-mode needs a mode}; shift ;;
        --results) results_dir=${2:?--results needs a directory}; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "exec.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

for number in "$warmup" "$runs" "$cycle_warmup" "$cycle_runs"; do
    if ! [[ $number =~ ^[0-9]+$ ]]; then
        echo "exec.sh: --warmup, --runs, --cycle-warmup and --cycle-runs take a whole" \
            "number, got '$number'" >&2
        exit 2
    fi
done
if ((runs < 2 || cycle_runs < 2)); then
    echo "exec.sh: --runs and --cycle-runs must be at least 2, because hyperfine needs two" \
        "runs for a standard deviation" >&2
    exit 2
fi
if ! [[ $settle =~ ^[0-9]+(\.[0-9]+)?$ ]]; then
    echo "exec.sh: --settle takes a number of seconds such as 2, got '$settle'" >&2
    exit 2
fi
case $workspace_mode in
    overlay | bind | readonly | none) ;;
    *)
        echo "exec.sh: --workspace-mode takes overlay, bind, readonly or none," \
            "got '$workspace_mode'" >&2
        exit 2
        ;;
esac

if ((EUID != 0)); then
    echo "exec.sh: run it as root: it starts a private dockerd and enters the sandbox with" \
        "nsenter" >&2
    exit 1
fi

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# The client of Debian's docker.io, the same version as its dockerd. A client of another
# version earlier in PATH (such as one in /usr/local/bin) would negotiate an older API
# version with the daemon on every call.
docker_client=/usr/bin/docker
missing=()
for tool in cargo hyperfine jq nsenter dockerd containerd runc pgrep; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
[[ -x $docker_client ]] || missing+=("$docker_client")
[[ -x /bin/busybox ]] || missing+=(/bin/busybox)
if ((${#missing[@]})); then
    echo "exec.sh: missing tools: ${missing[*]}" >&2
    echo "Install them with: apt-get install hyperfine jq util-linux procps docker.io" \
        "busybox-static" >&2
    echo "(cargo comes from rustup or the Debian package cargo.)" >&2
    exit 1
fi
# The image contains nothing but busybox, so busybox must be statically linked. ldd exits
# non-zero for a static executable.
if ldd /bin/busybox >/dev/null 2>&1; then
    echo "exec.sh: /bin/busybox is dynamically linked; install busybox-static, whose" \
        "/bin/busybox is static, for the container image" >&2
    exit 1
fi

scratch=$(mktemp -d /tmp/airlock-exec-bench.XXXXXX)
# The directory's unique name marks everything this script starts. It appears in the command
# line of the private dockerd, its containerd and shims, and the sandboxes' supervisors and
# inits, and it names the cgroup parent of the containers.
scratch_name=$(basename "$scratch")
state=$scratch/state
workspace=$scratch/workspace
docker_socket=$scratch/docker.sock
container=$scratch_name
dockerd_pid=
airlock=
mkdir "$state" "$workspace" "$scratch/output"

# Prints the pids of the processes that this script started and that are still alive: those
# whose command line or cgroup names the scratch directory. It reads /proc with shell
# builtins, so that no grep process with the name in its own arguments is counted.
started_processes() {
    local file pid words
    for file in /proc/[0-9]*/cmdline; do
        pid=${file#/proc/}
        pid=${pid%/cmdline}
        if ((pid == $$)); then
            continue
        fi
        words=()
        mapfile -d '' words 2>/dev/null <"$file" || continue
        if [[ ${words[*]-} == *"$scratch_name"* ]]; then
            echo "$pid"
            continue
        fi
        words=()
        mapfile words 2>/dev/null <"/proc/$pid/cgroup" || continue
        if [[ ${words[*]-} == *"/$scratch_name"* ]]; then
            echo "$pid"
        fi
    done
}

# Prints the mount points below the scratch directory, deepest first. dockerd bind-mounts its
# data root onto itself and mounts each container's root and network namespace below it.
scratch_mounts() {
    awk -v prefix="$scratch/" '$5 == substr(prefix, 1, length(prefix) - 1) ||
        index($5, prefix) == 1 { print $5 }' /proc/self/mountinfo | sort -r
}

# Waits until process PID is gone, for at most SECONDS. Returns 1 on timeout.
wait_for_exit() {
    local pid=$1 seconds=$2 tick
    for ((tick = 0; tick < seconds * 10; tick++)); do
        [[ -e /proc/$pid ]] || return 0
        sleep 0.1
    done
    return 1
}

# Removes the sandboxes and containers, stops the private dockerd, checks that nothing this
# script started is left, and removes the scratch directory. Runs on every exit.
clean_up() {
    local status=$? left_over=false
    set +e
    trap - EXIT INT TERM
    echo
    echo "== Cleaning up"

    if [[ -n $airlock ]]; then
        local id
        for id in $("$airlock" --state-dir "$state" ls --json 2>/dev/null | jq -r '.[].id'); do
            "$airlock" --state-dir "$state" rm --force "$id" >/dev/null 2>&1 ||
                echo "exec.sh: airlock rm --force $id failed" >&2
        done
    fi

    if [[ -n $dockerd_pid ]] && [[ -e /proc/$dockerd_pid ]]; then
        local containers
        containers=$(private_docker ps --all --quiet 2>/dev/null)
        if [[ -n $containers ]]; then
            # shellcheck disable=SC2086 # one argument per container id
            private_docker rm --force $containers >/dev/null ||
                echo "exec.sh: docker rm --force failed for: $containers" >&2
        fi
        kill -TERM "$dockerd_pid"
        if ! wait_for_exit "$dockerd_pid" "$DOCKERD_STOP_TIMEOUT"; then
            echo "exec.sh: dockerd (pid $dockerd_pid) did not stop within" \
                "${DOCKERD_STOP_TIMEOUT}s after SIGTERM; sending SIGKILL" >&2
            kill -KILL "$dockerd_pid"
            left_over=true
        fi
        wait "$dockerd_pid" 2>/dev/null
    fi

    # The supervisors exit shortly after `airlock rm` returns, and the shims after their
    # container is removed.
    local pid left=() tick
    for ((tick = 0; tick < 50; tick++)); do
        mapfile -t left < <(started_processes)
        ((${#left[@]} == 0)) && break
        sleep 0.1
    done
    if ((${#left[@]})); then
        echo "exec.sh: processes started by this script are still running; killing them:" >&2
        for pid in "${left[@]}"; do
            echo "  $pid: $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" >&2
            kill -KILL "$pid" 2>/dev/null
        done
        left_over=true
    fi

    local mount_point mounts=()
    mapfile -t mounts < <(scratch_mounts)
    for mount_point in "${mounts[@]}"; do
        umount "$mount_point" || umount --lazy "$mount_point"
    done
    mapfile -t mounts < <(scratch_mounts)

    # Docker removes each container's cgroup with the container, but not their parent.
    local cgroup
    for cgroup in /sys/fs/cgroup/*/"$scratch_name"/*/ /sys/fs/cgroup/*/"$scratch_name"/; do
        if [[ -d $cgroup ]] && ! rmdir "$cgroup"; then
            echo "exec.sh: failed to remove the cgroup $cgroup" >&2
            left_over=true
        fi
    done

    if ((${#mounts[@]})); then
        echo "exec.sh: $scratch is not removed, because these mounts are still below it:" \
            "${mounts[*]}" >&2
        left_over=true
    else
        rm -rf "$scratch"
    fi
    if [[ $left_over == true ]]; then
        ((status != 0)) || status=1
    else
        echo "Nothing is left: no sandbox, no dockerd, containerd or shim, no temporary directory."
    fi
    exit "$status"
}
trap clean_up EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "== Building Airlock (cargo build --release)"
# The path of the built binary depends on the build target (.cargo/config.toml) and on
# CARGO_TARGET_DIR, so take it from cargo's own report.
airlock_built=$(cd "$repo" && cargo build --release --message-format=json-render-diagnostics |
    jq -r 'select(.reason == "compiler-artifact" and .target.name == "airlock"
        and .executable != null) | .executable')
# Every command runs a copy, so that a rebuild in the checkout during the run cannot change
# the binary between the timed runs.
airlock=$scratch/airlock
install -m 755 "$airlock_built" "$airlock"
echo "airlock:    $airlock_built, copied to $airlock"

echo "== Machine"
echo "kernel:     $(uname -r)"
echo "cpus:       $(nproc) ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'))"
echo "os:         $(. /etc/os-release && echo "$PRETTY_NAME")"
echo "hyperfine:  $(hyperfine --version)"
echo "nsenter:    $(nsenter --version)"
echo "dockerd:    $(dockerd --version)"
echo "docker:     $("$docker_client" --version) ($docker_client)"
echo "containerd: $(containerd --version)"
echo "runc:       $(runc --version | head -n1)"
echo "airlock:    $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)$(
    git -C "$repo" diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"

# The client reads no configuration of the host's user and talks to the private daemon only.
unset DOCKER_HOST DOCKER_CONTEXT DOCKER_TLS_VERIFY DOCKER_CERT_PATH
export DOCKER_CONFIG=$scratch/docker-client
private_docker() {
    "$docker_client" --host "unix://$docker_socket" "$@"
}

echo
echo "== Starting a private dockerd"
# deprecated-key-path moves the daemon's trust key, which dockerd 20.10 otherwise writes to
# /etc/docker/key.json. setsid keeps a Ctrl-C on the terminal from reaching dockerd, which
# would then shut down on its own while clean_up sends it the request to remove the container.
printf '{"deprecated-key-path": "%s"}\n' "$scratch/docker-key.json" >"$scratch/daemon.json"
setsid dockerd --host "unix://$docker_socket" --data-root "$scratch/docker-data" \
    --exec-root "$scratch/docker-exec" --pidfile "$scratch/docker.pid" \
    --config-file "$scratch/daemon.json" --cgroup-parent "/$scratch_name" \
    --bridge none --iptables=false --ip6tables=false --ip-masq=false --userland-proxy=false \
    >"$scratch/dockerd.log" 2>&1 &
dockerd_pid=$!
for ((tick = 0; tick < DOCKERD_START_TIMEOUT * 10; tick++)); do
    if private_docker version >/dev/null 2>&1; then
        break
    fi
    if ! [[ -e /proc/$dockerd_pid ]]; then
        echo "exec.sh: dockerd exited while starting. The end of its log:" >&2
        tail -n 20 "$scratch/dockerd.log" >&2
        exit 1
    fi
    sleep 0.1
done
if ! private_docker version >/dev/null 2>&1; then
    echo "exec.sh: dockerd did not answer on $docker_socket within ${DOCKERD_START_TIMEOUT}s." \
        "The end of its log:" >&2
    tail -n 20 "$scratch/dockerd.log" >&2
    exit 1
fi
# setsid executes dockerd in its own process here, because a background job of a script is
# not a process group leader. The pid file written by dockerd confirms the pid.
if [[ $(<"$scratch/docker.pid") != "$dockerd_pid" ]]; then
    echo "exec.sh: dockerd's pid file names pid $(<"$scratch/docker.pid"), not $dockerd_pid;" \
        "stopping it by the pid file" >&2
    dockerd_pid=$(<"$scratch/docker.pid")
fi
echo "dockerd:    pid $dockerd_pid, socket $docker_socket"

# The image: busybox-static with the links the benchmark runs.
image_root=$scratch/image-root
mkdir -p "$image_root/bin"
cp /bin/busybox "$image_root/bin/busybox"
for applet in true sleep sh; do
    ln -s busybox "$image_root/bin/$applet"
done
tar -C "$image_root" -c . | private_docker import - "$IMAGE" >/dev/null
echo "image:      $IMAGE, imported from /bin/busybox"

echo
echo "== Starting the sandbox and the container"
sandbox=$("$airlock" --state-dir "$state" create --workspace "$workspace" \
    --workspace-mode "$workspace_mode")
private_docker run --detach --network none --name "$container" "$IMAGE" \
    sleep "$CONTAINER_LIFETIME" >/dev/null
sandbox_record=$("$airlock" --state-dir "$state" ls --json |
    jq -c --arg id "$sandbox" '.[] | select(.id == $id)')
supervisor_pid=$(jq -r .supervisor_pid <<<"$sandbox_record")
init_pid=$(jq -r .init_pid <<<"$sandbox_record")
container_pid=$(private_docker inspect --format '{{.State.Pid}}' "$container")
# The shim is the parent of the container's first process: field 4 of /proc/PID/stat, counted
# after the command name in parentheses.
stat=$(<"/proc/$container_pid/stat")
read -r _ shim_pid _ <<<"${stat##*) }"
containerd_pid=$(pgrep --parent "$dockerd_pid" --exact containerd || true)
echo "sandbox:    $sandbox (workspace mode $workspace_mode), supervisor pid $supervisor_pid," \
    "init pid $init_pid"
echo "container:  $container, its process pid $container_pid, shim pid $shim_pid" \
    "($(<"/proc/$shim_pid/comm"))"

echo
echo "== Idle memory, after 'sleep $settle' with nothing running in either"
sleep "$settle"

# Prints VmRSS from /proc/PID/status and Pss, Pss_Anon and Pss_File from
# /proc/PID/smaps_rollup, in KiB and tab-separated. A field the kernel lacks is printed as n/a.
process_memory() {
    local pid=$1 rss
    rss=$(awk '$1 == "VmRSS:" { print $2 }' "/proc/$pid/status")
    awk -v rss="$rss" '
        $1 == "Pss:" { pss = $2 }
        $1 == "Pss_Anon:" { anon = $2 }
        $1 == "Pss_File:" { file = $2 }
        END {
            printf "%s\t%s\t%s\t%s\n", rss, pss == "" ? "n/a" : pss,
                anon == "" ? "n/a" : anon, file == "" ? "n/a" : file
        }' "/proc/$pid/smaps_rollup"
}

memory_file=$scratch/output/memory.tsv
{
    printf 'airlock supervisor\t%s\t%s\n' "$supervisor_pid" "$(process_memory "$supervisor_pid")"
    printf 'airlock init\t%s\t%s\n' "$init_pid" "$(process_memory "$init_pid")"
    printf 'containerd-shim-runc-v2\t%s\t%s\n' "$shim_pid" "$(process_memory "$shim_pid")"
    printf 'dockerd\t%s\t%s\n' "$dockerd_pid" "$(process_memory "$dockerd_pid")"
    if [[ -n $containerd_pid ]]; then
        printf 'containerd\t%s\t%s\n' "$containerd_pid" "$(process_memory "$containerd_pid")"
    fi
} >"$memory_file"
sandbox_stats=$("$airlock" --state-dir "$state" stats --json "$sandbox")
echo "$sandbox_stats" >"$scratch/output/stats.json"
awk -F'\t' '{ printf "%-24s pid %-8s VmRSS %6s  Pss %6s  Pss_Anon %6s  Pss_File %6s KiB\n",
    $1, $2, $3, $4, $5, $6 }' "$memory_file"
echo "airlock stats --json: $sandbox_stats"

names=("airlock exec" "docker exec" nsenter /bin/true)
commands=(
    "$airlock --state-dir $state exec $sandbox -- /bin/true"
    "$docker_client --host unix://$docker_socket exec $container /bin/true"
    "$(command -v nsenter) --target $init_pid --all /bin/true"
    /bin/true
)
cycle_names=("airlock create+exec+rm" "docker run --rm" "sh -c /bin/true")
airlock_command="$airlock --state-dir $state"
cycle_script="id=\$($airlock_command create --workspace $workspace --workspace-mode $workspace_mode)"
cycle_script+=" && $airlock_command exec \"\$id\" -- /bin/true"
cycle_script+=" && $airlock_command rm --force \"\$id\""
cycle_commands=(
    "sh -c '$cycle_script'"
    "$docker_client --host unix://$docker_socket run --rm --network none $IMAGE /bin/true"
    "sh -c /bin/true"
)

# Runs each command once, as hyperfine -N would split it, and stops with its stderr if it
# fails.
check_commands() {
    local command
    for command in "$@"; do
        if ! (eval "$command") >"$scratch/output/check.out" 2>"$scratch/output/check.err"; then
            echo "exec.sh: '$command' failed. Its stderr:" >&2
            cat "$scratch/output/check.err" >&2
            exit 1
        fi
    done
}

# Times the commands NAMES[i] and COMMANDS[i] in one hyperfine run and exports the results
# to PREFIX.json and PREFIX.md. Arguments: PREFIX, the name of the names array, the name of
# the commands array, then extra hyperfine options.
time_commands() {
    local prefix=$1
    local -n timed_names=$2 timed_commands=$3
    shift 3
    local hyperfine_args=(-N "$@" --export-json "$prefix.json" --export-markdown "$prefix.md")
    local i
    for i in "${!timed_names[@]}"; do
        hyperfine_args+=(-n "${timed_names[i]}" "${timed_commands[i]}")
    done
    hyperfine "${hyperfine_args[@]}"
}

check_commands "${commands[@]}" "${cycle_commands[@]}"
if [[ -n $("$airlock" --state-dir "$state" ls --json | jq -r --arg id "$sandbox" \
    '.[] | select(.id != $id) | .id') ]]; then
    echo "exec.sh: the checked create+exec+rm cycle left a sandbox behind" >&2
    exit 1
fi

echo
echo "== Timing"
for i in "${!names[@]}"; do
    echo "${names[i]}: ${commands[i]}"
done
for i in "${!cycle_names[@]}"; do
    echo "${cycle_names[i]}: ${cycle_commands[i]}"
done
echo "load average before timing: $(cut -d' ' -f1-3 /proc/loadavg)" |
    tee "$scratch/output/load.txt"
echo
echo "-- exec into the running sandbox and container: $runs runs after $warmup warmup runs"
time_commands "$scratch/output/exec" names commands --warmup "$warmup" --runs "$runs"
echo
echo "-- create, exec and remove: $cycle_runs runs after $cycle_warmup warmup runs"
time_commands "$scratch/output/cycle" cycle_names cycle_commands \
    --warmup "$cycle_warmup" --runs "$cycle_runs"
echo "load average after timing: $(cut -d' ' -f1-3 /proc/loadavg)" |
    tee -a "$scratch/output/load.txt"

# Prints a Markdown table of one hyperfine export, times in ms.
# Arguments: a title, the hyperfine JSON file, a description of the runs.
print_table() {
    local title=$1 json=$2 description=$3
    echo
    echo "### $title: $description, times in ms"
    echo
    echo "| command | median | mean | stddev | min | max |"
    echo "|---|---:|---:|---:|---:|---:|"
    jq -r '.results[] | [.command, .median, .mean, .stddev, .min, .max] | @tsv' "$json" |
        awk -F'\t' '{
            printf "| %s | %.3f | %.3f | %.3f | %.3f | %.3f |\n",
                $1, $2 * 1000, $3 * 1000, $4 * 1000, $5 * 1000, $6 * 1000
        }'
}

# Prints the verdicts on the exec targets: the Airlock median at most a tenth of the docker
# exec median, and at most twice the nsenter median.
print_exec_verdicts() {
    local json=$1
    jq -r '[.results[] | {key: .command, value: .median}] | from_entries
        | [.["airlock exec"], .["docker exec"], .nsenter] | @tsv' "$json" |
        awk -F'\t' '{
            airlock = $1 * 1000; docker = $2 * 1000; nsenter = $3 * 1000
            met = airlock <= docker / 10
            printf "Target %s: airlock exec median %.3f ms %s a tenth of the docker exec median" \
                " %.3f ms = %.3f ms (docker exec takes %.1f times as long).\n",
                met ? "met" : "missed", airlock, met ? "<=" : ">", docker, docker / 10,
                docker / airlock
            met = airlock <= 2 * nsenter
            printf "Target %s: airlock exec median %.3f ms %s twice the nsenter median" \
                " %.3f ms = %.3f ms (airlock exec takes %.2f times as long).\n",
                met ? "met" : "missed", airlock, met ? "<=" : ">", nsenter, 2 * nsenter,
                airlock / nsenter
        }'
}

# Prints how many times as long as the Airlock cycle docker run --rm takes, by median.
print_cycle_ratio() {
    local json=$1
    jq -r '[.results[] | {key: .command, value: .median}] | from_entries
        | [.["airlock create+exec+rm"], .["docker run --rm"]] | @tsv' "$json" |
        awk -F'\t' '{
            printf "docker run --rm median %.3f ms: %.1f times the airlock create+exec+rm" \
                " median %.3f ms.\n", $2 * 1000, $2 / $1, $1 * 1000
        }'
}

# Prints the idle memory table and the verdict on the memory target: under MEMORY_TARGET_KIB
# for the Pss of the supervisor and the init plus the sandbox's memory from airlock stats.
print_memory() {
    local cgroup_memory processes
    cgroup_memory=$(jq -r '.memory // empty' "$scratch/output/stats.json")
    processes=$(jq -r '.processes // empty' "$scratch/output/stats.json")

    echo
    echo "### Idle memory, 'sleep $settle' after start with nothing running inside, in KiB"
    echo
    echo "| process | VmRSS | Pss | Pss_Anon | Pss_File |"
    echo "|---|---:|---:|---:|---:|"
    awk -F'\t' '$1 ~ /^airlock / {
            printf "| %s | %s | %s | %s | %s |\n", $1, $3, $4, $5, $6
            rss += $3; pss += $4; anon += $5; file += $6
        }
        END { printf "| airlock supervisor + init | %d | %d | %d | %d |\n", rss, pss, anon, file }
        ' "$memory_file"
    awk -F'\t' '$1 !~ /^airlock / { printf "| %s | %s | %s | %s | %s |\n", $1, $3, $4, $5, $6 }
        ' "$memory_file"

    echo
    echo "There is one shim per container, as there is one supervisor and one init per sandbox."
    echo "dockerd and containerd run once per host, for all containers."
    echo
    if [[ -z $cgroup_memory ]]; then
        echo "airlock stats --json reported no memory figure, so the memory target is not judged."
        return
    fi

    echo "The sandbox's memory from airlock stats --json: $((cgroup_memory / 1024)) KiB" \
        "($cgroup_memory bytes, processes: $processes). As root it is the sandbox cgroup's" \
        "counter (memory.usage_in_bytes on cgroup v1, memory.current on v2). Without a cgroup" \
        "it is the resident memory of the sandbox's processes."
    echo

    awk -F'\t' -v cgroup="$cgroup_memory" -v target="$MEMORY_TARGET_KIB" '
        $1 ~ /^airlock / { pss += $4; anon += $5 }
        END {
            cgroup_kib = cgroup / 1024
            total = pss + cgroup_kib
            met = total < target
            printf "Target %s: supervisor Pss + init Pss + sandbox memory = %d + %d KiB" \
                " = %d KiB (%.2f MiB) %s %d KiB.\n",
                met ? "met" : "missed", pss, cgroup_kib, total, total / 1024,
                met ? "<" : ">=", target
            printf "Without the pages of the airlock binary file, which all processes running" \
                " that file share (Pss_Anon of both + sandbox memory): %d KiB (%.2f MiB).\n",
                anon + cgroup_kib, (anon + cgroup_kib) / 1024
        }' "$memory_file"
}

{
    print_table "Exec into a running sandbox or container" "$scratch/output/exec.json" \
        "$runs runs after $warmup warmup runs"
    echo
    print_exec_verdicts "$scratch/output/exec.json"
    print_table "Create, exec and remove" "$scratch/output/cycle.json" \
        "$cycle_runs runs after $cycle_warmup warmup runs"
    echo
    print_cycle_ratio "$scratch/output/cycle.json"
    print_memory
    echo
    sed 's/^/- /' "$scratch/output/load.txt"
} | tee "$scratch/output/summary.md"

if [[ -n $results_dir ]]; then
    mkdir -p "$results_dir"
    cp "$scratch/output"/{exec,cycle}.{json,md} "$scratch/output"/{memory.tsv,stats.json} \
        "$scratch/output"/{load.txt,summary.md} "$results_dir/"
    echo
    echo "Results copied to $results_dir"
fi
