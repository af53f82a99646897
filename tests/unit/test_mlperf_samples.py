"""The MLPerf harness's requests (preprocessed binary tensors), its step length, and SLO-declaring
deployments (batching in every mode). Pure."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.mlperf import aggregate as agg
from bench.mlperf import modes as md
from bench.mlperf import samples as smp


@pytest.mark.parametrize(("fn", "nbytes", "shape", "dtype"), [
    ("resnet50", 3 * 224 * 224 * 4, "3,224,224", "float32"),
    ("mobilenet", 3 * 96 * 96 * 4, "3,96,96", "float32"),
    ("bert", 128 * 4, "128", "int32"),
])
def test_binary_requests(fn, nbytes, shape, dtype) -> None:
    body, headers = smp.request_for(fn)
    assert len(body) == nbytes and headers["X-Tensor-Shape"] == shape
    assert headers["X-Tensor-Dtype"] == dtype and headers["Content-Type"] == "application/octet-stream"
    assert smp.request_for(fn) == (body, headers)  # seeded: the same bytes every run


def test_bert_ids_are_a_tokenized_sequence() -> None:
    ids = np.frombuffer(smp.request_for("bert")[0], dtype=np.int32)
    assert ids[0] == 101 and ids[101] == 102 and (ids[102:] == 0).all()
    assert ((ids[1:101] >= 1000) & (ids[1:101] < smp.VOCAB)).all()


def test_json_for_the_others() -> None:
    assert "text" in json.loads(smp.request_for("minilm")[0])
    assert smp.request_for("noop")[0] == b"{}"


@pytest.mark.parametrize(("rates", "step_s", "expected"), [
    ({"a": 100.0}, 20.0, 20.0),  # 2000 queries: the nominal step
    ({"a": 100.0, "b": 5.0}, 20.0, 60.0),  # the slowest needs 60 s for 300
    ({"a": 1.0}, 20.0, 80.0),  # at most 4x the step
    ({}, 20.0, 20.0),
])
def test_step_duration(rates, step_s, expected) -> None:
    assert agg.step_duration_s(rates, step_s) == expected


def test_deployments_declare_the_bound_as_their_slo() -> None:
    [[d]] = md.phases(md.Mode.EXCLUSIVE, ["resnet50"], slo_ms={"resnet50": 15.0})
    assert d.body["annotations"]["fastgshare/slo_ms"] == "15"
    assert d.body["envVars"]["FASTGSHARE_SLO_MS"] == "15"
    [group] = md.phases(md.Mode.TIME_SHARING, ["resnet50", "bert"], slo_ms={"resnet50": 15, "bert": 130})
    assert [g.body["envVars"]["FASTGSHARE_SLO_MS"] for g in group] == ["15", "130"]
    [[plain]] = md.phases(md.Mode.EXCLUSIVE, ["resnet50"])
    assert "fastgshare/slo_ms" not in plain.body["annotations"]
