# Sourced by the tests that run Debian's Podman without touching the
# machine's own Podman state (//deploy:image_test, //tests/e2e:podman_e2e_test).
# Call podman_private_env from inside `unshare --mount --propagation private`:
#
#   podman_private_env "$T"
#
# binds /var/lib, /var/cache and /var/tmp (a root Podman writes its blob
# cache, short-name cache and CNI cache there whatever --root says) and
# /dev/shm (the libpod_lock segment every root Podman shares, and frees all
# of when it starts with a new tmp dir) to directories under T; hides the
# cgroup2 "unified" mount on a v1/v2 hybrid host, which crun needs for
# --cgroups=disabled (runc cannot run without cgroups at all); writes
# T/bin/crun, crun with its state under T/crun (Podman passes the same path
# to `podman container cleanup`); exports TMPDIR; and sets PODMAN_RUN_ARGS,
# the options every `podman run` of these tests takes.

podman_private_env() {
  local t=$1
  mkdir -p "$t/var/lib" "$t/var/cache" "$t/var/tmp" "$t/shm" "$t/bin" "$t/crun"
  mount -n --bind "$t/var/lib" /var/lib
  mount -n --bind "$t/var/cache" /var/cache
  mount -n --bind "$t/var/tmp" /var/tmp
  mount -n --bind "$t/shm" /dev/shm
  if [ "$(stat -f -c %T /sys/fs/cgroup)" = tmpfs ] &&
     [ "$(stat -f -c %T /sys/fs/cgroup/unified 2>/dev/null)" = cgroup2fs ]; then
    umount -n /sys/fs/cgroup/unified
  fi
  export TMPDIR=$t/var/tmp
  printf '#!/bin/sh\nexec /usr/bin/crun --root %s "$@"\n' "$t/crun" > "$t/bin/crun"
  chmod +x "$t/bin/crun"
  PODMAN_RUN_ARGS=(--pull=never --cgroups=disabled
                   --ulimit nofile=8192:8192 --ulimit nproc=8192:8192)
}
