# The platform image: provider, node agent and scheduler (the command picks which).
#   docker build -t fastgshare/platform:0.1.0 .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

WORKDIR /opt/fastgshare
# Exactly the lock (versions and hashes of every package; torch is its CPU build, from the PyTorch
# CPU index), then the project without resolving anything: the image runs what CI tested.
COPY requirements/lock-py311.txt ./requirements/
RUN pip install --require-hashes --no-deps --extra-index-url https://download.pytorch.org/whl/cpu \
      -r requirements/lock-py311.txt
COPY setup.py pyproject.toml ./
COPY fastgshare ./fastgshare
COPY gateway_plugin ./gateway_plugin
COPY fast_manager ./fast_manager
COPY fast_profiler ./fast_profiler
COPY fast_scheduler ./fast_scheduler
COPY function_templates ./function_templates
RUN pip install --no-deps --no-build-isolation . && useradd --uid 10001 --create-home app \
    && mkdir -p /var/lib/fastgshare/models && chown -R 10001 /var/lib/fastgshare

USER 10001
EXPOSE 8080
# The provider's gunicorn settings (FASTGSHARE_PROVIDER_WORKERS workers, default one per core, with
# FASTGSHARE_PROVIDER_THREADS threads each, keep-alive past the gateway's) are the same everywhere:
# gateway_plugin/gunicorn_conf.py.
CMD ["gunicorn", "-c", "python:gateway_plugin.gunicorn_conf", "--bind", "0.0.0.0:8080", "gateway_plugin.wsgi:app"]
