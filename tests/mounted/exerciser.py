"""Randomized model-based exerciser: one worker process, its own subtree, an in-memory model.

    python exerciser.py ROOT SEED OPS MODEL_OUT

Every step applies a random operation to the file system and to the model, then compares
what it touched; every 25 steps it compares the whole subtree. At the end the model is
written to MODEL_OUT so the parent can compare it again after unmount and remount.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import stat
import sys


class Inode(bytearray):
    """A file's contents; hard links are two paths holding the same object."""
    mode = 0o644


class Model:
    def __init__(self):
        self.files: dict[str, Inode] = {}
        self.links: dict[str, str] = {}
        self.dirs: set[str] = {""}

    def entries(self):
        return set(self.files) | set(self.links) | (self.dirs - {""})


def snapshot(root: str) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        for name in dirnames + filenames:
            rel = os.path.normpath(os.path.join(rel_dir, name))
            full = os.path.join(root, rel)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", None)
            else:
                with open(full, "rb") as f:
                    out[rel] = ("file", hashlib.sha256(f.read()).hexdigest(), stat.S_IMODE(st.st_mode))
    return out


def expected(model: Model) -> dict:
    out = {d: ("dir", None) for d in model.dirs if d}
    out.update({p: ("link", t) for p, t in model.links.items()})
    out.update({p: ("file", hashlib.sha256(bytes(c)).hexdigest(), c.mode) for p, c in model.files.items()})
    return out


def dump(model: Model) -> dict:
    return {"expected": {k: list(v) for k, v in expected(model).items()}}


def run(root: str, seed: int, ops: int) -> Model:
    rng = random.Random(seed)
    m = Model()
    counter = 0

    def fresh_name(parent: str) -> str:
        nonlocal counter
        counter += 1
        name = rng.choice(["f", "file-", "Ünï-", "x" * 150 + "-", "doc "]) + str(counter)
        return os.path.join(parent, name) if parent else name

    def P(rel: str) -> str:
        return os.path.join(root, rel)

    def check_file(rel: str) -> None:
        with open(P(rel), "rb") as f:
            got = f.read()
        assert got == bytes(m.files[rel]), f"content of {rel} differs (seed {seed})"

    for step in range(ops):
        kind = rng.choices(
            ["create", "write", "truncate", "append", "rename", "mkdir", "rmdir", "unlink",
             "symlink", "renamedir", "chmod", "link"],
            weights=[10, 25, 8, 8, 8, 4, 2, 5, 3, 2, 3, 3])[0]
        files, dirs = sorted(m.files), sorted(m.dirs)
        if kind == "create" or (not files and kind in ("write", "truncate", "append", "rename", "unlink", "chmod", "link")):
            rel = fresh_name(rng.choice(dirs))
            data = os.urandom(rng.choice([0, 1, 100, 4096, 5000, 70000]))
            with open(P(rel), "wb") as f:
                f.write(data)
            m.files[rel] = Inode(data)
            check_file(rel)
        elif kind == "write":
            rel = rng.choice(files)
            content = m.files[rel]
            off = rng.randrange(0, len(content) + 10000)
            data = os.urandom(rng.randrange(1, 20000))
            fd = os.open(P(rel), os.O_WRONLY)
            try:
                os.pwrite(fd, data, off)
            finally:
                os.close(fd)
            if off > len(content):
                content.extend(bytes(off - len(content)))
            content[off:off + len(data)] = data
            check_file(rel)
        elif kind == "truncate":
            rel = rng.choice(files)
            size = rng.randrange(0, len(m.files[rel]) + 20000)
            os.truncate(P(rel), size)
            c = m.files[rel]
            del c[size:]
            c.extend(bytes(max(0, size - len(c))))
            check_file(rel)
        elif kind == "append":
            rel = rng.choice(files)
            data = os.urandom(rng.randrange(1, 9000))
            with open(P(rel), "ab") as f:
                f.write(data)
            m.files[rel].extend(data)
            check_file(rel)
        elif kind == "rename":
            src = rng.choice(files)
            dst = rng.choice(files) if rng.random() < 0.3 else fresh_name(rng.choice(dirs))
            os.rename(P(src), P(dst))
            if m.files[src] is m.files.get(dst):
                pass  # two names of one file: rename does nothing (POSIX)
            else:
                m.files[dst] = m.files.pop(src)
            check_file(dst)
        elif kind == "mkdir":
            rel = fresh_name(rng.choice(dirs))
            os.mkdir(P(rel))
            m.dirs.add(rel)
        elif kind == "rmdir":
            empty = [d for d in dirs if d and not any(e != d and e.startswith(d + "/") for e in m.entries())]
            if empty:
                rel = rng.choice(empty)
                os.rmdir(P(rel))
                m.dirs.discard(rel)
        elif kind == "unlink":
            victims = files + sorted(m.links)
            rel = rng.choice(victims)
            os.unlink(P(rel))
            m.files.pop(rel, None)
            m.links.pop(rel, None)
        elif kind == "symlink":
            rel = fresh_name(rng.choice(dirs))
            target = rng.choice(["../x", "/abs/path", "t" * rng.randrange(1, 300)])
            os.symlink(target, P(rel))
            m.links[rel] = target
        elif kind == "renamedir":
            movable = [d for d in dirs if d]
            if movable:
                src = rng.choice(movable)
                parents = [d for d in dirs if d != src and not d.startswith(src + "/")]
                dst = fresh_name(rng.choice(parents))
                os.rename(P(src), P(dst))

                def moved(p: str) -> str:
                    return dst + p[len(src):] if p == src or p.startswith(src + "/") else p
                m.dirs = {moved(d) for d in m.dirs}
                m.files = {moved(p): c for p, c in m.files.items()}
                m.links = {moved(p): t for p, t in m.links.items()}
        elif kind == "chmod":
            rel = rng.choice(files)
            mode = rng.choice([0o600, 0o640, 0o644, 0o755])
            os.chmod(P(rel), mode)
            m.files[rel].mode = mode
        elif kind == "link":
            src = rng.choice(files)
            dst = fresh_name(rng.choice(dirs))
            os.link(P(src), P(dst))
            m.files[dst] = m.files[src]
            check_file(dst)
        if step % 25 == 0 or step == ops - 1:
            got, want = snapshot(root), expected(m)
            assert got == want, f"tree differs at step {step} (seed {seed}): {set(got) ^ set(want)}"
    return m


if __name__ == "__main__":
    root, seed, ops, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    os.makedirs(root, exist_ok=True)
    model = run(root, seed, ops)
    with open(out, "w") as f:
        json.dump(dump(model), f)
