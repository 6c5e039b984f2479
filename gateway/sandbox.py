"""The kernel sandbox around every stdio tool server (Landlock), and the launcher that applies it.

A stdio server runs as the gateway's own user. Without a sandbox it could open
the signing key, the store or the audit files and forge tokens. So the gateway
never starts the command itself: it starts this module,

    python -I -m gateway.sandbox --read PATH ... --write PATH ... -- COMMAND ARGS...

which builds a Landlock ruleset (everything denied but the listed paths:
`--read` grants read and execute, `--write` grants every file-system right),
restricts itself, and execs the command. The restriction is inherited by
everything the server starts and cannot be lifted; the gateway itself is never
restricted. Signals and abstract UNIX sockets are scoped to the sandbox too
where the kernel can (Landlock ABI 6), so a server cannot signal the gateway;
ptrace of processes outside the sandbox is always refused by Landlock.

This module is the launcher, so it imports only the standard library and
`landlockpy` (the gateway's packages would cost every spawn half a second).
Which paths a server gets is decided by `gateway/upstream/manifests.py`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

MIN_ABI = 3  # Landlock ABI 3 is the first that can refuse truncate(2): below it a server could empty the audit file
TEST_HOOK = "GATEWAY_SANDBOX"  # "unavailable": report the sandbox as unavailable (tests of that path)

# Runtime files every interpreter needs, read-only. Not all of /etc: it can hold secrets (shadow, keys).
ETC = (
    "/etc/alternatives",
    "/etc/ca-certificates",
    "/etc/ca-certificates.conf",
    "/etc/crypto-policies",
    "/etc/gai.conf",
    "/etc/gitconfig",
    "/etc/group",
    "/etc/host.conf",
    "/etc/hosts",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/mime.types",
    "/etc/nsswitch.conf",
    "/etc/os-release",
    "/etc/passwd",
    "/etc/pki",
    "/etc/resolv.conf",
    "/etc/ssl",
    "/etc/timezone",
)
SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", *ETC)
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")  # read and write
PROC_SELF = "/proc/self"  # opened by the launcher: its own /proc entry, which exec keeps (same pid)


def unavailable_reason() -> str | None:
    """Why stdio servers cannot be sandboxed here, or None when they can."""
    if os.environ.get(TEST_HOOK) == "unavailable":
        return f"{TEST_HOOK}=unavailable is set"
    try:
        import landlockpy
    except ImportError:  # pragma: no cover - a dependency of the package
        return "the landlockpy package is not installed"
    try:
        abi = landlockpy.abi_version()  # 0: no Landlock in this kernel, or disabled at boot
    except OSError as exc:
        return f"the Landlock probe failed ({exc.strerror or exc})"
    if abi == 0:
        return "the kernel offers no Landlock (not built in, or not enabled in the LSM list at boot)"
    if abi < MIN_ABI:
        return f"the kernel's Landlock ABI {abi} is older than {MIN_ABI}, which cannot stop a server truncating files"
    return None


@dataclass(frozen=True)
class Policy:
    """What one stdio server may reach: `read` (read and execute) and `write` (everything), by path."""

    read: tuple[Path, ...]
    write: tuple[Path, ...]

    def launch(self, command: str, args: Sequence[str]) -> tuple[str, list[str]]:
        """The command and arguments that start `command args` inside this sandbox."""
        flags = [f"--read={p}" for p in self.read] + [f"--write={p}" for p in self.write]
        return sys.executable, ["-I", "-m", "gateway.sandbox", *flags, "--", command, *args]


@dataclass(frozen=True)
class Protected:
    """A path no server may be granted: neither it, nor anything above or below it (but `own`)."""

    path: Path
    what: str  # for the refusal: "the state dir (state_dir)"
    own: Path | None = None  # a subtree inside `path` this server may be granted (its own secrets or work dir)


def overlap(granted: Path, protected: Iterable[Protected]) -> Protected | None:
    """The protected path a grant would expose, if any.

    A grant exposes a protected path when it is that path, inside it, or above it
    (Landlock rules cover whole trees), and, for a protected file, when it names a
    sibling sharing the file's stem (rotated audit files, SQLite's -wal, retired keys).
    Paths are compared after resolving symlinks, as the kernel does.
    """
    real = _real(granted)
    for item in protected:
        target = _real(item.path)
        if item.own is not None and _within(real, _real(item.own)):
            continue
        if _within(real, target) or _within(target, real):
            return item
        if target.suffix and real.parent == target.parent and real.name.startswith(target.stem):
            return item
    return None


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def runtime_paths(command: str, args: Sequence[str], env_path: str | None) -> list[Path]:
    """The paths a command needs to run: the system's, the gateway's Python, the command itself, and the
    node_modules tree that the command or a script argument lives in (`node .../node_modules/pkg/index.js`)."""
    paths = [Path(p) for p in SYSTEM]
    paths += [Path(p) for p in sorted({sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix})]
    binary = command if "/" in command else _which(command, env_path)
    programs = [Path(binary), Path(os.path.realpath(binary))] if binary is not None else []
    paths += programs
    for candidate in [*programs, *(Path(a) for a in args if a.startswith("/"))]:
        for place in (candidate, Path(os.path.realpath(candidate))):
            modules = [p for p in place.parents if p.name == "node_modules"]
            if modules:
                paths.append(modules[-1])  # the outermost: packages import their dependencies from it
    return paths


def _which(command: str, env_path: str | None) -> str | None:
    import shutil

    return shutil.which(command, path=env_path)


# ---------------------------------------------------------------- the launcher


def _restrict(read: Sequence[str], write: Sequence[str]) -> list[str]:
    """Enforce the ruleset on this process; returns the paths skipped because they do not exist."""
    from landlockpy import AccessFS, AccessNet, Ruleset, Scope

    reading = AccessFS.READ_FILE | AccessFS.READ_DIR | AccessFS.EXECUTE
    file_rights = AccessFS.READ_FILE | AccessFS.WRITE_FILE | AccessFS.EXECUTE | AccessFS.TRUNCATE | AccessFS.IOCTL_DEV
    skipped: list[str] = []
    # Every file-system right is handled (denied unless granted); the network is not this sandbox's concern.
    with Ruleset(handled_net=AccessNet.NONE, scoped=Scope.SIGNAL | Scope.ABSTRACT_UNIX_SOCKET) as ruleset:
        everything = ruleset.handled_fs
        grants = [(p, reading) for p in read] + [(p, everything) for p in write]
        grants += [(p, AccessFS.READ_FILE | AccessFS.WRITE_FILE) for p in DEVICES] + [(PROC_SELF, reading)]
        for path, access in grants:
            if not os.path.exists(path):
                skipped.append(path)
                continue
            ruleset.allow_path(path, access if os.path.isdir(path) else access & file_rights)
        ruleset.restrict()
    return skipped


def main(argv: Sequence[str]) -> NoReturn:
    """Restrict this process as `--read`/`--write` say, then exec the command after `--`."""
    if "--" not in argv:
        sys.stderr.write("usage: python -m gateway.sandbox [--read=PATH] [--write=PATH] -- COMMAND [ARGS...]\n")
        raise SystemExit(2)
    split = list(argv).index("--")
    flags, command = list(argv[:split]), list(argv[split + 1 :])
    read = [f.removeprefix("--read=") for f in flags if f.startswith("--read=")]
    write = [f.removeprefix("--write=") for f in flags if f.startswith("--write=")]
    unknown = [f for f in flags if not f.startswith(("--read=", "--write="))]
    if unknown or not command:
        sys.stderr.write(f"gateway.sandbox: bad arguments: {' '.join(unknown) or 'no command'}\n")
        raise SystemExit(2)
    try:
        skipped = _restrict(read, write)
    except OSError as exc:  # never run the server unconfined because the sandbox failed
        sys.stderr.write(f"gateway.sandbox: cannot sandbox {command[0]}: {exc}\n")
        raise SystemExit(126) from None
    for path in skipped:
        sys.stderr.write(f"gateway.sandbox: {path} does not exist; not granted\n")
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        sys.stderr.write(f"gateway.sandbox: cannot run {command[0]}: {exc.strerror or exc}\n")
        raise SystemExit(127) from None


if __name__ == "__main__":
    main(sys.argv[1:])
