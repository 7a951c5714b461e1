"""The sandbox's inside: set the in-process layers, run the program, report whether it ran to its end.

:mod:`capscale.scoring.sandbox` starts this file as ``python -s -B -P sandbox_child.py CONFIG_JSON``
(inside bubblewrap's namespaces, where nothing of capscale but this file is visible), so it imports only
the standard library. In order, before the program runs:

1. **Resource limits**: CPU seconds, address space, file size, open files, no core dumps, processes.
2. **Landlock** (Linux >= 5.13, where the kernel allows it): writes only where the sandbox means to allow
   them (see :func:`writable_paths`). Inside the namespaces it mirrors what the mount namespace already
   allows, so a verdict never depends on whether the kernel has Landlock; it is a second wall should a
   mount ever be wrong. Without namespaces it also refuses TCP (ABI >= 4) and signals and abstract
   sockets outside (ABI >= 6).
3. **An audit hook** (``sys.addaudithook``): refuses writes outside the working directory, processes,
   signals, ``ctypes``, network sockets, raising limits, tracing and gc introspection. A refusal raises
   :class:`SandboxViolation` and is written to the report pipe at once, so catching the exception or
   clearing any list does not hide it. The hook runs on its own copy of this module's globals: the
   program can reach the harness's globals through its frames (``sys._getframe(1).f_globals``) and
   rebinding names there changes nothing. It is still no boundary against code that monkeypatches the
   standard library it relies on; the namespaces are.

**End of program.** Only when the program ran to its end (no ``SystemExit`` of any code, no
``os._exit``, no fatal signal) does the harness read a fresh random token from a pipe the parent filled
and write it to the report pipe; the parent scores "passed" only with that token and exit status 0.
The token is read after the program finished, so an early exit cannot produce it and no guess can match
it. A program written against this harness could read the pipe itself (it runs in the same process,
as in HumanEval's harness); what the kernel layers guarantee is that it cannot harm or read anything.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import types

EXIT_BLOCKED = 97
EXIT_MEMORY = 98
EXIT_SANDBOX_ERROR = 99
BLOCKED_MARKER = "[capscale-sandbox:blocked]"
LAYERS_PREFIX = "[capscale-sandbox:layers]"
END_RECORD = b"end "  # + token: the program ran to its end
BLOCKED_RECORD = b"blocked "  # + reason: the audit hook refused something


class SandboxViolation(PermissionError):
    """Raised in the program when the audit hook refuses an operation."""


def main(config_json: str) -> None:
    # Bound before the program runs: it may monkeypatch ``os``, but not this frame's locals.
    read, write, exit_now = os.read, os.write, os._exit
    try:
        config = json.loads(config_json)
        token_fd, report_fd = config["token_fd"], config["report_fd"]
        os.set_blocking(report_fd, False)  # a full pipe must never block the program
        workdir = os.path.realpath(config["workdir"])
        os.chdir(workdir)
        os.umask(0o077)
        filename = os.path.join(workdir, config["program"])
        with open(filename, encoding="utf-8") as f:
            source = f.read()
        layers = [apply_rlimits(config)]
        if config["landlock"]:
            namespaced = config["namespaced"]
            layers.append(landlock_restrict(writable_paths(workdir, namespaced), network_and_signals=not namespaced))
        import linecache  # noqa: F401  -- loaded before the hook: printing a traceback needs nothing new
        import traceback
        _preload_ctypes()
        violations: list[str] = []
        if config["audit_hook"]:
            install_audit_hook(workdir, violations, report_fd)
            layers.append("audit-hook")
        write(2, f"{LAYERS_PREFIX} {','.join(x.replace(',', ';') for x in layers)}\n".encode())
    except Exception as e:  # the sandbox itself failed; never run the program half-contained
        write(2, f"capscale sandbox setup failed: {e!r}\n".encode())
        exit_now(EXIT_SANDBOX_ERROR)
    status, ran_to_end = run_program(source, filename, traceback)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if violations:
        exit_now(EXIT_BLOCKED)
    if ran_to_end:
        try:
            write(report_fd, END_RECORD + read(token_fd, 64) + b"\n")
        except OSError:
            pass  # the program closed or replaced the pipes: the parent sees no end, the run fails
    exit_now(status)


def _preload_ctypes() -> None:
    """Policy, the same with Landlock on or off: libraries may ``import ctypes`` (numpy does), but the
    hook refuses loading or calling C through it. Importing it opens the C library (an audited
    ``ctypes.dlopen``), so it is imported here, before the hook, whether or not Landlock needed it."""
    try:
        import ctypes  # noqa: F401
    except ImportError:
        pass


def run_program(source: str, filename: str, traceback) -> tuple[int, bool]:
    """Run as a real ``__main__`` module (so pickling and ``if __name__`` work).

    Returns (exit status, ran to its end). ``SystemExit`` of any code means the program stopped before
    its end, e.g. before its tests ran (HumanEval's harness counts it as a failure too)."""
    module = types.ModuleType("__main__")
    module.__file__ = filename
    sys.modules["__main__"] = module
    sys.argv = [filename]
    try:
        exec(compile(source, filename, "exec"), module.__dict__)
        return 0, True
    except SystemExit as e:
        os.write(2, f"\ncapscale sandbox: the program exited before its end (SystemExit({e.code!r}))\n"
                 .encode("utf-8", "replace"))
        if e.code is None or e.code == 0:
            return 0, False
        if isinstance(e.code, int) and 0 < e.code < 256:
            return e.code, False
        return 1, False  # also for codes that would wrap to 0 as an exit status
    except MemoryError:
        os.write(2, b"MemoryError: the program exceeded the sandbox memory limit\n")
        return EXIT_MEMORY, False
    except BaseException as e:
        try:  # skip this function's frame: the traceback starts in the program
            traceback.print_exception(type(e), e, e.__traceback__.tb_next)
        except BaseException:
            pass
        return 1, False


# ----------------------------------------------------------------------------- resource limits


def apply_rlimits(config: dict) -> str:
    cpu = int(config["timeout_s"]) + 1
    lower_limit(resource.RLIMIT_CPU, cpu, cpu + 1)  # SIGXCPU at cpu s, SIGKILL a second later
    lower_limit(resource.RLIMIT_AS, config["memory_mb"] * 2**20)
    lower_limit(resource.RLIMIT_FSIZE, config["max_file_mb"] * 2**20)
    lower_limit(resource.RLIMIT_NOFILE, 64)
    lower_limit(resource.RLIMIT_CORE, 0)
    # Counted per user (per user namespace inside bubblewrap): what this user runs here plus a few.
    lower_limit(resource.RLIMIT_NPROC, count_user_tasks(os.getuid()) + 32)
    return "rlimits"


def lower_limit(which: int, soft: int, hard: int | None = None) -> None:
    """Lower (never raise) a limit; an unprivileged process cannot go above its hard limit."""
    hard = soft if hard is None else hard
    _, current_hard = resource.getrlimit(which)
    if current_hard != resource.RLIM_INFINITY:
        soft, hard = min(soft, current_hard), min(hard, current_hard)
    resource.setrlimit(which, (soft, hard))


def count_user_tasks(uid: int) -> int:
    """Threads of all visible processes whose real uid is ``uid`` (what RLIMIT_NPROC counts)."""
    total = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", encoding="utf-8", errors="replace") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if fields.get("Uid", "").split()[:1] == [str(uid)]:
            total += int(fields.get("Threads", "1").strip() or 1)
    return total


# ----------------------------------------------------------------------------- Landlock

# See the kernel's Documentation/userspace-api/landlock.rst. Syscall numbers 444-446 are the same on
# every architecture.
_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38
_FS_WRITE_FILE = 1 << 1
_FS_WRITE_RIGHTS_ABI1 = (
    _FS_WRITE_FILE
    | (1 << 4) | (1 << 5)  # remove dir, remove file
    | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12)  # make char/dir/reg/sock/fifo/block/sym
)
_FS_REFER = 1 << 13  # ABI 2: rename/link across directories
_FS_TRUNCATE = 1 << 14  # ABI 3
_NET_BIND_AND_CONNECT_TCP = (1 << 0) | (1 << 1)  # ABI 4
_SCOPE_ABSTRACT_UNIX_AND_SIGNAL = (1 << 0) | (1 << 1)  # ABI 6
TREE, FILE = "tree", "file"  # rights of a rule: every write right beneath the path / writing existing files


def writable_paths(workdir: str, namespaced: bool) -> list[tuple[str, str]]:
    """Where Landlock lets the program write. Inside the namespaces: exactly what the mount namespace
    already allows (the working directory; device nodes and the sandbox's own /proc, whose mounts admit
    no new files), so that Landlock on or off gives the same verdict. Without namespaces: the working
    directory and /dev/null. Both: the files behind stdout/stderr (reopened as /dev/stdout by C code)."""
    paths = [(workdir, TREE)] + ([("/dev", FILE), ("/proc", FILE)] if namespaced else [("/dev/null", FILE)])
    for fd in (1, 2):
        try:
            if os.path.isfile(f"/proc/self/fd/{fd}"):
                paths.append((f"/proc/self/fd/{fd}", FILE))
        except OSError:
            pass
    return [(p, kind) for p, kind in paths if os.path.exists(p)]


def landlock_restrict(paths: list[tuple[str, str]], network_and_signals: bool) -> str:
    """Let the kernel refuse writes outside ``paths`` (reads and execution stay allowed) and, with
    ``network_and_signals``, TCP and signals/abstract sockets outside; inside the namespaces the network
    namespace already cuts those off, and refusing them twice would only change error codes.
    Returns the layer's name, or why it is not in force (never raises)."""
    try:
        import ctypes
    except ImportError as e:
        return f"no-landlock({e})"

    class RulesetAttr(ctypes.Structure):
        _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                    ("scoped", ctypes.c_uint64)]

    class PathBeneathAttr(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syscall = libc.syscall
        syscall.restype = ctypes.c_long
        prctl = libc.prctl
        prctl.restype = ctypes.c_int
    except (OSError, AttributeError) as e:
        return f"no-landlock({e})"

    def fail(what: str) -> str:
        return f"no-landlock({what}: {os.strerror(ctypes.get_errno())})"

    abi = syscall(ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET), None, ctypes.c_size_t(0),
                  ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION))
    if abi < 1:
        return fail("unsupported")
    fs = _FS_WRITE_RIGHTS_ABI1 | (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0)
    attr = RulesetAttr(fs, _NET_BIND_AND_CONNECT_TCP if abi >= 4 and network_and_signals else 0,
                       _SCOPE_ABSTRACT_UNIX_AND_SIGNAL if abi >= 6 and network_and_signals else 0)
    attr_size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = syscall(ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET), ctypes.byref(attr),
                      ctypes.c_size_t(attr_size), ctypes.c_uint32(0))
    if ruleset < 0:
        return fail("create_ruleset")
    rights = {TREE: fs, FILE: _FS_WRITE_FILE | (_FS_TRUNCATE if abi >= 3 else 0)}
    try:
        for path, kind in paths:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError as e:
                return f"no-landlock(open {path}: {e.strerror})"
            try:
                rule = PathBeneathAttr(rights[kind], fd)
                if syscall(ctypes.c_long(_SYS_LANDLOCK_ADD_RULE), ctypes.c_int(ruleset),
                           ctypes.c_int(_LANDLOCK_RULE_PATH_BENEATH), ctypes.byref(rule), ctypes.c_uint32(0)) != 0:
                    return fail(f"add_rule {path}")
            finally:
                os.close(fd)
        if prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            return fail("no_new_privs")
        if syscall(ctypes.c_long(_SYS_LANDLOCK_RESTRICT_SELF), ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            return fail("restrict_self")
    finally:
        os.close(ruleset)
    return f"landlock-abi{abi}"


# ----------------------------------------------------------------------------- the audit hook

# Event names and argument positions: CPython's "Audit events table".
_WRITE_OPEN_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
_WRITABLE_OUTSIDE = ("/dev/null",)
# event -> ((index of a path argument, index of its dir_fd argument or None), ...); read-only view, so
# that the program cannot empty it through the harness's globals
_PATH_EVENTS = types.MappingProxyType({
    "os.remove": ((0, 1),),
    "os.rmdir": ((0, 1),),
    "os.mkdir": ((0, 2),),
    "os.chmod": ((0, 2),),
    "os.chown": ((0, 3),),
    "os.utime": ((0, 3),),
    "os.truncate": ((0, None),),
    "os.setxattr": ((0, None),),
    "os.removexattr": ((0, None),),
    "os.chflags": ((0, None),),
    "os.lchflags": ((0, None),),
    "os.rename": ((0, 2), (1, 3)),  # also os.replace
    "os.link": ((0, 2), (1, 3)),  # a hard link to an outside file would make it writable
    "os.symlink": ((1, 2),),  # the target is checked separately
    "shutil.rmtree": ((0, 1),),
    "shutil.chown": ((0, None),),
    "shutil.move": ((0, None), (1, None)),
    "shutil.copyfile": ((1, None),),
    "shutil.copymode": ((1, None),),
    "shutil.copystat": ((1, None),),
    "shutil.copytree": ((1, None),),
})
_PROCESS_EVENTS = frozenset({
    "os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.startfile",
    "subprocess.Popen", "pty.spawn", "os.kill", "os.killpg", "resource.setrlimit", "resource.prlimit",
})
# Ways to reach the hook's closure or the harness's locals: gc walks every object, a trace function can
# rewrite a running frame's locals.
_INTROSPECTION_EVENTS = frozenset({
    "gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys.settrace", "sys.setprofile",
})
_AF_UNIX = 1  # socket.AF_UNIX on Linux and macOS: local socket pairs (asyncio) stay allowed
_POLICY_FUNCTIONS = ("refusal_reason", "_resolve", "_is_inside", "_symlink_target_inside")


def install_audit_hook(workdir: str, violations: list[str], report_fd: int) -> None:
    """Install the hook last; nothing of it stays in a frame the program could reach."""
    _disable_fork_exec(violations, report_fd)
    sys.addaudithook(_make_audit_hook(os.path.realpath(workdir), violations, report_fd, _private_policy()))


def _private_policy():
    """``refusal_reason`` and its helpers on a private copy of this module's globals."""
    own = dict(globals())
    for name in _POLICY_FUNCTIONS:
        f = own[name]
        own[name] = types.FunctionType(f.__code__, own, f.__name__, f.__defaults__, f.__closure__)
    return own["refusal_reason"]


def _make_audit_hook(root: str, violations: list[str], report_fd: int, reason_of):
    """The hook reports every refusal before raising: in the report pipe (the verdict), on stderr (for
    people) and in ``violations`` (the exit status)."""
    watched = frozenset(_PATH_EVENTS) | _PROCESS_EVENTS | _INTROSPECTION_EVENTS | {"open"}
    report = _reporter(violations, report_fd)

    def hook(event: str, args: tuple) -> None:
        if event in watched or event.startswith(("ctypes.", "socket.")):
            reason = reason_of(event, args, root)
            if reason is not None:
                report(reason)
                raise SandboxViolation(f"capscale sandbox refused {reason}")

    return hook


def _reporter(violations: list[str], report_fd: int):
    write, marker = os.write, BLOCKED_MARKER

    def report(reason: str) -> None:
        violations.append(reason)
        for fd, line in ((report_fd, BLOCKED_RECORD + reason.encode("utf-8", "replace") + b"\n"),
                         (2, f"\n{marker} {reason}\n".encode("utf-8", "replace"))):
            try:
                write(fd, line)
            except OSError:
                pass

    return report


def refusal_reason(event: str, args: tuple, root: str) -> str | None:
    """Why the audit hook refuses ``event`` (None: allowed). ``root`` is the working directory's real path."""
    if event == "open":
        path, flags = args[0], args[2] if len(args) > 2 else 0
        if isinstance(path, int) or not flags & _WRITE_OPEN_FLAGS:
            return None  # reading, or an already open descriptor
        if _resolve(path) in _WRITABLE_OUTSIDE or _is_inside(path, None, root):
            return None
        return f"open for writing outside the working directory: {path!r}"
    if event in _PATH_EVENTS:
        for path_index, dir_fd_index in _PATH_EVENTS[event]:
            dir_fd = args[dir_fd_index] if dir_fd_index is not None and dir_fd_index < len(args) else None
            if not _is_inside(args[path_index], dir_fd, root):
                return f"{event} outside the working directory: {args[path_index]!r}"
        if event == "os.symlink" and not _symlink_target_inside(args[0], args[1], root):
            return f"os.symlink to outside the working directory: {args[0]!r}"
        return None
    if event in _PROCESS_EVENTS:
        return f"{event} (no processes, signals or limit changes in the sandbox)"
    if event in _INTROSPECTION_EVENTS:
        return f"{event} (no tracing or gc introspection in the sandbox)"
    if event.startswith("ctypes."):
        return f"{event} (no ctypes in the sandbox)"
    if event.startswith("socket."):
        if event == "socket.gethostname" or (event == "socket.__new__" and args[1] == _AF_UNIX):
            return None
        return f"{event} (no network in the sandbox)"
    return None


def _resolve(path, dir_fd: int | None = None) -> str:
    """Real absolute path of a path or descriptor (via /proc/self/fd); '' when unknowable."""
    try:
        if isinstance(path, int):
            return os.path.realpath(os.readlink(f"/proc/self/fd/{path}"))
        path = os.fsdecode(os.fspath(path))
        if not os.path.isabs(path) and dir_fd not in (None, -1):
            path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
        return os.path.realpath(path)
    except (OSError, TypeError, ValueError):
        return ""


def _is_inside(path, dir_fd: int | None, root: str) -> bool:
    real = _resolve(path, dir_fd)
    return real == root or real.startswith(root + os.sep)


def _symlink_target_inside(target, link, root: str) -> bool:
    """A link inside pointing outside would make the outside writable through it."""
    try:
        target = os.fsdecode(os.fspath(target))
        link = os.fsdecode(os.fspath(link))
    except (TypeError, ValueError):
        return False
    if not os.path.isabs(target):
        target = os.path.join(os.path.dirname(os.path.abspath(link)), target)
    return _is_inside(target, None, root)


def _disable_fork_exec(violations: list[str], report_fd: int) -> None:
    """multiprocessing's spawn/forkserver and subprocess call _posixsubprocess.fork_exec, which raises no
    audit event; subprocess holds its own reference (``subprocess._fork_exec``) once imported."""
    try:
        import _posixsubprocess
    except ImportError:
        return
    report = _reporter(violations, report_fd)

    def refuse(*args, **kwargs):
        report("_posixsubprocess.fork_exec")
        raise SandboxViolation("capscale sandbox refused _posixsubprocess.fork_exec")

    _posixsubprocess.fork_exec = refuse
    if "subprocess" in sys.modules:
        sys.modules["subprocess"]._fork_exec = refuse


if __name__ == "__main__":
    main(sys.argv[1])
