"""Real ordinary users for tests (made for the test, removed after) and pqcfs run as them."""

from __future__ import annotations

import contextlib
import os
import pathlib
import pwd
import stat
import subprocess
import sys

from tests.mounted import drives

REPO = str(pathlib.Path(__file__).resolve().parents[2])
# The project's interpreter may live where an ordinary user can not run it (pyenv under
# /root); Debian's python3 is the same minor version and reads the same packages.
SYSTEM_PYTHON = "/usr/bin/python3"
SITE = next(p for p in sys.path if p.endswith("site-packages") and p.startswith(sys.prefix))


@contextlib.contextmanager
def made_users(*names: str, home_base: str | None = None):
    """The users (with a home under home_base, if given), and the code reachable for them:
    directories on the way to it that others can not traverse are opened (o+x) for the
    test only and closed again."""
    made, opened = [], []
    try:
        for name in names:
            subprocess.run(["userdel", name], capture_output=True)     # left over by a killed run
            home = ["--home-dir", os.path.join(home_base, name), "--create-home"] if home_base else ["--no-create-home"]
            drives.run("useradd", "--system", *home, "--shell", "/bin/sh", name)
            made.append(name)
        for top in (REPO, SITE):
            path = os.path.dirname(top)
            while path != "/":
                mode = stat.S_IMODE(os.stat(path).st_mode)
                if not mode & stat.S_IXOTH:
                    os.chmod(path, mode | stat.S_IXOTH)
                    opened.append((path, mode))
                path = os.path.dirname(path)
        yield [pwd.getpwnam(n) for n in names]
    finally:
        for path, mode in reversed(opened):
            os.chmod(path, mode)
        for name in made:
            subprocess.run(["userdel", "--remove", name], capture_output=True)


def pqcfs_as(user, *args, check=True, runtime: str | None = None, cwd: str = "/"):
    """pqcfs as user; runtime: their $XDG_RUNTIME_DIR (None: no login session)."""
    env = {"HOME": user.pw_dir, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": f"{REPO}:{SITE}",
           "PQCFS_INSECURE_FAST_KDF": "1", **({"XDG_RUNTIME_DIR": runtime} if runtime else {})}
    proc = subprocess.run([SYSTEM_PYTHON, "-m", "pqcfs", *args], user=user.pw_uid, group=user.pw_gid,
                          extra_groups=[], env=env, capture_output=True, text=True, timeout=120, cwd=cwd,
                          stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"pqcfs {' '.join(args)} as {user.pw_name} failed ({proc.returncode}): {proc.stderr}")
    return proc
