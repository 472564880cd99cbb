"""The commands of `python -m training`, one module a group: each module's `register(sub)` adds
its commands' parsers, each bound to its handler (`func`); training/__main__.py dispatches."""
