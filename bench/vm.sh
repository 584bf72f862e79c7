#!/usr/bin/env bash
# vm benchmark: what Airlock adds to a QEMU boot, and what an idle guest costs. The rows:
#
#   airlock vm        wall time of `airlock run --backend vm --rootfs TREE
#                     --workspace-mode none -- true`, from start to exit
#   bare qemu         wall time of QEMU started by hand with the same kernel, initramfs,
#                     root disk and arguments, and driven by this script through the
#                     agent's socket: wait for the agent's ready message, run `true` in the
#                     guest, and kill and reap QEMU once `true` has exited
#   idle memory       QEMU's resident memory (VmRSS) while the guest runs `sleep`
#
# Both rows reach the same point, so their difference is what Airlock adds: the front end,
# the cache lookups, the walk of the root tree for its cache key, and its side of the
# protocol.
#
# Every figure is printed with the accelerator it ran under (kvm or tcg), from Airlock's
# cached verdict.
#
# Usage: bench/vm.sh [--runs N] [--rootfs DIR] [--binary FILE]
#
#   --runs N         timed runs per row (default 5).
#   --rootfs DIR     the root filesystem tree (default $AIRLOCK_TEST_ROOTFS, else
#                    /var/cache/airlock-tests/rootfs-bookworm, which scripts/test builds).
#   --binary FILE    time this airlock binary instead of building a release binary.
#
# Needs root (for Airlock's cache in /var/cache/airlock/vm), cargo, python3, QEMU,
# mkfs.ext4 and linux-image-cloud-amd64.

set -euo pipefail

runs=5
rootfs=${AIRLOCK_TEST_ROOTFS:-/var/cache/airlock-tests/rootfs-bookworm}
binary=

while [ $# -gt 0 ]; do
    case "$1" in
    --runs) runs=$2; shift 2 ;;
    --rootfs) rootfs=$2; shift 2 ;;
    --binary) binary=$2; shift 2 ;;
    *) sed -n '19,24p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.."
if [ -z "$binary" ]; then
    cargo build --release --quiet
    binary=$(cargo metadata --format-version 1 --no-deps | python3 -c \
        'import json,sys; print(json.load(sys.stdin)["target_directory"])')/x86_64-unknown-linux-musl/release/airlock
fi
work=$(mktemp -d /tmp/airlock-bench-vm.XXXXXX)
cleanup() {
    rm -rf "$work"
}
trap cleanup EXIT
mkdir "$work/project"
cache=/var/cache/airlock/vm

now_ms() { echo $(($(date +%s%N) / 1000000)); }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

run_airlock() {
    (cd "$work/project" && "$binary" run --backend vm --rootfs "$rootfs" --workspace-mode none "$@")
}

# One run builds what is cached (initramfs, root image, accelerator verdict).
run_airlock -- true
accel=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["accel"])' "$cache/accel.json")
# The TSC frequency Airlock measured and passes to a guest under TCG, as it does.
tsc_khz=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("tsc_khz") or 1000000)' \
    "$cache/accel.json")

# The bare boot uses the newest cached initramfs and root image: the ones the run above
# used, which marks them as used. awk reads all of ls's output, so ls gets no SIGPIPE.
kernel=$(ls -1 /boot/vmlinuz-*-cloud-amd64 | sort -V | awk 'END {print}')
initramfs=$(ls -1t "$cache"/initramfs-*.cpio | awk 'NR == 1')
image=$(ls -1t "$cache"/rootfs-*.ext4 | awk 'NR == 1')
append="console=ttyS0 quiet panic=-1 reboot=t rdinit=/init"
cpu=host
if [ "$accel" = tcg ]; then
    append="$append tsc_early_khz=$tsc_khz lpj=4000000 no_timer_check"
    cpu=max
fi
# Airlock's defaults: /tmp of 512 MiB, 1024 processes, 2 GiB for the commands, and 128 MiB
# more for the guest's kernel.
append="$append airlock.tmp_size=536870912 airlock.pids=1024 airlock.memory=2147483648 -- __vm-agent"
# Timed by python3, which speaks the agent's protocol (airlock-protocol): frames of a
# 9-byte header (payload length as u32, kind as u8, channel as u32, little endian), kind 1
# carrying one JSON message.
bare_boot() {
    python3 - "$accel" "$cpu" "$kernel" "$initramfs" "$append" "$image" \
        "$work/console-$1.log" "$work/agent-$1.sock" <<'PYTHON'
import json, socket as sockets, struct, subprocess, sys, time
accel, cpu, kernel, initramfs, append, image, console, path = sys.argv[1:]
args = ["qemu-system-x86_64", "-nodefaults", "-no-user-config", "-no-reboot",
        "-display", "none", "-machine", "microvm,rtc=on", "-accel", accel, "-cpu", cpu,
        "-smp", "1", "-m", "2176M", "-nic", "none", "-serial", f"file:{console}",
        "-kernel", kernel, "-initrd", initramfs, "-append", append,
        "-device", "virtio-serial-device",
        "-chardev", f"socket,id=agent,path={path},server=on,wait=off",
        "-device", "virtserialport,chardev=agent,name=airlock.agent",
        "-drive", f"file={image},if=none,id=root,format=raw,readonly=on",
        "-device", "virtio-blk-device,drive=root,serial=airlock-root"]

def read_exact(connection, size):
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            sys.exit("the agent closed the connection")
        data += chunk
    return data

def next_message(connection):
    """Returns the next JSON message, skipping output and other frames."""
    while True:
        length, kind, channel = struct.unpack("<IBI", read_exact(connection, 9))
        payload = read_exact(connection, length)
        if kind == 1:
            return channel, json.loads(payload)

def send_message(connection, channel, message):
    payload = json.dumps(message).encode()
    connection.sendall(struct.pack("<IBI", len(payload), 1, channel) + payload)

start = time.monotonic()
qemu = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    while True:
        try:
            connection = sockets.socket(sockets.AF_UNIX)
            connection.connect(path)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            connection.close()
        if qemu.poll() is not None or time.monotonic() - start > 120:
            sys.exit("QEMU did not open the agent's socket")
        time.sleep(0.005)
    connection.settimeout(120)
    while next_message(connection)[1].get("type") != "ready":
        pass
    send_message(connection, 1, {"type": "exec", "argv": ["true"],
                                 "env": [["PATH", "/usr/bin:/bin"]], "cwd": "/",
                                 "tty": None, "uid": 0, "gid": 0})
    while True:
        channel, message = next_message(connection)
        if channel == 1 and message.get("type") in ("exited", "exec_failed"):
            break
    if message.get("type") != "exited" or message.get("code") != 0:
        sys.exit(f"true did not succeed in the bare guest: {message}")
    qemu.kill()
    qemu.wait()
    print(round((time.monotonic() - start) * 1000))
finally:
    qemu.kill()
    qemu.wait()
PYTHON
}

# The rows alternate, one run of each at a time, so that a change in the machine's load
# during the benchmark weighs on both alike.
airlock_times=()
bare_times=()
for run in $(seq "$runs"); do
    start=$(now_ms)
    run_airlock -- true
    airlock_times+=($(($(now_ms) - start)))
    bare_times+=($(bare_boot "$run"))
done

# Idle memory: QEMU's resident set while the guest sleeps, after its boot settled. The
# guest's files go to a TMPDIR of this script, which finds its QEMU.
mkdir "$work/tmp"
TMPDIR="$work/tmp" run_airlock -- sh -c 'echo ready; sleep 30' >"$work/idle.out" &
runner=$!
until grep -q ready "$work/idle.out" 2>/dev/null; do sleep 0.1; done
sleep 5
rss_kib=
for pid in $(pgrep -f "$work/tmp/airlock-vm-" || true); do
    rss_kib=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
done
wait "$runner"

echo "accelerator: $accel ($(nproc) CPUs, $(uname -r), $(qemu-system-x86_64 --version | awk 'NR == 1'))"
printf 'airlock vm   (start to exit of true), median of %s: %s ms [%s]\n' "$runs" \
    "$(printf '%s\n' "${airlock_times[@]}" | median)" "${airlock_times[*]}"
printf 'bare qemu    (start to exit of true), median of %s: %s ms [%s]\n' "$runs" \
    "$(printf '%s\n' "${bare_times[@]}" | median)" "${bare_times[*]}"
echo "idle memory  (QEMU VmRSS, guest of 2 GiB + 128 MiB, $accel): ${rss_kib:-unknown} KiB"
