"""Running a command the model asked for, confined.

The model writes code and then asks to run it (``python -m pytest``), so whatever
``run_command`` starts is the model's code. It runs:

- **in bubblewrap** (``bwrap``) where installed and working, the mechanism Codex,
  Claude Code and mini-swe-agent use on Linux: new user, pid, ipc, uts and network
  namespaces; no capabilities, even when the engine runs as root; the whole file
  system read-only; the workspace and a private ``/tmp``
  (a tmpfs) writable; every ``.git`` of the workspace read-only, and none can be
  made at its top (``REPOSITORY``); the run's log (``.autonomy/`` and the
  ``--db`` file wherever it is), the chain key and the user's credentials
  (``CREDENTIALS`` under ``$HOME``: a command's output goes to the model server in
  the next request) hidden; ``/run`` hidden (the
  sockets of local daemons) unless the network is allowed; no network unless
  ``tools.network = true``. ``--die-with-parent`` and the pid namespace end the
  whole process tree when the command ends, times out, or the engine dies: a
  process the command detached (``setsid``) dies with it.
- **under resource limits** always (``setrlimit`` in the child before ``exec``):
  CPU seconds, address space, file size, and the number of processes — the latter
  also through a pids cgroup when one is writable, since the kernel does not apply
  ``RLIMIT_NPROC`` to root.
- **with a minimal environment**: ``PATH``, ``HOME``, the locale, ``TMPDIR``;
  nothing else of the engine's environment (API keys, ``AUTONOMY_*``) reaches it.

Without bubblewrap (``tools.sandbox = "auto"`` on a machine without it, or
``"off"``) only the limits, the environment and the process group remain: the
command can then write wherever the user can, and a process it detaches survives.
``auto`` says so loudly; ``required`` refuses to start a run.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import os
import resource
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Annotated, Literal

import msgspec

from engine import stops
from engine.errors import ConfinementUnavailable
from engine.tools.sandbox import (
    PROTECTED,
    SYSTEM_DIRECTORIES,
    not_a_project,
    process_gone,
    temporary_directory,
)

SandboxSetting = Literal["auto", "required", "off"]

MIB = 1024 * 1024
SHM_BYTES = 64 * MIB

_KEPT_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "VIRTUAL_ENV")
_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_KEYCTL_JOIN_SESSION_KEYRING = 1
_X32 = 0x40000000
_KEYS: dict[str, tuple[tuple[int, tuple[int, ...]], ...]] = {
    # each audit architecture a process of this machine may call the kernel as, with
    # the numbers of add_key, request_key and keyctl there (libc wraps none of them)
    "x86_64": (
        (0xC000003E, (248, 249, 250, _X32 | 248, _X32 | 249, _X32 | 250)),  # and x32
        (0x40000003, (286, 287, 288)),  # i386
    ),
    "aarch64": ((0xC00000B7, (217, 218, 219)), (0x40000028, (309, 310, 311))),  # and arm
}
"""The kernel's key management calls on the architectures a filter is made for."""


def _keys_filter(machine: str) -> bytes:
    """A seccomp program (classic BPF) that fails the key management calls with
    EPERM under every architecture a process here may call as (a 32-bit program's
    calls are numbered otherwise), as Docker's default profile does: a command that
    joined a session keyring of its own still linked the engine's into it by id (from
    ``/proc/keys``) and read its keys, and root's user keyring's. Every other call
    passes (all of a 32-bit program's were refused: it could not even write); a call
    of an architecture not listed is refused. "" where there is no filter for
    ``machine``."""
    if machine not in _KEYS:
        return b""
    load, jeq, ret = 0x20, 0x15, 0x06
    allow, refuse = 0x7FFF0000, 0x00050000 | 1  # SECCOMP_RET_ERRNO | EPERM
    program: list[tuple[int, int, int, int]] = [(load, 0, 0, 4)]  # seccomp_data.arch
    for arch, calls in _KEYS[machine]:
        block = [(load, 0, 0, 0), *((jeq, -1, 0, call) for call in calls), (ret, 0, 0, allow)]
        program += [(jeq, 0, len(block), arch), *block]  # not this architecture: skip it
    program.append((ret, 0, 0, refuse))
    last = len(program) - 1
    # each call's jump (-1, above) goes to the refusal at the end
    program = [
        (code, last - i - 1 if jt == -1 else jt, jf, k)
        for i, (code, jt, jf, k) in enumerate(program)
    ]
    return b"".join(struct.pack("HBBI", *instruction) for instruction in program)


_FILTER = _keys_filter(os.uname().machine)
_PROGRAM = ctypes.create_string_buffer(_FILTER, len(_FILTER) or 1)
_FPROG = struct.pack("HP", len(_FILTER) // 8, ctypes.addressof(_PROGRAM))
"""The filter as ``prctl`` takes it (``struct sock_fprog``), made once here: a child
between ``fork`` and ``exec`` should allocate nothing."""
_KEYCTL = _KEYS[os.uname().machine][0][1][2] if _FILTER else 0


class CommandLimits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Per-command resource limits (``[tools.limits]``); 0 means no limit of that kind.
    Each has a ceiling ``setrlimit`` can take (in bytes, for the sizes)."""

    cpu_seconds: Annotated[int, msgspec.Meta(ge=0, le=2**31)] = 600
    memory_mb: Annotated[int, msgspec.Meta(ge=0, le=2**30)] = 4096
    """Address space, which counts more than resident memory: keep it generous."""
    file_size_mb: Annotated[int, msgspec.Meta(ge=0, le=2**30)] = 256
    processes: Annotated[int, msgspec.Meta(ge=0, le=2**22)] = 256


@dataclass(frozen=True, kw_only=True)
class Confinement:
    """How commands run: the mechanism, the network, the limits and what is hidden.

    Built once per run by :func:`choose`; ``describe()`` is what ``run.started``
    records and ``autonomy run`` prints."""

    mechanism: Literal["bubblewrap", "none"]
    network: bool = False
    limits: CommandLimits = field(default_factory=CommandLimits)
    hidden: tuple[Path, ...] = ()
    """Files or directories a command must not see (the log, the key)."""
    bwrap: str = ""
    sizes: bool = False
    """This bubblewrap bounds its tmpfs mounts' sizes (``--size``)."""
    warning: str = ""
    seen_as: Path | None = None
    """Where a command sees the workspace, when not at its own path (bubblewrap only):
    a live replay runs the commands in a scratch copy, which they see where the
    recorded run's workspace was (``seen_at``), so that what they print of it (the
    root directory and configuration pytest found above it) is what they printed."""

    def describe(self) -> str:
        net = "network allowed" if self.network else "no network"
        if self.mechanism == "bubblewrap":
            return f"bubblewrap ({net}, resource limits)"
        return "resource limits only (no file-system or network confinement)"

    def seen_at(self, place: str) -> Confinement:
        """This confinement with commands seeing the workspace at ``place`` (see
        ``seen_as``) where bubblewrap can mount it there: a directory on this machine
        as it is (no link on the way), or a path under the command's own ``/tmp``,
        where bubblewrap makes it. Elsewhere, the workspace stays where it is."""
        path = Path(place)
        if (
            self.mechanism != "bubblewrap"
            or "\0" in place  # no file's name: an edited log
            or not path.is_absolute()
            or os.path.normpath(place) != place
            or path == Path("/")
            or not (path.is_relative_to("/tmp") or (_real(path) == path and path.is_dir()))
        ):
            return self
        return dataclasses.replace(self, seen_as=path)

    def environment(self, tmp: Path) -> dict[str, str]:
        env = {k: os.environ[k] for k in _KEPT_ENV if k in os.environ}
        env.setdefault("PATH", os.defpath)
        env.update(TMPDIR=str(tmp), TERM="dumb", PYTHONDONTWRITEBYTECODE="1")
        return env

    def argv(
        self,
        command: Sequence[str],
        workspace: Path,
        tmp: Path,
        repositories: Sequence[Path] = (),
        logs: Sequence[Path] = (),
    ) -> list[str]:
        """The argv to execute: ``command`` itself, or wrapped in bubblewrap, with
        the workspace's ``.git`` and ``repositories`` (others inside it) read-only,
        and its ``.autonomy`` and ``logs`` (others inside it: another run's, whose
        workspace is a directory of this one) hidden."""
        if self.mechanism != "bubblewrap":
            return list(command)
        # no capabilities: bubblewrap run by root keeps root's unless told, and with
        # them a command could unmount what hides the log or remount / writable
        args = [self.bwrap, "--die-with-parent", "--new-session", "--unshare-all"]
        args += ["--cap-drop", "ALL"]
        if self.network:
            args.append("--share-net")
        # /tmp and /dev/shm live in memory, which no limit of the command's counts:
        # bounded by its memory limit (/dev/shm by 64 MiB, as Docker's), /dev read-only
        memory = self.limits.memory_mb * MIB
        args += ["--ro-bind", "/", "/", "--dev", "/dev", "--remount-ro", "/dev", "--proc", "/proc"]
        args += KERNEL_SETTINGS
        # the keys the engine's user may see, by description and size (what a key is
        # for: a Kerberos principal), and the ids that a call of the key management
        # (refused: ``_keys_filter``) would take
        for listing in ("/proc/keys", "/proc/key-users"):
            if os.path.exists(listing):
                args += ["--ro-bind", "/dev/null", listing]
        args += [*self._size(memory), "--tmpfs", "/tmp"]
        args += [*self._size(min(memory, SHM_BYTES) or SHM_BYTES), "--tmpfs", "/dev/shm"]
        if not self.network:  # sized: it is in memory too
            args += [*self._size(min(memory, SHM_BYTES) or SHM_BYTES), "--tmpfs", "/run"]
        view = self.seen_as or workspace
        python = _python_paths()
        for path in python:  # a venv or checkout under /tmp stays visible
            if path.is_relative_to("/tmp") and not path.is_relative_to(workspace):
                args += ["--ro-bind", str(path), str(path)]
        args += ["--bind", str(workspace), str(view)]
        # bubblewrap mounts on a path, not through a link: a .git or .autonomy that is a
        # link (to keep a repository or the logs elsewhere) made every command fail with
        # "Can't bind mount"; what it leads to is made read-only (inside the workspace;
        # outside, all is) or hidden instead
        inside = Path(os.path.realpath(workspace))

        def seen(path: Path) -> str:  # where the command sees what is at ``path``
            return str(view / path.relative_to(inside) if path.is_relative_to(inside) else path)

        for path in python:
            # the engine's own interpreter and packages in the workspace (a venv there):
            # a .pth file a command left in them ran at the next start of autonomy
            if path.is_relative_to(inside) and path != inside:
                args += ["--ro-bind", str(path), seen(path)]
            # one where the workspace is seen, which the copy covers
            elif view != workspace and path.is_relative_to(view):
                args += ["--ro-bind", str(path), str(path)]
        for path in sorted({_real(workspace / ".git"), *map(_real, repositories)}):
            # (a workspace that is itself a bare repository stays writable: see README)
            if os.path.lexists(path) and path.is_relative_to(inside) and path != inside:
                args += ["--ro-bind", str(path), seen(path)]
        covered = []
        for log in sorted({_real(workspace / ".autonomy"), *map(_real, logs)}):
            if log.is_dir() and log.is_relative_to(inside) and not not_a_project(log):
                args += _hidden_directory(seen(log))
                covered.append(Path(seen(log)))
        for path in self.hidden:  # last, so that no bind above uncovers them
            # but not what a hidden directory covers already: the log in .autonomy/,
            # where bubblewrap cannot make a file to mount over in a read-only empty
            # directory (every command failed, with the log in its default place)
            if not any(_real(path).is_relative_to(place) for place in covered):
                args += _hide(path)
        args += ["--setenv", "TMPDIR", "/tmp", "--chdir", str(view), "--", *command]
        return args

    def run(
        self,
        command: Sequence[str],
        *,
        workspace: Path,
        out: IO[bytes],
        timeout: float,
        repositories: Sequence[Path] = (),
        logs: Sequence[Path] = (),
    ) -> Finished:
        """Run ``command`` confined, output to ``out``, for at most ``timeout`` seconds;
        whatever it started is ended before this returns. ``OSError`` if it cannot
        start. ``repositories``: the ``.git`` inside the workspace, kept read-only."""
        with (
            temporary_directory("autonomy-cmd-") as tmp,
            self._stand_ins(workspace),
        ):
            cgroups = _command_cgroups(self.limits)
            try:
                process = subprocess.Popen(
                    self.argv(command, workspace, tmp, repositories, logs),
                    cwd=workspace,
                    env=self.environment(tmp),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    shell=False,
                    start_new_session=True,
                    preexec_fn=_child_setup(self.limits, cgroups),
                )
                try:
                    stops.check()  # one Popen's at-fork hooks swallowed, ended here
                    return Finished(code=_wait(process, timeout), timed_out=False)
                except subprocess.TimeoutExpired:
                    return Finished(code=None, timed_out=True)
                finally:  # also when interrupted while waiting: leave nothing behind
                    _end(process, cgroups)
            finally:
                for cgroup in cgroups:
                    _release(cgroup)

    def _size(self, size: int) -> list[str]:
        return ["--size", str(size)] if self.sizes and size > 0 else []

    @contextlib.contextmanager
    def _stand_ins(self, workspace: Path) -> Iterator[None]:
        """Where the workspace has no ``.git`` (or no ``.autonomy``), an empty
        directory stands in for it while a confined command runs, mounted like a real
        one (read-only; hidden): the command cannot make a repository, or a log where
        autonomy looks for one, at the top of the workspace (``REPOSITORY``). Each is
        removed afterwards; one a killed engine left is empty, which git takes for no
        repository at all, and the next command removes it."""
        made: list[Path] = []
        if self.mechanism == "bubblewrap":
            for name in sorted(PROTECTED):
                path = workspace / name
                with contextlib.suppress(OSError):
                    if not path.is_dir() or path.is_symlink() or any(path.iterdir()):
                        path.mkdir()  # FileExistsError: a real one, kept
                    made.append(path)
        try:
            yield
        finally:
            for path in made:
                with contextlib.suppress(OSError):
                    path.rmdir()


REPOSITORY = (
    "a command may not make a git repository in the workspace: git runs commands its "
    "config names (core.fsmonitor on a plain git status, hooks, a pager) outside any sandbox"
)
"""Why every ``.git`` of the workspace is read-only for commands, and why a ``.git``
a command made in one of its directories is removed (``engine.tools.commands``)."""


@dataclass(frozen=True)
class Finished:
    """How a command ended: its exit code, or ``timed_out``."""

    code: int | None
    timed_out: bool


def _child_setup(limits: CommandLimits, cgroups: Sequence[Path]) -> Callable[[], None]:
    """What the child does before ``exec``: limits, and death with the engine."""

    def setup() -> None:
        _limit(resource.RLIMIT_CPU, limits.cpu_seconds)
        _limit(resource.RLIMIT_AS, limits.memory_mb * MIB)
        _limit(resource.RLIMIT_FSIZE, limits.file_size_mb * MIB)
        _limit(resource.RLIMIT_NPROC, limits.processes)
        for cgroup in cgroups:
            with contextlib.suppress(OSError):
                (cgroup / "cgroup.procs").write_text(str(os.getpid()))
        libc = ctypes.CDLL(None, use_errno=True)
        with contextlib.suppress(OSError, AttributeError):
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        # the engine's keyrings (a login's Kerberos tickets, an fscrypt key) were the
        # command's to read and to add to: a session keyring of its own, empty, and
        # no key management call at all
        if _FILTER:
            with contextlib.suppress(OSError, AttributeError):
                libc.syscall(_KEYCTL, _KEYCTL_JOIN_SESSION_KEYRING, None)
                libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
                libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, _FPROG)

    return setup


def _wait(process: subprocess.Popen[bytes], timeout: float) -> int:
    """``process.wait(timeout)`` without its polling: ``Popen.wait`` sleeps in steps
    of up to 50 ms, which a short command pays in full. A pidfd becomes readable the
    moment the process exits (Linux 5.3+); elsewhere, the polling wait."""
    try:
        fd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):
        return process.wait(timeout=timeout)
    try:
        poller = select.poll()  # not select.select: it cannot take descriptors >= 1024
        poller.register(fd, select.POLLIN)
        ready = poller.poll(max(timeout, 0) * 1000)
    finally:
        os.close(fd)
    if not ready:
        raise subprocess.TimeoutExpired(process.args, timeout)
    return process.wait()


CREDENTIALS = (
    # keys and cloud, cluster and registry logins
    ".ssh", ".gnupg", ".aws", ".azure", ".config/gcloud", ".kube", ".docker",
    ".config/containers/auth.json", ".oci", ".vault-token", ".terraform.d/credentials.tfrc.json",
    ".config/doctl", ".s3cfg", ".boto", ".config/rclone",
    # forges, package registries and toolchains
    ".config/gh", ".config/hub", ".git-credentials", ".config/git/credentials", ".pypirc",
    ".config/pip/pip.conf", ".pip/pip.conf", ".npmrc", ".yarnrc.yml", ".cargo/credentials",
    ".cargo/credentials.toml", ".gem/credentials", ".m2/settings.xml",
    ".m2/settings-security.xml", ".gradle/gradle.properties", ".nuget/NuGet/NuGet.Config",
    # databases
    ".pgpass", ".pg_service.conf", ".my.cnf", ".mylogin.cnf",
    # model hubs and servers (Ollama's key signs its requests to ollama.com)
    ".cache/huggingface/token", ".huggingface/token", ".ollama/id_ed25519",
    # password stores, keyrings, a desktop's session, browsers' cookies and passwords
    ".password-store", ".netrc", ".local/share/keyrings", ".Xauthority", ".env",
    ".mozilla", ".thunderbird", ".config/google-chrome", ".config/chromium",
    ".config/BraveSoftware", ".config/microsoft-edge",
    # what was typed into shells and interpreters
    ".bash_history", ".zsh_history", ".local/share/fish/fish_history", ".python_history",
    ".ipython", ".node_repl_history", ".psql_history", ".mysql_history", ".sqlite_history",
    ".lesshst", ".viminfo",
)  # fmt: skip
"""Where a home directory keeps keys, tokens and passwords (relative to it): hidden
from commands (``credentials``), which need none of them to build and test a project.
``.config/...`` is also looked for under ``$XDG_CONFIG_HOME``."""

MOVED_BY: dict[str, tuple[str, ...]] = {
    "PGPASSFILE": (), "PGSERVICEFILE": (), "KUBECONFIG": (), "DOCKER_CONFIG": (),
    "AWS_SHARED_CREDENTIALS_FILE": (), "AWS_CONFIG_FILE": (), "GNUPGHOME": (),
    "GOOGLE_APPLICATION_CREDENTIALS": (), "CLOUDSDK_CONFIG": (), "AZURE_CONFIG_DIR": (),
    "NETRC": (), "NPM_CONFIG_USERCONFIG": (), "PIP_CONFIG_FILE": (), "HF_TOKEN_PATH": (),
    "HF_HOME": ("token",), "CARGO_HOME": ("credentials.toml", "credentials"),
    "PASSWORD_STORE_DIR": (),
}  # fmt: skip
"""Variables that put credentials elsewhere than ``CREDENTIALS`` says: each names the
file or directory (a list of them, for ``KUBECONFIG``), or, with names here, the
directory holding those files (``$CARGO_HOME/credentials.toml``)."""


def credentials(home: Path | None = None, env: Mapping[str, str] | None = None) -> list[Path]:
    """The ``CREDENTIALS`` paths of ``home`` (the user's, by default), and those the
    variables of ``MOVED_BY`` name instead (a PostgreSQL log's password may be in
    ``PGPASSFILE``'s)."""
    base = home if home is not None else Path.home()
    env = os.environ if env is None else env
    found = [base / name for name in CREDENTIALS]
    if config := env.get("XDG_CONFIG_HOME"):
        found += [
            Path(config) / n.removeprefix(".config/")
            for n in CREDENTIALS
            if n.startswith(".config/")
        ]
    for variable, inside in MOVED_BY.items():
        for named in filter(None, env.get(variable, "").split(os.pathsep)):
            found += [Path(named) / name for name in inside] if inside else [Path(named)]
    return found


def _python_paths() -> list[Path]:
    """Where the interpreter that runs ``python -m pytest`` lives and imports from:
    the environment's prefixes and every directory on its import path."""
    candidates = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(sys.executable)}
    # not the first entry, the directory of the engine's script or the one it was started
    # in (``python -m``): /tmp itself, for a script there, showed commands all of /tmp
    candidates.update(p for p in sys.path[1:] if p)
    # autonomy's own packages, wherever an editable install maps them from: pytest
    # loads autonomy's plugin (an entry point) in every test run
    candidates.add(str(Path(__file__).resolve().parents[1]))  # engine/
    candidates.update(
        os.path.dirname(module.__file__ or "")
        for name in ("events", "projections")
        if (module := sys.modules.get(name)) is not None
    )
    found = []
    for candidate in sorted(candidates):
        path = Path(os.path.realpath(candidate))
        if path.is_dir() and path not in SYSTEM_DIRECTORIES:  # never all of /tmp
            found.append(path)
            if Path(candidate) != path:  # the link itself too (a venv's bin/python)
                found.append(Path(os.path.abspath(candidate)))
    # outermost first: a bind inside another bind must come after it
    return sorted(set(found), key=lambda p: len(p.parts))


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _hide(path: Path) -> list[str]:
    if path.is_dir():
        return _hidden_directory(str(path))
    if path.exists():
        return ["--ro-bind", "/dev/null", str(path)]
    return []


KERNEL_SETTINGS = [
    *("--ro-bind", "/proc/sys", "/proc/sys"),
    *("--ro-bind-try", "/proc/sysrq-trigger", "/proc/sysrq-trigger"),
    *("--ro-bind-try", "/proc/irq", "/proc/irq"),
    *("--ro-bind-try", "/proc/bus", "/proc/bus"),
]
"""The parts of ``/proc`` that set the kernel's behaviour for the whole machine, made
read-only over the command's own ``/proc`` (bubblewrap's own list). Without
capabilities a command run by root is still uid 0, to which the kernel grants
``/proc/sys``; bubblewrap covers it only when ``access()`` finds it writable, which
it does not for root without capabilities, so it was left writable: a command could
set ``kernel.core_pattern`` (a program run as root on the host at the next crash) or
write ``sysrq-trigger`` (a reboot)."""


def _hidden_directory(place: str) -> list[str]:
    """An empty directory, read-only, over ``place``: a tmpfs is memory no limit of
    the command's counts, and a writable one took gigabytes."""
    return ["--tmpfs", place, "--remount-ro", place]


def _limit(kind: int, value: int) -> None:
    if value <= 0:
        return
    _soft, hard = resource.getrlimit(kind)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(kind, (value, value))


CGROUPS = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def _command_cgroups(limits: CommandLimits) -> list[Path]:
    """Fresh cgroups for one command, where this process may make them (as root): one
    holding at most ``limits.processes`` processes (the kernel does not apply
    ``RLIMIT_NPROC`` to root), one holding its processes to ``limits.memory_mb`` of
    memory in all (``RLIMIT_AS`` bounds each process: five of 3 GiB each took 18 GB
    of a host's memory, and its private ``/tmp``, which is memory, more). One group
    with both under cgroup v2; one per controller's hierarchy under v1. None where
    none can be made, or a limit is 0."""
    if os.geteuid() != 0:
        return []
    wanted = {
        "pids": {"pids.max": limits.processes} if limits.processes > 0 else {},
        "memory": {} if limits.memory_mb <= 0 else {
            # v2, then v1 (whose swap limit, memsw, is not always there)
            "memory.max": limits.memory_mb * MIB, "memory.swap.max": 0,
            "memory.limit_in_bytes": limits.memory_mb * MIB,
            "memory.memsw.limit_in_bytes": limits.memory_mb * MIB,
        },
    }  # fmt: skip
    if (CGROUPS / "cgroup.controllers").exists():  # v2: a process is in one group only
        together = {**wanted["pids"], **wanted["memory"]}
        # in the engine's own group, where it hands its controllers down (a group
        # holding processes may not, but the root of the hierarchy, a container's
        # included); never at the real root from below it: out of a service's limits
        base = CGROUPS / _own_cgroup("")
        group = _new_cgroup(base, together) if together else None
        return [group] if group is not None else []
    made = (
        _new_cgroup(CGROUPS / name / _own_cgroup(name), settings)
        for name, settings in wanted.items()
        if settings
    )
    return [group for group in made if group is not None]


def _own_cgroup(controller: str) -> str:
    """This process's cgroup in ``controller``'s v1 hierarchy, or in the v2 one for
    "" ("" for its root): a command's group is made in it, so that the limits of the
    groups above it (a container's, a service's) still hold for the command."""
    with contextlib.suppress(OSError):
        for line in PROC_CGROUP.read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controller in controllers.split(","):  # "" only in v2's line, "0::/path"
                return path.strip("/")
    return ""


def _new_cgroup(base: Path, settings: dict[str, int]) -> Path | None:
    """A new cgroup under ``base`` with each of ``settings`` the controller takes
    (those it has no file for are left); None when it takes none."""
    if not (base / "cgroup.procs").exists() or not os.access(base, os.W_OK):
        return None
    group = base / f"autonomy-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        group.mkdir()
    except OSError:
        return None
    taken = 0
    for name, value in settings.items():
        with contextlib.suppress(OSError):
            (group / name).write_text(str(value))
            taken += 1
    if taken:
        return group
    _release(group)
    return None


RELEASE_SECONDS = 5.0
"""How long a command's cgroup may take to empty once its processes are killed."""


def _release(cgroup: Path) -> None:
    """Remove ``cgroup`` once the kernel has taken its last (killed) process out:
    removed at once, it was still busy after most commands, and hundreds were left
    behind. Also the groups of engines that are gone (killed before their release)."""
    deadline = time.monotonic() + RELEASE_SECONDS
    while True:
        try:
            cgroup.rmdir()
            break
        except FileNotFoundError:
            break
        except OSError:
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
    for group in cgroup.parent.glob("autonomy-*-*"):
        if process_gone(group.name.split("-")[1]):
            with contextlib.suppress(OSError):
                group.rmdir()


def _end(process: subprocess.Popen[bytes], cgroups: Sequence[Path]) -> None:
    """End what is left of a command's process tree: its process group, and every
    process in its cgroups (which a ``setsid`` does not leave)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    for cgroup in cgroups:
        with contextlib.suppress(OSError):
            for pid in (cgroup / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
    if process.poll() is None:
        process.wait()


def _bwrap_works(bwrap: str) -> tuple[str, bool]:
    """'' if bubblewrap can confine a command here, else why not; and whether it
    can bound a tmpfs's size (``--size``, bubblewrap 0.7 and later).

    Probed once per process and binary (a run started in ~15 ms, of which the
    probe took 12): the answer is a fact of the machine, not of a run. A binary
    replaced since (another inode, size or mtime) is probed again, and a probe that
    could not run (no process, a timeout under load) is not remembered. A kernel
    setting changed under a long-lived process (user namespaces switched off) makes
    a confined command fail with bubblewrap's error, never run unconfined."""
    try:
        found = os.stat(bwrap)
        return _probe(bwrap, found.st_ino, found.st_size, found.st_mtime_ns)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e), False


@functools.cache
def _probe(bwrap: str, *identity: int) -> tuple[str, bool]:
    probe = [bwrap, "--unshare-all", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    probe += KERNEL_SETTINGS  # one that cannot cover them is found here, not at a command
    sized = ["--size", str(MIB), "--tmpfs", "/tmp"]
    for args, sizes in ((sized, True), ([], False)):
        result = subprocess.run(
            [*probe, *args, "--", "true"], capture_output=True, timeout=10, stdin=subprocess.DEVNULL
        )
        if result.returncode == 0:
            return "", sizes
        why = result.stderr.decode("utf-8", "replace").strip() or f"exit {result.returncode}"
        if not (sizes and "--size" in why):  # else an older bubblewrap: without sizes
            return why, False
    return why, False


def choose(
    setting: SandboxSetting,
    *,
    network: bool = False,
    limits: CommandLimits | None = None,
    hidden: Sequence[Path] = (),
    which: Callable[[str], str | None] = shutil.which,
) -> Confinement:
    """The confinement for a run under ``tools.sandbox = setting``.

    ``auto`` takes bubblewrap when it works and otherwise carries a warning;
    ``required`` raises ``ConfinementUnavailable`` instead; ``off`` never confines
    the file system or the network (the limits still hold)."""
    common = {
        "network": network,
        "limits": limits or CommandLimits(),
        "hidden": tuple(Path(os.path.realpath(p)) for p in hidden),  # where links lead
    }
    if setting == "off":
        return Confinement(mechanism="none", **common)  # type: ignore[arg-type]
    bwrap = which("bwrap")
    why, sizes = ("bubblewrap (bwrap) is not installed", False)
    if bwrap is not None:
        why, sizes = _bwrap_works(bwrap)
    if bwrap is not None and not why:
        return Confinement(mechanism="bubblewrap", bwrap=bwrap, sizes=sizes, **common)  # type: ignore[arg-type]
    if setting == "required":
        raise ConfinementUnavailable(
            f"tools.sandbox is 'required' but commands cannot be confined: {why}. "
            "Install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf "
            'install bubblewrap) or set tools.sandbox = "auto"'
        )
    warning = (
        f"warning: commands the model runs are NOT confined ({why}); they can read and "
        "write whatever you can. Install bubblewrap (apt-get install bubblewrap) to "
        'confine them, or set tools.sandbox = "off" to silence this warning'
    )
    return Confinement(mechanism="none", warning=warning, **common)  # type: ignore[arg-type]
