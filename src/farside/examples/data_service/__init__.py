"""The data-service example: aggregates over a sealed dataset, never its rows.

A data owner seals a small dataset for a signed enclave on a trusted machine
(``owner``); an analyst loads the same signed enclave, hands it the sealed file and
gets aggregates back (``analyst``). ``python -m farside.examples.data_service.walkthrough``
runs both in one process; README.md walks through the two-machine flow.
"""
