"""A small GGUF container reader: header, metadata and tensor directory, tensor bytes memory-mapped.

The `gguf` package's GGUFReader builds a numpy memmap for every metadata string, which takes ~7 s
on SmolLM2's 98k-entry vocabulary and merges; parsing the same header with `struct` takes ~0.1 s.
Block dequantisation still comes from the `gguf` package (gguf.quants).

Layout (GGUF v2/v3, little-endian):
    magic "GGUF" | version u32 | n_tensors u64 | n_kv u64
    n_kv x  (key: string, type: u32, value)          string = u64 length + UTF-8 bytes
    n_tensors x (name: string, n_dims: u32, ne: u64[n_dims], type: u32, offset: u64)
    padding to `general.alignment` (32), then tensor data; offsets are relative to that start
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmzoo.errors import CheckpointError

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NP = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32, 6: np.float32,
       7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}
STRING, ARRAY = 8, 9


@dataclass
class GGUFTensor:
    name: str
    ne: tuple[int, ...]  # dims, innermost first (ne[0] = columns)
    type_id: int
    offset: int  # absolute file offset of the data
    nbytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        """PyTorch order: (rows, cols)."""
        return tuple(reversed(self.ne))

    @property
    def type_name(self) -> str:
        if self.type_id in BLOCK_TYPES:
            return BLOCK_TYPES[self.type_id][0]
        from gguf import GGMLQuantizationType

        try:
            return GGMLQuantizationType(self.type_id).name
        except ValueError:
            return f"type {self.type_id}"


class GGUFFile:
    """A GGUF file's header (metadata, tensor table) parsed once per process: loading the model and
    then its tokenizer reads the ~100k-string header of a vocabulary file only once (keyed by path,
    size and modification time, so a rewritten file is parsed again)."""

    _parsed: dict[tuple, tuple[dict, dict, int]] = {}

    def __init__(self, path) -> None:
        self.path = Path(path)
        st = self.path.stat()
        key = (str(self.path.resolve()), st.st_size, st.st_mtime_ns)
        if key not in self._parsed:
            self._read_header()
            self._parsed.clear()  # keep one: files are opened one model at a time
            self._parsed[key] = (self.metadata, self.tensors, self._size)
        self.metadata, self.tensors, self._size = self._parsed[key]
        self._map: np.memmap | None = None

    def _read_header(self) -> None:
        with open(self.path, "rb") as f:
            magic = f.read(4)
            if magic != b"GGUF":
                raise CheckpointError(f"{self.path} is not a GGUF file (magic {magic!r}, expected b'GGUF')")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                self._size = len(mm)
                mv = memoryview(mm)
                try:
                    self._parse(mv)
                except (struct.error, UnicodeDecodeError, IndexError, ValueError) as e:
                    raise CheckpointError(f"{self.path} has a corrupt or truncated GGUF header ({e})") from None
                finally:
                    mv.release()

    def _parse(self, mv: memoryview) -> None:
        pos = 4

        def take(fmt: str):
            nonlocal pos
            v = struct.unpack_from(fmt, mv, pos)[0]
            pos += struct.calcsize(fmt)
            return v

        def string() -> str:
            nonlocal pos
            n = take("<Q")
            if pos + n > len(mv):
                raise ValueError("string past end of file")
            s = bytes(mv[pos:pos + n]).decode("utf-8")
            pos += n
            return s

        def count(n: int, min_bytes: int, what: str) -> int:
            """A count read from the file, bounded by the bytes left (a corrupt count must fail at once,
            not loop for billions of entries)."""
            if n * min_bytes > len(mv) - pos:
                raise ValueError(f"{what} count {n} cannot fit in the {len(mv) - pos} bytes left")
            return n

        def value(t: int, depth: int = 0) -> Any:
            nonlocal pos
            if t in _SCALARS:
                return take(_SCALARS[t])
            if t == STRING:
                return string()
            if t == ARRAY:
                if depth >= 4:  # GGUF writers nest at most one level; bound the recursion
                    raise ValueError("metadata arrays nested more than 4 deep")
                et, n = take("<I"), take("<Q")
                if et in _NP:  # numeric arrays in one go
                    a = np.frombuffer(mv, dtype=_NP[et], count=count(n, np.dtype(_NP[et]).itemsize, "array"),
                                      offset=pos)
                    pos += a.nbytes
                    return a.tolist()
                return [value(et, depth + 1) for _ in range(count(n, 1, "array"))]
            raise ValueError(f"unknown metadata value type {t}")

        self.version = take("<I")
        if self.version not in (2, 3):
            raise ValueError(f"GGUF version {self.version} is not supported (this reader knows 2 and 3)")
        n_tensors, n_kv = take("<Q"), take("<Q")
        count(n_kv, 8 + 4, "metadata")  # a key's length + a type, at the least
        count(n_tensors, 8 + 4 + 4 + 8, "tensor")  # name length, n_dims, type, offset
        self.metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = string()
            self.metadata[key] = value(take("<I"))
        infos = []
        for _ in range(n_tensors):
            name = string()
            n_dims = take("<I")
            if not 1 <= n_dims <= 4:
                raise ValueError(f"tensor {name!r} has {n_dims} dimensions (GGUF tensors have 1 to 4)")
            ne = tuple(take("<Q") for _ in range(n_dims))
            infos.append((name, ne, take("<I"), take("<Q")))
        align = self.metadata.get("general.alignment", 32)
        if not isinstance(align, int) or align <= 0 or align & (align - 1):
            raise ValueError(f"general.alignment must be a positive power of two, got {align!r}")
        data_start = (pos + align - 1) // align * align
        self.tensors: dict[str, GGUFTensor] = {}
        for name, ne, type_id, off in infos:
            t = GGUFTensor(name, ne, type_id, data_start + off, _nbytes(ne, type_id))
            if t.offset + t.nbytes > self._size:
                raise ValueError(
                    f"tensor {name} needs bytes up to {t.offset + t.nbytes} but the file has {self._size}; truncated"
                )
            self.tensors[name] = t

    def raw(self, t: GGUFTensor) -> np.ndarray:
        """The tensor's bytes as uint8 (rows, bytes per row), memory-mapped."""
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        rows = int(np.prod(t.ne[1:])) if len(t.ne) > 1 else 1
        return self._map[t.offset:t.offset + t.nbytes].reshape(rows, -1)

    def release(self, t: GGUFTensor) -> None:
        """Unmap the pages of a tensor already copied out (they stay in the page cache): mapped pages
        count in the process's RSS, so without this a load peaks at the file's size plus the model's."""
        if self._map is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        m = self._map._mmap  # numpy keeps the mmap.mmap it maps
        start = -(-t.offset // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages inside the tensor only
        end = (t.offset + t.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
        if m is not None and end > start:
            m.madvise(mmap.MADV_DONTNEED, start, end - start)

    def array(self, t: GGUFTensor, chunk_elements: int = 1 << 22) -> np.ndarray:
        """Dequantised float32 array in PyTorch order (rows, cols): an own, writable copy.

        Rows are decoded a chunk at a time (about 16 MB of float32 each) straight into the output,
        so the dequantiser's temporaries stay small: decoding SmolLM2's 49152 x 576 Q8_0 embedding
        whole took ~300 MB of scratch for a 113 MB result."""
        raw = self.raw(t)  # (rows, bytes per row)
        kind = t.type_name
        K = t.ne[0]
        out = np.empty((raw.shape[0], K), dtype=np.float32)
        step = max(1, chunk_elements // max(1, K))
        for r in range(0, raw.shape[0], step):
            part = raw[r:r + step]
            if kind == "F32":
                out[r:r + step] = part.view(np.float32)
            elif kind == "F16":
                out[r:r + step] = part.view(np.float16)
            elif kind == "Q8_0":  # 32-blocks of (f16 scale, 32 x int8): w = d * q, vectorised here
                b = part.reshape(part.shape[0], K // 32, 34)
                d = np.ascontiguousarray(b[..., :2]).view(np.float16).astype(np.float32)  # (rows, K/32, 1)
                out[r:r + step] = (b[..., 2:].view(np.int8) * d).reshape(part.shape[0], K)
            elif kind in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q5_K", "Q3_K", "Q2_K"):  # gguf_quant.dequantize
                from lmzoo.checkpoints.gguf_quant import dequantize

                out[r:r + step] = dequantize(part, kind, K)
            else:
                from gguf import GGMLQuantizationType, quants

                out[r:r + step] = quants.dequantize(part, GGMLQuantizationType(t.type_id))
        return out.reshape(t.shape)


# (name, elements per block, bytes per block) of the common GGML tensor types, by type id (ggml.h's
# enum ggml_type; tests/checkpoints/test_gguf.py checks them against the gguf package). Other ids are
# looked up in the gguf package, whose import costs ~0.3 s of start-up (it pulls in mistral_common).
BLOCK_TYPES = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
               7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110),
               12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 30: ("BF16", 1, 2)}


def _nbytes(ne: tuple[int, ...], type_id: int) -> int:
    if type_id in BLOCK_TYPES:
        _, block, size = BLOCK_TYPES[type_id]
    else:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        try:
            block, size = GGML_QUANT_SIZES[GGMLQuantizationType(type_id)]
        except (ValueError, KeyError):
            raise ValueError(f"unknown tensor type {type_id}") from None
    n = int(np.prod(ne)) if ne else 1
    if n % block:
        raise ValueError(f"{n} elements is not a whole number of {block}-element blocks")
    return n // block * size
