"""Which errors are fatal to a device context (the worker), and which are a neighbour's echo."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from fast_manager.device_faults import FAULT_HEADER, is_collateral

INDEX = Path(__file__).resolve().parents[2] / "function_templates" / "python3-torch" / "index.py"
_spec = importlib.util.spec_from_file_location("python3_torch_index", INDEX)
assert _spec is not None and _spec.loader is not None
index = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(index)


@pytest.mark.parametrize(("error", "fatal"), [
    (RuntimeError("CUDA error: an illegal memory access was encountered\nCUDA kernel errors..."), True),
    (RuntimeError("CUDA error: device-side assert triggered"), True),
    (RuntimeError("CUDA error: unspecified launch failure"), True),
    (RuntimeError("CUDA error: misaligned address"), True),
    (RuntimeError("CUDA error: the MPS client has been terminated by the server "
                  "(cudaErrorMpsClientTerminated)"), False),  # see below: classified, as collateral
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), False),  # recoverable
    (ValueError("illegal memory access pattern in the user's JSON"), False),  # not CUDA's
    (KeyError("image_b64"), False),
])
def test_sticky_cuda_errors_are_fatal_others_are_not(error: Exception, fatal: bool) -> None:
    text = index.fatal_device_error(error)
    if "cudaErrorMpsClientTerminated" in str(error):
        assert text is not None and is_collateral(text)  # fatal to this context, a neighbour's fault
        return
    assert (text is not None) is fatal
    if fatal:
        assert "\n" not in text and not is_collateral(text)


def test_the_worker_marks_a_fatal_error_response_for_its_sidecar() -> None:
    status, headers, body = index._error_response(RuntimeError("CUDA error: illegal instruction"))
    assert status == 500 and headers[FAULT_HEADER] == "RuntimeError: CUDA error: illegal instruction"
    assert index.FAULT_HEADER == FAULT_HEADER  # the runtime keeps its own copy (stdlib only)
    status, headers, _ = index._error_response(ZeroDivisionError("division by zero"))
    assert status == 500 and FAULT_HEADER not in headers
