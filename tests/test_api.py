"""The public surface: names, the error tree, and what is importable."""

import inspect

import messagebus
from messagebus import _errors


def test_all_is_sorted_and_complete() -> None:
    assert messagebus.__all__ == sorted(messagebus.__all__)
    for name in messagebus.__all__:
        assert hasattr(messagebus, name), name


def test_every_error_class_is_importable_from_messagebus() -> None:
    for name in _errors.__all__:
        cls = getattr(messagebus, name)
        assert issubclass(cls, messagebus.MessageBusError)
        assert cls.__module__ == "messagebus"


def test_error_tree_shape() -> None:
    m = messagebus
    assert issubclass(m.InvalidURL, m.ConfigurationError)
    assert issubclass(m.TransportNotFound, m.ConfigurationError)
    assert issubclass(m.MessageTooLarge, m.PublishError)
    assert issubclass(m.PublishError, m.TransportError)
    assert issubclass(m.ConnectError, m.TransportError)
    assert issubclass(m.DecodeError, m.SerializationError)
    assert issubclass(m.EncodeError, m.SerializationError)
    assert issubclass(m.LifecycleError, m.MessageBusError)


def test_public_names_have_docstrings() -> None:
    for name in messagebus.__all__:
        obj = getattr(messagebus, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__doc__, f"{name} has no docstring"


def test_transports_api_is_explicit() -> None:
    import messagebus.transports as t

    assert t.__all__ == sorted(t.__all__)
    for name in t.__all__:
        assert hasattr(t, name)
