"""The shaped loopback of the comm benchmark: bad arguments, and a real rate limit on lo."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time

import pytest

from oncoscale.comm.linkshape import shaped_loopback
from oncoscale.errors import ConfigurationError


def _lo_qdisc() -> str:
    return subprocess.run(["tc", "qdisc", "show", "dev", "lo"], capture_output=True,
                          text=True, check=False).stdout


def _can_shape() -> bool:
    if shutil.which("tc") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(["tc", "qdisc", "add", "dev", "lo", "root", "handle", "1:", "tbf",
                            "rate", "1gbit", "burst", "256kb", "latency", "100ms"],
                           capture_output=True, check=False)
    if probe.returncode != 0:
        return False
    subprocess.run(["tc", "qdisc", "del", "dev", "lo", "root"], capture_output=True, check=False)
    return True


def test_bad_rate_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="tc syntax"), shaped_loopback("fast"):
        pass


def _send_seconds(nbytes: int) -> float:
    """Seconds to push ``nbytes`` through a TCP connection on 127.0.0.1."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    got = []

    def sink() -> None:
        conn, _ = srv.accept()
        n = 0
        while n < nbytes:
            chunk = conn.recv(1 << 16)
            if not chunk:
                break
            n += len(chunk)
        got.append(n)
        conn.close()

    th = threading.Thread(target=sink)
    th.start()
    cli = socket.create_connection(srv.getsockname())
    t0 = time.perf_counter()
    cli.sendall(b"\0" * nbytes)
    th.join(30)
    elapsed = time.perf_counter() - t0
    cli.close()
    srv.close()
    assert got == [nbytes]
    return elapsed


@pytest.mark.skipif(not _can_shape(), reason="needs root and a working 'tc' to shape lo")
def test_shaped_loopback_limits_the_rate_and_is_removed() -> None:
    nbytes = 4 << 20  # 4 MiB: ~0.67 s at 50 Mbit/s, milliseconds unshaped
    cache_before = os.environ.get("ONCOSCALE_CACHE_DIR")
    with shaped_loopback("50mbit") as qdisc:
        assert "tbf" in qdisc and "50Mbit" in qdisc
        assert os.environ.get("ONCOSCALE_CACHE_DIR") not in (None, cache_before)
        shaped = _send_seconds(nbytes)
        with pytest.raises(ConfigurationError, match="already has a shaping qdisc"), \
                shaped_loopback("1gbit"):
            pass
    assert "tbf" not in _lo_qdisc()
    assert os.environ.get("ONCOSCALE_CACHE_DIR") == cache_before
    # the token bucket lets a 256 KiB burst through, the rest at the rate: >= half of ideal
    assert shaped >= 0.5 * (nbytes - (256 << 10)) * 8 / 50e6
