"""Request bodies as tensors for python3-torch handlers: binary tensors, images and JSON.

A request carries its input in one of three forms, told apart by ``Content-Type``:

- ``application/octet-stream``: the tensor's raw bytes (C order, little-endian, as
  ``numpy.ndarray.tobytes()`` or ``torch.Tensor.numpy().tobytes()`` give them), with
  ``X-Tensor-Shape: 3,224,224`` (comma-separated sizes; a leading batch size is allowed) and
  ``X-Tensor-Dtype: float32`` (one of ``DTYPES``; default float32). This is what MLPerf's own
  harnesses send: preprocessed tensors, no parsing beyond a view of the bytes.
- ``image/*`` (JPEG, PNG, ...): decoded, converted to RGB, resized and normalised by the handler's
  numbers (needs Pillow in the function's requirements).
- anything else: JSON, read by the handler (``{"tensor": [[...]]}`` nested lists, ...). So is an
  octet-stream body without ``X-Tensor-Shape``: generic clients label any bytes octet-stream.

Bad input raises ``InputError`` (a ``ValueError``) with a message naming the header and what is
allowed, which handlers answer with 400.
"""

from __future__ import annotations

import io
import math
import warnings

import torch

SHAPE_HEADER = "X-Tensor-Shape"
DTYPE_HEADER = "X-Tensor-Dtype"
DTYPES = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "float64": torch.float64, "uint8": torch.uint8, "int8": torch.int8, "int16": torch.int16,
    "int32": torch.int32, "int64": torch.int64, "bool": torch.bool,
}
"""Values of ``X-Tensor-Dtype`` (numpy's names)."""


class InputError(ValueError):
    """The request's body does not hold the input the handler expects."""


def header(event, name: str) -> str:
    """A request header, whatever its case ("" when absent)."""
    value = _header_or_none(event, name)
    return "" if value is None else str(value)


def _header_or_none(event, name: str):
    headers = event.headers or {}
    value = headers.get(name)
    if value is None:
        low = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == low), None)
    return value


def content_type(event) -> str:
    return header(event, "Content-Type").split(";")[0].strip().lower()


def is_binary(event) -> bool:
    """An ``application/octet-stream`` body that says its shape (``X-Tensor-Shape``). Without the
    header it is read as the handler's JSON: generic clients (aiohttp, requests with bytes, many
    load generators) label any byte body octet-stream."""
    return (content_type(event) == "application/octet-stream"
            and _header_or_none(event, SHAPE_HEADER) is not None)


def is_image(event) -> bool:
    return content_type(event).startswith("image/")


def parse_shape(raw: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(p) for p in raw.replace(" ", "").split(",") if p)
    except ValueError as e:
        raise InputError(f"{SHAPE_HEADER} must be comma-separated sizes, e.g. 3,224,224; "
                         f"got {raw!r}") from e
    if not shape or any(s < 0 for s in shape):
        raise InputError(f"{SHAPE_HEADER} must be comma-separated sizes >= 0, e.g. 3,224,224; "
                         f"got {raw!r}")
    return shape


def binary_tensor(event) -> torch.Tensor:
    """The ``application/octet-stream`` body as a tensor (a read-only view of its bytes: no copy)."""
    shape = parse_shape(header(event, SHAPE_HEADER))
    name = (header(event, DTYPE_HEADER) or "float32").strip().lower()
    dtype = DTYPES.get(name)
    if dtype is None:
        raise InputError(f"{DTYPE_HEADER} must be one of {', '.join(DTYPES)}; got {name!r}")
    body = event.body or b""
    itemsize = torch.empty((), dtype=dtype).element_size()
    expected = math.prod(shape) * itemsize
    if len(body) != expected:
        raise InputError(f"body has {len(body)} bytes; {SHAPE_HEADER} {list(shape)} of {name} "
                         f"needs {expected}")
    if not body:
        return torch.empty(shape, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # not writable: only read, then copied once
        return torch.frombuffer(body, dtype=dtype).view(shape)


def image_tensor(data: bytes, size: int, mean: tuple[float, ...],
                 std: tuple[float, ...]) -> torch.Tensor:
    """An encoded image -> a normalised 1x3xSxS float tensor (Pillow needed)."""
    try:
        from PIL import Image
    except ImportError as e:  # the handler's requirements decide
        raise InputError("image input needs Pillow in the function's requirements") from e
    try:
        img = Image.open(io.BytesIO(data)).convert("RGB").resize((size, size))
    except Exception as e:  # Pillow raises many kinds for a bad file
        raise InputError(f"not a readable image: {e}") from e
    x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).float() / 255.0
    x = x.view(size, size, 3).permute(2, 0, 1)
    m, s = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    return ((x - m) / s).unsqueeze(0)


def image_batch(event, size: int, mean: tuple[float, ...], std: tuple[float, ...]
                ) -> torch.Tensor | None:
    """The input of an image model as an Nx3xSxS float tensor from a binary tensor or an image
    body; None when the body is neither (the handler reads its JSON)."""
    if is_binary(event):
        x = binary_tensor(event)
        x = x.unsqueeze(0) if x.dim() == 3 else x
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, size, size):
            raise InputError(f"{SHAPE_HEADER} must be 3,{size},{size} (or N,3,{size},{size}); "
                             f"got {','.join(map(str, x.shape))}")
        return x if x.dtype == torch.float32 else x.float()
    if is_image(event):
        return image_tensor(event.body, size, mean, std)
    return None
