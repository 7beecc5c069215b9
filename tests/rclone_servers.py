"""Real remotes for the offsite tests: `rclone serve sftp` and `rclone serve webdav` on
127.0.0.1, on a free port with generated credentials, each with an rclone config file
that names it (as a user's would), stopped at the end whatever happened."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def obscure(password: str) -> str:
    return subprocess.run(["rclone", "obscure", "--", password], capture_output=True, text=True, check=True).stdout.strip()


class Server:
    """One rclone server over `root`; `stop()` kills it (a server lost mid-push), `start()`
    brings it back on the same port with the same credentials."""

    def __init__(self, kind: str, root: str, work: str, name: str | None = None):
        self.kind, self.root, self.work = kind, root, work
        self.name = name or kind
        self.port = free_port()
        self.user, self.password = "pqcfs-" + secrets.token_hex(3), secrets.token_hex(16)
        self.proc: subprocess.Popen | None = None
        os.makedirs(root, exist_ok=True)
        self.config = os.path.join(work, f"rclone-{self.name}.conf")
        with open(self.config, "w") as f:
            if kind == "sftp":
                f.write(f"[{self.name}]\ntype = sftp\nhost = 127.0.0.1\nport = {self.port}\nuser = {self.user}\n"
                        f"pass = {obscure(self.password)}\nshell_type = none\n")
            elif kind == "webdav":
                f.write(f"[{self.name}]\ntype = webdav\nurl = http://127.0.0.1:{self.port}/\nvendor = other\n"
                        f"user = {self.user}\npass = {obscure(self.password)}\n")
            else:
                raise ValueError(kind)
        os.chmod(self.config, 0o600)

    def start(self) -> None:
        env = {**os.environ, "RCLONE_CACHE_DIR": os.path.join(self.work, f"rclone-cache-{self.name}")}
        self.log = open(os.path.join(self.work, f"rclone-{self.name}.log"), "ab")
        self.proc = subprocess.Popen(["rclone", "serve", self.kind, self.root, "--addr", f"127.0.0.1:{self.port}",
                                      "--user", self.user, "--pass", self.password, "--config", "/dev/null"],
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rclone serve {self.kind} exited: see {self.log.name}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"rclone serve {self.kind} did not listen on {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()

    def path(self, rel: str) -> str:
        return f"{self.name}:{rel}"


@contextlib.contextmanager
def served(kind: str, work: str, name: str | None = None):
    server = Server(kind, os.path.join(work, f"served-{name or kind}"), work, name)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)
