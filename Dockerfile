# regserved and regctl in two images, from one Dockerfile:
#
#   cpu  Debian 12 with Debian's LibTorch (CPU warp). Built and tested on
#        this project's machines: deploy/docker_test.sh.
#        docker build --target cpu -t regserve:cpu .
#   gpu  CUDA 12.6 on Ubuntu 24.04 with PyTorch's official LibTorch
#        2.6.0+cu126 (CUDA warp); the LibTorch zip's SHA-256 is required.
#        docker build --target gpu --build-arg LIBTORCH_SHA256=<sha256> \
#          -t regserve:gpu .
#        docker run --gpus all -p 127.0.0.1:50051:50051 \
#          -v regserve-data:/var/lib/regserve regserve:gpu
#
# Both share their steps: deploy/docker/build.sh (packages, build, the
# libstdc++-first link check, the runtime package list) and
# deploy/docker/runtime.sh (runtime packages, user, checks). Only the
# LibTorch download is the GPU image's own.
#
# The CPU stages come first: Docker's classic builder (BuildKit off) builds
# every stage before --target, so `--target cpu` never touches the CUDA
# images. BuildKit builds only the stages a target needs.
#
# Base images and the LibTorch source are build arguments: point them at a
# mirror, or pin them by digest (debian:bookworm@sha256:...), so that a
# re-pushed tag cannot change what you build.

ARG DEBIAN_BASE=debian:bookworm
ARG CUDA_DEVEL_BASE=nvidia/cuda:12.6.3-cudnn-devel-ubuntu24.04
ARG CUDA_RUNTIME_BASE=nvidia/cuda:12.6.3-runtime-ubuntu24.04

# ------------------------------------------------------------ cpu-build ----
FROM ${DEBIAN_BASE} AS cpu-build
ARG DEBIAN_FRONTEND=noninteractive
# Parallel compile jobs (empty: all cores); fewer on a small or busy machine.
ARG JOBS=
COPY scripts/setup.sh /src/scripts/setup.sh
COPY deploy/docker/build.sh /src/deploy/docker/build.sh
RUN bash /src/deploy/docker/build.sh deps
COPY . /src
RUN JOBS="${JOBS}" bash /src/deploy/docker/build.sh compile

# ------------------------------------------------------------------ cpu ----
FROM ${DEBIAN_BASE} AS cpu
COPY --from=cpu-build /opt/regserve /opt/regserve
COPY deploy/docker/runtime.sh /tmp/runtime.sh
ENV PATH=/opt/regserve/bin:${PATH} \
    LD_LIBRARY_PATH=/opt/regserve/lib
RUN bash /tmp/runtime.sh && rm /tmp/runtime.sh
USER regserve:regserve
WORKDIR /var/lib/regserve
VOLUME ["/var/lib/regserve"]
# gRPC, Prometheus metrics (/metrics)
EXPOSE 50051 9464
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["regctl", "--server", "127.0.0.1:50051", "health"]
# tini forwards signals to regserved and reaps elastix children.
ENTRYPOINT ["/usr/bin/tini", "--", "regserved"]
# Inside the container regserved listens on 0.0.0.0 to be reachable through
# a published port; without TLS or tokens it refuses that unless told
# --insecure_listen_any: fine when the port is published on 127.0.0.1 only.
# To expose it to a network, replace this CMD with --tls_cert/--tls_key and
# --auth_tokens (README, "Security").
CMD ["--listen=0.0.0.0:50051", "--insecure_listen_any", "--metrics_listen=0.0.0.0:9464", "--data_dir=/var/lib/regserve"]

# ------------------------------------------------------------ gpu-build ----
FROM ${CUDA_DEVEL_BASE} AS gpu-build
ARG DEBIAN_FRONTEND=noninteractive
ARG JOBS=
# The official LibTorch for CUDA (C++11 ABI, like Ubuntu's gRPC/Protobuf):
# Ubuntu's libtorch-dev is CPU-only. The checksum is required: get it once
# from a trusted machine with `curl -fL "$LIBTORCH_URL" | sha256sum`.
ARG LIBTORCH_URL=https://download.pytorch.org/libtorch/cu126/libtorch-cxx11-abi-shared-with-deps-2.6.0%2Bcu126.zip
ARG LIBTORCH_SHA256=
# GPU architectures to compile regserve's CUDA kernel for (Ampere, Hopper).
ARG CUDA_ARCHITECTURES="80;90"
RUN test -n "${LIBTORCH_SHA256}" \
      || { echo "Dockerfile: pass --build-arg LIBTORCH_SHA256=<sha256 of ${LIBTORCH_URL}>" >&2; exit 1; } \
 && apt-get update -q \
 && apt-get install -y -q --no-install-recommends ca-certificates curl unzip \
 && curl -fsSL --retry 3 -o /tmp/libtorch.zip "${LIBTORCH_URL}" \
 && echo "${LIBTORCH_SHA256}  /tmp/libtorch.zip" | sha256sum -c - \
 && unzip -q /tmp/libtorch.zip -d /opt && rm /tmp/libtorch.zip \
 && test -f /opt/libtorch/share/cmake/Torch/TorchConfig.cmake
COPY scripts/setup.sh /src/scripts/setup.sh
COPY deploy/docker/build.sh /src/deploy/docker/build.sh
RUN REGSERVE_SETUP_SKIP=libtorch-dev bash /src/deploy/docker/build.sh deps
COPY . /src
RUN JOBS="${JOBS}" REGSERVE_BUNDLED_PREFIX=/opt/libtorch/ \
    bash /src/deploy/docker/build.sh compile -DCMAKE_PREFIX_PATH=/opt/libtorch \
      -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHITECTURES}"

# ------------------------------------------------------------------ gpu ----
FROM ${CUDA_RUNTIME_BASE} AS gpu
# LibTorch whole: cuDNN loads parts of itself with dlopen.
COPY --from=gpu-build /opt/libtorch/lib /opt/libtorch/lib
COPY --from=gpu-build /opt/regserve /opt/regserve
COPY deploy/docker/runtime.sh /tmp/runtime.sh
ENV PATH=/opt/regserve/bin:${PATH} \
    LD_LIBRARY_PATH=/opt/regserve/lib:/opt/libtorch/lib:${LD_LIBRARY_PATH}
RUN bash /tmp/runtime.sh && rm /tmp/runtime.sh
USER regserve:regserve
WORKDIR /var/lib/regserve
VOLUME ["/var/lib/regserve"]
EXPOSE 50051 9464
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["regctl", "--server", "127.0.0.1:50051", "health"]
ENTRYPOINT ["/usr/bin/tini", "--", "regserved"]
CMD ["--listen=0.0.0.0:50051", "--insecure_listen_any", "--metrics_listen=0.0.0.0:9464", "--data_dir=/var/lib/regserve"]
