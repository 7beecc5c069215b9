"""The prompts as a person meets them, on a real terminal (a pty): a mismatched or wrong
passphrase is asked again, a recovery-code typo is named, Ctrl-C ends the line."""

import os
import pty
import re
import select
import signal
import sys
import time

from pqcfs.cli import exitcodes
from pqcfs.format import slots


class Terminal:
    def __init__(self, *args, env_extra=None):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            # A person's shell starts programs with Ctrl-C live; a runner that started the
            # tests in the background without job control left SIGINT ignored, and an
            # ignored signal stays ignored across exec (Python then installs no handler).
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.environ.update(env_extra or {})
            os.execv(sys.executable, [sys.executable, "-m", "pqcfs", *args])
        self.seen = ""
        self.at = 0          # what expect() has matched so far ends here

    def expect(self, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.seen[self.at:]:
            left = deadline - time.monotonic()
            assert left > 0, f"{text!r} never came; the terminal shows {self.seen!r}"
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.fd, 4096).decode(errors="replace")
                except OSError:
                    chunk = ""
                assert chunk, f"{text!r} never came before the end; the terminal shows {self.seen!r}"
                self.seen += chunk
        self.at = self.seen.index(text, self.at) + len(text)
        return self.seen

    def type(self, line: str) -> None:
        os.write(self.fd, line.encode() + b"\r")

    def finish(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:
                    chunk = b""
                self.seen += chunk.decode(errors="replace")
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                while True:      # what is left in the pty
                    try:
                        chunk = os.read(self.fd, 4096)
                    except OSError:
                        break
                    if not chunk:
                        break
                    self.seen += chunk.decode(errors="replace")
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError(f"no exit; the terminal shows {self.seen!r}")


def test_a_mismatched_confirmation_is_asked_again_and_a_weak_passphrase_is_judged(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    term = Terminal("init", str(a), str(b), "--allow-fixed", "--allow-same-device")
    term.expect("New vault passphrase: ")
    term.type("first try of a long passphrase")
    term.expect("(again): ")
    term.type("first try of a long passphrasf")
    term.expect("the passphrases did not match; try 2 of 3")
    term.expect("New vault passphrase: ")
    term.type("qwerty")
    term.expect("(again): ")
    term.type("qwerty")
    assert term.finish() == 0
    assert "pqcfs: warning: this passphrase is weak" in term.seen
    code = re.search(r"([A-Z2-7]{5}(?:-[A-Z2-7]{5}){7})", term.seen).group(1)

    # A typo in the recovery code is named by its group, and asked again.
    groups = code.split("-")
    groups[2] = groups[2][:4] + ("A" if groups[2][4] != "A" else "B")
    term = Terminal("audit", "verify", str(a), "--recovery")
    term.expect("Recovery code: ")
    term.type("-".join(groups))
    term.expect(f"group 3 of the recovery code ({groups[2]}) has a typo; try 2 of 3")
    term.expect("Recovery code: ")
    term.type(code.lower())
    assert term.finish() == 0, term.seen
    assert slots.parse_recovery_code(code)

    # A wrong passphrase three times: asked three times, then exit 6.
    term = Terminal("audit", "verify", str(a))
    for n in range(3):
        term.expect("Vault passphrase: ")
        term.type(f"wrong {n}")
        if n < 2:
            term.expect(f"try {n + 2} of 3")
    assert term.finish() == exitcodes.WRONG_KEY


def test_ctrl_c_at_a_prompt_ends_the_line_and_exits_130(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    term = Terminal("init", str(a), str(b), "--allow-fixed", "--allow-same-device")
    term.expect("New vault passphrase: ")
    os.write(term.fd, b"\x03")           # Ctrl-C, as the terminal sends it
    assert term.finish() == exitcodes.INTERRUPTED
    assert re.search(r"New vault passphrase: \^?C?\r?\n(.*\n)*pqcfs: interrupted", term.seen.replace("\r\n", "\n")), \
        term.seen
    assert not os.listdir(a) and not os.listdir(b)      # nothing was made
