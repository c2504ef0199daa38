"""Synthetic fakes: landmark-driven face manipulations (``swap``), the demo methods
(``methods``) and the bundled GRID demo dataset (``demo_data``)."""
