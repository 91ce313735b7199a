"""FreshBooks: a payment as `{payment: {invoiceid, amount: {amount, code}, date, type}}`.

FreshBooks records one payment per request. A node's `payments` list with one entry is that
payment; several are refused by name rather than sending only the first (a loop node sends
each).
"""

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from flowmaestro_dagster.nodes.connectors.declarative import (
    HookApi,
    ParameterError,
    PreparedRequest,
)

_FIELDS = {
    "invoiceid": ("invoice_id", "invoiceId", "invoiceid"),
    "amount": ("amount",),
    "code": ("currency", "code", "currencyCode", "currency_code"),
    "date": ("date",),
    "type": ("type", "paymentType", "payment_type"),
    "note": ("note", "notes"),
}


def _pick(source: Mapping[str, Any], names: tuple[str, ...]) -> Any:
    return next((source[n] for n in names if source.get(n) not in (None, "")), None)


def _money(value: Any) -> str:
    """An amount as FreshBooks writes it: text with two decimals."""
    if isinstance(value, Mapping):
        value = value.get("amount")
    try:
        return f"{Decimal(str(value)).quantize(Decimal('0.01'))}"
    except (InvalidOperation, ValueError):
        raise ParameterError("amount", f"parameters.amount is not a number: {value!r}") from None


def payment_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """recordPayment: the node's one payment, from `payments` or its own fields."""
    source: Mapping[str, Any] = params
    listed = params.get("payments")
    if listed:
        if len(listed) != 1 or not isinstance(listed[0], Mapping):
            raise ParameterError(
                "payments",
                f"FreshBooks records one payment per call; parameters.payments holds "
                f"{len(listed)} (loop over them)",
            )
        source = listed[0]
    values = {key: _pick(source, names) for key, names in _FIELDS.items()}
    if values["invoiceid"] is None or values["amount"] is None:
        raise ParameterError("invoice_id", "a payment needs an invoice_id and an amount")
    amount: dict[str, Any] = {"amount": _money(values["amount"])}
    if values["code"]:
        amount["code"] = values["code"]
    payment: dict[str, Any] = {"invoiceid": values["invoiceid"], "amount": amount}
    payment.update({k: values[k] for k in ("date", "type", "note") if values[k] is not None})
    prepared.json = {"payment": payment}
    return prepared
