"""The provider's gunicorn settings: the thread count comes from FASTGSHARE_PROVIDER_THREADS."""

import importlib

import pytest

import gateway_plugin.gunicorn_conf as conf


def _reload(monkeypatch, value):
    if value is None:
        monkeypatch.delenv(conf.THREADS_ENV, raising=False)
    else:
        monkeypatch.setenv(conf.THREADS_ENV, value)
    return importlib.reload(conf)


def test_default_and_override(monkeypatch):
    assert _reload(monkeypatch, None).threads == 128
    assert _reload(monkeypatch, "8").threads == 8
    monkeypatch.delenv(conf.THREADS_ENV)
    importlib.reload(conf)


@pytest.mark.parametrize("bad", ["0", "5000", "many", "-3"])
def test_out_of_range_is_refused_naming_the_variable_and_range(monkeypatch, bad):
    with pytest.raises(SystemExit, match=r"FASTGSHARE_PROVIDER_THREADS=.*\[1, 4096\]"):
        _reload(monkeypatch, bad)
    monkeypatch.delenv(conf.THREADS_ENV)
    importlib.reload(conf)
