"""Weight versions as bytes: pack tensors into one checksummed blob, serve it, fetch it.

A learner `pack`s its state (name, dtype, shape, raw little-endian buffer per tensor; the engine
never imports torch) into a `WeightManifest` and one blob, and `publish`es both on a
`WeightServer`. An agent's `WeightClient.fetch` asks for the manifest, pulls the blob in
`chunk_bytes` pieces with `window` requests in flight, and verifies every tensor's sha256 before
returning: a version is applied whole or not at all.

Protocol (one request per (envelope, body) pair, envelope `Kind.REQUEST` with an id; replies are
`Kind.REPLY` with the same id):

- `ManifestQuery(min_version)` -> `WeightManifest`. `min_version >= 0` asks for exactly that
  version; a negative one asks for the latest. A version not kept (superseded beyond `keep`, or
  not published yet) is answered `Error(NOT_FOUND)` naming the versions kept.
- `ChunkQuery(version, index)` -> `Chunk(version, index, data=b"")` followed by ONE extra raw frame
  holding the chunk's bytes: the reply is (envelope, body, data). The data frame is sent
  `copy=False` from a view of the published blob, so the server copies nothing, and the client
  receives it straight into its place in the blob it assembles (one copy, by libzmq). A reader
  of the stream takes the frame after a `Chunk` body as its data; every other reply is a plain
  (envelope, body) pair. Errors:
  `NOT_FOUND` (version gone), `BAD_REQUEST` (index out of range, or not a weight request),
  `BAD_MESSAGE` (undecodable).
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Sequence
from typing import Any

import structlog
import trio
import zmq

from engine.security import CurveKeys, apply_client, apply_server, check_bind
from engine.transport import TrioSocket, make_socket
from protocols import (
    MAX_FRAME_BYTES,
    Chunk,
    ChunkQuery,
    Error,
    ErrorCode,
    Kind,
    ManifestQuery,
    ProtocolError,
    TensorEntry,
    WeightManifest,
    check_pairs,
    decode,
    decode_envelope,
    encode,
    encode_envelope,
)

__all__ = [
    "DTYPE_SIZES",
    "WeightClient",
    "WeightError",
    "WeightServer",
    "pack",
    "unpack",
]

log = structlog.get_logger("engine.weights")

DTYPE_SIZES: dict[str, int] = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "complex128": 16,
    "complex64": 8,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint64": 8,
    "uint32": 4,
    "uint16": 2,
    "uint8": 1,
    "bool": 1,
}
"""Bytes per element of the dtypes a manifest may name (torch's names, without "torch.")."""

_HEADROOM = 4096  # envelope and Chunk header beside a chunk's data, under the frame limit
_NOBLOCK = int(zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)
_RCVMORE = int(zmq.RCVMORE)


class WeightError(Exception):
    """A weight version that cannot be used: bad checksum or sizes, gone, or no server."""


# --- packing -------------------------------------------------------------------------------------


def _as_bytes_view(name: str, buf: bytes | bytearray | memoryview) -> memoryview:
    try:
        view = memoryview(buf)
    except TypeError:
        raise WeightError(f"tensor {name!r}: {type(buf).__name__} is not a bytes buffer") from None
    if not view.c_contiguous:
        raise WeightError(f"tensor {name!r}: buffer is not contiguous")
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def _expected_nbytes(name: str, dtype: str, shape: Sequence[int]) -> int:
    size = DTYPE_SIZES.get(dtype)
    if size is None:
        raise WeightError(
            f"tensor {name!r}: unknown dtype {dtype!r} (known: {sorted(DTYPE_SIZES)})"
        )
    if any(not isinstance(d, int) or isinstance(d, bool) or d < 0 for d in shape):
        raise WeightError(f"tensor {name!r}: shape {list(shape)} is not a list of sizes >= 0")
    return math.prod(shape) * size


def pack(
    version: int,
    tensors: Sequence[tuple[str, str, Sequence[int], bytes | memoryview]],
    chunk_bytes: int = 4 << 20,
) -> tuple[WeightManifest, bytes]:
    """Lay the tensors out back to back in one blob and describe them (with sha256) in a manifest.

    Each tensor is (name, dtype, shape, raw little-endian buffer); the buffer's size must match
    dtype and shape."""
    if not 0 < chunk_bytes <= MAX_FRAME_BYTES - _HEADROOM:
        raise WeightError(
            f"chunk_bytes {chunk_bytes} must be in 1..{MAX_FRAME_BYTES - _HEADROOM} "
            "(one chunk travels in one frame)"
        )
    entries: list[TensorEntry] = []
    views: list[memoryview] = []
    seen: set[str] = set()
    offset = 0
    for name, dtype, shape, buf in tensors:
        if name in seen:
            raise WeightError(f"tensor {name!r} appears twice")
        seen.add(name)
        view = _as_bytes_view(name, buf)
        want = _expected_nbytes(name, dtype, shape)
        if view.nbytes != want:
            raise WeightError(
                f"tensor {name!r}: {view.nbytes} bytes given, {dtype} {list(shape)} needs {want}"
            )
        digest = hashlib.sha256(view).hexdigest()
        entries.append(TensorEntry(name, dtype, list(shape), offset, want, digest))
        views.append(view)
        offset += want
    manifest = WeightManifest(version, entries, chunk_bytes, offset)
    return manifest, b"".join(views)


def _check_layout(manifest: WeightManifest) -> None:
    """The manifest itself is coherent: known dtypes, sizes matching shapes, inside the blob."""
    if manifest.chunk_bytes <= 0 or manifest.chunk_bytes > MAX_FRAME_BYTES - _HEADROOM:
        raise WeightError(f"manifest v{manifest.version}: bad chunk_bytes {manifest.chunk_bytes}")
    if manifest.total_bytes < 0:
        raise WeightError(f"manifest v{manifest.version}: negative total_bytes")
    for t in manifest.tensors:
        want = _expected_nbytes(t.name, t.dtype, t.shape)
        if t.nbytes != want:
            raise WeightError(
                f"tensor {t.name!r}: manifest says {t.nbytes} bytes, {t.dtype} {t.shape} is {want}"
            )
        if t.offset < 0 or t.offset + t.nbytes > manifest.total_bytes:
            raise WeightError(
                f"tensor {t.name!r}: bytes {t.offset}..{t.offset + t.nbytes} lie outside the "
                f"{manifest.total_bytes}-byte blob"
            )


def _check_tensor(entry: TensorEntry, blob: memoryview) -> None:
    got = hashlib.sha256(blob[entry.offset : entry.offset + entry.nbytes]).hexdigest()
    if got != entry.sha256:
        raise WeightError(_mismatch(entry, got))


def _mismatch(entry: TensorEntry, got: str) -> str:
    return (
        f"tensor {entry.name!r}: sha256 mismatch "
        f"(manifest {entry.sha256[:12]}..., data {got[:12]}...)"
    )


def unpack(
    manifest: WeightManifest, blob: bytes | bytearray | memoryview, *, verify: bool = True
) -> dict[str, memoryview]:
    """Views of each tensor's bytes in `blob`, after checking the layout, the size and (unless
    `verify` is False) every sha256.

    All or nothing: any mismatch raises `WeightError` naming the tensor. `verify=False` is for a
    blob `WeightClient.fetch` has just returned: it hashed every tensor already, and hashing
    costs about as much as the whole transfer."""
    view = _as_bytes_view("<blob>", blob)
    _check_layout(manifest)
    if view.nbytes != manifest.total_bytes:
        raise WeightError(
            f"weights v{manifest.version}: blob has {view.nbytes} bytes, "
            f"manifest says {manifest.total_bytes}"
        )
    if verify:
        for entry in manifest.tensors:
            _check_tensor(entry, view)
    return {t.name: view[t.offset : t.offset + t.nbytes] for t in manifest.tensors}


def _end(entry: TensorEntry) -> int:
    return entry.offset + entry.nbytes


def chunk_count(manifest: WeightManifest) -> int:
    return -(-manifest.total_bytes // manifest.chunk_bytes)


# --- server --------------------------------------------------------------------------------------


class _Version:
    __slots__ = ("manifest", "blob", "body")

    def __init__(self, manifest: WeightManifest, blob: bytes) -> None:
        self.manifest = manifest
        self.blob = _as_bytes_view("<blob>", blob)
        self.body = encode(manifest)


class WeightServer:
    """Serves the newest `keep` published versions from one ROUTER socket owned by `run()`."""

    def __init__(
        self,
        bind: str = "tcp://127.0.0.1:*",
        *,
        ctx: zmq.Context[Any] | None = None,
        curve: CurveKeys | None = None,
        keep: int = 2,
    ) -> None:
        check_bind(bind, curve)
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.bind = bind
        self.ctx = ctx or zmq.Context.instance()
        self.curve = curve
        self.keep = keep
        self.endpoint = ""
        self.latest = -1
        self.served_chunks = 0
        self._versions: dict[int, _Version] = {}
        self._socket: TrioSocket | None = None

    def publish(self, manifest: WeightManifest, blob: bytes) -> None:
        """Make `manifest`'s version the latest (call from the trio thread). Older versions
        beyond `keep` are dropped; chunks already queued for them are still delivered."""
        if manifest.version <= self.latest:
            raise WeightError(f"version {manifest.version} is not newer than {self.latest}")
        _check_layout(manifest)
        size = _as_bytes_view("<blob>", blob).nbytes
        if size != manifest.total_bytes:
            raise WeightError(
                f"weights v{manifest.version}: blob has {size} bytes, "
                f"manifest says {manifest.total_bytes}"
            )
        self._versions[manifest.version] = _Version(manifest, blob)
        self.latest = manifest.version
        for old in sorted(self._versions)[: -self.keep]:
            del self._versions[old]
        log.info("weights published", version=manifest.version, bytes=manifest.total_bytes)

    @property
    def kept(self) -> list[int]:
        return sorted(self._versions)

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        sock = make_socket(self.ctx, zmq.ROUTER)
        if self.curve is not None:
            apply_server(sock, self.curve)
        try:
            sock.bind(self.bind)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            raise OSError(f"weight server cannot bind {self.bind}: {exc}") from None
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._socket = TrioSocket(sock, self._on_message, name="weights")
        log.info("weight server listening", endpoint=self.endpoint)
        async with trio.open_nursery() as nursery:
            await nursery.start(self._socket.run)
            task_status.started(self.endpoint)

    def _on_message(self, frames: list[bytes]) -> None:
        identity, pairs = frames[0], frames[1:]
        assert self._socket is not None
        send = self._socket.send
        try:
            check_pairs(pairs)
        except ProtocolError as exc:
            send([identity, *_error(0, ErrorCode.BAD_MESSAGE, str(exc))])
            return
        for i in range(0, len(pairs), 2):
            try:
                env = decode_envelope(pairs[i])
                msg = decode(pairs[i + 1])
            except ProtocolError as exc:
                send([identity, *_error(0, ErrorCode.BAD_MESSAGE, str(exc))])
                continue
            if env.kind is not Kind.REQUEST:
                continue
            send([identity, *self._answer(env.id, msg)])

    def _answer(self, msg_id: int, msg: Any) -> list[Any]:
        if isinstance(msg, ChunkQuery):
            v = self._versions.get(msg.version)
            if v is None:
                return _error(msg_id, ErrorCode.NOT_FOUND, self._missing(msg.version))
            cb = v.manifest.chunk_bytes
            if not 0 <= msg.index < chunk_count(v.manifest):
                return _error(
                    msg_id,
                    ErrorCode.BAD_REQUEST,
                    f"weights v{msg.version} have {chunk_count(v.manifest)} chunks, "
                    f"no chunk {msg.index}",
                )
            self.served_chunks += 1
            data = v.blob[msg.index * cb : (msg.index + 1) * cb]
            header = encode(Chunk(msg.version, msg.index, b""))
            return [encode_envelope(Kind.REPLY, msg_id), header, data]
        if isinstance(msg, ManifestQuery):
            version = self.latest if msg.min_version < 0 else msg.min_version
            v = self._versions.get(version)
            if v is None:
                return _error(msg_id, ErrorCode.NOT_FOUND, self._missing(msg.min_version))
            return [encode_envelope(Kind.REPLY, msg_id), v.body]
        return _error(
            msg_id, ErrorCode.BAD_REQUEST, f"a weight server cannot answer {type(msg).__name__}"
        )

    def _missing(self, version: int) -> str:
        if self.latest < 0:
            return "no weights published yet"
        if version > self.latest:
            return f"weights v{version} not published yet (latest v{self.latest})"
        return f"weights v{version} are gone (this server keeps {self.kept})"


def _error(msg_id: int, code: ErrorCode, message: str) -> list[Any]:
    kind = Kind.REPLY if msg_id else Kind.CONTROL
    return [encode_envelope(kind, msg_id), encode(Error(code, message))]


# --- client --------------------------------------------------------------------------------------


class _Dealer:
    """A DEALER owned by the one task that sends and receives on it (the fetching task)."""

    def __init__(self, ctx: zmq.Context[Any], endpoint: str, curve: CurveKeys | None) -> None:
        self.sock = make_socket(ctx, zmq.DEALER)
        if curve is not None:
            apply_client(self.sock, curve)
        self.fd = self.sock.getsockopt(zmq.FD)
        self.sock.connect(endpoint)

    async def send(self, frames: list[bytes]) -> None:
        sock = self.sock
        while True:
            try:
                sock.send_multipart(frames, _NOBLOCK)
                return
            except zmq.Again:
                pass
            if int(sock.getsockopt(_EVENTS)) & _POLLOUT:
                continue
            await trio.lowlevel.wait_readable(self.fd)

    async def readable(self) -> None:
        """Until a message can be received (EVENTS re-read before every park)."""
        while not int(self.sock.getsockopt(_EVENTS)) & _POLLIN:
            await trio.lowlevel.wait_readable(self.fd)

    def close(self) -> None:
        trio.lowlevel.notify_closing(self.fd)
        self.sock.close(linger=0)


class _Hasher:
    """Per-tensor sha256 over the blob's bytes fed in order (any slicing), verified as each
    tensor's last byte goes in."""

    def __init__(self, manifest: WeightManifest) -> None:
        self.todo = sorted(manifest.tensors, key=lambda t: (t.offset, t.nbytes), reverse=True)
        self.active: list[tuple[TensorEntry, Any]] = []
        self.pos = 0
        self.verified = 0
        self.count = len(manifest.tensors)

    def feed(self, data: memoryview) -> None:
        c0, c1 = self.pos, self.pos + len(data)
        todo = self.todo
        while todo and todo[-1].offset < c1:
            self.active.append((todo.pop(), hashlib.sha256()))
        still = []
        for entry, h in self.active:
            a, b = max(entry.offset, c0), min(_end(entry), c1)
            if a < b:
                h.update(data[a - c0 : b - c0])
            if _end(entry) <= c1:
                self._verify(entry, h)
            else:
                still.append((entry, h))
        self.active = still
        self.pos = c1

    def finish(self, total: int) -> None:
        """After the last chunk: the empty tensors at the blob's end, and a final count."""
        if self.pos != total:
            raise WeightError(f"only {self.pos} of {total} bytes arrived")
        for entry in self.todo:
            self._verify(entry, hashlib.sha256())
        if self.active or self.verified != self.count:
            raise WeightError(f"{self.verified} of {self.count} tensors verified")

    def _verify(self, entry: TensorEntry, h: Any) -> None:
        if h.hexdigest() != entry.sha256:
            raise WeightError(_mismatch(entry, h.hexdigest()))
        self.verified += 1


class WeightClient:
    """Fetches one version from a `WeightServer`; each `fetch` opens and closes its own socket.

    The blob is allocated once, at its final size, while the first `window` chunk requests are
    in flight; each chunk's data frame is received straight into its place in it (one copy, by
    libzmq, without the GIL). As the blob's complete prefix grows, a worker thread hashes it
    tensor by tensor (hashlib drops the GIL), overlapping verification with receiving.

    The default `window` of 2 keeps one chunk travelling while another lands. Measured with
    4 MB chunks on loopback, wider windows were no faster and cost CPU: with 8 in flight
    libzmq's 4 MB receive buffers no longer fit what malloc keeps, so about a third of the
    blob's size is page-faulted again on every fetch."""

    def __init__(
        self,
        endpoint: str,
        *,
        ctx: zmq.Context[Any] | None = None,
        curve: CurveKeys | None = None,
        window: int = 2,
        timeout_s: float = 30.0,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.endpoint = endpoint
        self.ctx = ctx or zmq.Context.instance()
        self.curve = curve
        self.window = window
        self.timeout_s = timeout_s

    async def fetch(
        self, version: int | None = None, *, into: bytearray | None = None
    ) -> tuple[WeightManifest, bytearray]:
        """The manifest and verified blob of `version` (None: the latest); all or nothing.

        `into`: a buffer to receive into instead of a fresh one, e.g. the previous version's
        blob once it is applied. Touching fresh memory costs about as much CPU as hashing it,
        and this saves it. Used (and returned) only when its size is the version's; it is
        overwritten, so after a failed fetch its content is garbage."""
        dealer = _Dealer(self.ctx, self.endpoint, self.curve)
        try:
            manifest = await self._manifest(dealer, version)
            return manifest, await _Fetch(self, dealer, manifest).run(into)
        finally:
            dealer.close()

    async def _manifest(self, dealer: _Dealer, version: int | None) -> WeightManifest:
        query = ManifestQuery(-1 if version is None else version)
        await dealer.send([encode_envelope(Kind.REQUEST, 1), encode(query)])
        while True:
            await self._wait(dealer, "the manifest")
            for reply_id, msg in _replies(dealer.sock, self.endpoint, _skip_data):
                if reply_id != 1:
                    continue
                if not isinstance(msg, WeightManifest):
                    raise WeightError(f"{self.endpoint} answered {type(msg).__name__}")
                if version is not None and msg.version != version:
                    raise WeightError(f"asked for weights v{version}, got v{msg.version}")
                _check_layout(msg)
                return msg

    async def _wait(self, dealer: _Dealer, what: str) -> None:
        try:
            with trio.fail_after(self.timeout_s):
                await dealer.readable()
        except trio.TooSlowError:
            raise WeightError(
                f"weight server {self.endpoint} sent nothing for {self.timeout_s:g} s "
                f"while fetching {what} (gone?)"
            ) from None


def _skip_data(sock: zmq.Socket[Any], msg_id: int, chunk: Chunk) -> None:
    sock.recv(_NOBLOCK, copy=False)


def _replies(sock: zmq.Socket[Any], endpoint: str, on_data: Any) -> list[tuple[int, Any]]:
    """The replies of one received message as (id, body). A `Chunk` body is followed by its
    data frame, which `on_data(sock, id, chunk)` must receive before the next reply is read."""
    out: list[tuple[int, Any]] = []
    more = True
    while more:
        header = sock.recv(_NOBLOCK)
        if not sock.getsockopt(_RCVMORE):
            raise WeightError(f"{endpoint} sent a reply with a stray frame")
        body = sock.recv(_NOBLOCK)
        try:
            env = decode_envelope(header)
            msg = decode(body)
        except ProtocolError as exc:
            raise WeightError(f"{endpoint} sent a bad reply: {exc}") from None
        if isinstance(msg, Error):
            raise WeightError(f"weight server {endpoint}: {msg.code.name}: {msg.message}")
        if isinstance(msg, Chunk):
            if not sock.getsockopt(_RCVMORE):
                raise WeightError(f"{endpoint} sent chunk {msg.index} without its data")
            on_data(sock, env.id, msg)
        out.append((env.id, msg))
        more = bool(sock.getsockopt(_RCVMORE))
    return out


class _Fetch:
    """One fetch's chunk traffic and verification (the fetching task owns the socket)."""

    def __init__(self, client: WeightClient, dealer: _Dealer, manifest: WeightManifest) -> None:
        self.client = client
        self.dealer = dealer
        self.manifest = manifest
        self.count = chunk_count(manifest)
        self.asked: dict[int, int] = {}  # request id -> chunk index
        self.ids = itertools.count(2)
        self.next_index = 0  # the next chunk to ask for
        self.arrived = [False] * self.count
        self.prefix = 0  # chunks 0..prefix-1 are in the blob
        self.view = memoryview(bytearray())
        self.failure: list[WeightError] = []

    async def run(self, into: bytearray | None) -> bytearray:
        m = self.manifest
        await self._ask()  # the first window travels while the blob's pages are touched
        reuse = isinstance(into, bytearray) and len(into) == m.total_bytes
        blob = into if reuse and into is not None else bytearray(m.total_bytes)
        self.view = memoryview(blob)
        hasher = _Hasher(m)
        done, progress = trio.open_memory_channel[int](math.inf)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._verify, progress, hasher, nursery.cancel_scope)
            try:
                async with done:
                    await self._receive(done)
            except WeightError as exc:
                self.failure.append(exc)
                nursery.cancel_scope.cancel()
        if self.failure:
            raise self.failure[0]
        hasher.finish(m.total_bytes)
        self.view.release()
        return blob

    async def _ask(self) -> None:
        """Top the window up: all new requests leave in one message."""
        frames: list[bytes] = []
        v = self.manifest.version
        while self.next_index < self.count and len(self.asked) < self.client.window:
            msg_id = next(self.ids)
            frames += [
                encode_envelope(Kind.REQUEST, msg_id),
                encode(ChunkQuery(v, self.next_index)),
            ]
            self.asked[msg_id] = self.next_index
            self.next_index += 1
        if frames:
            await self.dealer.send(frames)

    async def _receive(self, done: trio.MemorySendChannel[int]) -> None:
        m = self.manifest
        what = f"chunks of v{m.version}"
        sock = self.dealer.sock
        while self.asked:
            await self.client._wait(self.dealer, what)
            while int(sock.getsockopt(_EVENTS)) & _POLLIN:
                for msg_id, msg in _replies(sock, self.client.endpoint, self._land):
                    if msg_id in self.asked and not isinstance(msg, Chunk):
                        raise WeightError(
                            f"{self.client.endpoint} answered chunk {self.asked[msg_id]} "
                            f"of v{m.version} with {type(msg).__name__}"
                        )
            if self.prefix < self.count and self.arrived[self.prefix]:
                while self.prefix < self.count and self.arrived[self.prefix]:
                    self.prefix += 1
                done.send_nowait(min(self.prefix * m.chunk_bytes, m.total_bytes))
            await self._ask()

    def _land(self, sock: zmq.Socket[Any], msg_id: int, msg: Chunk) -> None:
        """Receive a chunk's data frame into its place in the blob (or drop a stray one)."""
        index = self.asked.pop(msg_id, None)
        m = self.manifest
        if index is None:
            sock.recv(_NOBLOCK, copy=False)  # a stray reply
            return
        if msg.version != m.version or msg.index != index:
            raise WeightError(
                f"{self.client.endpoint} answered chunk {index} of v{m.version} with {msg}"
            )
        start = index * m.chunk_bytes
        size = min(m.chunk_bytes, m.total_bytes - start)
        got = sock.recv_into(self.view[start : start + size], flags=_NOBLOCK)
        if got != size:
            raise WeightError(f"chunk {index} of v{m.version}: {got} bytes, expected {size}")
        self.arrived[index] = True

    async def _verify(
        self,
        progress: trio.MemoryReceiveChannel[int],
        hasher: _Hasher,
        cancel: trio.CancelScope,
    ) -> None:
        """Hash the blob's newly complete prefix in a worker thread; a mismatch stops the
        fetch."""
        async with progress:
            async for end in progress:
                while True:
                    try:
                        end = progress.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                try:
                    await trio.to_thread.run_sync(hasher.feed, self.view[hasher.pos : end])
                except WeightError as exc:
                    self.failure.append(exc)
                    cancel.cancel()
                    return
