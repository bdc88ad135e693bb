"""The service face: ``autonomy serve``'s JSON API, event stream and web run browser
(``engine.web.app``), over the same library of operations on runs as the CLI."""
