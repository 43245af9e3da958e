"""Reading objects from remote storage without letting a hiccup end a training run.

Two tools, used by the stream, the builder and the manifest reader:

- `retrying(call, what)`: runs a storage call again with exponential backoff while it fails with a transient error
  (connection refused or reset, timeouts, 5xx, a restarting server) for up to `RETRY_DEADLINE_S`; a permanent error
  (missing object, access denied) is raised at once. Each retry is counted in `IO_COUNTS`, so retries show up in the
  training metrics instead of as unexplained slow steps.
- `RemoteReader`: a file-like reader of one object that fetches it in large ranged GETs from a background thread,
  a few blocks ahead of the consumer. Decoding (which releases the GIL) overlaps with the transfer, and a failed block
  is fetched again from its own offset, so a server restart in the middle of a shard costs a pause, not the shard.

The filesystem is always made in the process that reads (`StorageSettings.resolve().filesystem`), never passed in: an
s3fs instance holds an event loop and connections that must not cross a fork, and fsspec caches instances per pid.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import ClientError as AiohttpError
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from srcluster.errors import StorageError
from srcluster.storage import StorageSettings

log = logging.getLogger(__name__)
T = TypeVar("T")

READ_BLOCK = 8 << 20  # bytes per ranged GET: few requests per shard, bounded memory
READ_AHEAD = 2  # blocks fetched ahead of the reader; memory per open object is (READ_AHEAD + 1) * READ_BLOCK
RETRY_DEADLINE_S = 120.0  # a server that is back within this is survived; after it the read fails loudly
DEADLINE_ENV = "SRCLUSTER_S3_RETRY_DEADLINE_S"  # set from the job's srcluster.s3_retry_deadline_s in Ray workers
RETRY_MAX_SLEEP_S = 2.0  # how often a dead server is tried again
# Our own loop does the waiting (and counts it); botocore's retries would hide a dead server for minutes per call.
CLIENT_CONFIG = {"connect_timeout": 5, "read_timeout": 30, "attempts": 2}
PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, ValueError)


class ObjectChanged(ValueError):
    """The object was replaced while being read: reading it again would not help."""


class _Counts:
    """Thread-safe counters for this process (the reader's background threads add to them)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter = Counter()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def snapshot(self) -> Counter:
        with self._lock:
            return Counter(self._counts)

    def get(self, name: str) -> int:
        return self._counts[name]  # one read of an int: atomic under the GIL


IO_COUNTS = _Counts()  # "io_retries": storage calls repeated after a transient error, in this process


def is_transient(exc: BaseException) -> bool:
    """Whether trying the same storage call again later may succeed."""
    if isinstance(exc, PERMANENT):
        return False
    if isinstance(exc, (OSError, TimeoutError, asyncio.TimeoutError, ConnectionError)):
        return True  # s3fs turns 5xx, throttling and most transport errors into OSError
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or status in (408, 429)
    return isinstance(exc, (BotoCoreError, AiohttpError))


def retrying(call: Callable[[], T], what: str, *, deadline_s: float | None = None) -> T:
    """`call()`, repeated with backoff while it fails transiently; StorageError once `deadline_s` has passed."""
    if deadline_s is None:
        deadline_s = float(os.environ.get(DEADLINE_ENV, RETRY_DEADLINE_S))
    start, delay, attempt = time.monotonic(), 0.1, 0
    while True:
        try:
            return call()
        except Exception as exc:
            if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
                settings = StorageSettings.resolve()
                # no keys anywhere (srcluster found none; botocore's chain neither): they do not appear by waiting.
                # With keys configured, botocore losing them is a passing fault and is retried below.
                if settings.access_key is None:
                    stack_hint = "" if settings.endpoint_url else ", or start the local stack with `srcluster stack up`"
                    raise StorageError(
                        f"{what}: no S3 credentials for {settings.endpoint_url or 'AWS S3'}: set AWS_ACCESS_KEY_ID and "
                        f"AWS_SECRET_ACCESS_KEY, or AWS_PROFILE{stack_hint}"
                    ) from None
            if not is_transient(exc):
                raise
            waited = time.monotonic() - start
            if waited + delay > deadline_s:
                endpoint = StorageSettings.resolve().endpoint_url or "the default AWS endpoint"
                raise StorageError(
                    f"{what}: storage at {endpoint} still failing after {waited:.0f} s "
                    f"({exc.__class__.__name__}: {exc})"
                ) from exc
            attempt += 1
            IO_COUNTS.add("io_retries")
            if attempt in (1, 4, 16, 64):  # visible, without a line per retry while a server restarts
                log.warning(
                    "%s failed (%s: %s); retrying for up to %.0f s",
                    what,
                    exc.__class__.__name__,
                    str(exc)[:200],
                    deadline_s - waited,
                )
            time.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SLEEP_S)


def is_remote(fs: Any) -> bool:
    """Whether reads from `fs` cross a network (and so need retries and read-ahead)."""
    return not isinstance(fs, (LocalFileSystem, MemoryFileSystem))


def reader_filesystem(url: str):
    """(fs, path) for reading `url`, with client-side retries short enough that `retrying` does the waiting."""
    return StorageSettings.resolve().filesystem(url, **CLIENT_CONFIG)  # (the client config only applies to s3)


def read_bytes(url: str) -> bytes:
    """The whole object at `url`, with retries where it is remote."""
    fs, path = reader_filesystem(url)

    def read() -> bytes:
        return fs.cat_file(path)  # pyright: ignore[reportReturnType]  # fsspec reads "rb": always bytes

    return read() if not is_remote(fs) else retrying(read, f"reading {url}")


_EOF = object()


class RemoteReader(io.RawIOBase):
    """Sequential reads of one remote object, fetched ahead in blocks by a background thread, retried per block."""

    def __init__(self, fs: Any, path: str, url: str, *, block: int | None = None, ahead: int = READ_AHEAD):
        super().__init__()
        self.url, self.block = url, block or READ_BLOCK
        self.size = retrying(lambda: self._current_size(fs, path), f"opening {url}")
        self._fs, self._path = fs, path
        self._queue: queue.Queue = queue.Queue(maxsize=ahead)
        self._stop = threading.Event()
        self._buffer, self._pos = b"", 0
        self._done = False
        self._thread = threading.Thread(target=self._fetch, name="remote-reader", daemon=True)
        self._thread.start()

    def _fetch(self) -> None:
        offset = 0
        try:
            while offset < self.size and not self._stop.is_set():
                end = min(offset + self.block, self.size)
                data = retrying(
                    lambda start=offset, stop=end: self._get(start, stop), f"reading {self.url} at byte {offset}"
                )
                if not self._put(data):
                    return
                offset = end
            self._put(_EOF)
        except BaseException as exc:  # handed to the reader, which raises it in its own thread
            self._put(exc)

    @staticmethod
    def _current_size(fs: Any, path: str) -> int:
        fs.invalidate_cache(path)  # a listing made earlier in this process may hold an older size
        return fs.size(path)

    def _get(self, start: int, end: int) -> bytes:
        data = self._fs.cat_file(self._path, start=start, end=end)
        if len(data) != end - start:
            if (size := self._current_size(self._fs, self._path)) != self.size:
                raise ObjectChanged(f"{self.url} changed while being read: {size} bytes, was {self.size}")
            # same object, fewer bytes: a connection cut mid-body can look like a short, successful read
            raise ConnectionError(f"short read: {len(data)} of {end - start} bytes")
        return data

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            parts = [self._buffer[self._pos :]]
            self._buffer, self._pos = b"", 0
            while (chunk := self._next_block()) is not None:
                parts.append(chunk)
            return b"".join(parts)
        if self._pos >= len(self._buffer):
            block = self._next_block()
            if block is None:
                return b""
            self._buffer, self._pos = block, 0
        out = self._buffer[self._pos : self._pos + size]
        self._pos += len(out)
        return out

    def readinto(self, target) -> int:
        data = self.read(len(target))
        target[: len(data)] = data
        return len(data)

    def _next_block(self) -> bytes | None:
        if self._done:
            return None
        item = self._queue.get()
        if item is _EOF:
            self._done = True
            return None
        if isinstance(item, BaseException):
            self._done = True
            raise item
        return item

    def close(self) -> None:
        if not self.closed:
            self._stop.set()
            while True:  # unblock a fetcher waiting on a full queue
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
        super().close()


def open_for_reading(url: str) -> io.RawIOBase | Any:
    """A sequential binary reader of `url`: read-ahead with retries for remote objects, a plain file otherwise."""
    fs, path = reader_filesystem(url)
    if is_remote(fs):
        return RemoteReader(fs, path, url)
    return fs.open(path, "rb")
