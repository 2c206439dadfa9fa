"""`ftserve export` against a server that sends hostile answers: a tar member that points outside the
announced directory, a link, a device, a name sent twice, a truncated stream, a file name that is a path.
Each is refused with one line and exit code 1, and nothing is left on disk, inside `--out` or beside it.
An honest answer (the server's own tar stream) is unpacked, and replaces an earlier export whole."""

from __future__ import annotations

import io
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from ftserve.api.routes.extensions import tar_stream
from ftserve.cli.export import Refused, announced_name
from ftserve.cli.main import app


@dataclass
class Answer:
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class FakeServer(ThreadingHTTPServer):
    answer = Answer()


class Handler(BaseHTTPRequestHandler):
    server: FakeServer

    def do_GET(self) -> None:  # the name http.server calls
        answer = self.server.answer
        self.send_response(200)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        self.wfile.write(answer.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[FakeServer]:
    fake = FakeServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=fake.serve_forever, daemon=True)
    thread.start()
    yield fake
    fake.shutdown()
    fake.server_close()


def export(server: FakeServer, out: Path, answer: Answer, format: str = "adapter") -> Result:
    server.answer = answer
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    return CliRunner().invoke(app, ["export", "ft:m", "--format", format, "--out", str(out), "--base-url", url],
                              env={"OPENAI_API_KEY": None, "OPENAI_BASE_URL": None})


def tar_of(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return buffer.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"weights", link: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644
    return info, data


def tar_answer(body: bytes, filename: str = "adapter.tar") -> Answer:
    return Answer(body, {"Content-Type": "application/x-tar", "Content-Disposition": f'attachment; filename="{filename}"'})


def everything(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


GOOD = member("adapter/adapter_config.json", data=b"{}")

HOSTILE = {
    "parent": [GOOD, member("adapter/../../escaped")],
    "absolute": [member("/tmp/ftserve-export-escaped")],
    "sibling": [GOOD, member("merged/model.safetensors")],  # a file of --out the export does not announce
    "the root as a file": [member("adapter")],
    "symlink": [member("adapter/link", tarfile.SYMTYPE, link="/etc"), member("adapter/link/passwd")],
    "hardlink": [GOOD, member("adapter/passwd", tarfile.LNKTYPE, link="/etc/passwd")],
    "device": [member("adapter/null", tarfile.CHRTYPE)],
    "fifo": [member("adapter/pipe", tarfile.FIFOTYPE)],
    "twice": [GOOD, member("adapter/adapter_config.json", data=b"replaced")],
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_tar_is_refused_and_leaves_nothing(server: FakeServer, tmp_path: Path, case: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    result = export(server, out, tar_answer(tar_of(*HOSTILE[case])))
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("ftserve: the export ") and result.stderr.count("\n") == 1
    assert "nothing was written" in result.stderr and "Traceback" not in result.output
    assert everything(tmp_path) == {"out"}
    assert not Path("/tmp/ftserve-export-escaped").exists()


def test_a_truncated_tar_leaves_no_partial_files(server: FakeServer, tmp_path: Path) -> None:
    body = tar_of(GOOD, member("adapter/adapter_model.safetensors", data=b"x" * 10_000))
    result = export(server, tmp_path / "out", tar_answer(body[:2048]))  # the first file whole, the second cut
    assert result.exit_code == 1 and "not a readable tar" in result.stderr, result.output
    assert everything(tmp_path) == set()  # --out did not exist before, and is not left behind


@pytest.mark.parametrize("disposition", [
    'attachment; filename=".."', 'attachment; filename="...tar"', 'attachment; filename="../adapter.tar"',
    'attachment; filename="/etc.tar"', 'attachment; filename=""', "attachment", None,
])
def test_an_unusable_file_name_is_one_line_and_exit_1(server: FakeServer, tmp_path: Path, disposition: str | None) -> None:
    headers = {"Content-Type": "application/x-tar"} | ({"Content-Disposition": disposition} if disposition else {})
    result = export(server, tmp_path / "out", Answer(tar_of(GOOD), headers))
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("ftserve: the server announced no usable file name") and result.stderr.count("\n") == 1
    assert everything(tmp_path) == set()


def test_a_gguf_file_named_as_a_path_is_refused(server: FakeServer, tmp_path: Path) -> None:
    answer = Answer(b"GGUF", {"Content-Type": "application/octet-stream",
                              "Content-Disposition": 'attachment; filename=".."'})
    result = export(server, tmp_path / "out", answer, format="gguf")
    assert result.exit_code == 1 and "no usable file name" in result.stderr
    assert everything(tmp_path) == set()


@pytest.mark.parametrize("name", ["a\x00b", "a\nb", "adapter\\..\\x"])
def test_control_characters_and_backslashes_are_not_a_name(name: str) -> None:
    with pytest.raises(Refused):
        announced_name(f'attachment; filename="{name}"', is_tar=False)


def test_the_servers_own_tar_is_unpacked_and_replaces_an_earlier_export(server: FakeServer, tmp_path: Path) -> None:
    exported = tmp_path / "exports" / "adapter"
    (exported / "nested").mkdir(parents=True)
    (exported / "adapter_config.json").write_text("{}")
    (exported / "nested" / "adapter_model.safetensors").write_bytes(b"w" * 3000)
    answer = tar_answer(b"".join(tar_stream(exported, "adapter")))
    out = tmp_path / "out"
    (out / "adapter").mkdir(parents=True)
    (out / "adapter" / "stale.bin").write_bytes(b"from an earlier export")

    result = export(server, out, answer)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out / "adapter")
    assert everything(out) == {"adapter", "adapter/adapter_config.json", "adapter/nested",
                               "adapter/nested/adapter_model.safetensors"}
    assert (out / "adapter" / "nested" / "adapter_model.safetensors").read_bytes() == b"w" * 3000


def test_a_gguf_file_is_written_whole(server: FakeServer, tmp_path: Path) -> None:
    answer = Answer(b"GGUF" * 1000, {"Content-Type": "application/octet-stream",
                                     "Content-Disposition": 'attachment; filename="m.f16.gguf"'})
    result = export(server, tmp_path, answer, format="gguf")
    assert result.exit_code == 0, result.output
    assert everything(tmp_path) == {"m.f16.gguf"} and (tmp_path / "m.f16.gguf").read_bytes() == b"GGUF" * 1000
