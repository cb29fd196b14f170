"""The recipes: one module per pipeline stage's logic, what a flow or the CLI calls.

A recipe builds its parts from the typed params and runs them: which work a stage does and what it
depends on (its context key, the cache key of its tasks), the steps, and the files it writes. The
components below (workbench, planner, predictor, agent, baselines, metrics) know nothing of stages;
the flows above (``flows/``) only add Prefect: tasks, caching, the flow function.

- :mod:`~ppf.recipes.prepare` — the corpus splits, the zero-shot tasks, the calibration tokens;
- :mod:`~ppf.recipes.dense_eval` — the unpruned model's perplexity and zero-shot accuracy;
- :mod:`~ppf.recipes.importance` — layer and unit scores and BlockPruner's order, once;
- :mod:`~ppf.recipes.collect` — the mask dataset: which samples, each evaluated for real, the parquet;
- :mod:`~ppf.recipes.predictor` — the CNN predictor trained and scored on the dataset;
- :mod:`~ppf.recipes.active` — active learning: the predictor's proposals evaluated, the predictor refit;
- :mod:`~ppf.recipes.agent` — the DDPG agents, their validation (:mod:`~ppf.recipes.validation`) and
  PPF's final choice on the true model;
- :mod:`~ppf.recipes.benchmark` — PPF vs the re-run baselines, paired;
- :mod:`~ppf.recipes.prune` — ``ppf prune``: one policy applied and saved.
"""
