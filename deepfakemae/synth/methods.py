"""The demo dataset's fake-making methods and their artifact strengths, by name.

A light module (no imports) so that the FF++ index can list the demo methods without loading
the synthesiser.

A method made at artifact strength ``k > 0`` is a method of its own, named ``<Method>@s<k>``
(e.g. ``FaceSwapWarp@s3``) and stored in its own FF++ method folder; strength 0 keeps the plain
name, so ``FaceSwapWarp`` is today's method and every ``methods: [real, FaceSwapWarp]`` filter
still selects it alone. The parameters of each level live in :mod:`deepfakemae.synth.strengths`.
"""

#: method name -> region of :func:`deepfakemae.synth.swap.swap_region`; None = self-blend
DEMO_REGIONS: dict[str, str | None] = {
    "FaceSwapWarp": "face", "LipsSwap": "mouth", "EyesSwap": "eyes", "SelfBlend": None,
}
#: the four methods of the embedded demo set (`deepfakemae demo-data`), in FF++ layout
DEMO_METHODS: tuple[str, ...] = tuple(DEMO_REGIONS)
#: the artifact strengths a demo method can be made at (0 = today's method, 3 = strongest)
DEMO_STRENGTHS: tuple[int, ...] = (0, 1, 2, 3)
STRENGTH_MARK = "@s"
#: the file in a demo set's root that records its sources, strengths and fakes
DEMO_SOURCES_FILE = "demo_sources.json"


def strength_method(method: str, strength: int) -> str:
    """The method name of ``method`` made at ``strength``: ``("LipsSwap", 2) -> "LipsSwap@s2"``,
    strength 0 -> ``method`` itself. Raises :class:`ValueError` for an unknown method/strength."""
    if method not in DEMO_REGIONS:
        raise ValueError(f"unknown demo method {method!r}; choose from {DEMO_METHODS}")
    if strength not in DEMO_STRENGTHS:
        raise ValueError(f"unknown artifact strength {strength!r}; choose from {DEMO_STRENGTHS}")
    return method if strength == 0 else f"{method}{STRENGTH_MARK}{strength}"


def split_strength(name: str) -> tuple[str, int]:
    """``(method, strength)`` of a method name: ``"LipsSwap@s2" -> ("LipsSwap", 2)``; a name
    without the mark (any dataset's method, ``real`` too) -> ``(name, 0)``. Raises
    :class:`ValueError` for a marked name that is not a demo method at a known strength."""
    base, mark, level = name.partition(STRENGTH_MARK)
    if not mark:
        return name, 0
    if base not in DEMO_REGIONS or not level.isdigit() or int(level) not in DEMO_STRENGTHS[1:]:
        raise ValueError(f"{name!r} is not <demo method>{STRENGTH_MARK}<k> with a method of "
                         f"{DEMO_METHODS} and k in {DEMO_STRENGTHS[1:]}")
    return base, int(level)


def base_method(name: str) -> str:
    """The method a name is a strength of (``"LipsSwap@s2" -> "LipsSwap"``); any other name
    unchanged. Never raises (the indexes validate names)."""
    return name.partition(STRENGTH_MARK)[0] or name


def strength_methods(methods: tuple[str, ...] | list[str] = DEMO_METHODS,
                     strengths: tuple[int, ...] | list[int] = DEMO_STRENGTHS) -> list[str]:
    """Every method name of ``methods`` x ``strengths``, method-major:
    ``(["LipsSwap"], [0, 3]) -> ["LipsSwap", "LipsSwap@s3"]``."""
    return list(dict.fromkeys(strength_method(m, k) for m in methods for k in strengths))
