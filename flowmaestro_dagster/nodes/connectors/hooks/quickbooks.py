"""QuickBooks Online: simple line items and payments as QuickBooks objects, and invoice
queries in QuickBooks' query language.

A line item is either QuickBooks' own `Line` object (it has `DetailType`) or
`{description, amount | quantity + unitPrice, itemId}` (a sales item line; QuickBooks uses
its default item when `itemId` is left out). A payment is either a `Payment` object (it has
`CustomerRef`) or `{customerId, amount, invoiceId, txnDate, reference, memo}`; the batch
endpoint takes at most 30. Query values are checked, never pasted: ids are digits, dates come
from the shared time-window parser.
"""

import re
from collections.abc import Mapping
from datetime import UTC
from typing import Any

from flowmaestro_dagster.nodes.connectors.declarative import (
    HookApi,
    ParameterError,
    PreparedRequest,
)
from flowmaestro_dagster.nodes.connectors.hooks._time_range import bounds

MAX_BATCH = 30
"""QuickBooks' limit of operations in one batch request."""
MAX_RESULTS = 1000
"""QuickBooks' limit of entities in one query answer."""
_ID = re.compile(r"[0-9]{1,20}")


def _first(item: Mapping[str, Any], *names: str) -> Any:
    return next((item[n] for n in names if item.get(n) not in (None, "")), None)


def _number(value: Any, field: str) -> float:
    try:
        return round(float(str(value).replace(",", "").strip()), 2)
    except ValueError:
        raise ParameterError(field, f"parameters.{field} must be a number, got {value!r}") from None


def _line(item: Any, index: int) -> dict[str, Any]:
    field = f"lineItems[{index}]"
    if not isinstance(item, Mapping):
        raise ParameterError("lineItems", f"parameters.{field} must be an object")
    if item.get("DetailType"):
        return dict(item)
    quantity = _first(item, "quantity", "qty", "Qty")
    price = _first(item, "unitPrice", "unit_price", "rate", "price", "UnitPrice")
    amount = _first(item, "amount", "Amount", "total")
    if amount is None and quantity is not None and price is not None:
        amount = _number(quantity, field) * _number(price, field)
    if amount is None:
        raise ParameterError(
            "lineItems", f"parameters.{field} needs an amount (or a quantity and a unitPrice)"
        )
    detail: dict[str, Any] = {}
    item_id = _first(item, "itemId", "item_id", "ItemRef")
    if item_id is not None:
        detail["ItemRef"] = {"value": str(item_id)}
    if quantity is not None:
        detail["Qty"] = _number(quantity, field)
    if price is not None:
        detail["UnitPrice"] = _number(price, field)
    line: dict[str, Any] = {
        "Amount": _number(amount, field),
        "DetailType": "SalesItemLineDetail",
        "SalesItemLineDetail": detail,
    }
    description = _first(item, "description", "Description", "name")
    if description is not None:
        line["Description"] = str(description)
    return line


def invoice_lines(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """createInvoice: each line item as a QuickBooks `Line`."""
    items = params.get("lineItems") or []
    if not items:
        raise ParameterError("lineItems", "parameters.lineItems needs at least one line")
    prepared.json = {**(prepared.json or {}), "Line": [_line(i, n) for n, i in enumerate(items)]}
    return prepared


def _payment(item: Any, index: int) -> dict[str, Any]:
    field = f"payments[{index}]"
    if not isinstance(item, Mapping):
        raise ParameterError("payments", f"parameters.{field} must be an object")
    if item.get("CustomerRef"):
        return dict(item)
    customer = _first(item, "customerId", "customer_id", "customer")
    amount = _first(item, "amount", "TotalAmt", "total")
    if customer is None or amount is None:
        raise ParameterError("payments", f"parameters.{field} needs a customerId and an amount")
    total = _number(amount, field)
    payment: dict[str, Any] = {"CustomerRef": {"value": str(customer)}, "TotalAmt": total}
    optional = {
        "TxnDate": _first(item, "txnDate", "txn_date", "date", "paidAt"),
        "PaymentRefNum": _first(item, "reference", "paymentRefNum", "referenceNumber"),
        "PrivateNote": _first(item, "memo", "note", "privateNote"),
    }
    payment.update({k: str(v) for k, v in optional.items() if v is not None})
    method = _first(item, "paymentMethodId", "payment_method_id")
    if method is not None:
        payment["PaymentMethodRef"] = {"value": str(method)}
    account = _first(item, "depositAccountId", "deposit_account_id")
    if account is not None:
        payment["DepositToAccountRef"] = {"value": str(account)}
    invoice = _first(item, "invoiceId", "invoice_id", "invoice")
    if invoice is not None:
        payment["Line"] = [
            {"Amount": total, "LinkedTxn": [{"TxnId": str(invoice), "TxnType": "Invoice"}]}
        ]
    return payment


def payment_batch(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """createPayments: one `create` batch item per payment."""
    payments = params.get("payments") or []
    if not payments:
        raise ParameterError("payments", "parameters.payments needs at least one payment")
    if len(payments) > MAX_BATCH:
        raise ParameterError(
            "payments", f"parameters.payments holds {len(payments)}; QuickBooks takes {MAX_BATCH}"
        )
    prepared.json = {
        "BatchItemRequest": [
            {"bId": str(n + 1), "operation": "create", "Payment": _payment(p, n)}
            for n, p in enumerate(payments)
        ]
    }
    return prepared


def invoice_query(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """getInvoices: `SELECT * FROM Invoice WHERE ...` from the window, customer and status."""
    clauses = []
    start, end = bounds(params)
    if start is not None:
        clauses.append(f"MetaData.LastUpdatedTime >= '{start.astimezone(UTC).isoformat()}'")
    if end is not None:
        clauses.append(f"MetaData.LastUpdatedTime <= '{end.astimezone(UTC).isoformat()}'")
    customer = params.get("customerId")
    if customer is not None:
        if not _ID.fullmatch(str(customer)):
            raise ParameterError("customerId", "parameters.customerId must be a QuickBooks id")
        clauses.append(f"CustomerRef = '{customer}'")
    status = str(params.get("status") or "").lower()
    if status in ("unpaid", "open", "outstanding"):
        clauses.append("Balance > '0'")
    elif status in ("paid", "closed"):
        clauses.append("Balance = '0'")
    elif status not in ("", "all", "any"):
        raise ParameterError("status", "parameters.status must be paid, unpaid or all")
    limit = int(params.get("maxResults") or 100)
    first = int(params.get("startPosition") or 1)
    if not 1 <= limit <= MAX_RESULTS or first < 1:
        raise ParameterError(
            "maxResults", f"parameters.maxResults must be 1 to {MAX_RESULTS}, startPosition >= 1"
        )
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    statement = (
        f"SELECT * FROM Invoice{where} ORDERBY MetaData.LastUpdatedTime DESC "
        f"STARTPOSITION {first} MAXRESULTS {limit}"
    )
    prepared.query.append(("query", statement))
    return prepared
