#!/usr/bin/env bash
# Puts bubblewrap (bwrap), the sandbox eval-compile and maxrl run generated code in, at
# .tools/usr/bin/bwrap: Debian's own package, downloaded (no root needed) and unpacked into the
# project, so `make test` needs nothing installed system-wide. Where apt cannot fetch it, a bwrap
# already on the PATH is linked instead; otherwise this fails, saying what to install.
set -euo pipefail
cd "$(dirname "$0")/.."
target=.tools/usr/bin/bwrap
if [ -x "$target" ]; then exit 0; fi
mkdir -p .tools/deb
fetch() { (cd .tools/deb && apt-get download -q bubblewrap >/dev/null 2>&1); }
if command -v apt-get >/dev/null 2>&1; then
  if ! fetch && [ "$(id -u)" = 0 ]; then
    # A fresh machine may have no package lists yet.
    apt-get update -q >/dev/null 2>&1 || true
    fetch || true
  fi
fi
deb=$(ls .tools/deb/bubblewrap_*.deb 2>/dev/null | head -n 1 || true)
if [ -n "$deb" ]; then
  dpkg-deb -x "$deb" .tools
elif command -v bwrap >/dev/null 2>&1; then
  mkdir -p .tools/usr/bin
  ln -sf "$(command -v bwrap)" "$target"
else
  echo "cannot get bubblewrap: apt-get download bubblewrap failed and no bwrap is on the PATH." >&2
  echo "Install it (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap)." >&2
  exit 1
fi
"$target" --version
