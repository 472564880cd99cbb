# The web service with the shipped default model, CPU only.
#   docker build -t rbc-morphology .
#   docker run --rm -p 8000:8000 rbc-morphology      # then open http://localhost:8000/
# Settings are RBC_* environment variables (docs/service.md); the models are models/default/
# (the classifier) and models/detector/ (the cell detector).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    RBC_HOST=0.0.0.0 \
    RBC_PORT=8000 \
    RBC_DEVICE=cpu \
    RBC_MODEL_DIR=/app/models/default \
    RBC_DETECTOR_DIR=/app/models/detector \
    RBC_DATABASE_URL=none
# Slides (records of reviewed samples, docs/slides.md) are off in the image by default: on a
# public address they need users and a database that outlives the container. To turn them on,
# set RBC_DATABASE_URL (PostgreSQL, or a SQLite file on a mounted volume) and create an admin
# first, or the service refuses to start (docs/slides.md, "Deployment"), for example:
#   (a new named volume at /app/data takes the image's folder, owned by the service's user rbc)
#   docker run --rm -v rbc-data:/app/data -e RBC_DATABASE_URL=sqlite:////app/data/rbc.sqlite3 \
#       rbc-morphology sh -c '.venv/bin/python -m records upgrade &&
#       .venv/bin/python -m records create-user ann --role admin'
#   docker run -d -p 8000:8000 -v rbc-data:/app/data \
#       -e RBC_DATABASE_URL=sqlite:////app/data/rbc.sqlite3 rbc-morphology

RUN useradd --create-home --uid 10001 rbc \
    && mkdir -p /app/data && chown rbc /app/data
WORKDIR /app

# The same install script as the README and CI, without extras: the serving install, both
# models on ONNX Runtime with numpy around them, no torch and no CUDA libraries (about 0.5 GB;
# `python scripts/installed_size.py`).
COPY pyproject.toml README.md ./
COPY scripts/ scripts/
COPY core/ core/
COPY training/ training/
COPY app/ app/
COPY records/ records/
RUN bash scripts/install.sh \
    && .venv/bin/python -c "import importlib.util as u; assert u.find_spec('torch') is None, 'torch got in'"

COPY templates/ templates/
COPY static/ static/
COPY models/default/ models/default/
COPY models/detector/ models/detector/
# Refuse to build an image whose models do not pass their own hash checks.
RUN .venv/bin/python -c "from core.modelcard import verified_state_path as v; v('models/default')" \
    && .venv/bin/python -c "from core.modelcard import verified_onnx_path as v; assert v('models/default')" \
    && .venv/bin/python -c "from core.detect.learned import verified_detector_path as v; v('models/detector')" \
    && .venv/bin/python -c "from core.detect.learned import verified_detector_onnx as v; assert v('models/detector')"

USER rbc
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/app/.venv/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"RBC_PORT\"]}/readyz', timeout=4)"]
CMD ["/app/.venv/bin/python", "-m", "app"]
