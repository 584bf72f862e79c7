#!/usr/bin/env python3
"""Two Airlock builds and bubblewrap, started in alternating order.

bench/startup.sh runs each command's runs back to back, so a change of load on the machine
between two commands shows as a difference between them. Here every round runs each command
once, forward in even rounds and backward in odd ones, so a loaded machine weighs on all of
them alike. It prints each command's median, 10th and 90th percentiles.

Usage: bench/startup-alternating.py BEFORE AFTER [--rounds N] [--pause SECONDS]
                                     [--backend chroot --rootfs DIR] [--user USER]

  BEFORE     the Airlock binary to compare against
  AFTER      the Airlock binary under test
  --rounds   rounds (default 300)
  --pause    sleep this long before each run, as bench/startup.sh's spaced runs do, so that
             every start finds the machine idle (default 0: back to back)
  --backend  namespace (default) or chroot
  --rootfs   the root filesystem for the chroot backend and chroot(8) (default
             /var/cache/airlock-tests/rootfs-bookworm, which scripts/test builds)
  --user     run every command as this ordinary user, with a workspace and a state
             directory it owns (the namespace backend only; both binaries must be
             executable by the user)

For the namespace backend, the commands are `airlock run -- /bin/true` for both builds,
`airlock run --workspace-mode bind -- /bin/true` for AFTER, and bwrap with the read-only root
that bench/startup.sh gives it. For the chroot backend, they are `airlock run --backend chroot
--rootfs DIR -- /bin/true` for both builds, the same with `--workspace-mode bind` for AFTER,
and `chroot --userspec=65534:65534 DIR /bin/true`, which runs as the same user. All run from
an empty temporary workspace, which is removed on exit, and the last column gives the median
of AFTER's per-round difference to the plain tool. Run it as root, with bubblewrap
installed, on a merged-/usr host (/bin, /sbin and /lib* are symlinks into /usr).
"""

import argparse
import os
import pwd
import shutil
import statistics
import subprocess
import tempfile
import time


def bwrap_command(workspace):
    """Returns bwrap with a read-only root like Airlock's default one."""
    command = ["bwrap", "--unshare-all", "--die-with-parent"]
    command += ["--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"]
    for link in ["bin", "sbin", "lib", "lib64"]:
        command += ["--symlink", f"usr/{link}", f"/{link}"]
    command += ["--ro-bind", "/opt", "/opt", "--proc", "/proc", "--dev", "/dev"]
    command += ["--tmpfs", "/tmp", "--bind", workspace, "/workspace"]
    command += ["--chdir", "/workspace", "/bin/true"]
    return command


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--pause", type=float, default=0.0)
    parser.add_argument("--backend", choices=["namespace", "chroot"], default="namespace")
    parser.add_argument("--rootfs", default="/var/cache/airlock-tests/rootfs-bookworm")
    parser.add_argument("--user")
    arguments = parser.parse_args()
    if arguments.user and arguments.backend != "namespace":
        parser.error("--user works with the namespace backend only")

    state = tempfile.mkdtemp(prefix="airlock-bench-state-")
    try:
        time_rounds(arguments, state)
    finally:
        remove_state(state)


def remove_state(state):
    """Removes the state directory once the last runs' clean-up children are done with it."""
    deadline = time.monotonic() + 10
    while True:
        try:
            shutil.rmtree(state)
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def time_rounds(arguments, state):
    """Times the rounds and prints the table; the state directory is for --user."""
    with tempfile.TemporaryDirectory(prefix="airlock-bench-") as workspace:
        identity = {}
        environment = None
        if arguments.user:
            account = pwd.getpwnam(arguments.user)
            for directory in (workspace, state):
                os.chown(directory, account.pw_uid, account.pw_gid)
            identity = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
            environment = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": state,
                "AIRLOCK_STATE_DIR": state,
            }
        os.chdir(workspace)
        if arguments.backend == "chroot":
            options = ["--backend", "chroot", "--rootfs", arguments.rootfs]
            peer = ("chroot", ["chroot", "--userspec=65534:65534", arguments.rootfs, "/bin/true"])
        else:
            options = []
            peer = ("bwrap", bwrap_command(workspace))
        commands = {
            "before": [arguments.before, "run", *options, "--", "/bin/true"],
            "after": [arguments.after, "run", *options, "--", "/bin/true"],
            "after-bind": [
                arguments.after, "run", *options, "--workspace-mode", "bind", "--", "/bin/true",
            ],
            peer[0]: peer[1],
        }
        names = list(commands)
        times = {name: [] for name in names}
        for round_number in range(arguments.rounds):
            order = names if round_number % 2 == 0 else names[::-1]
            for name in order:
                if arguments.pause:
                    time.sleep(arguments.pause)
                start = time.perf_counter()
                subprocess.run(
                    commands[name],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    check=True,
                    env=environment,
                    **identity,
                )
                times[name].append((time.perf_counter() - start) * 1000)

    spacing = f", {arguments.pause} s before each run" if arguments.pause else ""
    caller = f", as {arguments.user}" if arguments.user else ""
    print(
        f"{arguments.rounds} rounds{spacing}{caller}, "
        f"load average {os.getloadavg()[0]:.2f} at the end"
    )
    print(f"| command | median (ms) | p10 (ms) | p90 (ms) | median minus {peer[0]} per round (ms) |")
    print("|---|---:|---:|---:|---:|")
    for name in names:
        values = sorted(times[name])
        p10 = values[len(values) // 10]
        p90 = values[9 * len(values) // 10]
        differences = [own - plain for own, plain in zip(times[name], times[peer[0]])]
        print(
            f"| {name} | {statistics.median(values):.3f} | {p10:.3f} | {p90:.3f} "
            f"| {statistics.median(differences):+.3f} |"
        )


if __name__ == "__main__":
    main()
