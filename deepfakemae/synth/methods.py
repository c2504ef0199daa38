"""The demo dataset's fake-making methods: each one's swap region (``None``: a self-blend).

A light module (no imports) so that the FF++ index can list the demo methods without loading
the synthesiser.
"""

#: method name -> region of :func:`deepfakemae.synth.swap.swap_region`; None = self-blend
DEMO_REGIONS: dict[str, str | None] = {
    "FaceSwapWarp": "face", "LipsSwap": "mouth", "EyesSwap": "eyes", "SelfBlend": None,
}
#: the four methods of the embedded demo set (`deepfakemae demo-data`), in FF++ layout
DEMO_METHODS: tuple[str, ...] = tuple(DEMO_REGIONS)
