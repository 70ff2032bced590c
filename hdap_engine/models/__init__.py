"""Model zoo: networks built by name from a registry, each knowing its input shape."""
