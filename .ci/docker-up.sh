#!/usr/bin/env bash
# Make a Docker engine reachable for the container tests (tests/container/) and export DOCKER_HOST.
#
#   source .ci/docker-up.sh     # CI (.ci/run): before the test command; exports DOCKER_HOST
#   .ci/docker-up.sh            # by hand: prints the `export DOCKER_HOST=...` line to eval
#
# CI machines have no engine and no registry (see docs/deploy.md, "CI"), so this script
#   1. installs docker.io and debootstrap from Debian's archive if they are missing,
#   2. starts a private dockerd whose whole state (images, containers, socket, log) lives under
#      .ci/work/docker, so that .ci/docker-down.sh can remove every trace of it,
#   3. builds an offline stand-in for `python:3.11-slim-bookworm` (the tag our Dockerfiles pin)
#      from debootstrap when that tag is not present, so the Dockerfiles build unchanged.
# An engine that already answers (`docker info` with the caller's environment) is used as is and
# gets no stand-in: an ordinary engine can pull the real base image.
#
# Safe to source: the work runs in a bash process of its own, so the caller's `set`
# flags, traps and variables are untouched. It exports DOCKER_HOST, and SCOREHOST_TEST_REQUIRE_DOCKER=1
# so that the container tests fail instead of skipping when no engine answers. Idempotent and
# fast when everything is already there (one `docker info` and one `docker image inspect`).
# Tunables: SCOREHOST_DOCKER_WORK (state dir), DEBIAN_MIRROR, SCOREHOST_DOCKER_OWN=1 (start the
# private engine even when another one answers).

if [ "${_SCOREHOST_DOCKER_UP_CHILD:-}" = 1 ]; then
  # The work itself (see _scorehost_docker_up below): install, start the engine, the stand-in.
  set -euo pipefail
  work="$1"
  sock="$2"
  export DOCKER_HOST="unix://$sock"
  log() { printf 'docker-up: %s\n' "$*" >&2; }
  as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }

  if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
    log "installing docker.io and debootstrap"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      docker.io debootstrap >/dev/null
  fi

  mkdir -p "$work"
  if ! timeout 10 docker info >/dev/null 2>&1; then
    # A dockerd left over from an interrupted run would hold the data root: end it first.
    if [ -s "$work/dockerd.pid" ] && kill -0 "$(cat "$work/dockerd.pid")" 2>/dev/null; then
      log "a previous dockerd (pid $(cat "$work/dockerd.pid")) does not answer; restarting it"
      kill "$(cat "$work/dockerd.pid")" || true
      for _ in $(seq 1 100); do kill -0 "$(cat "$work/dockerd.pid")" 2>/dev/null || break; sleep 0.2; done
    fi
    rm -f "$sock" "$work/dockerd.pid"
    log "starting dockerd (state in $work, log in $work/dockerd.log)"
    # --bridge=none/--iptables=false: no NAT set-up is possible (or wanted) here; containers run
    # with --network none or host. The ulimit defaults are explicit because the machine lacks
    # CAP_SYS_RESOURCE and dockerd's own defaults fail. setsid: a Ctrl-C aimed at the test run
    # must not reach the engine.
    as_root setsid dockerd \
      --data-root "$work/data" --exec-root "$work/exec" --pidfile "$work/dockerd.pid" \
      -H "unix://$sock" --bridge=none --iptables=false --ip6tables=false --ip-masq=false \
      --storage-driver overlay2 \
      --default-ulimit nofile=20000:20000 --default-ulimit nproc=32768:32768 \
      </dev/null >"$work/dockerd.log" 2>&1 &
    ok=0
    for _ in $(seq 1 120); do
      if timeout 5 docker info >/dev/null 2>&1; then ok=1; break; fi
      sleep 0.5
    done
    if [ "$ok" != 1 ]; then
      log "dockerd did not answer within 60 s; last lines of its log:"
      tail -n 20 "$work/dockerd.log" >&2 || true
      exit 1
    fi
  fi

  base="python:3.11-slim-bookworm"
  if ! docker image inspect "$base" >/dev/null 2>&1; then
    log "building the offline stand-in for $base"
    standin="$work/standin"
    rm -rf "$standin" && mkdir -p "$standin"
    if ! docker image inspect localhost/debian:bookworm >/dev/null 2>&1; then
      as_root debootstrap --variant=minbase bookworm "$standin/rootfs" \
        "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$work/debootstrap.log" 2>&1 \
        || { tail -n 20 "$work/debootstrap.log" >&2; exit 1; }
      as_root tar -C "$standin/rootfs" -c . \
        | docker import --change 'CMD ["bash"]' - localhost/debian:bookworm >/dev/null
      as_root rm -rf "$standin/rootfs"
    fi
    # pip inside builds goes through a TLS-intercepting proxy that only the host's bundle trusts.
    cp /etc/ssl/certs/ca-certificates.crt "$standin/host-ca.crt"
    printf '[global]\ncert = /etc/ssl/certs/host-ca.crt\n' >"$standin/pip.conf"
    # Mirror what the real image offers the Dockerfiles: python/pip on PATH (Debian bookworm's
    # Python is 3.11), venv, useradd, a writable system pip.
    cat >"$standin/Dockerfile" <<'EOF'
FROM localhost/debian:bookworm
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    python3 python3-pip python3-venv ca-certificates passwd \
 && rm -rf /var/lib/apt/lists/* /usr/lib/python3*/EXTERNALLY-MANAGED \
 && ln -s /usr/bin/python3 /usr/local/bin/python && ln -s /usr/bin/pip3 /usr/local/bin/pip
COPY host-ca.crt /etc/ssl/certs/host-ca.crt
COPY pip.conf /etc/pip.conf
ENV LANG=C.UTF-8 PIP_DISABLE_PIP_VERSION_CHECK=1
CMD ["python3"]
EOF
    # Logged, not shown: the CLI warns on every legacy build, which is all CI has.
    docker build --network host -t "$base" "$standin" >"$work/standin-build.log" 2>&1 \
      || { tail -n 30 "$work/standin-build.log" >&2; exit 1; }
    docker image rm localhost/debian:bookworm >/dev/null 2>&1 || true
    log "stand-in $base ready"
  fi
  exit 0
fi

_scorehost_docker_up() {
  local root work sock
  # From here on the container tests fail, rather than skip, when no engine answers.
  export SCOREHOST_TEST_REQUIRE_DOCKER=1
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  work="${SCOREHOST_DOCKER_WORK:-$root/.ci/work/docker}"
  sock="$work/docker.sock"
  # A unix socket path must fit in sun_path (108 bytes); a deep checkout would not start.
  if [ "${#sock}" -gt 100 ]; then
    echo "docker-up: socket path too long (${#sock} > 100): $sock; set SCOREHOST_DOCKER_WORK" >&2
    return 1
  fi

  if [ "${SCOREHOST_DOCKER_OWN:-0}" != 1 ] && [ "${DOCKER_HOST:-}" != "unix://$sock" ] \
      && timeout 10 docker info >/dev/null 2>&1; then
    echo "docker-up: using the engine that already answers (${DOCKER_HOST:-default socket})" >&2
    return 0
  fi

  # The work runs in a bash process of its own, so that its `set -e` holds: in a subshell it
  # would be silently ignored whenever the caller tests our status (`source ... || exit 1`).
  _SCOREHOST_DOCKER_UP_CHILD=1 bash "${BASH_SOURCE[0]}" "$work" "$sock" || return $?
  export DOCKER_HOST="unix://$sock"
  echo "export DOCKER_HOST=$DOCKER_HOST"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  _scorehost_docker_up
  exit $?
fi
_scorehost_docker_up
