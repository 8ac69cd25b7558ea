"""Drain a backlog with `aitp run` and with the minimal loop, against the same peers, and print figures.

    python3 benchmarks/drain.py                 # 10,000 tasks, the figures of benchmarks/README.md
    python3 benchmarks/drain.py --tasks 2000 --sweep --plot benchmarks/throughput.svg
    python3 benchmarks/drain.py --memory 100000 # RSS with a big backlog (runs for --memory-seconds)
    python3 benchmarks/drain.py --set AITP_WORKERS__PROCESS_WORKERS=0   # aitp run with a setting changed
    python3 benchmarks/drain.py --tasks 2000 --rtt 100   # the task API 100 ms away, against loopback
    python3 benchmarks/drain.py --tasks 6000 --services 2 # two services sharing a Redis, against one

Peers: the sandbox task API (in this process) and the Ollama stub with a GPU-like latency model
(a fixed cost per call plus a cost per input, one batch at a time) in a process of its own. `aitp run` and the minimal
loop run as subprocesses; their CPU time (with their process workers) comes from getrusage, their
memory from /proc (the service and its children summed, sampled every 0.1 s).
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aitp.sandbox import SandboxServer  # noqa: E402
from aitp.sandbox.ollama_stub import OllamaStub  # noqa: E402
from aitp.sandbox.relay import DelayRelay  # noqa: E402
from aitp.sandbox.seed import generated_tasks  # noqa: E402


@dataclass
class Run:
    label: str
    tasks: int
    seconds: float            # first claim to last result
    cpu_seconds: float        # the process and its children, start to exit
    drain_cpu_seconds: float  # the same, from the first claim to the last result only
    system_seconds: float     # the kernel's part of cpu_seconds (sockets, pipes, thread wake-ups)
    peak_rss_mb: float
    busy: float               # provider busy time / drain window
    bytes_polled: int
    provider_calls: int
    wire_bytes: tuple[int, int] | None = None   # (to the API, from it) through the relay, when there is one
    timeline: list[tuple[float, int, int, int]] | None = None   # (s from the first claim, claimed, done, embedded)

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds

    def line(self) -> str:
        return (f"{self.label:<28} {self.rate:8.0f} tasks/s  busy {self.busy:6.1%}  "
                f"cpu {1e6 * self.cpu_seconds / self.tasks:6.0f} µs/task "
                f"({self.system_seconds / self.cpu_seconds:4.0%} system; "
                f"{1e6 * self.drain_cpu_seconds / self.tasks:4.0f} while draining)  "
                f"peak RSS {self.peak_rss_mb:6.0f} MB  "
                f"polled {self.bytes_polled / self.tasks:8.0f} B/task  "
                f"batch {self.tasks / max(1, self.provider_calls):5.1f} inputs"
                + (f"  wire {self.wire_bytes[0] / self.tasks:5.0f} B up, {self.wire_bytes[1] / self.tasks:5.0f} B "
                   f"down per task" if self.wire_bytes else ""))

    def timeline_lines(self) -> str:
        """Every 0.1 s from the first claim: tasks claimed and not yet done, tasks done, and inputs the
        provider embedded in that tenth (what shows a GPU waiting for work, and when)."""
        lines, embedded_before = ["    s   claimed     done  embedded"], 0
        for at, claimed, done, embedded in self.timeline or []:
            lines.append(f"  {at:4.1f}  {claimed:7d}  {done:7d}  {embedded - embedded_before:8d}")
            embedded_before = embedded
        return "\n".join(lines)


def _with_children(pid: int) -> list[int]:
    """`pid` and its children (the service and its process workers), from /proc."""
    pids = [pid]
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            pids += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    return pids


def _rss_mb(pid: int) -> float:
    """RSS of `pid` and its children."""
    total = 0.0
    for each in _with_children(pid):
        try:
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return total


def _tree_cpu_seconds(pid: int) -> float:
    """User and system CPU so far of `pid` and its children."""
    ticks = 0
    for each in _with_children(pid):
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


class StubProcess:
    """The Ollama stub in a process of its own, as a GPU box is: in the sandbox's process the two
    shared one GIL, and the task API's work slowed the stub's (and the other way round). Its
    figures come back through shared memory: busy seconds, calls, inputs embedded."""

    def __init__(self, call_cost: float, input_cost: float) -> None:
        context = multiprocessing.get_context("fork")
        self._busy = context.Value("d", 0.0)
        self._calls = context.Value("q", 0)
        self._inputs = context.Value("q", 0)
        self._stop = context.Event()
        reader, writer = context.Pipe(duplex=False)
        self.process = context.Process(target=self._serve, args=(call_cost, input_cost, writer), daemon=True)
        self.process.start()
        self.url = reader.recv()

    def _serve(self, call_cost: float, input_cost: float, writer) -> None:
        stub = OllamaStub(models={"nomic-embed-text": 768}, call_cost=call_cost, input_cost=input_cost)
        stub.start()
        writer.send(stub.url)
        while not self._stop.wait(0.02):
            self._busy.value, self._calls.value = stub.busy_seconds, len(stub.batch_sizes)
            self._inputs.value = sum(stub.batch_sizes)
        stub.stop()

    @property
    def busy_seconds(self) -> float:
        return self._busy.value

    @property
    def calls(self) -> int:
        return self._calls.value

    @property
    def inputs(self) -> int:
        return self._inputs.value

    def stop(self) -> None:
        self._stop.set()
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()


class Peers:
    def __init__(self, tasks: int, call_cost: float, input_cost: float, rtt_ms: float | None = None) -> None:
        self.sandbox = SandboxServer(generated_tasks(tasks))      # listening; its threads start below
        # The stub's and the relay's processes are forked before this process has threads.
        self.ollama = StubProcess(call_cost, input_cost)
        self.relay = DelayRelay(int(self.sandbox.url.rsplit(":", 1)[1]), rtt_ms / 1000, in_process=False) \
            if rtt_ms is not None else None
        self.sandbox.start()
        self.api_url = self.relay.url if self.relay else self.sandbox.url

    def stop(self) -> None:
        if self.relay:
            self.relay.stop()
        self.sandbox.stop()
        self.ollama.stop()


def measure(label: str, command: list[str], peers: Peers, tasks: int, env: dict[str, str],
            stop_with_signal: bool, timeline: bool = False) -> Run:
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy_before, polled_before = peers.ollama.busy_seconds, peers.sandbox.store.bytes_polled
    calls_before = peers.ollama.calls
    wire_before = (peers.relay.sent_up.value, peers.relay.sent_down.value) if peers.relay else (0, 0)
    process = subprocess.Popen(command, env={**os.environ, **env}, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    peak = [0.0]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.1):
            peak[0] = max(peak[0], _rss_mb(process.pid))

    threading.Thread(target=sample, daemon=True).start()
    first = done = None
    rows: list[tuple[float, int, int, int]] | None = [] if timeline else None
    while done is None:
        counts = peers.sandbox.counts()
        now = time.monotonic()
        if first is None and (counts.get("in_progress") or counts.get("succeeded")):
            first, busy_at_first, cpu_at_first = now, peers.ollama.busy_seconds, _tree_cpu_seconds(process.pid)
            inputs_at_first = peers.ollama.inputs
        if rows is not None and first is not None and now - first >= 0.1 * len(rows):
            rows.append((now - first, counts.get("in_progress", 0), counts.get("succeeded", 0),
                         peers.ollama.inputs - inputs_at_first))
        if counts.get("succeeded", 0) >= tasks:
            done, cpu_at_done = now, _tree_cpu_seconds(process.pid)
        elif process.poll() is not None:
            raise SystemExit(f"{label} exited with {process.returncode} before draining: {counts}")
        time.sleep(0.02)
    busy = peers.ollama.busy_seconds - busy_at_first
    if stop_with_signal:
        process.send_signal(signal.SIGTERM)
    process.wait(120)
    sampling.set()
    usage_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    system = usage_after.ru_stime - usage_before.ru_stime
    cpu = (usage_after.ru_utime - usage_before.ru_utime) + system
    del busy_before
    relay = peers.relay
    wire = (relay.sent_up.value - wire_before[0], relay.sent_down.value - wire_before[1]) if relay else None
    return Run(label, tasks, done - first, cpu, cpu_at_done - cpu_at_first, system, peak[0], busy / (done - first),
               peers.sandbox.store.bytes_polled - polled_before, peers.ollama.calls - calls_before, wire, rows)


def service_env(peers: Peers, data_dir: str, **extra: str) -> dict[str, str]:
    return {"API_BASE_URL": peers.api_url, "PROCESSING_MODE": "ollama", "OLLAMA_BASE_URL": peers.ollama.url,
            "SUPPORTED_MODELS": "nomic-embed-text", "AITP_DATA_DIR": data_dir, "METRICS_PORT": "0",
            "LOG_LEVEL": "WARNING", "POLLING_INTERVAL_SECONDS": "2", **extra}


def run_service(tasks: int, call_cost: float, input_cost: float, label: str = "aitp run", rtt_ms: float | None = None,
                timeline: bool = False, **extra: str) -> Run:
    peers = Peers(tasks, call_cost, input_cost, rtt_ms)
    try:
        with tempfile.TemporaryDirectory() as data_dir:
            return measure(label, [sys.executable, "-m", "actors", "run"], peers, tasks,
                           service_env(peers, data_dir, **extra), stop_with_signal=True, timeline=timeline)
    finally:
        peers.stop()


def run_minimal(tasks: int, call_cost: float, input_cost: float) -> Run:
    peers = Peers(tasks, call_cost, input_cost)
    try:
        return measure("minimal loop", [sys.executable, str(ROOT / "benchmarks" / "minimal_loop.py"),
                                        peers.sandbox.url, peers.ollama.url], peers, tasks, {},
                       stop_with_signal=False)
    finally:
        peers.stop()


def idle_latency(call_cost: float, input_cost: float, interval: float = 2.0, **extra: str) -> float:
    """An idle service: seconds from a task appearing to its result."""
    peers = Peers(1, call_cost, input_cost)
    try:
        with tempfile.TemporaryDirectory() as data_dir:
            env = service_env(peers, data_dir, **{**extra, "POLLING_INTERVAL_SECONDS": str(interval)})
            process = subprocess.Popen([sys.executable, "-m", "actors", "run"], env={**os.environ, **env}, cwd=ROOT,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while peers.sandbox.counts().get("succeeded", 0) < 1:
                time.sleep(0.02)
            time.sleep(interval * 1.5)    # now idle, between two polls
            peers.sandbox.add_tasks(generated_tasks(1, start=1))
            appeared = time.monotonic()
            while peers.sandbox.counts().get("succeeded", 0) < 2:
                time.sleep(0.01)
            latency = time.monotonic() - appeared
            process.send_signal(signal.SIGTERM)
            process.wait(60)
            return latency
    finally:
        peers.stop()


def memory(tasks: int, seconds: float, **extra: str) -> float:
    """Peak RSS of the service (and its workers) working on a backlog of `tasks` for `seconds`."""
    peers = Peers(tasks, 0.01, 0.002)
    try:
        with tempfile.TemporaryDirectory() as data_dir:
            env = service_env(peers, data_dir, **extra)
            process = subprocess.Popen([sys.executable, "-m", "actors", "run"], env={**os.environ, **env}, cwd=ROOT,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            peak, deadline = 0.0, time.monotonic() + seconds
            while time.monotonic() < deadline:
                peak = max(peak, _rss_mb(process.pid))
                time.sleep(0.1)
            process.send_signal(signal.SIGTERM)
            process.wait(120)
            return peak
    finally:
        peers.stop()


def svg_plot(path: Path, series: dict[str, list[tuple[float, float]]], x_label: str) -> None:
    """A small line chart per series, side by side, in plain SVG (no plotting library needed)."""
    width, height, pad = 360, 240, 45
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width * len(series)}" height="{height}" '
             'font-family="sans-serif" font-size="11">']
    for index, (title, points) in enumerate(series.items()):
        left = index * width
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        top = max(ys) * 1.1 or 1

        def at(x: float, y: float) -> tuple[float, float]:
            span = (max(xs) - min(xs)) or 1
            return (left + pad + (x - min(xs)) / span * (width - 2 * pad),
                    height - pad - y / top * (height - 2 * pad))

        parts.append(f'<text x="{left + width / 2}" y="16" text-anchor="middle" font-weight="bold">{title}</text>')
        parts.append(f'<line x1="{left + pad}" y1="{height - pad}" x2="{left + width - pad}" y2="{height - pad}" '
                     'stroke="black"/>')
        parts.append(f'<line x1="{left + pad}" y1="{pad - 10}" x2="{left + pad}" y2="{height - pad}" stroke="black"/>')
        axis = x_label if index == 0 else "process workers"
        parts.append(f'<text x="{left + width / 2}" y="{height - 8}" text-anchor="middle">{axis}</text>')
        parts.append(f'<text x="{left + 10}" y="{pad - 16}">tasks/s</text>')
        line = " ".join(f"{x:.1f},{y:.1f}" for x, y in (at(px, py) for px, py in points))
        parts.append(f'<polyline points="{line}" fill="none" stroke="#1f77b4" stroke-width="2"/>')
        for px, py in points:
            x, y = at(px, py)
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="#1f77b4"/>')
            parts.append(f'<text x="{x:.1f}" y="{y - 7:.1f}" text-anchor="middle">{py:.0f}</text>')
            parts.append(f'<text x="{x:.1f}" y="{height - pad + 14}" text-anchor="middle">{px:g}</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


class RedisProcess:
    """redis-server (Debian's package) on a Unix socket in a temporary directory, with the AOF
    README "Scaling out" asks for."""

    def __init__(self) -> None:
        import shutil
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("--services needs redis-server (tests/install-peers.sh installs it as root)")
        self.directory = tempfile.TemporaryDirectory(prefix="aitp-redis-")
        self.url = f"unix://{self.directory.name}/sock"
        self.process = subprocess.Popen(
            [binary, "--port", "0", "--unixsocket", f"{self.directory.name}/sock", "--dir", self.directory.name,
             "--save", "", "--appendonly", "yes", "--appendfsync", "always"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not Path(f"{self.directory.name}/sock").exists():
            if time.monotonic() > deadline:
                raise SystemExit("redis-server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.directory.cleanup()


def run_services(count: int, tasks: int, call_cost: float, input_cost: float, redis_url: str | None,
                 **extra: str) -> tuple[float, int, list[float]]:
    """`count` services on one sandbox, each with an Ollama stub of its own; (tasks/s from the first
    claim to the last result, inputs the stubs embedded, how busy each stub's "GPU" was)."""
    sandbox = SandboxServer(generated_tasks(tasks))
    stubs = [StubProcess(call_cost, input_cost) for _ in range(count)]   # forked before any thread starts
    sandbox.start()
    processes = []
    try:
        with tempfile.TemporaryDirectory() as data:
            for index, stub in enumerate(stubs):
                env = {"API_BASE_URL": sandbox.url, "PROCESSING_MODE": "ollama", "OLLAMA_BASE_URL": stub.url,
                       "SUPPORTED_MODELS": "nomic-embed-text", "AITP_DATA_DIR": f"{data}/{index}",
                       "METRICS_PORT": "0", "LOG_LEVEL": "WARNING", "POLLING_INTERVAL_SECONDS": "2",
                       **({"REDIS_URL": redis_url} if redis_url else {}), **extra}
                processes.append(subprocess.Popen([sys.executable, "-m", "actors", "run"], env={**os.environ, **env},
                                                  cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            first = None
            while True:
                counts = sandbox.counts()
                now = time.monotonic()
                if first is None and (counts.get("in_progress") or counts.get("succeeded")):
                    first, busy_at_first = now, [stub.busy_seconds for stub in stubs]
                if counts.get("succeeded", 0) >= tasks:
                    break
                if any(process.poll() is not None for process in processes):
                    raise SystemExit(f"a service exited before draining: {counts}")
                time.sleep(0.02)
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                process.wait(120)
            busy = [(stub.busy_seconds - before) / (now - first) for stub, before in zip(stubs, busy_at_first)]
            time.sleep(0.05)       # the stubs' figures are copied every 20 ms
            return tasks / (now - first), sum(stub.inputs for stub in stubs), busy
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
        for stub in stubs:
            stub.stop()
        sandbox.stop()


def scale_out(count: int, tasks: int, call_cost: float, input_cost: float, repeat: int, **extra: str) -> None:
    redis = RedisProcess()
    try:
        ratios = []
        for _ in range(repeat):     # alternated, so that a slow spell of the machine hits both
            for label, services in (("1 service", 1), (f"{count} services", count)):
                rate, inputs, busy = run_services(services, tasks, call_cost, input_cost, redis.url, **extra)
                print(f"{label:11} (Redis) {rate:7.0f} tasks/s  {inputs - tasks:+d} inputs over the tasks  "
                      f"provider busy " + ", ".join(f"{share:.0%}" for share in busy), flush=True)
                if services == 1:
                    one = rate
            ratios.append(rate / one)
        print(f"scale-out: {count} services drain at {statistics.median(ratios):.2f} times one service's rate ("
              + ", ".join(f"{ratio:.2f}" for ratio in ratios) + ")", flush=True)
    finally:
        redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--call-cost", type=float, default=0.010, help="provider seconds per call (default 0.010)")
    parser.add_argument("--input-cost", type=float, default=0.002, help="provider seconds per input (default 0.002)")
    parser.add_argument("--sweep", action="store_true", help="throughput against batch size and process workers")
    parser.add_argument("--plot", type=Path, help="write the sweep as an SVG chart")
    parser.add_argument("--memory", type=int, nargs="*", help="peak RSS with these backlogs (e.g. 10000 100000)")
    parser.add_argument("--memory-seconds", type=float, default=20.0)
    parser.add_argument("--repeat", type=int, default=1, help="run the comparison this many times, print medians")
    parser.add_argument("--rtt", type=float, default=0.0, metavar="MS",
                        help="also drain with the task API this many ms away (round trip) and compare with loopback")
    parser.add_argument("--services", type=int, default=0, metavar="N",
                        help="N services sharing a Redis (each with its own Ollama stub) against one service")
    parser.add_argument("--timeline", action="store_true",
                        help="with --rtt: print each run's tasks claimed, done and embedded every 0.1 s")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="ENV=VALUE",
                        help="an environment setting for aitp run (not in the sweep); may be repeated")
    args = parser.parse_args()
    settings = dict(_setting(text, parser) for text in args.settings)
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; provider {args.call_cost * 1000:g} ms "
          f"per call + {args.input_cost * 1000:g} ms per input, one batch at a time", flush=True)
    if settings:
        print("aitp run with " + ", ".join(f"{name}={value}" for name, value in settings.items()), flush=True)

    if args.memory:
        for backlog in args.memory:
            print(f"peak RSS with {backlog:,} pending: {memory(backlog, args.memory_seconds, **settings):.0f} MB",
                  flush=True)
        return
    if args.services:
        scale_out(args.services, args.tasks, args.call_cost, args.input_cost, args.repeat, **settings)
        return
    if args.rtt:
        # Both runs go through the relay, the near one with no delay: the relay's own CPU (it copies
        # every byte in Python, on the same cores) is then paid by both, and only latency differs.
        ratios = []
        for _ in range(args.repeat):
            near = run_service(args.tasks, args.call_cost, args.input_cost, "aitp run, loopback", rtt_ms=0.0,
                               timeline=args.timeline, **settings)
            print(near.line(), flush=True)
            far = run_service(args.tasks, args.call_cost, args.input_cost, f"aitp run, {args.rtt:g} ms away",
                              rtt_ms=args.rtt, timeline=args.timeline, **settings)
            print(far.line(), flush=True)
            if args.timeline:
                for run in (near, far):
                    print(f"{run.label}:\n{run.timeline_lines()}", flush=True)
            ratios.append(far.rate / near.rate)
        print(f"WAN: with the task API {args.rtt:g} ms away, aitp drains at {statistics.median(ratios):.0%} of its "
              f"loopback rate (" + ", ".join(f"{r:.0%}" for r in ratios) + ")", flush=True)
        return
    if args.sweep:
        by_batch = [(size, run_service(args.tasks, args.call_cost, args.input_cost, f"batch {size}",
                                       AITP_BATCHING__MAX_ITEMS=str(size)).rate) for size in (1, 4, 8, 15, 32, 64)]
        by_workers = [(n, run_service(args.tasks, args.call_cost, args.input_cost, f"workers {n}",
                                      AITP_WORKERS__PROCESS_WORKERS=str(n)).rate) for n in (1, 2, 4)]
        for label, points in (("batch size", by_batch), ("process workers", by_workers)):
            print(f"throughput by {label}: " + ", ".join(f"{x}: {y:.0f}/s" for x, y in points), flush=True)
        if args.plot:
            svg_plot(args.plot, {"tasks/s by batch size": by_batch, "tasks/s by process workers": by_workers},
                     "batch size (max_items)")
            print(f"wrote {args.plot}")
        return

    pairs = []
    for _ in range(args.repeat):   # alternated, so that a slow spell of the machine hits both
        minimal = run_minimal(args.tasks, args.call_cost, args.input_cost)
        print(minimal.line(), flush=True)
        service = run_service(args.tasks, args.call_cost, args.input_cost, **settings)
        print(service.line(), flush=True)
        print(f"ratio: aitp run drains at {service.rate / minimal.rate:.0%} of the minimal loop's rate, "
              f"with {service.cpu_seconds / minimal.cpu_seconds:.2f} times its CPU", flush=True)
        pairs.append((minimal, service))
    if args.repeat > 1:
        print(f"medians of {args.repeat}: " + "; ".join(
            f"{label} {statistics.median(run.rate for run in runs):.0f} tasks/s, busy "
            f"{statistics.median(run.busy for run in runs):.1%}, "
            f"{statistics.median(1e6 * run.cpu_seconds / run.tasks for run in runs):.0f} µs/task "
            f"({statistics.median(1e6 * run.drain_cpu_seconds / run.tasks for run in runs):.0f} while draining)"
            for label, runs in (("minimal loop", [m for m, _ in pairs]), ("aitp run", [a for _, a in pairs]))),
            flush=True)
        print(f"median ratio: {statistics.median(a.rate / m.rate for m, a in pairs):.0%} of the rate, "
              f"{statistics.median(a.cpu_seconds / m.cpu_seconds for m, a in pairs):.2f} times the CPU", flush=True)
    print(f"idle latency (polling every 2 s): {idle_latency(args.call_cost, args.input_cost, **settings):.2f} s",
          flush=True)


def _setting(text: str, parser: argparse.ArgumentParser) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not name:
        parser.error(f"--set wants ENV=VALUE, got {text!r}")
    return name, value


if __name__ == "__main__":
    main()
