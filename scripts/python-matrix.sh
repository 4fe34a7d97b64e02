#!/usr/bin/env bash
# Provides marker-bearing CPython interpreters of other versions for the end-to-end tests:
# Debian's source packages of 3.9 (bullseye) and 3.13 (trixie), built --with-dtrace
# --enable-shared into a cache outside the repo, reused when present (warm: seconds). Built
# with -O1: compile time matters here, and the markers do not depend on the optimisation.
# 3.14 and 3.15 are Debian's own binaries from forky (Debian builds them --with-dtrace): their
# source files are not served by the archive this machine reaches (404 for the .dsc and the
# tarballs, while the .debs download), and the binaries need glibc >= 2.38, so they are
# unpacked with forky's glibc beside them and pointed at it (patchelf: ELF interpreter and
# DT_RPATH). Nothing is installed into the system. Debian builds no free-threaded (3.14t/3.15t)
# package of them, so there is none here either.
#
#   bash scripts/python-matrix.sh          # build what is missing, print the interpreters
#   PYUSDT_MATRIX_CACHE=/elsewhere bash scripts/python-matrix.sh
#
# Needs root for apt (build dependencies). Versions whose sources cannot be fetched are skipped
# with a message; the tests then say which versions they covered.
set -euo pipefail

CACHE=${PYUSDT_MATRIX_CACHE:-/var/cache/pyusdt-test}
# version  suite     source package (the suite's current release: 3.9.2 and 3.13.5 when written)
MATRIX=(
  "3.9  bullseye python3.9"
  "3.13 trixie   python3.13"
)
# version  suite  (Debian binaries; forky, not sid: a version reaches forky only after sid's
# migration checks, so it changes less often, and forky is what the next stable ships;
# 3.14.8 and 3.15.0 when written, 3.15.0 being the first release with function markers again)
DEB_MATRIX=(
  "3.14 forky"
  "3.15 forky"
)
# PYUSDT_MATRIX_VERSIONS="3.14 3.15" limits the work to those versions (the others are still
# printed when cached), so that two runs never prepare the same version at once.
ONLY=${PYUSDT_MATRIX_VERSIONS:-}
BUILD_DEPS=(build-essential libffi-dev zlib1g-dev libssl-dev libbz2-dev liblzma-dev
            libsqlite3-dev libreadline-dev systemtap-sdt-dev libgdbm-dev libncurses-dev
            uuid-dev libexpat1-dev pkg-config xz-utils dpkg-dev)

log() { echo "python-matrix: $*" >&2; }

interpreter() { echo "$CACHE/python-$1/bin/python$1"; }

usable() { # a cached build that runs and carries markers in its libpython
  local v=$1 py
  py=$(interpreter "$v")
  [ -x "$py" ] && "$py" -c 'import sys' 2>/dev/null &&
    [ -n "$(ls "$CACHE/python-$v/lib/libpython$v"*.so* 2>/dev/null)" ]
}

# The Debian archive's URI, from this machine's own apt sources (no host name in the repo).
archive_uri() {
  local uri
  uri=$(grep -hE '^\s*URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' |
        grep -E '/debian/?$' | head -n1 || true)
  [ -n "$uri" ] || uri=$(grep -hE '^\s*deb\s' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' |
        grep -E '/debian/?$' | head -n1 || true)
  echo "${uri%/}"
}

install_build_deps() {
  local missing=()
  for p in "${BUILD_DEPS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return
  log "installing build dependencies: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

build() {
  local v=$1 suite=$2 pkg=$3 work uri src
  uri=$(archive_uri)
  if [ -z "$uri" ]; then log "no Debian archive in /etc/apt sources: skipping $v"; return 0; fi
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  mkdir -p "$work/lists/partial"
  echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri $suite main" > "$work/sources.list"
  local apt_opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
                  -o "Dir::State::Lists=$work/lists" -o "APT::Sandbox::User=root")
  log "fetching $pkg source ($suite)"
  if ! apt-get "${apt_opts[@]}" update -qq >/dev/null 2>&1 ||
     ! (cd "$work" && apt-get "${apt_opts[@]}" source --download-only -qq "$pkg" >/dev/null 2>&1); then
    log "could not fetch $pkg from $suite: skipping $v"
    return 0
  fi
  src=$(ls "$work"/"${pkg}"_*.orig.tar.xz 2>/dev/null | head -n1)
  [ -n "$src" ] || { log "no upstream tarball for $pkg: skipping $v"; return 0; }
  tar -C "$work" -xf "$src"
  local dir
  dir=$(find "$work" -maxdepth 1 -type d -name 'Python-*' | head -n1)
  log "building $(basename "$dir") --with-dtrace --enable-shared (a few minutes)"
  local prefix="$CACHE/python-$v"
  rm -rf "$prefix"
  (cd "$dir" &&
    ./configure -q --with-dtrace --enable-shared --without-ensurepip --prefix="$prefix" \
      OPT="-O1 -g0" LDFLAGS="-Wl,-rpath,$prefix/lib" >/dev/null &&
    make -s -j"$(nproc)" >/dev/null 2>&1 &&
    make -s install >/dev/null 2>&1)
  rm -rf "$prefix/lib/python$v/test" "$prefix/lib/python$v/"*/test
  usable "$v" || { log "build of $v failed"; rm -rf "$prefix"; return 1; }
  log "built $(interpreter "$v")"
}

# The interpreter, the stdlib, and forky's copies of the libraries whose bookworm versions are
# too old for it (the others come from the system: newer glibc runs older libraries).
deb_packages() {
  local v=$1
  echo "python$v-minimal libpython$v-minimal libpython$v-stdlib libc6 libzstd1 libexpat1 libssl3t64 libffi8"
}

unpack_deb() {
  local v=$1 suite=$2 work uri
  uri=$(archive_uri)
  if [ -z "$uri" ]; then log "no Debian archive in /etc/apt sources: skipping $v"; return 0; fi
  if ! command -v patchelf >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends patchelf >/dev/null
  fi
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  mkdir -p "$work/lists/partial" "$work/debs" "$work/root"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri $suite main" > "$work/sources.list"
  local apt_opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
                  -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache"
                  -o "APT::Sandbox::User=root")
  log "fetching Debian's python$v binaries ($suite)"
  # shellcheck disable=SC2046 # the package list is split on purpose
  if ! apt-get "${apt_opts[@]}" update -qq >/dev/null 2>&1 ||
     ! (cd "$work/debs" && apt-get "${apt_opts[@]}" download -qq $(deb_packages "$v") >/dev/null 2>&1); then
    log "could not fetch python$v from $suite: skipping $v"
    return 0
  fi
  local d
  for d in "$work"/debs/*.deb; do dpkg-deb -x "$d" "$work/root"; done
  local prefix="$CACHE/python-$v" libdir
  rm -rf "$prefix"
  mv "$work/root/usr" "$prefix"
  libdir="$prefix/lib/x86_64-linux-gnu"
  # DT_RPATH, not RUNPATH: it also serves the extension modules' own dependencies (libffi, ...).
  patchelf --set-interpreter "$libdir/ld-linux-x86-64.so.2" --force-rpath --set-rpath "$libdir" \
    "$prefix/bin/python$v"
  usable_deb "$v" || { log "python$v from $suite does not run here"; rm -rf "$prefix"; return 1; }
  log "unpacked $(interpreter "$v") ($("$(interpreter "$v")" -c 'import sys; print(sys.version.split()[0])'))"
}

usable_deb() {
  local py
  py=$(interpreter "$1")
  [ -x "$py" ] && "$py" -c 'import sys' 2>/dev/null
}

mkdir -p "$CACHE"
# The versions build side by side: their serial steps (configure, install) overlap.
pids=()
for row in "${MATRIX[@]}"; do
  read -r v suite pkg <<< "$row"
  if usable "$v"; then
    log "cached: $(interpreter "$v")"
    continue
  fi
  if [ -n "$ONLY" ] && ! [[ " $ONLY " == *" $v "* ]]; then continue; fi
  [ "$(id -u)" -eq 0 ] || { log "not root: cannot build $v"; continue; }
  install_build_deps
  build "$v" "$suite" "$pkg" &
  pids+=($!)
done
for row in "${DEB_MATRIX[@]}"; do
  read -r v suite <<< "$row"
  if usable_deb "$v"; then
    log "cached: $(interpreter "$v")"
    continue
  fi
  if [ -n "$ONLY" ] && ! [[ " $ONLY " == *" $v "* ]]; then continue; fi
  [ "$(id -u)" -eq 0 ] || { log "not root: cannot fetch $v"; continue; }
  unpack_deb "$v" "$suite" || true
done
for pid in "${pids[@]}"; do
  wait "$pid" || true
done
for row in "${MATRIX[@]}"; do
  read -r v _ <<< "$row"
  usable "$v" && interpreter "$v"
done
for row in "${DEB_MATRIX[@]}"; do
  read -r v _ <<< "$row"
  usable_deb "$v" && interpreter "$v"
done
exit 0
