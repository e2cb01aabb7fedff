"""CSV text as the csv module reads it, bounded and fast: the lines of a file in blocks, each line at most
:data:`MAX_LINE_CHARS` long; the delimiter sniffed from the header; and rows, with blocks of plain lines read
whole by pandas' C parser. No validation here: :mod:`medbatch.producer.records` does that.
"""

from __future__ import annotations

import csv
import io
from collections import deque
from collections.abc import Iterator
from itertools import chain
from pathlib import Path

import numpy as np
import pandas as pd

from medbatch.producer.paths import open_regular

#: Longest line (and field) read from a CSV, characters: every read is bounded by it, so a file without
#: line breaks (or ``/dev/zero`` behind a link) costs at most this much memory, then is refused.
MAX_LINE_CHARS = 1 << 20
csv.field_size_limit(MAX_LINE_CHARS)


class LineTooLong(csv.Error):
    """A line longer than :data:`MAX_LINE_CHARS`: the file is refused from there on."""

    def __init__(self) -> None:
        super().__init__(f"a line longer than {MAX_LINE_CHARS:,} characters: a file without line breaks?")


#: Characters read at a time (:func:`bounded_lines`); below :data:`MAX_LINE_CHARS`, so only a line begun in an
#: earlier block can outgrow the cap.
BLOCK_CHARS = 1 << 18


def bounded_lines(fh) -> Iterator[str]:
    """The lines of text file ``fh`` (opened with ``newline=""``), each at most :data:`MAX_LINE_CHARS` long
    (:class:`LineTooLong` past it).

    Read in blocks of whole lines and split in C (one Python step per block, not per line: a million-row
    file spent 2 s in a per-line generator). Lines end as ``readline`` ends them (``\n``, ``\r\n``, ``\r``).
    A block that is not UTF-8 is read again line by line from its start, so the error is raised at the same
    place as before and the lines ahead of it are still read.
    """
    return chain.from_iterable(_line_blocks(fh))


def _line_blocks(fh) -> Iterator[Iterator[str]]:
    carry = ""  # the unfinished last line of the previous block
    while True:
        pos = fh.tell()
        try:
            block = fh.read(BLOCK_CHARS)
        except UnicodeDecodeError:
            fh.seek(pos)
            yield _one_by_one(fh, carry)
            return
        if not block:
            if carry:
                yield iter((carry,))
            return
        text = carry + block
        # The last line break of the block; a final \r may be the first half of \r\n, so it is not one.
        cut = max(text.rfind("\n"), text.rfind("\r", 0, len(text) - 1)) + 1
        first_break = next((i for i in (text.find("\n"), text.find("\r")) if i >= 0), len(text))
        if first_break > MAX_LINE_CHARS:
            raise LineTooLong
        if cut == 0:  # no line ends in this block yet
            carry = text
            continue
        carry = text[cut:]
        if len(carry) > MAX_LINE_CHARS:
            raise LineTooLong
        yield io.StringIO(text[:cut], newline="")


def _one_by_one(fh, carry: str) -> Iterator[str]:
    """The rest of ``fh`` read a line at a time, the first line starting with ``carry``."""
    first = True
    while True:
        line = fh.readline(MAX_LINE_CHARS + 1)
        if first:
            line, first = carry + line, False
        if not line:
            return
        if len(line) > MAX_LINE_CHARS:
            raise LineTooLong
        yield line


#: The reason a row holding a NUL character is rejected: no text column can store one (PostgreSQL refuses it),
#: and a value changed to fit would be a different patient id or value than the file says.
NUL_REASON = "the row holds a NUL character (\\x00): is this a binary or damaged file?"


def stops_at_unreadable(reader, stopped: list[str]) -> Iterator[list[str]]:
    """The rows of ``reader`` until one cannot be read (too long, not UTF-8): its reason goes to ``stopped``."""
    try:
        yield from reader
    except UnicodeDecodeError:
        stopped.append("the file is not UTF-8 text from here on; the rest of the file was not read")
    except csv.Error as exc:
        stopped.append(f"unreadable CSV from here on ({exc}); the rest of the file was not read")


def csv_reader(fh):
    """A ``csv.reader`` over ``fh`` with the delimiter sniffed and every line bounded."""
    return csv.reader(bounded_lines(fh), delimiter=sniff_delimiter(fh))


def sniff_delimiter(fh) -> str:
    """The field separator of a CSV from its first line: ``,`` unless the header is clearly split by
    ``;`` (spreadsheets in locales with a decimal comma) or a tab. Rewinds ``fh``.

    Raises:
        LineTooLong: the first line is longer than :data:`MAX_LINE_CHARS` (only that much is read).
    """
    first = fh.readline(MAX_LINE_CHARS + 1)
    fh.seek(0)
    if len(first) > MAX_LINE_CHARS:
        raise LineTooLong
    counts = {d: first.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=counts.get)
    return best if counts[best] > counts[","] else ","


def binary_hint(path: Path) -> str:
    with open_regular(path) as fh:
        head = fh.read(8)
    if head.startswith(b"PK\x03\x04"):
        return "this is an Excel workbook (.xlsx) or another zip file, not CSV; "
    if head.startswith(b"\xd0\xcf\x11\xe0"):
        return "this is an old Excel workbook (.xls), not CSV; "
    return "not UTF-8 text; "


def open_text(path: Path):
    """``path`` as UTF-8 text for the csv module; only a regular file is opened (see :func:`open_regular`).

    Raises:
        InvalidInput: missing, unreadable, or not a regular file (a folder, FIFO, device).
    """
    return io.TextIOWrapper(open_regular(path), encoding="utf-8-sig", newline="")


def plain_columns(text: str, delimiter: str, width: int) -> list[np.ndarray] | None:
    """The fields of a block of whole lines as ``width`` columns of ``str``, parsed by pandas in C, when every
    line is plain: no quote, NUL, byte-order mark or lone ``\r``, no blank line, exactly ``width`` fields.
    Otherwise None, and the block goes to the csv module line by line. In the plain case the two cannot
    differ; a property test compares them on random text cut into random blocks."""
    if '"' in text or "\0" in text or "\ufeff" in text:  # pandas would strip a byte-order mark a line begins with
        return None
    if "\r" in text:
        if text.count("\r") != text.count("\r\n"):
            return None
        text = text.replace("\r\n", "\n")
    if text.startswith("\n") or "\n\n" in text:
        return None
    lines = text.count("\n") + (not text.endswith("\n"))
    # pandas takes the first line's width and refuses a later line of more fields (with names given it would
    # make extra fields an index instead); so a first line of ``width`` fields and this total mean every line
    # has ``width``.
    if text.count(delimiter, 0, text.find("\n")) != width - 1 or text.count(delimiter) != (width - 1) * lines:
        return None
    try:
        frame = pd.read_csv(
            io.StringIO(text),
            sep=delimiter,
            header=None,
            dtype=str,
            na_filter=False,
            quoting=csv.QUOTE_NONE,
            skip_blank_lines=False,
            engine="c",
        )
    except (ValueError, pd.errors.ParserError):
        return None
    if frame.shape != (lines, width):
        return None
    return [frame[i].to_numpy(dtype=object) for i in range(width)]


def csv_parts(fh, width: int, next_line: list[int]) -> Iterator[tuple[int, list[str] | list[np.ndarray]]]:
    """The rows after the header of CSV file ``fh``: ``(line, row)`` for a row the csv module read, and
    ``(first_line, columns)`` for a block of plain lines read whole (:func:`plain_columns`, a third of the
    producer's time on a million rows). ``next_line[0]`` is kept at the number of the next line to read.

    One csv reader reads every block that is not plain; a quoted field running on past its block pulls the
    next block into it, whatever that one holds.
    """
    delimiter = sniff_delimiter(fh)
    blocks = _line_blocks(fh)
    pending: deque[str] = deque()
    lazy: list[Iterator[str]] = []  # a block read line by line (not UTF-8 ahead): its error must come in place

    def feed() -> Iterator[str]:
        while True:
            while pending:
                yield pending.popleft()
            if lazy:  # the last block: _line_blocks ends with it
                yield from lazy[0]
                lazy.clear()
                continue
            block = next(blocks, None)
            if block is None:
                return
            if isinstance(block, io.StringIO):
                pending.extend(block)
            else:
                lazy.append(block)

    reader = csv.reader(feed(), delimiter=delimiter)
    next(reader)  # the header, checked by read_header
    plain_lines = 0  # lines read whole, which reader.line_num does not count
    next_line[0] = reader.line_num + 1

    def rows() -> Iterator[tuple[int, list[str]]]:  # until the reader's lines are used up
        while pending or lazy:
            row = next(reader, None)
            if row is None:
                return
            line, next_line[0] = next_line[0], plain_lines + reader.line_num + 1
            yield line, row

    yield from rows()
    for block in blocks:
        if isinstance(block, io.StringIO):
            columns = plain_columns(block.getvalue(), delimiter, width)
            if columns is not None:
                yield next_line[0], columns
                plain_lines += len(columns[0])
                next_line[0] += len(columns[0])
                continue
            pending.extend(block)
        else:
            lazy.append(block)
        yield from rows()
