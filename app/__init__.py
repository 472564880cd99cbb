"""The web service: an upload page and a JSON API on an exported model (see docs/service.md)."""
