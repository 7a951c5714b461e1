"""The sandbox runs generated code, and every way out we know of is contained and scored as a failure.

Most tests need kernel isolation (bubblewrap that can create namespaces here); they are skipped, with
the reason, where there is none. ``audit_hook=False`` runs stand for a program that defeated the audit
hook: what they show is held by the kernel alone.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from capscale.scoring import sandbox
from capscale.scoring.checkers import python_program
from capscale.scoring.sandbox import SandboxUnavailable, kernel_isolation, run_python
from capscale.scoring.sandbox_child import SandboxViolation, refusal_reason

ISOLATION = kernel_isolation()
LAYERS = sandbox.sandbox_layers()
LANDLOCK = any(layer.startswith("landlock") for layer in LAYERS)
needs_landlock = pytest.mark.skipif(not LANDLOCK, reason="Landlock is not available on this kernel")

PROMPT = 'def add(a, b):\n    """Return the sum of a and b."""\n'
TESTS = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n\ncheck(add)\n"
GOOD = "    return a + b\n"
BAD = "    return a - b\n"
# The two lines that switched the old audit hook off: its policy was looked up in the harness's globals.
SWITCH_OFF = "import sys\nsys._getframe(1).f_globals['refusal_reason'] = lambda *a: None\n"


def run(code: str, **kw):
    """Run in the kernel sandbox (skipped where there is none); ``kw`` goes to sandbox._execute."""
    if not ISOLATION.available and kw.get("namespaces", True):
        pytest.skip(f"no kernel isolation here: {ISOLATION.reason} (apt-get install bubblewrap)")
    kw.setdefault("timeout_s", 3.0)
    return sandbox._execute(textwrap.dedent(code), **kw)


def run_check(completion: str, **kw):
    """The python check of ``add``: prompt + completion + tests."""
    return run(python_program(PROMPT, completion, TESTS), **kw)


def processes_with_arg(token: str) -> list[int]:
    """Pids whose command line contains ``token`` (no psutil needed)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if token.encode() in f.read().split(b"\0"):
                        found.append(int(name))
            except OSError:
                pass
    return found


def no_process_left(token: str) -> bool:
    deadline = time.monotonic() + 3
    while processes_with_arg(token) and time.monotonic() < deadline:
        time.sleep(0.05)  # SIGKILL is asynchronous
    left = processes_with_arg(token)
    for pid in left:  # do not leave them behind if the assertion fails
        os.kill(pid, 9)
    return not left


# ------------------------------------------------------------------ plain programs


def test_passing_code_passes_and_output_is_captured():
    r = run("print('hello'); import sys; print('warn', file=sys.stderr)")
    assert (r.passed, r.status, r.returncode) == (True, "passed", 0)
    assert r.stdout == "hello\n"
    assert r.stderr == "warn\n"
    assert {"namespaces(bwrap)", "audit-hook", "rlimits"} <= set(r.layers)
    assert "seccomp(no-new-processes)" in r.layers or sandbox.seccomp_filter() is None


def test_failing_assert_fails_with_traceback():
    r = run("def f(x):\n    return x + 1\nassert f(1) == 3\n")
    assert (r.passed, r.status, r.returncode) == (False, "failed", 1)
    assert "AssertionError" in r.stderr and "program.py" in r.stderr


def test_syntax_error_fails():
    r = run("def f(:\n    pass\n")
    assert r.status == "failed" and "SyntaxError" in r.stderr


@pytest.mark.parametrize("code, status", [
    ("import sys; sys.exit(0)", "exited"),
    ("import sys; sys.exit()", "exited"),
    ("import sys; sys.exit(3)", "failed"),
    ("import sys; sys.exit(256)", "failed"),  # would wrap to 0 as an exit status
    ("import sys; sys.exit('message')", "failed"),
])
def test_exit_codes(code, status):
    assert run(code).status == status


def test_program_runs_as_main_module():
    r = run("""
        import pickle, sys
        class Point:
            pass
        assert __name__ == "__main__" and sys.modules["__main__"].Point is Point
        pickle.loads(pickle.dumps(Point()))
    """)
    assert r.status == "passed", r.stderr


def test_output_is_truncated_to_the_tail():
    r = run("print('x' * 10000 + 'END')", max_output_chars=100)
    assert len(r.stdout) == 100 and r.stdout.endswith("END\n")


# ------------------------------------------------------------------ exiting before the tests ran


EARLY_EXITS = {
    "exit()": BAD + "exit()\n",
    "quit()": BAD + "quit()\n",
    "sys.exit(0)": BAD + "import sys\nsys.exit(0)\n",
    "sys.exit()": BAD + "import sys\nsys.exit()\n",
    "raise SystemExit": BAD + "raise SystemExit\n",
    "os._exit(0)": BAD + "import os\nos._exit(0)\n",
    "__main__ guard": BAD + "\ndef main():\n    return 0\n\nif __name__ == '__main__':\n    import sys\n    sys.exit(main())\n",
    "SystemExit inside a test": "    raise SystemExit(0)\n",
    "atexit handler, then os._exit(0)": BAD + "import atexit, os\natexit.register(print, 'bye')\nos._exit(0)\n",
    "close stdout and stderr, then os._exit(0)": BAD + "import os, sys\nsys.stdout.close()\nos.close(1)\nos.close(2)\nos._exit(0)\n",
    "close every descriptor, then end": BAD + "import os\nos.closerange(0, 1024)\nos._exit(0)\n",
    "kill itself with SIGKILL": BAD + "import signal\nsignal.raise_signal(signal.SIGKILL)\n",
    "kill itself with SIGTERM": BAD + "import signal\nsignal.raise_signal(signal.SIGTERM)\n",
    "forge the end record with a guessed token": BAD + textwrap.dedent("""
        import os
        for fd in range(3, 64):
            try:
                os.write(fd, b"end 0123456789abcdef0123456789abcdef\\n")
            except OSError:
                pass
        os._exit(0)
    """),
}


@pytest.mark.parametrize("namespaces", [True, False], ids=["namespaces", "no-namespaces"])
@pytest.mark.parametrize("how", sorted(EARLY_EXITS))
def test_exiting_before_the_tests_fails(how, namespaces):
    r = run_check(EARLY_EXITS[how], namespaces=namespaces)
    assert not r.passed and r.status in ("exited", "failed"), (r.status, r.stderr)


@pytest.mark.parametrize("namespaces", [True, False], ids=["namespaces", "no-namespaces"])
def test_a_correct_solution_still_passes(namespaces):
    r = run_check(GOOD, namespaces=namespaces)
    assert r.status == "passed", r.stderr
    r = run_check(GOOD + "import sys\nsys.stdout.close()\n", namespaces=namespaces)  # closing stdout is no exit
    assert r.status == "passed", r.stderr


# ------------------------------------------------------------------ time and memory


def test_infinite_loop_is_killed_at_the_timeout():
    start = time.monotonic()
    r = run("while True: pass", timeout_s=1.0)
    elapsed = time.monotonic() - start
    assert (r.passed, r.status) == (False, "timeout")
    assert 1.0 <= r.seconds < 1.8 and elapsed < 2.5  # margin for a loaded machine


def test_sleeping_program_is_killed_at_the_timeout():
    r = run("import time; time.sleep(100)", timeout_s=0.5)
    assert r.status == "timeout" and r.seconds < 1.2


@pytest.mark.parametrize("code", [
    "x = bytearray(10**10)",
    "x = []\nwhile True:\n    x.append(bytearray(10**6))",
    "x = [0] * 10**10",
])
def test_huge_allocation_fails_without_hurting_us(code):
    r = run(code, memory_mb=256)
    assert (r.passed, r.status) == (False, "memory"), r.stderr
    big = bytearray(50 * 10**6)  # this process is unaffected
    assert len(big) == 50 * 10**6


# ------------------------------------------------------------------ processes


DOUBLE_FORK = textwrap.dedent("""
    import os, subprocess
    r, w = os.pipe()
    subprocess._fork_exec([b'/bin/sh', b'-c', b'sleep {arg} &'], [b'/bin/sh'], True, (), None, None,
                          -1, -1, -1, -1, -1, -1, r, w, False, True, -1, None, None, None, -1, None, False)
    import time
    time.sleep(0.3)
""")


@pytest.mark.parametrize("code", [
    "import os\nwhile True:\n    os.fork()",
    "import subprocess\nsubprocess.Popen(['sleep', '987.125'])",
    "import os\nos.system('sleep 987.125 &')",
    "import os\nos.posix_spawn('/bin/sleep', ['sleep', '987.125'], {})",
    "import os\nos.execv('/bin/sleep', ['sleep', '987.125'])",
    "import pty\npty.spawn(['sleep', '987.125'])",
    "import multiprocessing as mp, time\nmp.get_context('spawn').Process(target=time.sleep, args=(987.125,)).start()",
    "import multiprocessing as mp, time\nmp.get_context('fork').Process(target=time.sleep, args=(987.125,)).start()",
    "import os\nos.kill(os.getpid(), 0)",
    DOUBLE_FORK.format(arg="987.125"),  # subprocess kept its own reference to fork_exec
])
def test_process_creation_is_blocked_and_nothing_survives(code):
    r = run(code)
    assert (r.passed, r.status) == (False, "blocked"), r.stderr
    assert "SandboxViolation" in r.stderr
    assert no_process_left("987.125")


def test_without_the_hook_seccomp_refuses_new_processes():
    r = run_check(GOOD + DOUBLE_FORK.format(arg="987.375"), audit_hook=False)
    assert r.status == "failed" and "PermissionError" in r.stderr, r.stderr
    assert no_process_left("987.375")
    r = run("import os\nwhile True:\n    os.fork()", audit_hook=False)  # a fork bomb
    assert r.status == "failed" and "PermissionError" in r.stderr, r.stderr
    r = run("import threading\nt = threading.Thread(target=print, args=('ok',))\nt.start()\nt.join()", audit_hook=False)
    assert r.status == "passed" and r.stdout == "ok\n", r.stderr  # threads stay allowed


def test_a_double_forked_survivor_dies_with_the_run():
    """PID namespace alone (no hook, no seccomp): a setsid-ed grandchild outlives its parent, not the run."""
    r = run_check(GOOD + DOUBLE_FORK.format(arg="987.375"), audit_hook=False, seccomp=False)
    assert r.status == "passed", r.stderr  # a correct answer, and nothing of it is left afterwards
    assert no_process_left("987.375")


def test_timeout_kills_every_process_of_the_run():
    code = "import subprocess\nsubprocess.Popen(['setsid', 'sleep', '987.250'])\nwhile True: pass\n"
    r = run(code, timeout_s=1.0, audit_hook=False, seccomp=False)
    assert r.status == "timeout"
    assert no_process_left("987.250")


def test_catching_the_refusal_still_fails_the_run():
    r = run("""
        import os
        try:
            os.fork()
        except BaseException:
            pass
        os._exit(0)
    """)
    assert r.returncode == 0 and (r.passed, r.status) == (False, "blocked")


def test_refusal_is_reported_even_without_stderr():
    r = run("""
        import os
        os.close(2)
        try:
            os.fork()
        except OSError:
            pass
    """)
    assert (r.returncode, r.status) == (sandbox.EXIT_BLOCKED, "blocked")


def test_clearing_the_harness_record_of_a_refusal_does_not_hide_it():
    r = run_check(GOOD + textwrap.dedent("""
        import os, sys
        try:
            os.fork()
        except OSError:
            pass
        frame = sys._getframe()
        while frame is not None:
            if isinstance(frame.f_locals.get("violations"), list):
                frame.f_locals["violations"].clear()
            frame = frame.f_back
        os.close(2)
    """))
    assert r.status == "blocked"


def test_raising_limits_is_blocked():
    r = run("import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))")
    assert r.status == "blocked"


# ------------------------------------------------------------------ files


ESCAPES = {
    "open": "open({target!r}, 'w').write('x')",
    "append": "open({target!r}, 'a').write('x')",
    "os.open": "import os\nos.open({target!r}, os.O_CREAT | os.O_WRONLY)",
    "pathlib": "import pathlib\npathlib.Path({target!r}).write_text('x')",
    "touch": "import pathlib\npathlib.Path({target!r}).touch()",
    "os.rename": "open('inside.txt', 'w').write('x')\nimport os\nos.rename('inside.txt', {target!r})",
    "os.replace": "open('inside.txt', 'w').write('x')\nimport os\nos.replace('inside.txt', {target!r})",
    "shutil.copy": "open('inside.txt', 'w').write('x')\nimport shutil\nshutil.copy('inside.txt', {target!r})",
    "shutil.move": "open('inside.txt', 'w').write('x')\nimport shutil\nshutil.move('inside.txt', {target!r})",
    "symlink": "import os\nos.symlink({target!r}, 'link')\nopen('link', 'w').write('x')",
    "mkdir": "import os\nos.makedirs({target!r})",
    "mkfifo": "import os\nos.mkfifo({target!r})",
}


@pytest.mark.parametrize("audit_hook", [True, False], ids=["hook", "kernel-alone"])
@pytest.mark.parametrize("how", sorted(ESCAPES))
def test_writing_outside_the_workdir_fails_and_writes_nothing(tmp_path: Path, how: str, audit_hook: bool):
    target = tmp_path / "escaped" / "file.txt" if how == "mkdir" else tmp_path / "escaped.txt"
    r = run(ESCAPES[how].format(target=str(target)), audit_hook=audit_hook)
    assert r.status == ("blocked" if audit_hook and how != "mkfifo" else "failed"), r.stderr  # mkfifo: no audit event
    assert not target.exists() and not (tmp_path / "escaped").exists()


@pytest.mark.parametrize("how", ["remove", "rmtree", "chmod", "truncate", "utime", "link"])
def test_changing_files_outside_the_workdir_is_blocked(tmp_path: Path, how: str):
    victim = tmp_path / "victim" / "data.txt"
    victim.parent.mkdir()
    victim.write_text("keep")
    os.chmod(victim, 0o644)
    code = {
        "remove": f"import os\nos.remove({str(victim)!r})",
        "rmtree": f"import shutil\nshutil.rmtree({str(victim.parent)!r})",
        "chmod": f"import os\nos.chmod({str(victim)!r}, 0o777)",
        "truncate": f"import os\nos.truncate({str(victim)!r}, 0)",
        "utime": f"import os\nos.utime({str(victim)!r}, (0, 0))",
        "link": f"import os\nos.link({str(victim)!r}, 'hard')\nopen('hard', 'w').write('gone')",
    }[how]
    mtime = victim.stat().st_mtime
    r = run(code)
    assert r.status == "blocked", r.stderr
    assert victim.read_text() == "keep" and victim.stat().st_mode & 0o777 == 0o644
    assert victim.stat().st_mtime == mtime


def test_writing_inside_the_workdir_is_allowed():
    r = run("""
        import os, pathlib, shutil, tempfile
        open('a.txt', 'w').write('x')
        os.makedirs('d/e')
        os.rename('a.txt', 'd/a.txt')
        shutil.copy('d/a.txt', 'd/e/b.txt')
        pathlib.Path('c.txt').write_text('y')
        with tempfile.TemporaryFile() as f:
            f.write(b'z')
        with open(os.devnull, 'w') as f:
            f.write('discarded')
        shutil.rmtree('d')
        print(sorted(os.listdir('.')))
    """)
    assert r.status == "passed", r.stderr
    assert r.stdout == "['c.txt', 'program.py']\n"


def test_the_run_leaves_no_files_behind(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    r = run("open('left.txt', 'w').write('x')\nimport os\nos.chmod('.', 0)")
    assert r.status == "passed" and list(tmp_path.iterdir()) == []


def test_file_size_bomb_is_stopped():
    r = run("""
        with open('big.bin', 'wb') as f:
            while True:
                f.write(b'x' * 2**20)
    """, max_file_mb=2)
    assert (r.passed, r.status) == (False, "failed")
    assert "File too large" in r.stderr


def test_output_flood_is_stopped():
    r = run("while True:\n    print('x' * 100000)", max_file_mb=2, max_output_chars=50)
    assert r.status == "failed" and len(r.stdout) <= 50


@needs_landlock
def test_without_namespaces_landlock_alone_stops_writes_outside(tmp_path: Path):
    target = tmp_path / "escaped.txt"
    r = run(f"open({str(target)!r}, 'w')", audit_hook=False, namespaces=False)
    assert r.status == "failed" and "PermissionError" in r.stderr
    assert "audit-hook" not in r.layers and not target.exists()
    fifo = tmp_path / "fifo"  # mkfifo has no audit event: only Landlock stops it
    r = run(f"import os\nos.mkfifo({str(fifo)!r})", namespaces=False)
    assert r.status == "failed" and not fifo.exists()


# ------------------------------------------------------------------ secrets


def test_files_outside_the_workdir_cannot_be_read(tmp_path: Path):
    secret = tmp_path / "secret.txt"
    secret.write_text("FILE-SECRET-42")
    for audit_hook in (True, False):
        r = run_check(GOOD + f"print(open({str(secret)!r}).read())\n", audit_hook=audit_hook)
        assert r.status == "failed" and "FileNotFoundError" in r.stderr and "FILE-SECRET" not in r.stdout
    # nothing of the user's home is there either, but the path down to a Python installation inside it
    home = [str(p) for p in Path.home().iterdir()
            if not any(d == str(p) or d.startswith(str(p) + os.sep) for d in sandbox._python_dirs())]
    r = run(f"import os\nprint([p for p in {home!r} if os.path.lexists(p)])")
    assert r.status == "passed" and r.stdout == "[]\n", r.stderr


def test_parent_environment_does_not_leak(monkeypatch):
    monkeypatch.setenv("CAPSCALE_TEST_SECRET", "hunter2-token")
    r = run("import os; print(sorted(os.environ)); print(os.environ.get('HOME') == os.getcwd())")
    assert r.status == "passed"
    assert "CAPSCALE_TEST_SECRET" not in r.stdout and "hunter2" not in r.stdout
    assert r.stdout.splitlines()[1] == "True"


PROC_ENVIRON = """
import os, sys
leaked = []
for pid in [p for p in os.listdir('/proc') if p.isdigit()]:
    try:
        leaked += [pid] * (b'ENV-SECRET-43' in open(f'/proc/{pid}/environ', 'rb').read())
    except OSError:
        pass
print('leaked', leaked, 'ppid', os.getppid())
print(open('/proc/{PARENT}/environ', 'rb').read())
"""


def test_the_parents_environment_cannot_be_read_through_proc(tmp_path: Path):
    """The parent (a separate process, so the secret is in its initial environment) runs the program."""
    if not ISOLATION.available:
        pytest.skip(f"no kernel isolation here: {ISOLATION.reason}")
    parent = textwrap.dedent(f"""
        import os, sys
        from capscale.scoring.sandbox import run_python
        code = {PROC_ENVIRON!r}.replace('{{PARENT}}', str(os.getpid()))
        r = run_python(code, timeout_s=5.0)
        print(r.status)
        print(r.stdout)
    """)
    out = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, ATTACK_ENV_SECRET="ENV-SECRET-43")).stdout
    assert out.splitlines()[0] == "failed"  # /proc/<real parent pid> does not exist in the sandbox
    assert "leaked [] ppid" in out and "ENV-SECRET-43" not in out


# ------------------------------------------------------------------ network, ctypes, the hook itself


@pytest.mark.parametrize("code", [
    "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)",
    "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)",
    "import urllib.request\nurllib.request.urlopen('http://127.0.0.1:9/')",
    "import ctypes\nctypes.CDLL(None).getpid()",
    "import ctypes\nctypes.string_at(id(1), 8)",
    "import gc\ngc.get_objects()",
    "import sys\nsys.settrace(lambda *a: None)",
])
def test_network_ctypes_and_introspection_are_blocked(code):
    assert run(code).status == "blocked"


def test_local_socket_pairs_and_asyncio_work():
    r = run("import asyncio\nasyncio.run(asyncio.sleep(0))\nprint('ok')")
    assert r.status == "passed", r.stderr


@pytest.fixture
def listeners(tmp_path: Path):
    """A UDP and a TCP socket on loopback and an AF_UNIX socket in a folder, all outside the sandbox."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(0.3)
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(1)
    tcp.settimeout(0.3)
    path = str(tmp_path / "daemon.sock")
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(path)
    unix.listen(1)
    unix.settimeout(0.3)
    yield {"udp": udp, "tcp": tcp, "unix": unix, "udp_port": udp.getsockname()[1],
           "tcp_port": tcp.getsockname()[1], "path": path}
    for s in (udp, tcp, unix):
        s.close()


NETWORK_ATTACKS = {
    "udp": "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'leak', ('127.0.0.1', {udp_port}))\n",
    "tcp": "import socket\nsocket.create_connection(('127.0.0.1', {tcp_port}), timeout=1).send(b'leak')\n",
    "unix": "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({path!r})\ns.send(b'leak')\n",
    "raw": "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)\n",
    "netlink": "import socket\ns = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)\ns.bind((0, 0))\n"
               "assert [n for _, n in socket.if_nameindex()] == ['lo'], socket.if_nameindex()\nraise SystemExit(1)\n",
}


def nothing_arrived(listeners) -> bool:
    try:
        listeners["udp"].recv(100)
        return False
    except socket.timeout:
        pass
    for name in ("tcp", "unix"):
        try:
            listeners[name].accept()[0].close()
            return False
        except socket.timeout:
            pass
    return True


@pytest.mark.parametrize("attack", sorted(NETWORK_ATTACKS))
def test_the_old_hook_switch_off_no_longer_works(listeners, attack):
    r = run_check(GOOD + SWITCH_OFF + NETWORK_ATTACKS[attack].format(**listeners))
    assert r.status == "blocked", r.stderr
    assert nothing_arrived(listeners)


@pytest.mark.parametrize("attack", sorted(NETWORK_ATTACKS))
def test_without_the_hook_the_network_namespace_holds(listeners, attack):
    """As if the hook were defeated: no packet or connection leaves, raw sockets are refused, netlink
    sees only the sandbox's own loopback (the program then exits 1 on purpose)."""
    r = run_check(GOOD + NETWORK_ATTACKS[attack].format(**listeners), audit_hook=False)
    assert nothing_arrived(listeners)
    if attack == "udp":
        assert r.status == "passed"  # a datagram into the sandbox's own loopback goes nowhere
    else:
        assert r.status == "failed", r.stderr
        assert "AssertionError" not in r.stderr


# ------------------------------------------------------------------ Landlock on and off


SAME_VERDICT_PROGRAMS = {
    "correct": python_program(PROMPT, GOOD, TESTS),
    "wrong": python_program(PROMPT, BAD, TESTS),
    "numpy": "import numpy as np\nnp.save('a.npy', np.arange(3))\nassert np.load('a.npy').sum() == 3\n",
    "write /dev/shm": "open('/dev/shm/x', 'w').write('x')\n",
    "multiprocessing lock": "import multiprocessing\nmultiprocessing.Lock()\n",
    "mkfifo inside": "import os\nos.mkfifo('fifo')\n",
    "mkfifo outside": "import os\nos.mkfifo('/tmp/fifo')\n",
    "/dev/stdout": "open('/dev/stdout', 'w').write('x')\n",
    "devices": "import os\nfor d in ('/dev/null', '/dev/zero', '/dev/full'):\n    os.close(os.open(d, os.O_WRONLY))\n",
    "pty": "import os\nos.openpty()\n",
    "write own /proc": "import os\nfd = os.open('/proc/self/comm', os.O_WRONLY)\n",
    "sysctl": "open('/proc/sys/kernel/hostname')\n",
    "tcp to self": "import socket\ns = socket.socket()\ns.bind(('127.0.0.1', 0))\n",
}


@needs_landlock
@pytest.mark.parametrize("audit_hook", [True, False], ids=["hook", "no-hook"])
@pytest.mark.parametrize("name", sorted(SAME_VERDICT_PROGRAMS))
def test_verdicts_are_the_same_with_and_without_landlock(name, audit_hook):
    with_landlock = run(SAME_VERDICT_PROGRAMS[name], audit_hook=audit_hook)
    without = run(SAME_VERDICT_PROGRAMS[name], audit_hook=audit_hook, landlock=False)
    assert any(x.startswith("landlock") for x in with_landlock.layers)
    assert not any(x.startswith("landlock") for x in without.layers)
    assert with_landlock.status == without.status, (with_landlock.stderr, without.stderr)


def test_numpy_imports():
    pytest.importorskip("numpy")
    r = run("import numpy\nprint(numpy.arange(3).sum())")
    assert r.status == "passed" and r.stdout == "3\n", r.stderr


# ------------------------------------------------------------------ no kernel isolation


@pytest.fixture
def no_bwrap(monkeypatch, tmp_path):
    """A machine without bubblewrap: PATH without bwrap, the cached probe forgotten before and after."""
    monkeypatch.setenv("PATH", str(tmp_path))
    kernel_isolation.cache_clear()
    yield
    kernel_isolation.cache_clear()


def test_without_kernel_isolation_python_refuses_unless_unsafe_exec(no_bwrap):
    assert not kernel_isolation().available and "not installed" in kernel_isolation().reason
    with pytest.raises(SandboxUnavailable, match="--unsafe-exec") as e:
        run_python("print(1)")
    assert "apt-get install bubblewrap" in str(e.value)
    r = run_python("print(1)", unsafe_exec=True)
    assert r.status == "passed" and r.layers[0] == "no-namespaces"
    assert sandbox.sandbox_layers()[0] == "no-namespaces"


# ------------------------------------------------------------------ the audit policy itself


def test_refusal_policy(tmp_path: Path):
    root = str(tmp_path.resolve())
    inside, outside = os.path.join(root, "a.txt"), "/etc/capscale-test"
    w = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    assert refusal_reason("open", (outside, "r", os.O_RDONLY), root) is None
    assert refusal_reason("open", (inside, "w", w), root) is None
    assert refusal_reason("open", (outside, "w", w), root) is not None
    assert refusal_reason("open", ("/dev/null", "w", w), root) is None
    assert refusal_reason("open", (root + "-sibling/x", "w", w), root) is not None
    assert refusal_reason("os.rename", (inside, outside, -1, -1), root) is not None
    assert refusal_reason("os.rename", (outside, inside, -1, -1), root) is not None
    assert refusal_reason("os.symlink", ("/etc", os.path.join(root, "l"), -1), root) is not None
    assert refusal_reason("os.symlink", ("a.txt", os.path.join(root, "l"), -1), root) is None
    assert refusal_reason("socket.__new__", (None, 1, 1, 0), root) is None  # AF_UNIX
    assert refusal_reason("socket.__new__", (None, 2, 1, 0), root) is not None
    assert refusal_reason("gc.get_referrers", ((),), root) is not None
    assert refusal_reason("compile", (b"", "<x>"), root) is None
    with pytest.raises(SandboxViolation):
        raise SandboxViolation("is a PermissionError")
