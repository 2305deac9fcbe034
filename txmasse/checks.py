"""
Checks of values that come from outside (endpoint strings, URLs, command
lines, callers): one rule for numbers and one for flags, so every entry
point refuses the same things with the same words.
"""

from __future__ import annotations

import math


def checkNumber(
    value: object,
    what: str,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    above: bool = False,
    unit: str = "seconds",
) -> float:
    """
    C{value} (a number, or text that reads as one) as a float, if it is
    finite and within C{low} to C{high} (strictly above C{low} with C{above}).

    @param what: how the message names the value, e.g. C{"timeout=0:"}.
    @raise ValueError: C{"{what} must be a number of {unit}, ..."}.
    """
    number = math.nan
    if isinstance(value, str) and value.isascii():  # float() reads other scripts' digits too
        try:
            number = float(value)
        except ValueError:
            pass
    elif isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    fits = number > low if above else number >= low
    if math.isfinite(number) and fits and number <= high:
        return number
    if above and high == math.inf:
        rule = f"greater than {low:g}"
    elif above:
        rule = f"greater than {low:g}, at most {high:g}"
    elif high == math.inf:
        rule = f"{low:g} or more"
    else:
        rule = f"{low:g} to {high:g}"
    separator = " " if rule.startswith("greater") else ", "
    raise ValueError(f"{what} must be a number of {unit}{separator}{rule}")


def isDigits(text: str) -> bool:
    """
    Whether C{text} is ASCII digits alone: C{str.isdigit} also takes the
    digits of other scripts (C{"٣"}), and C{int} reads them.
    """
    return text.isascii() and text.isdigit()


def shown(value: object, limit: int = 80) -> str:
    """
    C{value} as a message quotes it: numbers plainly, anything else by
    repr, cut short past C{limit} characters (a message stays one short line).
    """
    text = f"{value:g}" if isinstance(value, float | int) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def checkFlag(text: str, what: str) -> bool:
    """
    C{true}/C{yes}/C{1} or C{false}/C{no}/C{0}, in any case.

    @raise ValueError: C{"{what}={text!r}: must be true or false"}.
    """
    if text.lower() in ("true", "yes", "1"):
        return True
    if text.lower() in ("false", "no", "0"):
        return False
    raise ValueError(f"{what}={shown(text)}: must be true or false")
