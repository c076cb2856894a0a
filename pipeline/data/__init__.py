"""Datasets: catalog, tiling, the tile store, label subsets and the loaders' workers."""
