"""The local Ray head: find it quickly, join it with the machine's token, start and stop
only the one raypipe started.

``ray.init(address=...)`` retries for minutes when nothing listens at the address, so
raypipe looks for a listening GCS port first and only then joins Ray.

``ray start`` names its head in Ray's current-cluster file (``/tmp/ray/ray_current_cluster``),
which ``ray status``, ``ray.init()`` and ``address="auto"`` read; ``ray stop`` deletes it.
Stopping the head raypipe started does the same, but only while the file still names that
head (another ``ray start`` since then keeps its own), and it names again the cluster it
named before ``raypipe up`` when that one still answers: left behind, it makes
``ray status`` wait ~30 s on the stopped head and a bare ``ray.init()`` try to join it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from raypipe.config import Settings
from raypipe.exceptions import NotRunning

STARTED_MARKER = "ray-started-by-raypipe"
#: Seconds `stop_head` gives each group of Ray processes to exit after SIGTERM.
STOP_GRACE_S = 10.0


def gcs_address(settings: Settings) -> tuple[str, int] | None:
    """The ``(host, port)`` of the Ray cluster the settings name, or None when none is found."""
    address = settings.ray_address
    if address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address

            address = canonicalize_bootstrap_address("auto") or ""
        except Exception:  # no cluster found, or Ray's private API moved
            return None
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return None
    return host or "127.0.0.1", int(port)


def _port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def ray_running(settings: Settings) -> bool:
    """Whether a Ray cluster answers at the settings' address (without joining it)."""
    address = settings.ray_address
    if address == "local" or "://" in address:
        return True  # nothing to probe: let Ray decide
    found = gcs_address(settings)
    return found is not None and _port_open(*found)


def use_local_ray_token() -> None:
    """Use ``~/.ray/auth_token`` unless ``RAY_AUTH_MODE`` says otherwise.

    ``ray start`` turns token authentication on when that file exists, but ``ray.init``
    only sends the token by itself for ``address="auto"``, not for an explicit address:
    without this, joining the head `up` started fails after 20 s of retries. A cluster
    without authentication ignores the token.
    """
    if os.environ.get("RAY_AUTH_MODE"):
        return
    try:
        from ray._private.authentication import authentication_token_setup as auth

        logger = logging.getLogger(auth.__name__)
        level = logger.level
        logger.setLevel(logging.ERROR)  # it warns on stderr that auth is on
        try:
            auth.maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
        finally:
            logger.setLevel(level)
    except Exception:  # Ray's private API moved: fall back to Ray's own behaviour
        pass


def start_head(settings: Settings) -> bool:
    """Start a local Ray head with ``ray start`` unless one answers; returns whether it did.

    Records the head's GCS port in the marker file, so that `stop_head` stops that head
    and no other Ray on this machine.
    """
    if ray_running(settings):
        return False
    command = [
        shutil.which("ray") or "ray",
        "start",
        "--head",
        f"--port={settings.ray_port}",
        "--disable-usage-stats",
        "--dashboard-host=127.0.0.1",
    ]
    if settings.ray_num_cpus is not None:
        command.append(f"--num-cpus={settings.ray_num_cpus}")
    before = read_pointer()
    done = subprocess.run(
        command, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        lines = [line for line in (done.stderr + done.stdout).strip().splitlines() if line]
        raise NotRunning(f"`ray start` failed: {lines[-1] if lines else done.returncode}")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    marker = settings.data_dir / STARTED_MARKER
    marker.write_text(json.dumps(started_record(settings.ray_port, before, read_pointer())))
    return True


def started_record(port: int, before: str | None, after: str | None) -> dict[str, Any]:
    """What the marker keeps of a head `start_head` started: its GCS port, the address
    ``ray start`` wrote to the current-cluster file (when it names that port), and the
    address the file named before."""
    record: dict[str, Any] = {"port": port}
    if after and _port_of(after) == port:
        record["address"] = after
        if before and before != after:
            record["previous"] = before
    return record


def started_here(settings: Settings) -> bool:
    return (settings.data_dir / STARTED_MARKER).exists()


def stop_head(settings: Settings) -> bool:
    """Stop the Ray head that `start_head` started (none if it joined one); returns whether
    it did.

    Unlike ``ray stop``, which ends every Ray process on the machine, this ends only the
    processes of the head on the recorded GCS port, and their children (workers, agents);
    like it, it clears Ray's current-cluster file, if that still names this head.
    """
    marker = settings.data_dir / STARTED_MARKER
    if not marker.exists():
        return False
    try:
        record = json.loads(marker.read_text() or "{}")
        port = int(record.get("port", settings.ray_port))
    except (ValueError, AttributeError):
        record, port = {}, settings.ray_port
    _terminate(_head_processes(port))
    release_pointer(record, port)
    marker.unlink(missing_ok=True)
    return True


# -- Ray's current-cluster file -----------------------------------------------------------


def pointer_file() -> Path | None:
    """Ray's current-cluster file, where ``ray start`` writes its head's address (None if
    Ray's private API moved: then raypipe leaves the file to Ray)."""
    try:
        from ray._common.utils import get_ray_address_file
    except ImportError:
        return None
    return Path(get_ray_address_file(None))


def read_pointer() -> str | None:
    """The address Ray's current-cluster file names, if any."""
    path = pointer_file()
    try:
        return (path.read_text().strip() or None) if path else None
    except OSError:
        return None


def release_pointer(record: Mapping[str, Any], port: int) -> None:
    """After its head stopped, make Ray's current-cluster file stop naming it, as
    ``ray stop`` does; leave the file alone when it names another cluster.

    ``record`` is what `start_head` kept (:func:`started_record`); a marker without an
    address (written before raypipe kept one) matches a file naming ``port`` that no
    longer answers."""
    path = pointer_file()
    named = read_pointer()
    if path is None or named is None:
        return
    ours = record.get("address")
    if ours is not None:
        if named != ours:
            return
    elif _port_of(named) != port or _answers(named):
        return
    previous = record.get("previous")
    with contextlib.suppress(OSError):
        if isinstance(previous, str) and _answers(previous):
            path.write_text(previous)
        else:
            path.unlink(missing_ok=True)


def _port_of(address: str) -> int | None:
    _host, sep, port = address.rpartition(":")
    return int(port) if sep and port.isdigit() else None


def _answers(address: str) -> bool:
    host, _sep, _port = address.rpartition(":")
    port = _port_of(address)
    return port is not None and _port_open(host or "127.0.0.1", port)


def _head_processes(port: int) -> list[Any]:
    """The processes of the local Ray head whose GCS listens on ``port``, with descendants."""
    import psutil  # Ray's vendored copy, on sys.path once ray is imported (by cluster)

    exclude = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    roots = []
    for proc in psutil.process_iter(["cmdline"]):
        args = proc.info["cmdline"] or []
        if proc.pid not in exclude and _names_gcs_port(args, port):
            roots.append(proc)
    found = {proc.pid: proc for proc in roots}
    for proc in roots:
        with contextlib.suppress(psutil.Error):
            found.update((child.pid, child) for child in proc.children(recursive=True))
    return [proc for pid, proc in found.items() if pid not in exclude]


def _names_gcs_port(args: Sequence[str], port: int) -> bool:
    """Whether a command line is one of Ray's for the GCS on ``port``."""

    def names_port(arg: str, flag: str) -> bool:
        return arg.startswith(flag) and arg.rsplit(":", 1)[-1] == str(port)

    if f"--gcs_server_port={port}" in args:  # gcs_server itself
        return True
    if any(names_port(arg, "--gcs-address=") for arg in args):
        return True  # raylet, dashboard, monitors
    # Ray's client server names the GCS with --address, which other programs use too.
    return "ray.util.client.server" in args and any(names_port(a, "--address=") for a in args)


def _terminate(procs: Sequence[Any]) -> None:
    """Stop processes the way ``ray stop`` orders it: raylet, then the rest, then the GCS."""
    import psutil

    def name(proc: Any) -> str:
        try:
            return proc.name()
        except psutil.Error:
            return ""

    raylets = [p for p in procs if name(p) == "raylet"]
    gcs = [p for p in procs if name(p) == "gcs_server"]
    rest = [p for p in procs if p not in raylets and p not in gcs]
    for group in (raylets, rest, gcs):
        for proc in group:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        _gone, alive = psutil.wait_procs(group, timeout=STOP_GRACE_S / 3)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=2)
