# The pipeline on a CUDA machine: `docker run --gpus all -v $PWD:/work sop` runs `dvc repro`.
# torch 2.13.0's default PyPI build targets CUDA 13.0 (torchvision 0.28.0+cu130): the runtime
# base matches it. cuDNN comes with the torch wheels' nvidia-* packages.
FROM nvidia/cuda:13.0.0-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    NO_ALBUMENTATIONS_UPDATE=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DVC_NO_ANALYTICS=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev git make \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 sop
WORKDIR /opt/sop
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
# The exact pins of pyproject.toml (torch==2.13.0 resolves to its CUDA build here).
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --upgrade pip \
    && /opt/venv/bin/pip install -e .
ENV PATH=/opt/venv/bin:$PATH

USER sop
WORKDIR /work
# Mount the project at /work; DVC, MLflow and Prefect state stay inside it.
CMD ["dvc", "repro"]
