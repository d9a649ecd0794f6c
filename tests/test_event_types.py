from __future__ import annotations

import pytest

from outbox_admin import EventTypeRegistry, InvalidEventTypeError, UnknownEventTypeError, register_event_type
from outbox_admin.event_types import default_registry


def test_seeded_with_the_original_types() -> None:
    registry = EventTypeRegistry()
    assert list(registry) == ["PROJECT.CREATED", "PROJECT.UPDATED"]


@pytest.mark.parametrize(
    "name",
    [
        "project.created",
        "PROJECT",
        "PROJECT.",
        ".CREATED",
        "PROJECT.CREATED.NOW",
        "PRO JECT.CREATED",
        "",
        "1PROJECT.CREATED",
        None,
    ],
)
def test_invalid_names_are_refused(name: object) -> None:
    with pytest.raises(InvalidEventTypeError, match="ENTITY.ACTION"):
        EventTypeRegistry().register(name)  # type: ignore[arg-type]


def test_register_and_require() -> None:
    registry = EventTypeRegistry()
    assert registry.register("MY_ENTITY.UPDATED") == "MY_ENTITY.UPDATED"
    registry.register("MY_ENTITY.UPDATED")
    assert registry.require("MY_ENTITY.UPDATED") == "MY_ENTITY.UPDATED"
    assert registry.matching("MY_ENTITY.*") == ["MY_ENTITY.UPDATED"]
    with pytest.raises(UnknownEventTypeError) as info:
        registry.require("MY_ENTITY.UPDATE")
    assert info.value.close_matches[0] == "MY_ENTITY.UPDATED"


def test_register_event_type_uses_the_default_registry() -> None:
    register_event_type("TESTING.REGISTERED")
    assert "TESTING.REGISTERED" in default_registry
