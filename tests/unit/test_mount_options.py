"""mount(8) options into `pqcfs mount` arguments: owned ones ignored, ours translated,
unknown ones and passphrases refused."""

import pytest

from mounttool import helper
from pqcfs.cli import helpers
from mounttool.options import MountOptionError, translate


def test_options_mount_and_systemd_own_are_ignored():
    owned = ("defaults,noauto,nofail,_netdev,user,users,nouser,rw,dev,suid,nodev,nosuid,exec,noexec,relatime,"
             "x-systemd.automount,x-systemd.device-timeout=10s,x-systemd.idle-timeout=60,comment=x,"
             "x-gvfs-show")
    assert translate(owned) == []


def test_our_options_become_pqcfs_mount_arguments():
    assert translate("passfile=/root/pw,backup=/media/b,ro,allow_other,allow_fixed,default_permissions") == [
        "--passfile", "/root/pw", "--backup", "/media/b", "--ro", "--allow-fixed",
        "-o", "allow_other,default_permissions"]
    assert translate("identity") == ["--identity"]
    assert translate("identity=/home/a/id.json,grant=9f2c") == ["--identity", "/home/a/id.json", "--grant", "9f2c"]


@pytest.mark.parametrize("bad", ["passphrase=secret", "password=x", "key=abc"])
def test_a_passphrase_is_never_an_option(bad):
    with pytest.raises(MountOptionError, match="passfile"):
        translate(bad)


@pytest.mark.parametrize("bad", ["allow_evil", "passfile", "backup=", "uid=1000x"])
def test_unknown_or_incomplete_options_are_named(bad):
    with pytest.raises(MountOptionError, match=bad.split("=")[0]):
        translate(bad)


def test_helper_command_lines():
    # mount(8) calls mount.pqcfs SOURCE DIR [-sfnv] [-N ns] -o OPTS; mount.fuse3 calls
    # pqcfs SOURCE DIR -o OPTS.
    assert helper.mount_args(["/media/a", "/mnt/v", "-n", "-o", "passfile=/pw,nofail", "-t", "fuse.pqcfs"]) == \
        ["mount", "/media/a", "/mnt/v", "--passfile", "/pw"]
    assert helper.mount_args(["/media/a", "/mnt/v", "-o", "ro", "-o", "allow_other"]) == \
        ["mount", "/media/a", "/mnt/v", "--ro", "-o", "allow_other"]
    assert helper.mount_args(["/media/a", "/mnt/v", "-f", "-o", "ro"]) is None     # fake: nothing to do
    with pytest.raises(MountOptionError):
        helper.mount_args(["/media/a"])
    assert helpers.mount_main(["/media/a", "/mnt/v", "-o", "password=x"]) == 2


def test_the_mount_table_is_read_with_one_escape_rule():
    from mounttool import mountinfo
    line = ("36 35 98:0 /mnt1 /mnt/my\\040vault\\134x rw,noatime master:1 - fuse.pqcfs pqcfs "
            "rw,user_id=1000,group_id=1000\n40 35 0:41 / /sys rw - sysfs sysfs rw\nnot a mount line\n")
    first, second = mountinfo.parse(line)
    assert first.mountpoint == "/mnt/my vault\\x" and first.fstype == "fuse.pqcfs" and first.device == "98:0"
    assert first.mount_id == "36" and "user_id=1000" in first.super_options and first.root == "/mnt1"
    assert second.fstype == "sysfs" and len(mountinfo.parse(line)) == 2
