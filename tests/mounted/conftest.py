import pytest

from tests.mounted import drives


@pytest.fixture
def plain_vault(tmp_path):
    """A vault on two plain directories (for mounts that need no real drive)."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    vault = drives.Vault(str(tmp_path), str(a), str(b))
    drives.pqcfs("init", str(a), str(b), "--passfile", vault.passfile, "--allow-fixed", "--allow-same-device")
    vault.mount_flags = ["--allow-same-device"]
    try:
        yield vault
    finally:
        vault.umount()
