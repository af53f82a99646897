# The platform image: provider, node agent and scheduler (the command picks which).
#   docker build -t fastgshare/platform:0.1.0 .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

WORKDIR /opt/fastgshare
COPY setup.py pyproject.toml ./
COPY fastgshare ./fastgshare
COPY gateway_plugin ./gateway_plugin
COPY fast_manager ./fast_manager
COPY fast_profiler ./fast_profiler
COPY fast_scheduler ./fast_scheduler
COPY function_templates ./function_templates
RUN pip install . && useradd --uid 10001 --create-home app \
    && mkdir -p /var/lib/fastgshare/models && chown -R 10001 /var/lib/fastgshare

USER 10001
EXPOSE 8080
CMD ["gunicorn", "--bind", "0.0.0.0:8080", "--workers", "1", "--threads", "16", "--timeout", "0", "gateway_plugin.wsgi:app"]
