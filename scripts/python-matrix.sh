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
# Beside them, interpreters without markers (issue 24): the official `python:*` Docker images
# are built without --with-dtrace, so they carry no markers, and the marker-less path is tested
# on builds like theirs, side by side with the same source built --with-dtrace. 3.11 (bookworm's
# source package) and 3.13 (trixie's, the tarball of the marker build above) are configured as
# the images configure them, --enable-shared --with-lto, made with the slim images' flags
# (Debian's CFLAGS, frame pointers, -Wl,--strip-all: .dynsym only, no .symtab), into
# python-<v>-official, without PGO (its -fno-semantic-interposition is passed instead). 3.13 is
# also built with PGO, as the images are (--enable-optimizations: the profile run of the test
# suite; about 15 minutes in all here), into python-3.13-official-pgo, to check that PGO's
# inlining and splitting do not defeat the derivations of src/discover/derive.rs (they moved
# _Py_RunGC apart and made its call of the collector a tail jump). No ensurepip, no JIT.
# LTO makes these the slow ones (tens of minutes), hence at low priority beside a benchmark:
#
#   bash scripts/python-matrix.sh          # build what is missing, print the interpreters
#   PYUSDT_MATRIX_VERSIONS="3.11-official 3.13-official 3.13-official-pgo" nice -n 19 ionice -c3 bash scripts/python-matrix.sh
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
# version  suite     source package  variant (marker-less, like the official images: 3.11.2 and 3.13.5)
OFFICIAL_MATRIX=(
  "3.11 bookworm python3.11 official"
  "3.13 trixie   python3.13 official"
  "3.13 trixie   python3.13 official-pgo"
)
# version  suite  (Debian binaries; forky, not sid: a version reaches forky only after sid's
# migration checks, so it changes less often, and forky is what the next stable ships;
# 3.14.8 and 3.15.0 when written, 3.15.0 being the first release with function markers again)
DEB_MATRIX=(
  "3.14 forky"
  "3.15 forky"
)
# PYUSDT_MATRIX_VERSIONS="3.14 3.15" limits the work to those versions (the others are still
# printed when cached), so that two runs never prepare the same version at once; the marker-less
# builds are named with their suffix, "3.13-official", and are built only when named so.
ONLY=${PYUSDT_MATRIX_VERSIONS:-}
BUILD_DEPS=(build-essential libffi-dev zlib1g-dev libssl-dev libbz2-dev liblzma-dev
            libsqlite3-dev libreadline-dev systemtap-sdt-dev libgdbm-dev libncurses-dev
            uuid-dev libexpat1-dev pkg-config xz-utils dpkg-dev)

log() { echo "python-matrix: $*" >&2; }

interpreter() { echo "$CACHE/python-$1/bin/python$1"; }

official_interpreter() { echo "$CACHE/python-$1-${2:-official}/bin/python$1"; }

usable() { # a cached build that runs and carries markers in its libpython
  local v=$1 py
  py=$(interpreter "$v")
  [ -x "$py" ] && "$py" -c 'import sys' 2>/dev/null &&
    [ -n "$(ls "$CACHE/python-$v/lib/libpython$v"*.so* 2>/dev/null)" ]
}

usable_official() { # a cached build that runs, whose libpython has no markers and is stripped
  local v=$1 variant=${2:-official} py lib sections
  py=$(official_interpreter "$v" "$variant")
  lib=$(find "$CACHE/python-$v-$variant/lib" -maxdepth 1 -name "libpython$v*.so.*" -type f 2>/dev/null | head -n1)
  [ -x "$py" ] && "$py" -c 'import sys' 2>/dev/null && [ -n "$lib" ] || return 1
  sections=$(readelf -SW "$lib" 2>/dev/null) || return 1
  ! readelf -nW "$lib" 2>/dev/null | grep -q stapsdt &&
    ! grep -qE '\s\.note\.stapsdt\s' <<< "$sections" &&
    grep -qE '\s\.dynsym\s' <<< "$sections" &&
    ! grep -qE '\s\.symtab\s' <<< "$sections"
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

build() { # kind: dtrace (markers), official or official-pgo (none, like the Docker images)
  local v=$1 suite=$2 pkg=$3 kind=${4:-dtrace} work uri src
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
  # The upstream tarball: .tar.xz, or .tar.gz for bookworm's python3.11 (not its .asc).
  src=$(find "$work" -maxdepth 1 -name "${pkg}_*.orig.tar.[gx]z" | head -n1)
  [ -n "$src" ] || { log "no upstream tarball for $pkg: skipping $v"; return 0; }
  tar -C "$work" -xf "$src"
  local dir prefix name start=$SECONDS
  dir=$(find "$work" -maxdepth 1 -type d -name 'Python-*' | head -n1)
  local configure=(--enable-shared --without-ensurepip) make_args=()
  if [ "$kind" != dtrace ]; then
    name="$v-$kind"
    prefix="$CACHE/python-$name"
    configure+=(--with-lto LDFLAGS="-Wl,--strip-all -Wl,-rpath,$prefix/lib")
    # The slim images' make flags: Debian's CFLAGS (-O2 wins over OPT's -O3) with frame
    # pointers, and -fno-semantic-interposition, which their --enable-optimizations brings:
    # exported functions may then be inlined at internal call sites, as in the images.
    make_args=("EXTRA_CFLAGS=$(dpkg-buildflags --get CFLAGS) -fno-omit-frame-pointer -mno-omit-leaf-frame-pointer"
               "CFLAGS_NODIST=-fno-semantic-interposition"
               "LDFLAGS=$(dpkg-buildflags --get LDFLAGS) -Wl,--strip-all -Wl,-rpath,$prefix/lib")
    if [ "$kind" = official-pgo ]; then
      configure+=(--enable-optimizations)
      # The profile run is the images' (`-m test --pgo`), from a parent that ignores its
      # result: one of its tests failed on this machine, which stopped the build; only the
      # profile matters. The whole build takes about 15 minutes here.
      make_args+=("PROFILE_TASK=-c \"import subprocess,sys;subprocess.run([sys.executable,'-m','test','--pgo'])\"")
    fi
    log "building $(basename "$dir") without markers ($kind), --enable-shared --with-lto, stripped (LTO, PGO: tens of minutes)"
  else
    name=$v
    prefix="$CACHE/python-$name"
    configure+=(--with-dtrace OPT="-O1 -g0" LDFLAGS="-Wl,-rpath,$prefix/lib")
    log "building $(basename "$dir") --with-dtrace --enable-shared (a few minutes)"
  fi
  rm -rf "$prefix"
  if ! (cd "$dir" &&
        ./configure -q --prefix="$prefix" "${configure[@]}" &&
        make -s -j"$(nproc)" "${make_args[@]}" &&
        make -s install) > "$work/build.log" 2>&1; then
    log "building $name stopped; the end of its log:"
    tail -n 20 "$work/build.log" >&2
  fi
  rm -rf "$prefix/lib/python$v/test" "$prefix/lib/python$v/"*/test
  if [ "$kind" != dtrace ]; then
    usable_official "$v" "$kind" || { log "build of $name failed"; rm -rf "$prefix"; return 1; }
    log "built $(official_interpreter "$v" "$kind") in $(( (SECONDS - start) / 60 )) min"
  else
    usable "$v" || { log "build of $name failed"; rm -rf "$prefix"; return 1; }
    log "built $(interpreter "$v") in $(( (SECONDS - start) / 60 )) min"
  fi
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
for row in "${OFFICIAL_MATRIX[@]}"; do
  read -r v suite pkg variant <<< "$row"
  if usable_official "$v" "$variant"; then
    log "cached: $(official_interpreter "$v" "$variant")"
    continue
  fi
  # Built only when asked for by name: LTO takes ten minutes or more, and setup.sh runs this.
  if ! [[ " $ONLY " == *" $v-$variant "* ]]; then continue; fi
  [ "$(id -u)" -eq 0 ] || { log "not root: cannot build $v-$variant"; continue; }
  install_build_deps
  build "$v" "$suite" "$pkg" "$variant" &
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
for row in "${OFFICIAL_MATRIX[@]}"; do
  read -r v _ _ variant <<< "$row"
  usable_official "$v" "$variant" && official_interpreter "$v" "$variant"
done
exit 0
