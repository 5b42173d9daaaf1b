"""Claims: one run computes a shared artefact while the others that ask for it wait.

A tile in the overlap of two or three production units has one time series per reference year,
and the PUs' runs may ask for it at the same moment. Before computing, a run claims the stage at
its place in the store: it creates ``_claims/{stage}.{n}.json`` only if absent (a hard link on
``file://``, a PUT with ``If-None-Match: *`` on S3: exactly one of racing runs creates it). The
claim names its holder (host, process id and start time) and is renewed by a heartbeat thread
while the holder computes; it is *stale* once its renewal is overdue (``seconds``), or at once
when its holder's process on this host is gone (a task killed with ``kill -9`` and retried here
does not wait for the expiry). A stale claim ``n`` is taken over by creating claim ``n + 1``, so
two runs finding the same stale claim cannot both take it. The holder removes its claims after
its commit; the others, polling, see the stage's record and skip.

Readers never see a half-written artefact whether they wait or not: the runner's commit (record
last) guarantees that; claims only keep the work from being done twice.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from clcplus_ops.store import Store, join

log = logging.getLogger(__name__)

FOLDER = "_claims"


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _process_started(pid: int) -> float | None:
    """The start time of process ``pid`` on this host (None when there is none)."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:  # someone else's process: alive
        return -1.0


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    started: float  # the process's start time (a reused pid is another process)
    token: str

    @classmethod
    def me(cls) -> Holder:
        return cls(socket.gethostname(), os.getpid(), _process_started(os.getpid()) or 0.0, uuid.uuid4().hex[:12])

    def gone(self) -> bool:
        """The holder ran on this host and its process is no longer there."""
        if self.host != socket.gethostname():
            return False
        started = _process_started(self.pid)
        return started is None or (started >= 0 and abs(started - self.started) > 1.0)

    def describe(self) -> str:
        return f"process {self.pid} on {self.host}"


def _claim_body(holder: Holder, what: str, seconds: float) -> bytes:
    until = _now() + timedelta(seconds=seconds)
    return json.dumps({"what": what, "host": holder.host, "pid": holder.pid, "started": holder.started,
                       "token": holder.token, "until": until.isoformat()}, sort_keys=True).encode()


def _generation(url: str, stage: str) -> int | None:
    match = re.fullmatch(rf"{re.escape(stage)}\.(\d+)\.json", url.rsplit("/", 1)[-1])
    return int(match[1]) if match else None


class Claim:
    """A claim this process holds (see the module documentation); renewed until released."""

    def __init__(self, store: Store, folder: str, stage: str, generation: int, holder: Holder, what: str,
                 seconds: float):
        self.store, self.folder, self.stage, self.generation = store, folder, stage, generation
        self.holder, self.what, self.seconds = holder, what, seconds
        self.url = join(folder, f"{stage}.{generation:06d}.json")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"claim-{stage}", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.seconds / 4):
            try:
                self.store.write_bytes(self.url, _claim_body(self.holder, self.what, self.seconds))
            except Exception as error:  # noqa: BLE001 - a missed renewal only risks a second computation
                log.warning("%s: claim %s not renewed: %s", self.what, self.url, error)

    def release(self) -> None:
        """Stop renewing; remove this claim and the stale ones it took over."""
        self._stop.set()
        self._thread.join()
        for url in self.store.list(self.folder):
            generation = _generation(url, self.stage)
            if generation is not None and generation <= self.generation:
                try:
                    self.store.delete(url)
                except Exception as error:  # noqa: BLE001 - a leftover claim goes stale and is taken over
                    log.warning("%s: claim %s not removed: %s", self.what, url, error)


def _latest(store: Store, folder: str, stage: str) -> tuple[int, dict | None]:
    """The newest claim's generation (0: none) and content (None: unreadable or just removed)."""
    found = [(g, url) for url in store.list(folder) if (g := _generation(url, stage)) is not None]
    if not found:
        return 0, None
    generation, url = max(found)
    try:
        return generation, json.loads(store.read_bytes(url))
    except (FileNotFoundError, ValueError):
        return generation, None


def _stale(content: dict | None) -> tuple[bool, str]:
    if content is None:
        return True, "unreadable"
    holder = Holder(content["host"], int(content["pid"]), float(content["started"]), content["token"])
    if holder.gone():
        return True, f"its holder, {holder.describe()}, is gone"
    until = datetime.fromisoformat(content["until"])
    if until < _now():
        return True, f"not renewed since {until.isoformat(timespec='seconds')}"
    return False, f"held by {holder.describe()} until at least {until.isoformat(timespec='seconds')}"


def acquire(store: Store, place: str, stage: str, what: str, done: Callable[[], bool], seconds: float = 60.0,
            poll_s: float = 2.0, report_s: float = 30.0) -> Claim | None:
    """Claim ``stage`` at ``place`` (a folder URL) for this process, waiting while another holds
    it; None as soon as ``done()`` says the work is there (committed by another run)."""
    folder = join(place, FOLDER)
    holder = Holder.me()
    waited, reported = time.monotonic(), 0.0
    while True:
        if done():
            return None
        generation, content = _latest(store, folder, stage)
        stale, why = (True, "none") if generation == 0 else _stale(content)
        if stale:
            mine = generation + 1
            if store.write_bytes_if_absent(join(folder, f"{stage}.{mine:06d}.json"),
                                           _claim_body(holder, what, seconds)):
                claim = Claim(store, folder, stage, mine, holder, what, seconds)
                if generation:
                    log.warning("%s: took over claim %d (%s)", what, generation, why)
                if done():  # committed by the holder between our look and our claim
                    claim.release()
                    return None
                return claim
            continue  # another run took it first: look again
        now = time.monotonic()
        if now - reported >= report_s:
            log.info("%s: computed by another run (%s); waiting for its record (%.0f s so far)", what, why,
                     now - waited)
            reported = now
        time.sleep(poll_s)
