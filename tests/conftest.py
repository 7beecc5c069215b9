import os

# The one test-only switch: cheap Argon2id so unlocking takes microseconds, not seconds.
os.environ.setdefault("PQCFS_INSECURE_FAST_KDF", "1")
# What this machine has seen of each vault (whole-vault rollback detection) goes to a
# directory of the test run, not /var/lib/pqcfs.
if "PQCFS_STATE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile
    os.environ["PQCFS_STATE_DIR"] = tempfile.mkdtemp(prefix="pqcfs-seen-")
    atexit.register(shutil.rmtree, os.environ["PQCFS_STATE_DIR"], ignore_errors=True)
# Mount daemons' runtime files, sockets and logs likewise, not /run/pqcfs (a run that is
# killed leaves them in /tmp, not in the machine's runtime directory).
if "PQCFS_RUNTIME_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile
    os.environ["PQCFS_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="pqcfs-run-")
    atexit.register(shutil.rmtree, os.environ["PQCFS_RUNTIME_DIR"], ignore_errors=True)

import pytest  # noqa: E402

from pqcfs import vault as vault_mod  # noqa: E402
from pqcfs.crypto.kdf import calibrate  # noqa: E402

PASSPHRASE = b"correct horse battery staple"


@pytest.fixture
def two_dirs(tmp_path):
    a, b = tmp_path / "primary", tmp_path / "backup"
    a.mkdir()
    b.mkdir()
    return str(a), str(b)


@pytest.fixture
def new_vault(two_dirs):
    vault, code = vault_mod.create(list(two_dirs), passphrase=PASSPHRASE, kdf=calibrate())
    return vault, code


@pytest.fixture
def locations(new_vault) -> list[str]:
    """A new vault's replica locations, the vault closed (each test opens its own sessions)."""
    vault, _ = new_vault
    found = list(vault.locations)
    vault.close()
    return found

