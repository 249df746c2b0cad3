"""Part of the fixed bundle_v1 vector. Do not edit; see tests/vectors/README.md."""


def shout(text: str) -> str:
    return text.upper() + "!"
