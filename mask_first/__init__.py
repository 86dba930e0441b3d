"""mask-first: tissue masks first, RGB pixels only for the tiles that hold tissue."""
