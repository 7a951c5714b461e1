"""Run generated Python where it can neither harm nor read the machine, nor lie about its result.

Samples from small models write files, loop forever, allocate without bound, fork in a loop, exit
before their tests run, and now and then do worse; a python check runs thousands of them. Each run gets
a fresh temporary working directory (deleted afterwards) and a child interpreter. Containment,
outermost first:

1. **Kernel namespaces, through bubblewrap** (``bwrap``; Debian/Ubuntu package ``bubblewrap``): fresh
   user, PID, network, mount, IPC and UTS namespaces, uid/gid 65534 without capabilities, no nested
   user namespaces. The root file system is an empty read-only tmpfs holding only the system
   directories (``/usr``, ``/lib*``, ``/bin``), the Python installation (``sys.prefix``,
   ``sys.base_prefix``) read-only, a fresh ``/proc`` of the new PID namespace, a minimal read-only
   ``/dev``, and the working directory, mounted at ``/sandbox``: the only writable place. No network
   but a loopback of its own. A seccomp filter refuses new processes (threads stay allowed). When the
   program's process ends, bubblewrap's init (PID 1 of the namespace) exits and the kernel kills every
   process left in the namespace. The environment is a fixed minimal one, for bubblewrap itself too.
2. **The parent** kills the sandbox at the wall-clock timeout and collects stdout/stderr into files
   (so an output flood cannot fill the parent's memory).
3. The in-process layers of :mod:`capscale.scoring.sandbox_child`: resource limits, Landlock and an
   audit hook (the last two are extra walls, not the boundary).

Where bubblewrap is missing or cannot create namespaces (see :func:`kernel_isolation`), :func:`run_python`
refuses to run unless called with ``unsafe_exec=True`` (``capscale sample --unsafe-exec``); then only
layers 2 and 3 contain the program, so a verdict never depends silently on the kernel.

A run is "passed" only if the program ran to its end, exited with status 0, refused nothing, and the
harness wrote the run's random end token to the report pipe after the program finished (an early
``sys.exit(0)`` or ``os._exit(0)`` is "exited"). The layers in force are in ``SandboxResult.layers``.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import secrets
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from capscale.errors import CapscaleError
from capscale.scoring import sandbox_child
from capscale.scoring.sandbox_child import (
    BLOCKED_MARKER,
    BLOCKED_RECORD,
    END_RECORD,
    EXIT_BLOCKED,
    EXIT_MEMORY,
    EXIT_SANDBOX_ERROR,
    LAYERS_PREFIX,
)

STATUSES = ("passed", "failed", "exited", "timeout", "memory", "blocked", "error")
PROGRAM_NAME = "program.py"
SANDBOX_WORKDIR = "/sandbox"  # where the working directory appears inside the namespaces
SANDBOX_HARNESS = "/capscale/sandbox_child.py"
SANDBOX_UID = 65534  # "nobody"
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
NAMESPACES_LAYER = "namespaces(bwrap)"
SECCOMP_LAYER = "seccomp(no-new-processes)"
# Global /proc entries the sandbox must not write. bwrap maps the sandbox user to the caller, so under
# root it is uid 0 (without capabilities) outside, and files owned by uid 0 with a write bit (sysctls,
# PSI triggers, ...) would be writable; they are hidden (an empty read-only tmpfs or file) for every
# caller, so that verdicts do not depend on who runs them. The probe adds any other writable entry.
PROC_COVER = ("sys", "sysrq-trigger", "mtrr", "pressure", "acpi", "irq", "bus", "fs", "driver", "scsi", "tty")
_PROC_SCAN = """
import os
for name in sorted(os.listdir("/proc")):
    if name.isdigit() or name in ("self", "thread-self"):
        continue
    top = "/proc/" + name
    walk = os.walk(top) if os.path.isdir(top) and not os.path.islink(top) else [("/proc", [], [name])]
    if any(not os.path.islink(os.path.join(d, f)) and os.access(os.path.join(d, f), os.W_OK)
           for d, _, files in walk for f in files):
        print(name)
"""


class SandboxUnavailable(CapscaleError):
    """No kernel isolation for generated code here, and the user did not accept running without it."""


@dataclass
class SandboxResult:
    passed: bool
    status: str  # one of STATUSES
    returncode: int | None
    stdout: str  # the last max_output_chars characters
    stderr: str
    seconds: float
    layers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Isolation:
    """Whether kernel isolation works here: the bwrap executable and its flags, or why not."""

    bwrap: str | None
    flags: tuple[str, ...] = ()
    proc_cover: tuple[str, ...] = ()  # entries of /proc to hide
    reason: str = ""

    @property
    def available(self) -> bool:
        return self.bwrap is not None


def run_python(
    code: str,
    *,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    max_file_mb: int = 8,
    max_output_chars: int = 4000,
    unsafe_exec: bool = False,
) -> SandboxResult:
    """Run ``code`` as ``__main__`` in the sandbox; "passed" means it ran to its end and exited 0.

    Raises :class:`SandboxUnavailable` when there is no kernel isolation, unless ``unsafe_exec``."""
    isolation = require_kernel_isolation(unsafe_exec)
    return _execute(code, timeout_s=timeout_s, memory_mb=memory_mb, max_file_mb=max_file_mb,
                    max_output_chars=max_output_chars, namespaces=isolation.available)


def require_kernel_isolation(unsafe_exec: bool = False) -> Isolation:
    """The isolation to use; refuse (naming the way out) when there is none and it was not waived."""
    isolation = kernel_isolation()
    if not isolation.available and not unsafe_exec:
        raise SandboxUnavailable(
            f"python checks need kernel isolation for generated code, and there is none here: {isolation.reason}. "
            "Install bubblewrap (apt-get install bubblewrap), or pass --unsafe-exec (unsafe_exec=True) to run "
            "generated code with only rlimits, Landlock and an audit hook around it")
    return isolation


def sandbox_layers() -> tuple[str, ...]:
    """The containment layers a run gets on this machine (runs a trivial program to find out)."""
    isolation = kernel_isolation()
    return _execute("pass", namespaces=isolation.available).layers


@functools.lru_cache(maxsize=1)
def kernel_isolation() -> Isolation:
    """Find bwrap on PATH and check, once per process, that it starts this Python in the sandbox."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return Isolation(None, reason="bubblewrap (bwrap) is not installed")
    try:
        usage = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return Isolation(None, reason=f"{bwrap} does not run: {e}")
    flags = ["--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
             "--unshare-cgroup-try", "--die-with-parent", "--new-session"]
    if "--disable-userns" in usage:  # bubblewrap >= 0.8
        flags.append("--disable-userns")
    cover = tuple(name for name in PROC_COVER if os.path.lexists(f"/proc/{name}"))
    for _ in range(2):  # the second scan must find nothing left
        candidate = Isolation(bwrap, tuple(flags), cover)
        probe = _execute(_PROC_SCAN, timeout_s=20.0, audit_hook=False, namespaces=True, isolation=candidate)
        if probe.status != "passed":
            why = (probe.stderr.strip().splitlines() or [probe.status])[-1]
            return Isolation(None, reason=f"{bwrap} cannot start Python in new namespaces here ({why})")
        writable = tuple(probe.stdout.split())
        if not writable:
            return candidate
        cover += tuple(name for name in writable if name not in cover)
    return Isolation(None, reason=f"{bwrap}'s sandbox can still write /proc/{', /proc/'.join(writable)}")


# ----------------------------------------------------------------------------- seccomp

# A classic-BPF seccomp filter (the kernel's Documentation/userspace-api/seccomp_filter.rst) that refuses
# new processes: fork, vfork, and clone without CLONE_THREAD fail with EPERM; clone3, whose flags a
# filter cannot read, fails with ENOSYS, so the C library falls back to clone for threads. Why: under
# root the sandbox user is uid 0 outside, which the kernel exempts from RLIMIT_NPROC, so without this
# a fork bomb that got past the audit hook would exhaust the machine's processes for its timeout.
# Syscall numbers from the kernel's syscall tables: (audit arch, clone, clone3, fork/vfork).
_SECCOMP_ARCHS = {
    "x86_64": (0xC000003E, 56, 435, (57, 58)),
    "aarch64": (0xC00000B7, 220, 435, ()),
}
_X32_SYSCALL_BIT = 0x40000000
_CLONE_THREAD = 0x00010000
_RET_ALLOW, _RET_EPERM, _RET_ENOSYS = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
_LD_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|.. |K, BPF_RET|K


def seccomp_filter(machine: str | None = None) -> bytes | None:
    """The filter as bwrap's ``--seccomp`` reads it (struct sock_filter[]); None on other architectures."""
    arch = _SECCOMP_ARCHS.get(machine or platform.machine())
    if arch is None:
        return None
    audit_arch, clone, clone3, forks = arch
    # (code, jump if true, jump if false, k) with named targets; "next" falls through
    program = [
        (_LD_ABS, None, None, 4),  # seccomp_data.arch
        (_JEQ, "next", "eperm", audit_arch),  # another ABI (e.g. int 0x80): refuse
        (_LD_ABS, None, None, 0),  # seccomp_data.nr
        (_JGE, "eperm", "next", _X32_SYSCALL_BIT),  # x32 calls: refuse
        *[(_JEQ, "eperm", "next", nr) for nr in forks],
        (_JEQ, "enosys", "next", clone3),
        (_JEQ, "next", "allow", clone),
        (_LD_ABS, None, None, 16),  # low half of seccomp_data.args[0]: clone's flags
        (_JSET, "allow", "eperm", _CLONE_THREAD),
    ]
    returns = {"allow": _RET_ALLOW, "eperm": _RET_EPERM, "enosys": _RET_ENOSYS}
    where = {name: len(program) + i for i, name in enumerate(returns)}

    def offset(i: int, target: str | None) -> int:
        return 0 if target in (None, "next") else where[target] - i - 1

    out = [(code, offset(i, t), offset(i, f), k) for i, (code, t, f, k) in enumerate(program)]
    out += [(_RET, 0, 0, value) for value in returns.values()]
    return b"".join(struct.pack("=HBBI", *ins) for ins in out)


# ----------------------------------------------------------------------------- one run


def _execute(code: str, *, timeout_s: float = 5.0, memory_mb: int = 512, max_file_mb: int = 8,
             max_output_chars: int = 4000, audit_hook: bool = True, landlock: bool = True,
             namespaces: bool = True, seccomp: bool = True, isolation: Isolation | None = None) -> SandboxResult:
    """One sandboxed run. ``audit_hook``/``landlock``/``namespaces``/``seccomp`` off exist so tests can
    show what each layer does; ``isolation`` is for the probe (default: :func:`kernel_isolation`)."""
    if namespaces:
        isolation = isolation or kernel_isolation()
        if not isolation.available:
            raise SandboxUnavailable(f"no kernel isolation: {isolation.reason}")
    root = tempfile.mkdtemp(prefix="capscale-sandbox-")
    try:
        workdir = os.path.join(root, "work")
        os.mkdir(workdir, 0o700)
        with open(os.path.join(workdir, PROGRAM_NAME), "w", encoding="utf-8") as f:
            f.write(code)
        open(os.path.join(root, "empty"), "wb").close()  # hides files of /proc (see PROC_COVER)
        token = secrets.token_hex(16).encode()
        token_read, token_write = os.pipe()
        report_read, report_write = os.pipe()
        os.write(token_write, token)
        os.close(token_write)
        config = {"workdir": SANDBOX_WORKDIR if namespaces else workdir, "program": PROGRAM_NAME,
                  "timeout_s": timeout_s, "memory_mb": memory_mb, "max_file_mb": max_file_mb,
                  "audit_hook": audit_hook, "landlock": landlock, "namespaced": namespaces,
                  "token_fd": token_read, "report_fd": report_write}
        pass_fds, seccomp_fd = (token_read, report_write), None
        if namespaces:
            bpf = seccomp_filter() if seccomp else None
            if bpf is not None:
                with open(os.path.join(root, "seccomp.bpf"), "wb") as f:
                    f.write(bpf)
                seccomp_fd = os.open(os.path.join(root, "seccomp.bpf"), os.O_RDONLY)
                pass_fds += (seccomp_fd,)
            command = _bwrap_command(isolation, root, seccomp_fd,
                                     _child_command(SANDBOX_HARNESS, json.dumps(config)))
        else:
            command = _child_command(os.path.abspath(sandbox_child.__file__), json.dumps(config))
        out_path, err_path = os.path.join(root, "stdout"), os.path.join(root, "stderr")
        start = time.monotonic()
        try:
            returncode, timed_out = _spawn_and_wait(command, workdir, out_path, err_path, timeout_s, pass_fds)
        except OSError as e:
            return SandboxResult(False, "error", None, "", f"sandbox could not start: {e}",
                                 time.monotonic() - start)
        finally:
            for fd in pass_fds:
                os.close(fd)
            report = _read_available(report_read)
            os.close(report_read)
        seconds = time.monotonic() - start
        stdout = _read_tail(out_path, max_output_chars)
        child_layers, stderr_all = _split_layers_line(_read_all(err_path))
        blocked = BLOCKED_MARKER in stderr_all or any(line.startswith(BLOCKED_RECORD) for line in report)
        finished = END_RECORD + token in report
        status = _classify(returncode, timed_out, blocked, finished, namespaces)
        if namespaces:
            kernel = (NAMESPACES_LAYER, SECCOMP_LAYER if seccomp_fd is not None else
                      f"no-seccomp({platform.machine() if seccomp else 'off'})")
        else:
            kernel = ("no-namespaces",)
        layers = kernel + child_layers
        return SandboxResult(status == "passed", status, returncode, stdout,
                             stderr_all[-max_output_chars:] if max_output_chars > 0 else "", seconds, layers)
    finally:
        _remove_tree(root)


def _child_command(harness: str, config_json: str) -> list[str]:
    """-s: no user site-packages; -B: never write .pyc; -P (3.11+): no script dir on sys.path.
    Not -I/-E: the environment is built from scratch, and PYTHONHASHSEED must apply."""
    flags = ["-s", "-B"] + (["-P"] if sys.version_info >= (3, 11) else [])
    return [sys.executable, *flags, harness, config_json]


def _child_env(workdir: str) -> dict[str, str]:
    """Nothing inherited: no tokens or credentials reach generated code; hash seed fixed for
    reproducible set order; one BLAS thread so parallel checks do not oversubscribe cores."""
    return {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": workdir,
        "TMPDIR": workdir,
        "PYTHONHASHSEED": "0",
        "PYTHONIOENCODING": "utf-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def _bwrap_command(isolation: Isolation, root: str, seccomp_fd: int | None, child: list[str]) -> list[str]:
    """bwrap's arguments: namespaces, identity, environment, then the mounts in order (the root tmpfs is
    made read-only last, so only /sandbox, the run's ``root``/work, stays writable)."""
    env = [arg for name, value in _child_env(SANDBOX_WORKDIR).items() for arg in ("--setenv", name, value)]
    mounts = []
    for path in SYSTEM_DIRS:
        if os.path.islink(path):  # merged /usr: /bin -> usr/bin
            mounts += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            mounts += ["--ro-bind", path, path]
    mounts += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    for path in _python_dirs():
        mounts += ["--ro-bind", path, path]
    mounts += ["--ro-bind", os.path.abspath(sandbox_child.__file__), SANDBOX_HARNESS,
               "--bind", os.path.join(root, "work"), SANDBOX_WORKDIR, "--proc", "/proc"]
    empty = os.path.join(root, "empty")  # an empty file _execute made
    for name in isolation.proc_cover:
        path = f"/proc/{name}"
        if os.path.isdir(path):
            mounts += ["--tmpfs", path, "--remount-ro", path]
        else:
            mounts += ["--ro-bind", empty, path]
    mounts += ["--dev", "/dev", "--remount-ro", "/dev", "--remount-ro", "/"]
    seccomp = ["--seccomp", str(seccomp_fd)] if seccomp_fd is not None else []
    return [isolation.bwrap, *isolation.flags, *seccomp, "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
            "--hostname", "sandbox", "--clearenv", *env, *mounts, "--chdir", SANDBOX_WORKDIR, "--", *child]


def _python_dirs() -> list[str]:
    """The Python installation (and a virtualenv's), outside the system directories already bound."""
    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
            os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))}
    covered = lambda d: any(d == s or d.startswith(s + os.sep) for s in SYSTEM_DIRS)  # noqa: E731
    chosen: list[str] = []
    for d in sorted(os.path.abspath(d) for d in dirs):
        if os.path.isdir(d) and not covered(d) and not any(d.startswith(c + os.sep) for c in chosen):
            chosen.append(d)
    return chosen


def _spawn_and_wait(command: list[str], cwd: str, out_path: str, err_path: str, timeout_s: float,
                    pass_fds: tuple[int, ...]) -> tuple[int, bool]:
    """Start the sandbox in its own session and wait; the whole group is killed before the child is
    reaped, so its pid (= the group id) cannot have been reused by then. Inside bwrap the PID namespace
    takes the rest down when bwrap goes."""
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(command, cwd=cwd, env=_child_env(cwd), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=err, start_new_session=True, close_fds=True, pass_fds=pass_fds)
    exited = _wait_without_reaping(proc.pid, timeout_s)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return proc.wait(), not exited


def _wait_without_reaping(pid: int, timeout_s: float) -> bool:
    """Poll with WNOWAIT so the exited child stays a zombie until its group has been killed."""
    deadline = time.monotonic() + timeout_s
    delay = 0.001
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.02)


def _classify(returncode: int, timed_out: bool, blocked: bool, finished: bool, namespaces: bool) -> str:
    """A refused operation outranks everything: it fails the run even if the program went on. Exit
    status 0 without the end token means the program stopped before its end. bwrap reports a child
    killed by signal N as exit status 128 + N."""
    if blocked or returncode == EXIT_BLOCKED:
        return "blocked"
    if timed_out or returncode == -signal.SIGXCPU or (namespaces and returncode == 128 + signal.SIGXCPU):
        return "timeout"
    if returncode == EXIT_MEMORY:
        return "memory"
    if returncode == EXIT_SANDBOX_ERROR:
        return "error"
    if returncode != 0:
        return "failed"
    return "passed" if finished else "exited"


def _read_available(fd: int, limit: int = 1 << 16) -> list[bytes]:
    """The report pipe's lines; non-blocking, since without namespaces a leftover process may hold it open."""
    os.set_blocking(fd, False)
    data = b""
    while len(data) < limit:
        try:
            chunk = os.read(fd, limit)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    return data.splitlines()


def _read_all(path: str) -> str:
    with open(path, "rb") as f:
        return f.read().decode("utf-8", errors="replace")


def _read_tail(path: str, max_chars: int) -> str:
    """Only the end of a possibly large output is kept (at most 4 bytes per character read)."""
    if max_chars <= 0:
        return ""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - 4 * max_chars))
        return f.read().decode("utf-8", errors="replace")[-max_chars:]


def _split_layers_line(stderr: str) -> tuple[tuple[str, ...], str]:
    """The child's first stderr line names its layers; the program's own stderr follows."""
    if not stderr.startswith(LAYERS_PREFIX):
        return (), stderr
    line, _, rest = stderr.partition("\n")
    layers = tuple(x for x in line[len(LAYERS_PREFIX):].strip().split(",") if x)
    return layers, rest


def _remove_tree(root: str) -> None:
    """The program may have chmod-ed its files to 000; make them removable for non-root users."""
    for dirpath, dirnames, _ in os.walk(root):
        for name in dirnames:
            try:
                os.chmod(os.path.join(dirpath, name), 0o700, follow_symlinks=False)
            except OSError:
                pass
    shutil.rmtree(root, ignore_errors=True)
