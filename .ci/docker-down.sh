#!/usr/bin/env bash
# Stop the private engine that .ci/docker-up.sh started and remove all of its state.
#
#   .ci/docker-down.sh          # CI (.ci/run): after the test command, whatever its outcome
#
# Only the engine under .ci/work/docker is touched: an engine that docker-up.sh merely reused is
# left alone. Order matters: containers first (their mounts), then dockerd (it stops its managed
# containerd), then whatever mounts remain under the work dir, and only then the removal, which
# otherwise fails with "Device or resource busy".
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="${SCOREHOST_DOCKER_WORK:-$root/.ci/work/docker}"
sock="$work/docker.sock"
log() { printf 'docker-down: %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }

[ -d "$work" ] || { log "nothing to do ($work absent)"; exit 0; }

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }
stop_pid() {  # stop_pid PID NAME: SIGTERM, wait up to 20 s, then SIGKILL
  local pid="$1" name="$2"
  alive "$pid" || return 0
  log "stopping $name (pid $pid)"
  as_root kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do alive "$pid" || return 0; sleep 0.2; done
  log "$name did not exit in 20 s; killing it"
  as_root kill -9 "$pid" 2>/dev/null || true
  for _ in $(seq 1 25); do alive "$pid" || return 0; sleep 0.2; done
}

if [ -S "$sock" ] && timeout 10 docker -H "unix://$sock" info >/dev/null 2>&1; then
  ids="$(docker -H "unix://$sock" ps -aq)"
  if [ -n "$ids" ]; then
    log "removing containers: $(echo "$ids" | tr '\n' ' ')"
    # shellcheck disable=SC2086  # one id per word
    timeout 60 docker -H "unix://$sock" rm -f $ids >/dev/null || true
  fi
fi

dockerd_pid="$(cat "$work/dockerd.pid" 2>/dev/null || true)"
# dockerd's managed containerd records its pid under the exec root; read it before dockerd goes.
containerd_pid="$(cat "$work/exec/containerd/containerd.pid" 2>/dev/null || true)"
stop_pid "$dockerd_pid" dockerd
stop_pid "$containerd_pid" containerd

mounts="$(grep -o " $work/[^ ]*" /proc/mounts | sort -r || true)"
for m in $mounts; do
  as_root umount "$m" 2>/dev/null || as_root umount -l "$m" 2>/dev/null || log "could not unmount $m"
done

if as_root rm -rf "$work"; then
  log "removed $work"
else
  log "could not remove $work"
  exit 1
fi
