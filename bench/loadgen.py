"""A small closed-loop HTTP load generator: N threads, keep-alive connections, a fixed duration.

Both the server under test and a bare baseline are measured with this same client in
the same run, so the client's own overhead cancels out of the ratios we report.
"""

from __future__ import annotations

import http.client
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

# A request factory returns (method, path, body, headers) for the i-th request of a thread.
RequestFactory = Callable[[int, int], tuple[str, str, bytes | None, dict[str, str]]]


@dataclass
class Result:
    name: str
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        data = sorted(self.latencies_ms)
        return data[min(len(data) - 1, int(q * len(data)))]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms) if self.latencies_ms else float("nan")

    @property
    def p99(self) -> float:
        return self.pct(0.99)


def run(
    name: str,
    base_url: str,
    factory: RequestFactory,
    *,
    concurrency: int = 8,
    seconds: float = 10.0,
    expect: tuple[int, ...] = (200, 201),
) -> Result:
    parts = urlsplit(base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    stop_at = time.perf_counter() + seconds
    start_barrier = threading.Barrier(concurrency)

    def worker(t: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        start_barrier.wait()
        i = 0
        while time.perf_counter() < stop_at:
            method, path, body, headers = factory(t, i)
            i += 1
            t0 = time.perf_counter()
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                ok = resp.status in expect
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=30)
            latencies[t].append((time.perf_counter() - t0) * 1000)
            if not ok:
                errors[t] += 1
        conn.close()

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(concurrency)]
    began = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - began
    flat = [x for lst in latencies for x in lst]
    return Result(name, len(flat), sum(errors), elapsed, flat)
