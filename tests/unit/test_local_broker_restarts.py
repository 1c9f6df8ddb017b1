"""`make run`'s supervision of its brokers and worker (`deploy.run_local.Restarts`), on stand-ins."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.local_kafka import BrokerError
from deploy.run_local import Restarts, Worker


class Node:
    """A broker or worker process: running, or exited with a status, and started again by `launch`."""

    def __init__(self, node_id: int) -> None:
        self.node_id = node_id
        self.log_path = Path(f"/tmp/node-{node_id}.log")
        self.running = True
        self.launches = 0
        self.returncode: int | None = None

    def alive(self) -> bool:
        return self.running

    def status(self) -> int | None:
        return self.returncode

    def restartable(self) -> bool:
        return self.node_id != 0 or self.returncode in (3, 70, -9)  # 0: the worker (see `Worker`)

    def crash(self, status: int = -9) -> None:
        self.running, self.returncode = False, status

    def launch(self) -> None:
        self.running, self.returncode = True, None
        self.launches += 1


def supervise(nodes: list[Node], started: float = 0.0, worker: Node | None = None) -> Restarts:
    return Restarts({**{f"broker {n.node_id}": n for n in nodes}, **({"the worker": worker} if worker else {})},
                    started)


def test_a_broker_that_exits_is_started_again_while_the_others_go_on(capsys: pytest.CaptureFixture[str]) -> None:
    nodes = [Node(1), Node(2), Node(3)]
    restarts = supervise(nodes)
    restarts.check(0.0)
    nodes[0].crash()
    restarts.check(100.0)
    assert "broker 1 exited (status -9); the rest go on" in capsys.readouterr().err
    restarts.check(100.0 + Restarts.RESTART_AFTER_S - 1)
    assert nodes[0].launches == 0  # down for a while, as a crash and a supervisor's restart would be
    restarts.check(100.0 + Restarts.RESTART_AFTER_S)
    assert nodes[0].launches == 1 and nodes[0].alive() and [n.launches for n in nodes[1:]] == [0, 0]
    for t in (500.0, 1000.0):  # exits long after each start: started again every time
        nodes[0].crash()
        restarts.check(t)
        restarts.check(t + Restarts.RESTART_AFTER_S)
    assert nodes[0].launches == 3


def test_a_broker_that_keeps_exiting_at_start_stops_the_stack() -> None:
    """GIVE_UP_AFTER exits in a row, each within STABLE_S of its start (the first one's, of the
    stack's start): the stack stops. An exit after STABLE_S of running starts the count again."""
    node = Node(1)
    restarts = supervise([node], started=0.0)
    t = 1.0

    def crash_and_restart() -> None:
        nonlocal t
        node.crash()
        restarts.check(t)
        t += Restarts.RESTART_AFTER_S
        restarts.check(t)
        t += 1.0

    for _ in range(Restarts.GIVE_UP_AFTER - 1):
        crash_and_restart()
    t += Restarts.STABLE_S  # then it runs a while (checked, as every half second): the count restarts
    restarts.check(t)
    for _ in range(Restarts.GIVE_UP_AFTER):
        crash_and_restart()
    assert node.launches == 2 * Restarts.GIVE_UP_AFTER - 1
    node.crash()
    with pytest.raises(BrokerError, match="broker 1 keeps exiting"):
        restarts.check(t)


def test_the_worker_exiting_to_be_restarted_is_started_again(capsys: pytest.CaptureFixture[str]) -> None:
    """The worker exits 3 (stalled) or 70 (evicted while frozen, say) for its supervisor to start it
    again: `make run` does, as for a broker, and the brokers go on."""
    broker, worker = Node(1), Node(0)
    restarts = supervise([broker], worker=worker)
    worker.crash(70)
    restarts.check(100.0)
    assert "the worker exited (status 70); the rest go on" in capsys.readouterr().err
    restarts.check(100.0 + Restarts.RESTART_AFTER_S)
    assert worker.launches == 1 and worker.alive() and broker.launches == 0
    assert "the worker started again" in capsys.readouterr().err


def test_a_worker_that_cannot_start_stops_the_stack_at_once() -> None:
    """Status 1 or 2: a setting the worker refuses, at odds with the cluster: starting it again
    would not help."""
    worker = Node(0)
    restarts = supervise([Node(1)], worker=worker)
    worker.crash(1)
    with pytest.raises(BrokerError, match="the worker exited \\(status 1\\)"):
        restarts.check(100.0)
    assert worker.launches == 0


def test_the_worker_policy_restarts_on_3_70_and_signals_only() -> None:
    w = Worker({}, Path("/dev/null"))
    for status, again in ((3, True), (70, True), (-9, True), (-15, True), (1, False), (2, False), (0, False)):
        w.proc = type("Proc", (), {"poll": lambda self, s=status: s})()  # type: ignore[assignment]
        assert w.restartable() is again, status
