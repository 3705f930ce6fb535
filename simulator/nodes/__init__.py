"""Running nodes built from their declarations, one module per kind."""
