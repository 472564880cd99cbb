"""One router per concern: health, api, pages."""
