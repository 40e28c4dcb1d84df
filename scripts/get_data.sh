#!/usr/bin/env bash
# Makes Fashion-MNIST available: Debian's package when possible, else torchvision downloads it
# at first use (machines with internet). Never fails the build on its own.
set -uo pipefail
DIR=/usr/share/datasets/fashion-mnist
if [ -f "$DIR/train-images-idx3-ubyte.gz" ] || [ -n "${MIMKIT_DATA:-}" ]; then exit 0; fi
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "==> installing Debian package dataset-fashion-mnist"
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 || true
fi
if [ -f "$DIR/train-images-idx3-ubyte.gz" ]; then echo "==> Fashion-MNIST at $DIR"; else
  echo "==> Fashion-MNIST not installed system-wide; mimkit will try torchvision's download into ./data"; fi
exit 0
