"""Data for the pruning pipeline: the text corpus (calibration, perplexity) and zero-shot tasks.

Both come from one place, the ``bigbench`` sdist (:mod:`ppf.data.bigbench`), so a fresh clone needs
only PyPI: the English Wikipedia articles of ``paragraph_segmentation`` become the corpus
(:mod:`ppf.data.corpus`) and a few multiple-choice tasks become lm-eval tasks
(:mod:`ppf.data.tasks`). Every writer here goes through :func:`ppf.io.write_text_atomic`, so an interrupted
stage never leaves a half-written output that DVC or a later stage could mistake for a good one.
"""

