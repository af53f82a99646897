"""The profiler's shadow functions are hidden from /system/functions but still hold device share:
the scheduler reads them from /system/fastgshare/replicas as fixed load."""

from fast_scheduler.loop import as_function_view, shadow_functions

SHARE = {"fastgshare/gpu_sm_partition": "50", "fastgshare/gpu_quota_request": "0.4",
         "fastgshare/gpu_quota_limit": "0.6"}
BERT = {"name": "bert", "namespace": "openfaas-fn", "replicas": 1,
        "annotations": {"fastgshare/slo_ms": "130"}}
REPS = {
    "bert": {"name": "bert", "namespace": "openfaas-fn", "profileOf": None, "replicas": 1,
             "share": {}, "configurations": [], "replicaStatus": []},
    "bert-profile": {"name": "bert-profile", "namespace": "openfaas-fn", "profileOf": "bert",
                     "replicas": 1, "share": SHARE, "configurations": [],
                     "replicaStatus": [{"replica": "r1", "device": "cpu", "ready": True, "configId": ""}]},
}


def test_a_shadow_enters_as_a_function_with_no_slo_at_its_own_share():
    shadows = shadow_functions([BERT], REPS)
    assert [s["name"] for s in shadows] == ["bert-profile"]
    view = as_function_view(shadows[0], REPS["bert-profile"])
    assert view.slo_ms is None  # nothing is decided for it
    assert (view.base_config.sm_pct, view.base_config.quota_request_frac,
            view.base_config.quota_limit_frac) == (50, 0.4, 0.6)
    assert [(r.device_id, r.ready) for r in view.running] == [("cpu", True)]
    assert view.base_replicas == 1


def test_user_functions_and_listed_names_are_not_duplicated():
    listed_shadow = {"name": "bert-profile", "namespace": "openfaas-fn"}
    assert shadow_functions([BERT, listed_shadow], REPS) == []
    assert shadow_functions([BERT], {"bert": REPS["bert"]}) == []
