"""Where a process's CPU went: run-queue waits from a kernel scheduler trace (not a benchmark).

A budget slot is forfeited when its replica is not on a CPU within the slot's send window (5.7 ms
by default). This reads a trace of every context switch and wake-up and prints, per process, its
CPU time and how long it waited to run once runnable; for the waits over ``--over`` ms of the
processes named by ``--pid``, what each CPU ran meanwhile ("swapper" is the idle task: a CPU the
guest believes idle while a task waits means the hypervisor was not running that vCPU).

    perf record -e sched:sched_switch -e sched:sched_wakeup -e sched:sched_wakeup_new -a \\
        -o sched.data -- sleep 18              (during `python -m bench budget_fleet`; needs root)
    perf script -i sched.data -F comm,pid,tid,cpu,time,event,trace > sched.txt
    python -m bench.sched_waits sched.txt [--pid PID ...] [--over 8]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter, defaultdict

_SWITCH = re.compile(
    r"\[(\d+)\]\s+([\d.]+):\s+sched:sched_switch:\s+prev_comm=(.*?) prev_pid=(\d+) prev_prio=\d+ "
    r"prev_state=(\S+) ==> next_comm=(.*?) next_pid=(\d+)"
)
_WAKE = re.compile(r"\[\d+\]\s+([\d.]+):\s+sched:sched_wakeup(?:_new)?:\s+comm=(.*?) pid=(\d+) ")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("trace")
    parser.add_argument("--pid", type=int, action="append", default=[])
    parser.add_argument("--over", type=float, default=8.0, help="list waits longer than this (ms)")
    args = parser.parse_args()
    names: dict[int, str] = {}
    ran: Counter[int] = Counter()
    spans: list[tuple[float, float, int, int]] = []  # (from, to, cpu, pid)
    on_cpu: dict[int, tuple[int, float]] = {}
    runnable: dict[int, float] = {}
    waits: defaultdict[int, list[tuple[float, float]]] = defaultdict(list)  # pid -> (wait, ended at)
    with open(args.trace) as trace:
        for line in trace:
            if m := _SWITCH.search(line):
                cpu, at, prev, state, nxt = int(m[1]), float(m[2]), int(m[4]), m[5], int(m[7])
                names[prev], names[nxt] = m[3], m[6]
                if cpu in on_cpu:
                    pid, since = on_cpu[cpu]
                    ran[pid] += at - since
                    spans.append((since, at, cpu, pid))
                on_cpu[cpu] = (nxt, at)
                if state.startswith("R"):  # preempted: still runnable
                    runnable[prev] = at
                else:
                    runnable.pop(prev, None)
                if nxt in runnable:
                    waits[nxt].append((at - runnable.pop(nxt), at))
            elif m := _WAKE.search(line):
                pid = int(m[3])
                names[pid] = m[2]
                if all(running != pid for running, _ in on_cpu.values()):  # (woken while still on a CPU)
                    runnable.setdefault(pid, float(m[1]))
    print("pid      name             CPU s  runs   wait p50   p99      max   over")
    for pid, seconds in ran.most_common(12):
        w = sorted(x for x, _ in waits[pid]) or [0.0]
        over = sum(1 for x in w if x * 1000 > args.over)
        print(
            f"{pid:<8} {names.get(pid, '?'):15.15s} {seconds:6.2f} {len(w):5d} {w[len(w) // 2] * 1e3:7.2f} ms "
            f"{w[int(len(w) * 0.99)] * 1e3:6.2f} {w[-1] * 1e3:8.1f} {over:5d}"
        )
    for pid in args.pid:
        for waited, ended in waits[pid]:
            if waited * 1000 <= args.over:
                continue
            began, meanwhile = ended - waited, Counter[tuple[int, str]]()
            for start, stop, cpu, other in spans:
                if stop > began and start < ended:
                    meanwhile[(cpu, f"{names.get(other, '?')}({other})")] += min(stop, ended) - max(start, began)
            ran_list = ", ".join(f"cpu{c} {n} {d * 1e3:.1f}" for (c, n), d in sorted(meanwhile.items()) if d > 1e-4)
            print(f"{pid} waited {waited * 1e3:.1f} ms; meanwhile (ms): {ran_list}")


if __name__ == "__main__":
    main()
