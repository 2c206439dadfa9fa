"""The python grader's own process: it confines itself, then runs the caller's `grade(sample, item)` on each
sample the parent (`sandbox.py`) sends, one JSON line in and one out per sample.

It runs as a script (`python -I -B sandbox_child.py`), so it imports only the standard library, and it is one
file because nothing of ours can be imported once it is confined. The layers, outermost first:

- resource limits: CPU time (per sample as a timer the grader can catch, and as RLIMIT_CPU it cannot),
  address space, file size, open files, no new processes (RLIMIT_NPROC; root ignores it, seccomp does not);
- a network namespace of its own, with no interfaces but a down loopback (where the kernel allows one);
- Landlock (Linux 5.13+, no privilege needed): the kernel lets the process read only the Python installation
  and the shared libraries extension modules load, and read and write only its scratch directory;
- seccomp: no sockets, no fork, exec, ptrace or signals to other processes, no io_uring, no namespaces;
- an audit hook (PEP 578): the same rules said politely, as a PermissionError the grader's traceback shows,
  plus ctypes' loads and calls, cffi and gc's object walks refused. A hook is Python and can be fooled; the layers under it
  are the kernel's, so the hook is the message and the kernel is the wall.

The first line in carries the source and the limits; the reply is `{"ready": ...}` with the layers that took
hold, or the error that stopped the module from loading.
"""

from __future__ import annotations

import builtins
import ctypes
import json
import math
import numbers
import os
import resource
import signal
import sys
import sysconfig
import time
import traceback
from collections.abc import Callable
from typing import Any

GRADER_FILE = "<grader>"
MAX_DETAILS = 1000


class OverCpu(BaseException):
    """The sample used its CPU time (a BaseException so a grader's `except Exception` lets it through)."""


class OverTime(BaseException):
    """The sample used its wall-clock time."""


def main() -> None:
    # The protocol keeps private copies of stdin and stdout; the grader's prints and reads meet /dev/null.
    inbox = os.fdopen(os.dup(0), "rb")
    outbox = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    header = json.loads(inbox.readline())
    try:
        roots = python_roots()
        layers = confine(header["scratch"], roots, LIBRARIES, header["limits"])
        arm_audit_hook(tuple(roots), header["scratch"])
    except OSError as error:
        reply(outbox, {"error": "setup", "details": f"the sandbox could not be set up: {error}"})
        return
    limits = header["limits"]
    signal.signal(signal.SIGPROF, _over_cpu)
    signal.signal(signal.SIGALRM, _over_time)
    namespace: dict[str, Any] = {"__name__": "grader", "__builtins__": builtins}
    loaded = step(limits, lambda: exec(compile(header["source"], GRADER_FILE, "exec"), namespace))
    loaded.pop("value", None)
    if "error" in loaded:
        reply(outbox, loaded)
        return
    grade = namespace.get("grade")
    if not callable(grade):
        reply(outbox, {"error": "runtime", "details": "the source defines no grade(sample, item) function"})
        return
    reply(outbox, {"ready": sorted(layers)})
    for line in inbox:
        request = json.loads(line)
        # The return value is read under the timers too: float() of a grader's own number type runs its code.
        graded = step(limits, lambda: number(grade(request["sample"], request["item"])))
        graded.update(graded.pop("value", {}))
        reply(outbox, graded)


def step(limits: dict[str, Any], work: Callable[[], object]) -> dict[str, Any]:
    """Run one piece of the grader's code under its timers: `value` it returned, or the `error` that stopped it."""
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    # The timers interrupt Python code; RLIMIT_CPU (a second later) stops code stuck in C, killing the process.
    resource.setrlimit(resource.RLIMIT_CPU, (min(math.ceil(_cpu_used() + limits["cpu_seconds"]) + 1, hard), hard))
    started = time.monotonic()
    try:
        signal.setitimer(signal.ITIMER_PROF, limits["cpu_seconds"])
        signal.setitimer(signal.ITIMER_REAL, limits["wall_seconds"])
        try:
            result: dict[str, Any] = {"value": work()}
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
            signal.setitimer(signal.ITIMER_REAL, 0)
    except OverCpu:
        result = {"error": "cpu_time"}
    except OverTime:
        result = {"error": "timeout"}
    except MemoryError:
        result = {"error": "memory", "details": "the grader ran out of memory"}
    except BaseException as error:  # the grader's own exception, whatever it is, is its runtime error
        result = {"error": "runtime", "details": describe(error)}
    return {**result, "seconds": time.monotonic() - started}


def number(value: object) -> dict[str, Any]:
    """A score from what grade() returned: a finite real number (numpy's included), else why not."""
    if isinstance(value, numbers.Real) and math.isfinite(score := float(value)):
        return {"score": score}
    shown = repr(value) if isinstance(value, (str, bytes, numbers.Number)) else type(value).__name__
    return {"error": "invalid", "details": f"grade() returned {shown[:200]}, not a finite number"}


def describe(error: BaseException) -> str:
    """The exception's last line, and where in the grader's source it was raised."""
    try:
        last = traceback.format_exception_only(type(error), error)[-1].strip()
    except Exception:  # a __str__ of the grader's that raises
        last = type(error).__name__
    lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__) if frame.filename == GRADER_FILE]
    where = f" (line {lines[-1]})" if lines else ""
    text = last + where
    return text if len(text) <= MAX_DETAILS else text[: MAX_DETAILS - 1] + "…"


def reply(outbox: int, message: dict[str, Any]) -> None:
    data = json.dumps(message).encode() + b"\n"
    while data:
        data = data[os.write(outbox, data):]


def _over_cpu(signum: int, frame: object) -> None:
    raise OverCpu


def _over_time(signum: int, frame: object) -> None:
    raise OverTime


def _cpu_used() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---- confinement -----------------------------------------------------------------------------------------------

# Where the dynamic loader finds the libraries extension modules link (read, not Python's files: Landlock only).
LIBRARIES = ["/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib", "/etc/ld.so.cache"]


def python_roots() -> list[str]:
    """The Python installation this process runs: its prefixes (a virtualenv's and its base's) and the library
    directories sysconfig names, which on some systems lie outside the prefixes."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    paths.update(value for key, value in sysconfig.get_paths().items() if key in ("stdlib", "platstdlib", "purelib",
                                                                                 "platlib"))
    return sorted(os.path.realpath(path) for path in paths if os.path.isdir(path))


def confine(scratch: str, read_roots: list[str], lib_roots: list[str], limits: dict[str, Any]) -> set[str]:
    """Every layer this kernel allows, strongest last; the names of those that took hold."""
    os.chdir(scratch)
    layers = {"rlimits"}
    if _own_network():
        layers.add("netns")
    # ctypes, imported above for these syscalls, stays imported: numpy imports it, and importing it anew would
    # load a library, which the armed hook refuses; what ctypes can do (load, look up, call, read memory)
    # raises events the hook refuses.
    libc = ctypes.CDLL(None, use_errno=True)
    if _landlock(libc, read_roots + lib_roots, scratch):
        layers.add("landlock")
    if _seccomp(libc):
        layers.add("seccomp")
    # Limits last: the layers above load libraries and would count against them.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the file limit fails instead of killing
    cpu_total = math.ceil(limits["cpu_total"])
    for kind, value in ((resource.RLIMIT_CPU, cpu_total), (resource.RLIMIT_AS, limits["memory_bytes"]),
                        (resource.RLIMIT_FSIZE, limits["file_bytes"]), (resource.RLIMIT_NOFILE, 64),
                        (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, 0)):
        resource.setrlimit(kind, (value, value))
    return layers


CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000


def _own_network() -> bool:
    """Move into an empty network namespace, inside a user namespace of its own that maps our own ids (files
    written in scratch keep their owner, and a grader run by root holds no capability over the host). Where user
    namespaces are off, the network namespace alone (root only). False where neither is allowed."""
    unshare = ctypes.CDLL(None, use_errno=True).unshare
    uid, gid = os.getuid(), os.getgid()
    if unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0:
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as file:
                file.write(text)
        return True
    return bool(unshare(CLONE_NEWNET) == 0)


PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
LANDLOCK_CREATE_RULESET, LANDLOCK_ADD_RULE, LANDLOCK_RESTRICT_SELF = 444, 445, 446  # the same on every arch
READ_ACCESS = (1 << 0) | (1 << 2) | (1 << 3)  # execute (extension modules are mapped executable), read file, dir
FILE_ACCESS = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 14) | (1 << 15)  # what a rule on a single file may grant


def _landlock(libc: ctypes.CDLL, read: list[str], scratch: str) -> bool:
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 1:
        return False
    handled = (1 << {1: 13, 2: 14, 3: 15, 4: 15}.get(abi, 16)) - 1  # every filesystem right this ABI knows

    class Ruleset(ctypes.Structure):
        _fields_ = [("handled_access_fs", ctypes.c_uint64)]

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    attr = Ruleset(handled)
    ruleset = libc.syscall(LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)),
                           ctypes.c_uint32(0))
    if ruleset < 0:
        return False
    try:
        for path, access in [(root, READ_ACCESS) for root in read] + [(scratch, handled)]:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # a root this system does not have
            try:
                is_dir = os.path.isdir(path)
                rule = PathBeneath(access & handled if is_dir else access & handled & FILE_ACCESS, fd)
                if libc.syscall(LANDLOCK_ADD_RULE, ruleset, 1, ctypes.byref(rule), 0) != 0:
                    raise OSError(ctypes.get_errno(), f"landlock_add_rule {path}")
            finally:
                os.close(fd)
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
        if libc.syscall(LANDLOCK_RESTRICT_SELF, ruleset, 0) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self")
    finally:
        os.close(ruleset)
    return True


# Syscalls refused with EPERM, per architecture (numbers from the kernel's unistd headers). clone is allowed
# only for threads (CLONE_THREAD); clone3 says ENOSYS, so the C library falls back to clone for threads.
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
CLONE, CLONE3 = {"x86_64": 56, "aarch64": 220}, 435
DENIED = {
    "x86_64": {  # socket socketpair fork vfork execve execveat ptrace process_vm_readv/writev kill tkill tgkill
        41, 53, 57, 58, 59, 322, 101, 310, 311, 62, 200, 234,
        # pidfd_open pidfd_send_signal pidfd_getfd io_uring_setup/enter/register unshare setns mount bpf
        434, 424, 438, 425, 426, 427, 272, 308, 165, 321,
        298, 323, 250,  # perf_event_open userfaultfd keyctl
    },
    "aarch64": {198, 199, 221, 281, 117, 270, 271, 129, 130, 131, 434, 424, 438, 425, 426, 427, 97, 268, 40, 280,
                241, 282, 219},
}
CLONE_THREAD, EPERM, ENOSYS = 0x10000, 1, 38
RET_ALLOW, RET_ERRNO, RET_KILL = 0x7FFF0000, 0x00050000, 0x80000000
LD_ABS, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06


def _seccomp(libc: ctypes.CDLL) -> bool:
    machine = os.uname().machine
    if machine not in AUDIT_ARCH:
        return False
    program = [
        (LD_ABS, 0, 0, 4), (JEQ, 1, 0, AUDIT_ARCH[machine]), (RET, 0, 0, RET_KILL),  # a foreign ABI: no
        (LD_ABS, 0, 0, 0), (JGE, 0, 1, 0x40000000), (RET, 0, 0, RET_ERRNO | EPERM),  # x32's numbers: no
        (JEQ, 0, 1, CLONE3), (RET, 0, 0, RET_ERRNO | ENOSYS),
    ]
    for nr in sorted(DENIED[machine]):
        program += [(JEQ, 0, 1, nr), (RET, 0, 0, RET_ERRNO | EPERM)]
    program += [
        (JEQ, 1, 0, CLONE[machine]), (RET, 0, 0, RET_ALLOW),
        (LD_ABS, 0, 0, 16), (JSET, 1, 0, CLONE_THREAD), (RET, 0, 0, RET_ERRNO | EPERM), (RET, 0, 0, RET_ALLOW),
    ]

    class Filter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                    ("k", ctypes.c_uint32)]

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]

    filters = (Filter * len(program))(*[Filter(*instruction) for instruction in program])
    fprog = Program(len(program), filters)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "seccomp")
    return True


# ---- the audit hook --------------------------------------------------------------------------------------------

REFUSED_EVENTS = ("socket.", "subprocess.", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.system",
                  "os.kill", "os.killpg", "os.forkpty", "pty.", "ctypes.", "signal.pthread_kill", "gc.get_objects", "gc.get_referrers", "gc.get_referents", "urllib.Request",
                  "http.client.", "ftplib.", "smtplib.", "imaplib.", "poplib.", "nntplib.", "telnetlib.",
                  "webbrowser.", "sys.remote_exec")
# cffi calls C without raising events (seccomp and Landlock still hold under it); the test modules poke memory.
REFUSED_IMPORTS = frozenset({"cffi", "_cffi_backend", "_testcapi", "_testinternalcapi", "_xxsubinterpreters"})
READ_EVENTS = frozenset({"os.listdir", "os.scandir", "os.chdir", "glob.glob", "os.listxattr", "os.getxattr"})
WRITE_EVENTS = frozenset({"os.mkdir", "os.remove", "os.rmdir", "os.rename", "os.replace", "os.link", "os.symlink",
                          "os.truncate", "os.chmod", "os.chown", "os.utime", "os.setxattr", "os.removexattr",
                          "os.chflags", "os.lchflags", "os.mkfifo", "os.mknod"})
PATHS = (str, bytes, os.PathLike)
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def arm_audit_hook(read_roots: tuple[str, ...], scratch: str) -> None:
    """Refuse, from here on, what the grader may not do. Built inside this function and kept nowhere else, so
    the grader's code has no name to reach it by."""
    realpath, fsdecode, fspath = os.path.realpath, os.fsdecode, os.fspath
    readable = tuple(realpath(root) + "/" for root in read_roots) + (realpath(scratch) + "/",)
    writable = (realpath(scratch) + "/",)

    def inside(path: Any, roots: tuple[str, ...]) -> bool:
        if isinstance(path, int) or path is None:  # an open descriptor: its file was checked when it was opened
            return True
        text = fsdecode(fspath(path))
        return (realpath(text) + "/").startswith(roots)

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event.startswith(REFUSED_EVENTS):
            raise PermissionError(f"the python grader's sandbox does not allow {event}")
        if event == "import" and args[0].partition(".")[0] in REFUSED_IMPORTS:
            raise PermissionError(f"the python grader's sandbox does not allow importing {args[0]}")
        if event == "open":
            path, mode, flags = args
            writes = any(c in (mode or "") for c in "wax+") or bool((flags or 0) & WRITE_FLAGS)
            if not inside(path, writable if writes else readable):
                where = "outside its scratch directory" if writes else "outside the Python installation"
                raise PermissionError(f"the python grader's sandbox does not allow opening {path!r} {where}")
        elif event in READ_EVENTS and args and not inside(args[0], readable):
            raise PermissionError(f"the python grader's sandbox does not allow {event} on {args[0]!r}")
        elif event in WRITE_EVENTS and not all(inside(a, writable) for a in args[:2] if isinstance(a, PATHS)):
            raise PermissionError(f"the python grader's sandbox allows {event} only in its scratch directory")

    sys.addaudithook(hook)


if __name__ == "__main__":
    main()
