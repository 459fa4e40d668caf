"""Hypothesis strategies for every control message, derived from the declared wire field types.

A field type offers its edge values and a ``draw(random.Random)``; hypothesis'
``st.randoms()`` records each choice the draw makes, so a failing value still
shrinks (towards each draw's first choices, which are its simplest values).
"""

from __future__ import annotations

from hypothesis import strategies as st

from arca_control.protocol.messages import REGISTRY, ControlEvent, Message, payload_fields
from arca_control.protocol.wire import FieldType, declared


def values_of(kind: FieldType[object]) -> st.SearchStrategy[object]:
    """Any valid value of a field type: one of its edges, or one it draws."""
    return st.one_of(st.sampled_from(kind.edges), st.randoms(use_true_random=False).map(kind.draw))


def message_of(cls: type[Message]) -> st.SearchStrategy[Message]:
    fields = {f.name: values_of(declared(f)) for f in payload_fields(cls)}
    request_ids = st.just(0) if issubclass(cls, ControlEvent) else st.integers(1, 0xFFFFFFFF)
    return st.builds(cls, request_id=request_ids, **fields)


messages = st.one_of([message_of(cls) for cls in REGISTRY.values()])
