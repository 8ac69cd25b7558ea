"""gzip and deflate bodies inflated a bounded piece at a time, streamed or whole."""

from __future__ import annotations

import zlib
from typing import Callable

from aitp.transport.http1.errors import HttpTransportError

# Output of one decompression step: a small compressed piece of a hostile answer can expand a
# thousandfold, so output is taken a bounded piece at a time.
_INFLATE_BYTES = 1024 * 1024


def _decoder_for(content_encoding: str):
    """A zlib decompressor for gzip or deflate (zlib-wrapped) bodies; None for identity."""
    encoding = content_encoding.strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip", "deflate"):
        return zlib.decompressobj(32 + zlib.MAX_WBITS)     # gzip or zlib header, detected
    raise HttpTransportError("ProtocolError", f"an answer in an encoding not asked for: {encoding[:20]!r}")


def _decompressing(sink: Callable[[memoryview | bytes], None], decoder) -> Callable[[memoryview | bytes], None]:
    """A sink that inflates what it is given, a bounded piece at a time, into `sink`."""
    def feed(data: memoryview | bytes) -> None:
        try:
            while data:
                out = decoder.decompress(data, _INFLATE_BYTES)
                if out:
                    sink(out)
                data = decoder.unconsumed_tail
        except zlib.error as exc:
            raise HttpTransportError("ProtocolError", f"a compressed answer that does not inflate: {exc}") from None
    return feed


def _decompressed(body: bytes | bytearray, decoder, cap: int | None) -> bytes:
    parts, size, data = [], 0, bytes(body)
    try:
        while data:
            out = decoder.decompress(data, _INFLATE_BYTES)
            size += len(out)
            if cap is not None and size > cap:
                raise HttpTransportError("TooLarge", f"an answer that inflates past the {cap} bytes allowed")
            parts.append(out)
            data = decoder.unconsumed_tail
    except zlib.error as exc:
        raise HttpTransportError("ProtocolError", f"a compressed answer that does not inflate: {exc}") from None
    return b"".join(parts)
