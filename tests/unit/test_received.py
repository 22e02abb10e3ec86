"""An upload received whole (server/worker/received.py): in memory while small, then in
an unnamed file whose path a handler may open instead of copying the bytes."""

from __future__ import annotations

import os

from server.worker.received import Received


def test_a_small_upload_stays_in_memory_and_has_no_path(tmp_path):
    received = Received(str(tmp_path), in_memory_bytes=16)
    try:
        for chunk in (b"0123", memoryview(b"456789"), b"abcdef"):
            received.write(chunk)
        assert received.size == 16
        assert received.path() is None
        assert list(tmp_path.iterdir()) == []
        assert list(received.chunks(5)) == [b"01234", b"56789", b"abcde", b"f"]
    finally:
        received.close()


def test_a_large_upload_moves_to_an_unnamed_file_its_path_opens(tmp_path):
    received = Received(str(tmp_path), in_memory_bytes=16)
    try:
        received.write(b"0123456789")
        received.write(memoryview(b"abcdefghij"))  # passes the bound: all of it on disk
        received.write(b"KLMN")
        assert received.size == 24
        assert list(tmp_path.iterdir()) == [], "unlinked as it was made"
        path = received.path()
        assert path is not None
        with open(path, "rb") as reopened:  # an offset of its own
            assert reopened.read() == b"0123456789abcdefghijKLMN"
        assert os.path.realpath(path).startswith(os.path.realpath(tmp_path))
        assert b"".join(received.chunks(7)) == b"0123456789abcdefghijKLMN"
        with open(path, "rb") as again:  # reading the chunks moved no offset of the path's
            assert again.read(4) == b"0123"
    finally:
        received.close()
    assert not os.path.exists(path), "the path is the upload's only while it is open"
