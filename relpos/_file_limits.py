"""Untrusted files stay small: torch archives, safetensors headers, declared tensor sizes, images.

A small file can *declare* far more than it stores, and the damage happens when the declaration
is believed. Each check here reads the declarations first, with arithmetic on headers, never by
allocating what they claim (:mod:`relpos._limits` does the same for YAML and loaded values):

- torch files (:func:`check_torch_archive`): ``torch.save`` writes a zip archive and
  ``torch.load`` inflates DEFLATE entries to their declared size, so the central directory is
  checked against the budget before loading: entry count, directory size, total declared bytes,
  compression ratio, the pickle's size, entries that overlap. (torch itself refuses a storage
  whose declared element count differs from its entry's size.) Legacy (pre-1.6, non-zip) files
  are refused: their storages are allocated at the sizes the pickle declares before any data is
  read, and those sizes cannot be checked without unpickling.
- safetensors (:func:`check_safetensors`): the JSON header's shapes against the bytes stored and
  the budget, before the library reads the file.
- Loaded tensors (:func:`check_loaded_tensors`): a pickled tensor can be a stride-0 view that
  declares 2^40 elements over one stored number; copying it (``.float().clone()``) asks the
  allocator for the declared size. Declared bytes are checked against what is stored and the budget.
- Images (:func:`open_image`): width x height from the header, before decoding; Pillow's own
  decompression-bomb refusal becomes the same ``ValueError`` naming the size.

Sizes that cost memory are measured against :func:`relpos.guards.memory_budget_bytes`
(``RELPOS_MEMORY_BUDGET_MB``, default 2048 MB); counts are fixed ceilings far above any real file
(a ViT-B/16 checkpoint with its AdamW state has about 460 zip entries). Refusals raise
:class:`~relpos.guards.ResourceLimitError` (a ``ValueError``) when something is too big, and
``ValueError`` when it is malformed; each message names the file (and the key) and the numbers.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import struct
import zipfile
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import IO, Any

from relpos._limits import short_repr, short_text
from relpos.guards import ResourceLimitError, format_bytes, memory_budget_bytes

__all__ = [
    "MAX_COMPRESSION_RATIO",
    "MAX_IMAGE_PIXELS",
    "MAX_PICKLE_BYTES",
    "MAX_SAFETENSORS_HEADER_BYTES",
    "MAX_ZIP_DIRECTORY_BYTES",
    "MAX_ZIP_ENTRIES",
    "check_loaded_tensors",
    "check_safetensors",
    "check_torch_archive",
    "open_image",
]

#: Most entries in a torch zip archive (one per storage plus 6; ViT-B/16 with AdamW state: ~460).
MAX_ZIP_ENTRIES = 100_000
#: Largest zip central directory read (bytes; ~100 bytes per entry).
MAX_ZIP_DIRECTORY_BYTES = 32 * 1024 * 1024
#: Largest uncompressed/compressed ratio of a DEFLATE entry above ``_RATIO_FREE_BYTES`` (torch
#: stores entries uncompressed; a zip bomb of zeros reaches about 1000).
MAX_COMPRESSION_RATIO = 100
_RATIO_FREE_BYTES = 1024 * 1024
#: Largest pickle in a torch archive (``data.pkl``: the structure and the non-tensor values; a
#: checkpoint's is a few KB, a 1000-tensor HF model's ~200 KB; tensors are stored beside it).
#: Unpickled, one byte can become a 64-byte object (an empty list), so 8 MB stays under 512 MB.
MAX_PICKLE_BYTES = 8 * 1024 * 1024
#: Largest safetensors JSON header (bytes; the library's own ceiling is 100 MB).
MAX_SAFETENSORS_HEADER_BYTES = 16 * 1024 * 1024
#: Largest image decoded (pixels): 40 megapixels, about 120 MB as RGB.
MAX_IMAGE_PIXELS = 40_000_000
# A stored tensor may declare this much more than its storage holds (a broadcast buffer saved as a
# stride-0 view); beyond it, copying the tensor would allocate memory the file never paid for.
_VIEW_SLACK_BYTES = 1024 * 1024
_ZIP_LOCAL = b"PK\x03\x04"
_EOCD = b"PK\x05\x06"
_EOCD64_LOCATOR = b"PK\x06\x07"
_EOCD64 = b"PK\x06\x06"
# safetensors dtypes -> bytes per element (unknown and sub-byte dtypes are checked by bytes stored).
_ST_ITEMSIZE = MappingProxyType({
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
})


# --------------------------------------------------------------------------- torch zip archives


@contextlib.contextmanager
def _opened(source: str | os.PathLike | bytes | bytearray) -> Iterator[tuple[IO[bytes], int]]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        yield io.BytesIO(source), len(source)
        return
    with open(source, "rb") as f:
        yield f, os.fstat(f.fileno()).st_size


def _label(source: Any, name: str | None) -> str:
    if name is not None:
        return name
    return "<bytes>" if isinstance(source, (bytes, bytearray, memoryview)) else os.fspath(source)


def _directory_size(f: IO[bytes], size: int, name: str) -> tuple[int, int]:
    """``(entries, central directory bytes)`` from the end records, found as ``zipfile`` finds them."""
    if size < 22:
        raise ValueError(f"{name} is a truncated zip archive ({size} bytes)")
    tail_len = min(size, 22 + 65535)
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    pos = tail_len - 22 if tail[-22:-18] == _EOCD else tail.rfind(_EOCD)
    if pos < 0 or pos + 22 > len(tail):
        raise ValueError(f"{name} is a truncated or corrupt zip archive (no end of central directory)")
    entries, cd_bytes = struct.unpack("<HI", tail[pos + 10 : pos + 16])
    loc = pos - 20
    if loc >= 0 and tail[loc : loc + 4] == _EOCD64_LOCATOR:
        (offset,) = struct.unpack("<Q", tail[loc + 8 : loc + 16])
        if offset + 56 > size:
            raise ValueError(f"{name} is a corrupt zip archive (zip64 end record past the end of the file)")
        f.seek(offset)
        rec = f.read(56)
        if rec[:4] != _EOCD64:
            raise ValueError(f"{name} is a corrupt zip archive (bad zip64 end record)")
        entries, cd_bytes = struct.unpack("<QQ", rec[32:48])
    return entries, cd_bytes


def check_torch_archive(
    source: str | os.PathLike | bytes | bytearray,
    name: str | None = None,
    *,
    budget: int | None = None,
) -> int:
    """Check a ``torch.save`` file's zip directory before ``torch.load`` inflates it.

    Args:
        source: a path, or the file's bytes (an upload).
        name: the name to use in messages (the user's file name; default: the path).
        budget: bytes the archive may declare in all (default: the memory budget).

    Returns:
        The total declared (uncompressed) bytes.

    Raises:
        ValueError: not a zip archive (the legacy pre-1.6 format is refused: its storages are
            allocated at sizes that cannot be checked before unpickling), or a corrupt one.
        ResourceLimitError: too many entries, a central directory over
            ``MAX_ZIP_DIRECTORY_BYTES``, more declared bytes than the budget, a DEFLATE entry
            inflating more than ``MAX_COMPRESSION_RATIO`` times, a pickle over ``MAX_PICKLE_BYTES``,
            or entries sharing bytes.
    """
    name = _label(source, name)
    budget = memory_budget_bytes() if budget is None else int(budget)
    with _opened(source) as (f, size):
        head = f.read(4)
        if head != _ZIP_LOCAL:
            raise ValueError(
                f"{name} is not a zip-format torch file: relpos reads torch files with "
                "torch.load(weights_only=True) only as zip archives (what torch.save writes since "
                "torch 1.6), whose sizes can be checked before loading. Re-save a legacy file with a "
                "current torch."
            )
        entries, cd_bytes = _directory_size(f, size, name)
        if entries > MAX_ZIP_ENTRIES:
            raise ResourceLimitError(
                f"{name} declares {entries} zip entries; at most {MAX_ZIP_ENTRIES} are read")
        if cd_bytes > MAX_ZIP_DIRECTORY_BYTES or cd_bytes > size:
            raise ResourceLimitError(
                f"{name} declares a {format_bytes(cd_bytes)} zip directory in a {format_bytes(size)} file; "
                f"at most {format_bytes(MAX_ZIP_DIRECTORY_BYTES)} are read"
            )
        f.seek(0)
        try:
            infos = zipfile.ZipFile(f).infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError, struct.error) as exc:
            raise ValueError(f"{name} is a corrupt zip archive ({short_text(str(exc), 200)})") from None
    if len(infos) > MAX_ZIP_ENTRIES:
        raise ResourceLimitError(f"{name} holds {len(infos)} zip entries; at most {MAX_ZIP_ENTRIES} are read")
    total = 0
    for info in infos:
        entry = short_repr(info.filename, 120)
        ratio = info.file_size / max(info.compress_size, 1)
        if info.compress_type == zipfile.ZIP_STORED:
            if info.file_size != info.compress_size:
                raise ValueError(f"{name}: entry {entry} is stored uncompressed but declares "
                                 f"{info.file_size} bytes over {info.compress_size}; the archive is corrupt")
        elif info.file_size > _RATIO_FREE_BYTES and ratio > MAX_COMPRESSION_RATIO:
            raise ResourceLimitError(
                f"{name}: entry {entry} inflates {format_bytes(info.compress_size)} to "
                f"{format_bytes(info.file_size)} (ratio {ratio:.0f}, at most {MAX_COMPRESSION_RATIO} is "
                "read: a zip bomb?); torch.save never compresses"
            )
        if info.filename.rpartition("/")[2] == "data.pkl" and info.file_size > MAX_PICKLE_BYTES:
            raise ResourceLimitError(
                f"{name}: its pickle {entry} is {format_bytes(info.file_size)}; at most "
                f"{format_bytes(MAX_PICKLE_BYTES)} are unpickled (tensors are stored beside it, not in it)"
            )
        total += info.file_size
        if total > budget:
            raise ResourceLimitError(
                f"{name} declares more than {format_bytes(total)} once loaded (its zip entries, "
                f"uncompressed), over the memory budget of {format_bytes(budget)}; raise "
                "RELPOS_MEMORY_BUDGET_MB to load it"
            )
    spans = sorted((i.header_offset, i.compress_size, i.filename) for i in infos)
    for (start, length, entry), (nxt, _, _) in zip(spans, spans[1:]):
        if start + length > nxt:
            raise ResourceLimitError(f"{name}: zip entry {short_repr(entry, 120)} overlaps the next one "
                                     "(entries sharing compressed bytes: a zip bomb); refused")
    if spans and spans[-1][0] + spans[-1][1] > size:
        raise ValueError(f"{name}: zip entry {short_repr(spans[-1][2], 120)} runs past the end of the file; "
                         "the archive is truncated")
    return total


# --------------------------------------------------------------------------- safetensors


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_safetensors(
    source: str | os.PathLike | bytes | bytearray,
    name: str | None = None,
    *,
    budget: int | None = None,
) -> int:
    """Check a ``.safetensors`` header (shapes, offsets, sizes) before the library reads the file.

    Returns:
        The total bytes of tensor data.

    Raises:
        ValueError: a truncated file, a header that is not a JSON object of tensor entries, or a
            tensor whose shape and dtype do not match the bytes it stores (names the key).
        ResourceLimitError: a header over ``MAX_SAFETENSORS_HEADER_BYTES``, or tensor data over the
            budget (names the largest tensor).
    """
    name = _label(source, name)
    budget = memory_budget_bytes() if budget is None else int(budget)
    with _opened(source) as (f, size):
        if size < 8:
            raise ValueError(f"{name} is a truncated safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", f.read(8))
        if n > MAX_SAFETENSORS_HEADER_BYTES:
            raise ResourceLimitError(f"{name} declares a {format_bytes(n)} safetensors header; at most "
                                     f"{format_bytes(MAX_SAFETENSORS_HEADER_BYTES)} are read")
        if 8 + n > size:
            raise ValueError(f"{name} declares a {n}-byte header but the file has {size} bytes: truncated")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        why = short_text(str(exc), 120)
        raise ValueError(f"{name}: the safetensors header is not JSON ({why})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{name}: the safetensors header must be a JSON object, got {type(header).__name__}")
    data_bytes = size - 8 - n
    total, largest = 0, ("", 0)
    for key, info in header.items():
        if key == "__metadata__":
            continue
        shown = short_repr(key, 120)
        if not isinstance(info, dict):
            raise ValueError(f"{name}: tensor {shown} has header {short_repr(info)}, not an object")
        shape, offsets, dtype = info.get("shape"), info.get("data_offsets"), info.get("dtype")
        if (not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape)
                or not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_is_int, offsets))):
            raise ValueError(f"{name}: tensor {shown} has a malformed header {short_repr(info)}")
        begin, end = offsets
        if not 0 <= begin <= end <= data_bytes:
            raise ValueError(f"{name}: tensor {shown} declares bytes [{begin}, {end}) but the file stores "
                             f"{data_bytes} bytes of data: truncated or corrupt")
        stored = end - begin
        itemsize = _ST_ITEMSIZE.get(dtype) if isinstance(dtype, str) else None
        declared = math.prod(shape) * itemsize if itemsize is not None else stored
        if declared != stored:
            raise ValueError(f"{name}: tensor {shown} declares shape {short_repr(shape, 80)} {dtype} "
                             f"({declared} bytes) but stores {stored} bytes")
        total += declared
        if declared > largest[1]:
            largest = (shown, declared)
        if total > budget:
            raise ResourceLimitError(
                f"{name} holds more than {format_bytes(total)} of tensors (largest so far {largest[0]}, "
                f"{format_bytes(largest[1])}), over the memory budget of {format_bytes(budget)}; raise "
                "RELPOS_MEMORY_BUDGET_MB to load it"
            )
    return total


# --------------------------------------------------------------------------- loaded tensors


def _is_tensor(value: Any) -> bool:
    return hasattr(value, "numel") and hasattr(value, "element_size") and callable(value.numel)


def _worth_visiting(value: Any) -> bool:
    """Containers and tensors; scalars (most of a pickle's values) are skipped without a path."""
    return isinstance(value, (Mapping, list, tuple)) or _is_tensor(value)


def check_loaded_tensors(value: Any, name: str, *, budget: int | None = None) -> int:
    """Refuse tensors that declare more than they store, or more in all than the budget.

    Walks dicts, lists and tuples (each distinct object once) and measures every tensor found
    (anything with ``numel`` and ``element_size``): declared bytes ``numel x element size``
    against the bytes its storage holds (a stride-0 view may declare at most 1 MB more) and the
    sum of declared bytes against the budget. Nothing is copied.

    Args:
        value: what ``torch.load`` returned.
        name: the file, for messages.

    Returns:
        The total declared bytes.

    Raises:
        ResourceLimitError: a tensor declaring more than it stores, or more declared bytes in all
            than the budget; the message names the file and the key.
    """
    budget = memory_budget_bytes() if budget is None else int(budget)
    seen: set[int] = set()
    total = 0
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, v = stack.pop()
        if id(v) in seen:
            continue
        if isinstance(v, Mapping):
            seen.add(id(v))
            stack.extend((f"{path}/{k[:120] if isinstance(k, str) else short_repr(k, 120)}".lstrip("/"), x)
                         for k, x in v.items() if _worth_visiting(x))
        elif isinstance(v, (list, tuple)):
            seen.add(id(v))
            stack.extend((f"{path}/{i}".lstrip("/"), x) for i, x in enumerate(v) if _worth_visiting(x))
        elif _is_tensor(v):
            seen.add(id(v))
            key = path or "<top level>"
            try:
                declared = int(v.numel()) * int(v.element_size())
            except Exception:  # noqa: BLE001 - an exotic tensor: nothing to measure
                continue
            try:
                stored = int(v.untyped_storage().nbytes())
            except Exception:  # noqa: BLE001 - sparse/nested tensors have no single storage
                stored = None
            if stored is not None and declared > stored + _VIEW_SLACK_BYTES:
                raise ResourceLimitError(
                    f"{name}: tensor {key} declares shape {tuple(getattr(v, 'shape', ()))} "
                    f"({format_bytes(declared)}) but stores only {format_bytes(stored)} (a stride-0 view); "
                    "copying it would allocate the declared size, so it is refused"
                )
            total += declared
            if declared > budget or total > budget:
                raise ResourceLimitError(
                    f"{name}: tensor {key} (shape {tuple(getattr(v, 'shape', ()))}, "
                    f"{format_bytes(declared)}) brings the file's tensors to {format_bytes(total)}, over the "
                    f"memory budget of {format_bytes(budget)}; raise RELPOS_MEMORY_BUDGET_MB to load it"
                )
    return total


# --------------------------------------------------------------------------- images


_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


@contextlib.contextmanager
def open_image(
    data: bytes | bytearray, name: str = "image", max_pixels: int = MAX_IMAGE_PIXELS
) -> Iterator[Any]:
    """Open image bytes with Pillow, refusing more than ``max_pixels`` before anything is decoded.

    ``Image.open`` reads only the header; width x height is checked then. Pillow's own
    ``DecompressionBombError`` (over twice its ``MAX_IMAGE_PIXELS``) becomes the same refusal.

    Yields:
        The opened ``PIL.Image.Image`` (closed on exit).

    Raises:
        ValueError: too many pixels (the message gives width x height, or the pixel count), or not
            an image Pillow can read.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(io.BytesIO(bytes(data)))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # the warning: as error
        m = _BOMB_PIXELS.search(str(exc))
        size = f"{int(m.group(1))} pixels" if m else "over Pillow's decompression-bomb limit"
        raise ValueError(f"{name} is {size}; at most {max_pixels} pixels "
                         f"({max_pixels / 1e6:g} megapixels) are accepted") from None
    except UnidentifiedImageError as exc:
        raise ValueError(f"{name} is not an image Pillow can read (PNG, JPEG, ...): {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a plugin choking on a hostile header (struct.error, ...)
        raise ValueError(f"{name} is not an image Pillow can read (PNG, JPEG, ...): "
                         f"{type(exc).__name__}: {short_text(str(exc))}") from None
    with im:
        if im.width * im.height > max_pixels:
            raise ValueError(f"{name} is {im.width}x{im.height} = {im.width * im.height} pixels; at most "
                             f"{max_pixels} pixels ({max_pixels / 1e6:g} megapixels) are accepted")
        yield im

