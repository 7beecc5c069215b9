"""The one way the layers above open a vault's tree: the type its format says."""

from __future__ import annotations

from pqcfs.fs.listed import ListedFS
from pqcfs.fs.tables import TabledFS
from pqcfs.fs.vaultfs import VaultFS
from pqcfs.store.replicas import ReplicaSet


def tree_type(tables: bool) -> type[VaultFS]:
    return TabledFS if tables else ListedFS


def open_tree(vault, location: str | None = None, replicas: ReplicaSet | None = None,
              kind: type[VaultFS] | None = None, **options) -> VaultFS:
    """The owner's tree of an unlocked vault: on one location's drive, on the replicas
    given (a session's set), or on all its drives; its type (kind) from the vault's
    format unless given (an upgrade reads a format-1 vault as format 2), its block size
    from its header."""
    if replicas is None:
        replicas = ReplicaSet([vault.drive(location)] if location else vault.drives)
    kind = kind or tree_type(vault.tables)
    return kind(replicas, vault.root_dir_keys(location), vault.header.block_size, **options)
