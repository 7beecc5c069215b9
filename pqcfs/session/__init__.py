"""Sessions: a mount (or an offline command that changes the tree) from start to clean
end: mirroring policy at start, crash recovery, the write-intent log, degraded mode and
online rejoin, the daemon's runtime file and control socket, grantees' sessions. Above
the FUSE translation (pqcfs.fuse) and the vault core (pqcfs.fs)."""
