#!/usr/bin/env python3
"""Two Airlock builds and bubblewrap, started in alternating order.

bench/startup.sh runs each command's runs back to back, so a change of load on the machine
between two commands shows as a difference between them. Here every round runs each command
once, forward in even rounds and backward in odd ones, so a loaded machine weighs on all of
them alike. It prints each command's median, 10th and 90th percentiles.

Usage: bench/startup-alternating.py BEFORE AFTER [--rounds N]

  BEFORE    the Airlock binary to compare against
  AFTER     the Airlock binary under test
  --rounds  rounds (default 300)

The commands are `airlock run -- /bin/true` for both builds, `airlock run --workspace-mode
bind -- /bin/true` for AFTER, and bwrap with the read-only root that bench/startup.sh gives
it, all from an empty temporary workspace, which is removed on exit. Run it as root, with
bubblewrap installed, on a merged-/usr host (/bin, /sbin and /lib* are symlinks into /usr).
"""

import argparse
import os
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
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="airlock-bench-") as workspace:
        os.chdir(workspace)
        commands = {
            "before": [arguments.before, "run", "--", "/bin/true"],
            "after": [arguments.after, "run", "--", "/bin/true"],
            "after-bind": [
                arguments.after, "run", "--workspace-mode", "bind", "--", "/bin/true",
            ],
            "bwrap": bwrap_command(workspace),
        }
        names = list(commands)
        times = {name: [] for name in names}
        for round_number in range(arguments.rounds):
            order = names if round_number % 2 == 0 else names[::-1]
            for name in order:
                start = time.perf_counter()
                subprocess.run(commands[name], stdout=subprocess.DEVNULL, check=True)
                times[name].append((time.perf_counter() - start) * 1000)

    print(f"{arguments.rounds} rounds, load average {os.getloadavg()[0]:.2f} at the end")
    print("| command | median (ms) | p10 (ms) | p90 (ms) |")
    print("|---|---:|---:|---:|")
    for name in names:
        values = sorted(times[name])
        p10 = values[len(values) // 10]
        p90 = values[9 * len(values) // 10]
        print(f"| {name} | {statistics.median(values):.3f} | {p10:.3f} | {p90:.3f} |")


if __name__ == "__main__":
    main()
