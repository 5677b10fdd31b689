#!/usr/bin/env bash
# Create .venv at the repo root and install imagesynth into it; idempotent and quick when
# nothing changed. Usage: scripts/setup.sh [runtime|test]
#
# torch is installed first, on its own, so nothing else can pull a different build:
#   CPU (default):  IMAGESYNTH_TORCH="torch==2.13.0"
#   CUDA (GPU):     IMAGESYNTH_TORCH="torch==2.13.0" \
#                   IMAGESYNTH_TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

extras="${1:-runtime}"
torch_spec="${IMAGESYNTH_TORCH:-torch==2.13.0}"
python="${PYTHON:-python3}"

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "imagesynth needs Python >= 3.11 (found: $("$python" --version 2>&1)); set PYTHON=..." >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$python" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi

pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
  echo "==> installing $torch_spec"
  if [ -n "${IMAGESYNTH_TORCH_INDEX_URL:-}" ]; then
    "${pip[@]}" "$torch_spec" --index-url "$IMAGESYNTH_TORCH_INDEX_URL"
  else
    "${pip[@]}" "$torch_spec"
  fi
fi

# Reinstall only when the project's requirements changed.
stamp=".venv/.imagesynth-$extras.stamp"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "==> installing imagesynth ($extras)"
  if [ "$extras" = test ]; then
    "${pip[@]}" -e ".[test]"
  else
    "${pip[@]}" -e .
  fi
  echo "$want" > "$stamp"
fi

# The invisible watermark (src/imagesynth/labels/invisible.py): invisible-watermark declares
# torch and the GUI build of opencv as requirements, so it goes in with --no-deps beside the
# headless opencv and PyWavelets. Without it the service runs, with the invisible mark off.
installed='import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))'
if ! .venv/bin/python -c "$installed" cv2 pywt imwatermark; then
  echo "==> installing the invisible watermark"
  "${pip[@]}" "opencv-python-headless>=4.8" "PyWavelets>=1.4"
  "${pip[@]}" --no-deps "invisible-watermark==0.2.0"
fi

# The web console's browser tests (tests/browser.py) drive Debian's chromium; Playwright's own
# browser download is never used. Installed where apt can (root, or sudo without a password);
# without it those tests are skipped, saying why.
if [ "$extras" = test ] && [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null; then
  as_root=()
  [ "$(id -u)" = 0 ] || as_root=(sudo -n)
  if [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null; then
    echo "==> installing chromium (the console's browser tests)"
    export DEBIAN_FRONTEND=noninteractive
    { "${as_root[@]}" apt-get install -y -qq chromium \
      || { "${as_root[@]}" apt-get update -qq && "${as_root[@]}" apt-get install -y -qq chromium; }
    } >/dev/null 2>&1 || echo "    could not install chromium: the browser tests will be skipped"
  fi
fi
