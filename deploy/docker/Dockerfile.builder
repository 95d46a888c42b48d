# syntax=docker/dockerfile:1
# The artifact build step (`switchyard-build`): import GGUF, train and merge LoRA,
# quantize with llm-compressor. Its own image, as it is its own environment locally:
# llm-compressor pins transformers/compressed-tensors versions that conflict with vLLM.
#   docker build -f deploy/docker/Dockerfile.builder -t switchyard-builder .
#   docker run --rm -v $PWD/models:/models -v $PWD/artifacts:/artifacts switchyard-builder \
#     quantize --method gptq --model /models/smollm2-135m-instruct --out /artifacts/gptq

ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/build
ENV PATH=/opt/build/bin:$PATH
# The torch index decides CPU vs CUDA: quantizing on a GPU is much faster.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
RUN pip install --extra-index-url "$TORCH_INDEX" torch==2.13.0 llmcompressor==0.14.0.1 \
      "peft>=0.13,<1" "gguf>=0.10,<1" "accelerate>=1.0,<2" "tqdm>=4.66,<5" "pyyaml>=6,<7" \
 && pip uninstall -y torchvision torchaudio torchcodec
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY engines ./engines
RUN pip install --no-deps .

FROM ${BASE} AS runtime
# The numeric USER below must match.
ARG UID=10001
RUN useradd --uid "$UID" --create-home --shell /usr/sbin/nologin builder \
 && mkdir -p /models /adapters /artifacts /cache/huggingface \
 && chown -R builder /models /adapters /artifacts /cache
COPY --from=build /opt/build /opt/build
ENV PATH=/opt/build/bin:$PATH HF_HOME=/cache/huggingface PYTHONUNBUFFERED=1
USER 10001
WORKDIR /home/builder
# A batch job, not a server: no port; the check is that the tool imports.
HEALTHCHECK NONE
ENTRYPOINT ["switchyard-build"]
CMD ["--help"]
