"""The architecture is checked, not hoped for: import-linter's contracts in pyproject.toml
(layers, no cycles at any depth, pure crypto and format code, pyfuse3 and trio only where
FUSE is served, mounttool independent of pqcfs) hold for the tree, and a cycle added on
purpose is caught (docs/architecture.md)."""

import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LINT = os.path.join(os.path.dirname(sys.executable), "lint-imports")


def lint(tree: str) -> subprocess.CompletedProcess:
    return subprocess.run([LINT, "--no-cache"], cwd=tree, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": tree})


def test_the_contracts_hold():
    proc = lint(REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def test_a_cycle_added_on_purpose_is_caught(tmp_path):
    for name in ("pqcfs", "mounttool"):
        shutil.copytree(os.path.join(REPO, name), tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(REPO, "pyproject.toml"), tmp_path)
    # The vault core reaching up into the session: a layer broken, and a cycle made.
    with open(tmp_path / "pqcfs" / "fs" / "common.py", "a") as f:
        f.write("\nfrom pqcfs.session import session as _up  # noqa: E402,F401\n")
    proc = lint(str(tmp_path))
    assert proc.returncode != 0
    assert "No import cycles, at any depth BROKEN" in proc.stdout
    assert "Layers: each imports only what is below it BROKEN" in proc.stdout


def test_commands_that_only_look_start_without_the_fuse_machinery(tmp_path):
    """`pqcfs --version`, `status` and `info` import neither pyfuse3 nor trio (the serving
    loop loads them only in a process that mounts): measured by the interpreter itself."""
    vault = tmp_path / "v"
    vault.mkdir()
    (tmp_path / "pw").write_text("architecture test passphrase\n")
    subprocess.run([sys.executable, "-m", "pqcfs", "init", str(vault), "--single", "--passfile",
                    str(tmp_path / "pw"), "--allow-fixed"], check=True, capture_output=True)
    for args in (["--version"], ["status"], ["info", str(vault)]):
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "pqcfs", *args], capture_output=True,
                              text=True)
        imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
        assert "pqcfs.cli.main" in imported, proc.stderr[-500:]
        assert not imported & {"pyfuse3", "trio"}, (args, sorted(imported & {"pyfuse3", "trio"}))
