"""The label values of a tissue mask (``uint8``), shared by every method and the overlay."""

__all__ = ["BACKGROUND", "DEBRIS", "INK", "LABELS", "TISSUE"]

BACKGROUND = 0
TISSUE = 255
INK = 64
DEBRIS = 32
#: label value -> name, written into the overlay provenance
LABELS = {BACKGROUND: "background", TISSUE: "tissue", INK: "ink", DEBRIS: "debris"}
