"""Data for the pruning pipeline: the text corpus (calibration, perplexity) and zero-shot tasks.

By default both come from one PyPI download, the ``gensim`` wheel's test data
(:mod:`ppf.data.gensim_wheel`): an English Wikipedia dump excerpt becomes the corpus
(:mod:`ppf.data.corpus`) and the word-analogy and review-polarity sets become lm-eval tasks
(:mod:`ppf.data.tasks`). A local ``bigbench`` 1.0.0 sdist (:mod:`ppf.data.bigbench`; PyPI no longer
serves it) is the other built-in source. Every writer here goes through :func:`ppf.io.write_text_atomic`,
so an interrupted stage never leaves a half-written output that DVC or a later stage could mistake for a good one.
"""

