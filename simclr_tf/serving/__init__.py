"""Serving: SavedModel export and embedding with an exported model."""
