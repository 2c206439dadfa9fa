"""A webhook receiver on loopback for the sending tests, that can be as slow as an attacker's: by path, it answers
at once, or sends its status line and then one header byte at a time and never finishes (`/trickle...`)."""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Hit:
    path: str
    host: str
    webhook_id: str
    at: float


@dataclass
class Receiver:
    trickle_seconds: float = 0.5
    got: list[Hit] = field(default_factory=list)
    open: Counter[str] = field(default_factory=Counter)
    """Connections of each webhook id still open (a trickle lasts until the sender hangs up)."""
    peak: Counter[str] = field(default_factory=Counter)
    """The most connections of each path open at once."""

    def __post_init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}/{path}"

    def hits(self, path: str) -> list[Hit]:
        with self.lock:
            return [hit for hit in self.got if hit.path == f"/{path}"]

    def trickling(self, path: str) -> int:
        with self.lock:
            return self.open[f"/{path}"]

    def close(self) -> None:
        self.stopped.set()
        self.sock.close()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1]
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
            while len(body) < int(headers.get("content-length", 0)):
                body += conn.recv(65536)
            with self.lock:
                self.got.append(Hit(path, headers.get("host", ""), headers.get("webhook-id", ""), time.time()))
                self.open[path] += 1
                self.peak[path] = max(self.peak[path], self.open[path])
            try:
                if path.startswith("/trickle"):
                    self._trickle(conn)
                else:
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            finally:
                with self.lock:
                    self.open[path] -= 1

    def _trickle(self, conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nx-slowly: ")
        conn.settimeout(self.trickle_seconds)
        while not self.stopped.is_set():
            try:
                if not conn.recv(1):  # the sender hung up
                    return
            except socket.timeout:
                try:
                    conn.sendall(b"a")
                except OSError:
                    return
            except OSError:
                return
