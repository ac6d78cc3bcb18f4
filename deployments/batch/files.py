"""File contents, kept under one storage location through fsspec: a local folder by default, or
any URI fsspec can open (``s3://``, ``gs://``, ``abfs://``, a shared mount) that every node reaches."""

from __future__ import annotations

import os

import fsspec


class FileStorage:
    def __init__(self, location: str) -> None:
        if "://" not in location:
            location = os.path.abspath(os.path.expanduser(location))
        self.fs, self.root = fsspec.core.url_to_fs(location)
        self.location = location
        self.fs.makedirs(self.root, exist_ok=True)

    def _path(self, file_id: str) -> str:
        return f"{self.root.rstrip('/')}/{file_id}"

    def put(self, file_id: str, data: bytes) -> None:
        """Write the whole file, then move it into place, so a reader never sees half of it."""
        tmp = self._path(file_id + ".partial")
        with self.fs.open(tmp, "wb") as f:
            f.write(data)
        self.fs.mv(tmp, self._path(file_id))

    def get(self, file_id: str) -> bytes:
        with self.fs.open(self._path(file_id), "rb") as f:
            return f.read()

    def delete(self, file_id: str) -> None:
        try:
            self.fs.rm(self._path(file_id))
        except FileNotFoundError:
            pass
