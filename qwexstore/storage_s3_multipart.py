"""Streaming multipart upload with write-once completion (spec/storage.md, "S3").

Each part's body is a seekable window on the file (:class:`FileSlice`), which botocore
hashes and aiohttp sends in small chunks: no part is ever held in memory. ``IN_FLIGHT``
parts are sent at once. The object appears only when ``CompleteMultipartUpload`` (sent
with ``If-None-Match: *``)
succeeds; on any failure or a lost race the upload is aborted, best effort.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from typing import TYPE_CHECKING, Any

import botocore.exceptions as bex

from .storage_batch import gather_all

if TYPE_CHECKING:
    from .storage_s3 import S3Storage

__all__ = ["IN_FLIGHT", "upload"]

IN_FLIGHT = 4
_MAX_PARTS = 10_000


async def upload(st: S3Storage, path: str, src: str, size: int) -> bool:
    """Upload the local file ``src`` (``size`` bytes) to ``path``; False if it exists."""
    from .storage_s3 import PART, _status

    key = st._key(path)
    part_size = max(PART, -(-size // _MAX_PARTS))

    async def create(c: Any, _: int) -> str:
        return str((await c.create_multipart_upload(Bucket=st.bucket, Key=key))["UploadId"])

    upload_id = await st._call("put_file", path, create)
    try:
        parts = await _send_parts(st, path, src, key, upload_id, part_size, size)

        async def complete(c: Any, attempt: int) -> bool:
            try:
                await c.complete_multipart_upload(
                    Bucket=st.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts},
                    IfNoneMatch="*",
                )  # fmt: skip
                return True
            except bex.ClientError as e:
                if _status(e) == 412:
                    return False
                if _status(e) == 404 and attempt > 0:  # NoSuchUpload: our lost answer was success
                    return True
                raise

        ok = await st._call("put_file", path, complete)
    except BaseException:
        await asyncio.shield(_abort(st, key, upload_id))
        raise
    if not ok:
        await _abort(st, key, upload_id)
    return ok


class FileSlice(io.RawIOBase):
    """``length`` bytes of the file ``path`` from ``start``, as a seekable read-only stream."""

    def __init__(self, path: str, start: int, length: int) -> None:
        super().__init__()
        self._f = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by close()
        self._start, self._length, self._pos = start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self._length - self._pos)
        if n <= 0:
            return 0
        self._f.seek(self._start + self._pos)
        got = self._f.readinto(memoryview(buffer)[:n]) or 0
        self._pos += got
        return got

    def __len__(self) -> int:
        return self._length

    def close(self) -> None:
        self._f.close()
        super().close()


async def _send_parts(
    st: S3Storage, path: str, src: str, key: str, upload_id: str, part_size: int, size: int
) -> list[dict[str, Any]]:
    room = asyncio.Semaphore(IN_FLIGHT)

    async def send(number: int) -> dict[str, Any]:
        start = (number - 1) * part_size
        length = min(part_size, size - start)

        async def op(c: Any, _: int) -> Any:
            with FileSlice(src, start, length) as body:
                return await c.upload_part(
                    Bucket=st.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body,
                    ContentLength=length,
                )  # fmt: skip

        async with room:
            resp = await st._call("put_file", path, op)
        return {"PartNumber": number, "ETag": resp["ETag"]}

    count = -(-size // part_size)
    parts: list[dict[str, Any]] = [{}] * count

    async def put(n: int) -> None:
        parts[n - 1] = await send(n)

    # The first failure is raised as itself (not an ExceptionGroup), after the other parts
    # are cancelled and their outcomes retrieved.
    await gather_all(put(n) for n in range(1, count + 1))
    return parts


async def _abort(st: S3Storage, key: str, upload_id: str) -> None:
    """Best effort: nothing it raises escapes (it runs shielded, often while failing)."""
    with contextlib.suppress(Exception):
        client = await st._client()
        await client.abort_multipart_upload(Bucket=st.bucket, Key=key, UploadId=upload_id)
