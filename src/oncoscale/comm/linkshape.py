"""A bandwidth-limited loopback for benchmarks: Linux ``tc`` token-bucket shaping of ``lo``.

On one machine every rank talks over the loopback device, whose "bandwidth" is a memory
copy, so a benchmark cannot show what compression buys where the network is the bottleneck.
:func:`shaped_loopback` puts a token-bucket filter (``tc qdisc ... tbf``) on ``lo`` for the
duration of a ``with`` block: real TCP traffic between real ranks (gloo, or MPI's TCP
transport), at a real rate limit. All traffic on ``lo`` shares the one bucket, so ``p``
ranks sending at once share the rate (a shared link, not a switch with a port per rank).

Needs root (or ``CAP_NET_ADMIN``) and the ``tc`` binary; it refuses to replace a qdisc that
is already on ``lo`` and always removes its own on the way out.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

from oncoscale.errors import ConfigurationError

_RATE = re.compile(r"^\d+(\.\d+)?(bit|kbit|mbit|gbit|tbit)$")


def _tc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["tc", *args], capture_output=True, text=True, check=False)


@contextlib.contextmanager
def shaped_loopback(rate: str, *, burst: str = "256kb", latency: str = "100ms",
                    fresh_cost_model: bool = True) -> Iterator[str]:
    """Limit ``lo`` to ``rate`` (tc syntax, e.g. ``"1gbit"``, ``"500mbit"``) inside the block.

    ``fresh_cost_model``: point ``ONCOSCALE_CACHE_DIR`` at a temporary directory so that the
    cost model of :func:`oncoscale.comm.costmodel.calibrated` is measured on the shaped link
    (a cached loopback calibration would mislead ``"auto"``). Yields the qdisc description.
    """
    if not _RATE.match(rate):
        raise ConfigurationError(f"link rate must look like '1gbit' or '500mbit' (tc syntax), "
                                 f"found {rate!r}")
    if shutil.which("tc") is None:
        raise ConfigurationError("shaping the loopback needs the 'tc' binary (iproute2); it "
                                 "was not found on PATH")
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        raise ConfigurationError("shaping the loopback needs root (tc qdisc on lo)")
    current = _tc("qdisc", "show", "dev", "lo").stdout
    if any(w in current for w in ("tbf", "netem", "htb")):
        raise ConfigurationError(f"lo already has a shaping qdisc, refusing to replace it: "
                                 f"{current.strip()}")
    add = _tc("qdisc", "add", "dev", "lo", "root", "handle", "1:", "tbf", "rate", rate,
              "burst", burst, "latency", latency)
    if add.returncode != 0:
        raise ConfigurationError(f"tc could not shape lo to {rate}: {add.stderr.strip()}")
    old_cache = os.environ.get("ONCOSCALE_CACHE_DIR")
    tmp = tempfile.TemporaryDirectory() if fresh_cost_model else None
    try:
        if tmp is not None:
            os.environ["ONCOSCALE_CACHE_DIR"] = tmp.name
        yield _tc("qdisc", "show", "dev", "lo").stdout.strip()
    finally:
        _tc("qdisc", "del", "dev", "lo", "root")
        if tmp is not None:
            if old_cache is None:
                os.environ.pop("ONCOSCALE_CACHE_DIR", None)
            else:
                os.environ["ONCOSCALE_CACHE_DIR"] = old_cache
            tmp.cleanup()
