"""The two exceptions the library raises on purpose; anything else is a bug or the platform's own error."""


class VaepipeError(Exception):
    """An expected failure (bad input, missing workdir, mismatched artefacts): shown without a traceback."""


class ImageError(Exception):
    """A file that is not a usable image; the message is meant for a person.

    Messages read "<kind>: <detail>": the kind is stable, so errors can be counted by reason.
    """
