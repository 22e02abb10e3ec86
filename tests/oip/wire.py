"""How a message looks on the wire, for comparing our proto with tritonclient's.

Imports no generated code, so both the pytest process (ours) and the tritonclient
subprocess (theirs) can use it.
"""

from __future__ import annotations

from typing import Any


def field_shapes(message: Any) -> dict[str, list]:
    """Each field's number, type, repetition, message type and oneof, by name."""
    return {
        f.name: [
            f.number,
            f.type,
            f.is_repeated,
            f.message_type.full_name if f.message_type else "",
            f.containing_oneof.name if f.containing_oneof else "",
        ]
        for f in message.fields
    }
