"""Exchange with the tools users already run: QuPath GeoJSON, CLAM/TRIDENT coordinate files."""
