# syntax=docker/dockerfile:1
# regserved and regctl for NVIDIA GPUs: CUDA 12.6, Ubuntu 24.04, LibTorch
# 2.6.0+cu126.
#
#   docker build -t regserve/regserved:0.1.0 \
#     --build-arg LIBTORCH_SHA256=<sha256 of the zip below> .
#   docker run --gpus all -p 50051:50051 -p 9464:9464 \
#     -v regserve-data:/var/lib/regserve regserve/regserved:0.1.0
#
# Base images are pinned by tag for readability. In production pin them by
# digest as well (nvidia/cuda:12.6.3-...@sha256:...), so that a re-pushed tag
# cannot change what you build.

ARG CUDA_VERSION=12.6.3
ARG UBUNTU=ubuntu24.04

# ---------------------------------------------------------------- build ----
FROM nvidia/cuda:${CUDA_VERSION}-cudnn-devel-${UBUNTU} AS build

# Ubuntu's libtorch-dev is CPU-only: use the official LibTorch for CUDA
# (C++11 ABI, like Ubuntu's gRPC/Protobuf). The checksum is required: get it
# once from a trusted machine with `curl -fL "$LIBTORCH_URL" | sha256sum`
# and keep it with your build configuration.
ARG LIBTORCH_URL=https://download.pytorch.org/libtorch/cu126/libtorch-cxx11-abi-shared-with-deps-2.6.0%2Bcu126.zip
ARG LIBTORCH_SHA256=
# GPU architectures to compile regserve's CUDA kernel for (Ampere, Hopper).
ARG CUDA_ARCHITECTURES="80;90"
ARG DEBIAN_FRONTEND=noninteractive

RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends ca-certificates curl unzip \
 && rm -rf /var/lib/apt/lists/*

RUN test -n "${LIBTORCH_SHA256}" \
      || { echo "Dockerfile: pass --build-arg LIBTORCH_SHA256=<sha256 of ${LIBTORCH_URL}>" >&2; exit 1; } \
 && curl -fsSL --retry 3 -o /tmp/libtorch.zip "${LIBTORCH_URL}" \
 && echo "${LIBTORCH_SHA256}  /tmp/libtorch.zip" | sha256sum -c - \
 && unzip -q /tmp/libtorch.zip -d /opt \
 && rm /tmp/libtorch.zip \
 && test -f /opt/libtorch/share/cmake/Torch/TorchConfig.cmake

# The distribution packages, from the same script developers and CI use,
# minus the CPU LibTorch and the test-only packages.
COPY scripts/setup.sh /src/scripts/setup.sh
RUN REGSERVE_SETUP_SKIP="libtorch-dev libgtest-dev libgmock-dev python3-grpcio prometheus yamllint clang libclang-rt-dev " \
      bash /src/scripts/setup.sh \
 && rm -rf /var/lib/apt/lists/*

COPY . /src
RUN cmake -S /src -B /build -G Ninja \
      -DCMAKE_BUILD_TYPE=Release \
      -DREGSERVE_BUILD_TESTS=OFF \
      -DCMAKE_PREFIX_PATH=/opt/libtorch \
      -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHITECTURES}" \
 && cmake --build /build \
 && cmake --install /build --prefix /opt/regserve

# The shared libraries the programs need besides LibTorch (which is copied
# whole: cuDNN loads parts of itself with dlopen), glibc and the NVIDIA
# driver (mounted by the container toolkit).
RUN mkdir -p /opt/regserve/lib \
 && ldd /opt/regserve/bin/* \
    | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u \
    | grep -v -E '^/opt/libtorch/' \
    | grep -v -E '/(libc|libm|libdl|libpthread|librt|libresolv|ld-linux-x86-64|libcuda|libnvidia-[a-z-]+)\.so' \
    | xargs -r cp -L -t /opt/regserve/lib \
 && ls /opt/regserve/lib

# -------------------------------------------------------------- runtime ----
FROM nvidia/cuda:${CUDA_VERSION}-runtime-${UBUNTU} AS runtime
ARG DEBIAN_FRONTEND=noninteractive

# elastix/transformix run as child processes; tini reaps them if the daemon
# ever leaves one behind and forwards signals.
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends elastix tini ca-certificates \
 && rm -rf /var/lib/apt/lists/*

COPY --from=build /opt/libtorch/lib /opt/libtorch/lib
COPY --from=build /opt/regserve /opt/regserve
ENV PATH=/opt/regserve/bin:${PATH} \
    LD_LIBRARY_PATH=/opt/regserve/lib:/opt/libtorch/lib:${LD_LIBRARY_PATH}

RUN groupadd --system --gid 10001 regserve \
 && useradd --system --uid 10001 --gid regserve --home-dir /var/lib/regserve \
      --shell /usr/sbin/nologin regserve \
 && mkdir -p /var/lib/regserve && chown regserve:regserve /var/lib/regserve \
 && missing="$(ldd /opt/regserve/bin/* | grep 'not found' | grep -v -E 'libcuda\.so|libnvidia' || true)" \
 && { [ -z "${missing}" ] || { echo "Dockerfile: unresolved libraries: ${missing}" >&2; exit 1; }; } \
 && regserved --version

USER regserve:regserve
WORKDIR /var/lib/regserve
VOLUME ["/var/lib/regserve"]
# gRPC, Prometheus metrics (/metrics)
EXPOSE 50051 9464

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["regctl", "--server", "127.0.0.1:50051", "health"]

ENTRYPOINT ["/usr/bin/tini", "--", "regserved"]
# Inside the container regserved must listen on 0.0.0.0 to be reachable
# through a published port. Without TLS or tokens it refuses to do that
# unless told --insecure_listen_any: fine when the port is published on
# 127.0.0.1 only (as deploy/compose.yaml does). To expose it to a network,
# replace this CMD with --tls_cert/--tls_key and --auth_tokens (see README,
# "Security").
CMD ["--listen=0.0.0.0:50051", "--insecure_listen_any", "--metrics_listen=0.0.0.0:9464", "--data_dir=/var/lib/regserve"]
