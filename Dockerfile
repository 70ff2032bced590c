# HDAP Studio: the web app and the `hdap` command on a slim Python image, CPU PyTorch.
# Build: docker build -t hdap-studio .   Run: docker run -p 8501:8501 hdap-studio
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HDAP_HOME=/data \
    PYTHONPATH=/opt/hdap

WORKDIR /opt/hdap

# CPU wheels of PyTorch first (the default index would pull the CUDA build, gigabytes),
# then the rest of the pins; pip sees torch already satisfied.
COPY requirements.txt ./
RUN pip install --index-url https://download.pytorch.org/whl/cpu \
        torch==2.14.1 torchvision==0.29.1 \
    && grep -v -E '^(torch|torchvision|playwright|pytest|pytest-xdist|execnet|ruff|oidc-provider-mock)==' requirements.txt > /tmp/req.txt \
    && pip install -r /tmp/req.txt

COPY pyproject.toml README.md ./
COPY hdap_engine ./hdap_engine
COPY app ./app
COPY .streamlit ./.streamlit
COPY sample_data ./sample_data
# Compile UMAP's numba kernels into the image (site-packages caches, readable by the app
# user): otherwise the first fleet map of every new container compiles them (~30 s).
RUN python -c "from hdap_engine.fleet.embedding import warm_up; warm_up()"
# The engine runs from the source tree (PYTHONPATH), next to the app it serves.
RUN useradd --create-home --uid 10001 hdap \
    && mkdir -p /data && chown hdap:hdap /data

USER hdap
EXPOSE 8501
VOLUME ["/data"]

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4).status == 200 else 1)"

CMD ["python", "-m", "hdap_engine", "app", "--port", "8501", "--address", "0.0.0.0"]
