"""Weight versions as bytes: pack/unpack checks, and a WeightServer and WeightClient over tcp
loopback (pipelined chunks, superseded versions, a server that dies mid-fetch, CURVE)."""

from __future__ import annotations

import hashlib
import math
import re
import struct

import msgspec
import pytest
import trio
import zmq
from hypothesis import given
from hypothesis import strategies as st

from engine.security import CurveKeys, SecurityError, write_keys
from engine.weights import (
    DTYPE_SIZES,
    WeightClient,
    WeightError,
    WeightServer,
    pack,
    unpack,
)
from protocols import (
    Chunk,
    ChunkQuery,
    Error,
    ErrorCode,
    Kind,
    ManifestQuery,
    decode,
    decode_envelope,
    encode,
)
from protocols import encode_envelope as envelope

# --- pack / unpack -------------------------------------------------------------------------------


@st.composite
def tensor_lists(draw: st.DrawFn) -> list[tuple[str, str, list[int], bytes]]:
    names = draw(st.lists(st.text(min_size=1, max_size=12), unique=True, max_size=6))
    out = []
    for name in names:
        dtype = draw(st.sampled_from(sorted(DTYPE_SIZES)))
        shape = draw(st.lists(st.integers(0, 5), max_size=3))
        size = math.prod(shape) * DTYPE_SIZES[dtype]
        out.append((name, dtype, shape, draw(st.binary(min_size=size, max_size=size))))
    return out


@given(tensors=tensor_lists(), chunk=st.integers(1, 64), version=st.integers(0, 2**40))
def test_pack_unpack_round_trip(tensors, chunk, version) -> None:
    manifest, blob = pack(version, tensors, chunk_bytes=chunk)
    assert manifest.version == version and manifest.chunk_bytes == chunk
    assert manifest.total_bytes == len(blob) == sum(len(t[3]) for t in tensors)
    assert decode(encode(manifest)) == manifest
    views = unpack(manifest, blob)
    assert list(views) == [t[0] for t in tensors]
    for (name, dtype, shape, data), entry in zip(tensors, manifest.tensors, strict=True):
        assert bytes(views[name]) == data
        assert (entry.name, entry.dtype, entry.shape) == (name, dtype, shape)
        assert entry.sha256 == hashlib.sha256(data).hexdigest()


@given(tensors=tensor_lists().filter(lambda ts: any(t[3] for t in ts)), data=st.data())
def test_any_corrupted_byte_names_its_tensor(tensors, data) -> None:
    manifest, blob = pack(1, tensors)
    position = data.draw(st.integers(0, len(blob) - 1))
    bad = bytearray(blob)
    bad[position] ^= data.draw(st.integers(1, 255))
    owner = next(t for t in manifest.tensors if t.offset <= position < t.offset + t.nbytes)
    with pytest.raises(WeightError, match=re.escape(f"tensor {owner.name!r}: sha256 mismatch")):
        unpack(manifest, bad)


def test_unpack_refuses_wrong_sizes() -> None:
    floats = struct.pack("<4f", 1.0, 2.0, 3.0, 4.0)
    manifest, blob = pack(3, [("w", "float32", [2, 2], floats)])
    with pytest.raises(WeightError, match="blob has 15 bytes, manifest says 16"):
        unpack(manifest, blob[:-1])
    lying = msgspec.structs.replace(
        manifest, tensors=[msgspec.structs.replace(manifest.tensors[0], shape=[3])]
    )
    with pytest.raises(WeightError, match="'w': manifest says 16 bytes, float32 \\[3\\] is 12"):
        unpack(lying, blob)


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ([("a", "float32", [2], b"\0" * 7)], "'a': 7 bytes given, float32 \\[2\\] needs 8"),
        ([("a", "float33", [2], b"\0" * 8)], "'a': unknown dtype 'float33'"),
        ([("a", "int8", [-1], b"")], "'a': shape \\[-1\\]"),
        ([("a", "int8", [1], b"x"), ("a", "int8", [1], b"y")], "'a' appears twice"),
        ([("a", "int8", [1], "x")], "'a': str is not a bytes buffer"),
    ],
)
def test_pack_refuses_bad_tensors(tensors, message) -> None:
    with pytest.raises(WeightError, match=message):
        pack(1, tensors)


def test_pack_accepts_typed_buffers_by_their_bytes() -> None:
    import array

    values = array.array("f", [0.5, 1.5, 2.5])
    manifest, blob = pack(1, [("v", "float32", [3], memoryview(values))])
    assert bytes(unpack(manifest, blob)["v"]) == values.tobytes()
    with pytest.raises(WeightError, match="chunk_bytes 0"):
        pack(1, [], chunk_bytes=0)


# --- server and client ---------------------------------------------------------------------------


def state(version: int, size: int = 10_000) -> tuple[object, bytes]:
    """A small model whose bytes depend on the version."""
    seed = hashlib.sha256(str(version).encode()).digest()
    raw = (seed * (size // len(seed) + 1))[:size]
    return pack(
        version,
        [
            ("embed", "float32", [size // 8], raw[: size // 2]),
            ("bias", "uint8", [7], raw[:7]),
            ("empty", "bfloat16", [0, 4], b""),
            ("head", "float16", [size // 4], raw[size // 2 :]),
        ],
        chunk_bytes=1000,
    )


async def start_server(nursery: trio.Nursery, **kwargs: object) -> WeightServer:
    server = WeightServer(ctx=zmq.Context.instance(), **kwargs)  # type: ignore[arg-type]
    endpoint = await nursery.start(server.run)
    assert endpoint == server.endpoint and endpoint.startswith("tcp://127.0.0.1:")
    return server


async def test_fetch_latest_pinned_and_superseded_versions() -> None:
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, keep=2)
        client = WeightClient(server.endpoint, window=3, timeout_s=10)
        with pytest.raises(WeightError, match="NOT_FOUND: no weights published yet"):
            await client.fetch()
        m1, b1 = state(1)
        server.publish(m1, b1)
        assert server.latest == 1
        manifest, blob = await client.fetch()
        assert manifest == m1 and blob == b1
        assert {k: bytes(v) for k, v in unpack(manifest, blob).items()} == {
            k: bytes(v) for k, v in unpack(m1, b1).items()
        }
        for v in (2, 3):
            server.publish(*state(v))
        assert server.kept == [2, 3] and server.latest == 3
        with pytest.raises(WeightError, match=r"v1 are gone \(this server keeps \[2, 3\]\)"):
            await client.fetch(1)
        with pytest.raises(WeightError, match="v4 not published yet"):
            await client.fetch(4)
        assert (await client.fetch(2)) == state(2)
        assert (await client.fetch()) == state(3)
        with pytest.raises(WeightError, match="not newer than 3"):
            server.publish(*state(3))
        nursery.cancel_scope.cancel()


async def test_concurrent_fetches_and_a_window_wider_than_the_chunks() -> None:
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery)
        manifest, blob = state(7)
        server.publish(manifest, blob)
        assert math.ceil(manifest.total_bytes / manifest.chunk_bytes) == 11
        results = []

        async def one(window: int) -> None:
            results.append(await WeightClient(server.endpoint, window=window).fetch(7))

        async with trio.open_nursery() as fetches:
            for window in (1, 4, 11, 64, 1000):
                fetches.start_soon(one, window)
        assert results == [(manifest, blob)] * 5
        assert server.served_chunks == 5 * 11
        nursery.cancel_scope.cancel()


async def test_corrupted_blob_on_the_server_is_refused() -> None:
    manifest, blob = state(1)
    bad = bytearray(blob)
    bad[-1] ^= 1  # the last tensor, "head"
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery)
        server.publish(manifest, bytes(bad))
        with pytest.raises(WeightError, match="tensor 'head': sha256 mismatch"):
            await WeightClient(server.endpoint).fetch()
        nursery.cancel_scope.cancel()


async def test_server_dying_mid_fetch_is_a_weight_error() -> None:
    scope = trio.CancelScope()

    class Dying(WeightServer):
        def _answer(self, msg_id, msg):  # type: ignore[no-untyped-def]
            if self.served_chunks == 3:
                scope.cancel()  # as if the process died: no more replies, socket closed
            return super()._answer(msg_id, msg)

    async def run_server(task_status: trio.TaskStatus[str]) -> None:
        with scope:
            await server.run(task_status=task_status)

    manifest, blob = state(1)
    server = Dying(ctx=zmq.Context.instance())
    async with trio.open_nursery() as nursery:
        await nursery.start(run_server)
        server.publish(manifest, blob)
        client = WeightClient(server.endpoint, window=1, timeout_s=0.3)
        with pytest.raises(WeightError, match="sent nothing for 0.3 s while fetching chunks of v1"):
            await client.fetch()
    assert scope.cancelled_caught
    assert 3 <= server.served_chunks < 11


async def test_no_server_at_all() -> None:
    client = WeightClient("tcp://127.0.0.1:1", timeout_s=0.2)
    with pytest.raises(WeightError, match="sent nothing for 0.2 s while fetching the manifest"):
        await client.fetch()


async def test_server_answers_bad_requests_with_errors() -> None:
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery)
        server.publish(*state(1))
        ctx = zmq.Context.instance()
        with ctx.socket(zmq.DEALER) as sock:
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(server.endpoint)

            async def ask(*frames: bytes) -> object:
                await trio.to_thread.run_sync(sock.send_multipart, list(frames))
                reply = await trio.to_thread.run_sync(sock.recv_multipart)
                return decode(reply[1])

            out_of_range = await ask(envelope(Kind.REQUEST, 1), encode(ChunkQuery(1, 11)))
            assert out_of_range == Error(
                ErrorCode.BAD_REQUEST, "weights v1 have 11 chunks, no chunk 11"
            )
            wrong = await ask(envelope(Kind.REQUEST, 2), encode(Error(ErrorCode.TIMEOUT, "x")))
            assert isinstance(wrong, Error) and wrong.code is ErrorCode.BAD_REQUEST
            garbage = await ask(envelope(Kind.REQUEST, 3), b"\xc1")
            assert isinstance(garbage, Error) and garbage.code is ErrorCode.BAD_MESSAGE
            odd = await ask(envelope(Kind.REQUEST, 4))
            assert isinstance(odd, Error) and odd.code is ErrorCode.BAD_MESSAGE
            manifest = await ask(envelope(Kind.REQUEST, 5), encode(ManifestQuery(1)))
            assert manifest == state(1)[0]
        nursery.cancel_scope.cancel()


async def test_curve_and_the_loopback_rule(tmp_path) -> None:
    with pytest.raises(SecurityError, match="without CURVE"):
        WeightServer("tcp://0.0.0.0:*")
    keys = CurveKeys(str(write_keys(tmp_path / "keys")))
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, curve=keys)
        server.publish(*state(5))
        assert await WeightClient(server.endpoint, curve=keys).fetch(5) == state(5)
        with pytest.raises(WeightError, match="sent nothing"):
            await WeightClient(server.endpoint, timeout_s=0.3).fetch(5)  # no keys: no answer
        nursery.cancel_scope.cancel()


def test_benchmark_state_is_a_100m_parameter_model() -> None:
    from benchmarks.weight_sync import model_shapes, model_sizes, model_tensors

    params = sum(math.prod(shape) for _, shape in model_shapes(**model_sizes(quick=False)))
    assert 100e6 <= params <= 101e6  # ~400 MB of fp32
    small = model_tensors(**model_sizes(quick=True))
    manifest, blob = pack(1, small, chunk_bytes=256 << 10)
    assert len(unpack(manifest, blob)) == len(small) == 2 + 6 * 2


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (lambda ch, data: [ch], "sent chunk 0 without its data"),
        (lambda ch, data: [ch, data[:-1]], "chunk 0 of v1: 999 bytes, expected 1000"),
        (lambda ch, data: [encode(Chunk(1, 5, b"")), data], "answered chunk 0 of v1 with"),
        (lambda ch, data: [encode(ManifestQuery(0))], "answered chunk 0 of v1 with ManifestQuery"),
    ],
)
async def test_client_refuses_malformed_chunk_replies(reply, message) -> None:
    """A hand-rolled server answers the manifest correctly and the first chunk wrongly."""
    manifest, blob = state(1)
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    port = sock.bind_to_random_port("tcp://127.0.0.1")

    def serve_badly() -> None:
        ident, env, _ = sock.recv_multipart()
        request = decode_envelope(env)
        sock.send_multipart([ident, envelope(Kind.REPLY, request.id), encode(manifest)])
        ident, env, body = sock.recv_multipart()
        request, query = decode_envelope(env), decode(body)
        assert isinstance(query, ChunkQuery) and query.index == 0
        header = [envelope(Kind.REPLY, request.id)]
        sock.send_multipart([ident, *header, *reply(encode(Chunk(1, 0, b"")), blob[:1000])])

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, serve_badly)
            client = WeightClient(f"tcp://127.0.0.1:{port}", window=1, timeout_s=5)
            with pytest.raises(WeightError, match=re.escape(message)):
                await client.fetch()
    finally:
        sock.close()


def test_unpack_without_verify_still_checks_sizes() -> None:
    """`verify=False` (for a blob a fetch has just verified) skips only the hashing."""
    manifest, blob = state(1)
    bad = bytearray(blob)
    bad[0] ^= 1
    with pytest.raises(WeightError, match="tensor 'embed': sha256 mismatch"):
        unpack(manifest, bad)
    assert bytes(unpack(manifest, bad, verify=False)["embed"]) == bytes(bad[:5000])
    with pytest.raises(WeightError, match="blob has 10006 bytes, manifest says 10007"):
        unpack(manifest, bad[:-1], verify=False)


@pytest.mark.parametrize("window", [1, 3, 64])
@pytest.mark.parametrize(("index", "tensor"), [(2, "embed"), (5, "head"), (10, "head")])
async def test_a_corrupted_chunk_mid_fetch_raises_and_returns_nothing(window, index, tensor):
    """The server's blob is intact but one chunk travels damaged: whatever the window, the
    fetch raises naming the tensor that chunk belongs to, and the next fetch is whole."""
    manifest, blob = state(1)
    damaged = True

    class Damaging(WeightServer):
        def _answer(self, msg_id, msg):  # type: ignore[no-untyped-def]
            reply = super()._answer(msg_id, msg)
            if damaged and isinstance(msg, ChunkQuery) and msg.index == index:
                data = bytearray(reply[-1])
                data[len(data) // 2] ^= 0xFF
                reply[-1] = bytes(data)
            return reply

    async with trio.open_nursery() as nursery:
        server = Damaging(ctx=zmq.Context.instance())
        await nursery.start(server.run)
        server.publish(manifest, blob)
        client = WeightClient(server.endpoint, window=window, timeout_s=10)
        with pytest.raises(WeightError, match=f"tensor '{tensor}': sha256 mismatch"):
            await client.fetch(1)
        damaged = False
        assert await client.fetch(1) == (manifest, blob)
        nursery.cancel_scope.cancel()


async def test_stray_chunk_replies_are_skipped_with_their_data() -> None:
    """A reply to a request this fetch never made (an id it does not know) is dropped, data
    frame and all, and the fetch goes on; the blob is exactly the server's."""
    manifest, blob = state(1)
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    count = math.ceil(manifest.total_bytes / manifest.chunk_bytes)

    def serve() -> None:
        ident, env, _ = sock.recv_multipart()
        sock.send_multipart(
            [ident, envelope(Kind.REPLY, decode_envelope(env).id), encode(manifest)]
        )
        for _ in range(count):
            ident, env, body = sock.recv_multipart()
            request, query = decode_envelope(env), decode(body)
            data = blob[query.index * 1000 : (query.index + 1) * 1000]
            stray = [envelope(Kind.REPLY, 10**6), encode(Chunk(1, query.index, b"")), b"x" * 7]
            real = [envelope(Kind.REPLY, request.id), encode(Chunk(1, query.index, b"")), data]
            sock.send_multipart([ident, *stray, *real])

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, serve)
            client = WeightClient(f"tcp://127.0.0.1:{port}", window=1, timeout_s=5)
            assert await client.fetch() == (manifest, blob)
    finally:
        sock.close()


async def test_fetch_into_a_previous_blob_reuses_it_when_the_size_fits() -> None:
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery)
        m1, b1 = state(1)
        server.publish(m1, b1)
        client = WeightClient(server.endpoint, timeout_s=10)
        _, blob = await client.fetch(1)
        server.publish(*state(2))
        manifest, again = await client.fetch(2, into=blob)
        assert again is blob and (manifest, again) == state(2)
        small = bytearray(10)
        manifest, fresh = await client.fetch(1, into=small)
        assert fresh is not small and small == bytearray(10) and (manifest, fresh) == (m1, b1)
        nursery.cancel_scope.cancel()
