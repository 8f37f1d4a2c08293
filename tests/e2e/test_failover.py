"""Two `max serve` replicas behind HAProxy (`deploy/haproxy.cfg`): a
replica killed under load loses no request and changes no answer; a stream
cut mid-way ends in an error the client sees; SIGTERM lets in-flight
requests finish within MAX's grace period and cuts them past it; a replica
drained in HAProxy first, then stopped, finishes what it holds.

Slow: 17 minutes on a loaded 2-core machine (two servers on a
DistilGPT2-shaped fixture, one restarted after each stop; the compile cache
is shared, so only the first start compiles). `-s` prints the figures.
Everything listens on 127.0.0.1, the load is bounded in count and time, and
every process started here is stopped by its fixture.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time

import pytest

from gpt2_max.balancer import HAProxy
from gpt2_max.parity import transformers_greedy_decode
from gpt2_max.server import MaxServe, group_alive

from .failover_load import Stream, read_stream, run_load

pytestmark = [pytest.mark.slow, pytest.mark.failover]

PROMPTS = [
    "The harbour was quiet in the early morning",
    "An old man sat on an upturned crate",
    "Once upon a time",
    "The meaning of life is",
    "In the winter of his childhood the sea came over the wall",
    "Gulls argued over scraps while",
]
MAX_TOKENS = 24
STREAM_TOKENS = 384
REQUESTS = 60
CONCURRENCY = 6


def greedy_texts(checkpoint, tokenizer, prompts, steps):
    """What transformers answers greedily, as the server would return it:
    cut at end-of-text, a partly generated character held back."""
    ids = [tokenizer(p).input_ids for p in prompts]
    decode = transformers_greedy_decode(checkpoint, ids, steps)
    texts = []
    for tokens in decode.tokens:
        eos = tokenizer.eos_token_id
        tokens = tokens[: tokens.index(eos)] if eos in tokens else tokens
        texts.append(tokenizer.decode(tokens).rstrip("\ufffd"))
    return texts


# MAX 26.7 lets in-flight requests finish for this long after SIGTERM
# (MAX_SERVE_GRACEFUL_SHUTDOWN_TIMEOUT_S, default 5 s), then cancels them.
GRACE = "MAX_SERVE_GRACEFUL_SHUTDOWN_TIMEOUT_S"
LONG_GRACE = 60  # what deploy/ ships: longer than any request here
SHORT_GRACE = 1  # shorter than a stream here


class Cluster:
    """Two replicas and the balancer; a stopped replica can be started again,
    r1 with a shutdown grace of the test's choosing."""

    def __init__(self, checkpoint, workdir) -> None:
        self.checkpoint = checkpoint
        self.workdir = workdir
        self.replicas: list[MaxServe] = []
        self.lb: HAProxy | None = None

    def _replica(self, n: int, grace: int, port: int | None = None) -> MaxServe:
        server = MaxServe(
            self.checkpoint,
            ["--devices", "cpu"],
            log_path=self.workdir / f"r{n + 1}-{time.monotonic_ns()}.log",
            env={GRACE: str(grace)},
        )
        if port is not None:  # the balancer knows the replica by its address
            server.port = port
            server.url = f"http://127.0.0.1:{port}"
            server.args[server.args.index("--port") + 1] = str(port)
        return server

    def start(self) -> Cluster:
        for n in range(2):  # one after the other: the second hits the cache
            self.replicas.append(self._replica(n, LONG_GRACE).start())
        self.lb = HAProxy([f"127.0.0.1:{r.port}" for r in self.replicas], self.workdir)
        self.lb.start()
        return self

    def ensure_up(self, r1_grace: int = LONG_GRACE) -> None:
        """Both replicas serving and in rotation: a stopped one, or r1 with
        another grace, is (re)started."""
        for n, server in enumerate(self.replicas):
            grace = r1_grace if n == 0 else LONG_GRACE
            stopped = server.process is None or server.process.poll() is not None
            if stopped or server.env[GRACE] != str(grace):
                server.stop()
                self.replicas[n] = self._replica(n, grace, server.port).start()
            self.lb.enable(f"r{n + 1}")
        deadline = time.monotonic() + 30
        while any(self.lb.status(s) != "UP" for s in self.lb.servers):
            assert time.monotonic() < deadline, "replicas not back UP in haproxy"
            time.sleep(0.2)

    def stop(self) -> None:
        if self.lb:
            self.lb.stop()
        for server in self.replicas:
            server.stop()


@pytest.fixture(scope="module")
def cluster(checkpoints, tmp_path_factory):
    if shutil.which("haproxy") is None:
        pytest.fail("haproxy is not installed (Debian: apt-get install haproxy)")
    cluster = Cluster(checkpoints["distilgpt2"], tmp_path_factory.mktemp("failover"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def expected(checkpoints, tokenizer):
    return greedy_texts(checkpoints["distilgpt2"], tokenizer, PROMPTS, MAX_TOKENS)


@pytest.fixture(scope="module")
def expected_stream(checkpoints, tokenizer):
    return greedy_texts(
        checkpoints["distilgpt2"], tokenizer, PROMPTS[:1], STREAM_TOKENS
    )[0]


def seconds_until(since: float, *conditions, timeout: float = 60.0) -> list[float]:
    """For each condition, the seconds from `since` until it first held."""
    times: list[float | None] = [None] * len(conditions)
    while None in times:
        now = time.monotonic()
        assert now - since < timeout, f"not all conditions held in {timeout:.0f}s"
        for n, condition in enumerate(conditions):
            if times[n] is None and condition():
                times[n] = now - since
        time.sleep(0.05)
    return times


def report(name: str, **figures) -> None:
    """Figures for the closing note, printed with `-s`."""
    print(f"\n[{name}] " + ", ".join(f"{k}={v}" for k, v in figures.items()))


def test_sigkill_mid_load_loses_and_changes_nothing(cluster, expected):
    cluster.ensure_up()
    lb, victim = cluster.lb, cluster.replicas[0]
    killed: dict[str, float] = {}

    once = threading.Lock()

    def kill_once_busy(done: int) -> None:
        # A third of the way in, once r1 holds requests: kill its whole group.
        with once:
            if killed or done < REQUESTS // 3:
                return
            killed["open_on_r1"] = lb.open_requests("r1")
            if killed["open_on_r1"] == 0:
                del killed["open_on_r1"]
                return
            killed["at"] = time.monotonic()
            os.killpg(victim.process.pid, signal.SIGKILL)
        watcher.start()  # times the kill while the load goes on

    def time_the_kill() -> None:
        killed["gone_s"], killed["down_s"] = seconds_until(
            killed["at"],
            lambda: not group_alive(victim.process.pid),
            lambda: lb.status("r1") == "DOWN",
        )

    watcher = threading.Thread(target=time_the_kill)

    started = time.monotonic()
    answers = run_load(
        lb.url,
        cluster.checkpoint.as_posix(),
        PROMPTS,
        requests_total=REQUESTS,
        concurrency=CONCURRENCY,
        max_tokens=MAX_TOKENS,
        on_answer=kill_once_busy,
    )
    wall = time.monotonic() - started
    assert killed, "the load ended before r1 held a request; nothing was killed"
    watcher.join(70)

    failed = [a for a in answers if a.error]
    changed = [
        a for a in answers if a.text is not None and a.text != expected[a.prompt]
    ]
    report(
        "sigkill",
        sent=len(answers),
        failed=len(failed),
        changed=len(changed),
        open_on_r1_at_kill=killed["open_on_r1"],
        retried=lb.stats("r1")["wretr"] + "+" + lb.stats("r2")["wretr"],
        redispatched=lb.stats("r1")["wredis"],
        group_gone_s=f"{killed['gone_s']:.2f}",
        marked_down_s=f"{killed['down_s']:.2f}",
        load_wall_s=f"{wall:.1f}",
    )
    assert not failed, failed[:3]
    assert not changed, changed[:3]


def test_stream_cut_mid_way_is_an_error_not_done(cluster, expected_stream):
    cluster.ensure_up()
    lb = cluster.lb
    stream = Stream()
    reader = threading.Thread(
        target=read_stream,
        args=(lb.url, cluster.checkpoint.as_posix(), PROMPTS[0], STREAM_TOKENS, stream),
    )
    reader.start()
    assert stream.first_event.wait(120), "no event streamed"
    assert stream.replica in ("r1", "r2"), stream
    victim = cluster.replicas[int(stream.replica[1:]) - 1]
    events_before_kill = stream.events
    os.killpg(victim.process.pid, signal.SIGKILL)
    reader.join(60)
    assert not reader.is_alive()
    report(
        "stream-cut",
        replica=stream.replica,
        events_before_kill=events_before_kill,
        events=stream.events,
        done=stream.done,
        error=stream.error,
    )
    assert not stream.done, "a cut stream ended in [DONE]"
    assert stream.error, "a cut stream ended without an error"
    assert len(stream.text) < len(expected_stream), "the stream was not cut"
    assert expected_stream.startswith(stream.text)


def stream_on(lb, model, prompt, replica, tokens):
    """Streams started until one lands on `replica`; all of them, reading."""
    streams, threads = [], []
    for _ in range(4):
        stream = Stream()
        thread = threading.Thread(
            target=read_stream,
            args=(lb.url, model, prompt, tokens, stream),
        )
        thread.start()
        assert stream.first_event.wait(120), "no event streamed"
        streams.append(stream)
        threads.append(thread)
        if stream.replica == replica:
            return streams, threads
    raise AssertionError(f"no stream of 4 landed on {replica}")


def sigterm_under_load(cluster, expected, *, drain_first: bool):
    """Streams (one on r1) and a bounded non-streaming load; once the first
    wave is answered, r1 gets SIGTERM (after a drain in HAProxy if asked)."""
    lb, victim = cluster.lb, cluster.replicas[0]
    model = cluster.checkpoint.as_posix()
    streams, threads = stream_on(lb, model, PROMPTS[0], "r1", STREAM_TOKENS)
    timings: dict[str, float] = {}

    once = threading.Lock()

    def stop_r1(done: int) -> None:
        if done < CONCURRENCY or not once.acquire(blocking=False):
            return  # before the first wave is answered, or already done
        timings["drain_at"] = time.monotonic()
        timings["drain_s"] = lb.drain("r1") if drain_first else 0.0
        sent = time.monotonic()
        os.kill(victim.process.pid, signal.SIGTERM)  # as Kubernetes does: PID 1
        (timings["stop_s"],) = seconds_until(
            sent, lambda: not group_alive(victim.process.pid), timeout=LONG_GRACE + 30
        )

    answers = run_load(
        lb.url,
        model,
        PROMPTS,
        requests_total=REQUESTS,
        concurrency=CONCURRENCY,
        max_tokens=MAX_TOKENS,
        on_answer=stop_r1,
    )
    for thread in threads:
        thread.join(LONG_GRACE + 30)
    assert timings, "the load ended before r1 was stopped"
    return answers, streams, timings


def summary(answers, streams, timings, expected, expected_stream) -> dict:
    return {
        "sent": len(answers),
        "failed": sum(bool(a.error) for a in answers),
        "changed": sum(
            a.text is not None and a.text != expected[a.prompt] for a in answers
        ),
        "streams": len(streams),
        "streams_on_r1": sum(s.replica == "r1" for s in streams),
        "streams_done_whole": sum(
            s.done and s.text == expected_stream for s in streams
        ),
        "streams_cut": sum(bool(s.error) for s in streams),
        "drain_s": f"{timings['drain_s']:.2f}",
        "stop_s": f"{timings['stop_s']:.2f}",
    }


def test_sigterm_within_grace_finishes_in_flight(cluster, expected, expected_stream):
    """MAX 26.7 on SIGTERM stops accepting and lets what it holds finish,
    for up to its grace period; HAProxy retries what it refuses."""
    cluster.ensure_up(r1_grace=LONG_GRACE)
    answers, streams, timings = sigterm_under_load(cluster, expected, drain_first=False)
    figures = summary(answers, streams, timings, expected, expected_stream)
    report("sigterm-within-grace", **figures)
    assert figures["failed"] == 0, [a.error for a in answers if a.error][:3]
    assert figures["changed"] == 0
    assert figures["streams_done_whole"] == len(streams), streams


def test_sigterm_past_grace_cuts_streams_with_an_error(
    cluster, expected, expected_stream
):
    """Past the grace period MAX cancels what it holds: a stream ends in an
    error the client sees, never in [DONE]; non-streaming requests are
    retried by HAProxy on the other replica."""
    cluster.ensure_up(r1_grace=SHORT_GRACE)
    answers, streams, timings = sigterm_under_load(cluster, expected, drain_first=False)
    figures = summary(answers, streams, timings, expected, expected_stream)
    report("sigterm-past-grace", **figures)
    on_r1 = [s for s in streams if s.replica == "r1"]
    assert on_r1 and all(s.error and not s.done for s in on_r1), on_r1
    assert all(expected_stream.startswith(s.text) for s in on_r1)
    assert figures["failed"] == 0, [a.error for a in answers if a.error][:3]
    assert figures["changed"] == 0


def test_drain_then_sigterm_finishes_everything(cluster, expected, expected_stream):
    """Drained in HAProxy first, r1 is stopped only once it holds nothing:
    even a 1 s grace loses nothing, and r1 gets no request after the drain."""
    cluster.ensure_up(r1_grace=SHORT_GRACE)
    answers, streams, timings = sigterm_under_load(cluster, expected, drain_first=True)
    figures = summary(answers, streams, timings, expected, expected_stream)
    report("drain-then-sigterm", **figures)
    after = [
        a for a in answers if a.started > timings["drain_at"] and a.replica == "r1"
    ]
    assert figures["failed"] == 0, [a.error for a in answers if a.error][:3]
    assert figures["changed"] == 0
    assert figures["streams_done_whole"] == len(streams), streams
    assert not after, "r1 got requests after it was drained"
