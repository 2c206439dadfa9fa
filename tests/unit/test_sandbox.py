"""The python grader's sandbox, attacked: each escape is stopped with the error a user would see, the samples
around it are graded, and the calling process carries on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ftserve.graders import PythonLimits, run_batch, run_grader
from ftserve.graders.sandbox import CHILD, SampleResult, grade_batch

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox confines itself with Linux's layers")

LIMITS = PythonLimits(cpu_seconds=0.5, wall_seconds=1.0, start_seconds=5.0, memory_mb=256)

# One grader, one process: each item names the escape its sample tries.
SOURCE = textwrap.dedent('''
    import os

    def grade(sample, item):
        kind = item["try"]
        if kind == "honest":
            return len(sample["output_text"]) / 10
        if kind == "socket":
            import socket
            socket.create_connection(("127.0.0.1", 9), timeout=1)
        if kind == "passwd":
            return len(open("/etc/passwd").read())
        if kind == "data_dir":
            return len(open(item["path"]).read())
        if kind == "list_data_dir":
            return len(os.listdir(os.path.dirname(item["path"])))
        if kind == "fork_bomb":
            while True:
                os.fork()
        if kind == "subprocess":
            import subprocess
            subprocess.run(["ls"])
        if kind == "endless":
            while True:
                pass
        if kind == "sleep":
            import time
            time.sleep(60)
        if kind == "huge":
            return len(b"x" * 10**10)
        if kind == "write_outside":
            open(item["path"] + ".stolen", "w").write("x")
        if kind == "scratch":
            with open("notes.txt", "w") as file:
                file.write("kept")
            return len(open("notes.txt").read())
        if kind == "ctypes":
            import ctypes
            return ctypes.CDLL(None).system(b"ls")
        if kind == "kill_parent":
            os.kill(os.getppid(), 9)
        if kind == "secrets":
            return float(len([name for name in os.environ if name.startswith("FTSERVE")]))
        if kind == "numpy":
            import numpy
            return numpy.float32(0.25)
        if kind == "not_a_number":
            return "1.0"
        if kind == "raises":
            return {}["missing"]
''')

RAISING_LINE = SOURCE.splitlines().index('        return {}["missing"]') + 1
ESCAPES = {  # what each try gets: the failure, and words its details hold
    "socket": ("runtime", "does not allow socket"),
    "passwd": ("runtime", "'/etc/passwd' outside the Python installation"),
    "data_dir": ("runtime", "secret.txt' outside the Python installation"),
    "list_data_dir": ("runtime", "does not allow os.listdir"),
    "fork_bomb": ("runtime", "does not allow os.fork"),
    "subprocess": ("runtime", "does not allow subprocess.Popen"),
    "endless": ("cpu_time", None),
    "sleep": ("timeout", None),
    "huge": ("memory", "out of memory"),
    "write_outside": ("runtime", "outside its scratch directory"),
    "ctypes": ("runtime", "does not allow ctypes.dlopen"),
    "kill_parent": ("runtime", "does not allow os.kill"),
    "not_a_number": ("invalid", "returned '1.0', not a finite number"),
    "raises": ("runtime", f"KeyError: 'missing' (line {RAISING_LINE})"),
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stand-in for ftserve's data directory, with something a grader must not read."""
    directory = tmp_path_factory.mktemp("data")
    (directory / "secret.txt").write_text("the server's secret")
    return directory


@pytest.fixture(scope="module")
def graded(data_dir: Path) -> dict[str, SampleResult]:
    os.environ["FTSERVE_SECRET_KEY"] = "must not reach a grader"
    try:
        tries = ["honest", *ESCAPES, "scratch", "secrets", "numpy", "honest"]
        item_path = str(data_dir / "secret.txt")
        results = grade_batch(SOURCE, [({"output_text": "hello"}, {"try": kind, "path": item_path})
                                       for kind in tries], LIMITS)
    finally:
        del os.environ["FTSERVE_SECRET_KEY"]
    assert len(results) == len(tries)
    assert results[0].score == results[-1].score == 0.5  # graded before and after every escape
    return dict(zip(tries, results, strict=True))


@pytest.mark.parametrize("kind", ESCAPES)
def test_each_escape_is_stopped_with_its_error(graded: dict[str, SampleResult], kind: str) -> None:
    failure, details = ESCAPES[kind]
    result = graded[kind]
    assert result.score is None and result.failure == failure, result
    if details is not None:
        assert result.details is not None and details in result.details


def test_a_grader_keeps_its_scratch_directory_numpy_and_no_secrets(graded: dict[str, SampleResult],
                                                                    data_dir: Path) -> None:
    assert graded["scratch"].score == 4.0
    assert graded["numpy"].score == 0.25
    assert graded["secrets"].score == 0.0  # the process's environment holds no FTSERVE_* variable
    assert sorted(p.name for p in data_dir.iterdir()) == ["secret.txt"]  # nothing written beside it


def test_escapes_map_onto_openais_error_flags(data_dir: Path) -> None:
    grader = {"type": "python", "name": "escape", "source": SOURCE}
    outcomes = run_batch(grader, ["hi", "hi", "hi", "hi"], [{"try": "passwd"}, {"try": "sleep"},
                                                          {"try": "not_a_number"}, {"try": "honest"}], python=LIMITS)
    runtime, timeout, invalid, honest = (outcome.errors for outcome in outcomes)
    assert runtime.python_grader_runtime_error and "/etc/passwd" in (runtime.python_grader_runtime_error_details or "")
    assert timeout.python_grader_server_error and timeout.python_grader_server_error_type == "timeout"
    assert invalid.invalid_variable_error and not invalid.python_grader_runtime_error
    assert not honest.any and outcomes[3].reward == pytest.approx(0.2)
    assert [outcome.reward for outcome in outcomes[:3]] == [0.0, 0.0, 0.0]


def test_a_sample_that_ends_its_process_fails_alone() -> None:
    source = textwrap.dedent('''
        import os
        def grade(sample, item):
            if item["how"] == "exit":
                os._exit(3)
            if item["how"] == "stubborn":  # swallows the CPU timer: RLIMIT_CPU ends the process instead
                while True:
                    try:
                        while True:
                            pass
                    except BaseException:
                        pass
            return 1.0
    ''')
    hows = ["fine", "exit", "fine", "stubborn", "fine"]
    limits = PythonLimits(cpu_seconds=0.5, wall_seconds=8.0, memory_mb=256)  # the CPU limit must come first
    results = grade_batch(source, [({}, {"how": how}) for how in hows], limits)
    assert [r.score for r in results] == [1.0, None, 1.0, None, 1.0]
    assert (results[1].failure, results[3].failure) == ("exited", "cpu_time")


def test_a_source_over_256_kb_is_refused_before_anything_runs() -> None:
    source = "def grade(sample, item):\n    return 1.0\n" + "#" * (256 * 1024)
    outcome = run_grader({"type": "python", "name": "big", "source": source}, "x", {}, python=LIMITS)
    assert outcome.errors.python_grader_runtime_error and outcome.reward == 0.0
    assert "limit is 262144 bytes" in (outcome.errors.python_grader_runtime_error_details or "")


def test_module_code_that_fails_fails_every_sample_and_a_missing_grade_is_said() -> None:
    broken = grade_batch("import os\nos.system('ls')\n", [({}, {}), ({}, {})], LIMITS)
    assert [r.failure for r in broken] == ["runtime", "runtime"] and "os.system" in (broken[0].details or "")
    missing = grade_batch("def judge(sample, item):\n    return 1\n", [({}, {})], LIMITS)
    assert missing[0].failure == "runtime" and "no grade(sample, item)" in (missing[0].details or "")


# Under the audit hook: the kernel's layers, tried by code the hook never sees.
KERNEL_PROBE = textwrap.dedent('''
    import importlib.util, json, os, socket, sys
    spec = importlib.util.spec_from_file_location("child", sys.argv[1])
    child = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(child)
    scratch, secret = sys.argv[2], sys.argv[3]
    limits = {"cpu_total": 10, "memory_bytes": 256 << 20, "file_bytes": 1 << 20}
    layers = child.confine(scratch, child.python_roots(), child.LIBRARIES, limits)
    def attempt(action):
        try:
            action()
            return "allowed"
        except OSError as error:
            return type(error).__name__
    print(json.dumps({"layers": sorted(layers), "tries": {
        "socket": attempt(lambda: socket.socket()),
        "fork": attempt(lambda: os.fork()),
        "exec": attempt(lambda: os.execv("/bin/true", ["true"])),
        "kill_parent": attempt(lambda: os.kill(os.getppid(), 0)),
        "passwd": attempt(lambda: open("/etc/passwd").read()),
        "secret": attempt(lambda: open(secret).read()),
        "write_outside": attempt(lambda: open(secret + ".stolen", "w")),
        "scratch": attempt(lambda: open(os.path.join(scratch, "ok"), "w").write("x")),
        "stdlib": attempt(lambda: open(os.__file__).read()),
    }}))
''')


def test_the_kernel_layers_hold_without_the_audit_hook(tmp_path: Path, data_dir: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    probe = subprocess.run([sys.executable, "-I", "-c", KERNEL_PROBE, CHILD, str(scratch),
                            str(data_dir / "secret.txt")], capture_output=True, text=True, timeout=30, check=True)
    report = json.loads(probe.stdout)
    if not {"landlock", "seccomp"} <= set(report["layers"]):
        pytest.skip(f"this kernel allows only {report['layers']}")
    assert report["tries"] == {"socket": "PermissionError", "fork": "PermissionError", "exec": "PermissionError",
                               "kill_parent": "PermissionError", "passwd": "PermissionError",
                               "secret": "PermissionError", "write_outside": "PermissionError",
                               "scratch": "allowed", "stdlib": "allowed"}


def test_a_grader_that_fools_the_audit_hook_still_cannot_read_outside(data_dir: Path) -> None:
    source = textwrap.dedent('''
        import os, posixpath
        def grade(sample, item):
            harmless = os.getcwd() + "/harmless"
            posixpath.abspath = lambda path: harmless  # the last step of the realpath the hook checks with
            return len(os.read(os.open(item["path"], os.O_RDONLY), 100))
    ''')
    result = grade_batch(source, [({}, {"path": str(data_dir / "secret.txt")})], LIMITS)[0]
    if result.score is not None:
        pytest.skip("no Landlock on this kernel: the audit hook is the only file rule")
    assert result.failure == "runtime" and "Permission denied" in (result.details or "")
