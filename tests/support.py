"""Constants and helpers shared by the tests (importable: pytest puts tests/ on the path)."""

#: The model every test fits unless it needs another: random weights, fast at 64 px, no alignment
#: (the tests of the PaDiM core compare with references of it; tests/test_align.py covers alignment).
TINY = dict(backbone="resnet18", pretrained=False, image_size=64, n_features=16, sigma=2, seed=0, align="none")
#: TINY with its parts registered to a reference (padim.align), as the default fits them.
ALIGNED = {**TINY, "align": "translate"}
