"""Bytes of Python memory per cached file, in process (no mount): a session creates N
files the way the FUSE layer does (create, open, write, the kernel's xattr lookup,
release) and tracemalloc says what stayed allocated, by line.

    .venv/bin/python benchmarks/memprobe.py [N]        (20,000 by default)
"""

import gc
import os
import stat
import sys
import tempfile
import tracemalloc
os.environ["PQCFS_INSECURE_FAST_KDF"] = "1"
os.environ["PQCFS_STATE_DIR"] = tempfile.mkdtemp()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pqcfs import vault as vault_mod  # noqa: E402
from pqcfs.crypto.kdf import calibrate  # noqa: E402
from pqcfs.session.session import Session  # noqa: E402
from pqcfs.fs.common import Caller  # noqa: E402
d = tempfile.mkdtemp()
a, b = os.path.join(d, "a"), os.path.join(d, "b"); os.mkdir(a); os.mkdir(b)
vault, _ = vault_mod.create([a, b], passphrase=b"x", kdf=calibrate())
vault.close()
vault = vault_mod.unlock([a, b], vault_mod.Credentials(passphrase=b"x"))
s = Session(vault, os.path.join(d, "mnt")); s.prepare(); vfs = s.build()
folder = vfs.mkdir(vfs.inodes.root, b"many", 0o755, Caller(0, 0))
N = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
gc.collect(); tracemalloc.start(25)
snap0 = tracemalloc.take_snapshot()
for n in range(N):
    node = vfs.create_file(folder, b"f%06d" % n, stat.S_IFREG | 0o644, Caller(0, 0), opening=True)
    c = vfs.open(node, True, fresh=True)
    c.write(0, b"x" * 100)
    vfs.xattrs(node)
    vfs.inodes.remember(node)
    vfs.release(node)
gc.collect()
snap1 = tracemalloc.take_snapshot()
stats = snap1.compare_to(snap0, "lineno")
total = sum(st.size_diff for st in stats)
print(f"{total / N:.0f} bytes per file")
for st in stats[:25]:
    print(f"{st.size_diff / N:8.0f} B/file  {st.traceback[0]}")
