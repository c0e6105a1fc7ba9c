"""Lazy tensor sources for HF checkpoint directories.

A `TensorSource` is a read-only mapping name -> tensor that loads each tensor only when asked:
safetensors files are memory-mapped (`safe_open`), PyTorch .bin files are opened with
`torch.load(mmap=True)`. Sharded checkpoints are resolved through their index file. Peak memory
while loading is therefore about one copy of the weights in the target dtype.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lmzoo.errors import CheckpointError, ModelNotFoundError, resource_error

SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"


class TensorSource:
    def __init__(self, files: dict[str, Path], opener) -> None:
        self._files = files  # tensor name -> file holding it
        self._opener = opener
        self._handles: dict[Path, object] = {}

    def keys(self) -> list[str]:
        return list(self._files)

    def __contains__(self, name: str) -> bool:
        return name in self._files

    def _handle(self, path: Path):
        if path not in self._handles:
            self._handles[path] = self._opener(path)
        return self._handles[path]

    def get(self, name: str) -> torch.Tensor:
        """A tensor by name; "name[3]" reads row 3 of a stacked tensor (per-expert slices of a 3-D
        experts tensor) without reading the rest."""
        name, index = split_index(name)
        path = self._files[name]
        try:
            h = self._handle(path)
            if index is not None:
                return h.get_slice(name)[index] if hasattr(h, "get_slice") else h[name][index]
            return h.get_tensor(name) if hasattr(h, "get_tensor") else h[name]
        except CheckpointError:
            raise
        except Exception as e:  # truncated data, bad offsets, ...
            raise resource_error(e) or CheckpointError(f"{path.name}: cannot read tensor {name!r} ({_one_line(e)})") from None

    def close(self) -> None:
        self._handles.clear()


def read_json(path: Path):
    """A JSON file's content; a file that is not JSON (or not UTF-8) is one CheckpointError line."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from None


def split_index(name: str) -> tuple[str, int | None]:
    """'experts.gate_up_proj[3]' -> ('experts.gate_up_proj', 3)."""
    if name.endswith("]") and "[" in name:
        base, idx = name[:-1].rsplit("[", 1)
        return base, int(idx)
    return name, None


def _one_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _open_safetensors(path: Path):
    from safetensors import safe_open

    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except Exception as e:
        raise resource_error(e) or CheckpointError(
            f"{path} is not a readable safetensors file ({_one_line(e)}); "
            "expected a complete file written by safetensors"
        ) from None


def _safetensors_names(path: Path) -> list[str]:
    return list(_open_safetensors(path).keys())


def _open_bin(path: Path):
    import zipfile

    try:
        # memory-mapped where the file allows it: the legacy (pre-zip, torch < 1.6) format cannot be
        obj = torch.load(str(path), map_location="cpu", mmap=zipfile.is_zipfile(path), weights_only=True)
    except Exception as e:
        raise resource_error(e) or CheckpointError(
            f"{path} is not a readable PyTorch checkpoint ({_one_line(e)}); "
            "expected a state dict saved with torch.save"
        ) from None
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict; expected a mapping "
                              "of tensor names to tensors saved with torch.save")
    return obj


def _read_index(path: Path) -> dict[str, Path]:
    index = read_json(path)
    if not isinstance(index, dict) or "weight_map" not in index:
        raise CheckpointError(f"{path} is not a valid index file; expected a JSON object with a weight_map")
    weight_map = index["weight_map"]
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{path}: weight_map is a {type(weight_map).__name__}; expected an object "
                              "mapping tensor names to shard file names")
    bad = list(dict.fromkeys(repr(f) for f in weight_map.values()
                             if not isinstance(f, str) or Path(f).name != f or f in ("", ".", "..")))
    if bad:  # a shard is a file next to the index: never a path elsewhere on disk
        raise CheckpointError(f"{path}: weight_map names {', '.join(bad[:3])} as shards; expected file names "
                              "in the checkpoint directory")
    files = {name: path.parent / fname for name, fname in weight_map.items()}
    missing = sorted({p.name for p in files.values() if not p.exists()})
    if missing:
        raise CheckpointError(f"{path.name} names shard files that are missing: {missing}")
    return files


def open_checkpoint_dir(directory: Path) -> TensorSource:
    """Find the weights of an HF checkpoint directory and return a lazy source over them."""
    if (directory / SAFETENSORS_INDEX).exists():
        return TensorSource(_read_index(directory / SAFETENSORS_INDEX), _open_safetensors)
    singles = sorted(directory.glob("*.safetensors"))
    if singles:
        files = {}
        for p in singles:
            for name in _safetensors_names(p):
                files[name] = p
        return TensorSource(files, _open_safetensors)
    if (directory / BIN_INDEX).exists():
        return TensorSource(_read_index(directory / BIN_INDEX), _open_bin)
    bins = sorted(directory.glob("pytorch_model*.bin"))
    if bins:
        files = {}
        for p in bins:
            for name in _open_bin(p):
                files[name] = p
        return TensorSource(files, _open_bin)
    raise ModelNotFoundError(
        f"{directory} has no weights: expected model.safetensors, a sharded safetensors index, "
        "or pytorch_model.bin"
    )
