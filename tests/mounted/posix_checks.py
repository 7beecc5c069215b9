"""One POSIX checklist, run against every real mount. Each check gets a fresh directory
inside the mount and uses only what a program would: the os module and subprocesses."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import stat
import subprocess
import sys
import time

import pytest

CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


def _renameat2(src: str, dst: str, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    AT_FDCWD = -100
    if libc.renameat2(AT_FDCWD, src.encode(), AT_FDCWD, dst.encode(), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), src)


RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


def _write(path, data, mode="wb"):
    with open(path, mode) as f:
        f.write(data)


def _read(path):
    with open(path, "rb") as f:
        return f.read()


@check
def create_read_write_at_offsets(d):
    p = os.path.join(d, "f")
    _write(p, b"a" * 10000)
    fd = os.open(p, os.O_RDWR)
    try:
        os.pwrite(fd, b"XYZ", 4095)
        os.pwrite(fd, b"tail", 12000)
        assert os.pread(fd, 5, 4094) == b"aXYZa"
        assert os.pread(fd, 100, 10000) == bytes(2000)[:100]
    finally:
        os.close(fd)
    data = _read(p)
    assert len(data) == 12004 and data[-4:] == b"tail" and data[4095:4098] == b"XYZ"
    assert os.stat(p).st_size == 12004


@check
def append(d):
    p = os.path.join(d, "log")
    for n in range(50):
        _write(p, b"line %d\n" % n, "ab")
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    os.pwrite if False else os.write(fd, b"end\n")
    os.close(fd)
    assert _read(p) == b"".join(b"line %d\n" % n for n in range(50)) + b"end\n"


@check
def truncate_up_and_down(d):
    p = os.path.join(d, "t")
    _write(p, os.urandom(9000))
    head = _read(p)[:5000]
    os.truncate(p, 5000)
    assert _read(p) == head
    os.truncate(p, 20000)
    assert _read(p) == head + bytes(15000)
    os.truncate(p, 4096)
    assert _read(p) == head[:4096]
    os.truncate(p, 0)
    assert _read(p) == b""
    with open(p, "r+b") as f:
        f.truncate(3)
    assert _read(p) == bytes(3)


@check
def sparse_files_and_holes(d):
    p = os.path.join(d, "sparse")
    with open(p, "wb") as f:
        f.seek(50 * 1024 * 1024)
        f.write(b"end")
    assert os.stat(p).st_size == 50 * 1024 * 1024 + 3
    with open(p, "rb") as f:
        f.seek(25 * 1024 * 1024)
        assert f.read(4096) == bytes(4096)
        f.seek(50 * 1024 * 1024)
        assert f.read() == b"end"


@check
def large_file_beyond_4gib(d, fstype):
    p = os.path.join(d, "big")
    _write(p, b"start")
    if fstype == "exfat":
        # exFAT has no sparse files: 5 GiB would be written out and can not fit the
        # stand-in drive, so the write itself is EFBIG (not a drive filled up first and
        # then ENOSPC), and the vault keeps working.
        with pytest.raises(OSError) as e:
            fd = os.open(p, os.O_WRONLY)
            try:
                os.pwrite(fd, b"beyond 4 GiB", 5 * 1024 ** 3)
            finally:
                os.close(fd)
        assert e.value.errno == errno.EFBIG
        assert _read(p) == b"start"
        _write(os.path.join(d, "after"), b"still works")
        assert _read(os.path.join(d, "after")) == b"still works"
        return
    fd = os.open(p, os.O_WRONLY)
    try:
        os.pwrite(fd, b"beyond 4 GiB", 5 * 1024 ** 3)
    finally:
        os.close(fd)
    assert os.stat(p).st_size == 5 * 1024 ** 3 + 12
    with open(p, "rb") as f:
        f.seek(5 * 1024 ** 3)
        assert f.read() == b"beyond 4 GiB"
        f.seek(0)
        assert f.read(5) == b"start"


@check
def fsync_and_fdatasync(d):
    p = os.path.join(d, "synced")
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"durable")
    os.fsync(fd)
    os.fdatasync(fd)
    os.close(fd)
    dfd = os.open(d, os.O_RDONLY)
    os.fsync(dfd)
    os.close(dfd)
    assert _read(p) == b"durable"


@check
def directories(d):
    os.makedirs(os.path.join(d, "a/b/c"))
    _write(os.path.join(d, "a/b/c/f"), b"x")
    assert sorted(os.listdir(os.path.join(d, "a"))) == ["b"]
    with pytest.raises(OSError) as e:
        os.rmdir(os.path.join(d, "a/b"))
    assert e.value.errno == errno.ENOTEMPTY
    with pytest.raises(FileExistsError):
        os.mkdir(os.path.join(d, "a"))
    os.unlink(os.path.join(d, "a/b/c/f"))
    os.rmdir(os.path.join(d, "a/b/c"))
    assert os.listdir(os.path.join(d, "a/b")) == []
    names = [f"entry-{n:03d}" for n in range(300)]
    for n in names:
        _write(os.path.join(d, n), b"")
    assert sorted(os.listdir(d)) == sorted(names + ["a"])


@check
def unlink_while_open(d):
    p = os.path.join(d, "ghost")
    _write(p, b"before")
    with open(p, "r+b") as f:
        os.unlink(p)
        assert not os.path.exists(p)
        f.seek(0, 2)
        f.write(b" after")
        f.flush()
        f.seek(0)
        assert f.read() == b"before after"
    assert os.listdir(d) == []


@check
def truncating_opens_and_a_file_unlinked_while_open_among_many(d):
    """A truncating open truncates, and a file opened, then unlinked after 200 other files
    were written and read, keeps its bytes for the program that has it open."""
    p = os.path.join(d, "t")
    _write(p, b"x" * 10000)
    os.close(os.open(p, os.O_WRONLY | os.O_TRUNC))
    assert os.path.getsize(p) == 0 and _read(p) == b""
    _write(p, b"y" * 5000)
    _write(p, b"short")
    assert _read(p) == b"short" and os.path.getsize(p) == 5
    _write(os.path.join(d, "ghost"), b"still here")
    with open(os.path.join(d, "ghost"), "rb") as ghost:
        assert ghost.read(5) == b"still"
        count = 200
        for i in range(count):
            _write(os.path.join(d, f"m{i}"), b"%d," % i * 50)
        for i in reversed(range(count)):
            assert _read(os.path.join(d, f"m{i}")) == b"%d," % i * 50
        # Unlinked only now, its pages dropped: the read must reach the file's data
        # (a mount that declined open lost it here, having let the file go meanwhile).
        os.unlink(os.path.join(d, "ghost"))
        os.posix_fadvise(ghost.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        ghost.seek(0)
        assert ghost.read() == b"still here"
    assert sorted(os.listdir(d)) == sorted(["t"] + [f"m{i}" for i in range(count)])


@check
def renames(d):
    j = lambda *p: os.path.join(d, *p)  # noqa: E731
    os.mkdir(j("x"))
    os.mkdir(j("y"))
    _write(j("x", "a"), b"A")
    _write(j("x", "b"), b"B")
    os.rename(j("x", "a"), j("x", "b"))              # over an existing file
    assert _read(j("x", "b")) == b"A" and not os.path.exists(j("x", "a"))
    os.rename(j("x", "b"), j("y", "moved"))          # across directories
    os.makedirs(j("x", "deep", "er"))
    _write(j("x", "deep", "er", "f"), b"deep")
    os.rename(j("x"), j("y", "x2"))                  # a directory with contents
    assert _read(j("y", "x2", "deep", "er", "f")) == b"deep"
    _write(j("y", "other"), b"O")
    with pytest.raises(FileExistsError):
        _renameat2(j("y", "moved"), j("y", "other"), RENAME_NOREPLACE)
    _renameat2(j("y", "moved"), j("y", "other"), RENAME_EXCHANGE)
    assert _read(j("y", "moved")) == b"O" and _read(j("y", "other")) == b"A"
    _renameat2(j("y", "x2"), j("y", "moved"), RENAME_EXCHANGE)  # a directory and a file
    assert _read(j("y", "x2")) == b"O" and os.path.isdir(j("y", "moved"))
    os.mkdir(j("empty"))
    os.rename(j("y", "moved"), j("empty"))           # a directory over an empty one
    assert _read(j("empty", "deep", "er", "f")) == b"deep"
    with pytest.raises(OSError) as e:
        os.rename(j("empty"), j("empty", "deep", "inside"))
    assert e.value.errno == errno.EINVAL


@check
def long_names(d):
    name = "n" * 255
    _write(os.path.join(d, name), b"long")
    os.mkdir(os.path.join(d, "é" * 127))
    assert sorted(os.listdir(d)) == sorted([name, "é" * 127])
    os.rename(os.path.join(d, name), os.path.join(d, "é" * 127, name[:-1]))
    assert _read(os.path.join(d, "é" * 127, name[:-1])) == b"long"
    with pytest.raises(OSError) as e:
        _write(os.path.join(d, "x" * 256), b"")
    assert e.value.errno == errno.ENAMETOOLONG
    # Every operation that looks an existing name up says the same, as on ext4.
    too_long = os.path.join(d, "x" * 256)
    for op in (lambda: os.stat(too_long), lambda: os.chmod(too_long, 0o600), lambda: os.truncate(too_long, 0),
               lambda: os.unlink(too_long), lambda: os.rmdir(too_long), lambda: os.link(too_long, os.path.join(d, "l")),
               lambda: os.rename(too_long, os.path.join(d, "r")), lambda: os.chown(too_long, 0, 0)):
        with pytest.raises(OSError) as e:
            op()
        assert e.value.errno == errno.ENAMETOOLONG


@check
def inode_numbers_survive_eviction(d):
    """The kernel forgets inodes it does not use (memory pressure, drop_caches): looked up
    again, each file has the number it had, as find -samefile, rsync -H and git expect."""
    os.makedirs(os.path.join(d, "sub"))
    _write(os.path.join(d, "sub", "f"), b"data")
    os.link(os.path.join(d, "sub", "f"), os.path.join(d, "hard"))
    os.symlink("f", os.path.join(d, "sub", "sym"))
    paths = [os.path.join(d, "sub"), os.path.join(d, "sub", "f"), os.path.join(d, "sub", "sym")]
    before = [os.lstat(p).st_ino for p in paths]
    assert os.lstat(os.path.join(d, "hard")).st_ino == before[1]
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2")                       # dentries and inodes: every unused one is forgotten
    assert [os.lstat(p).st_ino for p in paths] == before
    os.rename(os.path.join(d, "sub", "f"), os.path.join(d, "moved"))
    assert os.lstat(os.path.join(d, "moved")).st_ino == before[1] == os.lstat(os.path.join(d, "hard")).st_ino
    assert len(set(before)) == 3


@check
def hard_linked_times(d):
    """A hard-linked file's times are pqcfs' own, with nanoseconds, on exFAT too: set
    times stay as set, and ctime moves on link, unlink, rename and chmod, as on ext4."""
    j = lambda *p: os.path.join(d, *p)  # noqa: E731
    _write(j("f"), b"x")
    os.link(j("f"), j("g"))
    os.utime(j("f"), ns=(1_111_111_111_123_456_789, 1_222_222_222_987_654_321))
    st = os.stat(j("g"))
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_111_111_111_123_456_789, 1_222_222_222_987_654_321)
    ctimes = [st.st_ctime_ns]
    for change in (lambda: os.link(j("f"), j("h")), lambda: os.unlink(j("h")),
                   lambda: os.rename(j("g"), j("g2")), lambda: os.chmod(j("f"), 0o600)):
        time.sleep(0.01)
        change()
        ctimes.append(os.stat(j("f")).st_ctime_ns)
    assert ctimes == sorted(ctimes) and len(set(ctimes)) == len(ctimes), ctimes
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2")
    st = os.stat(j("g2"))
    assert (st.st_mtime_ns, st.st_ctime_ns) == (1_222_222_222_987_654_321, ctimes[-1])
    before = st.st_mtime_ns
    with open(j("g2"), "ab") as f:
        f.write(b"more")
    assert os.stat(j("f")).st_mtime_ns > before


@check
def fallocate_modes(d, fstype):
    """fallocate(2) reaches pqcfs (pyfuse3 with patches/ applied): mode 0 reserves and
    grows the file with zeros, FALLOC_FL_KEEP_SIZE reserves only (EOPNOTSUPP on exFAT
    drives, which can not reserve past a file's end), punching holes is EOPNOTSUPP
    (docs/posix.md); the file stays whole through all of them."""
    f = os.path.join(d, "f")
    _write(f, b"head")
    subprocess.run(["fallocate", "-l", "1048576", f], check=True, capture_output=True)
    assert os.stat(f).st_size == 1048576
    assert _read(f) == b"head" + bytes(1048572)
    keep = subprocess.run(["fallocate", "-n", "-o", "1048576", "-l", "1048576", f], capture_output=True, text=True)
    if fstype == "exfat":
        assert keep.returncode != 0 and "unsupported" in keep.stderr, (keep.returncode, keep.stderr)
    else:
        assert keep.returncode == 0, keep.stderr
    assert os.stat(f).st_size == 1048576
    punch = subprocess.run(["fallocate", "-p", "-o", "0", "-l", "4096", f], capture_output=True, text=True)
    assert punch.returncode != 0 and "unsupported" in punch.stderr, (punch.returncode, punch.stderr)
    with open(f, "r+b") as out:
        out.seek(2_000_000)
        out.write(b"tail")
    assert _read(f) == b"head" + bytes(1_999_996) + b"tail"


@check
def dot_and_dotdot(d):
    os.makedirs(os.path.join(d, "sub", "inner"))
    for where in (d, os.path.join(d, "sub"), os.path.join(d, "sub", "inner")):
        listed = subprocess.run(["ls", "-a1i", where], check=True, capture_output=True, text=True).stdout.split("\n")
        inodes = {name: int(ino) for ino, name in (line.split(None, 1) for line in listed if line.strip())}
        assert inodes["."] == os.stat(where).st_ino
        assert inodes[".."] == os.stat(os.path.join(where, "..")).st_ino
    assert sorted(os.listdir(os.path.join(d, "sub"))) == ["inner"]     # os.listdir leaves them out


@check
def symlinks(d):
    _write(os.path.join(d, "target"), b"T")
    os.symlink("target", os.path.join(d, "link"))
    os.symlink("/nonexistent/dangling", os.path.join(d, "dangling"))
    assert os.readlink(os.path.join(d, "link")) == "target"
    assert _read(os.path.join(d, "link")) == b"T"
    assert os.readlink(os.path.join(d, "dangling")) == "/nonexistent/dangling"
    assert stat.S_ISLNK(os.lstat(os.path.join(d, "link")).st_mode)
    os.rename(os.path.join(d, "link"), os.path.join(d, "link2"))
    assert os.readlink(os.path.join(d, "link2")) == "target"


@check
def hard_links(d):
    a, b = os.path.join(d, "a"), os.path.join(d, "sub", "b")
    os.mkdir(os.path.join(d, "sub"))
    _write(a, b"one")
    os.link(a, b)
    assert os.stat(a).st_nlink == 2 and os.stat(a).st_ino == os.stat(b).st_ino
    _write(b, b"two", "ab")
    assert _read(a) == b"onetwo"
    os.chmod(b, 0o600)
    assert stat.S_IMODE(os.stat(a).st_mode) == 0o600
    os.rename(b, os.path.join(d, "c"))
    os.unlink(a)
    assert _read(os.path.join(d, "c")) == b"onetwo" and os.stat(os.path.join(d, "c")).st_nlink == 1
    with pytest.raises(PermissionError):
        os.link(os.path.join(d, "sub"), os.path.join(d, "dirlink"))


@check
def modes_owners_times(d):
    p = os.path.join(d, "m")
    _write(p, b"")
    os.chmod(p, 0o604)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o604
    os.chown(p, 1234, 5678)
    st = os.stat(p)
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    os.utime(p, ns=(1_000_000_000, 2_000_000_000))
    assert os.stat(p).st_mtime_ns == 2_000_000_000
    os.mkdir(os.path.join(d, "sub"), 0o700)
    os.chmod(os.path.join(d, "sub"), 0o751)
    assert stat.S_IMODE(os.stat(os.path.join(d, "sub")).st_mode) == 0o751


@check
def permissions_are_enforced(d):
    os.chmod(d, 0o755)
    private, public = os.path.join(d, "private"), os.path.join(d, "public")
    for p, mode in ((private, 0o600), (public, 0o644)):
        _write(p, b"secret")
        os.chmod(p, mode)
    nobody = {"user": 65534, "group": 65534, "capture_output": True}
    assert subprocess.run(["cat", public], **nobody).stdout == b"secret"
    denied = subprocess.run(["cat", private], **nobody)
    assert denied.returncode != 0 and b"Permission denied" in denied.stderr


@check
def xattrs(d):
    p = os.path.join(d, "x")
    _write(p, b"")
    os.setxattr(p, "user.colour", b"blue")
    os.setxattr(p, "user.empty", b"")
    assert os.getxattr(p, "user.colour") == b"blue"
    assert sorted(os.listxattr(p)) == ["user.colour", "user.empty"]
    os.removexattr(p, "user.colour")
    with pytest.raises(OSError) as e:
        os.getxattr(p, "user.colour")
    assert e.value.errno == errno.ENODATA
    os.rename(p, os.path.join(d, "y"))
    assert os.listxattr(os.path.join(d, "y")) == ["user.empty"]
    os.mkdir(os.path.join(d, "dir"))
    os.setxattr(os.path.join(d, "dir"), "user.tag", b"t" * 3000)
    assert os.getxattr(os.path.join(d, "dir"), "user.tag") == b"t" * 3000


@check
def statfs(d):
    st = os.statvfs(d)
    assert st.f_blocks > 0 and st.f_bavail > 0 and st.f_namemax == 255


@check
def fifos(d):
    p = os.path.join(d, "fifo")
    os.mkfifo(p)
    assert stat.S_ISFIFO(os.stat(p).st_mode)
    reader = subprocess.Popen(["cat", p], stdout=subprocess.PIPE)
    with open(p, "wb") as f:
        f.write(b"through the pipe")
    assert reader.communicate(timeout=10)[0] == b"through the pipe"


@check
def mmap_read_and_write(d):
    p = os.path.join(d, "mapped")
    _write(p, b"0123456789" * 1000)
    with open(p, "r+b") as f:
        with mmap.mmap(f.fileno(), 0) as m:
            assert m[10:20] == b"0123456789"
            m[0:5] = b"HELLO"
            m.flush()
    assert _read(p)[:10] == b"HELLO56789"


@check
def many_processes_at_once(d):
    script = (
        "import os, sys\n"
        "d, n = sys.argv[1], int(sys.argv[2])\n"
        "p = os.path.join(d, f'w{n}')\n"
        "data = bytes([n]) * 300000\n"
        "for i in range(5):\n"
        "    open(p, 'wb').write(data)\n"
        "    assert open(p, 'rb').read() == data\n"
        "shared = os.path.join(d, 'shared')\n"
        "fd = os.open(shared, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)\n"
        "for i in range(200):\n"
        "    os.write(fd, b'%02d\\n' % n)\n"
        "os.close(fd)\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, d, str(n)]) for n in range(8)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    lines = _read(os.path.join(d, "shared")).split(b"\n")[:-1]
    assert len(lines) == 1600 and sorted(set(lines)) == [b"%02d" % n for n in range(8)]
    for n in range(8):
        assert _read(os.path.join(d, f"w{n}")) == bytes([n]) * 300000


def _drop_caches():
    # The kernel forgets its cached attributes: the next stat asks the daemon again.
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")


@check
def directory_link_counts_as_on_ext4(d):
    for name in ("a", "b", "c"):
        os.mkdir(os.path.join(d, name))
    _write(os.path.join(d, "file"), b"")
    assert os.stat(d).st_nlink == 5                       # 2 + three subdirectories
    os.rmdir(os.path.join(d, "a"))
    os.rename(os.path.join(d, "b"), os.path.join(d, "c", "b"))
    assert os.stat(d).st_nlink == 3 and os.stat(os.path.join(d, "c")).st_nlink == 3
    _drop_caches()
    assert os.stat(d).st_nlink == 3 and os.stat(os.path.join(d, "c", "b")).st_nlink == 2


@check
def chmod_and_chown_change_ctime_never_mtime(d):
    """`touch -d 2001-01-01 f; chmod 600 f` keeps 2001 as the mtime, also once the kernel
    has forgotten the attributes; the ctime is now."""
    f, sub = os.path.join(d, "f"), os.path.join(d, "sub")
    _write(f, b"x")
    os.mkdir(sub)
    then = 978_307_200 * 10**9                            # 2001-01-01
    for p in (f, sub):
        os.utime(p, ns=(then, then))
        os.chmod(p, 0o600 if p == f else 0o700)
        os.chown(p, 4321, 4321)
    _drop_caches()
    for p in (f, sub):
        st = os.stat(p)
        assert st.st_mtime_ns == then, p
        assert st.st_ctime_ns > time.time_ns() - 300 * 10**9, p     # now, not 2001


@check
def posix_acls_are_refused_so_cp_keeps_the_mode(d):
    p = os.path.join(d, "f")
    _write(p, b"")
    with pytest.raises(OSError) as e:
        os.setxattr(p, "system.posix_acl_access", b"\x02\x00\x00\x00")
    assert e.value.errno == errno.EOPNOTSUPP
    assert "system.posix_acl_access" not in os.listxattr(p)
    outside = os.path.join("/tmp", f"pqcfs-cp-source-{os.getpid()}")
    _write(outside, b"from another file system")
    try:
        os.chmod(outside, 0o640)
        for flag, name in (("-p", "copied-p"), ("-a", "copied-a")):
            subprocess.run(["cp", flag, outside, os.path.join(d, name)], check=True)
            assert stat.S_IMODE(os.stat(os.path.join(d, name)).st_mode) == 0o640, flag
    finally:
        os.unlink(outside)


@check
def sizes_no_drive_can_hold_are_efbig(d):
    """ext4 refuses sizes past its maximum file size itself; on exFAT (no sparse files)
    pqcfs refuses sizes past what the drive holds."""
    p = os.path.join(d, "f")
    _write(p, b"small")
    with pytest.raises(OSError) as e:
        os.truncate(p, 999_999_999_999_999)
    assert e.value.errno == errno.EFBIG
    fd = os.open(p, os.O_WRONLY)
    try:
        with pytest.raises(OSError) as e:
            os.pwrite(fd, b"x", 10**15)
        assert e.value.errno == errno.EFBIG
    finally:
        os.close(fd)
    assert _read(p) == b"small"


@check
def times_are_kept_to_the_nanosecond(d):
    """Any drive, exFAT too (whose own times have 10 ms and 2 s steps)."""
    p, sub = os.path.join(d, "f"), os.path.join(d, "sub")
    _write(p, b"x")
    os.mkdir(sub)
    for path in (p, sub):
        os.utime(path, ns=(1_234_567_891_234_567_891, 987_654_321_987_654_321))
    _drop_caches()
    for path in (p, sub):
        st = os.stat(path)
        assert (st.st_atime_ns, st.st_mtime_ns) == (1_234_567_891_234_567_891, 987_654_321_987_654_321), path


@check
def touch_into_the_past_leaves_ctime_now(d):
    p = os.path.join(d, "f")
    _write(p, b"x")
    before = time.time_ns()
    os.utime(p, ns=(0, 0))                                   # touch -d 1970
    _drop_caches()
    st = os.stat(p)
    assert st.st_mtime_ns == 0 and st.st_ctime_ns >= before


@check
def new_nodes_are_stamped_after_a_time_taken_before(d):
    before = time.time_ns()
    _write(os.path.join(d, "f"), b"x")
    os.mkdir(os.path.join(d, "sub"))
    os.symlink("f", os.path.join(d, "link"))
    for name in ("f", "sub", "link"):
        st = os.lstat(os.path.join(d, name))
        assert min(st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns) >= before, name


@check
def writes_move_mtime_and_ctime_reads_follow_relatime(d):
    p = os.path.join(d, "f")
    _write(p, b"first")
    old = 10**18                                             # 2001-09-09
    os.utime(p, ns=(old, old))
    before = time.time_ns()
    _write(p, b"more", "ab")
    st = os.stat(p)
    assert st.st_mtime_ns >= before and st.st_ctime_ns >= before and st.st_size == 9
    assert st.st_atime_ns == old                             # writing is no access
    assert _read(p) == b"firstmore"
    first = os.stat(p).st_atime_ns
    assert first >= before                                   # relatime: atime was older than mtime
    assert _read(p) == b"firstmore"
    assert os.stat(p).st_atime_ns == first                   # ... and now it is not


@check
def directory_times_follow_their_entries(d):
    sub = os.path.join(d, "sub")
    os.mkdir(sub)
    old = 10**18
    steps = [lambda: _write(os.path.join(sub, "f"), b""),
             lambda: os.rename(os.path.join(sub, "f"), os.path.join(sub, "g")),
             lambda: os.symlink("g", os.path.join(sub, "l")),
             lambda: os.unlink(os.path.join(sub, "l"))]
    for step in steps:
        os.utime(sub, ns=(old, old))
        before = time.time_ns()
        step()
        st = os.stat(sub)
        assert st.st_mtime_ns >= before and st.st_ctime_ns >= before
    moved = os.path.join(d, "moved")
    os.utime(os.path.join(sub, "g"), ns=(old, old))
    before = time.time_ns()
    os.rename(os.path.join(sub, "g"), moved)
    st = os.stat(moved)
    assert st.st_mtime_ns == old and st.st_ctime_ns >= before   # a rename changes the node's ctime


@check
def set_id_bits_drop_as_on_linux(d):
    """A chown drops a file's set-user-ID bit, and its set-group-ID bit where the group
    may execute, whoever asks; a write, truncation or O_TRUNC open drops them when the
    caller is not privileged (root keeps them), and so does a fallocate that grows the
    file. pqcfs does this itself: with
    FUSE_HANDLE_KILLPRIV_V2 the kernel leaves it to the file system."""
    def mode(p):
        return stat.S_IMODE(os.stat(p).st_mode)

    def made(name, bits, gid=0):
        p = os.path.join(d, name)
        _write(p, b"#!/bin/sh\n")
        os.chown(p, 0, gid)
        os.chmod(p, bits)
        return p

    os.chmod(d, 0o755)
    for bits, after_chown in ((0o6755, 0o755), (0o6745, 0o2745), (0o4700, 0o700)):
        p = made(f"chown-{bits:o}", bits)
        os.chown(p, 4321, 4321)
        assert mode(p) == after_chown, (oct(bits), oct(mode(p)))
    d_sub = os.path.join(d, "sub")
    os.mkdir(d_sub)
    os.chmod(d_sub, 0o2775)
    os.chown(d_sub, 4321, 4321)
    assert mode(d_sub) == 0o2775                    # a directory keeps its set-group-ID

    for how in ("write", "truncate", "o_trunc", "fallocate"):
        by_root = made(f"root-{how}", 0o6777)
        by_nobody = made(f"nobody-{how}", 0o6777)
        # Without group execute the set-group-ID bit marks mandatory locking and stays
        # for a writer in the file's group.
        no_group_x = made(f"nobody-{how}-locking", 0o6767, gid=65534)
        for p in (by_root, by_nobody, no_group_x):
            change = {"write": f"echo more >> {p}", "truncate": f"truncate -s 1 {p}",
                      "o_trunc": f"echo new > {p}", "fallocate": f"fallocate -l 65536 {p}"}[how]
            who = {} if p == by_root else {"user": 65534, "group": 65534}
            done = subprocess.run(["sh", "-c", change], capture_output=True, **who)
            assert done.returncode == 0, (how, done.stderr)
        _drop_caches()
        assert mode(by_root) == 0o6777, how
        assert mode(by_nobody) == 0o777, (how, oct(mode(by_nobody)))
        assert mode(no_group_x) == 0o2767, (how, oct(mode(no_group_x)))
