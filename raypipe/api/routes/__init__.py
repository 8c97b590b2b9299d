"""The API's routes, one module per record they serve, each with a ``router()``."""
