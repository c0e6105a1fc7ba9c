"""The GGUF header parser under corrupt input: every mutation of a valid file either parses or is a
CheckpointError, quickly — never another exception, a hang, or an allocation sized by a corrupt
count. Files are built byte by byte here (the format: magic, version u32, n_tensors u64, n_kv u64,
key/value pairs, tensor infos, padding to general.alignment, data)."""

from __future__ import annotations

import random
import struct
import time

import pytest

from lmzoo.checkpoints.gguf_file import GGUFFile
from lmzoo.errors import CheckpointError

U32, STRING, ARRAY, U64 = 4, 8, 9, 10


def s(text: str) -> bytes:
    b = text.encode()
    return struct.pack("<Q", len(b)) + b


def kv(key: str, vtype: int, payload: bytes) -> bytes:
    return s(key) + struct.pack("<I", vtype) + payload


def gguf(*, version=3, kvs=None, tensors=((("w", (8, 4), 0)),), align=None, data=8 * 4 * 4) -> bytes:
    kvs = list(kvs if kvs is not None else [kv("general.architecture", STRING, s("llama")),
                                            kv("llama.block_count", U32, struct.pack("<I", 1)),
                                            kv("tokens", ARRAY, struct.pack("<IQ", STRING, 2) + s("a") + s("b"))])
    if align is not None:
        kvs.append(kv("general.alignment", U32, struct.pack("<I", align)))
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs)) + b"".join(kvs)
    for name, ne, off in tensors:
        head += s(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", n) for n in ne) + \
            struct.pack("<IQ", 0, off)  # type 0 = F32
    pad = (-len(head)) % 32
    return head + b"\0" * pad + b"\0" * data


def parse(tmp_path, blob: bytes, name="f.gguf"):
    p = tmp_path / name
    p.write_bytes(blob)
    return GGUFFile(p)


def test_valid_file_parses(tmp_path):
    f = parse(tmp_path, gguf())
    assert f.metadata["tokens"] == ["a", "b"] and f.tensors["w"].ne == (8, 4)


@pytest.mark.parametrize("blob, needle", [
    (gguf(version=99), "version 99 is not supported"),
    (gguf(version=1), "version 1"),
    (gguf(align=0), "alignment must be a positive power of two"),
    (gguf(align=24), "alignment"),
    (gguf(kvs=[kv("deep", ARRAY, struct.pack("<IQ", ARRAY, 1) * 6 + struct.pack("<IQ", U32, 0))]), "nested"),
    (gguf(kvs=[kv("huge", ARRAY, struct.pack("<IQ", STRING, 4 * 10**9))]), "array count 4000000000"),
    (gguf(kvs=[kv("huge", ARRAY, struct.pack("<IQ", U64, 10**15))]), "array count"),
    (gguf(tensors=[("w", (8, 4, 1, 1, 1), 0)]), "5 dimensions"),
    (gguf(tensors=[("w", (8, 4), 10**6)]), "truncated"),
    (b"GGUF" + struct.pack("<IQQ", 3, 2**60, 0), "tensor count"),
    (b"GGUF" + struct.pack("<IQQ", 3, 0, 4 * 10**9), "metadata count"),
    (b"GGUF" + struct.pack("<I", 3), "corrupt or truncated"),
])
def test_corrupt_headers_are_one_line(tmp_path, blob, needle):
    t0 = time.time()
    with pytest.raises(CheckpointError) as e:
        parse(tmp_path, blob)
    assert needle in str(e.value) and "\n" not in str(e.value) and time.time() - t0 < 2


def test_random_mutations_parse_or_fail_cleanly(tmp_path):
    """600 seeded mutations of the header (byte flips, u64 fields overwritten with large values,
    truncations): each parses or raises CheckpointError within a second."""
    base = gguf()
    header_len = len(base) - 8 * 4 * 4
    rng = random.Random(0)
    outcomes = {"parsed": 0, "refused": 0}
    for i in range(600):
        b = bytearray(base)
        kind = i % 3
        if kind == 0:
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(4, header_len)] = rng.randrange(256)
        elif kind == 1:
            at = rng.randrange(4, header_len - 8)
            b[at:at + 8] = struct.pack("<Q", rng.choice([2**63, 2**32 + 1, 10**12, rng.randrange(2**64)]))
        else:
            b = b[: rng.randrange(4, len(b))]
        t0 = time.time()
        try:
            parse(tmp_path, bytes(b), name=f"m{i}.gguf")
            outcomes["parsed"] += 1
        except CheckpointError as e:
            assert "\n" not in str(e)
            outcomes["refused"] += 1
        assert time.time() - t0 < 1.0, f"mutation {i} took {time.time() - t0:.1f} s"
    assert outcomes["refused"] > 100 and outcomes["parsed"] > 10, outcomes
