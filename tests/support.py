"""Constants and helpers shared by the tests (importable: pytest puts tests/ on the path)."""

#: The model every test fits unless it needs another: random weights, fast at 64 px.
TINY = dict(backbone="resnet18", pretrained=False, image_size=64, n_features=16, sigma=2, seed=0)
