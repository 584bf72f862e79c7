#!/usr/bin/env python3
"""Two Airlock builds and the engine's clients, run in alternating order on one engine.

bench/docker.sh runs each command's runs back to back, so a change of load on the machine
between two commands shows as a difference between them. Here every round runs each command
once forward and once backward: A B C C B A, and the next round C B A A B C. It does so for
`run` and then for `exec`, and prints the medians with the median of the per-round
differences.

Usage: bench/docker-alternating.py SOCKET BEFORE AFTER [--rounds N] [--podman]

  SOCKET    the engine's unix socket, such as /run/airlock-tests/docker.sock
  BEFORE    the Airlock binary to compare against
  AFTER     the Airlock binary under test
  --rounds  rounds per pair (default 20), each with two runs of every command
  --podman  time Podman's remote client (`podman --url`) too

The image is airlock-test/bookworm:latest, which scripts/test-engines imports, and the
docker CLI is /usr/bin/docker. Run it as root. The container and sandboxes it creates, and
its state and workspace directories, are removed on exit.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time

IMAGE = "airlock-test/bookworm:latest"
OPTIONS = (
    "--network none --read-only --tmpfs /tmp:size=512m --cap-drop ALL"
    " --security-opt no-new-privileges --user 65534:65534 --memory 2g --memory-swap 2g"
    " --pids-limit 1024"
).split()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("socket")
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--podman", action="store_true")
    args = parser.parse_args()

    scratch = tempfile.mkdtemp(prefix="airlock-bench-alternating.")
    state = os.path.join(scratch, "state")
    workspace = os.path.join(scratch, "workspace")
    os.mkdir(state, 0o700)
    os.mkdir(workspace)
    env = dict(os.environ, DOCKER_HOST="unix://" + args.socket, AIRLOCK_STATE_DIR=state)
    docker = ["/usr/bin/docker", "--host", "unix://" + args.socket]
    podman = ["podman", "--url", "unix://" + args.socket]

    def output(command):
        return subprocess.run(
            command, env=env, cwd=workspace, check=True, capture_output=True, text=True
        ).stdout.strip()

    container = None
    sandboxes = {}
    try:
        container = output(docker + ["run", "--detach"] + OPTIONS + [IMAGE, "sleep", "infinity"])
        for binary in (args.before, args.after):
            sandboxes[binary] = output([binary, "create", "--backend", "docker", "--image", IMAGE])
        commands = {
            "docker run": docker + ["run", "--rm"] + OPTIONS + [IMAGE, "/bin/true"],
            "podman run": podman + ["run", "--rm"] + OPTIONS + [IMAGE, "/bin/true"],
            "before run": [args.before, "run", "--backend", "docker", "--image", IMAGE, "--", "/bin/true"],
            "after run": [args.after, "run", "--backend", "docker", "--image", IMAGE, "--", "/bin/true"],
            "docker exec": docker + ["exec", container, "/bin/true"],
            "podman exec": podman + ["exec", container, "/bin/true"],
            "before exec": [args.before, "exec", sandboxes[args.before], "--", "/bin/true"],
            "after exec": [args.after, "exec", sandboxes[args.after], "--", "/bin/true"],
        }
        clients = ["docker", "podman"] if args.podman else ["docker"]
        for action in ("run", "exec"):
            names = [f"{client} {action}" for client in clients]
            names += [f"before {action}", f"after {action}"]
            times = alternate(names, commands, env, workspace, args.rounds)
            report(action, names, times)
    finally:
        if container:
            subprocess.run(docker + ["rm", "--force", container], capture_output=True)
        for binary, sandbox in sandboxes.items():
            subprocess.run([binary, "rm", "--force", sandbox], env=env, capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"load average at the end: {' '.join(open('/proc/loadavg').read().split()[:3])}")


def alternate(names, commands, env, workspace, rounds):
    """Runs every command of `names` once as warmup, then `rounds` rounds. Returns the
    wall-clock milliseconds of each run, per name, in round order."""
    times = {name: [] for name in names}

    def once(name):
        started = time.perf_counter_ns()
        subprocess.run(
            commands[name],
            env=env,
            cwd=workspace,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return (time.perf_counter_ns() - started) / 1e6

    for name in names:
        once(name)
    for number in range(rounds):
        order = names if number % 2 == 0 else names[::-1]
        for name in order + order[::-1]:
            times[name].append(once(name))
    return times


def report(action, names, times):
    after = times[f"after {action}"]
    print(f"== {action}")
    for name in names:
        values = times[name]
        print(
            f"{name:12} n={len(values)} median {statistics.median(values):7.1f} ms"
            f"  stdev {statistics.stdev(values):6.1f} ms"
        )
    for name in names[:-1]:
        differences = [other - ours for other, ours in zip(times[name], after)]
        faster = sum(difference > 0 for difference in differences)
        print(
            f"{name} minus after {action}: median {statistics.median(differences):6.1f} ms,"
            f" after faster in {faster} of {len(differences)}"
        )


if __name__ == "__main__":
    main()
