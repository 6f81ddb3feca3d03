"""Where a store lives: a local folder, or a URL of an object store (``s3://``, ``gs://``, ``az://``).

A :class:`Location` gives the store's zarr backend (zarr's ``LocalStore``, or its
``ObjectStore`` over obstore) and the few small-object operations the commit protocol needs
besides chunks: claims, failure records and their listing.

* ``create(key, data)`` writes only if nothing is there: ``O_CREAT | O_EXCL`` on disk, an
  ``If-None-Match`` PUT on an object store (who wins a race is known);
* ``replace(key, data, token)`` writes only if the object is still the one read with
  ``token``: a compare-and-swap (``If-Match`` on the ETag; on disk, the content compared under
  an exclusive lock) to take over a stale claim;
* ``write`` is a plain atomic write (a temporary file then a rename, or one PUT), for failure
  records and chunks.

Object stores take their credentials and endpoints from the standard environment variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, ``AWS_ENDPOINT_URL``,
``AWS_ALLOW_HTTP``, ``GOOGLE_SERVICE_ACCOUNT``, ``AZURE_STORAGE_ACCOUNT_NAME``, ...), read by
obstore; nothing secret is kept in the store or shown in a message.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import time
from abc import ABC, abstractmethod
from pathlib import Path
from urllib.parse import urlparse

from .errors import StoreError

OBJECT_SCHEMES = ("s3", "gs", "az")
"""URL schemes of object stores (``file://`` is a local folder)."""

CREDENTIALS = {
    "s3": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (AWS_ENDPOINT_URL, AWS_REGION and AWS_ALLOW_HTTP for S3-compatible servers)",
    "gs": "GOOGLE_SERVICE_ACCOUNT (or GOOGLE_APPLICATION_CREDENTIALS)",
    "az": "AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY (or another AZURE_* credential)",
}


class Location(ABC):
    """A store's place: its zarr backend and the small objects of the commit protocol."""

    url: str

    @property
    def path(self) -> Path | str:
        """How users name it: a ``Path`` for a local folder, the URL otherwise."""
        return self.url

    @property
    def local(self) -> Path | None:
        """The local folder, or None for an object store."""
        return None

    def report_dir(self) -> Path:
        """Where commands put their figures by default: ``STORE/reports`` for a local store,
        ``reports/<last part of the URL>`` in the working directory otherwise."""
        return Path("reports") / (self.url.rstrip("/").rsplit("/", 1)[-1] or "store")

    @abstractmethod
    def zarr_store(self, read_only: bool = False):
        """The zarr store over this location."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def age(self, key: str) -> float | None:
        """Seconds since ``key`` was last written (the storage's own clock); None if absent."""

    @abstractmethod
    def read(self, key: str) -> tuple[bytes, object] | None:
        """The object's bytes and a version token for :meth:`replace`; None if absent."""

    @abstractmethod
    def write(self, key: str, data: bytes) -> None:
        """Write ``data`` atomically, replacing what is there."""

    @abstractmethod
    def create(self, key: str, data: bytes) -> bool:
        """Write ``data`` only if nothing is at ``key``: True if this call created it."""

    @abstractmethod
    def replace(self, key: str, data: bytes, token) -> bool:
        """Write ``data`` only if ``key`` still holds the version ``token`` (from :meth:`read`)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key`` (nothing if absent)."""

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Names of the objects directly or deeply under ``prefix/``, relative to it."""

    @abstractmethod
    def is_empty(self) -> bool:
        """Nothing is stored here yet (a missing folder or prefix is empty)."""

    @abstractmethod
    def clear(self) -> None:
        """Remove everything stored here (a failed import)."""

    def __str__(self) -> str:
        return self.url


class LocalLocation(Location):
    """A folder on a local or shared file system."""

    def __init__(self, path: Path):
        self.dir = Path(path).expanduser()
        self.url = str(self.dir)

    @property
    def path(self) -> Path:
        return self.dir

    @property
    def local(self) -> Path:
        return self.dir

    def report_dir(self) -> Path:
        return self.dir / "reports"

    def zarr_store(self, read_only: bool = False):
        from zarr.storage import LocalStore

        return LocalStore(str(self.dir), read_only=read_only)

    def _file(self, key: str) -> Path:
        return self.dir / key

    def exists(self, key: str) -> bool:
        return self._file(key).is_file()

    def age(self, key: str) -> float | None:
        try:
            return time.time() - self._file(key).stat().st_mtime
        except FileNotFoundError:
            return None

    def read(self, key: str) -> tuple[bytes, object] | None:
        try:
            data = self._file(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            return None
        return data, data

    def write(self, key: str, data: bytes) -> None:
        path = self._file(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)

    def create(self, key: str, data: bytes) -> bool:
        path = self._file(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True

    def replace(self, key: str, data: bytes, token) -> bool:
        path = self._file(key)
        lock = path.with_name(path.name + ".lock")
        with open(lock, "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                try:
                    if path.read_bytes() != token:
                        return False
                except FileNotFoundError:
                    return False
                self.write(key, data)
                return True
            finally:
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()

    def delete(self, key: str) -> None:
        self._file(key).unlink(missing_ok=True)

    def list(self, prefix: str) -> list[str]:
        folder = self.dir / prefix
        if not folder.is_dir():
            return []
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())

    def is_empty(self) -> bool:
        if not self.dir.exists():
            return True
        if not self.dir.is_dir():
            return False
        return not any(self.dir.iterdir())

    def clear(self) -> None:
        import shutil

        if self.dir.is_dir():
            for child in self.dir.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()


class ObjectLocation(Location):
    """A prefix of a bucket (or container) of an object store, through obstore."""

    def __init__(self, url: str):
        from obstore.store import from_url

        self.url = url.rstrip("/")
        self.scheme = urlparse(url).scheme
        try:
            self.store = from_url(self.url)
        except Exception as exc:  # noqa: BLE001 - obstore's configuration errors: one line, what to set
            raise StoreError(f"{self.url}: cannot configure the object store ({_first_line(exc)}); set {CREDENTIALS[self.scheme]}") from None

    def zarr_store(self, read_only: bool = False):
        from zarr.storage import ObjectStore

        return ObjectStore(self.store, read_only=read_only)

    def exists(self, key: str) -> bool:
        import obstore
        from obstore.exceptions import NotFoundError

        with self.errors():
            try:
                obstore.head(self.store, key)
            except (NotFoundError, FileNotFoundError):
                return False
        return True

    def age(self, key: str) -> float | None:
        import obstore
        from obstore.exceptions import NotFoundError

        with self.errors():
            try:
                meta = obstore.head(self.store, key)
            except (NotFoundError, FileNotFoundError):
                return None
        return time.time() - meta["last_modified"].timestamp()

    def read(self, key: str) -> tuple[bytes, object] | None:
        import obstore
        from obstore.exceptions import NotFoundError

        with self.errors():
            try:
                result = obstore.get(self.store, key)
            except (NotFoundError, FileNotFoundError):
                return None
            return bytes(result.bytes()), {"e_tag": result.meta["e_tag"], "version": result.meta["version"]}

    def write(self, key: str, data: bytes) -> None:
        import obstore

        with self.errors():
            obstore.put(self.store, key, data, mode="overwrite")

    def create(self, key: str, data: bytes) -> bool:
        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        with self.errors():
            try:
                obstore.put(self.store, key, data, mode="create")
            except (AlreadyExistsError, PreconditionError):
                return False
        return True

    def replace(self, key: str, data: bytes, token) -> bool:
        import obstore
        from obstore.exceptions import NotFoundError, PreconditionError

        version = {k: v for k, v in dict(token).items() if v is not None}
        with self.errors():
            try:
                obstore.put(self.store, key, data, mode=version)
            except (PreconditionError, NotFoundError, FileNotFoundError):
                return False
        return True

    def delete(self, key: str) -> None:
        import obstore
        from obstore.exceptions import NotFoundError

        with self.errors(), contextlib.suppress(NotFoundError, FileNotFoundError):
            obstore.delete(self.store, key)

    def list(self, prefix: str) -> list[str]:
        import obstore

        start = prefix.rstrip("/") + "/"
        with self.errors():
            found = obstore.list(self.store, prefix=start).collect()
        return sorted(item["path"][len(start) :] for item in found)

    def is_empty(self) -> bool:
        import obstore

        with self.errors():
            for batch in obstore.list(self.store, chunk_size=1):
                return len(batch) == 0
        return True

    def clear(self) -> None:
        import obstore

        with self.errors():
            paths = [item["path"] for batch in obstore.list(self.store) for item in batch]
            if paths:
                obstore.delete(self.store, paths)

    @contextlib.contextmanager
    def errors(self):
        """Object-store failures as one line that says what to check (no secret in it)."""
        from obstore.exceptions import PermissionDeniedError, UnauthenticatedError

        try:
            yield
        except (PermissionDeniedError, UnauthenticatedError) as exc:
            raise StoreError(f"{self.url}: access denied ({_first_line(exc)}); check {CREDENTIALS[self.scheme]}") from None
        except Exception as exc:
            if type(exc).__module__.startswith("obstore"):
                raise StoreError(describe_failure(self.url, self.scheme, exc)) from None
            raise


def describe_failure(url: str, scheme: str, exc: BaseException) -> str:
    """One line for an object-store failure: what happened and the variables involved."""
    text = str(exc)
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT")
    where = f" at {endpoint} (AWS_ENDPOINT_URL)" if scheme == "s3" and endpoint else ""
    if "NoSuchBucket" in text or ("does not exist" in text.lower() and "bucket" in text.lower()):
        return f"{url}: the bucket does not exist{where}"
    if "InvalidAccessKeyId" in text or "SignatureDoesNotMatch" in text or "403" in text or "AccessDenied" in text:
        return f"{url}: access denied{where}; check {CREDENTIALS[scheme]}"
    if "error sending request" in text.lower() or "connect" in text.lower() or "dns" in text.lower():
        return f"{url}: cannot reach the object store{where} ({_first_line(exc)}); check the endpoint and the network"
    if "credential" in text.lower() or ("token" in text.lower() and "metadata" in text.lower()):
        return f"{url}: no credentials found ({_first_line(exc)}); set {CREDENTIALS[scheme]}"
    return f"{url}: the object store failed ({_first_line(exc)})"


def _first_line(exc: BaseException, limit: int = 200) -> str:
    line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def open_location(target) -> Location:
    """The location of a store given as a local path, a ``file://`` URL or an object-store URL.
    An unsupported scheme is refused (:class:`StoreError`) before anything is read."""
    if isinstance(target, Location):
        return target
    if isinstance(target, os.PathLike):
        return LocalLocation(Path(target))
    text = str(target)
    if "://" not in text:
        return LocalLocation(Path(text))
    parsed = urlparse(text)
    if parsed.scheme == "file":
        return LocalLocation(Path(parsed.path))
    if parsed.scheme in OBJECT_SCHEMES:
        if not parsed.netloc:
            raise StoreError(f"{text}: a store URL names a bucket, e.g. {parsed.scheme}://bucket/populations/name")
        if importlib.util.find_spec("obstore") is None:
            raise StoreError(f"{text}: stores in object storage need obstore: pip install 'manyruns[s3]'")
        return ObjectLocation(text)
    raise StoreError(f"{text}: unsupported store URL scheme {parsed.scheme!r}; use a local path, file://, s3://, gs:// or az://")


__all__ = ["CREDENTIALS", "LocalLocation", "Location", "OBJECT_SCHEMES", "ObjectLocation", "open_location"]
