"""Parts that move: each image registered to the model's reference before its features are taken.

PaDiM compares each patch with the Gaussian learnt at the same position, so a part a few pixels
off its trained place looks anomalous everywhere. Here each image is registered to a reference
built from the good training images (:mod:`padim.align.reference`), brought into the reference
frame before the graph, and its anomaly map is brought back to the image's own coordinates after
it (:mod:`padim.align.warps`); a registration that cannot be trusted makes the verdict anomalous,
never normal. NumPy only: the runtime install runs it too.
"""
