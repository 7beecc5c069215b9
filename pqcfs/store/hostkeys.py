"""Host keys: the secrets behind host-key slots, kept root-only on this machine so that it
can unlock a vault unattended (automount). Removing the slot revokes the machine.

  <state dir>/host-keys/<vault id>-<key id>.cred   sealed by `systemd-creds` with the TPM2
                                                   (when the machine has one)
  <state dir>/host-keys/<vault id>-<key id>.key    else: the 32 bytes, mode 0600

The state directory is pqcfs.userdirs.state_dir() (/var/lib/pqcfs for root).
"""

from __future__ import annotations

import os
import stat
import subprocess

from pqcfs import userdirs
from pqcfs.errors import DamagedStructure, PqcfsError
from pqcfs.format.slots import HOST_SECRET_LEN


def directory() -> str:
    return os.path.join(userdirs.state_dir(), "host-keys")


def _base(vault_id: str, key_id: str) -> str:
    if not (all(c in "0123456789abcdef" for c in vault_id + key_id) and len(key_id) == 16):
        raise DamagedStructure("a host-key slot names a malformed key id")
    return os.path.join(directory(), f"{vault_id}-{key_id}")


def has_tpm2() -> bool:
    try:
        return subprocess.run(["systemd-creds", "has-tpm2", "--quiet"], capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def create(vault_id: str) -> tuple[str, bytes, str]:
    """A new secret for vault_id: (key id, secret, how it is kept)."""
    key_id, secret = os.urandom(8).hex(), os.urandom(HOST_SECRET_LEN)
    os.makedirs(directory(), mode=0o700, exist_ok=True)
    base = _base(vault_id, key_id)
    if has_tpm2():
        proc = subprocess.run(["systemd-creds", "encrypt", "--with-key=tpm2", f"--name=pqcfs-{key_id}", "-",
                               base + ".cred"], input=secret, capture_output=True, timeout=60)
        if proc.returncode == 0:
            return key_id, secret, "sealed with the TPM2 (systemd-creds)"
    fd = os.open(base + ".key", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secret)
        f.flush()
        os.fsync(f.fileno())
    return key_id, secret, f"a root-only file ({base}.key)"


def load(vault_id: str, key_id: str) -> bytes | None:
    """The secret, if this machine holds it; None otherwise."""
    base = _base(vault_id, key_id)
    if os.path.exists(base + ".cred"):
        proc = subprocess.run(["systemd-creds", "decrypt", f"--name=pqcfs-{key_id}", base + ".cred", "-"],
                              capture_output=True, timeout=60)
        if proc.returncode != 0:
            raise PqcfsError(f"the host key {key_id} could not be unsealed: {proc.stderr.decode().strip()}")
        return proc.stdout
    try:
        fd = os.open(base + ".key", os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
            raise PqcfsError(f"{base}.key is readable by others or owned by someone else; refused")
        return f.read(HOST_SECRET_LEN + 1)


def held(vault_id: str) -> list[str]:
    """The key ids of vault_id whose secret this machine keeps (sealed or as a file), read
    from the names alone: a check that needs no unsealing (pqcfs doctor)."""
    try:
        names = os.listdir(directory())
    except OSError:
        return []
    out = set()
    for name in names:
        stem, dot, suffix = name.rpartition(".")
        vid, _, key_id = stem.rpartition("-")
        if dot and suffix in ("cred", "key") and vid == vault_id and len(key_id) == 16:
            out.add(key_id)
    return sorted(out)


def remove(vault_id: str, key_id: str) -> bool:
    removed = False
    for suffix in (".cred", ".key"):
        try:
            os.unlink(_base(vault_id, key_id) + suffix)
            removed = True
        except FileNotFoundError:
            pass
    return removed
