"""Read one scan from disk into (array, affine, meta), and write one scan as a clean NIfTI.

Every way a file can be unusable ends in a ``ScanError`` whose message names the file and the
problem, so an upload of 200 scans with one bad file says which one.
"""

from __future__ import annotations

import gzip
import math
import os
import uuid
import warnings
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .advice import setting
from .errors import ScanError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
MGH_SUFFIXES = (".mgz", ".mgh")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DICOM_SUFFIXES = (".dcm", ".ima")  # .IMA: Siemens' name for the same files

# Header text fields that may hold names, dates or site notes: never carried into outputs.
FREE_TEXT_FIELDS = ("descrip", "aux_file", "db_name", "intent_name")

# Largest scan read, judged from its header before any voxel is: 512^3 (134M voxels; 512 MiB as
# float32) is above any whole-head MRI (0.5 mm isotropic is about 400x480x360 = 69M), while a
# 1 MB .nii.gz can declare 640^3 zeros (1 GiB as float32). MCVAE_MAX_SCAN_VOXELS overrides it.
DEFAULT_MAX_SCAN_VOXELS = 512**3
# The library reads its one setting itself (it never imports workers' settings).
MAX_SCAN_VOXELS_ENV = "MCVAE_MAX_SCAN_VOXELS"


def max_scan_voxels() -> int:
    raw = os.environ.get(MAX_SCAN_VOXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_SCAN_VOXELS
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"MCVAE_MAX_SCAN_VOXELS: expected a positive whole number, got {raw!r}")
    return int(raw)


def _check_voxels(path: Path, shape: tuple[int, ...]) -> None:
    voxels, limit = math.prod(int(s) for s in shape), max_scan_voxels()
    if voxels > limit:
        raise ScanError(path, f"its header declares {voxels} voxels (shape {tuple(int(s) for s in shape)}), "
                              f"more than the limit of {limit} (MCVAE_MAX_SCAN_VOXELS); not read")


def scan_format(path: str | Path) -> str | None:
    """``"nifti"``, ``"mgh"``, ``"image"`` (2-D PNG/JPEG), ``"dicom"`` or None if not a scan.

    A folder is a DICOM series when it holds at least one DICOM file (hidden files ignored).
    DICOM files are recognised by name (``.dcm``, ``.IMA``) or, whatever their name (scanners
    often write none, or a UID with dots), by content: the ``DICM`` marker after the preamble.
    """
    path = Path(path)
    if path.is_dir():
        return "dicom" if _dicom_files(path) else None
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(MGH_SUFFIXES):
        return "mgh"
    if name.endswith(IMAGE_SUFFIXES):
        return "image"
    if _is_dicom_file(path):
        return "dicom"
    return None


def _is_dicom_file(path: Path) -> bool:
    if path.name.lower().endswith(DICOM_SUFFIXES):
        return True
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def load_scan(
    path: str | Path, spatial_dims: int | None = None, nan_to_zero: bool = False
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read a scan: float32 array without a channel axis, 4x4 voxel-to-world affine, and meta.

    ``spatial_dims`` (2 or 3) is what the caller expects; None accepts what the file holds
    (volumes are 3-D, PNG/JPEG are 2-D). Trailing singleton axes (a 4-D NIfTI with one volume,
    a 3-D volume one slice thick when 2-D is expected) are dropped. ``meta`` has ``format``,
    ``shape``, ``spacing``, ``axcodes`` and ``filename_or_obj``. NaN or infinite voxels are an
    error unless ``nan_to_zero`` (the user says they are background): then they read as 0.
    """
    path = Path(path)
    fmt = scan_format(path)
    if not path.exists():
        raise ScanError(path, "file not found")
    if fmt is None:
        raise ScanError(
            path,
            "not a supported scan type "
            "(expected .nii, .nii.gz, .mgz, .png, .jpg or a folder of DICOM files)",
        )
    if path.is_file() and path.stat().st_size == 0:
        raise ScanError(path, "empty file (0 bytes)")

    if fmt in ("nifti", "mgh"):
        data, affine = _read_nibabel(path, "NIfTI" if fmt == "nifti" else "MGH")
    elif fmt == "dicom":
        data, affine = _read_dicom(path)
    else:
        data, affine = _read_image(path)

    data = _to_spatial(data, path, spatial_dims)
    bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if bad and nan_to_zero:
        data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    elif bad:
        raise ScanError(path, f"{bad} voxels are NaN or infinite "
                              f"(if they are background, {setting('nan_to_zero')} to read them as 0)")
    spacing = tuple(float(s) for s in np.sqrt((affine[:3, : data.ndim] ** 2).sum(axis=0)))
    meta = {
        "format": fmt,
        "filename_or_obj": str(path),
        "shape": tuple(int(s) for s in data.shape),
        "spacing": spacing,
        "axcodes": "".join(nib.aff2axcodes(affine))[: data.ndim] if fmt != "image" else "",
    }
    return data, affine, meta


def write_scan(path: str | Path, array: Any, affine: Any) -> Path:
    """Write a 2-D or 3-D float32 NIfTI (``.nii`` or ``.nii.gz``) atomically; returns the path.

    The file appears complete or not at all (temp file in the same folder, then ``os.replace``),
    and its header carries nothing but geometry: the free-text fields are blanked. Gzip output is
    byte-identical for identical inputs (no timestamp in the gzip header).
    """
    path = Path(path)
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        raise ValueError(f"{path}: write_scan writes NIfTI; use a .nii or .nii.gz name")
    data = np.asarray(array, dtype=np.float32)
    if data.ndim not in (2, 3) or data.size == 0:
        raise ValueError(f"{path}: expected a non-empty 2-D or 3-D array, got shape {data.shape}")
    if not np.isfinite(data).all():
        raise ValueError(f"{path}: refusing to write NaN or infinite voxels")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"{path}: affine must be 4x4, got {affine.shape}")

    img = nib.Nifti1Image(data, affine)
    header = img.header
    for field in FREE_TEXT_FIELDS:
        header[field] = b""
    header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    payload = img.to_bytes()
    if path.name.lower().endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=6, mtime=0)

    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its files are 0600 whatever the umask; outputs get the umask's permissions
    # (docs/OPERATIONS.md, Permissions), like every other file the service writes.
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "xb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, file_mode())  # mkstemp makes 0600; outputs are shared like any file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def image_bit_depth(path: str | Path) -> int:
    """Bits per grey value of a PNG/JPEG as ``load_scan`` reads it: 16 for 16-bit greyscale
    (PIL modes I;16*, I), 8 for the rest (colour and palette images are read as 8-bit grey).
    Only the header is read."""
    from PIL import Image

    with Image.open(path) as img:
        return 16 if img.mode.startswith("I") else 8


def write_png(path: str | Path, array: Any, bits: int, intensity_range: tuple[float, float]) -> Path:
    """Write a 2-D scan in [0, 1] (array axes (x, y), as ``load_scan`` reads images) as an 8- or
    16-bit greyscale PNG, atomically: values map back through ``intensity_range`` (what 0 and 1
    stand for in the input's grey levels), are rounded and clipped to the bit depth, and the
    array is transposed back to (row, column), so an image read and written back is unchanged."""
    from PIL import Image

    path = Path(path)
    data = np.asarray(array, dtype=np.float64)
    if data.ndim != 2 or data.size == 0:
        raise ValueError(f"{path}: expected a non-empty 2-D array, got shape {data.shape}")
    if not np.isfinite(data).all():
        raise ValueError(f"{path}: refusing to write NaN or infinite pixels")
    if bits not in (8, 16):
        raise ValueError(f"{path}: PNG bit depth must be 8 or 16, got {bits}")
    low, high = intensity_range
    grey = np.clip(np.rint(low + data * (high - low)), 0, 2**bits - 1)
    pixels = np.ascontiguousarray(grey.T.astype(np.uint8 if bits == 8 else np.uint16))
    image = Image.fromarray(pixels)  # uint8: mode L, uint16: mode I;16
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        image.save(tmp, format="PNG")
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plain ``open()`` would give a new file: 0666 less the umask."""
    return 0o666 & ~_umask()


def share_like_umask(root: str | Path) -> Path:
    """Give a tree written through temporary files and folders (0600 / 0700) the modes a plain
    write would have had (0666 / 0777 less the umask), so a group can read a lab's outputs."""
    root = Path(root)
    mask = _umask()
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)
    return root


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _read_nibabel(path: Path, kind: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        img = nib.load(path)
    except Exception as exc:  # nibabel raises many types for "this is not an image"
        problem = f"not a valid {kind} file: header unreadable ({_short(exc)})"
        raise ScanError(path, problem) from exc
    _check_voxels(path, img.shape)  # from the header: a decompression bomb is never inflated
    try:
        data = np.asarray(img.dataobj, dtype=np.float32)  # applies scl_slope / scl_inter
    except Exception as exc:  # EOFError, zlib.error, ValueError: the voxel data is cut short
        raise ScanError(path, f"truncated or corrupt {kind} voxel data ({_short(exc)})") from exc
    return data, np.asarray(img.affine, dtype=np.float64)


def _read_image(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:  # reads the header only
            _check_voxels(path, img.size)
            img.load()
            if img.mode not in ("L", "I", "I;16", "F"):
                img = img.convert("L")  # colour slices (common in Kaggle sets) carry grey values
            data = np.asarray(img, dtype=np.float32)
    except ScanError:
        raise
    except UnidentifiedImageError as exc:
        raise ScanError(path, "not a PNG/JPEG image (contents unrecognised)") from exc
    except Exception as exc:  # truncated files raise OSError on load()
        raise ScanError(path, f"truncated or corrupt image ({_short(exc)})") from exc
    # PIL arrays are (row, column); transpose to (x, y) as MONAI's PILReader does, so a slice
    # read here and one read by monai.transforms.LoadImage are the same array.
    return np.ascontiguousarray(data.T), np.eye(4)


def _dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and _is_dicom_file(p))


def _read_dicom(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import pydicom
    from monai.data import PydicomReader

    files = _dicom_files(path) if path.is_dir() else [path]
    if not files:
        raise ScanError(path, "folder holds no DICOM files")
    for file in files:  # headers only: cheap, and names the bad slice instead of the folder
        try:
            header = pydicom.dcmread(file, stop_before_pixels=True)
        except Exception as exc:
            raise ScanError(file, f"not a readable DICOM file ({_short(exc)})") from exc
    frames = int(header.get("NumberOfFrames", 1) or 1)
    _check_voxels(path, (int(header.get("Rows", 0) or 0), int(header.get("Columns", 0) or 0), frames * len(files)))
    reader = PydicomReader()  # orders slices by position and returns a RAS affine
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its per-file warnings repeat what we raise
            img = reader.read(str(path))  # a folder: the slices whose content is DICOM
            data, meta = reader.get_data(img)
    except Exception as exc:
        raise ScanError(path, f"unreadable DICOM series ({_short(exc)})") from exc
    return np.asarray(data, dtype=np.float32), np.asarray(meta["affine"], dtype=np.float64)


def _to_spatial(data: np.ndarray, path: Path, spatial_dims: int | None) -> np.ndarray:
    if data.size == 0:
        raise ScanError(path, f"has no voxels (shape {tuple(data.shape)})")
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim > 3:
        raise ScanError(
            path,
            f"is {data.ndim}-D (shape {tuple(data.shape)}); expected one 3-D scan, "
            "not a time series or multi-volume file",
        )
    if data.ndim < 2:
        raise ScanError(path, f"is {data.ndim}-D (shape {tuple(data.shape)}); expected 2-D or 3-D")
    if spatial_dims == 2 and data.ndim == 3:
        if data.shape[2] != 1:
            raise ScanError(
                path, f"is a 3-D volume (shape {tuple(data.shape)}); expected a 2-D slice"
            )
        data = data[..., 0]
    if spatial_dims == 3 and data.ndim == 2:
        raise ScanError(path, f"is a 2-D slice (shape {tuple(data.shape)}); expected a 3-D scan")
    return np.ascontiguousarray(data, dtype=np.float32)
