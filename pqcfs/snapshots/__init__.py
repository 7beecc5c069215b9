"""Snapshots and automatic history (docs/snapshots.md): a read-only, authenticated copy of
the whole tree's metadata at one moment, whose file contents are shared with the live tree
until the live tree changes them (copy-on-write, one file at a time).

Above the tree (fs): a snapshot is taken from a TabledFS; the tree calls back into a
Keeper (handed to it, not imported) before it changes or removes a file a snapshot holds.
"""
