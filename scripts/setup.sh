#!/usr/bin/env bash
# Creates .venv with torch, torchvision and mimkit[test]; idempotent (stamp file .venv/.mimkit-setup).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
stamp=.venv/.mimkit-setup
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then exit 0; fi
echo "==> creating .venv with $PY"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  echo "==> installing torch + torchvision (from this machine's disk when it has them)"
  case "$(uname -m)" in
    aarch64|arm64) .venv/bin/pip install -q torch==2.9.1 torchvision==0.24.1 ;;
    *) .venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1 || .venv/bin/pip install -q torch torchvision ;;
  esac
fi
echo "==> installing mimkit and its test extra"
.venv/bin/pip install -q -e ".[test]"
# the headless browser of tests/test_explore.py (`mimkit explore` driven through selenium): Debian's
# chromium + chromium-driver; without them (no apt, no root, no network) that one test skips and says why
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "==> installing chromium + chromium-driver (apt-get) for the browser test of mimkit explore"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
      || echo "==> could not install chromium + chromium-driver: the browser test of mimkit explore will skip"
  else
    echo "==> no chromium + chromium-driver and no root apt-get: the browser test of mimkit explore will skip"
  fi
fi
touch "$stamp"
