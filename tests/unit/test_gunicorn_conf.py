"""The provider's gunicorn settings: the thread count comes from FASTGSHARE_PROVIDER_THREADS."""

import importlib

import pytest

import gateway_plugin.gunicorn_conf as conf


@pytest.fixture
def reload(monkeypatch):
    """Re-import the settings with the variable set to a value (None: unset); the module is
    re-imported without it afterwards, whatever the test did."""

    def with_value(value):
        if value is None:
            monkeypatch.delenv(conf.THREADS_ENV, raising=False)
        else:
            monkeypatch.setenv(conf.THREADS_ENV, value)
        return importlib.reload(conf)

    yield with_value
    monkeypatch.delenv(conf.THREADS_ENV, raising=False)
    importlib.reload(conf)


def test_default_and_override(reload):
    assert reload(None).threads == 128
    assert reload("8").threads == 8


@pytest.mark.parametrize("bad", ["0", "5000", "many", "-3", ""])
def test_out_of_range_is_refused_naming_the_variable_and_range(reload, bad):
    with pytest.raises(SystemExit, match=r"FASTGSHARE_PROVIDER_THREADS=.*\[1, 4096\]"):
        reload(bad)
