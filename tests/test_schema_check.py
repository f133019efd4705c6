"""The compatibility check of two model versions (messagebus._compat), its pytest helper and
``messagebus schema check`` (docs/evolution.md)."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import ClassVar

import pytest
from pydantic import BaseModel, ConfigDict, Field

from messagebus.__main__ import main
from messagebus._compat import check_compatibility
from messagebus.testing import assert_compatible


class Order(BaseModel):
    id: int
    amount: int
    note: str | None = None


class AddedOptional(BaseModel):
    id: int
    amount: int
    note: str | None = None
    channel: str = "web"


class AddedRequired(BaseModel):
    id: int
    amount: int
    note: str | None = None
    currency: str


class RemovedRequired(BaseModel):
    id: int
    note: str | None = None


class AmountAsStr(BaseModel):
    id: int
    amount: str
    note: str | None = None


class AmountAsFloat(BaseModel):
    id: int
    amount: float
    note: str | None = None


class NoteRequired(BaseModel):
    id: int
    amount: int
    note: str


class Status(StrEnum):
    NEW = "new"
    PAID = "paid"


class StatusMore(StrEnum):
    NEW = "new"
    PAID = "paid"
    REFUNDED = "refunded"


class WithStatus(BaseModel):
    id: int
    status: Status


class WithMoreStatus(BaseModel):
    id: int
    status: StatusMore


class Customer(BaseModel):
    name: str


class CustomerWithEmail(BaseModel):
    name: str
    email: str


class Nested(BaseModel):
    id: int
    customer: Customer
    lines: list[Customer] = []


class NestedChanged(BaseModel):
    id: int
    customer: CustomerWithEmail
    lines: list[CustomerWithEmail] = []


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: int
    amount: int
    note: str | None = None


class Limited(BaseModel):
    id: int
    amount: int = Field(ge=0)
    note: str | None = None


class Tree(BaseModel):
    name: str
    children: list[Tree] = []


class TreeV2(BaseModel):
    schema_version: ClassVar[int] = 2
    name: str
    children: list[TreeV2] = []


def test_compatible_changes_pass_both_ways() -> None:
    """Bug caught: an added optional field reported as breaking (tolerant readers ignore it
    and default it), or a model compared with itself reporting changes."""
    assert check_compatibility(Order, AddedOptional).compatible("full")
    assert check_compatibility(Order, Order).compatible("full")
    assert check_compatibility(Tree, TreeV2).compatible("full")  # recursive $ref: terminates


def test_added_required_field_breaks_backward_only() -> None:
    """Bug caught: a new required field not reported (consumers on NEW fail on every queued
    OLD message), or reported as breaking forward (old readers ignore it)."""
    report = check_compatibility(Order, AddedRequired)
    assert report.backward == ["currency: required by the reader (no default), not written by the writer"]
    assert report.forward_compatible


def test_removed_required_field_breaks_forward_only() -> None:
    """Bug caught: removing a field old consumers require passing as compatible."""
    report = check_compatibility(Order, RemovedRequired)
    assert report.backward_compatible
    assert report.forward == ["amount: required by the reader (no default), not written by the writer"]


def test_type_changes() -> None:
    """Bug caught: int -> str accepted (pydantic does not read a JSON number as a str), or
    int -> float reported breaking for new readers (an int is a valid float) but not for old
    ones (1.5 is no int)."""
    to_str = check_compatibility(Order, AmountAsStr)
    assert to_str.backward == ["amount: the writer may write integer, the reader accepts only string"]
    assert to_str.forward == ["amount: the writer may write string, the reader accepts only integer"]
    to_float = check_compatibility(Order, AmountAsFloat)
    assert to_float.backward_compatible
    assert to_float.forward == ["amount: the writer may write number, the reader accepts only integer"]


def test_optional_made_required_breaks_on_null() -> None:
    """Bug caught: an Optional field made required non-null passing, though OLD writers send
    null (and readers of NEW refuse it)."""
    report = check_compatibility(Order, NoteRequired)
    assert report.backward == ["note: the writer may write null, the reader accepts only string"]
    assert report.forward_compatible


def test_enum_values() -> None:
    """Bug caught: an added enum value not reported for old readers (they refuse it), or a
    removed one not reported for new readers."""
    added = check_compatibility(WithStatus, WithMoreStatus)
    assert added.backward_compatible
    assert added.forward == ['status: the writer may write "refunded", which the reader\'s values do not include']
    removed = check_compatibility(WithMoreStatus, WithStatus)
    assert removed.backward == ['status: the writer may write "refunded", which the reader\'s values do not include']


def test_nested_models_through_refs() -> None:
    """Bug caught: $ref'd nested models not followed (a required field added inside a nested
    model or inside list items passing unseen)."""
    report = check_compatibility(Nested, NestedChanged)
    assert report.backward == [
        "customer.email: required by the reader (no default), not written by the writer",
        "lines[].email: required by the reader (no default), not written by the writer",
    ]
    assert report.forward_compatible


def test_forbidden_extras_and_added_constraints() -> None:
    """Bug caught: a reader with extra="forbid" treated as tolerant, or a constraint the new
    reader adds (amount >= 0) passing though OLD writers may write -1."""
    assert check_compatibility(AddedOptional, Strict).backward == [
        "channel: written by the writer, refused by the reader (extra fields forbidden)"
    ]
    assert check_compatibility(Order, Limited).backward == [
        "amount: the reader requires minimum 0, the writer has none"
    ]


def test_assert_compatible_lists_each_breaking_change() -> None:
    """Bug caught: the pytest helper passing a breaking change, checking the wrong direction,
    or failing without saying which field broke."""
    assert_compatible(Order, AddedOptional, mode="full")
    assert_compatible(Order, AddedRequired, mode="forward")
    with pytest.raises(AssertionError) as caught:
        assert_compatible(Order, AmountAsStr, mode="full")
    text = str(caught.value)
    assert "not full compatible (2 breaking changes)" in text
    assert "backward: amount: the writer may write integer" in text and "forward: amount:" in text
    with pytest.raises(ValueError, match="mode must be one of backward, forward, full"):
        assert_compatible(Order, Order, mode="sideways")  # type: ignore[arg-type]


def test_cli_exit_codes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Bug caught: 'messagebus schema check' exiting 0 on a breaking change (CI passes), not
    printing why, or mixing a usage error (exit 2) up with an incompatible change (exit 1)."""
    here = __name__
    assert main(["schema", "check", f"{here}:Order", f"{here}:AddedOptional", "--mode", "full"]) == 0
    assert "backward" not in capsys.readouterr().out.split(":", 2)[-1].replace("full compatible", "")
    assert main(["schema", "check", f"{here}:Order", f"{here}:AddedRequired"]) == 1
    assert "currency: required by the reader" in capsys.readouterr().out
    assert main(["schema", "check", f"{here}:Order", f"{here}:AddedRequired", "--mode", "forward"]) == 0
    capsys.readouterr()
    assert main(["schema", "check", f"{here}:Order", f"{here}:Status"]) == 2
    assert "not a pydantic model class" in capsys.readouterr().err
    assert main(["schema", "check", "Order", f"{here}:Order"]) == 2
    assert "expected MODULE:MODEL" in capsys.readouterr().err
    assert main(["schema", "check", "no_such_module_x:Order", f"{here}:Order"]) == 2
    assert "cannot import" in capsys.readouterr().err
    # A snapshot saved with 'schema dump' stands in for the old model.
    assert main(["schema", "dump", f"{here}:Order"]) == 0
    snapshot = tmp_path / "order.json"
    snapshot.write_text(capsys.readouterr().out)
    assert json.loads(snapshot.read_text())["title"] == "Order"
    assert main(["schema", "check", str(snapshot), f"{here}:AmountAsStr"]) == 1
    assert "amount: the writer may write integer, the reader accepts only string" in capsys.readouterr().out
