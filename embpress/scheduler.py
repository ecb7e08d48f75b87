"""The Dask scheduler address: checked before a run starts, and connected to with a hard deadline.

Something that is not a Dask scheduler at the address (a web server, a closed port, a peer that
sends garbage) must not hang the run or end in a traceback: the connection is made in a helper
thread, and after ``timeout_s`` (plus a grace second or two) the run gives up with one line.
"""
from __future__ import annotations

import re
import threading

from .errors import EmbpressError

_ADDRESS = re.compile(r"(tcp|tls|ws|wss)://(\[[0-9A-Fa-f:]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})")
CONNECT_TIMEOUT_S = 10.0


def check_address(address: str | None) -> None:
    if not address:
        raise EmbpressError("--executor dask needs --scheduler tcp://HOST:PORT")
    m = _ADDRESS.fullmatch(address)
    if m is None or not 1 <= int(m.group(3)) <= 65535:
        raise EmbpressError(f"--scheduler {address!r} is not a scheduler address such as tcp://HOST:8786")


def connect(address: str, timeout_s: float = CONNECT_TIMEOUT_S):
    """A ``distributed.Client`` for the scheduler at ``address``, or EmbpressError within about
    ``timeout_s`` seconds."""
    check_address(address)
    try:
        from distributed import Client
    except ImportError:
        raise EmbpressError("the dask executor needs the 'distributed' package (pip install distributed)") from None
    out: dict = {}

    def attempt() -> None:
        try:
            out["client"] = Client(address, timeout=f"{timeout_s}s")
        except BaseException as exc:  # noqa: BLE001 - MemoryError / ValueError from a foreign peer too
            out["error"] = exc

    thread = threading.Thread(target=attempt, name="dask-connect", daemon=True)
    thread.start()
    thread.join(timeout_s + 2)
    if thread.is_alive():
        raise EmbpressError(f"no Dask scheduler answered at {address} within {timeout_s:g} s "
                            "(is a `dask scheduler` running there?)")
    if "error" in out:
        exc = out["error"]
        raise EmbpressError(f"cannot reach the Dask scheduler at {address} "
                            f"({type(exc).__name__}: {str(exc)[:200] or 'no detail'})")
    return out["client"]
