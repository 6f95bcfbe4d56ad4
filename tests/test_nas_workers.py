"""Worker pools under failure: comm ranks that die, fall silent or hang; every case ends with
the search going on (or stopping with a clear error when no worker is left).

The pool logic is checked in-process over a queue-backed stand-in for the comm world (fast);
then a real 3-rank ``oncoscale.comm`` world loses a rank mid-candidate.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from oncoscale.errors import CommunicationError, ConfigurationError
from oncoscale.nas.evaluate import STATUS_OK, EvalResult
from oncoscale.nas.workers import CommPool, Died, Done, Task, serve_comm_worker

TESTS = Path(__file__).parent


class _GoneError(Exception):
    pass


class _Hub:
    """Message queues between fake ranks, keyed by (src, dst, tag)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queues: dict[tuple[int, int, int], queue.Queue] = {}
        self.dead: set[int] = set()

    def q(self, src: int, dst: int, tag: int) -> queue.Queue:
        with self.lock:
            return self.queues.setdefault((src, dst, tag), queue.Queue())

    def kill(self, rank: int) -> None:
        """The rank's process vanished: its peers' pending receives fail."""
        self.dead.add(rank)
        with self.lock:
            qs = [q for (s, _, _), q in self.queues.items() if s == rank]
        for q in qs:
            q.put(_GoneError(f"connection closed by peer {rank}"))
        for tag in (7100, 7101):
            self.q(rank, 0, tag).put(_GoneError(f"connection closed by peer {rank}"))


class _FakeWorld:
    """The slice of ``oncoscale.comm.World`` the pools use: rank, size, send, recv."""

    def __init__(self, hub: _Hub, rank: int, size: int) -> None:
        self.hub, self.rank, self.size = hub, rank, size

    def send(self, tensor: torch.Tensor, dst: int, *, tag: int = 0) -> None:
        if dst in self.hub.dead:
            raise _GoneError(f"send to dead rank {dst}")
        self.hub.q(self.rank, dst, tag).put(tensor.clone())

    def recv(self, tensor: torch.Tensor, src: int, *, tag: int = 0) -> torch.Tensor:
        item = self.hub.q(src, self.rank, tag).get()
        if isinstance(item, Exception):
            raise item
        return tensor.copy_(item)


def _fake_worker(hub: _Hub, rank: int, size: int, evaluator) -> threading.Thread:
    def run() -> None:
        with contextlib.suppress(_GoneError):
            serve_comm_worker(_FakeWorld(hub, rank, size), evaluator, heartbeat_s=0.1)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _ok(genome: str, seed: int, cand_id: int) -> EvalResult:
    if genome == "hang":
        time.sleep(2.5)
    elif genome == "slow":
        time.sleep(0.5)
    return EvalResult(STATUS_OK, accuracy=0.5, latency_ms=1.0, params=10)


def _drain(pool: CommPool, n: int, limit: float = 20.0) -> list:
    events: list = []
    end = time.monotonic() + limit
    while len(events) < n and time.monotonic() < end:
        events += pool.wait(0.2)
    return events


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_comm_pool_dead_silent_and_hung_ranks():
    hub = _Hub()
    size = 4
    _fake_worker(hub, 1, size, _ok)
    _fake_worker(hub, 2, size, _ok)
    # rank 3 never starts: no heartbeat, no answer (a hung node)
    pool = CommPool(_FakeWorld(hub, 0, size), timeout_s=1.0, heartbeat_timeout_s=1.5,
                    startup_timeout_s=1.5)
    try:
        assert pool.idle() == 3 and pool.n_alive == 3
        pool.submit(Task(0, "slow", 0))  # -> rank 1, which then dies mid-candidate
        pool.submit(Task(1, "hang", 0))  # -> rank 2, alive but past the deadline
        pool.submit(Task(2, "slow", 0))  # -> rank 3, silent
        hub.kill(1)
        events = _drain(pool, 3)
        by_id = {e.task.cand_id: e for e in events}
        assert isinstance(by_id[0], Died) and by_id[0].worker == "rank-1"
        assert "closed by peer" in by_id[0].reason
        assert isinstance(by_id[1], Done) and by_id[1].result.status == "failed"
        assert by_id[1].result.reason.startswith("timeout") and "rank 2 alive" in \
            by_id[1].result.reason
        assert isinstance(by_id[2], Died) and "no heartbeat" in by_id[2].reason
        assert pool.state_ == {1: "dead", 2: "parked", 3: "dead"} and pool.n_alive == 1
        assert pool.idle() == 0
        # the hung rank answers late: its stale result is dropped and it works again
        end = time.monotonic() + 10
        while pool.idle() == 0 and time.monotonic() < end:
            assert pool.wait(0.2) == []
        assert pool.idle() == 1
        pool.submit(Task(0, "slow", 0, attempt=1))  # the re-queued task, on the live rank
        (ev,) = _drain(pool, 1)
        assert isinstance(ev, Done) and ev.worker == "rank-2" and ev.task.cand_id == 0
        assert ev.result.status == "ok"
    finally:
        pool.close()


def test_search_stops_clearly_when_every_worker_is_gone(tmp_path):
    from test_nas_search import make_search

    hub = _Hub()
    _fake_worker(hub, 1, 3, _ok)
    search = make_search(tmp_path / "run", search={"evaluations": 6})

    def factory(_evaluator):
        pool = CommPool(_FakeWorld(hub, 0, 3), timeout_s=30.0, heartbeat_timeout_s=1.5,
                        startup_timeout_s=1.5)
        threading.Timer(0.5, hub.kill, args=(1,)).start()
        return pool

    search.pool_factory = factory
    with pytest.raises(CommunicationError, match=r"all 2 workers are gone .*rank 2: no heart"):
        search.run()
    # what finished is checkpointed; nothing in flight was recorded as done
    assert (tmp_path / "run" / "state.json").exists()
    h = pd.read_csv(tmp_path / "run" / "history.csv")
    assert (h["status"] == "ok").all() and h["worker"].eq("rank-1").all()


COMM_SCRIPT = """
import os, sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from oncoscale import comm
from oncoscale.nas.workers import CommPool, serve_comm_worker
from test_nas_search import MARK_EXIT, make_search, marked
world = comm.init(timeout=120)
search = make_search({run!r}, search={{"evaluations": {n}, "population": 2}},
                     budget={{"timeout_s": 60.0}})
search.evaluator.marker_dir = {marker!r}
search.seeds = {seeds}
if world.rank == 0:
    search.pool_factory = lambda e: CommPool(world, timeout_s=90.0)
    s = search.run()
    print("RESULT", len(s.finished()), flush=True)
else:
    serve_comm_worker(world, search.evaluator)
world.shutdown()
"""


def _script(tmp_path: Path, n: int, seeds: str) -> Path:
    script = tmp_path / "comm_nas.py"
    script.write_text(COMM_SCRIPT.format(tests=str(TESTS), run=str(tmp_path / "run"), n=n,
                                         marker=str(tmp_path), seeds=seeds))
    return script


@pytest.mark.multiproc
def test_comm_rank_that_dies_has_its_candidate_requeued(tmp_path):
    """3 ranks (env:// launch, one process each): rank 1 exits mid-candidate; rank 2 takes
    the candidate over and the search completes."""
    script = _script(tmp_path, 5, "[marked(MARK_EXIT)]")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(3):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "3", "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, str(script)], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    try:
        outs = [p.communicate(timeout=150) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    codes = [p.returncode for p in procs]
    assert codes == [0, 3, 0], (codes, outs[0][1][-3000:])
    assert (tmp_path / "died-once").exists()
    assert "RESULT 5" in outs[0][0]
    h = pd.read_csv(tmp_path / "run" / "history.csv")
    assert sorted(h["id"]) == list(range(5))  # every candidate once
    first = h.set_index("id").loc[0]
    assert first["status"] == "ok" and first["worker"] == "rank-2" and first["attempts"] == 1
    assert set(h["worker"]) == {"rank-2"}  # nothing finished on the rank that died


def test_restarted_job_resumes_by_itself(tmp_path, monkeypatch):
    """torchrun ends the whole job when one rank fails; with --max-restarts it starts every
    rank again (TORCHELASTIC_RESTART_COUNT > 0) and the search carries on from its
    checkpoint without being told to resume (checked by hand with a real torchrun job)."""
    from test_nas_search import make_search

    log = tmp_path / "calls.log"
    first = make_search(tmp_path / "run", log, search={"evaluations": 3}).run()
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    again = make_search(tmp_path / "run", log, search={"evaluations": 5}).run()
    calls = [int(v) for v in log.read_text().split()]
    assert calls == [0, 1, 2, 3, 4]  # nothing evaluated twice
    assert len(again.finished()) == 5
    assert [c.genome for c in first.finished()] == [c.genome for c in again.finished()[:3]]
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")  # a fresh job is not a restart
    with pytest.raises(ConfigurationError, match="already holds a search"):
        make_search(tmp_path / "run").run()
