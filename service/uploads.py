"""Receiving a cohort archive: streamed to disk under a size limit, checked, then unpacked.

Order of defences:
1. ``Content-Length`` above the limit: refused before a byte is read (413).
2. While streaming: bytes are counted, and the upload stops at the limit (413), whatever the
   headers said (chunked uploads declare nothing).
3. The archive type comes from its first bytes, not its name: zip, gzip'd tar or plain tar (415),
   judged while the body streams in: nothing is written before the first bytes passed, so a
   1 GiB non-archive is refused after a few KiB, not after it filled the staging space. A single
   scan (NIfTI, gzip'd or not; one DICOM file) gets a message saying how to send a cohort.
4. Before any member is written: its name (no absolute paths, drive letters, '..' or NULs), its
   type (regular files and folders only: no symlinks, hard links, devices), the member count,
   the declared unpacked total and the compression ratio (a zip member's declared size over its
   compressed size; for a tar.gz, the sizes declared so far over the archive's size), so a bomb
   is refused from its headers before a byte is inflated; headers can lie, so:
5. while writing, bytes are counted against both the member's declared size and the total.
With a per-lab storage quota (service/quota.py), the lab's room under it lowers the limits of 1,
2 and 4-5: the archive may stream in, and unpack, only to what the lab may still hold (413).
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
from collections.abc import Callable
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
    # The lab's room under its storage quota (service/quota.py), and its refusal: the unpacked
    # tree is what the lab will hold, so it must fit.
    quota_room: int | None = None
    over_quota: Callable[[], ApiError] | None = None


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
async def receive(request: Request, dest: Path, max_bytes: int,
                  too_large: Callable[[], ApiError] | None = None) -> Received:
    """Write the uploaded archive to ``dest``: the ``file`` part of a multipart/form-data body, or
    the whole body when it is sent raw (Content-Type application/zip, application/gzip, ...).
    ``too_large``: the refusal past ``max_bytes`` when it is not MCVAE_MAX_UPLOAD_BYTES (a lab's
    room under its storage quota)."""
    refuse = too_large or (lambda: _too_large(max_bytes))
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise refuse()
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    content_type = content_type.decode("latin-1").lower()
    if content_type == "multipart/form-data":
        return await _receive_multipart(request, dest, max_bytes, options.get(b"boundary"), refuse)
    if content_type in RAW_TYPES or not content_type:
        size, head = 0, Head()
        with _writing():
            async with await anyio.open_file(dest, "wb") as out:  # writes in a thread, off the loop
                async for chunk in _stream(request):
                    size += len(chunk)
                    if size > max_bytes:
                        raise refuse()
                    if data := head.feed(chunk):
                        await out.write(data)
                if data := head.finish():
                    await out.write(data)
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
                             boundary: bytes | None, refuse: Callable[[], ApiError]) -> Received:
    if not boundary:
        raise ApiError(400, "multipart/form-data without a boundary")
    state = {"name": b"", "value": b"", "headers": {}, "is_file": False, "files": 0,
             "field": bytearray(), "size": 0}
    fields: dict[str, str] = {}
    pending: list[bytes] = []  # file data parsed from the last chunk, written after it
    head = Head()

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
            if state["files"] > 1:  # a folder's files, as a browser's folder picker sends them
                raise ApiError(400, "the form has more than one file: a folder's files are not a cohort upload; "
                                    f"one archive per upload: {COHORT_HOWTO}")
            state["is_file"] = True

    def on_part_data(data, start, end):
        if state["is_file"]:
            state["size"] += end - start
            if state["size"] > max_bytes:
                raise refuse()
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
                    raise refuse()
                parser.write(chunk)
                with _writing():
                    for block in pending:
                        if data := head.feed(block):
                            await out.write(data)
                pending.clear()
            parser.finalize()
            with _writing():
                for block in pending:
                    if data := head.feed(block):
                        await out.write(data)
                if data := head.finish():
                    await out.write(data)
        except (ApiError, StorageError):
            raise
        except Exception as err:  # noqa: BLE001 - python-multipart's parse errors have no common base
            raise ApiError(400, f"malformed multipart/form-data body ({err})") from None
    if state["files"] == 0 or state["size"] == 0:
        raise ApiError(400, "no archive in the form: send it as the 'file' field")
    return Received(dest, state["size"], fields)


# -- 3: what kind of archive ------------------------------------------------------------------------
HEAD_BYTES = 4096  # tar's magic is at 257; a gzip's first KiB holds the tar header (or a NIfTI's)
COHORT_HOWTO = ("send a cohort: one folder per class with its scans (AD/sub-1.nii.gz, CN/...), "
                "zipped with its top folder (zip -r cohort.zip cohort/ or tar czf cohort.tar.gz cohort/), "
                "or the scans zipped with a manifest.csv of path,label rows")
NOT_AN_ARCHIVE = "the upload is not a .zip or .tar.gz archive (judged by its first bytes, not its name)"


def _nifti(data: bytes) -> bool:
    """A NIfTI-1 or -2 header (either byte order): sizeof_hdr, then the magic."""
    if len(data) >= 348 and data[344:348] in (b"n+1\0", b"ni1\0"):
        return int.from_bytes(data[:4], "little") == 348 or int.from_bytes(data[:4], "big") == 348
    if len(data) >= 8 and data[4:8] in (b"n+2\0", b"ni2\0"):
        return int.from_bytes(data[:4], "little") == 540 or int.from_bytes(data[:4], "big") == 540
    return False


def _tar_header(block: bytes) -> bool:
    """A tar header block: the ustar magic (POSIX, GNU) or a valid header checksum (old tars)."""
    if len(block) < 512:
        return len(block) >= 262 and block[257:262] == b"ustar"
    if block[257:262] == b"ustar":
        return True
    try:
        stored = int(block[148:156].replace(b"\0", b" ").strip() or b"-1", 8)
    except ValueError:
        return False
    return stored == sum(block[:148]) + 8 * 32 + sum(block[156:512])


def _single_scan(kind: str) -> ApiError:
    return ApiError(415, f"the upload is a single {kind}, not a cohort: {COHORT_HOWTO}")


def judge(head: bytes) -> str:
    """The archive type of an upload from its first bytes ("zip", "tar.gz", "tar"); 415 for
    anything else, with the way to send a cohort when it is a lone scan."""
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        try:  # what the gzip holds: a tar, or a lone .nii.gz
            inner = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 1024)
        except zlib.error:
            return "tar.gz"  # a damaged gzip: unpacking says what is wrong (422)
        if _nifti(inner):
            raise _single_scan("scan (.nii.gz)")
        if len(inner) >= 512 and not _tar_header(inner[:512]):
            raise ApiError(415, f"the upload is gzip-compressed but holds no tar archive; {COHORT_HOWTO}")
        return "tar.gz"
    if _tar_header(head[:512]):
        return "tar"
    if _nifti(head):
        raise _single_scan("scan (.nii)")
    if head[128:132] == b"DICM":
        raise _single_scan("DICOM file")
    raise ApiError(415, f"{NOT_AN_ARCHIVE}; {COHORT_HOWTO}")


class Head:
    """The first HEAD_BYTES of an upload, held back until ``judge`` passed them: nothing of a
    non-archive reaches the disk, and the refusal comes as soon as those bytes are in."""

    def __init__(self) -> None:
        self.held, self.kind = bytearray(), None

    def feed(self, data: bytes) -> bytes:
        """What may be written now: nothing until the head is judged, then all of it."""
        if self.kind is not None:
            return data
        self.held += data
        return self._judge() if len(self.held) >= HEAD_BYTES else b""

    def finish(self) -> bytes:
        """The end of the body: judge what is held (a small archive), if anything."""
        return self._judge() if self.kind is None and self.held else b""

    def _judge(self) -> bytes:
        self.kind = judge(bytes(self.held[:HEAD_BYTES]))
        out, self.held = bytes(self.held), bytearray()
        return out


def sniff(path: Path) -> str:
    with open(path, "rb") as fh:
        return judge(fh.read(HEAD_BYTES))


# -- 4-5: unpacking ---------------------------------------------------------------------------------
def member_path(name: str) -> str | None:
    """The safe relative path for an archive member; None for junk (macOS metadata); ApiError
    for anything that could land outside the destination."""
    if not name or "\x00" in name or len(name) > 1024:
        raise ApiError(422, f"unsafe archive: member name {name[:100]!r} is empty, too long or has a NUL")
    for part in name.replace("\\", "/").split("/"):
        # A file system's limit on one name (NAME_MAX): past it the write fails, and that is the
        # archive's fault (422), not the server's storage (503).
        if len(part.encode("utf-8", "surrogatepass")) > 255:
            raise ApiError(422, f"malformed archive: member {name[:100]!r}... has a name part of "
                                f"{len(part)} characters; at most 255 bytes each")
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
        room = self.limits.quota_room
        if room is not None and self.bytes + size > room and self.limits.over_quota is not None:
            raise self.limits.over_quota()

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
    # A member under a name another member holds as a file (a file 'AD' beside 'AD/x.nii.gz'), or
    # a file where a folder is: the archive's fault (422), found before the file system refuses
    # the write (which would read as the server's storage failing, a 503).
    for parent in reversed(Path(relative).parents[:-1]):
        if (dest / parent).is_file():
            raise ApiError(422, f"malformed archive: {name!r} lies in folder {parent.as_posix()!r}, "
                                "which the archive also holds as a file")
    if target.is_file() if directory else target.is_dir():
        kind = "a file" if directory else "a folder"
        raise ApiError(422, f"malformed archive: {name!r} is also {kind} of the same name in the archive")
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
