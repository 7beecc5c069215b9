"""The man page and shell completions, generated from the command-line parser itself
(argparse-manpage and shtab), so they never disagree with `--help`.

`pqcfs system install` writes them where man, bash-completion and zsh look
(`--root DIR` for a package's tree).
"""

from __future__ import annotations

import os

from pqcfs import __version__
from pqcfs.cli import exitcodes

DESCRIPTION = """pqcfs keeps a vault of files encrypted on two removable drives, a primary and a backup,
mirrored and crash-safe. Mount it and use it with any program. Every name, content,
symlink target and extended attribute is ciphertext on the drives. The root key is
wrapped with a hybrid post-quantum KEM (ML-KEM + X25519). A tamper-evident audit log
records what happened. A directory can be shared with another person's identity without
sharing the rest.

Each command has its own help: pqcfs COMMAND --help."""


def _roff(text: str) -> str:
    return text.replace("\\", "\\\\").replace("-", "\\-")


def manpage(parser) -> str:
    from argparse_manpage.manpage import Manpage
    page = Manpage(parser)
    page.source = f"pqcfs {__version__}"
    page.manual = "pqcfs manual"
    page.description = "post-quantum encrypted, mirrored file system on USB drives"
    page.add_section("description", "=", _roff(DESCRIPTION).replace("\n\n", "\n.PP\n"))
    rows = "".join(f".TP\n.B {code}\n{_roff(text)}\n" for code, text in sorted(exitcodes.MEANINGS.items()))
    page.add_section("exit status", "=", rows.rstrip("\n"))
    page.add_section("files", "=", _roff(
        "/var/lib/pqcfs (root) or ~/.local/state/pqcfs: this machine's state (host log, rollback records, "
        "host keys). /run/pqcfs (root) or $XDG_RUNTIME_DIR/pqcfs: each mount's runtime file, control socket "
        "and daemon log. ~/.config/pqcfs/identity.json: your identity."))
    page.add_section("see also", "=", _roff(
        "The pqcfs documentation (docs/ in its sources): cli.md (every command and exit code), format.md, "
        "security.md, mirroring.md, sharing.md, automount.md, audit.md. mount(8), fusermount3(1)."))
    return str(page)


def completion(parser, shell: str) -> str:
    import shtab
    return shtab.complete(parser, shell=shell)


def documents(parser) -> dict[str, str]:
    """What `pqcfs system install` writes: the man page and the bash and zsh completions."""
    return {"man": manpage(parser), "bash": completion(parser, "bash"), "zsh": completion(parser, "zsh")}


def write_all(parser, outdir: str) -> list[str]:
    written = []
    docs = documents(parser)
    for rel, text in (("man1/pqcfs.1", docs["man"]), ("bash-completion/pqcfs", docs["bash"]),
                      ("zsh/_pqcfs", docs["zsh"])):
        path = os.path.join(outdir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        written.append(path)
    return written

