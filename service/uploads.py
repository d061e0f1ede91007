"""Receiving a cohort archive: streamed to disk under a size limit, checked, then unpacked.

Order of defences:
1. ``Content-Length`` above the limit: refused before a byte is read (413).
2. While streaming: bytes are counted, and the upload stops at the limit (413), whatever the
   headers said (chunked uploads declare nothing).
3. The archive type comes from its first bytes, not its name: zip, gzip'd tar or plain tar (415).
4. Before any member is written: its name (no absolute paths, drive letters, '..' or NULs), its
   type (regular files and folders only: no symlinks, hard links, devices), the member count,
   the declared unpacked total and the compression ratio (a zip member's declared size over its
   compressed size; for a tar.gz, the sizes declared so far over the archive's size), so a bomb
   is refused from its headers before a byte is inflated; headers can lie, so:
5. while writing, bytes are counted against both the member's declared size and the total.
Everything is unpacked into a scratch folder; the caller moves it into the artifact store only
when all of it passed. Member names appear in error messages (the client sent them) but never
in logs: they may be patient identifiers.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tarfile
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from workers import sources

from .errors import ApiError, StorageError

CHUNK = 1 << 20
RAW_TYPES = ("application/zip", "application/x-zip-compressed", "application/gzip",
             "application/x-gzip", "application/x-tar", "application/x-gtar",
             "application/octet-stream")
_JUNK = re.compile(r"(^|/)(__MACOSX(/|$)|\._[^/]*$|\.DS_Store$|Thumbs\.db$)")


@dataclass
class Limits:
    max_upload_bytes: int
    max_files: int
    max_unpacked_bytes: int
    max_compression_ratio: float = sources.MAX_COMPRESSION_RATIO


@dataclass
class Received:
    path: Path
    size: int
    fields: dict[str, str]


@contextmanager
def _writing():
    """Writes to the server's disk: their OSErrors are the server's fault (a 503), never to be
    mistaken for a malformed archive (a 422) by the readers' error handling around them."""
    try:
        yield
    except OSError as err:
        raise StorageError(err) from err


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"upload larger than the limit of {limit} bytes (MCVAE_MAX_UPLOAD_BYTES)")


# -- 1-2: the request body -------------------------------------------------------------------------
async def receive(request: Request, dest: Path, max_bytes: int) -> Received:
    """Write the uploaded archive to ``dest``: the ``file`` part of a multipart/form-data body, or
    the whole body when it is sent raw (Content-Type application/zip, application/gzip, ...)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    content_type = content_type.decode("latin-1").lower()
    if content_type == "multipart/form-data":
        return await _receive_multipart(request, dest, max_bytes, options.get(b"boundary"))
    if content_type in RAW_TYPES or not content_type:
        size = 0
        with _writing():
            async with await anyio.open_file(dest, "wb") as out:  # writes in a thread, off the loop
                async for chunk in _stream(request):
                    size += len(chunk)
                    if size > max_bytes:
                        raise _too_large(max_bytes)
                    await out.write(chunk)
        if size == 0:
            raise ApiError(400, "empty upload: send the archive as the request body or as the "
                                "'file' field of a multipart/form-data form")
        return Received(dest, size, {})
    raise ApiError(415, f"unsupported Content-Type {content_type!r}: send multipart/form-data with a "
                        "'file' field, or the archive itself as application/zip or application/gzip")


async def _stream(request: Request):
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect:
        raise ApiError(400, "the client disconnected before the upload was complete") from None


async def _receive_multipart(request: Request, dest: Path, max_bytes: int,
                             boundary: bytes | None) -> Received:
    if not boundary:
        raise ApiError(400, "multipart/form-data without a boundary")
    state = {"name": b"", "value": b"", "headers": {}, "is_file": False, "files": 0,
             "field": bytearray(), "size": 0}
    fields: dict[str, str] = {}
    pending: list[bytes] = []  # file data parsed from the last chunk, written after it

    def on_part_begin():
        state.update(headers={}, is_file=False, field=bytearray())

    def on_header_field(data, start, end):
        state["name"] += data[start:end]

    def on_header_value(data, start, end):
        state["value"] += data[start:end]

    def on_header_end():
        state["headers"][state["name"].lower()] = state["value"]
        state["name"], state["value"] = b"", b""

    def on_headers_finished():
        _, opts = parse_options_header(state["headers"].get(b"content-disposition", b""))
        state["part"] = opts.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in opts or state["part"] == "file":
            state["files"] += 1
            if state["files"] > 1:
                raise ApiError(400, "one archive per upload: the form has more than one file")
            state["is_file"] = True

    def on_part_data(data, start, end):
        if state["is_file"]:
            state["size"] += end - start
            if state["size"] > max_bytes:
                raise _too_large(max_bytes)
            pending.append(data[start:end])
        else:
            state["field"] += data[start:end]
            if len(state["field"]) > 4096:
                raise ApiError(400, f"form field {state['part']!r} is longer than 4096 bytes")
            if len(fields) >= 20:
                raise ApiError(400, "too many form fields (the form needs 'file' and maybe 'name')")

    def on_part_end():
        if not state["is_file"]:
            fields[state["part"]] = state["field"].decode("utf-8", "replace")

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field,
        "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
        "on_part_end": on_part_end})
    with _writing():
        out = await anyio.open_file(dest, "wb")
    async with out:
        try:
            body = 0
            async for chunk in _stream(request):
                body += len(chunk)  # the whole body, headers and other fields included
                if body > max_bytes + (1 << 16):
                    raise _too_large(max_bytes)
                parser.write(chunk)
                with _writing():
                    for block in pending:
                        await out.write(block)
                pending.clear()
            parser.finalize()
        except (ApiError, StorageError):
            raise
        except Exception as err:  # noqa: BLE001 - python-multipart's parse errors have no common base
            raise ApiError(400, f"malformed multipart/form-data body ({err})") from None
    if state["files"] == 0 or state["size"] == 0:
        raise ApiError(400, "no archive in the form: send it as the 'file' field")
    return Received(dest, state["size"], fields)


# -- 3: what kind of archive ------------------------------------------------------------------------
def sniff(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(512)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "tar.gz"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    raise ApiError(415, "the upload is not a .zip or .tar.gz archive (judged by its content, not its name)")


# -- 4-5: unpacking ---------------------------------------------------------------------------------
def member_path(name: str) -> str | None:
    """The safe relative path for an archive member; None for junk (macOS metadata); ApiError
    for anything that could land outside the destination."""
    if not name or "\x00" in name or len(name) > 1024:
        raise ApiError(422, f"unsafe archive: member name {name[:100]!r} is empty, too long or has a NUL")
    normal = name.replace("\\", "/")
    if normal.startswith("/") or re.match(r"^[A-Za-z]:", normal):
        raise ApiError(422, f"unsafe archive: member {name!r} has an absolute path")
    parts = [p for p in normal.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ApiError(422, f"unsafe archive: member {name!r} points outside the archive ('..')")
    if len(parts) > 32:
        raise ApiError(422, f"unsafe archive: member {name!r} is nested more than 32 folders deep")
    relative = "/".join(parts)
    if not relative or _JUNK.search(relative):
        return None
    return relative


class _Budget:
    def __init__(self, limits: Limits):
        self.limits, self.files, self.bytes = limits, 0, 0

    def ratio(self, unpacked: int, packed: int, what: str) -> None:
        """Refuse ``unpacked`` bytes made from ``packed``: a real scan deflates about 3-6:1, a
        run of zeros about 1000:1 (MCVAE_MAX_COMPRESSION_RATIO)."""
        limit = self.limits.max_compression_ratio
        if sources.is_bomb(unpacked, packed, limit):
            raise ApiError(413, f"{what} would unpack {unpacked} bytes from {packed} (a ratio above "
                                f"{limit:g}:1, MCVAE_MAX_COMPRESSION_RATIO): refused as a decompression bomb")

    def member(self) -> None:
        self.files += 1
        if self.files > self.limits.max_files:
            raise ApiError(413, f"archive has more than {self.limits.max_files} members "
                                "(MCVAE_MAX_ARCHIVE_FILES)")

    def declare(self, size: int) -> None:
        if size < 0 or self.bytes + size > self.limits.max_unpacked_bytes:
            raise ApiError(413, f"archive unpacks to more than {self.limits.max_unpacked_bytes} bytes "
                                "(MCVAE_MAX_UNPACKED_BYTES)")

    def copy(self, src, target: Path, declared: int, name: str) -> None:
        written = 0
        # Reading the member may fail (a malformed archive: 422); opening, writing and closing
        # (the last flush) may fail too (the server's disk: 503): each is guarded on its own.
        with _writing():
            out = open(target, "xb")  # noqa: SIM115 - closed in the finally below
        try:
            while block := src.read(CHUNK):
                written += len(block)
                if written > declared:
                    raise ApiError(422, f"unsafe archive: member {name!r} unpacks to more than its "
                                        f"declared {declared} bytes")
                self.declare(len(block))
                self.bytes += len(block)
                with _writing():
                    out.write(block)
        finally:
            with _writing():
                out.close()


def _target(dest: Path, relative: str, name: str, directory: bool = False) -> Path:
    target = dest / relative
    if not target.resolve().is_relative_to(dest.resolve()):  # belt and braces after member_path
        raise ApiError(422, f"unsafe archive: member {name!r} points outside the archive")
    with _writing():
        (target if directory else target.parent).mkdir(parents=True, exist_ok=True)
    if not directory and target.exists():
        raise ApiError(422, f"archive holds {name!r} twice")
    return target


def _unzip(archive: Path, dest: Path, budget: _Budget) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            plan = []
            for info in infos:  # every check before the first byte is written
                budget.member()
                relative = member_path(info.filename)
                # Unix type bits, when the zip has them (many writers leave them 0: a plain file).
                kind = stat.S_IFMT(info.external_attr >> 16)
                if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
                    raise ApiError(422, f"unsafe archive: member {info.filename!r} is a link or "
                                        "special file; only files and folders are accepted")
                if info.flag_bits & 0x1:
                    raise ApiError(422, f"member {info.filename!r} is encrypted")
                if relative is None:
                    continue
                if not info.is_dir():
                    budget.declare(info.file_size)
                    budget.bytes += info.file_size
                    budget.ratio(info.file_size, info.compress_size, f"archive member {info.filename!r}")
                plan.append((info, relative))
            budget.ratio(budget.bytes, archive.stat().st_size, "the archive")
            budget.bytes = 0  # from here on: bytes actually written
            for info, relative in plan:
                if info.is_dir():
                    _target(dest, relative, info.filename, directory=True)
                    continue
                with zf.open(info) as src:
                    budget.copy(src, _target(dest, relative, info.filename), info.file_size, info.filename)
    except (ApiError, StorageError):
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, NotImplementedError,
            ValueError) as err:
        raise ApiError(422, f"malformed zip archive: {err}") from None


def _untar(archive: Path, dest: Path, budget: _Budget) -> None:
    try:
        # Streaming mode: each header is checked before its data is read, so a lying or
        # enormous archive is stopped at the first bad member, not after decompressing it all.
        packed, declared = archive.stat().st_size, 0
        with tarfile.open(archive, mode="r|*") as tf:
            for member in tf:
                budget.member()
                relative = member_path(member.name)
                if not (member.isfile() or member.isdir()):
                    raise ApiError(422, f"unsafe archive: member {member.name!r} is a link or special "
                                        "file; only files and folders are accepted")
                if relative is None:
                    continue
                if member.isdir():
                    _target(dest, relative, member.name, directory=True)
                    continue
                budget.declare(member.size)
                declared += member.size
                budget.ratio(declared, packed, f"the archive (at member {member.name!r})")
                src = tf.extractfile(member)
                budget.copy(src, _target(dest, relative, member.name), member.size, member.name)
    except (ApiError, StorageError):
        raise
    except (tarfile.TarError, zlib.error, EOFError, OSError) as err:  # gzip's errors are OSErrors
        raise ApiError(422, f"malformed tar archive: {err}") from None


def unpack(archive: Path, dest: Path, limits: Limits) -> Path:
    """Unpack into ``dest`` (empty); return the cohort's root inside it (a zip of one folder holds
    that folder: the cohort is one level down)."""
    kind = sniff(archive)
    dest.mkdir(parents=True, exist_ok=True)
    budget = _Budget(limits)
    (_unzip if kind == "zip" else _untar)(archive, dest, budget)
    if not any(p.is_file() for p in dest.rglob("*")):
        raise ApiError(422, "the archive holds no files")
    # One level only, as the workers' ingest does for archives: deeper wrappers are ambiguous
    # (a one-class cohort of DICOM series looks the same as a wrapped cohort).
    entries = list(dest.iterdir())
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else dest


def move_tree(src: Path, dest: Path) -> None:
    """Move the contents of ``src`` into ``dest`` (same volume: renames, no copying)."""
    with _writing():
        for entry in src.iterdir():
            os.rename(entry, dest / entry.name)
    shutil.rmtree(src, ignore_errors=True)
