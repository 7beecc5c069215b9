"""A TPM for the tests: `swtpm socket` on 127.0.0.1 (free ports), its own state directory,
stopped at the end whatever happened. Each instance is another machine's TPM."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time



def _port_pair() -> int:
    for _ in range(100):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError("no two free ports in a row")


class Swtpm:
    def __init__(self, work: str):
        self.state = tempfile.mkdtemp(prefix="swtpm-", dir=work)
        # The swtpm TCTI finds the control channel at the server's port + 1.
        self.port = _port_pair()
        self.ctrl = self.port + 1
        self.proc: subprocess.Popen | None = None

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def start(self) -> None:
        self.log = open(os.path.join(self.state, "swtpm.log"), "ab")
        self.proc = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={self.state}",
             "--server", f"type=tcp,port={self.port},bindaddr=127.0.0.1",
             "--ctrl", f"type=tcp,port={self.ctrl},bindaddr=127.0.0.1", "--flags", "not-need-init,startup-clear"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"swtpm exited: see {self.log.name}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("swtpm did not listen")

    def tool(self, *args: str) -> str:
        return subprocess.run(list(args), env={**os.environ, "TPM2TOOLS_TCTI": self.tcti}, capture_output=True,
                              text=True, check=True, timeout=60).stdout

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()


@contextlib.contextmanager
def swtpm(work: str):
    tpm = Swtpm(work)
    tpm.start()
    try:
        yield tpm
    finally:
        tpm.stop()
        shutil.rmtree(tpm.state, ignore_errors=True)
