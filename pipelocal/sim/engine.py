"""A discrete-event engine for schedules: processes run op lists on shared cores, talk over links and collectives.

Each process is a generator of ops (:func:`compute`, :func:`send`, :func:`recv`, :func:`poll`, :func:`reduce`,
:func:`wait`, :func:`done`). Computing processes share ``cores`` by processor sharing: while the threads that
compute add up to more than the cores, each runs at cores / demand of its speed (an oversubscribed CPU; None:
every process has its own device). Processes that compute at once on shared cores also slow each other beyond
that share (one memory bus and L3): ``corun`` gives the measured factor per demand. A send is asynchronous
but holds one of ``queue_depth`` slots of its directed link until the receiver takes the message (pipelocal
pre-posts that many receives); transfers on a link go one after another, each ``latency + bytes / bandwidth``.
A collective starts when every member has
reached it and its group is free (ring all-reduce: 2(n - 1)/n bytes per member over the bandwidth).
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Machine:
    """Where the schedule runs. Seconds and bytes per second."""

    cores: float | None = None  # None: every process has its own device (a GPU); else CPU cores shared by all
    latency_s: float = 0.0  # per message, one way
    bandwidth: float = float("inf")  # bytes/s of one directed link
    reduce_latency_s: float = 0.0  # per collective
    reduce_bandwidth: float = float("inf")  # bus bandwidth of a ring all-reduce
    host_overhead_s: float = 0.0  # the sender's own time per message (encode, post)
    # Slowdown of a computing thread when 1, 2, ... threads compute on the cores at once, beyond the share of the
    # cores it gets (1.0 first; measured, see simulate_measure.corun); the last value holds for more threads
    corun: tuple[float, ...] = (1.0,)

    def corun_slowdown(self, demand: float) -> float:
        """The co-run factor at ``demand`` computing threads, linear between the measured counts."""
        if self.cores is None or demand <= 1:
            return 1.0
        i = int(demand) - 1
        if i + 1 >= len(self.corun):
            return self.corun[-1]
        return self.corun[i] + (demand - 1 - i) * (self.corun[i + 1] - self.corun[i])

    def ring_allreduce_s(self, nbytes: float, n: int) -> float:
        """A ring all-reduce of ``nbytes`` over ``n`` members: 2(n - 1)/n x bytes over the bus bandwidth."""
        return 0.0 if n < 2 else self.reduce_latency_s + 2 * (n - 1) / n * nbytes / self.reduce_bandwidth


def compute(seconds: float, name: str, threads: int = 1):
    return ("compute", seconds, name, threads)


def send(dst: int, nbytes: float, tag):
    return ("send", dst, nbytes, tag)


def recv(src: int, tag, name: str = "recv"):
    return ("recv", src, tag, name)


def poll(src: int):
    """Take whatever has arrived from ``src``; block only while nothing ever has (a replay buffer's consumer)."""
    return ("poll", src)


def reduce(group: tuple[int, ...], nbytes: float, tag):
    """Start an all-reduce (asynchronous, like DDP's buckets); :func:`wait` for it."""
    return ("reduce", group, nbytes, tag)


def wait(tag, name: str = "all-reduce"):
    return ("wait", tag, name)


def done(rows: int):
    """``rows`` samples finished training (counted for samples/s)."""
    return ("done", rows)


@dataclass
class Proc:
    gen: object
    stage: int
    replica: int = 0
    state: str = "ready"  # ready | compute | blocked | done
    remaining: float = 0.0
    threads: int = 1
    op: tuple | None = None
    since: float = 0.0
    spans: list = field(default_factory=list)  # (name, start s, end s)
    busy_s: float = 0.0
    wait_s: float = 0.0


@dataclass
class Trace:
    """What a simulation gives back."""

    makespan_s: float
    rows: int
    procs: list[Proc]
    bytes_on_wire: float
    messages: int
    finished: list[tuple[float, int]]  # (time, rows) of every done()

    @property
    def samples_per_s(self) -> float:
        """Over the whole run, from time 0: what a measured epoch gives (its fill and drain included)."""
        return self.rows / self.finished[-1][0] if self.finished else 0.0

    @property
    def steady_samples_per_s(self) -> float:
        """Rows finished after the middle of the run, until the first process has done all its work, over the
        time they took: the rate once the pipeline is full and while every process still works (replicas that
        finish together count once at the boundary, not twice). The drain after it is left out: on shared
        cores the processes still working get the freed cores and finish faster than any steady state."""
        if not self.finished:
            return 0.0
        first_done = min((p.spans[-1][2] for p in self.procs if p.spans), default=self.finished[-1][0])
        before = [t for t, _ in self.finished if t <= first_done]  # finishes while every process works
        if len(set(before)) < 2:  # too few (a first stage far ahead): the second half of the whole run
            before = [t for t, _ in self.finished]
        mid, end = before[len(before) // 2], before[-1]
        rows = sum(r for t, r in self.finished if mid < t <= end)
        return rows / (end - mid) if end > mid else self.samples_per_s


class Engine:
    def __init__(self, machine: Machine, queue_depth: int = 2):
        self.m, self.depth = machine, queue_depth
        self.procs: list[Proc] = []
        self.now = 0.0
        self.events: list = []  # (time, seq, kind, key)
        self.seq = 0
        self.slots = defaultdict(int)  # (src, dst) -> sent, not yet taken
        self.link_free = defaultdict(float)
        self.arrived = defaultdict(set)  # (src, dst) -> tags arrived, not taken
        self.reduces = {}  # tag -> [members arrived, finish time or None]
        self.group_free = defaultdict(float)
        self.bytes = 0.0
        self.messages = 0
        self.finished: list[tuple[float, int]] = []

    def add(self, gen, stage: int, replica: int = 0) -> int:
        self.procs.append(Proc(gen, stage, replica))
        return len(self.procs) - 1

    def run(self, limit_s: float = 1e9) -> Trace:
        while True:
            self._advance_ready()
            if all(p.state == "done" for p in self.procs):
                break
            computing = [p for p in self.procs if p.state == "compute"]
            rates = self._rates(computing)
            t = min((self.now + p.remaining / r for p, r in zip(computing, rates)), default=float("inf"))
            if self.events:
                t = min(t, self.events[0][0])
            if t == float("inf") or t > limit_s:
                stuck = [(i, p.op) for i, p in enumerate(self.procs) if p.state == "blocked"]
                raise RuntimeError(f"schedule deadlocked at {self.now:.6f} s: {stuck}")
            for p, r in zip(computing, rates):
                p.remaining -= (t - self.now) * r
            self.now = t
            for p in computing:
                if p.remaining <= 1e-12:
                    p.spans.append((p.op[2], p.since, t))
                    p.busy_s += t - p.since
                    p.state = "ready"
            while self.events and self.events[0][0] <= self.now + 1e-15:
                _, _, kind, key = heapq.heappop(self.events)
                if kind == "arrive":
                    self.arrived[key[0]].add(key[1])
        rows = sum(r for _, r in self.finished)
        return Trace(self.now, rows, self.procs, self.bytes, self.messages, self.finished)

    def _rates(self, computing: list[Proc]) -> list[float]:
        """Each computing process's speed: its share of the cores, over the co-run slowdown of everything that
        computes now relative to its own threads alone (its costs were profiled with its own threads)."""
        if self.m.cores is None:
            return [1.0] * len(computing)
        demand = sum(p.threads for p in computing)
        share = 1.0 if demand <= self.m.cores else self.m.cores / demand
        slow = self.m.corun_slowdown(demand)
        return [share * self.m.corun_slowdown(p.threads) / slow for p in computing]

    def _push(self, t: float, kind: str, key) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, kind, key))

    def _advance_ready(self) -> None:
        """Run every process as far as it goes at this instant: a take may unblock a send, and so on."""
        progressed = True
        while progressed:
            progressed = False
            for i, p in enumerate(self.procs):
                if p.state == "blocked":
                    self._try(i, p)
                while p.state == "ready":
                    progressed = True
                    try:
                        p.op = next(p.gen)
                    except StopIteration:
                        p.state = "done"
                        break
                    self._start(i, p)

    def _start(self, i: int, p: Proc) -> None:
        op, p.since = p.op, self.now
        kind = op[0]
        if kind == "compute":
            p.state, p.remaining, p.threads = ("compute", op[1], op[3]) if op[1] > 0 else ("ready", 0.0, 1)
        elif kind == "done":
            self.finished.append((self.now, op[1]))
        elif kind == "reduce":
            entry = self.reduces.setdefault(op[3], [set(), None, op[1], op[2]])
            entry[0].add(i)
            if len(entry[0]) == len(op[1]):
                start = max(self.now, self.group_free[op[1]])
                entry[1] = self.group_free[op[1]] = start + self.m.ring_allreduce_s(op[2], len(op[1]))
                self.bytes += 2 * (len(op[1]) - 1) / len(op[1]) * op[2] * len(op[1])
                self._push(entry[1], "reduced", op[3])
        else:  # send, recv, poll, wait: blocked until _unblock says it can go on
            p.state = "blocked"
            self._try(i, p)

    def _try(self, i: int, p: Proc) -> None:
        op = p.op
        kind = op[0]
        if kind == "send":
            link = (i, op[1])
            replay = isinstance(op[3], tuple) and op[3][0] == "replay"  # a replay buffer takes every batch
            if self.slots[link] >= self.depth and not replay:
                return
            self.slots[link] += 1
            start = max(self.now + self.m.host_overhead_s, self.link_free[link])
            self.link_free[link] = start + op[2] / self.m.bandwidth
            self._push(self.link_free[link] + self.m.latency_s, "arrive", (link, op[3]))
            self.bytes, self.messages = self.bytes + op[2], self.messages + 1
            self._resume(p, "send", self.m.host_overhead_s)
        elif kind == "recv":
            link = (op[1], i)
            if op[2] in self.arrived[link]:
                self.arrived[link].discard(op[2])
                self.slots[link] -= 1
                self._resume(p, op[3])
        elif kind == "poll":
            link = (op[1], i)
            if self.arrived[link] or getattr(p, "fed", False):
                p.fed = p.fed if getattr(p, "fed", False) else bool(self.arrived[link])
                self.arrived[link].clear()
                self._resume(p, "recv")
        elif kind == "wait":
            entry = self.reduces.get(op[1])
            if entry is not None and entry[1] is not None and entry[1] <= self.now + 1e-15:
                self._resume(p, op[2])

    def _resume(self, p: Proc, name: str, busy: float = 0.0) -> None:
        if self.now > p.since:
            p.spans.append((name, p.since, self.now))
            p.wait_s += self.now - p.since
        if busy > 0:  # the sender's host overhead: computing, on the shared cores
            p.op, p.since, p.state, p.remaining, p.threads = ("compute", busy, "send", 1), self.now, "compute", busy, 1
        else:
            p.state = "ready"
