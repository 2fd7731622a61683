"""``worker=ray`` with a cluster address that cannot be reached is refused at once, in one line."""

from __future__ import annotations

import socket
import time

import pytest

from simulation.evaluation.executors import RayExecutor, check_ray_address
from simulation.evaluation.sources import BenchConfigError


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_address_is_refused_quickly() -> None:
    address = f"ray://127.0.0.1:{_closed_port()}"
    t0 = time.perf_counter()
    with pytest.raises(BenchConfigError, match=rf"worker.address={address}: cannot reach 127.0.0.1:"):
        RayExecutor(address=address)
    assert time.perf_counter() - t0 < 5.0


@pytest.mark.parametrize("address", ["ray://nohost", "10.0.0.1", "ray://host:port"])
def test_a_malformed_address_is_refused(address: str) -> None:
    with pytest.raises(BenchConfigError, match="expected host:port"):
        check_ray_address(address)


def test_a_listening_address_and_local_instances_pass() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        check_ray_address(f"127.0.0.1:{port}")
        check_ray_address(f"ray://127.0.0.1:{port}")
    for address in (None, "auto"):
        check_ray_address(address)


@pytest.mark.parametrize("num_workers", [0, -1, 1.5])
def test_nonsense_actor_counts_are_refused(num_workers: float) -> None:
    with pytest.raises(BenchConfigError, match="worker.num_workers"):
        RayExecutor(num_workers=num_workers)  # type: ignore[arg-type]
