"""The stores: one contract (``contract.py``), one module per store."""
