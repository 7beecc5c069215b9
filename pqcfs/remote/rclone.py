"""rclone, driven through its commands: the one way pqcfs reaches a remote.

A remote is an rclone path ("name:path" from the user's rclone config, or a connection
string ":sftp,host=...:path") plus, optionally, the rclone config file to use. Only
ciphertext and sealed records cross here; rclone's own errors become RemoteError with
rclone's last error line, which names the cause (auth, host, path, quota).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

from pqcfs.errors import RemoteError, SetupError

# rclone's exit codes (rclone docs, "Exit Code"): what each means for a pqcfs user.
_EXIT = {
    1: "rclone could not open the remote (or refused the command)",
    2: "rclone failed",
    3: "not found on the remote (directory)",
    4: "not found on the remote (file)",
    5: "a temporary error (network, server busy); it was retried",
    6: "some operations failed",
    7: "a fatal error (authentication, quota, permission)",
    8: "a transfer limit was reached",
}
NOT_FOUND = (3, 4)
TIMEOUT = 600
LISTING_CAP = 256 << 20      # rclone's JSON listing of a remote directory (~2 million objects)
# rclone's own defaults wait 5 minutes on a silent connection and retry a whole copy 3
# times, each transfer trying 10 times: a push to a server that died hangs for many minutes. pqcfs retries
# a failed push itself (with a backoff), so rclone gives up sooner. Any of these can be
# set in the environment (rclone reads RCLONE_<FLAG> for every flag).
DEFAULTS = {"RCLONE_TIMEOUT": "30s", "RCLONE_CONTIMEOUT": "15s", "RCLONE_RETRIES": "1",
            "RCLONE_LOW_LEVEL_RETRIES": "3"}


def available() -> bool:
    return shutil.which("rclone") is not None


@dataclass(frozen=True)
class Remote:
    path: str                   # an rclone path: "name:dir", ":sftp,host=h:dir", "/local/dir"
    config: str | None = None   # rclone config file (None: rclone's default)
    bwlimit: str | None = None
    transfers: int = 4
    # Where the file lists handed to rclone go: a directory its user sweeps (a daemon killed
    # mid-push leaves its lists there, not in /tmp); None: the system's temporary directory.
    scratch: str | None = None

    def at(self, rel: str = "") -> str:
        if not rel:
            return self.path
        return self.path + rel if self.path.endswith((":", "/")) else f"{self.path}/{rel}"

    def _argv(self, *args: str) -> list[str]:
        # rclone dies with whoever started it: a mount daemon killed mid-push must not leave
        # an upload running that the next mount's push would race.
        argv = (["setpriv", "--pdeathsig", "KILL"] if shutil.which("setpriv") else []) + ["rclone", *args]
        if self.config:
            argv += ["--config", self.config]
        if self.bwlimit:
            argv += ["--bwlimit", self.bwlimit]
        return argv

    def run(self, *args: str, data: bytes | None = None, ok=(0,), timeout: float = TIMEOUT,
            on_line=None, cap: int | None = None) -> subprocess.CompletedProcess:
        if not available():
            raise SetupError("rclone is not installed (Debian: apt-get install rclone)")
        argv = self._argv(*args)
        if cap is not None:
            proc = _capped(argv, cap, timeout)
            if proc is None:
                raise RemoteError(f"{self.path}: rclone {args[0]} printed more than {cap >> 20} MiB: the remote "
                                  "holds far more than any vault pqcfs wrote")
        elif on_line is None:
            try:
                proc = subprocess.run(argv, input=data, capture_output=True, timeout=timeout, env=_env(),
                                      stdin=None if data is not None else subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                raise RemoteError(f"rclone {args[0]} on {self.path} did not finish in {timeout:.0f} s") from None
        else:
            proc = _streamed(argv, on_line, timeout)
        if proc.returncode not in ok:
            raise RemoteError(f"{self.path}: {_why(proc)}", proc.returncode)
        return proc

    # --- what pqcfs asks of a remote ---

    def list_files(self, rel: str) -> dict[str, int]:
        """Every file under rel (recursive): relative path -> size; {} when rel is absent."""
        proc = self.run("lsjson", "-R", "--files-only", "--no-modtime", "--no-mimetype", self.at(rel),
                        ok=(0, *NOT_FOUND), cap=LISTING_CAP)
        if proc.returncode in NOT_FOUND:
            return {}
        try:
            listing = json.loads(proc.stdout)
            return {str(item["Path"]): int(item["Size"]) for item in listing}
        except (ValueError, KeyError, TypeError):
            raise RemoteError(f"{self.path}: rclone listed {rel or 'the remote'} in a form pqcfs does not read") from None

    def read(self, rel: str, cap: int) -> bytes | None:
        """The file's bytes (None: it is not there); more than cap bytes is an error."""
        proc = self.run("cat", "--count", str(cap + 1), self.at(rel), ok=(0, *NOT_FOUND), cap=cap + 1)
        if proc.returncode in NOT_FOUND:
            return None
        if len(proc.stdout) > cap:
            raise RemoteError(f"{self.at(rel)} is larger than {cap} bytes: not something pqcfs wrote")
        return proc.stdout

    def write(self, rel: str, data: bytes) -> None:
        self.run("rcat", self.at(rel), data=data)

    def move(self, src: str, dst: str) -> None:
        self.run("moveto", self.at(src), self.at(dst))

    def delete_file(self, rel: str) -> None:
        self.run("deletefile", self.at(rel), ok=(0, *NOT_FOUND))

    def upload(self, local_dir: str, rel: str, files: list[str], on_bytes=None) -> None:
        """Copy the listed files (paths relative to local_dir) to rel, in parallel."""
        self._copy(local_dir, self.at(rel), files, on_bytes)

    def download(self, rel: str, local_dir: str, files: list[str], on_bytes=None) -> None:
        self._copy(self.at(rel), local_dir, files, on_bytes)

    def delete_files(self, rel: str, files: list[str]) -> None:
        if not files:
            return
        with _file_list(files, self.scratch) as listing:
            self.run("delete", self.at(rel), "--files-from-raw", listing, ok=(0, *NOT_FOUND))

    def _copy(self, src: str, dst: str, files: list[str], on_bytes) -> None:
        if not files:
            return
        with _file_list(files, self.scratch) as listing:
            def line(text: str) -> None:
                try:
                    stats = json.loads(text).get("stats")
                except ValueError:
                    return
                if stats and on_bytes:
                    on_bytes(int(stats.get("bytes", 0)))
            self.run("copy", src, dst, "--files-from-raw", listing, "--no-traverse", "--no-check-dest",
                     "--transfers", str(self.transfers), "--stats", "1s", "--use-json-log", "--stats-log-level",
                     "NOTICE", on_line=line)


@contextlib.contextmanager
def _file_list(files: list[str], where: str | None):
    """A file listing the paths, one per line, for rclone's --files-from-raw."""
    if where is not None:
        os.makedirs(where, mode=0o700, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix="pqcfs-rclone-", dir=where)
    try:
        with os.fdopen(fd, "w") as f:
            f.write("".join(name + "\n" for name in files))
        yield path
    finally:
        os.unlink(path)


def _capped(argv: list[str], cap: int, timeout: float) -> subprocess.CompletedProcess | None:
    """Run rclone, keeping at most cap bytes of its output (None: it printed more, and was
    stopped): a remote's answer is never read without bound."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env=_env())
        chunks, size = [], 0
        try:
            while chunk := proc.stdout.read(1 << 20):
                size += len(chunk)
                if size > cap:
                    proc.kill()
                    return None
                chunks.append(chunk)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise RemoteError(f"rclone {argv[argv.index('rclone') + 1]} did not finish in {timeout:.0f} s") from None
        finally:
            proc.stdout.close()
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        err.seek(0)
        return subprocess.CompletedProcess(argv, proc.returncode, b"".join(chunks), err.read(1 << 20))


def _env() -> dict:
    return {**DEFAULTS, **os.environ}


def _streamed(argv: list[str], on_line, timeout: float) -> subprocess.CompletedProcess:
    """Run rclone, handing each stderr line (its JSON log) to on_line as it comes."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env())
    lines = []
    try:
        for text in proc.stderr:
            lines.append(text)
            del lines[:-50]
            on_line(text)
        proc.wait(timeout=timeout)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    out = proc.stdout.read()
    proc.stdout.close()
    proc.stderr.close()
    return subprocess.CompletedProcess(argv, proc.returncode, out.encode(), "".join(lines).encode())


def _why(proc: subprocess.CompletedProcess) -> str:
    """rclone's last error line (its JSON log's msg, or its plain text), with what the exit
    code means."""
    text = proc.stderr.decode(errors="replace") if isinstance(proc.stderr, bytes) else proc.stderr
    last = ""
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
            if record.get("level") in ("error", "critical"):
                last = str(record.get("msg", "")).strip()
            continue
        except ValueError:
            pass
        if "ERROR" in line or "Failed" in line or "CRITICAL" in line or "error" in line.lower():
            last = line.split(" : ", 1)[-1] if " : " in line else line
    meaning = _EXIT.get(proc.returncode, f"rclone exited with {proc.returncode}")
    return f"{meaning}: {last[:500]}" if last else meaning
