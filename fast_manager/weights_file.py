"""The model store's weights file: safetensors, written and mapped without the safetensors package.

Shared by the python3-torch runtime (replicas write and map the files), the node agent's store and
the GPU model holder (which reads a file onto its GPU). Stdlib and torch only.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch

DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}
FROM_CODE = {v: k for k, v in DTYPES.items()}



class ModelStoreError(RuntimeError):
    """The store could not provide a model (bad file, meta tensors left after loading, ...)."""



def unique_tensors(tensors: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor],
                                                                 dict[str, str]]:
    """Tied tensors (same memory, same view) are stored once; the other names become aliases."""
    seen: dict[tuple, str] = {}
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for name, t in tensors.items():
        key = (t.device.type, t.data_ptr(), t.dtype, tuple(t.shape), tuple(t.stride()))
        if t.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        unique[name] = t
    return unique, aliases


def write_weights(path: Path, tensors: Mapping[str, torch.Tensor],
                  metadata: Mapping[str, str]) -> str:
    """Write ``tensors`` as a safetensors file; returns the sha256 (hex) of its content: the
    tensors' names, types, shapes and bytes (not ``metadata``, so a new version string with the
    same weights names the same content).

    Tensors are laid out by decreasing element size, so every tensor's offset is a multiple of its
    element size and can be viewed in place from the mapping.
    """
    unique, aliases = unique_tensors(tensors)
    order = sorted(unique, key=lambda n: (-unique[n].element_size(), n))
    header: dict[str, object] = {}
    offset = 0
    for name in order:
        t = unique[name]
        if t.dtype not in DTYPES:
            raise ModelStoreError(f"tensor {name!r}: dtype {t.dtype} cannot be stored")
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    digest = hashlib.sha256(json.dumps([header, aliases], sort_keys=True).encode())
    meta = dict(metadata)
    if aliases:
        meta["fastgshare.aliases"] = json.dumps(aliases, sort_keys=True)
    header["__metadata__"] = meta
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % 8)  # data starts 8-aligned
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for name in order:
            t = unique[name].detach().to("cpu").contiguous().reshape(-1)
            data = memoryview(t.view(torch.uint8).numpy()) if t.numel() else b""
            f.write(data)
            digest.update(data)
        f.flush()
        os.fsync(f.fileno())
    return digest.hexdigest()


def read_header(path: Path) -> tuple[dict, int]:
    """(header, data start) of a safetensors file."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(n)), 8 + n


def tensors_of(flat: torch.Tensor, header: Mapping, start: int) -> tuple[dict[str, torch.Tensor],
                                                                          dict[str, str]]:
    """Every tensor of a file whose bytes are ``flat`` as views of it (aliases are the same tensor),
    plus the file's metadata."""
    header = dict(header)
    meta = {str(k): str(v) for k, v in (header.pop("__metadata__", None) or {}).items()}
    out: dict[str, torch.Tensor] = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        out[name] = flat[start + begin:start + end].view(FROM_CODE[info["dtype"]]).view(info["shape"])
    for alias, target in json.loads(meta.get("fastgshare.aliases", "{}")).items():
        out[alias] = out[target]
    return out, meta


def map_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor of the file as a view of one read-only shared mapping (no copy), plus metadata."""
    header, start = read_header(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ) if size else None
    finally:
        os.close(fd)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "buffer is not writable": that is the point
        flat = torch.frombuffer(mm, dtype=torch.uint8) if mm is not None else torch.empty(0)
    return tensors_of(flat, header, start)


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor of the file in one private, writable copy of its bytes, plus metadata."""
    header, start = read_header(path)
    data = bytearray(Path(path).read_bytes())
    flat = torch.frombuffer(data, dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
    return tensors_of(flat, header, start)
