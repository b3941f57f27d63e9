"""SPEED services: the vendor, the broker and the customer\x27s wallet side."""
