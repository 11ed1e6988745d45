# Helpers shared by the scripts in scripts/.

# A TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Installs Debian packages (as root, or through sudo).
apt_install() {
  local sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  if [ -z "${APT_UPDATED:-}" ]; then
    "${sudo[@]}" apt-get update -qq >/dev/null
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# A Python virtualenv at .venv with the test tools from PyPI (versions pinned).
python_venv() {
  if [ ! -x .venv/bin/openapi-spec-validator ]; then
    python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check "openapi-spec-validator==0.9.0"
  fi
}
