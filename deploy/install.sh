#!/usr/bin/env bash
# Installs everything shoal needs on a Debian machine and builds it. As root, from the repository:
#
#   bash deploy/install.sh && npm run demo        (README's first command)
#
# 1. the Debian packages listed in deploy/apt-packages.txt (apt-get update and install, when one is missing)
# 2. the npm dependencies, as package-lock.json pins them (npm ci)
# 3. the build (npm run build)
# Running it again is harmless: installed packages are left as they are, and the rest is redone.
set -euo pipefail

cd "$(dirname "$0")/.."
LIST=deploy/apt-packages.txt

say() { printf '[install] %s\n' "$*"; }
die() {
  printf 'deploy/install.sh: %s\n' "$*" >&2
  exit 1
}

# The packages of the list: the first word of each line without its comment; one word per line.
packages() {
  awk '
    { sub(/#.*/, "") }
    NF > 1 { printf "%s:%d: one package per line, not \"%s\"\n", FILENAME, NR, $0 > "/dev/stderr"; bad = 1 }
    NF == 1 && $1 !~ /^[a-z0-9][a-z0-9+.-]+$/ { printf "%s:%d: not a Debian package name: %s\n", FILENAME, NR, $1 > "/dev/stderr"; bad = 1 }
    NF == 1 { print $1 }
    END { exit bad }
  ' "$LIST"
}

[ "$(id -u)" -eq 0 ] || die "run it as root (it installs Debian packages): sudo bash deploy/install.sh"
command -v apt-get >/dev/null 2>&1 && command -v dpkg-query >/dev/null 2>&1 ||
  die "apt-get not found: this script installs Debian packages; elsewhere, install the packages of $LIST yourself"
command -v node >/dev/null 2>&1 || die "node not found: install Node.js 20 or later first"
command -v npm >/dev/null 2>&1 || die "npm not found: install Node.js 20 or later (with npm) first"
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 20 ] || die "Node.js $(node --version) is too old: shoal needs Node.js 20 or later"

# 1. Debian packages.
list=$(packages) || die "fix $LIST"
mapfile -t wanted <<<"$list"
missing=()
for p in "${wanted[@]}"; do
  [ -n "$p" ] || continue
  if [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" != "installed" ]; then missing+=("$p"); fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends "${missing[@]}"
else
  say "Debian packages: all ${#wanted[@]} of $LIST are installed"
fi

# 2. npm dependencies, exactly as the lock file pins them.
say "npm ci"
npm ci --no-audit --no-fund

# 3. Build (generated code, then TypeScript to dist/).
say "npm run build"
npm run build --silent

say "done: 'npm run demo' runs the demo, 'npm test' the tests (both as root)"
