"""The provider's gunicorn settings: workers, threads and read timeout come from the environment,
validated at start with the variable and its range named."""

import importlib

import pytest

import gateway_plugin.gunicorn_conf as conf

VARIABLES = (conf.THREADS_ENV, conf.WORKERS_ENV, conf.READ_TIMEOUT_ENV, conf.WORKER_CLASS_ENV)


@pytest.fixture
def reload(monkeypatch):
    """Re-import the settings with variables set (None: unset); the module is re-imported
    without them afterwards, whatever the test did."""

    def with_values(**values):
        for name in VARIABLES:
            monkeypatch.delenv(name, raising=False)
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        return importlib.reload(conf)

    yield with_values
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    importlib.reload(conf)


def test_defaults(reload):
    c = reload()
    assert c.threads == 128
    assert c.workers == conf.default_workers() >= 1
    assert c.worker_class.read_timeout_s == 10.0
    from gateway_plugin.gunicorn_uvicorn import ProviderUvicornWorker

    assert c.worker_class is ProviderUvicornWorker  # the event loop, with the read timeout
    assert c.worker_class.wsgi_threads == 128  # the Flask side's pool


def test_gevent_stays_selectable_with_the_read_timeout(reload):
    from gateway_plugin.gunicorn_gevent import ProviderGeventWorker

    c = reload(FASTGSHARE_PROVIDER_WORKER_CLASS="gevent", FASTGSHARE_PROVIDER_READ_TIMEOUT_S="4")
    assert c.worker_class is ProviderGeventWorker
    assert c.worker_class.read_timeout_s == 4.0


def test_gthread_stays_selectable_with_the_read_timeout(reload):
    c = reload(FASTGSHARE_PROVIDER_WORKER_CLASS="gthread", FASTGSHARE_PROVIDER_READ_TIMEOUT_S="3")
    assert c.worker_class is conf.ProviderWorker
    assert c.worker_class.read_timeout_s == 3.0


def test_overrides(reload):
    c = reload(FASTGSHARE_PROVIDER_THREADS="8", FASTGSHARE_PROVIDER_WORKERS="3",
               FASTGSHARE_PROVIDER_READ_TIMEOUT_S="2.5")
    assert (c.threads, c.workers, c.worker_class.read_timeout_s) == (8, 3, 2.5)
    assert c.worker_connections == 1000


@pytest.mark.parametrize("variable,bad,pattern", [
    ("FASTGSHARE_PROVIDER_THREADS", "0", r"\[1, 4096\]"),
    ("FASTGSHARE_PROVIDER_THREADS", "5000", r"\[1, 4096\]"),
    ("FASTGSHARE_PROVIDER_THREADS", "many", r"\[1, 4096\]"),
    ("FASTGSHARE_PROVIDER_THREADS", "-3", r"\[1, 4096\]"),
    ("FASTGSHARE_PROVIDER_THREADS", "", r"\[1, 4096\]"),
    ("FASTGSHARE_PROVIDER_WORKERS", "0", r"integer in \[1, 256\]"),
    ("FASTGSHARE_PROVIDER_WORKERS", "1.5", r"integer in \[1, 256\]"),
    ("FASTGSHARE_PROVIDER_WORKERS", "300", r"integer in \[1, 256\]"),
    ("FASTGSHARE_PROVIDER_READ_TIMEOUT_S", "0", r"number in \[0.1, 3600\]"),
    ("FASTGSHARE_PROVIDER_READ_TIMEOUT_S", "soon", r"number in \[0.1, 3600\]"),
    ("FASTGSHARE_PROVIDER_WORKER_CLASS", "sync", r"one of uvicorn, gevent, gthread"),
])
def test_out_of_range_is_refused_naming_the_variable_and_range(reload, variable, bad, pattern):
    with pytest.raises(SystemExit, match=f"{variable}=.*{pattern}"):
        reload(**{variable: bad})
