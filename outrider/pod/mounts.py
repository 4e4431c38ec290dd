"""Volumes as local directories, and the shell prologue that mounts them where a container expects them.

Each container runs in a mount namespace of its own (`unshare --mount`, propagation private): the pod's volume
directories are bind-mounted at their mountPath there, so the host's /etc, /run and /tmp stay untouched and
two pods can both have their own /etc/outrider. ConfigMap and Secret volumes are read-only, as in Kubernetes.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from outrider.pod.spec import Container, PodSpec, SpecError


def write_volumes(spec: PodSpec, root: Path) -> dict[str, Path]:
    """One directory per volume under `root`: ConfigMap/Secret keys as files, emptyDir empty."""
    dirs: dict[str, Path] = {}
    for volume in spec.volumes:
        path = root / volume.name
        path.mkdir(parents=True, exist_ok=True)
        for name, data in volume.files:
            target = path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            target.chmod(0o644)  # Kubernetes' defaultMode for ConfigMap and Secret volumes
        dirs[volume.name] = path
    return dirs


def _under(path: PurePosixPath, parent: PurePosixPath) -> bool:
    return path == parent or parent in path.parents


def hidden_paths(container: Container, keep: Sequence[Path]) -> list[Path]:
    """The paths of `keep` that one of the container's mounts would hide (outermost ones only)."""
    targets = [PurePosixPath(m.path) for m in container.mounts]
    hidden = sorted({k for k in keep if any(_under(PurePosixPath(str(k)), t) for t in targets)},
                    key=lambda k: len(k.parts))
    return [k for i, k in enumerate(hidden) if not any(_under(PurePosixPath(str(k)), PurePosixPath(str(o)))
                                                        for o in hidden[:i])]


def mount_script(container: Container, volumes: dict[str, Path], read_only: set[str],
                 keep: Sequence[Path] = (), stage: Path | None = None) -> str:
    """`sh -c` prologue: bind each volume at its mountPath (parents first), then exec the command ("$@").

    `keep` are host paths the container's processes need (the venv and the source tree the image's `python`
    maps to): when a mount would hide one (a checkout under /tmp, and the pod's emptyDir at /tmp), it is
    bound aside into `stage` first and bound back at its own path after the volumes, so the container still
    finds its executables — the image would have them in its own root.

    Mount points that do not exist are created: inside the volume directory when the mount sits inside
    another volume (a Secret at /etc/outrider/keys inside the ConfigMap at /etc/outrider), else on the
    host (an empty directory such as /etc/outrider; left in place, see docs/pod-harness.md).
    """
    mounts = sorted(container.mounts, key=lambda m: len(PurePosixPath(m.path).parts))
    lines = ["set -e"]
    kept = hidden_paths(container, keep)
    if kept and stage is None:
        raise SpecError(f"container {container.name!r}: a mount hides {kept[0]}, and no stage directory was given")
    staged: list[tuple[Path, Path]] = []
    for i, path in enumerate(kept):
        aside = (stage or Path("/")) / container.name / f"keep{i}"
        aside.mkdir(parents=True, exist_ok=True)
        lines.append(f"mount --bind {shlex.quote(str(path))} {shlex.quote(str(aside))}")
        staged.append((path, aside))
    placed: list[tuple[PurePosixPath, Path]] = []  # (mountPath, host source) of the mounts made so far
    for mount in mounts:
        target = PurePosixPath(mount.path)
        if not target.is_absolute():
            raise SpecError(f"container {container.name!r}: mountPath {mount.path!r} must be absolute")
        source = volumes[mount.volume] / mount.sub_path if mount.sub_path else volumes[mount.volume]
        for other in container.mounts:
            if _under(PurePosixPath(str(source)), PurePosixPath(other.path)):
                raise SpecError(f"container {container.name!r}: volume directory {source} would be hidden by the "
                                f"mount at {other.path}; give the pod a work directory outside it")
        # Where the mount point lives before the mount: in the innermost volume already mounted above it.
        host_point = Path(str(target))
        for other_target, other_source in reversed(placed):
            if _under(target, other_target):
                host_point = other_source / target.relative_to(other_target)
                break
        if source.is_dir():
            host_point.mkdir(parents=True, exist_ok=True)
        else:
            host_point.parent.mkdir(parents=True, exist_ok=True)
            host_point.touch(exist_ok=True)
        lines.append(f"mount --bind {shlex.quote(str(source))} {shlex.quote(str(target))}")
        if mount.read_only or mount.volume in read_only:
            lines.append(f"mount -o remount,bind,ro {shlex.quote(str(target))}")
        placed.append((target, source))
    for path, aside in staged:
        lines.append(f"mkdir -p {shlex.quote(str(path))}")
        lines.append(f"mount --bind {shlex.quote(str(aside))} {shlex.quote(str(path))}")
    if container.read_only_root:
        # This mount namespace's own copy of / turns read-only (the host's stays as it is); the volumes
        # bound above are mounts of their own and stay writable, as in a container with
        # readOnlyRootFilesystem.
        lines.append("mount -o remount,bind,ro /")
    if container.working_dir:
        lines.append(f"cd {shlex.quote(container.working_dir)}")
    lines.append('exec "$@"')
    return "\n".join(lines)


def read_only_volumes(spec: PodSpec) -> set[str]:
    """ConfigMap and Secret volumes: Kubernetes mounts them read-only whatever the mount says."""
    return {v.name for v in spec.volumes if v.kind in ("configMap", "secret")}
