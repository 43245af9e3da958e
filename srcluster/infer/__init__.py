"""The one inference path: a generator from a path, URL or `models:/` URI, run tiled on any device."""
