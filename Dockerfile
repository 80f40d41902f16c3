# CPU image: `docker build -t vgf .` then `docker run --rm -v $PWD/vgf-home:/data vgf ingest ...`.
FROM python:3.11-slim

# libegl1/libgl1: MuJoCo's headless EGL rendering; libglib2.0-0: gymnasium/mujoco runtime needs.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libegl1 libgl1 libglib2.0-0 make \
 && rm -rf /var/lib/apt/lists/*

# The CPU build of torch, so the image never carries CUDA wheels.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --no-cache-dir "torch==2.13.0" --index-url "${TORCH_INDEX_URL}"

WORKDIR /opt/vgf
COPY pyproject.toml README.md ./
COPY vgfcli vgfcli
COPY stages stages
COPY conf conf
RUN pip install --no-cache-dir .

ENV MUJOCO_GL=egl VGF_HOME=/data
VOLUME /data
WORKDIR /data
ENTRYPOINT ["vgf"]
CMD ["--help"]
