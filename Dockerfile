# The pipeline on a CUDA machine: `docker run --gpus all -v $PWD:/work sop` runs `dvc repro`.
# torch 2.13.0's default PyPI build targets CUDA 13.0 (torchvision 0.28.0+cu130): the runtime
# base matches it. cuDNN comes with the torch wheels' nvidia-* packages.
FROM nvidia/cuda:13.0.0-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    UV_NO_CACHE=1 \
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
COPY Makefile pyproject.toml README.md ./
COPY requirements ./requirements
COPY pipeline ./pipeline
# The lock of the CUDA build (CPython 3.12 is Ubuntu 24.04's), installed as `make` installs it
# everywhere: every distribution at its locked version and hash, then the project itself.
RUN make install VENV=/opt/venv LOCK=requirements/cuda.txt
ENV PATH=/opt/venv/bin:$PATH

USER sop
WORKDIR /work
# Mount the project at /work; DVC, MLflow and Prefect state stay inside it.
CMD ["dvc", "repro"]
