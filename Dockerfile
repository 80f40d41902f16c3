# CPU image of vgf. Build: `docker build -t vgf .` (or `podman build -t vgf .`);
# run: `docker run --rm -v $PWD/vgf-home:/data vgf pipeline preset=smoke`.
# Behind a mirror or proxy: --build-arg PIP_INDEX_URL=..., TORCH_PIP_ARGS=... and PIP_CERT=... (below); with no registry at all,
# scripts/image-local.sh builds BASE_IMAGE from Debian's packages (debootstrap) and the wheels on this disk.

# Pinned tag: a rebuild gets the same Python and Debian release.
ARG BASE_IMAGE=python:3.11.10-slim-bookworm
FROM ${BASE_IMAGE}

# libegl1/libgl1: MuJoCo's headless EGL rendering; libglib2.0-0: gymnasium/mujoco runtime needs.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libegl1 libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/*

# A venv, so the same steps work on python:*-slim and on a plain Debian base (whose pip is externally managed).
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv

# Where packages come from (build arguments only; nothing of them stays in the image's environment).
ARG PIP_INDEX_URL=https://pypi.org/simple
# Behind a TLS-intercepting proxy: a CA bundle for pip, e.g. `-v /etc/ssl/certs/ca-certificates.crt:/etc/pip-ca.crt:ro
# --build-arg PIP_CERT=/etc/pip-ca.crt` (podman); unset by default, so pip checks against its own bundle.
ARG PIP_CERT
# The CPU build of torch, so the image never carries CUDA wheels.
ARG TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"

# Dependencies in their own layer, read from pyproject.toml alone: a code change does not reinstall them.
COPY pyproject.toml /tmp/pyproject.toml
RUN pip install "torch==2.13.0" ${TORCH_PIP_ARGS} \
 && python3 -c "import tomllib; d = tomllib.load(open('/tmp/pyproject.toml', 'rb')); \
print('\n'.join(d['project']['dependencies'] + d['build-system']['requires']))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt /tmp/pyproject.toml

WORKDIR /opt/vgf
COPY pyproject.toml README.md ./
COPY vgfcli vgfcli
COPY stages stages
COPY conf conf
RUN pip install --no-deps --no-build-isolation . && vgf --version

ENV MUJOCO_GL=egl VGF_HOME=/data
VOLUME /data
WORKDIR /data
ENTRYPOINT ["vgf"]
CMD ["--help"]
