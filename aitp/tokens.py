"""A cheap token estimate for the OpenAI limits (8,192 tokens per input, 300,000 per request).

tiktoken would be exact but is a heavy dependency with downloaded vocabularies; this estimate is
close for English (about four characters a token) and errs high for other scripts, where a
character is often a token of its own. An input that slips under it and is still too long gets a
400 from OpenAI, and the batch is split so that only that task fails.
"""

from __future__ import annotations


def estimate_tokens(text: str) -> int:
    extra_bytes = len(text.encode("utf-8", "surrogatepass")) - len(text)   # 1 to 3 per non-ASCII character
    return len(text) // 4 + extra_bytes // 2 + 1
